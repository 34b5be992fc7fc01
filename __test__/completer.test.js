// The completer (completer.js, issue 14): passes that claim abandoned keys with the request's own
// lease and walk their route's stages to `finished`, exactly once across processes; attempts and
// backoff kept in idempotency_key_completer so they survive restarts; start()/stop(). Runs on the
// backend IDEM_BACKEND selects, with real child processes for the crash and the two completers.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { channels } = require('..')
const { idempotency } = require('medusa-idempotency-native/middleware')
const { useFreshDb, holdStage, isPostgres, rejects, sleep } = require('./helpers')
const { uniq } = require('../test-support/keys')
const { checkout, LOCK_TIMEOUT_MS, IDLE_MS } = require('./completer-child')

const CHILD = path.join(__dirname, 'completer-child.js')
const IDLE = 150 // idleMs of the in-process completers
const LEASE = 100 // their services' lockTimeoutMs

let fx
let db
let service // lockTimeoutMs LEASE
useFreshDb(async (f) => {
  fx = f
  db = fx.db
  service = await fx.connect({ lockTimeoutMs: LEASE })
  await db.exec('CREATE TABLE completer_side (idem_key text, stage text, pid integer)')
})

/** Every event published on `channel` while `fn` runs. */
async function collect(channel, fn) {
  const seen = []
  const on = (e) => seen.push(e)
  channel.subscribe(on)
  try {
    await fn(seen)
  } finally {
    channel.unsubscribe(on)
  }
  return seen
}

/** A key left at `at` by a request whose client went away: claimed, accepted for `route` (default: its method and path), stages up to `at` committed. */
async function abandon(svc, key, { method = 'POST', path: p, params, stages, at, route = `${method} ${p}`, pathParams }) {
  let k = await svc.initializeRequest(key, method, params, p)
  k = await svc.accept(key, { route, pathParams })
  while (k.recovery_point !== at) k = await svc.workStage(key, stages[k.recovery_point], { recoveryPoint: k.recovery_point })
  return k
}

async function row(key) {
  const [r] = await db.query('SELECT * FROM idempotency_key WHERE idempotency_key = $1', [key])
  return r
}

async function attemptsRow(storedKey) {
  const [r] = await db.query('SELECT * FROM idempotency_key_completer WHERE idempotency_key = $1', [storedKey])
  return r
}

async function sideRows(key) {
  return db.query('SELECT stage, count(*) AS n FROM completer_side WHERE idem_key = $1 GROUP BY stage ORDER BY stage', [key])
}

const stageCount = (rows, stage) => Number(rows.find((r) => r.stage === stage)?.n ?? 0)

/** A route whose `started` stage moves on and whose `reserved` stage runs `reserved(tx, key)`. */
function route(reserved) {
  return (params, key) => ({
    started: async () => ({ recovery_point: 'reserved' }),
    reserved: (tx) => reserved(tx, key, params),
  })
}

async function post(port, key, body, headers = {}) {
  const res = await fetch(`http://127.0.0.1:${port}/checkout`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key, ...headers },
    body: JSON.stringify(body),
  })
  return { status: res.status, replayed: res.headers.get('idempotent-replayed') === 'true', body: await res.json() }
}

// ---------------------------------------------------------------------------------------------

