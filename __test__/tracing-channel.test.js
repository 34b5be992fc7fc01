// TracingChannel events (lib/tracing.js): one `medusa-idempotency:<operation>` tracing channel per
// public operation and one for tx.query, observed with Node's own `tracingChannel().subscribe`:
// start / end / asyncStart / asyncEnd / error in Node's order on one context object, the
// context's fields, a store bound to `start` seen inside stage callbacks. Runs on the backend
// IDEM_BACKEND selects.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const dc = require('node:diagnostics_channel')
const { AsyncLocalStorage } = require('node:async_hooks')
const { useFreshDb, holdStage, isPostgres, sleep } = require('./helpers')
const { uniq } = require('../test-support/keys')
const { tracingChannels } = require('..')

const OPERATIONS = ['initializeRequest', 'workStage', 'retrieve', 'lock', 'update', 'create', 'reap', 'listAbandoned', 'query', 'completer.pass']

let fx
let service
useFreshDb(async (f) => {
  fx = f
  service = await fx.connect({ lockTimeoutMs: 100 })
})

/** Every event of every operation while `fn` runs: [operation, phase, context]. */
async function record(fn) {
  const seen = []
  const subscriptions = OPERATIONS.map((op) => {
    const handlers = {}
    for (const phase of ['start', 'end', 'asyncStart', 'asyncEnd', 'error']) handlers[phase] = (ctx) => seen.push([op, phase, ctx])
    dc.tracingChannel(`medusa-idempotency:${op}`).subscribe(handlers)
    return [op, handlers]
  })
  try {
    await fn()
  } finally {
    for (const [op, handlers] of subscriptions) dc.tracingChannel(`medusa-idempotency:${op}`).unsubscribe(handlers)
  }
  return seen
}

/** The phases of `op`'s events, the service's own statements (internal) left out. */
const phasesOf = (seen, op) => seen.filter(([o, , ctx]) => o === op && !ctx.internal).map(([, phase]) => phase)

test('the exported tracing channels are the named ones, and nothing subscribes by default', () => {
  assert.equal(tracingChannels.workStage.start, dc.channel('tracing:medusa-idempotency:workStage:start'))
  assert.equal(tracingChannels.query.asyncEnd, dc.channel('tracing:medusa-idempotency:query:asyncEnd'))
  assert.equal(tracingChannels.completerPass.error, dc.channel('tracing:medusa-idempotency:completer.pass:error'))
  for (const c of Object.values(tracingChannels)) assert.equal(c.hasSubscribers, false)
})

