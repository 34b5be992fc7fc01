'use strict'
// What the packed-install programs (app.mjs, app.cjs) do with the package once they have
// imported it their own way: embedded SQLite, migrate, a request through initializeRequest and
// workStage, the same request again through the middleware on node:http (replayed), a tracing
// event, and the Medusa container class constructed the way Medusa's loader does.
const assert = require('node:assert/strict')
const http = require('node:http')

module.exports = async function exercise({ IdempotencyKeyService, TransactionManager, channels, idempotency, MedusaService }) {
  const service = await IdempotencyKeyService.connect('sqlite::memory:')
  await service.migrate()
  const ended = []
  const onEnd = (e) => ended.push(e)
  channels.stageEnd.subscribe(onEnd)
  try {
    let key = await service.initializeRequest('order-1', 'POST', { cart_id: 'c1' }, '/store/carts/c1/complete')
    assert.equal(key.recovery_point, 'started')
    key = await service.workStage(key.idempotency_key, async (tx) => {
      assert.ok(tx instanceof TransactionManager)
      const [row] = await tx.query('SELECT 1 + 1 AS two', [])
      assert.equal(row.two, 2)
      return { response_code: 201, response_body: { order_id: 'o1' } }
    }, { recoveryPoint: 'started' })
    assert.equal(key.recovery_point, 'finished')
    assert.equal(ended.length, 1)

    const mw = idempotency({ service })
    let runs = 0
    const server = http.createServer((req, res) =>
      mw(req, res, async () => {
        runs++
        req.idempotency.respond(await req.idempotency.run({ started: async () => ({ response_code: 201, response_body: { n: runs } }) }))
      }),
    )
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    try {
      const post = () =>
        fetch(`http://127.0.0.1:${server.address().port}/charge`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': 'charge-1' },
          body: JSON.stringify({ amount: 5 }),
        })
      const first = await post()
      const second = await post()
      assert.equal(first.status, 201)
      assert.deepEqual(await first.json(), { n: 1 })
      assert.equal(second.headers.get('idempotent-replayed'), 'true')
      assert.deepEqual(await second.json(), { n: 1 })
      assert.equal(runs, 1)
    } finally {
      server.close()
    }

    const medusa = new MedusaService({ manager: { query: async () => [], transaction: async (work) => work({ query: async () => [] }) } }, {})
    assert.equal(typeof medusa.withTransaction(undefined).workStage, 'function')
  } finally {
    channels.stageEnd.unsubscribe(onEnd)
    await service.close()
  }
}