function child(mode, ...args) {
  const p = spawn(process.execPath, [CHILD, mode, ...args], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, RUST_BACKTRACE: '0' } })
  const lines = []
  const waiters = []
  let buf = ''
  p.stdout.on('data', (chunk) => {
    buf += chunk
    let i
    while ((i = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      lines.push(line)
      for (const w of [...waiters]) if (w.test(line)) w.resolve(line)
    }
  })
  const exited = new Promise((resolve) => p.on('exit', (code, signal) => resolve({ code, signal })))
  /** The first line (seen or to come) matching `re`. */
  const line = (re, timeoutMs = 20_000) => {
    const found = lines.find((l) => re.test(l))
    if (found) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const w = { test: (l) => re.test(l), resolve: (l) => (clearTimeout(timer), waiters.splice(waiters.indexOf(w), 1), resolve(l)) }
      const timer = setTimeout(() => reject(new Error(`child ${mode}: no line matching ${re} within ${timeoutMs} ms; got ${JSON.stringify(lines)}`)), timeoutMs)
      waiters.push(w)
      exited.then(() => setTimeout(() => reject(new Error(`child ${mode} exited without a line matching ${re}; got ${JSON.stringify(lines)}`)), 50))
    })
  }
  return { p, lines, line, exited }
}

/** PostgreSQL: wait until no backend of this database is left in a transaction (a killed client's is rolled back). */
async function noOpenTransactions() {
  if (!isPostgres) return
  for (let i = 0; i < 200; i++) {
    const [{ n }] = await db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'", [fx.name])
    if (n === 0) return
    await sleep(50)
  }
  throw new Error('a killed process still has a transaction open')
}

