'use strict'
// The package's face: `IdempotencyKeyService` and `TransactionManager`, JS classes that each
// hold the addon's object (native.js, through binding.js) in a private field and wrap it. What
// lives here is what has to live in JS:
//   - bound mode over a caller's executor (TypeORM EntityManager, node-postgres client, any
//     `query(sql, params) => Promise`), whose results are normalised and whose failures are
//     turned into values, so the Rust core never sees a rejected promise from it;
//   - stage callbacks run in the caller's async context (AsyncResource.bind: the addon calls
//     them from a thread-safe function, outside any context, and on Node 24's
//     AsyncContextFrame an AsyncLocalStorage would see nothing there);
//   - `retryAfter` on IDEMPOTENCY_KEY_LOCKED;
//   - the diagnostics_channel events (the plain channels here, the TracingChannels in
//     tracing.js), each costing a `hasSubscribers` check while nobody listens;
//   - a method called on something that is not its class's instance is a typed INVALID_ARGUMENT.
// The completer (completer.js) is reached through `service.completer()` and `service.accept()`.
const dc = require('node:diagnostics_channel')
const { AsyncResource } = require('node:async_hooks')
const { performance } = require('node:perf_hooks')
const native = require('./binding.js') // native.js, with an error naming the missing binary
const { invalid, field, CONFLICTS } = require('./errors.js')
const { rowsOf } = require('./route.js')
const { traceOperation, traceQuery, withStatements, tracing, dbOf, tenantOf, keyArg } = require('./tracing.js')

/** Only this module makes instances: `new IdempotencyKeyService()` elsewhere is refused. */
const INTERNAL = Symbol('medusa-idempotency-native.internal')
let forCompleter
// Each class's brand check: the addon's object under one of its instances, else undefined.
let nativeServiceOf
let nativeTxOf
let nativeLogOf

function wrongThis(owner, name) {
  return invalid(`${owner}.${name} needs a ${owner} as \`this\`: call it on one (obj.${name}), not detached from it or on another object`)
}

/**
 * The addon's object under façade object `self` (`get` is the class's own brand check, which
 * answers undefined for anything else); a typed wrong-`this` error when there is none.
 */
function addonOf(get, self, owner, name) {
  const addon = get(self)
  if (addon === undefined) throw wrongThis(owner, name)
  return addon
}

function notConstructible(owner, how) {
  return new TypeError(`${owner} is not constructed with new: ${how}`)
}

// ---------------------------------------------------------------------------------------------
// A caller's executor (bound mode).

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
    return { rows: rowsOf(result) }
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

function isExecutor(manager) {
  if (manager == null || (typeof manager !== 'object' && typeof manager !== 'function')) return false
  try {
    return !(manager instanceof TransactionManager) && typeof manager.query === 'function'
  } catch {
    // A throwing getter or a revoked proxy: not something we can run SQL through.
    throw invalid('withTransaction() takes a TransactionManager or an object with query(sql, params)')
  }
}

// ---------------------------------------------------------------------------------------------
// Plain diagnostics_channel events. Nothing is built or published unless the channel has a
// subscriber when the call starts.

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


function publishConflict(method, key, service, e) {
  const code = channels.conflict.hasSubscribers ? field(e, 'code') : undefined
  if (CONFLICTS.has(code)) {
    channels.conflict.publish({ method, key, tenant: tenantOf(service), code, type: field(e, 'type'), message: field(e, 'message') })
  }
}

/** `pending`, with a conflict it rejects with published. */
function observeConflicts(method, key, service, pending) {
  if (!channels.conflict.hasSubscribers) return pending
  return pending.catch((e) => {
    publishConflict(method, key, service, e)
    throw e
  })
}

