// Unit tests of the policy's logic, run natively by `node --test`: no
// component, no sidecar. The component itself is tested by cases.toml.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ConfigError, decide, parseConfig } from '../src/logic.js';

function refusal(text) {
  assert.throws(() => parseConfig(text), ConfigError);
  try {
    parseConfig(text);
  } catch (e) {
    return e.message;
  }
  return '';
}

test('the config defaults the status and lower-cases the header', () => {
  assert.deepEqual(parseConfig('{"header": "X-Api-Key"}'), { header: 'x-api-key', status: 401 });
  assert.equal(parseConfig('{"header": "x", "status": 403}').status, 403);
});

test('a bad config is refused naming the field', () => {
  assert.match(refusal('{"header": ""}'), /^header:/);
  assert.match(refusal('{}'), /^header: required/);
  assert.match(refusal('{"header": "x", "status": 200}'), /^status: 200 is not an error status/);
  assert.match(refusal('{"header": "x", "status": "401"}'), /^status:/);
  assert.match(refusal('{"header": "x", "heder": "y"}'), /^heder: unknown field/);
  assert.match(refusal('[]'), /^config: must be a JSON object/);
  assert.match(refusal('not json'), /^config: not JSON/);
});

test('a request with the header passes', () => {
  const config = parseConfig('{"header": "x-api-key"}');
  assert.equal(decide(config, [new TextEncoder().encode('k')]), null);
});

test('a request without the header is refused with a JSON body', () => {
  const config = parseConfig('{"header": "x-api-key", "status": 403}');
  const refused = decide(config, []);
  assert.equal(refused.status, 403);
  assert.deepEqual(JSON.parse(refused.body), {
    error: 'missing header `x-api-key`',
    code: 'missing_header',
  });
});