// 12 requests SIGKILLed after their first stage, two completer processes at once: completed sums to
// 12, every key finished once, one side row per (key, stage), the retry replays
test('two completer processes finish 12 SIGKILLed requests, each exactly once', async (t) => {
  const tenant = 'mp'
  const keys = []
  const bodies = new Map()
  // Three server processes, four requests each: three stopped between the first and the second
  // stage, one inside the second stage with its side row written and not committed. One server
  // at a time: on SQLite a stage in flight holds the file's write lock.
  for (let c = 0; c < 3; c++) {
    const server = child('server', fx.url, tenant)
    const port = Number((await server.line(/^listening /)).split(' ')[1])
    const inflight = []
    for (let i = 0; i < 4; i++) {
      const key = uniq(`mp${c}${i}`)
      const body = { cart: `cart_${c}_${i}`, amount: 100 * c + i }
      keys.push(key)
      bodies.set(key, body)
      const pause = i < 3 ? 'between' : 'inside'
      inflight.push(post(port, key, body, { 'x-pause': pause }).then(() => 'answered', () => 'connection lost'))
      await server.line(new RegExp(`^${pause} ${key}$`))
    }
    server.p.kill('SIGKILL')
    const { signal } = await server.exited
    assert.equal(signal, 'SIGKILL')
    assert.deepEqual(await Promise.all(inflight), ['connection lost', 'connection lost', 'connection lost', 'connection lost'])
  }
  await noOpenTransactions()
  for (const key of keys) {
    const r = await row(`${tenant}/${key}`)
    assert.equal(r.recovery_point, 'reserved', `${key} was left after its first stage`)
    assert.deepEqual((await sideRows(key)).map((x) => [x.stage, Number(x.n)]), [['started', 1]], `${key}: the killed second stage's row was rolled back`)
  }
  await sleep(Math.max(IDLE_MS, LOCK_TIMEOUT_MS) + 100) // abandoned, leases expired

  const completers = [child('completer', fx.url, tenant), child('completer', fx.url, tenant)]
  await Promise.all(completers.map((c) => c.line(/^ready$/)))
  for (const c of completers) c.p.stdin.write('go\n') // the same moment, as near as two pipes allow
  const outs = (await Promise.all(completers.map((c) => c.line(/^result /, 60_000)))).map((l) => JSON.parse(l.slice('result '.length)))
  for (const c of completers) assert.equal((await c.exited).code, 0)

  const [a, b] = outs
  t.diagnostic(`completer A (pid ${a.pid}): completed ${a.result.completed}, skipped ${a.result.skipped} ${JSON.stringify(a.result.skippedBy)}, pass ${a.result.durationMs.toFixed(1)} ms`)
  t.diagnostic(`completer B (pid ${b.pid}): completed ${b.result.completed}, skipped ${b.result.skipped} ${JSON.stringify(b.result.skippedBy)}, pass ${b.result.durationMs.toFixed(1)} ms`)
  t.diagnostic(`started ${Math.abs(a.startedAt - b.startedAt)} ms apart; passes overlapped ${Math.max(0, Math.min(a.endedAt, b.endedAt) - Math.max(a.startedAt, b.startedAt))} ms`)
  assert.equal(a.result.completed + b.result.completed, 12)
  assert.equal(a.result.failed + b.result.failed, 0)
  for (const [o, other] of [[a, b], [b, a]]) {
    // A key one completer did not list at all was finished by the other before it listed (they
    // start a few ms apart): never an unfinished key passed over.
    const unseen = 12 - (o.result.completed + o.result.skipped)
    assert.ok(unseen >= 0 && unseen <= other.result.completed, `each completer considered every key the other had not finished (${unseen} unseen)`)
    assert.equal(o.result.skippedBy.route + o.result.skippedBy.backoff + o.result.skippedBy.gaveUp, 0)
    assert.equal(o.completed.length, o.result.completed)
  }
  assert.deepEqual([...a.completed, ...b.completed].sort(), [...keys].sort(), 'each key completed by exactly one completer')

  for (const key of keys) {
    const r = await row(`${tenant}/${key}`)
    assert.equal(r.recovery_point, 'finished')
    assert.equal(r.response_code, 201)
    const body = bodies.get(key)
    assert.deepEqual(typeof r.response_body === 'string' ? JSON.parse(r.response_body) : r.response_body, { order: `order_${key}`, cart: body.cart, amount: body.amount })
    assert.equal(r.locked_at, null, 'the finishing stage released the lease')
    assert.deepEqual((await sideRows(key)).map((x) => [x.stage, Number(x.n)]), [['charged', 1], ['reserved', 1], ['started', 1]])
    const attempts = await attemptsRow(`${tenant}/${key}`)
    assert.equal(Number(attempts.attempts), 1, `${key} was driven once`)
  }

  // The client comes back: its retry is answered with the stored response.
  const mw = idempotency({ service, tenant: () => tenant, reap: false })
  let handlerRuns = 0
  const srv = http.createServer((req, res) =>
    mw(req, res, async () => {
      handlerRuns++
      await req.idempotency.run(checkout(req.body, req.idempotency.key))
      req.idempotency.respond()
    }),
  )
  await new Promise((r) => srv.listen(0, '127.0.0.1', r))
  try {
    for (const key of keys) {
      const r = await post(srv.address().port, key, bodies.get(key))
      assert.equal(r.status, 201)
      assert.equal(r.replayed, true)
      assert.deepEqual(r.body, { order: `order_${key}`, ...bodies.get(key) })
    }
  } finally {
    srv.close()
  }
  assert.equal(handlerRuns, 0)
  const [{ n }] = await db.query("SELECT count(*) AS n FROM completer_side WHERE idem_key LIKE 'mp%'")
  assert.equal(Number(n), 36)
})

// ---------------------------------------------------------------------------------------------

