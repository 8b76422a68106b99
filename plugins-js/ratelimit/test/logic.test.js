// Unit tests of the ratelimit policy's pure logic; no wasm needed.
//
// Run: node --test   (in plugins-js/ratelimit)

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';

import {
  ConfigError,
  applies,
  bucketKey,
  check,
  describeStoreError,
  identify,
  ipOf,
  normalizePath,
  parseConfig,
  prefixMatches,
  windowAt,
} from '../src/logic.js';

const cfg = (fields) => JSON.stringify({ limit: 3, ...fields });
const bytes = (text) => new TextEncoder().encode(text);
const text = (b) => new TextDecoder().decode(b);

/** The message of the ConfigError that parseConfig throws for `json`. */
function refused(json) {
  try {
    parseConfig(json);
  } catch (e) {
    assert.ok(e instanceof ConfigError, `not a ConfigError: ${e}`);
    return e.message;
  }
  assert.fail(`config was accepted: ${json}`);
}

/** A request handle like the host's: `headers` is a list of [name, value]. */
function request({ path = '/', headers = [], clientAddr = '127.0.0.1:40000' } = {}) {
  const asked = [];
  return {
    asked,
    path: () => path,
    clientAddr: () => clientAddr,
    header(name) {
      asked.push(name);
      return headers.filter(([n]) => n === name).map(([, v]) => bytes(v));
    },
  };
}

/** An in-memory kv store and clock with the host's increment semantics. */
function fakeHost(startSecs = 1_704_067_200) {
  const entries = new Map();
  const host = {
    now: BigInt(startSecs) * 1_000_000n,
    calls: [],
    failWith: null,
    nowMicros: () => host.now,
    advance(secs) {
      host.now += BigInt(Math.round(secs * 1_000_000));
    },
    async increment(key, delta, ttlMs) {
      host.calls.push({ key, delta, ttlMs });
      if (host.failWith) throw host.failWith;
      const nowMs = Number(host.now / 1000n);
      let entry = entries.get(key);
      if (!entry || entry.expires <= nowMs) {
        entry = { value: 0n, expires: nowMs + ttlMs };
        entries.set(key, entry);
      }
      entry.value += BigInt(delta);
      // The host returns an s64: a BigInt.
      return entry.value;
    },
  };
  return host;
}

describe('parseConfig', () => {
  it('fills in the defaults', () => {
    assert.deepEqual(parseConfig('{"limit": 10}'), {
      limit: 10,
      windowSecs: 60,
      clientHeader: 'x-api-key',
      fallback: 'forwarded_for',
      pathPrefixes: [],
      onStoreFailure: 'open',
    });
  });

  it('takes every field, normalising header names and prefixes', () => {
    const c = parseConfig(
      JSON.stringify({
        limit: 1,
        window_secs: 86_400,
        client_header: 'X-Authenticated-User',
        fallback: 'client_ip',
        path_prefixes: ['/api/', '/', '/v1//'],
        on_store_failure: 'closed',
      }),
    );
    assert.equal(c.clientHeader, 'x-authenticated-user');
    assert.deepEqual(c.pathPrefixes, ['/api', '/', '/v1']);
    assert.equal(c.fallback, 'client_ip');
    assert.equal(c.onStoreFailure, 'closed');
    assert.equal(c.windowSecs, 86_400);
  });

  it('refuses what is wrong, naming the field', () => {
    const cases = {
      'not json': 'ratelimit config: invalid JSON',
      '[]': 'ratelimit config: must be a JSON object',
      null: 'ratelimit config: must be a JSON object',
      '{}': 'limit: required',
      [cfg({ limt: 3 })]: 'limt: unknown field',
      '{"limit": "100"}': 'limit: must be an integer from 1 to 1000000000',
      '{"limit": 0}': 'limit: must be an integer',
      '{"limit": 1.5}': 'limit: must be an integer',
      '{"limit": 1e10}': 'limit: must be an integer',
      '{"limit": true}': 'limit: must be an integer',
      [cfg({ window_secs: 0 })]: 'window_secs: must be an integer from 1 to 86400',
      [cfg({ window_secs: 86_401 })]: 'window_secs: must be an integer',
      [cfg({ window_secs: null })]: 'window_secs: must be an integer',
      [cfg({ client_header: '' })]: 'client_header: must be an HTTP header name',
      [cfg({ client_header: 'x api key' })]: 'client_header: must be an HTTP header name',
      [cfg({ client_header: 7 })]: 'client_header: must be an HTTP header name',
      [cfg({ fallback: 'ip' })]: 'fallback: must be one of "forwarded_for", "client_ip", "shared"',
      [cfg({ on_store_failure: 'deny' })]: 'on_store_failure: must be one of "open", "closed"',
      [cfg({ on_store_failure: true })]: 'on_store_failure: must be one of',
      [cfg({ path_prefixes: '/api' })]: 'path_prefixes: must be a list of paths',
      [cfg({ path_prefixes: ['/api', 'v1'] })]: 'path_prefixes[1]: must be a string starting with `/`',
      [cfg({ path_prefixes: [5] })]: 'path_prefixes[0]: must be a string',
      [cfg({ path_prefixes: ['/a?b'] })]: 'path_prefixes[0]: must not contain',
    };
    for (const [json, expected] of Object.entries(cases)) {
      const message = refused(json);
      assert.ok(message.startsWith(expected), `${json}: ${message}`);
    }
  });
});

