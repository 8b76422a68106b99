// Glue between the contract (`wit/policy.wit`, world `policy`) and the logic
// in `logic.js`. componentize-js builds this module into a component; the
// imports from `sidecar:policy/...` exist only inside it, so the logic, not
// this file, is what `node --test` tests.
//
// How componentize-js maps the contract to JavaScript:
// - The exported interface `handler` is the export `handler`: an object
//   with the hooks as camelCase methods (`onRequest` for `on-request`).
// - `result<hooks, string>`: return the value for `ok`; throw the string
//   for `err` (a thrown string is the error; a thrown `Error` traps).
// - `flags hooks`: an object of booleans, `{ onResponse, onComplete }`.
// - A variant is `{ tag, val }`: `{ tag: 'continue' }`,
//   `{ tag: 'respond', val: reply }`; an enum is its case's name (`'warn'`).
// - `list<u8>` is a `Uint8Array` (header values and bodies are bytes).
// - `borrow<request>` is an object with the resource's methods:
//   `req.path()`, `req.header('x-api-key')` (a `Uint8Array[]`),
//   `req.setHeader(name, bytes)`, which throws if the host refuses it (the
//   exception's `payload` is the `edit-error`, `{ tag: 'invalid', val }`).
//   Valid only during the call: never keep it for later.
// - `u64` and `s64` are `BigInt`s (`kv.increment`, `clock.nowMicros`).
// - `Date.now()` reads the Unix epoch (the sandbox's WASI clock): the time
//   of day is `nowMicros()` from 'sidecar:policy/clock@0.2.1'.
//
// Lifecycle: the sidecar calls `configure` once per load and snapshots the
// configured instance; every request's instance starts from that snapshot,
// so what `configure` leaves in `config` is there for every request.

import { emit } from 'sidecar:policy/log@0.2.1';

import { ConfigError, decide, parseConfig } from './logic.js';

/** Set by `configure`. */
let config = null;

const JSON_HEADERS = [{ name: 'content-type', value: new TextEncoder().encode('application/json') }];

export const handler = {
  configure(json) {
    try {
      config = parseConfig(json);
    } catch (e) {
      // Thrown text is `err(text)`: the sidecar refuses the config with it
      // and keeps serving with what it had.
      throw e instanceof ConfigError ? e.message : e;
    }
    // Only `on-request` is needed. Ask for `onResponse` to read or change
    // responses, `onComplete` to log finished exchanges.
    return { onResponse: false, onComplete: false };
  },

  onRequest(req) {
    if (config === null) {
      // The host always configures first; fail closed if it did not.
      return reply(500, '{"error":"policy not configured","code":"policy_not_configured"}');
    }
    // One header, not the whole request; the body is never read, so it
    // streams upstream untouched (`req.body(maxBytes)` would buffer it).
    const refusal = decide(config, req.header(config.header));
    if (refusal === null) {
      return { tag: 'continue' };
    }
    emit('warn', 'request refused', [
      { key: 'missing_header', value: { tag: 'str', val: config.header } },
    ]);
    return reply(refusal.status, refusal.body);
  },

  // Every policy exports these two, but the sidecar calls them only when
  // `configure` asked for them: this one never does.
  onResponse(_req, _resp) {},

  onComplete(_req, _resp, _info) {},
};

function reply(status, body) {
  return {
    tag: 'respond',
    val: { status, headers: JSON_HEADERS, body: new TextEncoder().encode(body) },
  };
}