test('a stage: start, end, then the statements inside it, then asyncStart/asyncEnd; one context with its fields and result', async () => {
  const key = uniq('stage')
  await service.create({ idempotency_key: key })
  const t0 = Date.now()
  const all = await record(() =>
    service.workStage(key, async (tx) => {
      await tx.query('SELECT 1 AS one UNION ALL SELECT 2')
      return { recovery_point: 'charged' }
    }, { recoveryPoint: 'started' }),
  )
  const t1 = Date.now()
  // The service's own statements (internal: true) come once the native call has settled,
  // before the stage's asyncStart, each as start then end with its measured times.
  const events = all.map(([op, phase, ctx]) => `${op}:${phase}${ctx.internal ? ':internal' : ''}`)
  const own = isPostgres ? 2 : 4 // PostgreSQL pipelines BEGIN with the lock and UPDATE with COMMIT
  assert.deepEqual(events, [
    'workStage:start',
    'workStage:end',
    'query:start',
    'query:end',
    'query:asyncStart',
    'query:asyncEnd',
    ...Array.from({ length: own }, () => ['query:start:internal', 'query:end:internal']).flat(),
    'workStage:asyncStart',
    'workStage:asyncEnd',
  ])
  const internal = all.filter(([, phase, ctx]) => phase === 'start' && ctx.internal).map(([, , ctx]) => ctx)
  const statements = internal.map((ctx) => ctx.statements)
  if (isPostgres) {
    assert.match(statements[0][0], /^BEGIN/)
    assert.match(statements[0][1], /^SELECT .* FROM idempotency_key .*FOR UPDATE NOWAIT/s)
    assert.match(statements[1][0], /^UPDATE idempotency_key/)
    assert.equal(statements[1][1], 'COMMIT')
  } else {
    assert.deepEqual(statements.map((s) => s.length), [1, 1, 1, 1])
    assert.equal(statements[0][0], 'BEGIN IMMEDIATE')
    assert.match(statements[1][0], /^SELECT .* FROM idempotency_key WHERE idempotency_key = \?1$/s)
    assert.match(statements[2][0], /^UPDATE idempotency_key/)
    assert.equal(statements[3][0], 'COMMIT')
  }
  let previousEnd = t0
  for (const ctx of internal) {
    assert.equal(ctx.query, ctx.statements.join(';\n'))
    assert.equal(ctx.dbSystem, isPostgres ? 'postgresql' : 'sqlite')
    assert.ok(ctx.startTime >= previousEnd - 1 && ctx.duration >= 0 && ctx.startTime + ctx.duration <= t1 + 1, `measured within the call, in order: ${JSON.stringify(ctx)}`)
    assert.ok(!('error' in ctx))
    previousEnd = ctx.startTime + ctx.duration
  }
  // The lock read the key's row; the UPDATE touched it.
  assert.equal(internal[0].rowCount + (isPostgres ? 0 : internal[1].rowCount), 1)
  assert.equal(internal.at(-1).rowCount + (isPostgres ? 0 : internal.at(-2).rowCount), 1)
  const seen = all.filter(([, , ctx]) => !ctx.internal)
  const stage = seen[0][2]
  assert.ok(seen.filter(([op]) => op === 'workStage').every(([, , ctx]) => ctx === stage), 'one context object per call')
  assert.equal(stage.operation, 'workStage')
  assert.equal(stage.key, key)
  assert.equal(stage.recoveryPoint, 'started')
  assert.equal(stage.attempts, 1)
  assert.equal(stage.tenant, null)
  assert.equal(stage.result.recovery_point, 'charged')
  assert.equal(stage.dbSystem, isPostgres ? 'postgresql' : 'sqlite')
  if (isPostgres) {
    // The service's URL: the server, or the PgBouncer in front of it (IDEM_PG_POOLER).
    const url = new URL(fx.url)
    assert.equal(stage.serverAddress, url.hostname)
    assert.equal(stage.serverPort, Number(url.port || 5432))
    assert.equal(stage.dbNamespace, fx.name)
  } else {
    assert.equal(stage.serverAddress, null)
    assert.equal(stage.dbNamespace, fx.file)
  }
  const query = seen[2][2]
  assert.equal(query.operation, 'query')
  assert.equal(query.query, 'SELECT 1 AS one UNION ALL SELECT 2')
  assert.equal(query.rowCount, 2)
  assert.equal(query.dbSystem, stage.dbSystem)
  assert.deepEqual(query.result, [{ one: 1 }, { one: 2 }])
})

test('a failing stage and a failing statement publish error with the rejection; a LOCKED stage too', async () => {
  const key = uniq('fail')
  await service.create({ idempotency_key: key })
  const boom = new Error('card declined')
  let seen = await record(() =>
    assert.rejects(
      service.workStage(key, async (tx) => {
        await tx.query('SELECT * FROM no_such_table').catch(() => {})
        throw boom
      }),
      (e) => e === boom,
    ),
  )
  assert.deepEqual(phasesOf(seen, 'workStage'), ['start', 'end', 'error', 'asyncStart', 'asyncEnd'])
  assert.deepEqual(phasesOf(seen, 'query'), ['start', 'end', 'error', 'asyncStart', 'asyncEnd'])
  assert.equal(seen.find(([op, phase]) => op === 'workStage' && phase === 'error')[2].error, boom)
  const failed = seen.find(([op, phase]) => op === 'query' && phase === 'error')[2]
  assert.equal(failed.query, 'SELECT * FROM no_such_table')
  if (isPostgres) assert.equal(failed.error.code, '42P01')
  else assert.match(failed.error.message, /no such table/)

  const holder = holdStage(service, key)
  await holder.inside
  seen = await record(() => assert.rejects(service.workStage(key, async () => ({ recovery_point: 'x' })), { code: 'IDEMPOTENCY_KEY_LOCKED' }))
  holder.release()
  await holder.done
  const locked = seen.find(([op, phase]) => op === 'workStage' && phase === 'error')[2]
  assert.equal(locked.error.code, 'IDEMPOTENCY_KEY_LOCKED')
  assert.equal(locked.attempts, 0, 'refused before the callback ran')
  if (isPostgres) {
    // The row lock the server refused: the service's own statement, failed with 55P03.
    const refused = seen.find(([op, phase, ctx]) => op === 'query' && phase === 'error' && ctx.internal)?.[2]
    assert.ok(refused, 'an error event for the refused row lock')
    assert.match(refused.statements[0], /^BEGIN/)
    assert.equal(refused.error.code, '55P03')
    assert.equal(refused.error.sqlstate, '55P03')
    assert.equal(refused.rowCount, null)
  }
})