// keys of an unregistered route, keys no handler accepted (a live one), keys made by create() and
// finished keys are not even listed; an abandoned one of the route is completed
test('a completer lists and completes only abandoned keys of its routes', async () => {
  // The completer's service leases for 5 s and lists keys idle for 150 ms, so a key claimed
  // 300 ms ago by a live request is listed but still leased.
  const svc = await fx.connect({ lockTimeoutMs: 5000 })
  const stages = checkout({ cart: 'c', amount: 1 }, { idempotency_key: 'x' })
  const p = '/untouched'
  const mine = uniq('u-abandoned')
  await abandon(svc, mine, { path: p, params: { cart: 'c', amount: 1 }, stages: checkout({ cart: 'c', amount: 1 }, { idempotency_key: mine }), at: 'reserved' })
  await db.exec(`UPDATE idempotency_key SET locked_at = NULL WHERE idempotency_key = '${mine}'`) // its request died: no lease
  const other = uniq('u-other-route')
  await abandon(svc, other, { path: '/elsewhere', params: { cart: 'c' }, stages, at: 'reserved' })
  await db.exec(`UPDATE idempotency_key SET locked_at = NULL WHERE idempotency_key = '${other}'`)
  const made = uniq('u-created') // create(): no method or path stored
  await svc.create({ idempotency_key: made })
  const finished = uniq('u-finished')
  await abandon(svc, finished, { path: p, params: { cart: 'c' }, stages, at: 'finished' })
  const live = uniq('u-live')
  await svc.initializeRequest(live, 'POST', { cart: 'c' }, p)
  await sleep(300)

  const watched = [other, made, finished, live]
  const before = await Promise.all(watched.map(row))
  const completer = svc.completer({ routes: { [`POST ${p}`]: checkout }, idleMs: IDLE })
  const result = await completer.runOnce()
  const afterRows = await Promise.all(watched.map(row))
  assert.deepEqual(afterRows, before, 'not a column of them changed')
  for (const k of watched) assert.equal(await attemptsRow(k), undefined, `${k}: no attempt counted`)
  // Selected by route and acceptance in SQL: the others are not listed, so not even skipped.
  assert.deepEqual([result.completed, result.skipped], [1, 0], JSON.stringify(result))
  assert.equal((await row(mine)).recovery_point, 'finished')
})

test('a key a stage is working on is skipped as locked, its stage unaffected', async () => {
  const svc = await fx.connect({ lockTimeoutMs: LEASE, busyTimeoutMs: 300 })
  const p = '/held'
  const key = uniq('held')
  await abandon(svc, key, { path: p, params: { cart: 'h' }, stages: checkout({ cart: 'h' }, { idempotency_key: key }), at: 'reserved' })
  await sleep(IDLE + 50)
  const held = holdStage(svc, key, { recovery_point: 'charged' })
  await held.inside
  let ran = 0
  const completer = svc.completer({ routes: { [`POST ${p}`]: route(async () => (ran++, { recovery_point: 'charged' })) }, idleMs: IDLE })
  const result = await completer.runOnce()
  held.release()
  const k = await held.done
  assert.equal(k.recovery_point, 'charged')
  assert.equal(ran, 0)
  // PostgreSQL lists it and fails to claim it; SQLite's stage holds the write lock, which the
  // listing (a transaction of its own) waits for up to busyTimeoutMs: that pass lists nothing.
  assert.equal(result.skippedBy.locked, isPostgres ? 1 : 0, JSON.stringify(result))
  assert.equal(result.completed, 0)
})

// ---------------------------------------------------------------------------------------------

