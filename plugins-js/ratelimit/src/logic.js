// Pure logic of the `ratelimit` policy: config parsing, who the client is,
// the window, the decision. It imports nothing from the WIT world, so
// `node --test` runs it as it is; `policy.js` is the thin glue between it and
// the component's imports and exports.
//
// A fixed-window limiter: time is cut into windows of `window_secs`, aligned
// on the Unix epoch (a 60 s window starts on each minute), and each client may
// make `limit` requests per window. One request is one atomic
// `kv.increment(bucket, 1, ttl)`: concurrent requests never lose a count, and
// the first request of a window creates the bucket with a TTL that ends with
// the window, so old buckets clean themselves up. The trade-off of fixed
// windows: a client may make up to 2 x `limit` requests around a window
// boundary (the end of one window, the start of the next).
//
// Config (a JSON object; unknown fields are refused):
//
//   {"limit": 100, "window_secs": 60,
//    "client_header": "x-api-key", "fallback": "forwarded_for",
//    "path_prefixes": ["/api"], "on_store_failure": "open"}
//
// - `limit` (required): requests per client per window, 1 to 1,000,000,000.
// - `window_secs` (60): the window's length, 1 to 86,400 (a day).
// - `client_header` ("x-api-key"): the header whose first value identifies
//   the client. Put the limiter after a policy that verifies the identity
//   (e.g. after `auth`, keyed by the `x-authenticated-user` it sets): an
//   unverified header is whatever the client says, and a client that sends a
//   new value each time gets a new bucket each time.
// - `fallback` ("forwarded_for"): who the client is when that header is absent
//   or empty:
//     "forwarded_for": the last address of `x-forwarded-for` (the one the
//       proxy in front of the sidecar appended; the earlier ones are whatever
//       the client claimed), or the shared bucket if there is none;
//     "client_ip": the address the sidecar's connection came from (behind a
//       proxy or a service, that is the same for everyone);
//     "shared": one bucket for every such request.
// - `path_prefixes` ([] = every path): only requests under one of these are
//   counted, on a segment boundary (`/api` covers `/api` and `/api/x`, not
//   `/apix`). A path is matched as sent and as an upstream may resolve it
//   (percent-decoded, dot segments resolved), so `/%61pi` cannot slip past.
// - `on_store_failure` ("open"): what to do when the kv store cannot count
//   (unavailable, e.g. Redis down): "open" lets the request through (a
//   limiter outage is not an API outage), "closed" answers 503. Either way
//   a warn line is logged. The sidecar's own `failure = "open"|"closed"` is
//   something else: what happens when the policy itself traps.

/** The limit, window and store settings when the config leaves them out. */
export const DEFAULTS = Object.freeze({
  window_secs: 60,
  client_header: 'x-api-key',
  fallback: 'forwarded_for',
  path_prefixes: Object.freeze([]),
  on_store_failure: 'open',
});

const MAX_LIMIT = 1_000_000_000;
const MAX_WINDOW_SECS = 86_400;
const FALLBACKS = ['forwarded_for', 'client_ip', 'shared'];
const FAILURE_MODES = ['open', 'closed'];
const FIELDS = [
  'limit',
  'window_secs',
  'client_header',
  'fallback',
  'path_prefixes',
  'on_store_failure',
];

// Characters allowed in an HTTP header name (RFC 9110 `token`).
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** A refused config; the message starts with the offending field. */
export class ConfigError extends Error {}

/**
 * Parses and validates the JSON config text, or throws a ConfigError.
 *
 * Strict, because a typo (`"limt"`, `"limit": "100"`) must stop the load
 * rather than silently limit nobody or everybody.
 */
export function parseConfig(text) {
  let raw;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`ratelimit config: invalid JSON (${e.message})`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError('ratelimit config: must be a JSON object');
  }
  for (const key of Object.keys(raw)) {
    if (!FIELDS.includes(key)) {
      throw new ConfigError(`${key}: unknown field (expected one of: ${FIELDS.join(', ')})`);
    }
  }
  if (!('limit' in raw)) {
    throw new ConfigError('limit: required, the requests allowed per client per window');
  }
  // A field given as `null` is refused, not taken as the default.
  const field = (name) => (name in raw ? raw[name] : DEFAULTS[name]);
  const limit = integer(raw.limit, 'limit', 1, MAX_LIMIT);
  const windowSecs = integer(
    field('window_secs'),
    'window_secs',
    1,
    MAX_WINDOW_SECS,
  );
  const header = field('client_header');
  if (typeof header !== 'string' || !TOKEN.test(header)) {
    throw new ConfigError('client_header: must be an HTTP header name');
  }
  const fallback = oneOf(field('fallback'), 'fallback', FALLBACKS);
  const onStoreFailure = oneOf(
    field('on_store_failure'),
    'on_store_failure',
    FAILURE_MODES,
  );
  const prefixes = field('path_prefixes');
  if (!Array.isArray(prefixes)) {
    throw new ConfigError('path_prefixes: must be a list of paths');
  }
  const pathPrefixes = prefixes.map((p, i) => {
    const field = `path_prefixes[${i}]`;
    if (typeof p !== 'string' || !p.startsWith('/')) {
      throw new ConfigError(`${field}: must be a string starting with \`/\``);
    }
    if (p.includes('?') || p.includes('#')) {
      throw new ConfigError(`${field}: must not contain \`?\` or \`#\``);
    }
    // `/api/` and `/api` mean the same subtree.
    return p.length > 1 ? p.replace(/\/+$/, '') || '/' : p;
  });
  return Object.freeze({
    limit,
    windowSecs,
    // The host hands header names in lower case.
    clientHeader: header.toLowerCase(),
    fallback,
    pathPrefixes: Object.freeze(pathPrefixes),
    onStoreFailure,
  });
}

