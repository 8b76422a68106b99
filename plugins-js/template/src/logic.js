// The policy's decisions, in plain JavaScript: no bindings and no host, so
// `node --test` runs them natively (test/logic.test.js). `policy.js`
// connects them to the contract.
//
// Config: {"header": "x-api-key", "status": 401} (`status` optional): every
// request must carry `header`, or it is refused with `status` and a JSON
// body.

/** The status of a refusal when the config names none. */
export const DEFAULT_STATUS = 401;

const FIELDS = ['header', 'status'];

/** A refused config; the message names the field at fault. */
export class ConfigError extends Error {}

/**
 * Parses and checks the config (the JSON text `configure` receives).
 * @param {string} text
 * @returns {{header: string, status: number}}
 * @throws {ConfigError} naming the field at fault
 */
export function parseConfig(text) {
  let raw;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config: not JSON (${e.message})`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError('config: must be a JSON object');
  }
  // A typo (`heder`) must stop the load, not be ignored.
  for (const key of Object.keys(raw)) {
    if (!FIELDS.includes(key)) {
      throw new ConfigError(`${key}: unknown field (expected one of: ${FIELDS.join(', ')})`);
    }
  }
  if (typeof raw.header !== 'string') {
    throw new ConfigError('header: required, a header name');
  }
  if (raw.header === '') {
    throw new ConfigError('header: must not be empty');
  }
  const status = raw.status ?? DEFAULT_STATUS;
  if (!Number.isInteger(status) || status < 400 || status > 599) {
    throw new ConfigError(`status: ${JSON.stringify(status)} is not an error status (400-599)`);
  }
  // The host hands header names in lower case.
  return { header: raw.header.toLowerCase(), status };
}

/**
 * What to do with a request, given the values of the configured header
 * (bytes, as on the wire; empty when the request lacks it).
 * @param {{header: string, status: number}} config
 * @param {Uint8Array[]} headerValues
 * @returns {null | {status: number, body: string}} `null` lets it through
 */
export function decide(config, headerValues) {
  if (headerValues.length > 0) {
    return null;
  }
  const body = JSON.stringify({
    error: `missing header \`${config.header}\``,
    code: 'missing_header',
  });
  return { status: config.status, body };
}
