// Expiry and abandoned requests (SPEC §8): reap() deletes keys past their retention in batches
// and never a key in flight; listAbandoned() finds unfinished keys with no progress. Runs on
// the backend IDEM_BACKEND selects; rows are aged and counted through the verification client.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { ageKey, useFreshDb, holdStage, rejects, pick } = require('./helpers')
const { assertErr } = require('../test-support/errors')
const { uniq } = require('../test-support/keys')

let fx
let db
useFreshDb((f) => {
  fx = f
  db = fx.db
})

async function exists(key) {
  const rows = await db.query('SELECT 1 AS one FROM idempotency_key WHERE idempotency_key = $1', [key])
  return rows.length === 1
}

test('reap() removes keys past retention in batches and keeps fresh ones', async () => {
  const old = []
  for (let i = 0; i < 7; i++) {
    const k = uniq('old')
    await fx.service.create({ idempotency_key: k })
    await ageKey(db, k, 30)
    old.push(k)
  }
  const fresh = uniq('fresh')
  await fx.service.create({ idempotency_key: fresh })
  const removed = await fx.service.reap({ batchSize: 3 }) // default retention: 24 h
  assert.equal(removed, 7)
  for (const k of old) assert.equal(await exists(k), false)
  assert.equal(await exists(fresh), true)
  assert.equal(await fx.service.reap({ olderThanMs: 60_000 }), 0, 'nothing else is a minute old')
})

test('reap() never deletes a key a stage is working on, nor one whose request lease is fresh', async () => {
  const working = uniq('working')
  await fx.service.create({ idempotency_key: working })
  await ageKey(db, working, 48)
  const leased = uniq('leased')
  await fx.service.initializeRequest(leased, 'POST', { a: 1 }, '/p')
  await ageKey(db, leased, 48)
  await db.exec(pick({
    postgres: `UPDATE idempotency_key SET locked_at = now() WHERE idempotency_key = '${leased}'`,
    sqlite: `UPDATE idempotency_key SET locked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE idempotency_key = '${leased}'`,
  }))
  // On SQLite the stage holds the write lock: reap from a second service must queue behind it,
  // so run it concurrently and finish the stage first.
  const holder = holdStage(fx.service, working, { recovery_point: 'still_here' })
  await holder.inside
  const other = await fx.connect()
  const reaping = other.reap({ olderThanMs: 60_000 })
  const removedWhileWorking = await Promise.race([reaping, new Promise((r) => setTimeout(() => r('pending'), 300))])
  holder.release()
  const k = await holder.done
  assert.equal(k.recovery_point, 'still_here')
  const removed = removedWhileWorking === 'pending' ? await reaping : removedWhileWorking
  assert.equal(removed, 0, 'neither the worked key nor the leased key was reaped')
  assert.equal(await exists(working), true)
  assert.equal(await exists(leased), true)
})

test('reap() under concurrent stages removes nothing in flight', async () => {
  const keys = []
  for (let i = 0; i < 12; i++) {
    const k = uniq('busy')
    await fx.service.create({ idempotency_key: k })
    await ageKey(db, k, 48)
    keys.push(k)
  }
  const stages = keys.map((k) =>
    fx.service.workStage(k, async (tx) => {
      await tx.query('SELECT 1 AS one')
      return { recovery_point: 'progressed' }
    }).then(() => k, () => null),
  )
  const reaped = fx.service.reap({ olderThanMs: 60_000, batchSize: 5 })
  const done = (await Promise.all(stages)).filter(Boolean)
  await reaped
  // A stage that committed kept its key (its commit refreshed the lease), whatever reap saw.
  for (const k of done) assert.equal(await exists(k), true, `${k} survived`)
})

