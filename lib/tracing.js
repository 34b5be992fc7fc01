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
const { StatementLog } = require('./binding.js')

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
 * Run `run(native)`, `native` being the service's addon object, with the service's own
 * statements recorded (on a copy made by `withStatementLog`) and published when it settles.
 */
function recorded(native, run, db) {
  const log = new StatementLog()
  return run(native.withStatementLog(log)).then(
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

/**
 * `run(native)` with the service's own statements published on `query` when that has a
 * subscriber (for calls that are not operations of their own: the completer's bookkeeping).
 */
function withStatements(service, native, run) {
  return tracing.query.hasSubscribers ? recorded(native, run, dbOf(service)) : run(native)
}

/**
 * One call of operation `op` of `service` (the façade; `native` its addon object): published on
 * the operation's TracingChannel when it has a subscriber (`fields()` adds the call's own
 * context fields), and with the service's own statements published on `query` when that has
 * one. `run(native, context)` starts the call; `context` is null when nothing is published.
 * With no subscriber anywhere, it is `run(native, null)` and nothing else.
 */
function traceOperation(op, service, native, fields, run) {
  const channel = tracing[op]
  const statements = tracing.query.hasSubscribers
  if (!channel.hasSubscribers && !statements) return run(native, null)
  const db = dbOf(service)
  if (!channel.hasSubscribers) return recorded(native, (n) => run(n, null), db)
  const context = { operation: op, ...db, tenant: tenantOf(service), ...fields() }
  const call = statements ? () => recorded(native, (n) => run(n, context), db) : () => run(native, context)
  return channel.tracePromise(call, context)
}

/**
 * One statement a stage's callback sends through `tx.query`: `run()` sends it. `db` is the
 * stage's service's database; the context records the rows it returned.
 */
function traceQuery(db, sql, run) {
  if (!tracing.query.hasSubscribers) return run()
  const context = { operation: 'query', ...db, query: typeof sql === 'string' ? sql : null, rowCount: null }
  return tracing.query.tracePromise(
    () =>
      run().then((rows) => {
        context.rowCount = Array.isArray(rows) ? rows.length : null
        return rows
      }),
    context,
  )
}

module.exports = { traceOperation, traceQuery, withStatements, tracing, dbOf, tenantOf, keyArg }
