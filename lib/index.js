'use strict'
// The package's face: the generated loader (native.js) plus the one piece that has to live in
// JS — bound mode over a caller's executor (TypeORM EntityManager, node-postgres client, any
// `query(sql, params) => Promise`). Its result shapes are normalised here, in one place, and
// its failures are turned into values, so the Rust core never sees a rejected promise from it.
const dc = require('node:diagnostics_channel')
const { AsyncResource } = require('node:async_hooks')
const { performance } = require('node:perf_hooks')
const native = require('./binding.js') // native.js, with an error naming the missing binary

const { IdempotencyKeyService, TransactionManager } = native
const EXECUTOR = Symbol('medusa-idempotency-native.executor')

// A native method called on something that is not its class's instance (`const { retrieve } =
// service`, `.call(other)`) is refused by V8 ("Illegal invocation") or by napi's unwrap before
// any of our code runs, with an untyped error. Every native method and getter is wrapped once so
// that refusal is a typed INVALID_ARGUMENT like any other bad argument: thrown by the synchronous
// ones, a rejection from those that return a promise. Typed errors pass through unchanged.
const SYNC = new Set(['bindExecutor', 'forTenant', 'withTransaction', 'withStatementLog', 'tenant', 'active'])

function wrongThis(e, owner, name) {
  let typed
  try {
    typed = typeof e?.type === 'string'
  } catch {
    typed = false
  }
  if (typed) return e
  return Object.assign(new Error(`${owner}.${name} needs a ${owner} as \`this\`: call it on one (obj.${name}), not detached from it or on another object`), {
    type: 'invalid_data',
    code: 'INVALID_ARGUMENT',
    cause: e,
    date: new Date(),
  })
}

function guardReceivers(Class) {
  for (const name of Object.getOwnPropertyNames(Class.prototype)) {
    if (name === 'constructor') continue
    const d = Object.getOwnPropertyDescriptor(Class.prototype, name)
    if (d.get) {
      const get = d.get
      Object.defineProperty(Class.prototype, name, {
        ...d,
        get: { [name]() {
          try {
            return get.call(this)
          } catch (e) {
            throw wrongThis(e, Class.name, name)
          }
        } }[name],
      })
    } else if (typeof d.value === 'function') {
      const method = d.value
      const sync = SYNC.has(name)
      Class.prototype[name] = { [name](...args) {
        try {
          return method.apply(this, args)
        } catch (e) {
          if (sync) throw wrongThis(e, Class.name, name)
          return Promise.reject(wrongThis(e, Class.name, name))
        }
      } }[name]
    }
  }
}
guardReceivers(IdempotencyKeyService)
guardReceivers(TransactionManager)

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
  // The addon calls the executor from a thread-safe function, outside any async context: it
  // runs in the one withTransaction() was called in (a request's, inside its transaction).
  const bound = this.bindExecutor(AsyncResource.bind(wrapExecutor(manager)))
  bound[EXECUTOR] = manager
  return bound
}

// ---------------------------------------------------------------------------------------------
// Tracing: events on Node's diagnostics_channel. Nothing is built or published unless the
// channel has a subscriber when the call starts.

const channels = {
  stageStart: dc.channel('medusa-idempotency:stage:start'),
  stageEnd: dc.channel('medusa-idempotency:stage:end'),
  stageError: dc.channel('medusa-idempotency:stage:error'),
  retry: dc.channel('medusa-idempotency:retry'),
  conflict: dc.channel('medusa-idempotency:conflict'),
  replay: dc.channel('medusa-idempotency:replay'),
  reap: dc.channel('medusa-idempotency:reap'),
}
const stageChannels = [channels.stageStart, channels.stageEnd, channels.stageError, channels.retry, channels.conflict]

/** Conflicts a caller may retry or answer with 409/422: LOCKED, STALE, REUSED, DATABASE_BUSY. */
const CONFLICTS = new Set(['IDEMPOTENCY_KEY_LOCKED', 'IDEMPOTENCY_KEY_STALE', 'IDEMPOTENCY_KEY_REUSED', 'DATABASE_BUSY'])

function tenantOf(service) {
  try {
    return service.tenant ?? null
  } catch {
    return null
  }
}

