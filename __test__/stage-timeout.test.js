// stageTimeoutMs as the backstop for a statement that never returns (SPEC §6): the stage rejects
// with STAGE_TIMEOUT on time and rolls back, whatever ran the statement on the stage's
// connection — the callback's tx.query, or a method of a service bound to the stage with
// withTransaction(tx). PostgreSQL only: the statement waits on a row lock another connection
// holds.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { freshDb, rejects, sleep, isPostgres, decodeKeyRow } = require('./helpers')

const skip = !isPostgres && 'PostgreSQL only (a row lock held by another connection)'

let fx
let db

before(async () => {
  if (skip) return
  fx = await freshDb()
  db = fx.db
})

after(async () => {
  if (fx) await fx.cleanup()
})

/** Another connection holding `key`'s row with FOR UPDATE; `release()` commits. */
async function holdRow(key) {
  const { Client } = require('pg')
  const c = new Client({ connectionString: fx.directUrl })
  await c.connect()
  await c.query('BEGIN')
  await c.query('SELECT 1 FROM idempotency_key WHERE idempotency_key = $1 FOR UPDATE', [key])
  let released
  const release = () => {
    released ??= c.query('COMMIT').then(() => c.end())
    return released
  }
  return { release }
}

async function recoveryPoint(key) {
  const rows = await db.query('SELECT recovery_point, locked_at FROM idempotency_key WHERE idempotency_key = $1', [key])
  return decodeKeyRow(rows[0])
}

/** workStage until the key's row is free again (the abandoned statement's session ends). */
async function workWhenFree(s, key, rp, ms = 10_000) {
  const until = Date.now() + ms
  for (;;) {
    try {
      return await s.workStage(key, async () => ({ recovery_point: rp }))
    } catch (e) {
      if (e.code !== 'IDEMPOTENCY_KEY_LOCKED' || Date.now() > until) throw e
      await sleep(100)
    }
  }
}

for (const [what, run] of [
  ['a withTransaction(tx) method', (s, tx, other) => s.withTransaction(tx).update(other, { recovery_point: 'from_stuck_stage' })],
  ['tx.query', (s, tx, other) => tx.query("UPDATE idempotency_key SET recovery_point = 'from_stuck_stage' WHERE idempotency_key = $1", [other])],
]) {
  // ${what} waiting on a row lock another connection holds → STAGE_TIMEOUT at stageTimeoutMs,
  // rolled back, key workable once the lock goes
  test(`${what} waiting on another connection's row lock → STAGE_TIMEOUT, rolled back`, { skip, timeout: 30_000 }, async () => {
    const s = await fx.connect({ stageTimeoutMs: 300, maxConnections: 2 })
    const key = (await s.create({})).idempotency_key
    const other = (await s.create({})).idempotency_key
    const held = await holdRow(other)
    // Without the backstop the stage waits for this lock: let the test end either way.
    const safety = setTimeout(() => held.release(), 8000)
    try {
      const t0 = Date.now()
      const e = await rejects(
        s.workStage(key, async (tx) => {
          await tx.query("UPDATE idempotency_key SET response_code = 299 WHERE idempotency_key = $1", [key])
          await run(s, tx, other)
          return { recovery_point: 'never' }
        }),
      )
      const took = Date.now() - t0
      assert.equal(e.code, 'STAGE_TIMEOUT', e.message)
      assert.ok(took < 3000, `STAGE_TIMEOUT after ${took} ms, expected about 300 ms`)
    } finally {
      clearTimeout(safety)
      await held.release()
    }
    // Nothing of the stage committed, on either row; both keys are workable again.
    const k = await workWhenFree(s, key, 'after_timeout')
    assert.equal(k.recovery_point, 'after_timeout')
    assert.equal(k.response_code, null)
    assert.equal((await recoveryPoint(other)).recovery_point, 'started')
    const o = await workWhenFree(s, other, 'other_after')
    assert.equal(o.recovery_point, 'other_after')
  })
}
