'use strict'
// TracingChannel events (Node's `diagnostics_channel.tracingChannel`) for every public operation
// of the service and for each statement a native stage's callback sends through `tx.query`.
//
// One TracingChannel per operation, `medusa-idempotency:<operation>` (so its channels are
// `tracing:medusa-idempotency:<operation>:start|end|asyncStart|asyncEnd|error`), published with
// Node's own `tracePromise`: start when the call begins, end when it has returned its promise,
// asyncStart/asyncEnd around its settlement, error (with `context.error`) when it rejects;
// `context.result` is what it resolved to. When a channel has no subscriber, the call goes
// straight to the method: no context object is built and nothing is published.
//
// The context object (one per call, the same object on every event of that call):
//   operation      'initializeRequest' | 'workStage' | ... | 'query' | 'completer.pass'
//   dbSystem       'postgresql' | 'sqlite' | null (a detached / Medusa-container service)
//   serverAddress, serverPort, dbNamespace   from the connection URL (never its credentials)
//   tenant         the service's tenant (forTenant) or null
//   key            the key the caller named (initializeRequest, workStage, retrieve, lock, update)
//   recoveryPoint  workStage: the recovery point the caller expects, if given
//   attempts       workStage: how many times the callback has run so far (> 1 after retries)
//   query          query: the statement text the callback passed
//   rowCount       query: rows returned (set before asyncStart)
//
// The service's own statements (a stage's BEGIN with its row lock, its UPDATE with COMMIT,
// initializeRequest's INSERT…) are published on the same `query` channel, with `internal: true`,
// when the `query` channel has a subscriber as the operation starts. The core times them and
// reports them when the operation's native call has settled, so their events come then, still
// inside the operation's context (parented to its span), and the context carries what was
// measured instead of relying on the events' timing:
//   internal       true
//   query          the round trip's statements, joined by ';\n' (text only, never values)
//   statements     the same, one string each (PostgreSQL sends a stage's BEGIN and lock, and its
//                  UPDATE and COMMIT, together)
//   startTime      when it was sent, ms since the Unix epoch (Date.now()'s clock)
//   duration       how long it took, ms
//   rowCount       rows returned or touched, or null when it failed
//   error          (error event) an Error whose `code` is the SQLSTATE when the server sent one,
//                  else the service's code; `sqlstate` and `serviceCode` beside it
// Subscribers that bind an AsyncLocalStorage to `start` (`channel.start.bindStore(als, …)`)
// have it entered for the whole call, stage callbacks and their statements included: a callback
// runs in the context of the call that started it.

const dc = require('node:diagnostics_channel')

const OPERATIONS = ['initializeRequest', 'workStage', 'retrieve', 'lock', 'update', 'create', 'reap', 'listAbandoned']
const tracing = {}
for (const op of OPERATIONS) tracing[op] = dc.tracingChannel(`medusa-idempotency:${op}`)
tracing.query = dc.tracingChannel('medusa-idempotency:query')
tracing.completerPass = dc.tracingChannel('medusa-idempotency:completer.pass')

const NO_DB = Object.freeze({ dbSystem: null, serverAddress: null, serverPort: null, dbNamespace: null })

