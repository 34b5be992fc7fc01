// `medusa-idempotency-native/otel` with the real OpenTelemetry SDK (@opentelemetry/api 1.x,
// sdk-trace-base 2.x with its in-memory exporter, sdk-metrics 2.x, context-async-hooks): a
// middleware request's span tree (request → initializeRequest, request → stage → statements, a
// user span inside a stage callback under its stage), attributes by the database semantic
// conventions, error spans for a failed stage and a 409, a retry, the metrics, and nothing once
// disabled. Runs on the backend IDEM_BACKEND selects.
const { test, before, after, beforeEach } = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const api = require('@opentelemetry/api')
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks')
const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base')
const { MeterProvider, MetricReader } = require('@opentelemetry/sdk-metrics')
const { instrument } = require('medusa-idempotency-native/otel')
const { idempotency } = require('medusa-idempotency-native/middleware')
const { tracingChannels } = require('medusa-idempotency-native')
const { freshDb, isPostgres, sleep } = require('./helpers')
const { uniq } = require('../test-support/keys')

class TestReader extends MetricReader {
  async onForceFlush() {}
  async onShutdown() {}
}

const exporter = new InMemorySpanExporter()
const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
const tracer = tracerProvider.getTracer('test-app')
const reader = new TestReader()
const meterProvider = new MeterProvider({ readers: [reader] })
const contextManager = new AsyncLocalStorageContextManager().enable()
api.context.setGlobalContextManager(contextManager)

let fx
let service
let handle
before(async () => {
  fx = await freshDb({ lockTimeoutMs: 5_000 })
  service = fx.service
  await fx.db.exec('CREATE TABLE otel_effects (k text, stage text)')
  handle = instrument({ tracerProvider, meterProvider })
})
after(async () => {
  handle?.disable()
  api.context.disable()
  if (fx) await fx.cleanup()
})
beforeEach(() => exporter.reset())

const spans = () => exporter.getFinishedSpans()
const parentOf = (span) => span.parentSpanContext?.spanId ?? span.parentSpanId
const childrenOf = (span) => spans().filter((s) => parentOf(s) === span.spanContext().spanId)
const byName = (name) => spans().filter((s) => s.name === name)
/** A span time ([seconds, nanoseconds]) in nanoseconds. */
const hr = ([sec, ns]) => sec * 1e9 + ns

/** All data points of metric `name` from one collection. */
async function points(name) {
  const { resourceMetrics } = await reader.collect()
  const out = []
  for (const scope of resourceMetrics.scopeMetrics) for (const m of scope.metrics) if (m.descriptor.name === name) out.push(...m.dataPoints.map((p) => ({ ...p, unit: m.descriptor.unit })))
  return out
}

