// Concurrency contract of the request lease, the stage row lock, stale stages, lock() and
// serialization retries (SPEC §3, §4, §6, §7), on the backend IDEM_BACKEND selects. Every count
// is taken through the independent verification client (node-postgres / better-sqlite3), every
// error is checked by `type` and `code`.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { useFreshDb, holdStage, rejects, sleep, pick, isPostgres, decodeKeyRow, slowSql } = require('./helpers')
const { assertErr } = require('../test-support/errors')
const { uniq } = require('../test-support/keys')

const N = 16
const METHOD = 'POST'
const PATH = '/store/carts/cart_01/complete'
const PARAMS = { cart_id: 'cart_01' }

let fx // the fresh database: service, connect(), cleanup()
let db // its verification client

useFreshDb((f) => {
  fx = f
  db = fx.db
})

async function rowsFor(key) {
  const rows = await db.query(
    'SELECT idempotency_key, recovery_point, locked_at, response_code, response_body FROM idempotency_key WHERE idempotency_key = $1',
    [key],
  )
  return rows.map(decodeKeyRow)
}

async function oneRow(key) {
  const rows = await rowsFor(key)
  assert.equal(rows.length, 1, `expected exactly one row for ${key}`)
  return rows[0]
}

async function totalRows() {
  const [r] = await db.query('SELECT CAST(count(*) AS integer) AS n FROM idempotency_key')
  return r.n
}

/**
 * Every IDEMPOTENCY_KEY_LOCKED carries `retryAfter`: whole seconds until the holder's lease can
 * expire, at least 1 and at most the lease (every service here leases for 1000 ms or less), so
 * every assertErr() here is given LEASED: retryAfter 1.
 */
const LEASED = { retryAfter: 1 }

async function makeSide(name) {
  await db.exec(`CREATE TABLE ${name} (k text, stage text)`)
}

async function sideCount(name, where = '', params = []) {
  const [r] = await db.query(`SELECT CAST(count(*) AS integer) AS n FROM ${name} ${where}`, params)
  return r.n
}

