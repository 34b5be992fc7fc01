'use strict'
// The package's face: the generated loader (native.js) plus the one piece that has to live in
// JS — bound mode over a caller's executor (TypeORM EntityManager, node-postgres client, any
// `query(sql, params) => Promise`). Its result shapes are normalised here, in one place, and
// its failures are turned into values, so the Rust core never sees a rejected promise from it.
const native = require('./native.js')

const { IdempotencyKeyService, TransactionManager } = native
const EXECUTOR = Symbol('medusa-idempotency-native.executor')

/**
 * Rows from whatever an executor resolved to: TypeORM returns `[rows, rowCount]` for
 * UPDATE/DELETE … RETURNING and a rows array otherwise; node-postgres returns `{ rows }`.
 */
function normalizeRows(result) {
  if (Array.isArray(result)) {
    const typeormWrite = result.length === 2 && Array.isArray(result[0]) && typeof result[1] === 'number'
    return typeormWrite ? result[0] : result
  }
  if (result && Array.isArray(result.rows)) return result.rows
  return []
}

function describeFailure(e) {
  try {
    const code = typeof e?.code === 'string' ? e.code : typeof e?.driverError?.code === 'string' ? e.driverError.code : undefined
    return { code, message: String(e?.message ?? e) }
  } catch {
    return { code: undefined, message: 'the executor failed with a value that cannot be read' }
  }
}

/** Never throws: an unreadable result (a revoked proxy, throwing getters) is a failure. */
function settleRows(result) {
  try {
    return { rows: normalizeRows(result) }
  } catch (e) {
    return { error: describeFailure(e) }
  }
}

/** The executor's `query`, resolving to `{ rows }` or `{ error }` and never rejecting. */
function wrapExecutor(executor) {
  return (sql, params) => {
    let pending
    try {
      pending = executor.query(sql, params)
    } catch (e) {
      return Promise.resolve({ error: describeFailure(e) })
    }
    return Promise.resolve(pending).then(settleRows, (e) => ({ error: describeFailure(e) }))
  }
}

function invalid(message) {
  return Object.assign(new Error(message), { type: 'invalid_data', code: 'INVALID_ARGUMENT', date: new Date() })
}

function isExecutor(manager) {
  if (manager == null || (typeof manager !== 'object' && typeof manager !== 'function')) return false
  try {
    return !(manager instanceof TransactionManager) && typeof manager.query === 'function'
  } catch {
    // A throwing getter or a revoked proxy: not something we can run SQL through.
    throw invalid('withTransaction() takes a TransactionManager or an object with query(sql, params)')
  }
}

const nativeWithTransaction = IdempotencyKeyService.prototype.withTransaction
IdempotencyKeyService.prototype.withTransaction = function withTransaction(manager) {
  if (!isExecutor(manager)) return nativeWithTransaction.call(this, manager)
  const bound = this.bindExecutor(wrapExecutor(manager))
  bound[EXECUTOR] = manager
  return bound
}

const nativeWorkStage = IdempotencyKeyService.prototype.workStage
IdempotencyKeyService.prototype.workStage = function workStage(key, callback, options) {
  if (typeof callback !== 'function') return nativeWorkStage.call(this, key, callback, options)
  const executor = this[EXECUTOR]
  // An async wrapper awaits whatever the callback returns, thenables included, as `await`
  // would; bound mode hands the callback the caller's executor, like Medusa's.
  const run = executor !== undefined ? async () => callback(executor) : async (tx) => callback(tx)
  return nativeWorkStage.call(this, key, run, options)
}

module.exports = { ...native, wrapExecutor }
