// A claim that is refused must not hold the key's row: the lease holder's next stage locks the
// row with FOR UPDATE NOWAIT and would meet a refused claimant as IDEMPOTENCY_KEY_LOCKED. Made
// deterministic by refusing the claim inside a caller's open transaction (bound mode over a
// node-postgres client), which would keep any row lock it took until it ends.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { Client } = require('pg')
const { freshDb, rejects, isPostgres } = require('./helpers')

const skip = isPostgres ? false : 'PostgreSQL only: bound mode over a node-postgres client'
let fx

before(async () => {
  if (isPostgres) fx = await freshDb({ lockTimeoutMs: 60_000 })
})
after(async () => {
  if (fx) await fx.cleanup()
})

for (const [why, args] of [
  ['its lease is fresh', (k) => [k, 'POST', { cart: 1 }, '/carts']],
  ['it is another request (fingerprint)', (k) => [k, 'POST', { cart: 2 }, '/carts']],
]) {
  test(`a claim refused because ${why} leaves the row unlocked for the lease holder's stage`, { skip }, async () => {
    const key = `lease-${Math.random().toString(36).slice(2)}`
    const held = await fx.service.initializeRequest(key, 'POST', { cart: 1 }, '/carts')
    assert.equal(held.recovery_point, 'started')
    const client = new Client({ connectionString: fx.directUrl })
    await client.connect()
    try {
      await client.query('BEGIN')
      const e = await rejects(fx.service.withTransaction(client).initializeRequest(...args(key)))
      assert.ok(['IDEMPOTENCY_KEY_LOCKED', 'IDEMPOTENCY_KEY_REUSED'].includes(e.code), e.code)
      // The refused claimant's transaction is still open: the holder's stage must still run.
      const done = await fx.service.workStage(key, async () => ({ recovery_point: 'next' }), { recoveryPoint: 'started' })
      assert.equal(done.recovery_point, 'next')
    } finally {
      await client.query('ROLLBACK').catch(() => {})
      await client.end()
    }
  })
}