test('1. concurrent initializeRequest with one new key: one row, one winner, 15 LOCKED; then 16 replays', async () => {
  const key = uniq('init-race')
  const results = await Promise.allSettled(
    Array.from({ length: N }, () => fx.service.initializeRequest(key, METHOD, PARAMS, PATH)),
  )
  const ok = results.filter((r) => r.status === 'fulfilled')
  const bad = results.filter((r) => r.status === 'rejected')
  assert.equal(ok.length, 1, `exactly one caller gets the key: ${bad.map((r) => r.reason && r.reason.code).join(',')}`)
  assert.equal(bad.length, N - 1)
  for (const r of bad) assertErr(r.reason, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
  assert.equal(ok[0].value.idempotency_key, key)
  assert.equal(ok[0].value.recovery_point, 'started')
  assert.ok(ok[0].value.locked_at instanceof Date, 'the winner holds the lease')

  const row = await oneRow(key)
  assert.equal(row.recovery_point, 'started')
  assert.ok(row.locked_at instanceof Date)

  // Finish the key.
  const body = { cart: { id: 'cart_01', total: 4200 }, items: [1, 2, 3] }
  const finished = await fx.service.workStage(key, async () => ({ response_code: 201, response_body: body }), {
    recoveryPoint: 'started',
  })
  assert.equal(finished.recovery_point, 'finished')
  const frow = await oneRow(key)
  assert.equal(frow.recovery_point, 'finished')
  assert.equal(frow.response_code, 201)
  assert.deepEqual(frow.response_body, body)
  assert.equal(frow.locked_at, null, 'finishing clears the lease')

  // Replay: everyone gets the stored response.
  const replays = await Promise.allSettled(
    Array.from({ length: N }, () => fx.service.initializeRequest(key, METHOD, PARAMS, PATH)),
  )
  for (const r of replays) {
    assert.equal(r.status, 'fulfilled', r.status === 'rejected' ? `${r.reason.type}/${r.reason.code}` : '')
    assert.equal(r.value.idempotency_key, key)
    assert.equal(r.value.recovery_point, 'finished')
    assert.equal(r.value.response_code, 201)
    assert.deepEqual(r.value.response_body, body)
  }
  assert.equal((await rowsFor(key)).length, 1)
})

test('2. lease expiry: a crashed request blocks until lockTimeoutMs, then a retry resumes', async () => {
  const s = await fx.connect({ lockTimeoutMs: 300 })
  await makeSide('side2')
  const key = uniq('lease-expiry')

  // Request A: claims, does one stage, then "crashes".
  const a = await s.initializeRequest(key, METHOD, PARAMS, PATH)
  assert.equal(a.recovery_point, 'started')
  await s.workStage(
    key,
    async (tx) => {
      await tx.query('INSERT INTO side2 (k, stage) VALUES ($1, $2)', [key, 'tax'])
      return { recovery_point: 'tax_lines_created' }
    },
    { recoveryPoint: 'started' },
  )

  // Request B, immediately: refused.
  const e = await rejects(s.initializeRequest(key, METHOD, PARAMS, PATH))
  assertErr(e, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)

  await sleep(400)

  // Request B after the lease expired: resumes from the committed recovery point.
  const b = await s.initializeRequest(key, METHOD, PARAMS, PATH)
  assert.equal(b.recovery_point, 'tax_lines_created')
  assert.ok(b.locked_at instanceof Date, 'B now holds the lease')

  // B holds it: a third request is refused.
  const e3 = await rejects(s.initializeRequest(key, METHOD, PARAMS, PATH))
  assertErr(e3, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)

  let taxRuns = 0
  const afterPay = await s.workStage(
    key,
    async (tx) => {
      await tx.query('INSERT INTO side2 (k, stage) VALUES ($1, $2)', [key, 'payment'])
      return { recovery_point: 'payment_authorized' }
    },
    { recoveryPoint: b.recovery_point },
  )
  assert.equal(afterPay.recovery_point, 'payment_authorized')
  // A stale replay of the first stage is refused.
  const stale = await rejects(
    s.workStage(
      key,
      async () => {
        taxRuns++
        return { recovery_point: 'tax_lines_created' }
      },
      { recoveryPoint: 'started' },
    ),
  )
  assertErr(stale, 'conflict', 'IDEMPOTENCY_KEY_STALE', LEASED)
  assert.equal(taxRuns, 0)
  const done = await s.workStage(key, async () => ({ response_code: 200, response_body: { ok: true } }), {
    recoveryPoint: 'payment_authorized',
  })
  assert.equal(done.recovery_point, 'finished')

  const row = await oneRow(key)
  assert.equal(row.recovery_point, 'finished')
  assert.equal(row.response_code, 200)
  assert.equal(await sideCount('side2', 'WHERE k = $1', [key]), 2)
  assert.equal(await sideCount('side2', "WHERE k = $1 AND stage = 'tax'", [key]), 1)
  assert.equal(await sideCount('side2', "WHERE k = $1 AND stage = 'payment'", [key]), 1)
})

test('3. 16 concurrent workStage with recoveryPoint, 20 rounds: exactly one stage body per round', async () => {
  await makeSide('side3')
  const key = uniq('stage-race-rp')
  const created = await fx.service.create({
    idempotency_key: key,
    request_method: METHOD,
    request_path: PATH,
    request_params: PARAMS,
    recovery_point: 'rp_0',
  })
  assert.equal(created.recovery_point, 'rp_0')

  const ROUNDS = 20
  let invocations = 0
  const codes = { IDEMPOTENCY_KEY_LOCKED: 0, IDEMPOTENCY_KEY_STALE: 0 }
  for (let i = 1; i <= ROUNDS; i++) {
    const ran = new Array(N).fill(0)
    const results = await Promise.allSettled(
      Array.from({ length: N }, (_, c) =>
        fx.service.workStage(
          key,
          async (tx) => {
            ran[c]++
            invocations++
            await tx.query('INSERT INTO side3 (k, stage) VALUES ($1, $2)', [key, 'rp_' + i])
            return { recovery_point: 'rp_' + i }
          },
          { recoveryPoint: 'rp_' + (i - 1) },
        ),
      ),
    )
    const winners = results.map((r, c) => [r, c]).filter(([r]) => r.status === 'fulfilled')
    assert.equal(
      winners.length,
      1,
      `round ${i}: ${results.map((r) => (r.status === 'fulfilled' ? 'ok' : r.reason.code)).join(',')}`,
    )
    assert.equal(winners[0][0].value.recovery_point, 'rp_' + i)
    assert.equal(
      ran.reduce((a, b) => a + b, 0),
      1,
      `round ${i}: exactly one callback ran (runs per caller: ${ran.join(',')})`,
    )
    results.forEach((r, c) => {
      if (r.status === 'rejected') {
        assertErr(r.reason, 'conflict', ['IDEMPOTENCY_KEY_LOCKED', 'IDEMPOTENCY_KEY_STALE'], LEASED)
        codes[r.reason.code]++
        assert.equal(ran[c], 0, `round ${i}: refused caller ${c} ran its callback`)
      }
    })
    assert.equal((await oneRow(key)).recovery_point, 'rp_' + i)
  }

  assert.equal(invocations, ROUNDS)
  assert.equal(await sideCount('side3'), ROUNDS)
  const rows = await db.query('SELECT stage, CAST(count(*) AS integer) AS n FROM side3 GROUP BY stage ORDER BY stage')
  assert.equal(rows.length, ROUNDS)
  for (const r of rows) assert.equal(r.n, 1, `stage ${r.stage} committed ${r.n} times`)
  assert.equal(codes.IDEMPOTENCY_KEY_LOCKED + codes.IDEMPOTENCY_KEY_STALE, ROUNDS * (N - 1))
  assert.equal((await oneRow(key)).recovery_point, 'rp_' + ROUNDS)
})

test('4. 16 concurrent workStage without recoveryPoint: stage bodies never overlap', async () => {
  await makeSide('side4')
  const key = uniq('stage-race')
  await fx.service.create({ idempotency_key: key, request_method: METHOD, request_path: PATH, recovery_point: 'x' })

  const ROUNDS = 5
  let active = 0
  let maxActive = 0
  let totalRuns = 0
  let totalOk = 0
  let totalRejected = 0
  for (let round = 0; round < ROUNDS; round++) {
    const ran = new Array(N).fill(0)
    const results = await Promise.allSettled(
      Array.from({ length: N }, (_, c) =>
        fx.service.workStage(key, async (tx) => {
          ran[c]++
          totalRuns++
          active++
          maxActive = Math.max(maxActive, active)
          try {
            await tx.query('INSERT INTO side4 (k, stage) VALUES ($1, $2)', [key, `r${round}c${c}`])
            await tx.query(slowSql(0.02))
            return { recovery_point: `r${round}c${c}` }
          } finally {
            active--
          }
        }),
      ),
    )
    results.forEach((r, c) => {
      if (r.status === 'fulfilled') {
        totalOk++
        assert.equal(r.value.recovery_point, `r${round}c${c}`)
      } else {
        totalRejected++
        assertErr(r.reason, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
        assert.equal(ran[c], 0, `round ${round}: refused caller ${c} ran its callback`)
      }
    })
  }
  assert.equal(maxActive, 1, 'two stage bodies on one key ran at the same time')
  assert.ok(totalOk >= ROUNDS, 'at least one stage per round succeeds')
  assert.ok(totalRejected >= 1, 'some concurrent stage must have been refused (the race did not happen)')
  assert.equal(totalOk + totalRejected, ROUNDS * N)
  assert.equal(totalRuns, totalOk, 'every callback run belongs to a stage that committed')
  assert.equal(await sideCount('side4'), totalOk)
})

test('5. stale stage: B reading an old recovery point is refused; A keeps the lease through its stage commit', async () => {
  const s = await fx.connect({ lockTimeoutMs: 600 })
  await makeSide('side5')
  const key = uniq('stale')

  const a0 = await s.initializeRequest(key, METHOD, PARAMS, PATH)
  const lockedAtInit = (await oneRow(key)).locked_at
  assert.ok(lockedAtInit instanceof Date)
  await s.workStage(
    key,
    async (tx) => {
      await tx.query('INSERT INTO side5 (k, stage) VALUES ($1, $2)', [key, 'tax'])
      return { recovery_point: 'tax_lines_created' }
    },
    { recoveryPoint: a0.recovery_point },
  )

  // B read the key now, at tax_lines_created.
  const bRead = await s.retrieve(key)
  assert.equal(bRead.recovery_point, 'tax_lines_created')

  await sleep(400)
  // A advances it (this commit refreshes locked_at).
  const a2 = await s.workStage(
    key,
    async (tx) => {
      await tx.query('INSERT INTO side5 (k, stage) VALUES ($1, $2)', [key, 'payment'])
      return { recovery_point: 'payment_authorized' }
    },
    { recoveryPoint: 'tax_lines_created' },
  )
  assert.equal(a2.recovery_point, 'payment_authorized')
  const lockedAtStage = (await oneRow(key)).locked_at
  assert.ok(lockedAtStage instanceof Date)
  assert.ok(lockedAtStage.getTime() >= lockedAtInit.getTime() + 300, 'the stage commit refreshed locked_at')

  // B's stale stage is refused before its callback runs.
  let bRuns = 0
  const e = await rejects(
    s.workStage(
      key,
      async (tx) => {
        bRuns++
        await tx.query('INSERT INTO side5 (k, stage) VALUES ($1, $2)', [key, 'tax-again'])
        return { recovery_point: 'payment_authorized' }
      },
      { recoveryPoint: bRead.recovery_point },
    ),
  )
  assertErr(e, 'conflict', 'IDEMPOTENCY_KEY_STALE', LEASED)
  assert.equal(bRuns, 0)

  // 400 + ~400 ms after A's initializeRequest (> 600 ms), but < 600 ms after A's last stage:
  // the lease holds only because the stage refreshed it.
  await sleep(250)
  const e2 = await rejects(s.initializeRequest(key, METHOD, PARAMS, PATH))
  assertErr(e2, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)

  const row = await oneRow(key)
  assert.equal(row.recovery_point, 'payment_authorized')
  assert.equal(await sideCount('side5', 'WHERE k = $1', [key]), 2)
  assert.equal(await sideCount('side5', "WHERE k = $1 AND stage = 'tax-again'", [key]), 0)
})

test('6. a throwing stage releases the lease; a refused stage does not', async () => {
  await makeSide('side6')
  // (a) throwing stage
  const key = uniq('throw-release')
  await fx.service.initializeRequest(key, METHOD, PARAMS, PATH)
  await fx.service.workStage(key, async () => ({ recovery_point: 'tax_lines_created' }), { recoveryPoint: 'started' })
  // Still leased by request A.
  assertErr(await rejects(fx.service.initializeRequest(key, METHOD, PARAMS, PATH)), 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)

  const boom = Object.assign(new Error('payment provider down'), { code: 'PROVIDER_DOWN', type: 'unexpected_state' })
  const thrown = await rejects(
    fx.service.workStage(
      key,
      async (tx) => {
        await tx.query('INSERT INTO side6 (k, stage) VALUES ($1, $2)', [key, 'payment'])
        throw boom
      },
      { recoveryPoint: 'tax_lines_created' },
    ),
  )
  assert.equal(thrown, boom)
  assert.equal(thrown.code, 'PROVIDER_DOWN')
  assert.equal(thrown.type, 'unexpected_state')
  assert.equal(await sideCount('side6', 'WHERE k = $1', [key]), 0)

  // Another request retries immediately: the lease was released, the recovery point unchanged.
  const b = await fx.service.initializeRequest(key, METHOD, PARAMS, PATH)
  assert.equal(b.recovery_point, 'tax_lines_created')
  const row = await oneRow(key)
  assert.equal(row.recovery_point, 'tax_lines_created')
  assert.ok(row.locked_at instanceof Date, 'B took the lease')

  // (b) a stage refused before its callback (stale) leaves the lease alone
  const key2 = uniq('stale-keeps-lease')
  await fx.service.initializeRequest(key2, METHOD, PARAMS, PATH)
  let runs = 0
  const stale = await rejects(
    fx.service.workStage(
      key2,
      async () => {
        runs++
        return { recovery_point: 'x' }
      },
      { recoveryPoint: 'tax_lines_created' },
    ),
  )
  assertErr(stale, 'conflict', 'IDEMPOTENCY_KEY_STALE', LEASED)
  assert.equal(runs, 0)
  assert.ok((await oneRow(key2)).locked_at instanceof Date, 'lease still set after a refused stage')
  assertErr(await rejects(fx.service.initializeRequest(key2, METHOD, PARAMS, PATH)), 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
  assert.equal((await oneRow(key2)).recovery_point, 'started')

  // (c) a stage refused on the row lock leaves the lease alone too
  const key3 = uniq('rowlock-keeps-lease')
  await fx.service.initializeRequest(key3, METHOD, PARAMS, PATH)
  let release
  const gate = new Promise((r) => (release = r))
  let entered
  const inside = new Promise((r) => (entered = r))
  const holder = fx.service.workStage(
    key3,
    async () => {
      entered()
      await gate
      return { recovery_point: 'tax_lines_created' }
    },
    { recoveryPoint: 'started' },
  )
  await inside
  let runs3 = 0
  const locked = await rejects(
    fx.service.workStage(key3, async () => {
      runs3++
      return { recovery_point: 'y' }
    }),
  )
  assertErr(locked, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
  assert.equal(runs3, 0)
  release()
  assert.equal((await holder).recovery_point, 'tax_lines_created')
  assertErr(await rejects(fx.service.initializeRequest(key3, METHOD, PARAMS, PATH)), 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
})

test('7. lock(): one of 16 wins, the window expires, a missing key is not_found', async () => {
  const key = uniq('lock')
  await fx.service.create({ idempotency_key: key, request_method: METHOD, request_path: PATH })
  assert.equal((await oneRow(key)).locked_at, null)

  const results = await Promise.allSettled(Array.from({ length: N }, () => fx.service.lock(key)))
  const ok = results.filter((r) => r.status === 'fulfilled')
  const bad = results.filter((r) => r.status === 'rejected')
  assert.equal(ok.length, 1, `exactly one lock wins: ${bad.map((r) => r.reason.code).join(',')}`)
  for (const r of bad) assertErr(r.reason, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
  assert.ok(ok[0].value.locked_at instanceof Date)
  const row = await oneRow(key)
  assert.ok(row.locked_at instanceof Date)
  assert.equal(row.locked_at.getTime(), ok[0].value.locked_at.getTime())

  const s = await fx.connect({ lockTimeoutMs: 300 })
  assertErr(await rejects(s.lock(key)), 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
  await sleep(400)
  const again = await s.lock(key)
  assert.ok(again.locked_at instanceof Date)
  assert.ok(again.locked_at.getTime() > row.locked_at.getTime(), 'locked_at moved forward')
  assert.equal((await oneRow(key)).locked_at.getTime(), again.locked_at.getTime())
  assertErr(await rejects(s.lock(key)), 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)

  const missing = uniq('lock-missing')
  assertErr(await rejects(fx.service.lock(missing)), 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND', LEASED)
  assert.equal((await rowsFor(missing)).length, 0)
})

// 8. serialization failures re-run the whole stage maxRetries times, then fail with 40001 (postgres
// only: SQLite has one writer and no serialization failures; on SQLite a failing statement runs the
// stage once whatever maxRetries, and writer contention fails with DATABASE_BUSY before the
// callback)
test('8. serialization failures re-run the whole stage maxRetries times, then fail with 40001', async () => {
  await makeSide('side8')
  // What makes a statement of the stage fail, and what the stage reports once it gives up:
  // PostgreSQL raises a serialization failure, which re-runs the whole stage maxRetries times;
  // SQLite cannot produce one, so the nearest failure (no such table) must not be retried.
  const FAIL = pick({
    postgres: "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure'; END $$",
    sqlite: 'SELECT * FROM no_such_table_8',
  })
  const expected = pick({
    postgres: { type: 'conflict', code: '40001', runs: (maxRetries) => maxRetries + 1 },
    sqlite: { type: 'database_error', code: 'SQLITE_1', runs: () => 1 },
  })

  async function run(service, key, catchIt) {
    let runs = 0
    const e = await rejects(
      service.workStage(
        key,
        async (tx) => {
          runs++
          await tx.query('INSERT INTO side8 (k, stage) VALUES ($1, $2)', [key, 'attempt'])
          try {
            await tx.query(FAIL)
          } catch (err) {
            if (!catchIt) throw err
          }
          return { recovery_point: 'payment_authorized' }
        },
        { recoveryPoint: 'tax_lines_created' },
      ),
    )
    return { e, runs }
  }

  const s1 = await fx.connect({ maxRetries: 1 })
  for (const [label, service, maxRetries, catchIt] of [
    // maxRetries: 1 → two runs on PostgreSQL
    ['retry1', s1, 1, false],
    // default (3 retries) → four runs on PostgreSQL
    ['retry3', fx.service, 3, false],
    // the callback catches the failure and returns normally: still fails after the retries
    ['retry-caught', fx.service, 3, true],
    // and with maxRetries: 1 the caught variant runs twice on PostgreSQL
    ['retry-caught1', s1, 1, true],
  ]) {
    const key = uniq(label)
    await fx.service.create({ idempotency_key: key, recovery_point: 'tax_lines_created' })
    const r = await run(service, key, catchIt)
    assertErr(r.e, expected.type, expected.code, LEASED)
    assert.equal(r.runs, expected.runs(maxRetries), `${label}: callback runs`)
    assert.equal((await oneRow(key)).recovery_point, 'tax_lines_created', `${label}: recovery point unchanged`)
    assert.equal(await sideCount('side8', 'WHERE k = $1', [key]), 0, `${label}: nothing committed`)
  }

  if (isPostgres) return
  // SQLite's contention error: a stage on ANOTHER key queues for the single write lock up to
  // busyTimeoutMs, then fails with conflict / DATABASE_BUSY before its callback runs.
  const s = await fx.connect({ busyTimeoutMs: 200 })
  const holderKey = uniq('busy-holder')
  const waiterKey = uniq('busy-waiter')
  await s.create({ idempotency_key: holderKey, recovery_point: 'tax_lines_created' })
  await s.create({ idempotency_key: waiterKey, recovery_point: 'tax_lines_created' })
  let release
  const gate = new Promise((r) => (release = r))
  let entered
  const inside = new Promise((r) => (entered = r))
  const holder = s.workStage(
    holderKey,
    async (tx) => {
      await tx.query('INSERT INTO side8 (k, stage) VALUES ($1, $2)', [holderKey, 'held'])
      entered()
      await gate
      return { recovery_point: 'payment_authorized' }
    },
    { recoveryPoint: 'tax_lines_created' },
  )
  try {
    await inside
    let waiterRuns = 0
    const t0 = Date.now()
    const busy = await rejects(
      s.workStage(
        waiterKey,
        async () => {
          waiterRuns++
          return { recovery_point: 'payment_authorized' }
        },
        { recoveryPoint: 'tax_lines_created' },
      ),
    )
    const took = Date.now() - t0
    assertErr(busy, 'conflict', 'DATABASE_BUSY', LEASED)
    assert.equal(waiterRuns, 0, 'the waiting stage never ran its callback')
    assert.ok(took >= 150, `DATABASE_BUSY after only ${took} ms (busyTimeoutMs 200)`)
    assert.ok(took < 2000, `DATABASE_BUSY after ${took} ms: busyTimeoutMs 200 not honoured`)
  } finally {
    release()
  }
  assert.equal((await holder).recovery_point, 'payment_authorized')
  assert.equal(await sideCount('side8', 'WHERE k = $1', [holderKey]), 1)
  assert.equal((await oneRow(waiterKey)).recovery_point, 'tax_lines_created')
  // Once the writer is free, the refused stage goes through.
  const later = await s.workStage(waiterKey, async () => ({ recovery_point: 'payment_authorized' }), {
    recoveryPoint: 'tax_lines_created',
  })
  assert.equal(later.recovery_point, 'payment_authorized')
})

test('9. Medusa difference: 16 concurrent calls with one unknown client key create one row carrying that key', async () => {
  const key = uniq('client-key')
  const beforeCount = await totalRows()
  const results = await Promise.allSettled(
    Array.from({ length: N }, () => fx.service.initializeRequest(key, 'POST', { cart_id: 'cart_09' }, '/store/carts/cart_09/complete')),
  )
  const afterCount = await totalRows()
  assert.equal(afterCount - beforeCount, 1, 'exactly one row was created')
  const rows = await rowsFor(key)
  assert.equal(rows.length, 1)
  assert.equal(rows[0].idempotency_key, key, 'the row carries the client key')
  const ok = results.filter((r) => r.status === 'fulfilled')
  assert.equal(ok.length, 1)
  assert.equal(ok[0].value.idempotency_key, key)
  for (const r of results.filter((x) => x.status === 'rejected')) assertErr(r.reason, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
  // No row with a random UUID appeared for this request path.
  const byPath = await db.query('SELECT idempotency_key FROM idempotency_key WHERE request_path = $1', [
    '/store/carts/cart_09/complete',
  ])
  assert.deepEqual(
    byPath.map((r) => r.idempotency_key),
    [key],
  )
})

test('10. a key another service instance of this process is working is refused at once, before the callback', async () => {
  // Two connect()s to one database (on SQLite: one file) must see each other's stages.
  const other = await fx.connect({ busyTimeoutMs: 3000 })
  const key = uniq('two-services')
  await fx.service.create({ idempotency_key: key })
  const first = holdStage(fx.service, key)
  await first.inside
  let ran = false
  const started = Date.now()
  const err = await rejects(
    other.workStage(key, async () => {
      ran = true
      return { recovery_point: 'second' }
    }),
  )
  const waited = Date.now() - started
  first.release()
  assert.equal((await first.done).recovery_point, 'held')
  assertErr(err, 'conflict', 'IDEMPOTENCY_KEY_LOCKED', LEASED)
  assert.equal(ran, false, 'the second callback never ran')
  assert.ok(waited < 1000, `refused at once, not after a busy timeout (${waited} ms)`)
})

test('retryAfter: the seconds until the holder\'s lease can expire, from its locked_at, at least 1', async () => {
  const s = await fx.connect({ lockTimeoutMs: 10_000 })
  const key = uniq('retry-after')
  await s.initializeRequest(key, METHOD, PARAMS, PATH)
  const fresh = await rejects(s.initializeRequest(key, METHOD, PARAMS, PATH))
  assert.equal(fresh.code, 'IDEMPOTENCY_KEY_LOCKED')
  assert.ok(fresh.retryAfter >= 9 && fresh.retryAfter <= 10, `retryAfter ${fresh.retryAfter}`)
  // The lease taken 6.5 s ago: 4 seconds left (3.5, rounded up).
  const { locked_at: lockedAt } = await oneRow(key)
  const aged = new Date(lockedAt.getTime() - 6_500)
  await db.query('UPDATE idempotency_key SET locked_at = $1 WHERE idempotency_key = $2', [isPostgres ? aged : aged.toISOString(), key])
  const older = await rejects(s.lock(key))
  assert.equal(older.code, 'IDEMPOTENCY_KEY_LOCKED')
  assert.ok(older.retryAfter >= 3 && older.retryAfter <= 4, `retryAfter ${older.retryAfter}`)
  // A stage holding the row: the same number on workStage's refusal.
  const holder = holdStage(s, key)
  await holder.inside
  const held = await rejects(s.workStage(key, async () => ({ recovery_point: 'never' })))
  holder.release()
  await holder.done
  assert.equal(held.code, 'IDEMPOTENCY_KEY_LOCKED')
  assert.ok(Number.isInteger(held.retryAfter) && held.retryAfter >= 1 && held.retryAfter <= 10, `retryAfter ${held.retryAfter}`)
})