test('listAbandoned() lists unfinished keys without progress, least recent first; finished and progressing ones are not listed', async () => {
  const stuckOld = uniq('stuck-old')
  const stuckNew = uniq('stuck-new')
  for (const [k, hours] of [[stuckOld, 5], [stuckNew, 2]]) {
    await fx.service.initializeRequest(k, 'POST', { cart: k }, '/carts/complete')
    await fx.service.workStage(k, async () => ({ recovery_point: 'tax_lines_created' }))
    await ageKey(db, k, hours) // a crashed request: its last stage commit was hours ago
  }
  const done = uniq('done')
  await fx.service.initializeRequest(done, 'POST', null, '/carts/complete')
  await fx.service.workStage(done, async () => ({ response_code: 200, response_body: {} }))
  await ageKey(db, done, 5)
  const busy = uniq('busy')
  await fx.service.initializeRequest(busy, 'POST', null, '/carts/complete')
  await ageKey(db, busy, 5)
  await fx.service.workStage(busy, async () => ({ recovery_point: 'payment_authorized' })) // progress just now

  const listed = await fx.service.listAbandoned({ idleMs: 60 * 60 * 1000, limit: 50 })
  const ours = listed.map((k) => k.idempotency_key).filter((k) => [stuckOld, stuckNew, done, busy].includes(k))
  assert.deepEqual(ours, [stuckOld, stuckNew])
  const first = listed.find((k) => k.idempotency_key === stuckOld)
  assert.equal(first.recovery_point, 'tax_lines_created')
  assert.ok(first.created_at instanceof Date)
  assert.equal((await fx.service.listAbandoned({ idleMs: 60 * 60 * 1000, limit: 1 })).length, 1)

  // Simulated crash recovery: the completer resumes the abandoned request from its recovery point.
  const resumed = await fx.service.initializeRequest(stuckOld, 'POST', { cart: stuckOld }, '/carts/complete')
  assert.equal(resumed.recovery_point, 'tax_lines_created')
  const finished = await fx.service.workStage(stuckOld, async () => ({ response_code: 201, response_body: { ok: true } }), {
    recoveryPoint: 'tax_lines_created',
  })
  assert.equal(finished.recovery_point, 'finished')
  const after = await fx.service.listAbandoned({ idleMs: 60 * 60 * 1000 })
  assert.equal(after.some((k) => k.idempotency_key === stuckOld), false)
})

test('reap() and listAbandoned() reject bad options with invalid_data', async () => {
  assertErr(await rejects(fx.service.reap({ batchSize: 0 })), 'invalid_data', 'INVALID_ARGUMENT')
  assertErr(await rejects(fx.service.reap({ olderThanMs: -1 })), 'invalid_data', 'INVALID_ARGUMENT')
  assertErr(await rejects(fx.service.reap('x')), 'invalid_data', 'INVALID_ARGUMENT')
  assertErr(await rejects(fx.service.listAbandoned({ limit: 'ten' })), 'invalid_data', 'INVALID_ARGUMENT')
})

test('migrate() drops the development build\'s progress index (it made every stage UPDATE non-HOT) and keeps created_at\'s', async () => {
  await db.exec(`CREATE INDEX IF NOT EXISTS "IDX_idempotency_key_unfinished_progress" ON "idempotency_key" (COALESCE("locked_at", "created_at")) WHERE "recovery_point" <> 'finished'`)
  await fx.service.migrate()
  const names = pick({
    postgres: "SELECT indexname AS name FROM pg_indexes WHERE tablename = 'idempotency_key' ORDER BY 1",
    sqlite: "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'idempotency_key' AND sql IS NOT NULL ORDER BY 1",
  })
  const indexes = (await db.query(names)).map((r) => r.name)
  assert.ok(!indexes.includes('IDX_idempotency_key_unfinished_progress'), indexes.join(', '))
  assert.ok(indexes.includes('IDX_idempotency_key_created_at'), indexes.join(', '))
  assert.ok(indexes.includes('IDX_a421bf4588d0004a9b0c0fe84f'), indexes.join(', '))
})