/** A node:http server behind the middleware whose every request is a SERVER span, as an HTTP instrumentation makes. */
async function serve(handler) {
  const middleware = idempotency({ service, reap: false })
  const server = http.createServer((req, res) => {
    tracer.startActiveSpan(`${req.method} /orders`, { kind: api.SpanKind.SERVER }, (span) => {
      res.on('finish', () => span.end())
      middleware(req, res, () => handler(req, res))
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${server.address().port}/orders`, close: () => new Promise((resolve) => server.close(resolve)) }
}

const post = (url, key, body = '{"cart":1}') => fetch(url, { method: 'POST', headers: { 'idempotency-key': key, 'content-type': 'application/json' }, body })

test("a middleware request's span tree: request → initializeRequest and stages → statements and the callback's own span", async () => {
  const server = await serve(async (req) => {
    const k = req.idempotency.key.idempotency_key
    await req.idempotency.run({
      started: async (tx) => {
        await tx.query('INSERT INTO otel_effects (k, stage) VALUES ($1, $2)', [k, 'reserve'])
        // The application's own call to a payment provider, traced by the application.
        await tracer.startActiveSpan('payment-provider authorize', async (span) => {
          await sleep(1)
          span.end()
        })
        return { recovery_point: 'charged' }
      },
      charged: async (tx) => {
        await tx.query('SELECT count(*) AS n FROM otel_effects WHERE k = $1', [k])
        return { response_code: 201, response_body: { ok: true } }
      },
    })
    req.idempotency.respond()
  })
  const key = uniq('tree')
  try {
    assert.equal((await post(server.url, key)).status, 201)
  } finally {
    await server.close()
  }
  await sleep(20) // the request span ends on 'finish'
  const [request] = byName('POST /orders')
  assert.ok(request, `spans: ${spans().map((s) => s.name)}`)
  const under = childrenOf(request)
  assert.deepEqual(under.map((s) => s.name), ['idempotency initializeRequest', 'idempotency workStage', 'idempotency workStage'])
  const [init, first, second] = under
  assert.equal(init.kind, api.SpanKind.INTERNAL)
  assert.equal(init.attributes['medusa.idempotency.key'], key)
  assert.equal(first.attributes['medusa.idempotency.recovery_point'], 'started')
  assert.equal(first.attributes['medusa.idempotency.recovery_point.after'], 'charged')
  assert.equal(first.attributes['medusa.idempotency.attempts'], 1)
  assert.equal(second.attributes['medusa.idempotency.recovery_point.after'], 'finished')
  // Each stage's own statements, as the core measured them: on PostgreSQL BEGIN with the row
  // lock and UPDATE with COMMIT, each one round trip (a batch); on SQLite, one each.
  const opening = isPostgres ? ['BEGIN; SELECT idempotency_key'] : ['BEGIN', 'SELECT idempotency_key']
  const closing = isPostgres ? ['UPDATE idempotency_key; COMMIT'] : ['UPDATE idempotency_key', 'COMMIT']
  const own = new Set([...opening, ...closing])
  // The service's own, in the order the core timed them (the SDK's own spans start on
  // Date.now()'s whole milliseconds, so the two kinds are not ordered against each other here).
  const ownOf = (stage) =>
    childrenOf(stage)
      .filter((s) => own.has(s.name))
      .sort((a, b) => hr(a.startTime) - hr(b.startTime))
      .map((s) => s.name)
  const othersOf = (stage) => childrenOf(stage).filter((s) => !own.has(s.name)).map((s) => s.name).sort()
  assert.deepEqual(ownOf(first), [...opening, ...closing])
  assert.deepEqual(ownOf(second), [...opening, ...closing])
  // The first stage also records that the handler accepted the request (the middleware's own INSERT).
  assert.deepEqual(othersOf(first), ['INSERT idempotency_key_accepted', 'INSERT otel_effects', 'payment-provider authorize'])
  // The finishing stage also drops the acceptance record (the middleware's own DELETE).
  assert.deepEqual(othersOf(second), ['DELETE idempotency_key_accepted', 'SELECT otel_effects'])
  // initializeRequest's own statement: the key inserted and claimed in one.
  assert.deepEqual(childrenOf(init).map((s) => s.name), ['INSERT idempotency_key'])
  for (const stage of [first, second]) {
    for (const s of childrenOf(stage).filter((c) => c.kind === api.SpanKind.CLIENT)) {
      assert.ok(hr(s.startTime) >= hr(stage.startTime) - 2e6 && hr(s.endTime) <= hr(stage.endTime) + 2e6, `${s.name} within its stage`)
    }
  }
  if (isPostgres) {
    const [lock] = byName('BEGIN; SELECT idempotency_key')
    assert.equal(lock.kind, api.SpanKind.CLIENT)
    assert.equal(lock.attributes['db.operation.name'], 'BATCH')
    assert.equal(lock.attributes['db.operation.batch.size'], 2)
    assert.equal(lock.attributes['db.response.returned_rows'], 1)
    assert.equal(lock.attributes['db.system.name'], 'postgresql')
  }

  const [insert] = byName('INSERT otel_effects')
  assert.equal(insert.kind, api.SpanKind.CLIENT)
  const system = isPostgres ? 'postgresql' : 'sqlite'
  assert.equal(insert.attributes['db.system.name'], system)
  assert.equal(insert.attributes['db.operation.name'], 'INSERT')
  assert.equal(insert.attributes['db.collection.name'], 'otel_effects')
  assert.equal(insert.attributes['db.query.summary'], 'INSERT otel_effects')
  assert.equal(insert.attributes['db.namespace'], isPostgres ? fx.name : fx.file)
  assert.equal(insert.attributes['db.query.text'], undefined, 'the text only when asked')
  if (isPostgres) {
    const url = new URL(fx.url) // the server, or the PgBouncer in front of it (IDEM_PG_POOLER)
    assert.equal(insert.attributes['server.address'], url.hostname)
    assert.equal(insert.attributes['server.port'], Number(url.port || 5432))
  }
  assert.equal(first.attributes['db.system.name'], system)
  for (const s of spans()) assert.notEqual(s.status.code, api.SpanStatusCode.ERROR, s.name)

  // A replay: the same request again is answered from the key, a `replay` event and counter.
  const before = (await points('medusa.idempotency.replays')).reduce((n, p) => n + p.value, 0)
  exporter.reset()
  const again = await serve(async () => assert.fail('a replay never reaches the handler'))
  try {
    const r = await post(again.url, key)
    assert.equal(r.status, 201)
    assert.equal(r.headers.get('idempotent-replayed'), 'true')
  } finally {
    await again.close()
  }
  const [replayed] = byName('idempotency initializeRequest')
  assert.equal(replayed.attributes['medusa.idempotency.replayed'], true)
  assert.deepEqual(replayed.events.map((e) => e.name), ['replay'])
  const after = (await points('medusa.idempotency.replays')).reduce((n, p) => n + p.value, 0)
  assert.equal(after, before + 1)
})

test('a failed stage is an error span with error.type; a failed statement carries its SQLSTATE', async () => {
  const key = uniq('fail')
  await service.create({ idempotency_key: key })
  const declined = Object.assign(new Error('card declined'), { code: 'CARD_DECLINED' })
  await assert.rejects(
    service.workStage(key, async (tx) => {
      await tx.query('SELECT * FROM otel_missing').catch(() => {})
      throw declined
    }),
    (e) => e === declined,
  )
  const [stage] = byName('idempotency workStage')
  assert.equal(stage.status.code, api.SpanStatusCode.ERROR)
  assert.equal(stage.status.message, 'card declined')
  assert.equal(stage.attributes['error.type'], 'CARD_DECLINED')
  assert.ok(stage.events.some((e) => e.name === 'exception'))
  const [statement] = byName('SELECT otel_missing')
  assert.equal(parentOf(statement), stage.spanContext().spanId)
  assert.equal(statement.status.code, api.SpanStatusCode.ERROR)
  if (isPostgres) {
    assert.equal(statement.attributes['db.response.status_code'], '42P01')
    assert.equal(statement.attributes['error.type'], '42P01')
  } else {
    assert.ok(statement.attributes['error.type'])
  }
})

test('a 409: the refused initializeRequest is an error span with a conflict event, and counted', async () => {
  let release
  const gate = new Promise((r) => (release = r))
  let entered
  const inside = new Promise((r) => (entered = r))
  const server = await serve(async (req) => {
    entered()
    await gate
    await req.idempotency.run({ started: async () => ({ response_code: 200, response_body: {} }) })
    req.idempotency.respond()
  })
  const key = uniq('busy')
  const count = async () => (await points('medusa.idempotency.conflicts')).filter((p) => p.attributes['medusa.idempotency.code'] === 'IDEMPOTENCY_KEY_LOCKED').reduce((n, p) => n + p.value, 0)
  const before = await count()
  try {
    const first = post(server.url, key)
    await inside
    const second = await post(server.url, key)
    assert.equal(second.status, 409)
    release()
    assert.equal((await first).status, 200)
  } finally {
    await server.close()
  }
  const refused = byName('idempotency initializeRequest').find((s) => s.status.code === api.SpanStatusCode.ERROR)
  assert.ok(refused, 'an error span for the refused claim')
  assert.equal(refused.attributes['error.type'], 'IDEMPOTENCY_KEY_LOCKED')
  assert.deepEqual(refused.events.filter((e) => e.name === 'conflict').map((e) => e.attributes['medusa.idempotency.code']), ['IDEMPOTENCY_KEY_LOCKED'])
  assert.equal(await count(), before + 1)
  // Counters carry no key and no tenant.
  for (const p of await points('medusa.idempotency.conflicts')) {
    assert.deepEqual(Object.keys(p.attributes).sort(), ['medusa.idempotency.code', 'medusa.idempotency.operation'])
  }
})

// PostgreSQL only: SQLite serialises writers, so it has no 40001 to retry.
if (isPostgres) test('a serialization failure: a retry event on the stage span and the retries counter', async () => {
  const a = uniq('skew-a')
  const b = uniq('skew-b')
  await service.create({ idempotency_key: a })
  await service.create({ idempotency_key: b })
  await fx.db.exec('CREATE TABLE IF NOT EXISTS otel_skew (k text PRIMARY KEY, v int)')
  await fx.db.exec(`INSERT INTO otel_skew VALUES ('${a}', 0), ('${b}', 0)`)
  const total = async () => (await points('medusa.idempotency.retries')).reduce((n, p) => n + p.value, 0)
  const before = await total()
  let arrived = 0
  let go
  const gate = new Promise((r) => (go = r))
  const stage = (mine, other) =>
    service.workStage(mine, async (tx) => {
      await tx.query('SELECT v FROM otel_skew WHERE k = $1', [other])
      if (++arrived === 2) go()
      await gate
      await tx.query('UPDATE otel_skew SET v = v + 1 WHERE k = $1', [mine])
      return { recovery_point: 'skewed' }
    })
  await Promise.all([stage(a, b), stage(b, a)])
  const retried = byName('idempotency workStage').filter((s) => s.events.some((e) => e.name === 'retry'))
  assert.equal(retried.length >= 1, true)
  assert.ok(retried[0].attributes['medusa.idempotency.attempts'] >= 2)
  assert.equal(retried[0].events.find((e) => e.name === 'retry').attributes['medusa.idempotency.attempt'], 2)
  assert.ok((await total()) >= before + 1)
})

// A conflict is the operation's to count: the service's own statement that failed under it (on
// SQLite a busy database, published with the service's code DATABASE_BUSY, which no test can
// cause at will) is an error span, but not a second conflict.
test("an internal statement's DATABASE_BUSY is an error span, not a conflict counted again", async () => {
  const busy = async () => (await points('medusa.idempotency.conflicts')).filter((p) => p.attributes['medusa.idempotency.code'] === 'DATABASE_BUSY').reduce((n, p) => n + p.value, 0)
  const before = await busy()
  const context = { operation: 'query', internal: true, dbSystem: 'sqlite', statements: ['BEGIN IMMEDIATE'], query: 'BEGIN IMMEDIATE', startTime: Date.now() - 5, duration: 5, rowCount: null }
  const error = Object.assign(new Error('database is locked'), { code: 'DATABASE_BUSY', sqlstate: null, serviceCode: 'DATABASE_BUSY' })
  assert.throws(() => tracingChannels.query.traceSync((e) => { throw e }, context, null, error), (e) => e === error)
  const [span] = byName('BEGIN')
  assert.ok(span, `spans: ${spans().map((s) => s.name)}`)
  assert.equal(span.attributes['error.type'], 'DATABASE_BUSY')
  assert.equal(span.status.code, api.SpanStatusCode.ERROR)
  assert.equal(await busy(), before)
})

test('db.client.operation.duration: a histogram in seconds with low-cardinality attributes only', async () => {
  const key = uniq('metrics')
  const scoped = service.forTenant(uniq('tenant'))
  await scoped.create({ idempotency_key: key })
  await scoped.workStage(key, async (tx) => {
    await tx.query('SELECT 1 AS one')
    return { recovery_point: 'x' }
  })
  const all = await points('db.client.operation.duration')
  assert.ok(all.length > 0)
  assert.equal(all[0].unit, 's')
  const stage = all.find((p) => p.attributes['db.operation.name'] === 'workStage')
  assert.ok(stage && stage.value.count >= 1)
  assert.ok(stage.value.sum > 0 && stage.value.sum < 60, `seconds, got ${stage.value.sum}`)
  assert.ok(all.some((p) => p.attributes['db.operation.name'] === 'SELECT'))
  const allowed = new Set(['db.system.name', 'db.namespace', 'db.operation.name', 'db.collection.name', 'server.address', 'server.port', 'error.type', 'db.response.status_code'])
  for (const p of all) for (const k of Object.keys(p.attributes)) assert.ok(allowed.has(k), `attribute ${k} on a metric`)
  for (const p of all) assert.ok(!JSON.stringify(p.attributes).includes(key) && !JSON.stringify(p.attributes).includes(scoped.tenant))
})

test("a completer's outcomes are counted and its pass is a span over its stages", async () => {
  const lease = await fx.connect({ lockTimeoutMs: 100 })
  const key = uniq('abandoned')
  await lease.initializeRequest(key, 'POST', {}, '/otel-complete')
  await lease.accept(key, { route: 'POST /otel-complete' })
  await sleep(250)
  const count = async () => (await points('medusa.idempotency.completer.outcomes')).filter((p) => p.attributes['medusa.idempotency.completer.outcome'] === 'completed').reduce((n, p) => n + p.value, 0)
  const before = await count()
  const completer = lease.completer({ routes: { 'POST /otel-complete': () => ({ started: async () => ({ response_code: 200, response_body: {} }) }) }, idleMs: 50 })
  const result = await completer.runOnce()
  assert.ok(result.completed >= 1)
  assert.ok((await count()) >= before + 1)
  const [pass] = byName('idempotency completer.pass')
  assert.ok(pass.attributes['medusa.idempotency.completer.completed'] >= 1)
  const under = childrenOf(pass).map((s) => s.name)
  // The pass selects accepted keys of its routes in SQL (its own statements), then runs their stages.
  assert.ok(under.includes('SELECT idempotency_key_accepted') && under.includes('idempotency workStage'), under.join(', '))
})

test('captureQueryText puts the statement in db.query.text; disable() stops every span and subscription', async () => {
  handle.disable()
  const withText = instrument({ tracerProvider, meterProvider, captureQueryText: true })
  const key = uniq('text')
  await service.create({ idempotency_key: key })
  await service.workStage(key, async (tx) => {
    await tx.query('SELECT 2 AS two')
    return { recovery_point: 'x' }
  })
  assert.equal(byName('SELECT')[0].attributes['db.query.text'], 'SELECT 2 AS two')
  withText.disable()
  exporter.reset()
  for (const c of Object.values(tracingChannels)) assert.equal(c.hasSubscribers, false)
  await service.workStage(key, async (tx) => {
    await tx.query('SELECT 3 AS three')
    return { recovery_point: 'y' }
  })
  await service.retrieve(key)
  assert.deepEqual(spans(), [])
  handle = instrument({ tracerProvider, meterProvider })
})
