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
  const code = typeof e?.code === 'string' ? e.code : typeof e?.driverError?.code === 'string' ? e.driverError.code : undefined
  return { code, message: String(e?.message ?? e) }
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
    return Promise.resolve(pending).then(
      (result) => ({ rows: normalizeRows(result) }),
      (e) => ({ error: describeFailure(e) }),
    )
  }
}

function isExecutor(manager) {
  return manager != null && !(manager instanceof TransactionManager) && typeof manager.query === 'function'
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
  const executor = this[EXECUTOR]
  if (executor !== undefined && typeof callback === 'function') {
    // Bound mode: the callback works through the caller's executor, like Medusa's.
    return nativeWorkStage.call(this, key, () => callback(executor), options)
  }
  return nativeWorkStage.call(this, key, callback, options)
}

module.exports = { ...native, wrapExecutor }
