// Runs cases.toml against the built component through the sidecar's own
// policy host: `sidecar policy test dist/template.wasm cases.toml`.
// The sidecar: $SIDECAR, else the one that created this project, else
// `sidecar` on the PATH.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** The sidecar that ran `sidecar policy new` (absolute), if known. */
const GENERATED_BY = null;

const sidecar =
  process.env.SIDECAR || (GENERATED_BY && existsSync(GENERATED_BY) ? GENERATED_BY : 'sidecar');
const run = spawnSync(sidecar, ['policy', 'test', 'dist/template.wasm', 'cases.toml'], {
  stdio: 'inherit',
});
if (run.error) {
  console.error(`cannot run \`${sidecar}\` (${run.error.message}): set SIDECAR to the sidecar binary`);
  process.exit(1);
}
process.exit(run.status ?? 1);
