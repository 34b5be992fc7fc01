'use strict'
// Medusa v1 drop-in: the container class. A Medusa project replaces the original service with
// one file, src/services/idempotency-key.ts (or dist/services/idempotency-key.js):
//
//   export { default } from "medusa-idempotency-native/medusa"
//
// Medusa's loader constructs it with the awilix cradle (`new Cls(cradle, configModule)`).
// It has no pool of its own: every statement goes through `cradle.manager` (TypeORM), so the
// recovery point commits or rolls back with the route's transaction. Unbound calls open a
// transaction on `cradle.manager` with the isolation Medusa's own service uses and retry once
// on 40001/40P01, as Medusa's `atomicPhase_` does. Errors carry Medusa's `type` strings.
const { IdempotencyKeyService: Native, wrapExecutor } = require('./index.js')

const RETRYABLE = new Set(['40001', '40P01'])

class IdempotencyKeyService {
  /**
   * @param {{ manager: import('typeorm').EntityManager }} cradle the awilix cradle
   * @param {{ idempotency?: { lockTimeoutMs?: number, stageTimeoutMs?: number } }} [configModule]
   *   optional tuning under `configModule.idempotency`
   */
  constructor(cradle, configModule) {
    this.__container__ = cradle
    this.__configModule__ = configModule
    this.manager_ = cradle.manager
    this.transactionManager_ = undefined
    // Lease releases after a failed stage go through cradle.manager outside any transaction,
    // so they never wait on the route's still-open one.
    this.core_ = Native.detached(wrapExecutor(cradle.manager), configModule?.idempotency ?? {})
  }

  /** A copy bound to `transactionManager`, like Medusa's `TransactionBaseService`. */
  withTransaction(transactionManager) {
    if (!transactionManager) return this
    const cloned = Object.create(Object.getPrototypeOf(this))
    Object.assign(cloned, this, { manager_: transactionManager, transactionManager_: transactionManager })
    return cloned
  }

  /**
   * A copy that sees only `tenant`'s keys (stored as `<tenant>/<key>`, see the package's
   * `forTenant`); it stays bound to this copy's transaction, if any.
   */
  forTenant(tenant) {
    const cloned = Object.create(Object.getPrototypeOf(this))
    Object.assign(cloned, this, { core_: this.core_.forTenant(tenant) })
    return cloned
  }

  /** Run `work` on the bound transaction, or in a new one on `cradle.manager`. */
  async atomicPhase_(work, isolation) {
    if (this.transactionManager_) return work(this.core_.withTransaction(this.transactionManager_))
    const attempt = () =>
      isolation
        ? this.manager_.transaction(isolation, (m) => work(this.core_.withTransaction(m)))
        : this.manager_.transaction((m) => work(this.core_.withTransaction(m)))
    try {
      return await attempt()
    } catch (e) {
      if (isolation && RETRYABLE.has(e?.code)) return attempt()
      throw e
    }
  }

  initializeRequest(headerKey, reqMethod, reqParams, reqPath) {
    return this.atomicPhase_((s) => s.initializeRequest(headerKey, reqMethod, reqParams, reqPath), 'SERIALIZABLE')
  }

  create(payload) {
    return this.atomicPhase_((s) => s.create(payload))
  }

  /** Like Medusa's, outside any transaction unless bound. */
  retrieve(idempotencyKeyOrSelector) {
    return this.core_.withTransaction(this.manager_).retrieve(idempotencyKeyOrSelector)
  }

  lock(idempotencyKey) {
    return this.atomicPhase_((s) => s.lock(idempotencyKey))
  }

  update(idempotencyKey, update) {
    return this.atomicPhase_((s) => s.update(idempotencyKey, update))
  }

  /** The callback receives the transaction's EntityManager, as in Medusa. */
  workStage(idempotencyKey, callback, options) {
    return this.atomicPhase_((s) => s.workStage(idempotencyKey, callback, options), 'SERIALIZABLE')
  }
}

module.exports = IdempotencyKeyService
module.exports.default = IdempotencyKeyService
module.exports.IdempotencyKeyService = IdempotencyKeyService
