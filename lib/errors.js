'use strict'
// The shape of every error the JS side of the package makes, as the addon makes its own
// (SPEC §6): an `Error` with `type` (Medusa's MedusaError type), `code`, and the `date` it was
// made. Extra fields (`cause`, `status`, `retryAfter`…) go in `extra`.

/** A typed error: `typedError('invalid_data', 'INVALID_ARGUMENT', 'key must be a string')`. */
function typedError(type, code, message, extra = {}) {
  return Object.assign(new Error(message), { type, code, date: new Date() }, extra)
}

/** A bad argument or option: `invalid_data` / `INVALID_ARGUMENT`. */
function invalid(message, extra) {
  return typedError('invalid_data', 'INVALID_ARGUMENT', message, extra)
}

/** Codes that mean another request holds, moved or reused the key: a caller may retry or answer 409/422. */
const CONFLICTS = new Set(['IDEMPOTENCY_KEY_LOCKED', 'IDEMPOTENCY_KEY_STALE', 'IDEMPOTENCY_KEY_REUSED', 'DATABASE_BUSY'])

/** A field of a rejection value, never throwing (a getter that throws, a revoked proxy). */
function field(e, name) {
  try {
    return e != null && (typeof e === 'object' || typeof e === 'function') ? e[name] : undefined
  } catch {
    return undefined
  }
}

module.exports = { typedError, invalid, field, CONFLICTS }
