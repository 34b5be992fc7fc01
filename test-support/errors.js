'use strict'
// The service's typed errors, as the three suites (__test__/, stress/, parity/) check them:
// `rejects()` to capture a rejection, `assertErr()` for the contract tests, and the predicates
// the stress scenarios count outcomes with.
const assert = require('node:assert/strict')
const util = require('node:util')

/** Await a promise that must reject; return the rejection. */
async function rejects(promise) {
  try {
    await promise
  } catch (e) {
    return e
  }
  throw new Error('expected a rejection, got a result')
}

/**
 * An error of the service's contract (every error it raises: an Error with string type, code
 * and non-empty message, and a valid Date) with this `type` and `code`. `code` may be a list
 * (any of them) or left undefined (any string). With `retryAfter`, an IDEMPOTENCY_KEY_LOCKED
 * must carry exactly that `retryAfter`.
 */
function assertErr(e, type, code, { retryAfter } = {}) {
  assert.ok(e instanceof Error, `expected an Error, got ${util.inspect(e)}`)
  assert.equal(typeof e.type, 'string', `type of ${util.inspect(e)}`)
  assert.equal(typeof e.code, 'string', `code of ${util.inspect(e)}`)
  assert.equal(typeof e.message, 'string')
  assert.ok(e.message.length > 0, 'message is empty')
  assert.ok(e.date instanceof Date, `date of ${util.inspect(e)}`)
  assert.ok(!Number.isNaN(e.date.getTime()), 'date is invalid')
  assert.equal(e.type, type, `type of ${util.inspect(e)}`)
  if (Array.isArray(code)) assert.ok(code.includes(e.code), `code ${e.code} (${e.message}) not in ${code.join('/')}`)
  else if (code !== undefined) assert.equal(e.code, code, `code of ${util.inspect(e)}`)
  if (retryAfter !== undefined && e.code === 'IDEMPOTENCY_KEY_LOCKED') assert.equal(e.retryAfter, retryAfter, `retryAfter of ${e.message}`)
}

// ---------------------------------------------------------------------------------------------
// Predicates (the stress scenarios)

const CONFLICT_CODES = ['IDEMPOTENCY_KEY_LOCKED', 'IDEMPOTENCY_KEY_STALE', '40001', '40P01']
const SQLSTATE = /^[0-9A-Z]{5}$/

const isConflict = (e) => e instanceof Error && e.type === 'conflict' && CONFLICT_CODES.includes(e.code)

/** A database error as the contract types it: type database_error, code a SQLSTATE or a named code. */
function isTypedDbError(e, codes) {
  if (!(e instanceof Error) || e.type !== 'database_error' || typeof e.code !== 'string') return false
  if (codes) return codes.includes(e.code)
  return SQLSTATE.test(e.code) || ['CONNECTION_FAILED', 'POOL_TIMEOUT'].includes(e.code)
}

/** Any error of the service's contract: an Error with string type and code, and a Date. */
const isTypedError = (e) => e instanceof Error && typeof e.type === 'string' && typeof e.code === 'string'

function describe(e) {
  if (e instanceof Error) return `${e.constructor.name}(type=${e.type}, code=${e.code}): ${e.message}`
  return `non-Error ${typeof e}: ${String(e)}`
}

function assertDbError(e, codes, what) {
  assert.ok(isTypedDbError(e, codes), `${what}: expected database_error with code ${codes ? codes.join('|') : 'SQLSTATE/CONNECTION_FAILED/POOL_TIMEOUT'}, got ${describe(e)}`)
}

module.exports = {
  rejects,
  assertErr,
  CONFLICT_CODES,
  isConflict,
  isTypedDbError,
  isTypedError,
  describe,
  assertDbError,
}