/** A field of a rejection value, never throwing (a getter that throws, a revoked proxy). */
function field(e, name) {
  try {
    return e != null && (typeof e === 'object' || typeof e === 'function') ? e[name] : undefined
  } catch {
    return undefined
  }
}

function publishConflict(method, key, service, e) {
  const code = channels.conflict.hasSubscribers ? field(e, 'code') : undefined
  if (CONFLICTS.has(code)) {
    channels.conflict.publish({ method, key, tenant: tenantOf(service), code, type: field(e, 'type'), message: field(e, 'message') })
  }
}

/** Wrap a method so that a conflict it rejects with is published. */
function observeConflicts(name) {
  const original = IdempotencyKeyService.prototype[name]
  IdempotencyKeyService.prototype[name] = function observed(key, ...rest) {
    const pending = original.call(this, key, ...rest)
    if (!channels.conflict.hasSubscribers) return pending
    return pending.catch((e) => {
      publishConflict(name, key, this, e)
      throw e
    })
  }
}
observeConflicts('lock')

const nativeInitializeRequest = IdempotencyKeyService.prototype.initializeRequest
IdempotencyKeyService.prototype.initializeRequest = function initializeRequest(headerKey, ...rest) {
  const pending = nativeInitializeRequest.call(this, headerKey, ...rest)
  if (!channels.replay.hasSubscribers && !channels.conflict.hasSubscribers) return pending
  return pending.then(
    (key) => {
      if (key.recovery_point === 'finished' && channels.replay.hasSubscribers) {
        channels.replay.publish({ key: key.idempotency_key, tenant: tenantOf(this), responseCode: key.response_code })
      }
      return key
    },
    (e) => {
      publishConflict('initializeRequest', headerKey, this, e)
      throw e
    },
  )
}

const nativeReap = IdempotencyKeyService.prototype.reap
IdempotencyKeyService.prototype.reap = function reap(options) {
  const pending = nativeReap.call(this, options)
  if (!channels.reap.hasSubscribers) return pending
  const started = performance.now()
  return pending.then((removed) => {
    channels.reap.publish({ removed, durationMs: performance.now() - started, tenant: tenantOf(this) })
    return removed
  })
}

function expectedPoint(options) {
  try {
    return typeof options?.recoveryPoint === 'string' ? options.recoveryPoint : undefined
  } catch {
    return undefined
  }
}

const nativeForTenant = IdempotencyKeyService.prototype.forTenant
IdempotencyKeyService.prototype.forTenant = function forTenant(tenant) {
  const scoped = nativeForTenant.call(this, tenant)
  // A copy of a bound service stays bound: its stages hand callbacks the same executor.
  const executor = executorOf(this)
  if (executor !== undefined) scoped[EXECUTOR] = executor
  return scoped
}

/** The caller's executor a bound copy runs through; never throws (a hostile `this`). */
function executorOf(service) {
  try {
    return service == null ? undefined : service[EXECUTOR]
  } catch {
    return undefined
  }
}

