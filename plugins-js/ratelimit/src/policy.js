// `ratelimit` policy: a fixed-window rate limiter, written in JavaScript.
//
// Glue between the WIT world `policy` of `sidecar:policy@0.2.1`
// (../../wit/policy.wit) and the pure logic in `logic.js` (tested by
// `node --test`, without wasm). componentize-js generates the bindings while
// it builds: the imports below are modules that exist only inside the
// component, and the export `handler` is the WIT interface of that name.
//
// How WIT maps to JavaScript here (componentize-js 0.23):
//   - interface export `handler` -> `export const handler = { configure,
//     onRequest, onResponse, onComplete }` (kebab-case -> camelCase); all four
//     must exist, even those `configure` never asks for;
//   - `result<hooks, string>` -> return the flags object for `ok`; return
//     `{ tag: 'err', val: message }` for `err` (throwing a string works
//     too, but throwing an `Error` traps the policy instead);
//   - `flags hooks` -> `{ onResponse: bool, onComplete: bool }`;
//   - `variant decision` -> `{ tag: 'continue' }`, `{ tag: 'respond', val: reply }`;
//   - `list<u8>` -> `Uint8Array`; `s64`/`u64` -> `BigInt`; `option<T>` ->
//     the value or `undefined`;
//   - `borrow<request>` -> an object with the resource's methods
//     (`req.path()`, `req.header(name)`, `req.clientAddr()`), valid only
//     during the call;
//   - an imported function's `result` error -> an exception whose `payload` is
//     the error variant, e.g. `{ tag: 'other', val: 'redis: connection refused' }`.
//
// Lifecycle: the host calls `configure` once per load and snapshots the
// instance, so every request's fresh instance starts with `config` set.
// `configure` asks for no hook but `on-request`, and the policy never reads a
// body, so bodies stream past it.

import { emit } from 'sidecar:policy/log@0.2.1';
import { increment } from 'sidecar:policy/kv@0.2.1';
import { nowMicros } from 'sidecar:policy/clock@0.2.1';

import { ConfigError, check, notConfigured, parseConfig } from './logic.js';

// Set by `configure`; a module global, so it is part of the snapshot.
let config = null;

// The host's capabilities, as `logic.check` takes them.
const host = {
  increment: (key, delta, ttlMs) => increment(key, BigInt(delta), BigInt(ttlMs)),
  nowMicros,
};

export const handler = {
  configure(text) {
    try {
      config = parseConfig(text);
    } catch (e) {
      if (e instanceof ConfigError) return { tag: 'err', val: e.message };
      throw e;
    }
    // No flag set: only `on-request` is called.
    return { onResponse: false, onComplete: false };
  },

  async onRequest(req) {
    if (config === null) {
      // The host always configures first; fail closed if it did not.
      return { tag: 'respond', val: notConfigured() };
    }
    const outcome = await check(config, req, host);
    if (outcome.log) emit(outcome.log.level, outcome.log.message, logFields(outcome.log.fields));
    return outcome.action === 'respond' ? { tag: 'respond', val: outcome.reply } : { tag: 'continue' };
  },

  // Never called: `configure` asks for neither. The bindings require them.
  onResponse(_req, _resp) {},
  onComplete(_req, _resp, _info) {},
};

/** `{key: value}` -> the host's typed log fields. */
function logFields(fields) {
  return Object.entries(fields).map(([key, value]) => ({
    key,
    value: Number.isInteger(value) ? { tag: 'int', val: BigInt(value) } : { tag: 'str', val: String(value) },
  }));
}