/** What a connection URL says about the database, for spans: never the user or password. */
function describeUrl(url) {
  if (typeof url !== 'string') return NO_DB
  if (url.startsWith('sqlite:')) {
    const file = url.replace(/^sqlite:(\/\/)?/, '').split('?')[0]
    return { dbSystem: 'sqlite', serverAddress: null, serverPort: null, dbNamespace: file === ':memory:' || file === '' ? ':memory:' : file }
  }
  try {
    const u = new URL(url)
    if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') return NO_DB
    const host = decodeURIComponent(u.hostname) || u.searchParams.get('host') || 'localhost'
    const name = decodeURIComponent(u.pathname.replace(/^\//, '')) || decodeURIComponent(u.username) || null
    return { dbSystem: 'postgresql', serverAddress: host, serverPort: u.port ? Number(u.port) : 5432, dbNamespace: name }
  } catch {
    return NO_DB
  }
}

/** The service's database, for spans (its `database` getter, the URL without credentials), cached per URL. */
const described = new Map()
function dbOf(service) {
  let database
  try {
    database = service.database
  } catch {
    return NO_DB
  }
  if (database == null) return NO_DB
  const cacheKey = `${database.system} ${database.url}`
  let db = described.get(cacheKey)
  if (db === undefined) {
    db = database.url == null ? { ...NO_DB, dbSystem: database.system } : { ...describeUrl(database.url), dbSystem: database.system }
    if (described.size < 100) described.set(cacheKey, db)
  }
  return db
}

function tenantOf(service) {
  try {
    return service.tenant ?? null
  } catch {
    return null
  }
}

function keyArg(v) {
  return typeof v === 'string' ? v : null
}

/** The transaction manager each native stage hands its callback → its service's database. */
const txDb = new WeakMap()

/** Publish what a StatementLog recorded, on the `query` channel, in the caller's context. */
function publishStatements(log, db) {
  let records
  try {
    records = log.take()
  } catch {
    return
  }
  for (const r of records) {
    const context = {
      operation: 'query',
      internal: true,
      ...db,
      query: r.sql.join(';\n'),
      statements: r.sql,
      startTime: r.startTime,
      duration: r.duration,
      rowCount: r.rows ?? null,
    }
    if (r.code == null) {
      tracing.query.traceSync(returnNothing, context)
    } else {
      const error = Object.assign(new Error(r.message ?? r.code), { code: r.sqlstate ?? r.code, sqlstate: r.sqlstate ?? null, serviceCode: r.code })
      try {
        tracing.query.traceSync(throwIt, context, null, error)
      } catch {}
    }
  }
}
function returnNothing() {}
function throwIt(e) {
  throw e
}

/**
 * `install(IdempotencyKeyService, TransactionManager, { StatementLog, recording })`:
 * `recording(service, log)` is a copy of `service` (as the façade sees it) whose calls record
 * the service's own statements in `log`.
 */
function install(IdempotencyKeyService, TransactionManager, { StatementLog, recording }) {
  const proto = IdempotencyKeyService.prototype

  /**
   * `method`, run on a copy that records the service's own statements, which are published
   * when it settles, before its result is passed on. Only when the `query` channel has a
   * subscriber; otherwise `method` itself.
   */
  function withStatements(method, db) {
    if (!tracing.query.hasSubscribers) return method
    return function recorded(...args) {
      const log = new StatementLog()
      let copy
      try {
        copy = recording(this, log)
      } catch {
        // Not a service (a wrong `this`): the method refuses it, typed.
        return method.apply(this, args)
      }
      return method.apply(copy, args).then(
        (value) => {
          publishStatements(log, db)
          return value
        },
        (e) => {
          publishStatements(log, db)
          throw e
        },
      )
    }
  }

  /** `proto[op]` published on its TracingChannel; `describe(args)` adds the call's own fields. */
  function trace(op, describe) {
    const channel = tracing[op]
    const original = proto[op]
    proto[op] = function traced(...args) {
      if (!channel.hasSubscribers && !tracing.query.hasSubscribers) return original.apply(this, args)
      const db = dbOf(this)
      const method = withStatements(original, db)
      if (!channel.hasSubscribers) return method.apply(this, args)
      const context = { operation: op, ...db, tenant: tenantOf(this), ...describe(args) }
      return channel.tracePromise(method, context, this, ...args)
    }
  }
  const byKey = (args) => ({ key: keyArg(args[0]) })
  trace('initializeRequest', byKey)
  trace('retrieve', byKey)
  trace('lock', byKey)
  trace('update', byKey)
  trace('create', () => ({}))
  trace('reap', () => ({}))
  trace('listAbandoned', () => ({}))

  // workStage: the context counts the callback's runs, and its statements find their database.
  const workStage = proto.workStage
  proto.workStage = function traced(key, callback, options) {
    if (typeof callback !== 'function' || (!tracing.workStage.hasSubscribers && !tracing.query.hasSubscribers)) {
      return workStage.call(this, key, callback, options)
    }
    const db = dbOf(this)
    const method = withStatements(workStage, db)
    if (!tracing.workStage.hasSubscribers) return method.call(this, key, withDb(callback, db), options)
    let recoveryPoint
    try {
      recoveryPoint = typeof options?.recoveryPoint === 'string' ? options.recoveryPoint : undefined
    } catch {
      recoveryPoint = undefined
    }
    const context = { operation: 'workStage', ...db, tenant: tenantOf(this), key: keyArg(key), recoveryPoint, attempts: 0 }
    const counted = (tx) => {
      context.attempts++
      return callback(tx)
    }
    return tracing.workStage.tracePromise(method, context, this, key, withDb(counted, db), options)
  }

  function withDb(callback, db) {
    return (tx) => {
      if (tx instanceof TransactionManager) txDb.set(tx, db)
      return callback(tx)
    }
  }

  // tx.query: the statement the callback passed, its duration (the subscriber's clock), the
  // rows it returned, the code of its rejection.
  const query = TransactionManager.prototype.query
  TransactionManager.prototype.query = function traced(...args) {
    if (!tracing.query.hasSubscribers) return query.apply(this, args)
    const sql = args[0]
    const context = { operation: 'query', ...(txDb.get(this) ?? NO_DB), query: typeof sql === 'string' ? sql : null, rowCount: null }
    return tracing.query.tracePromise(
      function run() {
        return query.apply(this, args).then((rows) => {
          context.rowCount = Array.isArray(rows) ? rows.length : null
          return rows
        })
      },
      context,
      this,
    )
  }
}

module.exports = { install, tracing, describeUrl, dbOf, OPERATIONS }