const nativeWorkStage = IdempotencyKeyService.prototype.workStage
IdempotencyKeyService.prototype.workStage = function workStage(key, callback, options) {
  if (typeof callback !== 'function') return nativeWorkStage.call(this, key, callback, options)
  const executor = executorOf(this)
  // An async wrapper awaits whatever the callback returns, thenables included, as `await`
  // would; bound mode hands the callback the caller's executor, like Medusa's. The addon calls
  // it from a thread-safe function, outside any async context (on Node 24's AsyncContextFrame,
  // AsyncLocalStorage would see nothing there): it runs in the context of this call, as a JS
  // service's callback would (AsyncResource.bind).
  if (!stageChannels.some((c) => c.hasSubscribers)) {
    const run = executor !== undefined ? async () => callback(executor) : async (tx) => callback(tx)
    return nativeWorkStage.call(this, key, AsyncResource.bind(run), options)
  }
  const event = { key, tenant: tenantOf(this), recoveryPoint: expectedPoint(options) }
  let attempts = 0
  const run = async (tx) => {
    // A native stage calls back once per attempt: a second call is a retry after 40001/40P01.
    if (++attempts > 1 && channels.retry.hasSubscribers) channels.retry.publish({ ...event, attempt: attempts })
    return callback(executor !== undefined ? executor : tx)
  }
  // The callback runs on a later turn of the event loop, so `start` still comes first; a call
  // refused before it starts (a wrong `this`) publishes nothing.
  if (!(this instanceof IdempotencyKeyService)) return nativeWorkStage.call(this, key, run, options)
  const pending = nativeWorkStage.call(this, key, AsyncResource.bind(run), options)
  const started = performance.now()
  if (channels.stageStart.hasSubscribers) channels.stageStart.publish(event)
  return pending.then(
    (updated) => {
      if (channels.stageEnd.hasSubscribers) {
        const durationMs = performance.now() - started
        channels.stageEnd.publish({ ...event, durationMs, attempts, recoveryPoint: updated.recovery_point, from: event.recoveryPoint, finished: updated.recovery_point === 'finished' })
      }
      return updated
    },
    (e) => {
      if (channels.stageError.hasSubscribers) {
        channels.stageError.publish({ ...event, durationMs: performance.now() - started, attempts, error: e, code: field(e, 'code') })
      }
      publishConflict('workStage', key, this, e)
      throw e
    },
  )
}

// IDEMPOTENCY_KEY_LOCKED carries `retryAfter`: whole seconds until the holder's lease can
// expire (its `locked_at` + lockTimeoutMs, read after the refusal), at least 1 and at most the
// lease itself; the middleware sends it as `Retry-After`. A bound copy (caller's transaction,
// perhaps aborted by the refusal) does not read the row: the whole lease.
const nativeRetrieve = IdempotencyKeyService.prototype.retrieve
async function withRetryAfter(service, key, e) {
  if (field(e, 'code') !== 'IDEMPOTENCY_KEY_LOCKED' || e === null || typeof e !== 'object') throw e
  let leaseMs = 1000
  try {
    leaseMs = service.lockTimeoutMs
  } catch {}
  const most = Math.max(1, Math.ceil(leaseMs / 1000))
  let seconds = most
  if (executorOf(service) === undefined && typeof key === 'string' && key !== '') {
    try {
      const row = await nativeRetrieve.call(service, key)
      if (row.locked_at instanceof Date) seconds = Math.ceil((row.locked_at.getTime() + leaseMs - Date.now()) / 1000)
    } catch {
      // Gone or unreadable meanwhile: the whole lease.
    }
  }
  try {
    e.retryAfter = Math.min(most, Math.max(1, seconds))
  } catch {}
  throw e
}
for (const name of ['initializeRequest', 'lock', 'workStage']) {
  const original = IdempotencyKeyService.prototype[name]
  IdempotencyKeyService.prototype[name] = function leased(key, ...rest) {
    return original.call(this, key, ...rest).catch((e) => withRetryAfter(this, key, e))
  }
}

// The completer (completer.js): `service.completer(options)`, its channels beside the others.
const completer = require('./completer.js').install(IdempotencyKeyService, { initializeRequest: nativeInitializeRequest, workStage: nativeWorkStage, isBound: (s) => executorOf(s) !== undefined })
Object.assign(channels, completer.channels)

// TracingChannel events for every public operation and for tx.query (tracing.js), around the
// methods above: a callback is bound to its call's context inside the traced call, so a store
// a subscriber binds to `start` is what the callback and its statements see.
const { tracing, install: installTracing } = require('./tracing.js')
installTracing(IdempotencyKeyService, TransactionManager, {
  StatementLog: native.StatementLog,
  recording(service, log) {
    const copy = service.withStatementLog(log)
    const executor = executorOf(service)
    if (executor !== undefined) copy[EXECUTOR] = executor
    return copy
  },
})

// One assignment per export, so Node's CommonJS lexer sees every name and an ES module can
// import them by name (`import { IdempotencyKeyService } from 'medusa-idempotency-native'`).
exports.IdempotencyKeyService = IdempotencyKeyService
exports.TransactionManager = TransactionManager
exports.StatementLog = native.StatementLog
exports.__napiBindingTarget = native.__napiBindingTarget
exports.wrapExecutor = wrapExecutor
exports.channels = channels
exports.tracingChannels = tracing
