// The caller's async context (AsyncLocalStorage) inside every callback the addon calls: a stage
// callback, a completer's stage, the middleware's handler and its stages. The addon calls back
// from a thread-safe function, outside any async context; on Node 24 (AsyncContextFrame) that
// loses the store unless the façade carries it (lib/index.js). scripts/test.js runs this file on
// Node 20, 22 and 24, on the backend IDEM_BACKEND selects.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const { AsyncLocalStorage } = require('node:async_hooks')
const express5 = require('express')
const { idempotency } = require('medusa-idempotency-native/middleware')
const { useFreshDb, isPostgres, sleep } = require('./helpers')
const { uniq } = require('../test-support/keys')

const als = new AsyncLocalStorage()
const LEASE = 100

let fx
let service
useFreshDb(async (f) => {
  fx = f
  service = await fx.connect({ lockTimeoutMs: LEASE })
})

test(`a stage callback sees the caller's store, before and after its statements (Node ${process.version})`, async () => {
  const key = uniq('stage')
  await service.create({ idempotency_key: key })
  const seen = []
  await als.run({ req: 42 }, () =>
    service.workStage(key, async (tx) => {
      seen.push(als.getStore())
      await tx.query('SELECT 1 AS one')
      seen.push(als.getStore())
      return { recovery_point: 'done' }
    }),
  )
  assert.deepEqual(seen, [{ req: 42 }, { req: 42 }])
  // Outside any run(), nothing leaks in from an earlier call.
  let outside = 'unset'
  await service.workStage(key, async () => {
    outside = als.getStore()
    return { recovery_point: 'again' }
  })
  assert.equal(outside, undefined)
})

test('concurrent stages each see their own store', async () => {
  const keys = Array.from({ length: 8 }, () => uniq('many'))
  for (const k of keys) await service.create({ idempotency_key: k })
  const seen = await Promise.all(
    keys.map((k, i) =>
      als.run({ req: i }, async () => {
        let got
        await service
          .workStage(k, async () => {
            await sleep(1)
            got = als.getStore()
            return { recovery_point: 'x' }
          })
          // SQLite runs one writer at a time: a stage refused as busy is retried by the caller.
          .catch(async (e) => {
            if (e.code !== 'DATABASE_BUSY' && e.code !== 'IDEMPOTENCY_KEY_LOCKED') throw e
          })
        return got
      }),
    ),
  )
  seen.forEach((store, i) => {
    if (store !== undefined) assert.deepEqual(store, { req: i })
  })
  // PostgreSQL runs them all; SQLite at least one.
  assert.ok(seen.filter((s) => s !== undefined).length >= (isPostgres ? keys.length : 1))
})

test('a tenant-scoped copy carries the store too', async () => {
  const scoped = service.forTenant(uniq('t'))
  const key = uniq('tenant')
  await scoped.create({ idempotency_key: key })
  let got
  await als.run({ tenantCall: true }, () =>
    scoped.workStage(key, async () => {
      got = als.getStore()
      return { recovery_point: 'x' }
    }),
  )
  assert.deepEqual(got, { tenantCall: true })
})

test("a completer's stages run in the context of runOnce(), and of start() for its timed passes", async () => {
  const stored = []
  const routes = {
    'POST /ctx': () => ({
      started: async () => {
        stored.push(als.getStore())
        return { recovery_point: 'half' }
      },
      half: async () => {
        stored.push(als.getStore())
        return { response_code: 201, response_body: { ok: true } }
      },
    }),
  }
  const completer = service.completer({ routes, idleMs: 50, backoffMs: 10 })
  const first = uniq('completer')
  await service.initializeRequest(first, 'POST', { n: 1 }, '/ctx')
  await service.accept(first, { route: 'POST /ctx' }) // a handler took it: the completer may finish it
  await sleep(LEASE + 100)
  const result = await als.run({ pass: 'once' }, () => completer.runOnce())
  assert.equal(result.completed, 1)
  assert.deepEqual(stored, [{ pass: 'once' }, { pass: 'once' }])

  stored.length = 0
  const second = uniq('completer')
  await service.initializeRequest(second, 'POST', { n: 2 }, '/ctx')
  await service.accept(second, { route: 'POST /ctx' })
  await sleep(LEASE + 100)
  const timed = service.completer({ routes, idleMs: 50, intervalMs: 20, backoffMs: 10 })
  als.run({ pass: 'timer' }, () => timed.start())
  const deadline = Date.now() + 10_000
  while (stored.length < 2 && Date.now() < deadline) await sleep(20)
  await timed.stop()
  assert.deepEqual(stored, [{ pass: 'timer' }, { pass: 'timer' }])
  assert.equal((await service.retrieve(second)).recovery_point, 'finished')
})

/** A server whose every request runs in a store of its own, as an APM's HTTP instrumentation does. */
async function serve(kind, handler) {
  const middleware = idempotency({ service, reap: false })
  let n = 0
  let server
  if (kind === 'express5') {
    const app = express5()
    app.use((req, res, next) => als.run({ request: ++n }, next))
    app.use(express5.json())
    app.use(middleware)
    app.post('/orders', (req, res, next) => handler(req, res).catch(next))
    server = http.createServer(app)
  } else {
    server = http.createServer((req, res) => als.run({ request: ++n }, () => middleware(req, res, () => handler(req, res))))
  }
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${server.address().port}/orders`, close: () => new Promise((resolve) => server.close(resolve)) }
}

for (const kind of ['node', 'express5']) {
  test(`the middleware's handler and its stages run in the request's store (${kind})`, async () => {
    const seen = []
    const server = await serve(kind, async (req, res) => {
      seen.push(['handler', als.getStore()])
      await req.idempotency.run({
        started: async (tx) => {
          seen.push(['started', als.getStore()])
          await tx.query('SELECT 1 AS one')
          return { recovery_point: 'charged' }
        },
        charged: async () => {
          seen.push(['charged', als.getStore()])
          return { response_code: 201, response_body: { ok: true } }
        },
      })
      seen.push(['after', als.getStore()])
      req.idempotency.respond()
    })
    try {
      for (const request of [1, 2]) {
        const r = await fetch(server.url, { method: 'POST', headers: { 'idempotency-key': uniq(kind), 'content-type': 'application/json' }, body: '{"a":1}' })
        assert.equal(r.status, 201)
        const mine = seen.splice(0)
        assert.deepEqual(mine, [
          ['handler', { request }],
          ['started', { request }],
          ['charged', { request }],
          ['after', { request }],
        ])
      }
    } finally {
      await server.close()
    }
  })
}
