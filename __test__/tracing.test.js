// Tracing: the events published on Node's diagnostics_channel, observed by a real subscriber —
// stage start/end/error (duration, recovery points, attempts), retry, conflict, replay, reap.
// Runs on the backend IDEM_BACKEND selects.
const { test, afterEach } = require('node:test')
const assert = require('node:assert/strict')
const dc = require('node:diagnostics_channel')
const { useFreshDb, holdStage, isPostgres } = require('./helpers')
const { uniq } = require('../test-support/keys')
const { channels } = require('..')

const NAMES = ['stage:start', 'stage:end', 'stage:error', 'retry', 'conflict', 'replay', 'reap'].map((n) => `medusa-idempotency:${n}`)

let fx
useFreshDb((f) => {
  fx = f
})

let seen = []
const subscriber = (message, name) => seen.push({ name: name.replace('medusa-idempotency:', ''), ...message })
function listen() {
  seen = []
  for (const n of NAMES) dc.subscribe(n, subscriber)
}
afterEach(() => {
  for (const n of NAMES) dc.unsubscribe(n, subscriber)
})

const names = () => seen.map((e) => e.name)

test('the exported channels are the named ones', () => {
  assert.equal(channels.stageEnd, dc.channel('medusa-idempotency:stage:end'))
  assert.equal(channels.conflict.name, 'medusa-idempotency:conflict')
})

test('a stage publishes start and end with duration, recovery points and attempts', async () => {
  const key = uniq('ok')
  await fx.service.create({ idempotency_key: key })
  listen()
  await fx.service.workStage(key, async () => ({ recovery_point: 'charged' }), { recoveryPoint: 'started' })
  await fx.service.workStage(key, async () => ({ response_code: 201, response_body: {} }))
  assert.deepEqual(names(), ['stage:start', 'stage:end', 'stage:start', 'stage:end'])
  const [start, end, , last] = seen
  assert.equal(start.key, key)
  assert.equal(start.recoveryPoint, 'started')
  assert.equal(end.from, 'started')
  assert.equal(end.recoveryPoint, 'charged')
  assert.equal(end.finished, false)
  assert.equal(end.attempts, 1)
  assert.ok(end.durationMs > 0 && end.durationMs < 10_000, `durationMs ${end.durationMs}`)
  assert.equal(last.recoveryPoint, 'finished')
  assert.equal(last.finished, true)
})

test('a failing stage publishes stage:error with the error; a locked one a conflict too', async () => {
  const key = uniq('fail')
  await fx.service.create({ idempotency_key: key })
  listen()
  const boom = new Error('card declined')
  await assert.rejects(fx.service.workStage(key, async () => { throw boom }), (e) => e === boom)
  assert.deepEqual(names(), ['stage:start', 'stage:error'])
  assert.equal(seen[1].error, boom)
  assert.equal(seen[1].key, key)

  // A stage on a key another stage holds: LOCKED, published as stage:error and conflict.
  seen = []
  const holder = holdStage(fx.service, key)
  await holder.inside
  await assert.rejects(fx.service.workStage(key, async () => ({ recovery_point: 'never' })), { code: 'IDEMPOTENCY_KEY_LOCKED' })
  holder.release()
  await holder.done
  const conflict = seen.find((e) => e.name === 'conflict')
  assert.ok(conflict, `events: ${names()}`)
  assert.equal(conflict.method, 'workStage')
  assert.equal(conflict.code, 'IDEMPOTENCY_KEY_LOCKED')
  assert.equal(conflict.key, key)
})