test('with nothing subscribed to query, no statement of the service is recorded; subscribed, every call reports its own', async () => {
  // Counted on the addon's class, which the façade's tracing asks for a recording copy.
  const { IdempotencyKeyService } = require('../lib/binding.js')
  const withStatementLog = IdempotencyKeyService.prototype.withStatementLog
  let copies = 0
  IdempotencyKeyService.prototype.withStatementLog = function counted(log) {
    copies++
    return withStatementLog.call(this, log)
  }
  try {
    const key = uniq('quiet')
    const stageOnly = { start() {}, end() {}, asyncStart() {}, asyncEnd() {}, error() {} }
    tracingChannels.workStage.subscribe(stageOnly)
    try {
      await service.initializeRequest(key, 'POST', {}, '/quiet')
      await service.workStage(key, async () => ({ recovery_point: 'next' }))
    } finally {
      tracingChannels.workStage.unsubscribe(stageOnly)
    }
    assert.equal(copies, 0, 'no recording copy made, no statement timed')

    const seen = await record(async () => {
      await service.retrieve(key)
      await service.update(key, { locked_at: null })
      await service.lock(key)
    })
    assert.equal(copies, 3)
    const byOperation = (op) => {
      const outer = seen.find(([o, phase]) => o === op && phase === 'start')[2]
      const i = seen.findIndex(([, , ctx]) => ctx === outer)
      const j = seen.findIndex(([o, phase, ctx]) => o === op && phase === 'asyncStart' && ctx === outer)
      return seen.slice(i, j).filter(([, phase, ctx]) => phase === 'start' && ctx.internal).map(([, , ctx]) => ctx.statements.join(' '))
    }
    assert.deepEqual(byOperation('retrieve').length, 1)
    assert.match(byOperation('retrieve')[0], /^SELECT .*FROM idempotency_key/s)
    assert.match(byOperation('lock')[0], /^UPDATE idempotency_key/)
    assert.match(byOperation('update')[0], /^UPDATE idempotency_key/)
  } finally {
    IdempotencyKeyService.prototype.withStatementLog = withStatementLog
  }
})

test('every other operation publishes its own tracing channel', async () => {
  const key = uniq('ops')
  const seen = await record(async () => {
    await service.initializeRequest(key, 'POST', { a: 1 }, '/ops')
    await service.retrieve(key)
    await service.update(key, { recovery_point: 'moved' })
    await sleep(150)
    await service.lock(key)
    await service.create({ idempotency_key: uniq('created') })
    await service.listAbandoned({ idleMs: 1 })
    await service.reap({ olderThanMs: 3_600_000 })
    await assert.rejects(service.retrieve(uniq('missing')), { code: 'IDEMPOTENCY_KEY_NOT_FOUND' })
  })
  for (const op of ['initializeRequest', 'update', 'lock', 'create', 'listAbandoned', 'reap']) {
    assert.deepEqual(phasesOf(seen, op), ['start', 'end', 'asyncStart', 'asyncEnd'], op)
  }
  assert.deepEqual(phasesOf(seen, 'retrieve'), ['start', 'end', 'asyncStart', 'asyncEnd', 'start', 'end', 'error', 'asyncStart', 'asyncEnd'])
  const init = seen.find(([op]) => op === 'initializeRequest')[2]
  assert.equal(init.key, key)
  assert.equal(init.result.idempotency_key, key)
  assert.equal(typeof seen.find(([op]) => op === 'reap')[2].result, 'number')
  assert.ok(Array.isArray(seen.find(([op]) => op === 'listAbandoned')[2].result))
})

test('a tenant-scoped copy puts its tenant on the context', async () => {
  const scoped = service.forTenant(uniq('acme'))
  const key = uniq('tk')
  const seen = await record(() => scoped.create({ idempotency_key: key }))
  assert.equal(seen[0][2].tenant, scoped.tenant)
  assert.equal(seen[0][2].dbSystem, isPostgres ? 'postgresql' : 'sqlite')
})