describe('paths', () => {
  it('matches prefixes on a segment boundary', () => {
    for (const path of ['/api', '/api/', '/api/x']) assert.ok(prefixMatches('/api', path), path);
    for (const path of ['/apix', '/ap', '/', '/x/api', '/API']) {
      assert.ok(!prefixMatches('/api', path), path);
    }
    assert.ok(prefixMatches('/', '/anything'));
  });

  it('normalizes as an upstream may resolve the path', () => {
    assert.equal(normalizePath('/%61pi/x'), '/api/x');
    assert.equal(normalizePath('/public/../api'), '/api');
    assert.equal(normalizePath('//api//x/./y'), '/api/x/y');
    assert.equal(normalizePath('/public/%2e%2e/api'), '/api');
    assert.equal(normalizePath('/public\\..\\api'), '/api');
    assert.equal(normalizePath('/../..'), '/');
    assert.equal(normalizePath('/100%/x%zz'), '/100%/x%zz');
  });

  it('counts every path without prefixes, only covered ones with', () => {
    assert.ok(applies(parseConfig(cfg({})), '/anything'));
    const c = parseConfig(cfg({ path_prefixes: ['/api'] }));
    for (const path of ['/api', '/api/x', '/%61pi', '/public/../api/x', '//api']) {
      assert.ok(applies(c, path), path);
    }
    for (const path of ['/', '/apix', '/public']) assert.ok(!applies(c, path), path);
  });
});

describe('identify', () => {
  const c = (fields) => parseConfig(cfg(fields));

  it('uses the first value of the client header, trimmed', () => {
    const req = request({ headers: [['x-api-key', ' k1 '], ['x-api-key', 'k2']] });
    const who = identify(c({}), req);
    assert.equal(who.kind, 'header');
    assert.equal(text(who.id), 'k1');
    // x-forwarded-for is not even asked for.
    assert.deepEqual(req.asked, ['x-api-key']);
  });

  it('falls back to the last x-forwarded-for address, then the shared bucket', () => {
    const forwarded = request({
      headers: [['x-api-key', '  '], ['x-forwarded-for', '1.1.1.1, 2.2.2.2'], ['x-forwarded-for', ' 3.3.3.3 ,']],
    });
    const who = identify(c({}), forwarded);
    assert.equal(who.kind, 'forwarded_for');
    assert.equal(text(who.id), '3.3.3.3');
    assert.equal(identify(c({}), request()).kind, 'shared');
  });

  it('can fall back to the connection address, or straight to the shared bucket', () => {
    const req = request({ headers: [['x-forwarded-for', '9.9.9.9']], clientAddr: '[::1]:5000' });
    const who = identify(c({ fallback: 'client_ip' }), req);
    assert.deepEqual([who.kind, text(who.id)], ['client_ip', '::1']);
    assert.equal(identify(c({ fallback: 'shared' }), req).kind, 'shared');
  });

  it('keeps bytes that are not UTF-8 as they are', () => {
    const req = request();
    req.header = () => [new Uint8Array([0xff, 0x20])];
    assert.deepEqual(identify(c({}), req).id, new Uint8Array([0xff]));
  });

  it('strips the port from the client address', () => {
    assert.equal(ipOf('10.0.0.1:8080'), '10.0.0.1');
    assert.equal(ipOf('[2001:db8::1]:443'), '2001:db8::1');
    assert.equal(ipOf('10.0.0.1'), '10.0.0.1');
  });
});

describe('bucketKey', () => {
  it('hashes the identity: no key in clear, short keys whatever was sent', async () => {
    const secret = 'sk_live_' + 'x'.repeat(5000);
    const { key, logId } = await bucketKey({ kind: 'header', id: bytes(secret) }, 7);
    const sha = createHash('sha256').update(`header\n${secret}`).digest('hex');
    assert.equal(key, `w7:${sha.slice(0, 32)}`);
    assert.equal(logId, sha.slice(0, 12));
    assert.ok(!key.includes('sk_live'));
  });

  it('separates kinds and windows', async () => {
    const a = await bucketKey({ kind: 'header', id: bytes('1.2.3.4') }, 1);
    const b = await bucketKey({ kind: 'forwarded_for', id: bytes('1.2.3.4') }, 1);
    const c = await bucketKey({ kind: 'header', id: bytes('1.2.3.4') }, 2);
    assert.notEqual(a.key, b.key);
    assert.notEqual(a.key, c.key);
    assert.deepEqual(await bucketKey({ kind: 'shared', id: new Uint8Array() }, 3), {
      key: 'w3:shared',
      logId: 'shared',
    });
  });
});

