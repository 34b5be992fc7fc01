'use strict'
// Client keys and the key object, for the three suites (__test__/, stress/, parity/).
const assert = require('node:assert/strict')

let seq = 0

/**
 * A client key no other call returns, in this process or another (pid, counter, random tail):
 * `<prefix>-<pid>-<n>-<random>`, printable ASCII.
 */
const uniq = (prefix = 'k') => `${prefix}-${process.pid}-${++seq}-${Math.random().toString(36).slice(2, 8)}`

/** The ten columns of Medusa's idempotency_key, which are the fields of every key object (SPEC §1, §2). */
const KEY_FIELDS = [
  'id',
  'idempotency_key',
  'created_at',
  'locked_at',
  'request_method',
  'request_params',
  'request_path',
  'response_code',
  'response_body',
  'recovery_point',
]

/** A client key made by the service when none is given: a UUID v4. */
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

/** A key's id: `ikey_` and a ULID. */
const KEY_ID = /^ikey_[0-9A-HJKMNP-TV-Z]{26}$/

/** A returned key object (SPEC §2): all ten fields, nulls not undefined, Dates, id format. */
function assertKeyShape(k) {
  assert.equal(typeof k, 'object')
  assert.notEqual(k, null)
  assert.deepEqual(Object.keys(k).sort(), [...KEY_FIELDS].sort())
  for (const f of KEY_FIELDS) assert.notEqual(k[f], undefined, `${f} is undefined`)
  assert.match(k.id, KEY_ID)
  assert.equal(typeof k.idempotency_key, 'string')
  assert.ok(k.created_at instanceof Date, 'created_at is a Date')
  assert.ok(!Number.isNaN(k.created_at.getTime()))
  assert.ok(k.locked_at === null || k.locked_at instanceof Date, 'locked_at is Date|null')
  assert.equal(typeof k.recovery_point, 'string')
  assert.ok(k.response_code === null || typeof k.response_code === 'number')
  assert.ok(k.request_method === null || typeof k.request_method === 'string')
  assert.ok(k.request_path === null || typeof k.request_path === 'string')
}

module.exports = { uniq, KEY_FIELDS, KEY_ID, UUID_V4, assertKeyShape }
