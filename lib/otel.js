'use strict'
// `medusa-idempotency-native/otel`: OpenTelemetry spans and metrics from the package's
// TracingChannel events (tracing.js) and its plain channels (retry), following OpenTelemetry's
// stable database semantic conventions. `@opentelemetry/api` (1.x) is an optional peer
// dependency: only this subpath needs it.
//
//   const { instrument } = require('medusa-idempotency-native/otel')
//   const handle = instrument({ tracerProvider, meterProvider }) // both optional: the global ones
//   …
//   handle.disable()
//
// Spans: INTERNAL `idempotency <operation>` for each service call (initializeRequest, workStage,
// retrieve, lock, update, create, reap, listAbandoned) and `idempotency completer.pass`, CLIENT
// `<db.query.summary>` for each statement a stage's callback sends through `tx.query` and for
// each round trip of the service's own statements (a stage's `BEGIN; SELECT idempotency_key`
// and `UPDATE idempotency_key; COMMIT`, with the times the core measured). Every span
// is parented to the active context when its call starts (the HTTP request's span), and while a
// stage runs its span is the active one, so the callback's own spans and its statements land
// under it. That needs the context manager's AsyncLocalStorage (`AsyncLocalStorageContextManager`,
// the Node SDK's default): with another one, spans still parent to the caller, but the callback
// sees the caller's context rather than the stage's.

const { AsyncLocalStorage } = require('node:async_hooks')
const { performance } = require('node:perf_hooks')
const { field, CONFLICTS } = require('./errors.js')
const { tracing } = require('./tracing.js')
const { channels } = require('./index.js')

const NAME = 'medusa-idempotency-native'
const VERSION = require('../package.json').version

const SQLSTATE = /^[0-9A-Z]{5}$/
/** Seconds, for db.client.operation.duration (the semantic conventions' advice). */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10]

function loadApi() {
  try {
    return require('@opentelemetry/api')
  } catch (e) {
    const error = new Error('medusa-idempotency-native/otel needs @opentelemetry/api (1.x): npm install @opentelemetry/api', { cause: e })
    error.code = 'OTEL_API_MISSING'
    throw error
  }
}

/** `error.type`: the error's code when it has one (a SQLSTATE, IDEMPOTENCY_KEY_LOCKED…), else its class. */
function errorType(e) {
  const code = field(e, 'code')
  if (typeof code === 'string' && code !== '') return code
  const name = field(field(e, 'constructor'), 'name')
  return typeof name === 'string' && name !== '' ? name : '_OTHER'
}

const COLLECTION = {
  SELECT: /\bFROM\s+(?:ONLY\s+)?("[^"]+"|[\w$.]+)/i,
  DELETE: /\bFROM\s+(?:ONLY\s+)?("[^"]+"|[\w$.]+)/i,
  INSERT: /\bINTO\s+("[^"]+"|[\w$.]+)/i,
  UPDATE: /^UPDATE\s+(?:ONLY\s+)?("[^"]+"|[\w$.]+)/i,
}

/**
 * The same for a round trip of several statements (the service's own pipelined ones): a batch,
 * `db.operation.name` BATCH (BATCH <op> when they share one), the summaries joined by '; '.
 */
function summarizeAll(statements) {
  const parts = statements.map(summarize)
  const same = (k) => (parts.every((p) => p[k] !== undefined && p[k] === parts[0][k]) ? parts[0][k] : undefined)
  const op = same('operation')
  return {
    operation: op ? `BATCH ${op}` : 'BATCH',
    collection: same('collection'),
    summary: parts.map((p) => p.summary ?? '?').join('; '),
  }
}