// a stage that fails twice then succeeds is completed on the third pass; backoff holds across
// completers (a forTenant copy)
test('a stage failing twice is completed on the third pass; backoff holds across completers', async () => {
  const scoped = service.forTenant('flaky')
  const p = '/flaky'
  const key = uniq('flaky')
  let calls = 0
  const flaky = route(async (tx, k) => {
    calls++
    await tx.query('INSERT INTO completer_side (idem_key, stage, pid) VALUES ($1, $2, $3)', [k.idempotency_key, 'reserved', process.pid])
    if (calls <= 2) throw Object.assign(new Error(`card network timeout ${calls}`), { code: 'UPSTREAM_TIMEOUT' })
    return { response_code: 201, response_body: { ok: true } }
  })
  await abandon(scoped, key, { path: p, params: { n: 1 }, stages: flaky({}, { idempotency_key: key }), at: 'reserved' })
  calls = 0
  const options = { routes: { [`POST ${p}`]: flaky }, idleMs: IDLE, backoffMs: 400 }
  const c1 = scoped.completer(options)
  assert.equal(c1.tenant, 'flaky')
  assert.equal(c1.backoff(1), 400)
  assert.equal(c1.backoff(2), 800)
  await sleep(IDLE + 50)

  const fails = []
  const completes = []
  const onFail = (e) => fails.push(e)
  const onComplete = (e) => completes.push(e)
  channels.completerFail.subscribe(onFail)
  channels.completerComplete.subscribe(onComplete)
  try {
    const r1 = await c1.runOnce()
    const t1 = Date.now()
    assert.deepEqual([r1.completed, r1.failed], [0, 1])
    assert.equal(fails[0].attempt, 1)
    assert.equal(fails[0].code, 'UPSTREAM_TIMEOUT')
    assert.equal(fails[0].tenant, 'flaky')
    assert.equal(fails[0].key, key)
    assert.equal(fails[0].recoveryPoint, 'reserved')
    assert.ok(fails[0].nextAttemptAt instanceof Date)
    let a = await attemptsRow(`flaky/${key}`)
    assert.equal(Number(a.attempts), 1)
    assert.equal(a.last_error, 'card network timeout 1')
    assert.equal(a.last_error_code, 'UPSTREAM_TIMEOUT')
    assert.equal(a.gave_up_at, null)

    // Idle again, but backing off: this completer remembers, a new one (a restart, another
    // process) reads it from the table.
    await sleep(Math.max(0, t1 + IDLE + 80 - Date.now()))
    const r2 = await c1.runOnce()
    assert.equal(r2.skippedBy.backoff, 1, JSON.stringify(r2))
    const fresh = (await fx.connect({ lockTimeoutMs: LEASE })).forTenant('flaky').completer(options)
    const r2b = await fresh.runOnce()
    assert.equal(r2b.skippedBy.backoff, 1, JSON.stringify(r2b))
    assert.equal(calls, 1)

    await sleep(Math.max(0, t1 + 400 + IDLE + 50 - Date.now()))
    const r3 = await fresh.runOnce()
    assert.deepEqual([r3.completed, r3.failed], [0, 1], JSON.stringify(r3))
    assert.equal(fails[1].attempt, 2)
    a = await attemptsRow(`flaky/${key}`)
    assert.equal(Number(a.attempts), 2)

    await sleep(800 + IDLE + 50)
    const r4 = await c1.runOnce()
    assert.deepEqual([r4.completed, r4.failed], [1, 0], JSON.stringify(r4))
  } finally {
    channels.completerFail.unsubscribe(onFail)
    channels.completerComplete.unsubscribe(onComplete)
  }
  assert.equal(calls, 3)
  assert.equal(completes.length, 1)
  assert.equal(completes[0].attempt, 3)
  assert.equal(completes[0].from, 'reserved')
  assert.equal(completes[0].responseCode, 201)
  const r = await row(`flaky/${key}`)
  assert.equal(r.recovery_point, 'finished')
  assert.equal(stageCount(await sideRows(key), 'reserved'), 1, 'the two failed attempts wrote nothing')
  assert.equal(Number((await attemptsRow(`flaky/${key}`)).attempts), 3)
})