test('a completer pass is one completer.pass call around its stages', async () => {
  const key = uniq('pass')
  await service.initializeRequest(key, 'POST', {}, '/pass')
  await service.accept(key, { route: 'POST /pass' })
  await sleep(200)
  const completer = service.completer({ routes: { 'POST /pass': () => ({ started: async () => ({ response_code: 200, response_body: {} }) }) }, idleMs: 50 })
  const seen = await record(() => completer.runOnce())
  const ops = seen.map(([op, phase]) => `${op}:${phase}`)
  assert.equal(ops[0], 'completer.pass:start')
  assert.equal(ops.at(-1), 'completer.pass:asyncEnd')
  assert.ok(ops.includes('workStage:asyncEnd'), ops.join(' '))
  const pass = seen[0][2]
  assert.equal(pass.operation, 'completer.pass')
  assert.ok(pass.result.completed >= 1)
  // The service's own statements of the pass's bookkeeping stages (listing on its anchor row,
  // counting the attempt) are published too, not only those of the route's stage: 3 stages.
  const begins = seen.filter(([op, phase, ctx]) => op === 'query' && phase === 'start' && ctx.internal && /^BEGIN/.test(ctx.statements[0]))
  assert.ok(begins.length >= 3, `stages whose BEGIN was published: ${begins.length}`)
})

test('a store bound to start is what the stage callback, its statements and user code inside see', async () => {
  const als = new AsyncLocalStorage()
  const key = uniq('store')
  await service.create({ idempotency_key: key })
  const stageChannel = dc.tracingChannel('medusa-idempotency:workStage')
  const queryChannel = dc.tracingChannel('medusa-idempotency:query')
  stageChannel.start.bindStore(als, (ctx) => ({ span: `stage ${ctx.key}` }))
  const parents = []
  const onQuery = { start: () => parents.push(als.getStore()) }
  queryChannel.subscribe(onQuery)
  let inside
  try {
    await als.run({ span: 'request' }, () =>
      service.workStage(key, async (tx) => {
        inside = als.getStore()
        await tx.query('SELECT 1 AS one')
        return { recovery_point: 'x' }
      }),
    )
  } finally {
    stageChannel.start.unbindStore(als)
    queryChannel.unsubscribe(onQuery)
  }
  assert.deepEqual(inside, { span: `stage ${key}` })
  // The callback's statement, then the service's own (its BEGIN and lock, its UPDATE and
  // COMMIT: 2 round trips on PostgreSQL, 4 statements on SQLite), all inside the stage.
  assert.deepEqual(parents, Array.from({ length: 1 + (isPostgres ? 2 : 4) }, () => ({ span: `stage ${key}` })))
})

// PostgreSQL only: SQLite serialises writers, so it has no 40001 to retry.
if (isPostgres) test('a serialization failure re-runs the callback: attempts counts the runs', async () => {
  const a = uniq('skew-a')
  const b = uniq('skew-b')
  await service.create({ idempotency_key: a })
  await service.create({ idempotency_key: b })
  await fx.db.exec('CREATE TABLE IF NOT EXISTS tc_skew (k text PRIMARY KEY, v int)')
  await fx.db.exec(`INSERT INTO tc_skew VALUES ('${a}', 0), ('${b}', 0)`)
  let arrived = 0
  let go
  const gate = new Promise((r) => (go = r))
  const stage = (mine, other) =>
    service.workStage(mine, async (tx) => {
      await tx.query('SELECT v FROM tc_skew WHERE k = $1', [other])
      if (++arrived === 2) go()
      await gate
      await tx.query('UPDATE tc_skew SET v = v + 1 WHERE k = $1', [mine])
      return { recovery_point: 'skewed' }
    })
  const seen = await record(() => Promise.all([stage(a, b), stage(b, a)]))
  const ends = seen.filter(([op, phase]) => op === 'workStage' && phase === 'asyncEnd').map(([, , ctx]) => ctx)
  assert.equal(ends.length, 2)
  assert.ok(ends.some((ctx) => ctx.attempts >= 2), `attempts ${ends.map((c) => c.attempts)}`)
  // Each run's statements are published again: more query starts than the 4 of one run each.
  assert.ok(seen.filter(([op, phase]) => op === 'query' && phase === 'start').length > 4)
})