describe('windowAt', () => {
  const c = parseConfig(cfg({ window_secs: 60 }));

  it('aligns windows on the epoch', () => {
    // 2024-01-01T00:00:00Z is a minute boundary.
    const start = 1_704_067_200_000_000n;
    assert.deepEqual(windowAt(c, start), { index: 28_401_120, ttlMs: 60_000, retryAfterSecs: 60 });
    assert.deepEqual(windowAt(c, start + 59_500_000n), {
      index: 28_401_120,
      ttlMs: 500,
      retryAfterSecs: 1,
    });
    assert.equal(windowAt(c, start + 60_000_000n).index, 28_401_121);
    assert.equal(windowAt(c, start + 1_234n).retryAfterSecs, 60);
  });
});

describe('check', () => {
  const limited = parseConfig(cfg({ limit: 2, window_secs: 10 }));
  const alice = () => request({ path: '/x', headers: [['x-api-key', 'alice']] });
  const bob = () => request({ path: '/x', headers: [['x-api-key', 'bob']] });

  it('allows up to the limit, then answers 429 until the window ends', async () => {
    const host = fakeHost();
    assert.deepEqual(await check(limited, alice(), host), { action: 'continue', remaining: 1 });
    assert.deepEqual(await check(limited, alice(), host), { action: 'continue', remaining: 0 });
    host.advance(3);
    const over = await check(limited, alice(), host);
    assert.equal(over.action, 'respond');
    assert.equal(over.reply.status, 429);
    const headers = Object.fromEntries(over.reply.headers.map((h) => [h.name, text(h.value)]));
    assert.deepEqual(headers, {
      'content-type': 'application/json',
      'retry-after': '7',
      'x-ratelimit-limit': '2',
      'x-ratelimit-remaining': '0',
    });
    assert.deepEqual(JSON.parse(text(over.reply.body)), {
      error: 'rate limit exceeded',
      code: 'rate_limited',
    });
    assert.equal(over.log.level, 'warn');
    assert.equal(over.log.message, 'rate limited');
    assert.equal(over.log.fields.count, 3);
    assert.equal(over.log.fields.client, 'header');
    assert.ok(!JSON.stringify(over.log).includes('alice'), 'the key is never logged');

    // Each client has its own bucket.
    assert.equal((await check(limited, bob(), host)).action, 'continue');
    // A new window, a new count.
    host.advance(7);
    assert.deepEqual(await check(limited, alice(), host), { action: 'continue', remaining: 1 });
  });

  it('counts one per request, with a TTL that ends with the window', async () => {
    const host = fakeHost();
    host.advance(4.25);
    await check(limited, alice(), host);
    assert.equal(host.calls.length, 1);
    assert.equal(host.calls[0].delta, 1);
    assert.equal(host.calls[0].ttlMs, 5_750);
  });

  it('neither counts nor reads headers of paths it does not cover', async () => {
    const host = fakeHost();
    const c = parseConfig(cfg({ limit: 1, path_prefixes: ['/api'] }));
    const req = request({ path: '/public', headers: [['x-api-key', 'alice']] });
    for (let i = 0; i < 3; i++) assert.deepEqual(await check(c, req, host), { action: 'continue' });
    assert.equal(host.calls.length, 0);
    assert.deepEqual(req.asked, []);
  });

  it('on a store failure, fails open or closed as configured, and says so', async () => {
    const host = fakeHost();
    // As the bindings throw a kv error: its variant is the `payload`.
    host.failWith = Object.assign(new Error('(see error.payload)'), {
      payload: { tag: 'other', val: 'redis: connection refused' },
    });
    const open = await check(limited, alice(), host);
    assert.equal(open.action, 'continue');
    assert.equal(open.log.message, 'rate limit store unavailable');
    assert.equal(open.log.fields.error, 'other: redis: connection refused');
    assert.equal(open.log.fields.on_store_failure, 'open');

    const closedConfig = parseConfig(cfg({ on_store_failure: 'closed' }));
    const closed = await check(closedConfig, alice(), host);
    assert.equal(closed.action, 'respond');
    assert.equal(closed.reply.status, 503);
    assert.equal(JSON.parse(text(closed.reply.body)).code, 'rate_limiter_unavailable');
  });

  it('describes store errors of any shape', () => {
    assert.equal(describeStoreError({ payload: { tag: 'too-large', val: 'key' } }), 'too-large: key');
    assert.equal(describeStoreError(new Error('boom')), 'boom');
    assert.equal(describeStoreError('plain'), 'plain');
  });
});