test('a stage that always fails stops after maxAttempts, its writes rolled back each time; the count survives a restart', async () => {
  const p = '/doomed'
  const key = uniq('doomed')
  let calls = 0
  const doomed = route(async (tx, k) => {
    calls++
    await tx.query('INSERT INTO completer_side (idem_key, stage, pid) VALUES ($1, $2, $3)', [k.idempotency_key, 'doomed', process.pid])
    throw new Error('the warehouse is on fire')
  })
  await abandon(service, key, { path: p, params: { n: 2 }, stages: doomed({}, { idempotency_key: key }), at: 'reserved' })
  const options = { routes: { [`POST ${p}`]: doomed }, idleMs: IDLE, maxAttempts: 3, backoffMs: 0 }
  const completer = service.completer(options)
  const giveUps = await collect(channels.completerGiveUp, async () => {
    const fails = await collect(channels.completerFail, async () => {
      for (let i = 0; i < 3; i++) {
        await sleep(IDLE + 50)
        const r = await completer.runOnce()
        assert.deepEqual([r.completed, r.failed], [0, 1], `pass ${i + 1}: ${JSON.stringify(r)}`)
      }
    })
    assert.deepEqual(fails.map((f) => [f.attempt, f.gaveUp]), [[1, false], [2, false], [3, true]])
    await sleep(IDLE + 50)
    const r4 = await completer.runOnce()
    assert.equal(r4.skippedBy.gaveUp, 1, JSON.stringify(r4))
  })
  assert.equal(calls, 3)
  assert.equal(giveUps.length, 1)
  assert.equal(giveUps[0].attempts, 3)
  assert.equal(giveUps[0].key, key)
  assert.equal(giveUps[0].error.message, 'the warehouse is on fire')
  assert.equal(stageCount(await sideRows(key), 'doomed'), 0, 'every attempt rolled back')
  const k = await row(key)
  assert.equal(k.recovery_point, 'reserved', 'left where it was, for an operator')
  const a = await attemptsRow(key)
  assert.equal(Number(a.attempts), 3)
  assert.notEqual(a.gave_up_at, null)
  assert.equal(a.last_error, 'the warehouse is on fire')

  // A restart: a new connection and a new completer know from the table.
  const restarted = (await fx.connect({ lockTimeoutMs: LEASE })).completer(options)
  const again = await collect(channels.completerGiveUp, async () => {
    await sleep(IDLE + 50)
    const r = await restarted.runOnce()
    assert.equal(r.skippedBy.gaveUp, 1, JSON.stringify(r))
  })
  assert.equal(again.length, 0, 'gave up once, reported once')
  assert.equal(calls, 3)

  // An operator resets it: the next completer tries again.
  await db.query('DELETE FROM idempotency_key_completer WHERE idempotency_key = $1', [key])
  await sleep(IDLE + 50)
  const r = await (await fx.connect({ lockTimeoutMs: LEASE })).completer(options).runOnce()
  assert.equal(r.failed, 1)
  assert.equal(calls, 4)
})

// an attempt that ends with its process counts: a completer SIGKILLed inside a stage leaves
// attempts = 1, the next one makes attempt 2
test('a completer SIGKILLed inside a stage still counts its attempt', async () => {
  const key = uniq('hang')
  await abandon(service, key, { path: '/hang', params: { n: 3 }, stages: { started: async () => ({ recovery_point: 'reserved' }) }, at: 'reserved' })
  await sleep(Math.max(IDLE_MS, LOCK_TIMEOUT_MS) + 100)
  const c = child('hang', fx.url)
  await c.line(new RegExp(`^inside ${key}$`))
  c.p.kill('SIGKILL')
  await c.exited
  await noOpenTransactions()
  assert.equal(Number((await attemptsRow(key)).attempts), 1)
  assert.equal((await row(key)).recovery_point, 'reserved')
  await sleep(Math.max(IDLE_MS, LOCK_TIMEOUT_MS) + 100)
  const completes = await collect(channels.completerComplete, async () => {
    const r = await service.completer({ routes: { 'POST /hang': route(async () => ({ response_code: 200 })) }, idleMs: IDLE_MS, backoffMs: 0 }).runOnce()
    assert.equal(r.completed, 1, JSON.stringify(r))
  })
  assert.deepEqual(completes.map((e) => [e.key, e.attempt]), [[key, 2]])
})

// ---------------------------------------------------------------------------------------------