function expectedPoint(options) {
  try {
    return typeof options?.recoveryPoint === 'string' ? options.recoveryPoint : undefined
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------
// The classes.

/**
 * The transaction a native stage's callback runs in: `query(sql, params)` (TypeORM's
 * `EntityManager.query` signature) and `active`.
 */
class TransactionManager {
  #tx
  #service

  constructor(token, tx, service) {
    if (token !== INTERNAL) throw notConstructible('TransactionManager', 'workStage hands one to its callback')
    this.#tx = tx
    this.#service = service
  }

  static {
    nativeTxOf = (tx) => (tx !== null && typeof tx === 'object' && #tx in tx ? tx.#tx : undefined)
  }

  query(sql, params) {
    let tx
    try {
      tx = addonOf(nativeTxOf, this, 'TransactionManager', 'query')
    } catch (e) {
      return Promise.reject(e)
    }
    if (!tracing.query.hasSubscribers) return tx.query(sql, params)
    return traceQuery(dbOf(this.#service), sql, () => tx.query(sql, params))
  }

  get active() {
    return addonOf(nativeTxOf, this, 'TransactionManager', 'active').active
  }
}

/**
 * Records the service's own statements of the calls made through
 * `service.withStatementLog(log)`: each round trip's SQL, when it started, how long it took, its
 * rows, how it failed. For tracing (tracing.js publishes them); not needed by applications.
 */
class StatementLog {
  #log = new native.StatementLog()

  static {
    nativeLogOf = (log) => (log !== null && typeof log === 'object' && #log in log ? log.#log : undefined)
  }

  /** The round trips recorded so far, oldest first, leaving the log empty. */
  take() {
    return addonOf(nativeLogOf, this, 'StatementLog', 'take').take()
  }
}

class IdempotencyKeyService {
  #native
  /** The caller's executor a `withTransaction(executor)` copy hands its stage callbacks. */
  #executor

  constructor(token, addonService, executor) {
    if (token !== INTERNAL) throw notConstructible('IdempotencyKeyService', 'use IdempotencyKeyService.connect()')
    this.#native = addonService
    this.#executor = executor
  }

  /** `this`'s addon object; a typed INVALID_ARGUMENT when `this` is not a service. */
  static #of(self, name) {
    return addonOf(nativeServiceOf, self, 'IdempotencyKeyService', name)
  }

  /** `method(addon)` as a promise: a wrong `this` rejects, as any bad argument does. */
  static #call(self, name, method) {
    let addon
    try {
      addon = IdempotencyKeyService.#of(self, name)
    } catch (e) {
      return Promise.reject(e)
    }
    return method(addon)
  }

  static {
    nativeServiceOf = (service) => (service !== null && typeof service === 'object' && #native in service ? service.#native : undefined)
    // What completer.js needs beyond the public methods, given to it below (not exported).
    forCompleter = {
      /** Whether `service` is bound to a caller's executor (a completer runs its own transactions). */
      isBound: (service) => {
        IdempotencyKeyService.#of(service, 'completer') // a typed error for anything else
        return service.#executor !== undefined
      },
      /** `initializeRequest` on the addon: the completer's own claim, not an operation event. */
      claim: (service, ...args) => IdempotencyKeyService.#call(service, 'initializeRequest', (addon) => addon.initializeRequest(...args)),
      /**
       * A stage of the completer's own bookkeeping: not an operation event, but its statements
       * traced and its callback in the caller's async context, as a user's stage.
       */
      bookkeepingStage: (service, key, callback, options) =>
        IdempotencyKeyService.#call(service, 'workStage', (addon) =>
          withStatements(service, addon, (a) => a.workStage(key, typeof callback === 'function' ? AsyncResource.bind(inTransaction(callback, service)) : callback, options)),
        ),
    }
  }

  static connect(urlOrOptions) {
    return native.IdempotencyKeyService.connect(urlOrOptions).then((addon) => new IdempotencyKeyService(INTERNAL, addon))
  }

  static detached(release, options) {
    return new IdempotencyKeyService(INTERNAL, native.IdempotencyKeyService.detached(release, options))
  }

  migrate() {
    return IdempotencyKeyService.#call(this, 'migrate', (addon) => addon.migrate())
  }

  initializeRequest(headerKey, reqMethod, reqParams, reqPath) {
    return IdempotencyKeyService.#call(this, 'initializeRequest', (addon) =>
      traceOperation('initializeRequest', this, addon, () => ({ key: keyArg(headerKey) }), (a) => {
        let pending = a.initializeRequest(headerKey, reqMethod, reqParams, reqPath)
        if (channels.replay.hasSubscribers || channels.conflict.hasSubscribers) {
          pending = pending.then(
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
        return pending.catch((e) => this.#withRetryAfter(headerKey, e))
      }),
    )
  }

  create(payload) {
    return IdempotencyKeyService.#call(this, 'create', (addon) => traceOperation('create', this, addon, () => ({}), (a) => a.create(payload)))
  }

  retrieve(idempotencyKeyOrSelector) {
    return IdempotencyKeyService.#call(this, 'retrieve', (addon) =>
      traceOperation('retrieve', this, addon, () => ({ key: keyArg(idempotencyKeyOrSelector) }), (a) => a.retrieve(idempotencyKeyOrSelector)),
    )
  }

  inspect(idempotencyKey) {
    return IdempotencyKeyService.#call(this, 'inspect', (addon) => addon.inspect(idempotencyKey))
  }

  lock(idempotencyKey) {
    return IdempotencyKeyService.#call(this, 'lock', (addon) =>
      traceOperation('lock', this, addon, () => ({ key: keyArg(idempotencyKey) }), (a) =>
        observeConflicts('lock', idempotencyKey, this, a.lock(idempotencyKey)).catch((e) => this.#withRetryAfter(idempotencyKey, e)),
      ),
    )
  }

  update(idempotencyKey, update) {
    return IdempotencyKeyService.#call(this, 'update', (addon) =>
      traceOperation('update', this, addon, () => ({ key: keyArg(idempotencyKey) }), (a) => a.update(idempotencyKey, update)),
    )
  }

  workStage(idempotencyKey, callback, options) {
    return IdempotencyKeyService.#call(this, 'workStage', (addon) => {
      // Not a function: the addon refuses it, typed.
      if (typeof callback !== 'function') return addon.workStage(idempotencyKey, callback, options)
      const fields = () => ({ key: keyArg(idempotencyKey), recoveryPoint: expectedPoint(options), attempts: 0 })
      return traceOperation('workStage', this, addon, fields, (a, context) =>
        this.#stage(a, idempotencyKey, callback, options, context).catch((e) => this.#withRetryAfter(idempotencyKey, e)),
      )
    })
  }

  /**
   * One stage on `addon`: the callback in this call's async context, handed the caller's
   * executor (bound mode) or the stage's TransactionManager; the stage events when subscribed.
   */
  #stage(addon, key, callback, options, context) {
    const executor = this.#executor
    const handed = executor !== undefined ? () => callback(executor) : inTransaction(callback, this)
    // An async wrapper awaits whatever the callback returns, thenables included, as `await` would.
    if (!stageChannels.some((c) => c.hasSubscribers)) {
      const run = context === null ? async (tx) => handed(tx) : async (tx) => (context.attempts++, handed(tx))
      return addon.workStage(key, AsyncResource.bind(run), options)
    }
    const event = { key, tenant: tenantOf(this), recoveryPoint: expectedPoint(options) }
    let attempts = 0
    const run = async (tx) => {
      if (context !== null) context.attempts++
      // A native stage calls back once per attempt: a second call is a retry after 40001/40P01.
      if (++attempts > 1 && channels.retry.hasSubscribers) channels.retry.publish({ ...event, attempt: attempts })
      return handed(tx)
    }
    // The callback runs on a later turn of the event loop, so `start` still comes first.
    const pending = addon.workStage(key, AsyncResource.bind(run), options)
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

  /**
   * IDEMPOTENCY_KEY_LOCKED carries `retryAfter`: whole seconds until the holder's lease can
   * expire (its `locked_at` + lockTimeoutMs, read after the refusal), at least 1 and at most the
   * lease itself; the middleware sends it as `Retry-After`. A bound copy (caller's transaction,
   * perhaps aborted by the refusal) does not read the row: the whole lease.
   */
  async #withRetryAfter(key, e) {
    if (field(e, 'code') !== 'IDEMPOTENCY_KEY_LOCKED' || e === null || typeof e !== 'object') throw e
    const addon = this.#native
    const leaseMs = addon.lockTimeoutMs
    const most = Math.max(1, Math.ceil(leaseMs / 1000))
    let seconds = most
    if (this.#executor === undefined && typeof key === 'string' && key !== '') {
      try {
        const row = await addon.retrieve(key)
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

  withTransaction(manager) {
    const addon = IdempotencyKeyService.#of(this, 'withTransaction')
    if (isExecutor(manager)) {
      // The addon calls the executor from a thread-safe function, outside any async context:
      // it runs in the one withTransaction() was called in (a request's, inside its transaction).
      return new IdempotencyKeyService(INTERNAL, addon.bindExecutor(AsyncResource.bind(wrapExecutor(manager))), manager)
    }
    if (manager == null) return this
    const tx = nativeTxOf(manager)
    // Anything else: the addon refuses it, typed. The copy runs in the stage's transaction and
    // hands its callbacks that stage's TransactionManager, never an executor this copy came from.
    const bound = addon.withTransaction(tx === undefined ? manager : tx)
    return new IdempotencyKeyService(INTERNAL, bound, undefined)
  }

  bindExecutor(query) {
    const addon = IdempotencyKeyService.#of(this, 'bindExecutor')
    // Bound to `query` alone: there is no executor object to hand a callback (it gets undefined).
    return new IdempotencyKeyService(INTERNAL, addon.bindExecutor(query), undefined)
  }

  forTenant(tenant) {
    const addon = IdempotencyKeyService.#of(this, 'forTenant')
    // A copy of a bound service stays bound: its stages hand callbacks the same executor.
    return new IdempotencyKeyService(INTERNAL, addon.forTenant(tenant), this.#executor)
  }

  withStatementLog(log) {
    const addon = IdempotencyKeyService.#of(this, 'withStatementLog')
    const records = nativeLogOf(log)
    if (records === undefined) throw invalid('withStatementLog() takes a StatementLog')
    return new IdempotencyKeyService(INTERNAL, addon.withStatementLog(records), this.#executor)
  }

  get tenant() {
    return IdempotencyKeyService.#of(this, 'tenant').tenant
  }

  get database() {
    return IdempotencyKeyService.#of(this, 'database').database
  }

  get lockTimeoutMs() {
    return IdempotencyKeyService.#of(this, 'lockTimeoutMs').lockTimeoutMs
  }

  reap(options) {
    return IdempotencyKeyService.#call(this, 'reap', (addon) =>
      traceOperation('reap', this, addon, () => ({}), (a) => {
        const pending = a.reap(options)
        if (!channels.reap.hasSubscribers) return pending
        const started = performance.now()
        return pending.then((removed) => {
          channels.reap.publish({ removed, durationMs: performance.now() - started, tenant: tenantOf(this) })
          return removed
        })
      }),
    )
  }

  listAbandoned(options) {
    return IdempotencyKeyService.#call(this, 'listAbandoned', (addon) => traceOperation('listAbandoned', this, addon, () => ({}), (a) => a.listAbandoned(options)))
  }

  close() {
    return IdempotencyKeyService.#call(this, 'close', (addon) => addon.close())
  }

  /** A completer on this service (completer.js). */
  completer(options) {
    IdempotencyKeyService.#of(this, 'completer')
    return new completer.Completer(this, options)
  }

  /** Mark a claimed key's request accepted by the handler that took it (completer.js). */
  accept(idempotencyKey, options) {
    return IdempotencyKeyService.#call(this, 'accept', () => completer.accept(this, idempotencyKey, options))
  }
}

/**
 * `callback` handed the stage's TransactionManager (of `service`) for the addon's transaction;
 * a copy bound with `bindExecutor(query)` has none, and its callback gets undefined, as ever.
 */
function inTransaction(callback, service) {
  return (tx) => callback(tx === undefined ? undefined : new TransactionManager(INTERNAL, tx, service))
}

const completer = require('./completer.js').install(forCompleter)
Object.assign(channels, completer.channels)

// One assignment per export, so Node's CommonJS lexer sees every name and an ES module can
// import them by name (`import { IdempotencyKeyService } from 'medusa-idempotency-native'`).
exports.IdempotencyKeyService = IdempotencyKeyService
exports.TransactionManager = TransactionManager
exports.StatementLog = StatementLog
exports.__napiBindingTarget = native.__napiBindingTarget
exports.wrapExecutor = wrapExecutor
exports.channels = channels
exports.tracingChannels = tracing
