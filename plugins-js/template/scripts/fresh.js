// Exits 0 when dist/template.wasm is newer than everything it is built from
// (src/, wit/, package.json), so `npm test` builds only when needed:
//   "pretest": "node scripts/fresh.js || npm run build"
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const OUT = 'dist/template.wasm';

function newest(path) {
  const stat = statSync(path);
  if (!stat.isDirectory()) {
    return stat.mtimeMs;
  }
  return Math.max(0, ...readdirSync(path).map((entry) => newest(join(path, entry))));
}

let built;
try {
  built = statSync(OUT).mtimeMs;
} catch {
  process.exit(1);
}
process.exit(built >= Math.max(...['src', 'wit', 'package.json'].map(newest)) ? 0 : 1);