test('a scoped completer completes only its tenant\'s keys; :name path segments reach the route', async () => {
  const p = (id) => `/store/carts/${id}/complete`
  const key = uniq('same')
  const seen = []
  const cart = (params, k, match) => {
    seen.push(match)
    return checkout(params, k)
  }
  for (const tenant of ['ta', 'tb']) {
    const scoped = service.forTenant(tenant)
    await abandon(scoped, key, { path: p(`cart_${tenant}`), route: 'POST /store/carts/:id/complete', pathParams: { id: `cart_${tenant}` }, params: { cart: tenant }, stages: checkout({ cart: tenant }, { idempotency_key: key }), at: 'reserved' })
  }
  await sleep(IDLE + 50)
  const r = await service.forTenant('ta').completer({ routes: { 'POST /store/carts/:id/complete': cart }, idleMs: IDLE }).runOnce()
  assert.equal(r.completed, 1)
  assert.deepEqual(seen, [{ route: 'POST /store/carts/:id/complete', pathParams: { id: 'cart_ta' } }])
  assert.equal((await row(`ta/${key}`)).recovery_point, 'finished')
  assert.equal((await row(`tb/${key}`)).recovery_point, 'reserved')
  assert.equal(await attemptsRow(`tb/${key}`), undefined)
})

// ---------------------------------------------------------------------------------------------

test('start(): a pass at once and every intervalMs; stop() resolves after the running pass, and no pass follows', async () => {
  const p = '/started'
  let release
  const gate = new Promise((r) => (release = r))
  let entered
  const inside = new Promise((r) => (entered = r))
  const slow = route(async () => {
    entered()
    await gate
    return { response_code: 200, response_body: { slow: true } }
  })
  const key = uniq('started')
  await abandon(service, key, { path: p, params: {}, stages: slow({}, {}), at: 'reserved' })
  await sleep(IDLE + 50)
  const completer = service.completer({ routes: { [`POST ${p}`]: slow }, idleMs: IDLE, intervalMs: 50 })
  const passes = []
  const onPass = (e) => passes.push(e)
  channels.completerPass.subscribe(onPass)
  try {
    assert.equal(completer.start(), completer)
    assert.equal(completer.start(), completer, 'a second start() is a no-op')
    await inside
    assert.equal(completer.running, true)
    assert.equal(completer.runOnce(), completer.runOnce(), 'runOnce() during a pass is that pass')
    let stopped = false
    const stopping = completer.stop().then(() => (stopped = true))
    await sleep(200)
    assert.equal(stopped, false, 'stop() waits for the running pass')
    release()
    await stopping
    assert.equal(completer.running, false)
    assert.equal(passes.length, 1)
    assert.equal(passes[0].completed, 1)
    assert.equal((await row(key)).recovery_point, 'finished')
    await sleep(300)
    assert.equal(passes.length, 1, 'no pass after stop()')

    // Started again, it passes every intervalMs.
    completer.start()
    await sleep(400)
    await completer.stop()
    assert.ok(passes.length >= 4, `passes every 50 ms: ${passes.length}`) // 1 + at least 3 in 400 ms
    const n = passes.length
    await sleep(200)
    assert.equal(passes.length, n)
  } finally {
    channels.completerPass.unsubscribe(onPass)
    await completer.stop()
  }
})

test('the process can exit while a completer is started (its timer is unref\'d)', async () => {
  const started = Date.now()
  const c = child('idle', fx.url)
  await c.line(/^pass /)
  const { code } = await c.exited
  assert.equal(code, 0)
  assert.ok(c.lines.includes('exit'))
  assert.ok(Date.now() - started < 30_000, 'it did not wait for the next pass (60 s)')
})

// ---------------------------------------------------------------------------------------------