test('initializeRequest publishes replay for a finished key and conflict for LOCKED and REUSED', async () => {
  const key = uniq('init')
  await fx.service.initializeRequest(key, 'POST', { a: 1 }, '/x')
  listen()
  await assert.rejects(fx.service.initializeRequest(key, 'POST', { a: 1 }, '/x'), { code: 'IDEMPOTENCY_KEY_LOCKED' })
  await assert.rejects(fx.service.initializeRequest(key, 'POST', { a: 2 }, '/x'), { code: 'IDEMPOTENCY_KEY_REUSED' })
  await fx.service.workStage(key, async () => ({ response_code: 200, response_body: { ok: true } }))
  await fx.service.initializeRequest(key, 'POST', { a: 1 }, '/x')
  const relevant = seen.filter((e) => e.name === 'conflict' || e.name === 'replay')
  assert.deepEqual(relevant.map((e) => [e.name, e.code ?? e.responseCode]), [
    ['conflict', 'IDEMPOTENCY_KEY_LOCKED'],
    ['conflict', 'IDEMPOTENCY_KEY_REUSED'],
    ['replay', 200],
  ])
  assert.ok(relevant.every((e) => e.key === key))
})

test('lock() publishes a conflict when the key is already locked', async () => {
  const key = uniq('lock')
  await fx.service.create({ idempotency_key: key })
  await fx.service.lock(key)
  listen()
  await assert.rejects(fx.service.lock(key), { type: 'conflict' })
  assert.deepEqual(seen.map((e) => [e.name, e.method]), [['conflict', 'lock']])
})

test('reap publishes how many keys it removed', async () => {
  listen()
  const removed = await fx.service.reap({ olderThanMs: 3600_000 })
  assert.deepEqual(names(), ['reap'])
  assert.equal(seen[0].removed, removed)
  assert.ok(seen[0].durationMs >= 0)
})

test('a tenant-scoped service puts its tenant on every event', async () => {
  const t = fx.service.forTenant(uniq('acme'))
  const key = uniq('tk')
  await t.create({ idempotency_key: key })
  listen()
  await t.workStage(key, async () => ({ recovery_point: 'x' }))
  assert.deepEqual(seen.map((e) => [e.name, e.tenant, e.key]), [['stage:start', t.tenant, key], ['stage:end', t.tenant, key]])
})

test('a serialization failure re-runs the callback and publishes retry', { skip: !isPostgres && 'SQLite serialises writers: no 40001 to retry' }, async () => {
  // Two stages on different keys, each reading the other's row and writing its own: a classic
  // write skew under SERIALIZABLE, so one of them fails with 40001 and is re-run.
  const a = uniq('skew-a')
  const b = uniq('skew-b')
  await fx.service.create({ idempotency_key: a })
  await fx.service.create({ idempotency_key: b })
  await fx.db.exec('CREATE TABLE IF NOT EXISTS trace_skew (k text PRIMARY KEY, v int)')
  await fx.db.exec(`INSERT INTO trace_skew VALUES ('${a}', 0), ('${b}', 0)`)
  listen()
  let arrived = 0
  let go
  const gate = new Promise((r) => { go = r })
  const stage = (mine, other) => fx.service.workStage(mine, async (tx) => {
    await tx.query('SELECT v FROM trace_skew WHERE k = $1', [other])
    if (++arrived === 2) go()
    await gate
    await tx.query('UPDATE trace_skew SET v = v + 1 WHERE k = $1', [mine])
    return { recovery_point: 'skewed' }
  })
  await Promise.all([stage(a, b), stage(b, a)])
  const retries = seen.filter((e) => e.name === 'retry')
  assert.ok(retries.length >= 1, `events: ${names()}`)
  assert.equal(retries[0].attempt, 2)
  const ends = seen.filter((e) => e.name === 'stage:end')
  assert.equal(ends.length, 2)
  assert.ok(ends.some((e) => e.attempts >= 2))
})

test('with subscribers, the caller still gets the callback\'s own rejection value, even one whose fields throw', async () => {
  const key = uniq('hostile')
  await fx.service.create({ idempotency_key: key })
  listen()
  const hostile = { get code() { throw new Error('getter explodes') }, get type() { throw new Error('nope') } }
  const { proxy, revoke } = Proxy.revocable({}, {})
  revoke()
  for (const value of [hostile, proxy]) {
    // (Kept out of a resolution value: awaiting a revoked proxy would itself throw.)
    let got = 'resolved'
    await fx.service.workStage(key, async () => { throw value }).catch((e) => { got = e })
    assert.ok(got === value, 'the identical value')
  }
  assert.deepEqual(names().filter((n) => n === 'stage:error').length, 2)
})