/** `db.operation.name`, `db.collection.name` and `db.query.summary` of a statement's text (never its values). */
function summarize(sql) {
  if (typeof sql !== 'string') return { operation: undefined, collection: undefined, summary: undefined }
  const text = sql.replace(/\/\*[\s\S]*?\*\/|--[^\n]*/g, ' ').trim()
  const operation = /^[A-Za-z]+/.exec(text)?.[0].toUpperCase()
  const m = operation && COLLECTION[operation] ? COLLECTION[operation].exec(text) : null
  const collection = m ? m[1].replace(/"/g, '') : undefined
  const summary = operation ? (collection ? `${operation} ${collection}` : operation) : undefined
  return { operation, collection, summary }
}

function dbAttributes(ctx) {
  const a = {}
  if (ctx.dbSystem) a['db.system.name'] = ctx.dbSystem
  if (ctx.dbNamespace) a['db.namespace'] = ctx.dbNamespace
  if (ctx.serverAddress) a['server.address'] = ctx.serverAddress
  if (ctx.serverPort) a['server.port'] = ctx.serverPort
  return a
}

/**
 * Turn the package's events into spans and metrics. Options: `tracerProvider`, `meterProvider`
 * (default: the global ones), `captureQueryText` (put the statement's text in `db.query.text`;
 * default false: parameters are never recorded, the text only when asked), `contextManager`
 * (default: the global one). Returns `{ disable() }`.
 */
function instrument(options = {}) {
  if (options === null || typeof options !== 'object') throw new TypeError('instrument(options): options must be an object')
  const api = loadApi()
  const { trace, context, metrics, SpanKind, SpanStatusCode } = api
  const tracer = (options.tracerProvider ?? trace.getTracerProvider()).getTracer(NAME, VERSION)
  const meter = (options.meterProvider ?? metrics.getMeterProvider()).getMeter(NAME, VERSION)
  const captureQueryText = options.captureQueryText === true
  // The AsyncLocalStorage behind the context manager, so a stage's span is the active context
  // while its callback runs (TracingChannel's bindStore).
  let contextManager = options.contextManager
  if (contextManager === undefined) {
    try {
      contextManager = context._getContextManager?.()
    } catch {
      contextManager = undefined
    }
  }
  const als = contextManager?._asyncLocalStorage instanceof AsyncLocalStorage ? contextManager._asyncLocalStorage : null

  const duration = meter.createHistogram('db.client.operation.duration', {
    description: 'Duration of database client operations.',
    unit: 's',
    advice: { explicitBucketBoundaries: DURATION_BUCKETS },
  })
  const conflicts = meter.createCounter('medusa.idempotency.conflicts', { description: 'Calls refused because another request holds, moved or reused the key.', unit: '{conflict}' })
  const replays = meter.createCounter('medusa.idempotency.replays', { description: 'initializeRequest calls that returned a finished key (a replayed response).', unit: '{replay}' })
  const retries = meter.createCounter('medusa.idempotency.retries', { description: 'Stage callbacks re-run after a serialization failure or deadlock.', unit: '{retry}' })
  const completerOutcomes = meter.createCounter('medusa.idempotency.completer.outcomes', { description: 'Keys a completer drove: completed, failed or given up.', unit: '{key}' })

  const SPAN = Symbol('span')
  const STARTED = Symbol('started')
  const ours = new WeakSet()
  const undo = []

  function startSpan(ctx) {
    if (ctx[SPAN]) return ctx[SPAN]
    const parent = context.active()
    let span
    if (ctx.operation === 'query') {
      const batch = Array.isArray(ctx.statements) && ctx.statements.length > 1
      const { operation, collection, summary } = batch ? summarizeAll(ctx.statements) : summarize(ctx.query)
      const attributes = dbAttributes(ctx)
      if (operation) attributes['db.operation.name'] = operation
      if (collection) attributes['db.collection.name'] = collection
      if (summary) attributes['db.query.summary'] = summary
      if (batch) attributes['db.operation.batch.size'] = ctx.statements.length
      if (captureQueryText && ctx.query) attributes['db.query.text'] = ctx.query
      const name = summary ?? ctx.dbSystem ?? 'query'
      // The service's own statements come with the times the core measured.
      const startTime = ctx.internal ? ctx.startTime : undefined
      span = tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes, startTime }, parent)
      ctx[STARTED] = { attributes: lowCardinality(attributes) }
    } else {
      const attributes = { ...dbAttributes(ctx), 'medusa.idempotency.operation': ctx.operation }
      if (ctx.key != null) attributes['medusa.idempotency.key'] = ctx.key
      if (ctx.tenant != null) attributes['medusa.idempotency.tenant'] = ctx.tenant
      if (ctx.recoveryPoint != null) attributes['medusa.idempotency.recovery_point'] = ctx.recoveryPoint
      span = tracer.startSpan(`idempotency ${ctx.operation}`, { kind: SpanKind.INTERNAL, attributes }, parent)
      const metricAttributes = { 'db.operation.name': ctx.operation }
      if (ctx.dbSystem) metricAttributes['db.system.name'] = ctx.dbSystem
      ctx[STARTED] = { attributes: metricAttributes }
    }
    ctx[STARTED].at = performance.now()
    ctx[SPAN] = span
    ours.add(span)
    return span
  }

  /** Only attributes with few values go on metrics: never a key, a tenant or a statement. */
  function lowCardinality(attributes) {
    const out = {}
    for (const k of ['db.system.name', 'db.namespace', 'db.operation.name', 'db.collection.name', 'server.address', 'server.port']) {
      if (attributes[k] !== undefined) out[k] = attributes[k]
    }
    return out
  }

  function finish(ctx) {
    const span = ctx[SPAN]
    if (!span || ctx[STARTED].done) return
    ctx[STARTED].done = true
    const metricAttributes = { ...ctx[STARTED].attributes }
    if ('error' in ctx) {
      const type = errorType(ctx.error)
      span.setAttribute('error.type', type)
      metricAttributes['error.type'] = type
      const code = field(ctx.error, 'code')
      if (ctx.operation === 'query' && typeof code === 'string' && SQLSTATE.test(code)) {
        span.setAttribute('db.response.status_code', code)
        metricAttributes['db.response.status_code'] = code
      }
      // A conflict is the operation's: the service's own statement under it is not counted again.
      if (CONFLICTS.has(code) && !ctx.internal) {
        span.addEvent('conflict', { 'medusa.idempotency.code': code })
        conflicts.add(1, { 'medusa.idempotency.operation': ctx.operation, 'medusa.idempotency.code': code })
      }
      if (ctx.error instanceof Error) span.recordException(ctx.error)
      const message = field(ctx.error, 'message')
      span.setStatus({ code: SpanStatusCode.ERROR, message: typeof message === 'string' ? message : undefined })
    } else {
      const result = ctx.result
      if (ctx.operation === 'query' && ctx.rowCount != null) span.setAttribute('db.response.returned_rows', ctx.rowCount)
      if (ctx.operation === 'workStage' && result) {
        span.setAttribute('medusa.idempotency.recovery_point.after', result.recovery_point)
      }
      if (ctx.operation === 'initializeRequest' && result) {
        span.setAttribute('medusa.idempotency.recovery_point', result.recovery_point)
        if (result.recovery_point === 'finished') {
          span.setAttribute('medusa.idempotency.replayed', true)
          span.addEvent('replay', result.response_code == null ? {} : { 'http.response.status_code': result.response_code })
          replays.add(1, ctx.dbSystem ? { 'db.system.name': ctx.dbSystem } : {})
        }
      }
      if (ctx.operation === 'completer.pass' && result) {
        for (const k of ['completed', 'failed', 'skipped']) span.setAttribute(`medusa.idempotency.completer.${k}`, result[k])
      }
      if (ctx.operation === 'reap' && typeof result === 'number') span.setAttribute('medusa.idempotency.removed', result)
    }
    if (ctx.operation === 'workStage') span.setAttribute('medusa.idempotency.attempts', ctx.attempts)
    if (ctx.internal) {
      duration.record(ctx.duration / 1000, metricAttributes)
      span.end(ctx.startTime + ctx.duration)
      return
    }
    duration.record((performance.now() - ctx[STARTED].at) / 1000, metricAttributes)
    span.end()
  }

  for (const channel of Object.values(tracing)) {
    const handlers = {
      // Without the context manager's storage, the span starts here (parented to the caller).
      start: (ctx) => startSpan(ctx),
      // A call that threw synchronously has no asyncEnd; nor has a statement of the service's
      // own, published at once with its measured times.
      end: (ctx) => {
        if ('error' in ctx || ctx.internal) finish(ctx)
      },
      asyncEnd: (ctx) => finish(ctx),
      error: () => {},
    }
    channel.subscribe(handlers)
    undo.push(() => channel.unsubscribe(handlers))
    if (als) {
      // The span becomes the active context for the whole call: the stage's callback, its
      // statements and whatever the callback traces itself.
      channel.start.bindStore(als, (ctx) => trace.setSpan(context.active(), startSpan(ctx)))
      undo.push(() => channel.start.unbindStore(als))
    }
  }

  // A retry runs inside the stage's context: an event on the stage's span.
  const onRetry = (event) => {
    retries.add(1, {})
    const span = trace.getSpan(context.active())
    if (span && ours.has(span)) span.addEvent('retry', { 'medusa.idempotency.attempt': event.attempt })
  }
  channels.retry.subscribe(onRetry)
  undo.push(() => channels.retry.unsubscribe(onRetry))

  const outcome = (name) => (event) => {
    const attributes = { 'medusa.idempotency.completer.outcome': name }
    if (event && typeof event.route === 'string') attributes['medusa.idempotency.completer.route'] = event.route
    completerOutcomes.add(1, attributes)
  }
  for (const [channel, name] of [
    [channels.completerComplete, 'completed'],
    [channels.completerFail, 'failed'],
    [channels.completerGiveUp, 'gave_up'],
  ]) {
    const fn = outcome(name)
    channel.subscribe(fn)
    undo.push(() => channel.unsubscribe(fn))
  }

  let disabled = false
  return {
    /** Stop: unsubscribe everything, so nothing is published or built any more. */
    disable() {
      if (disabled) return
      disabled = true
      for (const fn of undo.reverse()) fn()
    },
  }
}

module.exports = { instrument, summarize }