test('options are checked; a bound copy is refused; a missing table says to migrate', async () => {
  const bad = [
    undefined,
    {},
    { routes: {} },
    { routes: { '/checkout': checkout } },
    { routes: { 'POST checkout': checkout } },
    { routes: { 'POST /checkout': 'nope' } },
    { routes: { 'POST /checkout': checkout }, idleMs: 0 },
    { routes: { 'POST /checkout': checkout }, limit: 1.5 },
    { routes: { 'POST /checkout': checkout }, maxAttempts: 0 },
    { routes: { 'POST /checkout': checkout }, backoffMs: -1 },
    { routes: { 'POST /checkout': checkout }, intervalMs: Infinity },
    { routes: { 'POST /checkout': checkout }, onError: 1 },
  ]
  for (const options of bad) {
    assert.throws(() => service.completer(options), (e) => e.type === 'invalid_data' && e.code === 'INVALID_ARGUMENT', JSON.stringify(options))
  }
  if (isPostgres) {
    // (SQLite has no executor-bound copies.)
    const bound = service.withTransaction({ query: async () => [] })
    assert.throws(() => bound.completer({ routes: { 'POST /checkout': checkout } }), (e) => e.code === 'INVALID_ARGUMENT')
  }

  const svc = await fx.connect({ lockTimeoutMs: LEASE })
  const key = uniq('nomigrate')
  await abandon(svc, key, { path: '/nomigrate', params: {}, stages: checkout({}, { idempotency_key: key }), at: 'reserved' })
  await sleep(IDLE + 50)
  await db.exec('ALTER TABLE idempotency_key_completer RENAME TO idempotency_key_completer_away')
  try {
    const c = svc.completer({ routes: { 'POST /nomigrate': checkout }, idleMs: IDLE })
    const passes = await collect(channels.completerPass, async () => {
      const err = await rejects(c.runOnce())
      assert.match(err.message, /run service\.migrate\(\)/)
      assert.equal(err.type, 'database_error')
    })
    assert.equal(passes.length, 1)
    assert.match(passes[0].error.message, /migrate/)
    assert.equal((await row(key)).recovery_point, 'reserved', 'no stage ran')
  } finally {
    await db.exec('ALTER TABLE idempotency_key_completer_away RENAME TO idempotency_key_completer')
  }
})

test('migrate() creates the completer\'s table once (twice is a no-op) and leaves Medusa\'s table alone', async () => {
  await service.migrate()
  await service.migrate()
  const cols = isPostgres
    ? (await db.query("SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'idempotency_key_completer' ORDER BY ordinal_position")).map((c) => c.name)
    : (await db.query("SELECT name FROM pragma_table_info('idempotency_key_completer') ORDER BY cid")).map((c) => c.name)
  assert.deepEqual(cols, ['key_id', 'idempotency_key', 'attempts', 'last_attempt_at', 'next_attempt_at', 'last_error_code', 'last_error', 'gave_up_at'])
})

test('attempt rows of finished or deleted keys are swept a day after their last attempt', async () => {
  const p = '/swept'
  const done = uniq('swept-done')
  await abandon(service, done, { path: p, params: {}, stages: checkout({}, { idempotency_key: done }), at: 'reserved' })
  await sleep(IDLE + 50)
  const completer = service.completer({ routes: { [`POST ${p}`]: checkout }, idleMs: IDLE })
  assert.equal((await completer.runOnce()).completed, 1)
  assert.ok(await attemptsRow(done), 'kept for a day')
  // An orphan (its key reaped) and the finished key's row, both two days old.
  await db.query("INSERT INTO idempotency_key_completer (key_id, idempotency_key, attempts, last_attempt_at) VALUES ('ikey_gone', 'gone', 2, $1)", [new Date(Date.now() - 48 * 3600_000).toISOString()])
  await db.query('UPDATE idempotency_key_completer SET last_attempt_at = $1 WHERE idempotency_key = $2', [new Date(Date.now() - 48 * 3600_000).toISOString(), done])
  const next = uniq('swept-next')
  await abandon(service, next, { path: p, params: {}, stages: checkout({}, { idempotency_key: next }), at: 'reserved' })
  await sleep(IDLE + 50)
  assert.equal((await completer.runOnce()).completed, 1)
  assert.equal(await attemptsRow(done), undefined)
  assert.equal(await attemptsRow('gone'), undefined)
  assert.ok(await attemptsRow(next))
})