function integer(value, field, min, max) {
  // JSON has one number type: 1.5 and 1e100 are numbers too.
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${field}: must be an integer from ${min} to ${max}`);
  }
  return value;
}

function oneOf(value, field, allowed) {
  if (!allowed.includes(value)) {
    throw new ConfigError(`${field}: must be one of ${allowed.map((a) => `"${a}"`).join(', ')}`);
  }
  return value;
}

// --- which requests ---------------------------------------------------------

/** Whether `path` lies under `prefix` on a segment boundary. */
export function prefixMatches(prefix, path) {
  if (prefix === '/') return true;
  if (!path.startsWith(prefix)) return false;
  const rest = path.slice(prefix.length);
  return rest === '' || rest[0] === '/';
}

/**
 * How an upstream may resolve `path`: percent-decoded (as bytes; a `%` that
 * starts no escape stays), backslashes as slashes, repeated slashes collapsed,
 * `.` and `..` segments resolved.
 */
export function normalizePath(path) {
  const decoded = path.replace(/%([0-9A-Fa-f]{2})/g, (_, hex) =>
    String.fromCharCode(parseInt(hex, 16)),
  );
  const out = [];
  for (const segment of decoded.replaceAll('\\', '/').split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') out.pop();
    else out.push(segment);
  }
  return `/${out.join('/')}`;
}

/**
 * Whether the config counts requests to `path` (without the query, as the
 * host's `path()` gives it). Matching either the path as sent or its
 * normalized form only ever counts more, never less.
 */
export function applies(config, path) {
  if (config.pathPrefixes.length === 0) return true;
  const views = [path, normalizePath(path)];
  return config.pathPrefixes.some((p) => views.some((v) => prefixMatches(p, v)));
}

// --- who the client is --------------------------------------------------------

const UTF8 = new TextEncoder();

/** Bytes as text, one character per byte: addresses are ASCII, and any
 * other byte must still compare as itself. */
function latin1(bytes) {
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return text;
}

function trimmed(bytes) {
  // Header values are bytes as sent; spaces and tabs around them are not
  // part of the value.
  let start = 0;
  let end = bytes.length;
  while (start < end && (bytes[start] === 0x20 || bytes[start] === 0x09)) start += 1;
  while (end > start && (bytes[end - 1] === 0x20 || bytes[end - 1] === 0x09)) end -= 1;
  return bytes.subarray(start, end);
}

/** `ip:port` or `[v6]:port` -> the address alone. */
export function ipOf(clientAddr) {
  const colon = clientAddr.lastIndexOf(':');
  const host = colon > 0 && /^\d+$/.test(clientAddr.slice(colon + 1))
    ? clientAddr.slice(0, colon)
    : clientAddr;
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

/**
 * Who the request counts for: `{kind, id}`, `kind` one of "header",
 * "forwarded_for", "client_ip", "shared", and `id` the identifying bytes
 * (empty for "shared").
 *
 * `req` needs `header(name)` (every value, as byte arrays) and
 * `clientAddr()`, as the host's request handle has them; only the headers
 * the config names are asked for, and `x-forwarded-for` only when the
 * client header is absent.
 */
export function identify(config, req) {
  const [first] = req.header(config.clientHeader);
  const key = first === undefined ? undefined : trimmed(first);
  if (key !== undefined && key.length > 0) return { kind: 'header', id: key };
  switch (config.fallback) {
    case 'forwarded_for': {
      // Repeated headers count as one list, in order.
      const items = req
        .header('x-forwarded-for')
        .flatMap((v) => latin1(v).split(','))
        .map((s) => s.trim())
        .filter((s) => s !== '');
      if (items.length > 0) {
        return { kind: 'forwarded_for', id: UTF8.encode(items[items.length - 1]) };
      }
      return { kind: 'shared', id: new Uint8Array() };
    }
    case 'client_ip':
      return { kind: 'client_ip', id: UTF8.encode(ipOf(req.clientAddr())) };
    default:
      return { kind: 'shared', id: new Uint8Array() };
  }
}

/**
 * The kv key of a client's bucket in a window. The identity is hashed
 * (SHA-256, native in the component's engine): an API key never lands in the
 * store (Redis, say) in clear, and keys stay short whatever a client sends.
 * Also returns a short id for log lines (12 hex digits of the hash).
 */
export async function bucketKey(client, windowIndex) {
  if (client.kind === 'shared') return { key: `w${windowIndex}:shared`, logId: 'shared' };
  const digest = new Uint8Array(
    await crypto.subtle.digest('SHA-256', concat(UTF8.encode(`${client.kind}\n`), client.id)),
  );
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
  return { key: `w${windowIndex}:${hex.slice(0, 32)}`, logId: hex.slice(0, 12) };
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

// --- the window and the decision ------------------------------------------------

/**
 * The window `nowMicros` falls in: its index since the epoch, the
 * milliseconds left in it (the new bucket's TTL), and the whole seconds
 * until it ends (`retry-after`, at least 1).
 */
export function windowAt(config, nowMicros) {
  const windowMs = config.windowSecs * 1000;
  const nowMs = Math.floor(Number(nowMicros) / 1000);
  const index = Math.floor(nowMs / windowMs);
  const leftMs = (index + 1) * windowMs - nowMs;
  return { index, ttlMs: leftMs, retryAfterSecs: Math.max(1, Math.ceil(leftMs / 1000)) };
}

/** The project's error body: `{"error": message, "code": code}`. */
export function errorBody(message, code) {
  return UTF8.encode(JSON.stringify({ error: message, code }));
}

const JSON_HEADER = { name: 'content-type', value: UTF8.encode('application/json') };

function header(name, value) {
  return { name, value: UTF8.encode(String(value)) };
}

/** The 429 for a client over its limit. */
export function tooManyRequests(config, window) {
  return {
    status: 429,
    headers: [
      JSON_HEADER,
      header('retry-after', window.retryAfterSecs),
      header('x-ratelimit-limit', config.limit),
      header('x-ratelimit-remaining', 0),
    ],
    body: errorBody('rate limit exceeded', 'rate_limited'),
  };
}

/** The 503 when the store cannot count and the config says fail closed. */
export function storeUnavailable() {
  return {
    status: 503,
    headers: [JSON_HEADER],
    body: errorBody('rate limiter unavailable', 'rate_limiter_unavailable'),
  };
}

/** The 500 should a request arrive before `configure` (the host never does that). */
export function notConfigured() {
  return {
    status: 500,
    headers: [JSON_HEADER],
    body: errorBody('ratelimit policy is not configured', 'policy_not_configured'),
  };
}

/** The text of a kv error: `{tag, val}` variants arrive as an exception's `payload`. */
export function describeStoreError(e) {
  const p = e !== null && typeof e === 'object' && 'payload' in e ? e.payload : e;
  if (p !== null && typeof p === 'object' && 'tag' in p) return `${p.tag}: ${p.val}`;
  return String(p?.message ?? p);
}

/**
 * The whole decision for one request. `host` gives the capabilities:
 * `increment(key, delta, ttlMs)` (throws when the store fails) and
 * `nowMicros()`. Returns one of
 *   {action: "continue"}                          (not counted, or allowed)
 *   {action: "continue", remaining, log?}         (counted and allowed)
 *   {action: "respond", reply, log}               (over the limit, or store down
 *                                                   and failing closed)
 * where `log` is `{level, message, fields}` for the host's log, without a
 * client's key: only the kind of identity and a short hash of it.
 */
export async function check(config, req, host) {
  const path = req.path();
  if (!applies(config, path)) return { action: 'continue' };
  const window = windowAt(config, host.nowMicros());
  const client = identify(config, req);
  const { key, logId } = await bucketKey(client, window.index);
  const fields = { path, client: client.kind, client_id: logId, limit: config.limit };
  let count;
  try {
    count = Number(await host.increment(key, 1, window.ttlMs));
  } catch (e) {
    const log = {
      level: 'warn',
      message: 'rate limit store unavailable',
      fields: { ...fields, error: describeStoreError(e), on_store_failure: config.onStoreFailure },
    };
    if (config.onStoreFailure === 'closed') {
      return { action: 'respond', reply: storeUnavailable(), log };
    }
    return { action: 'continue', log };
  }
  if (count > config.limit) {
    return {
      action: 'respond',
      reply: tooManyRequests(config, window),
      log: {
        level: 'warn',
        message: 'rate limited',
        fields: { ...fields, count, retry_after_secs: window.retryAfterSecs },
      },
    };
  }
  return { action: 'continue', remaining: config.limit - count };
}
