// Trust boundaries (issue 19), each finding as a regression test, on the backend IDEM_BACKEND
// selects: what the middleware keeps for a request no handler took, what the completer may run,
// keys unique across tenants for side effects, exact fingerprints, routes matched as Express
// matched them, and the small leaks (error echo, tenant probes, warning floods, wrong `this`, a
// port that is not PostgreSQL).
const { test } = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const net = require('node:net')
const express = require('express')
const { IdempotencyKeyService } = require('..')
const { idempotency } = require('medusa-idempotency-native/middleware')
const { useFreshDb, sleep, isPostgres } = require('./helpers')
const { uniq } = require('../test-support/keys')

const IDLE = 150
const LEASE = 100

let fx
let db
let service
useFreshDb(async (f) => {
  fx = f
  db = fx.db
  service = await fx.connect({ lockTimeoutMs: LEASE })
  await db.exec('CREATE TABLE orders (cart_id text, idem_key text, charge text)')
})

async function listen(handler) {
  const server = http.createServer(handler)
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return { server, port: server.address().port, close: () => (server.closeAllConnections(), new Promise((r) => server.close(r))) }
}

async function post(port, path, key, body, headers = {}) {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key === undefined ? {} : { 'idempotency-key': key }), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
  })
  const text = await res.text()
  let json
  try {
    json = JSON.parse(text)
  } catch {
    json = text
  }
  return { status: res.status, replayed: res.headers.get('idempotent-replayed') === 'true', body: json, text }
}

/** Wait until `check()` is truthy (the middleware releases a key after the response). */
async function until(check, what) {
  for (let i = 0; i < 200; i++) {
    if (await check()) return
    await sleep(25)
  }
  assert.fail(`timed out waiting for ${what}`)
}

async function stored(key) {
  return db.query('SELECT idempotency_key, recovery_point, request_params FROM idempotency_key WHERE idempotency_key = $1', [key])
}

/** A payment provider that dedupes by idempotency key, as Stripe does. */
function paymentStub() {
  const charges = new Map()
  return {
    charges,
    charge(idempotencyKey, cart) {
      if (!charges.has(idempotencyKey)) charges.set(idempotencyKey, { id: `ch_${charges.size}`, cart })
      return charges.get(idempotencyKey)
    },
  }
}

/** The README's checkout: stages rebuilt from the stored body, side effects keyed by `key.scoped_key`. */
function checkout(payments) {
  return (params, key) => ({
    started: async (tx) => {
      await tx.query('INSERT INTO orders (cart_id, idem_key) VALUES ($1, $2)', [params.cart_id, key.scoped_key])
      return { recovery_point: 'charged' }
    },
    charged: async (tx) => {
      const charge = payments.charge(key.scoped_key, params.cart_id)
      await tx.query('UPDATE orders SET charge = $1 WHERE idem_key = $2', [charge.id, key.scoped_key])
      return { response_code: 201, response_body: { cart_id: params.cart_id, charge } }
    },
  })
}

// ---------------------------------------------------------------------------------------------

// a request refused before its handler (401 from auth after an app-wide middleware) is released:
// the completer never completes it, the retry is not a replay
test('a request refused before its handler is released, never completed, not replayed', async () => {
  const payments = paymentStub()
  const route = checkout(payments)
  const app = express()
  app.use(express.json())
  app.use(idempotency({ service, reap: false }))
  const requireAuth = (req, res, next) => (req.headers.authorization === 'Bearer ok' ? next() : res.status(401).json({ message: 'unauthorized' }))
  app.post('/checkout', requireAuth, async (req, res, next) => {
    try {
      const idem = req.idempotency
      await idem.run(route(req.body, idem.key))
      idem.respond()
    } catch (e) {
      next(e)
    }
  })
  const srv = await listen(app)
  try {
    const key = uniq('attacker')
    const r = await post(srv.port, '/checkout', key, { cart_id: 'victim-cart' })
    assert.equal(r.status, 401)
    await until(async () => (await stored(key)).length === 0, 'the refused key to be released')
    const [tomb] = await db.query('SELECT request_params, request_path, recovery_point FROM idempotency_key WHERE request_path IS NULL AND idempotency_key LIKE $1', [`${key}%`])
    assert.deepEqual(tomb, { request_params: null, request_path: null, recovery_point: 'finished' }, 'released: the stored request cleared')

    await sleep(IDLE + 50)
    const pass = await service.completer({ routes: { 'POST /checkout': route }, idleMs: IDLE }).runOnce()
    assert.equal(pass.completed, 0, JSON.stringify(pass))
    assert.deepEqual(await db.query('SELECT * FROM orders WHERE cart_id = $1', ['victim-cart']), [])
    assert.equal(payments.charges.size, 0)

    const again = await post(srv.port, '/checkout', key, { cart_id: 'victim-cart' })
    assert.equal(again.status, 401)
    assert.equal(again.replayed, false)
    // Released again once that response ended (a retry sent before then meets the lease: 409).
    await until(async () => (await stored(key)).length === 0, 'the second refused claim to be released')
    const mine = await post(srv.port, '/checkout', key, { cart_id: 'my-cart' }, { authorization: 'Bearer ok' })
    assert.equal(mine.status, 201, mine.text)
    assert.equal(mine.replayed, false)
    assert.equal(mine.body.cart_id, 'my-cart')
  } finally {
    await srv.close()
  }
})

// a handler that accepted the request (its first stage committed) and then lost its client is
// completed; one that only called accept() too
test('an accepted request whose client left is completed, also one that only called accept()', async () => {
  const payments = paymentStub()
  const route = checkout(payments)
  const app = express()
  app.use(express.json())
  app.use(idempotency({ service, reap: false }))
  app.post('/checkout', async (req, res) => {
    const idem = req.idempotency
    if (req.headers['x-mode'] === 'accept-only') {
      await idem.accept()
      res.status(202).json({ accepted: true }) // the work happens later (here: by the completer)
      return
    }
    const stages = route(req.body, idem.key)
    await idem.run({ started: stages.started, charged: () => Promise.reject(new Error('the process died here')) }).catch(() => {})
    res.status(502).end()
  })
  const srv = await listen(app)
  try {
    const a = uniq('accepted-stage')
    const b = uniq('accepted-explicit')
    assert.equal((await post(srv.port, '/checkout', a, { cart_id: 'cart-a' })).status, 502)
    assert.equal((await post(srv.port, '/checkout', b, { cart_id: 'cart-b' }, { 'x-mode': 'accept-only' })).status, 202)
    await sleep(IDLE + LEASE + 50)
    const pass = await service.completer({ routes: { 'POST /checkout': route }, idleMs: IDLE }).runOnce()
    assert.equal(pass.completed, 2, JSON.stringify(pass))
    for (const k of [a, b]) assert.equal((await stored(k))[0].recovery_point, 'finished')
    const [[ra], [rb]] = await Promise.all([a, b].map((k) => db.query('SELECT * FROM idempotency_key_accepted WHERE idempotency_key = $1', [k])))
    assert.equal(ra, undefined, 'a finished key has no acceptance row left')
    assert.equal(rb, undefined)
  } finally {
    await srv.close()
  }
})

// two tenants send the same key to the README checkout: each gets its own cart and its own charge
// (side effects keyed by scoped_key)
test('two tenants sending one key to the README checkout get their own cart and charge', async () => {
  const payments = paymentStub()
  const route = checkout(payments)
  const app = express()
  app.use(express.json())
  app.use(idempotency({ service, tenant: (req) => req.headers['x-tenant'], reap: false }))
  app.post('/tenant-checkout', async (req, res, next) => {
    try {
      await req.idempotency.run(route(req.body, req.idempotency.key))
      req.idempotency.respond()
    } catch (e) {
      next(e)
    }
  })
  const srv = await listen(app)
  try {
    const key = uniq('order')
    const a = await post(srv.port, '/tenant-checkout', key, { cart_id: 'A-cart' }, { 'x-tenant': 'ta' })
    const b = await post(srv.port, '/tenant-checkout', key, { cart_id: 'B-cart' }, { 'x-tenant': 'tb' })
    assert.equal(a.status, 201)
    assert.equal(b.status, 201)
    assert.equal(b.body.cart_id, 'B-cart')
    assert.notEqual(b.body.charge.id, a.body.charge.id, 'B was charged, not handed A\'s charge')
    assert.equal(b.body.charge.cart, 'B-cart')
    const rows = await db.query('SELECT cart_id, idem_key FROM orders WHERE idem_key LIKE $1 ORDER BY cart_id', [`%${key}`])
    assert.deepEqual(rows, [{ cart_id: 'A-cart', idem_key: `ta/${key}` }, { cart_id: 'B-cart', idem_key: `tb/${key}` }])
  } finally {
    await srv.close()
  }
})

// 300 POSTs to a 404 path leave no stored body; older unaccepted keys never hide a real abandoned
// key (selected in SQL, nothing else listed)
test('POSTs to a 404 path leave no stored body and never hide a real abandoned key', async () => {
  const payments = paymentStub()
  const route = checkout(payments)
  // Keys claimed but never accepted, older than the real one: a process that died before any
  // handler ran (nothing released them).
  const junkBody = { pad: 'x'.repeat(200_000) } // 300 of them: 60 MB a pass must not load
  for (let i = 0; i < 300; i++) await service.initializeRequest(uniq('junk'), 'POST', junkBody, '/no-such-route')
  const real = uniq('real')
  await service.initializeRequest(real, 'POST', { cart_id: 'real-cart' }, '/checkout')
  await service.accept(real, { route: 'POST /checkout' })
  await service.workStage(real, route({ cart_id: 'real-cart' }, { scoped_key: real }).started, { recoveryPoint: 'started' })

  // And 300 through the middleware to a path no route takes.
  const app = express()
  app.use(express.json({ limit: '1mb' }))
  app.use(idempotency({ service, reap: false }))
  const srv = await listen(app)
  try {
    const before = Number((await db.query("SELECT count(*) AS n FROM idempotency_key WHERE request_path = '/nowhere'"))[0].n)
    assert.equal(before, 0)
    for (let i = 0; i < 300; i += 30) {
      const batch = Array.from({ length: 30 }, () => post(srv.port, '/nowhere', uniq('404'), { pad: 'y'.repeat(10_000) }))
      for (const r of await Promise.all(batch)) assert.equal(r.status, 404)
    }
    await until(async () => Number((await db.query("SELECT count(*) AS n FROM idempotency_key WHERE request_path = '/nowhere'"))[0].n) === 0, 'the 404 keys to be released')
  } finally {
    await srv.close()
  }

  await sleep(IDLE + LEASE + 50)
  // The heap while the pass runs (sampled between its awaits): the junk rows' 60 MB never arrive.
  const baseline = process.memoryUsage().heapUsed
  let peak = baseline
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().heapUsed)), 1)
  let pass
  try {
    pass = await service.completer({ routes: { 'POST /checkout': route }, idleMs: IDLE, limit: 1 }).runOnce()
  } finally {
    clearInterval(sampler)
  }
  peak = Math.max(peak, process.memoryUsage().heapUsed)
  assert.ok(peak - baseline < 20e6, `the pass grew the heap by ${((peak - baseline) / 1e6).toFixed(1)} MB`)
  assert.equal(pass.completed, 1, JSON.stringify(pass))
  assert.equal(pass.skipped, 0, `no unrelated key was listed: ${JSON.stringify(pass)}`)
  assert.equal((await stored(real))[0].recovery_point, 'finished')
})

test('fingerprints are exact: no body is not NULL; non-UTF-8 bytes, lone surrogates, 1e400 and NUL are a typed 400', async () => {
  const mw = idempotency({ service, reap: false })
  let ran = 0
  const srv = await listen((req, res) =>
    mw(req, res, async () => {
      ran++
      await req.idempotency.run({ started: async () => ({ response_code: 201, response_body: { got: req.body } }) })
      req.idempotency.respond()
    }),
  )
  try {
    const key = uniq('nobody')
    const first = await post(srv.port, '/pay', key, undefined)
    assert.equal(first.status, 201)
    assert.notEqual((await stored(key))[0].request_params, null, 'stored as a value of its own, not NULL')
    const other = await post(srv.port, '/pay', key, { amount: 999 })
    assert.equal(other.status, 422, 'a body is another request than none')
    assert.equal((await post(srv.port, '/pay', key, undefined)).replayed, true)

    const refused = [
      [Buffer.from([0xff, 0x41]), 'application/octet-stream'],
      [Buffer.from([0xc3, 0x41]), 'application/octet-stream'],
      ['"\\ud800"', 'application/json'],
      ['{"amount":1e400}', 'application/json'],
      ['{"note":"a\\u0000b"}', 'application/json'],
      ['a\u0000b', 'text/plain'],
    ]
    const ranBefore = ran
    for (const [body, type] of refused) {
      const k = uniq('exact')
      const r = await post(srv.port, '/pay', k, body, { 'content-type': type })
      assert.equal(r.status, 400, `${type} ${JSON.stringify(String(body))}: ${r.text}`)
      assert.equal(r.body.code, 'INVALID_BODY')
      assert.equal(r.body.type, 'invalid_data')
      assert.deepEqual(await stored(k), [], 'nothing stored')
    }
    assert.equal(ran, ranBefore)
    // Bytes that are valid UTF-8 still fingerprint as their text.
    const k = uniq('text')
    assert.equal((await post(srv.port, '/pay', k, 'héllo', { 'content-type': 'text/plain' })).status, 201)
    assert.equal((await post(srv.port, '/pay', k, 'hello', { 'content-type': 'text/plain' })).status, 422)
  } finally {
    await srv.close()
  }
})

test('routes are matched as Express matched them: case, trailing slash, absolute-form target, decoded :params', async () => {
  const seen = []
  const failOnce = new Set()
  const build = (params, key, match) => {
    if (match) seen.push(match.pathParams.id)
    return {
      started: async () => ({ recovery_point: 'reserved' }),
      reserved: async () => {
        if (failOnce.delete(key.idempotency_key)) throw new Error('the client went away')
        return { response_code: 200, response_body: { ok: true } }
      },
    }
  }
  const app = express()
  app.use(express.json())
  app.use(idempotency({ service, reap: false }))
  app.post('/store/carts/:id/complete', async (req, res) => {
    try {
      await req.idempotency.run(build(req.body, req.idempotency.key))
      req.idempotency.respond()
    } catch {
      res.status(500).end()
    }
  })
  const srv = await listen(app)
  try {
    const keys = { upper: uniq('upper'), slash: uniq('slash'), absolute: uniq('absolute') }
    for (const k of Object.values(keys)) failOnce.add(k)
    assert.equal((await post(srv.port, '/STORE/carts/c%31/complete', keys.upper, { n: 1 })).status, 500)
    assert.equal((await post(srv.port, '/store/carts/a%2Fb/complete/', keys.slash, { n: 2 })).status, 500)
    const raw = await new Promise((resolve, reject) => {
      const body = '{"n":3}'
      const sock = net.connect(srv.port, '127.0.0.1', () =>
        sock.write(`POST http://shop.example/store/carts/c3/complete?x=1 HTTP/1.1\r\nHost: shop.example\r\nIdempotency-Key: ${keys.absolute}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`),
      )
      let got = ''
      sock.on('data', (d) => (got += d))
      sock.on('end', () => resolve(got))
      sock.on('error', reject)
    })
    assert.match(raw, /^HTTP\/1\.1 500/)
    const [abs] = await db.query('SELECT request_path FROM idempotency_key WHERE idempotency_key = $1', [keys.absolute])
    assert.equal(abs.request_path, '/store/carts/c3/complete', 'the absolute-form target stored as its path')

    await sleep(IDLE + LEASE + 50)
    seen.length = 0
    const pass = await service.completer({ routes: { 'POST /store/carts/:id/complete': build }, idleMs: IDLE }).runOnce()
    assert.equal(pass.completed, 3, JSON.stringify(pass))
    assert.deepEqual(seen.sort(), ['a/b', 'c1', 'c3'])
    for (const k of Object.values(keys)) assert.equal((await stored(k))[0].recovery_point, 'finished')
  } finally {
    await srv.close()
  }
})

test('node:http: only Medusa\'s error types have their message shown; anything else is "An unknown error occurred."', async () => {
  const reported = []
  const mw = idempotency({ service, reap: false, onError: (e) => reported.push(e) })
  const srv = await listen((req, res) =>
    mw(req, res, async () => {
      if (req.headers['x-throw'] === 'secret') throw Object.assign(new Error('Invalid API Key provided: sk_live_51Hxyz'), { type: 'StripeAuthenticationError' })
      if (req.headers['x-throw'] === 'conflict') throw Object.assign(new Error('row 42 of carts is locked by pid 7'), { type: 'conflict' })
      throw Object.assign(new Error('cart_id is required'), { type: 'invalid_data' })
    }),
  )
  try {
    const secret = await post(srv.port, '/x', uniq('echo'), { a: 1 }, { 'x-throw': 'secret' })
    assert.equal(secret.status, 500)
    assert.deepEqual(secret.body, { type: 'unknown_error', code: 'unknown_error', message: 'An unknown error occurred.' })
    assert.doesNotMatch(secret.text, /sk_live/)
    assert.equal(reported.length, 1, 'the unknown error is reported')
    const conflict = await post(srv.port, '/x', uniq('echo'), { a: 1 }, { 'x-throw': 'conflict' })
    assert.equal(conflict.status, 409)
    assert.doesNotMatch(conflict.text, /pid 7/)
    const known = await post(srv.port, '/x', uniq('echo'), { a: 1 })
    assert.equal(known.status, 400)
    assert.equal(known.body.message, 'cart_id is required')
  } finally {
    await srv.close()
  }
})

test('a scoped and an unscoped middleware on one table: the unscoped one can neither probe nor squat a tenant\'s key', async () => {
  const scoped = idempotency({ service, tenant: () => 'acme', reap: false })
  const unscoped = idempotency({ service, reap: false })
  const handler = async (req, res) => {
    await req.idempotency.run({ started: async () => ({ response_code: 201, response_body: { ok: true } }) })
    req.idempotency.respond()
  }
  const srv = await listen((req, res) => (req.url.startsWith('/t') ? scoped : unscoped)(req, res, () => handler(req, res)))
  try {
    const k1 = uniq('K1')
    assert.equal((await post(srv.port, '/t', k1, { a: 1 })).status, 201)
    const probe = await post(srv.port, '/u', `acme/${k1}`, { b: 2 })
    assert.equal(probe.status, 400, probe.text)
    assert.equal(probe.body.code, 'IDEMPOTENCY_KEY_MALFORMED')
    const k2 = uniq('K2')
    assert.equal((await post(srv.port, '/u', `acme/${k2}`, { b: 2 })).status, 400)
    assert.deepEqual(await stored(`acme/${k2}`), [], 'not squatted')
    assert.equal((await post(srv.port, '/t', k2, { a: 1 })).status, 201, 'acme can still use it')
    // Nor can a client name the service's own row.
    assert.equal((await post(srv.port, '/u', 'medusa-idempotency-native:completer', { a: 1 })).status, 400)
  } finally {
    await srv.close()
  }
})

test('clients that disconnect mid-body are reported at most once per interval', async () => {
  const reported = []
  const mw = idempotency({ service, reap: false, onError: (e) => reported.push(e) })
  const srv = await listen((req, res) => mw(req, res, () => res.end('handler ran')))
  try {
    for (let i = 0; i < 5; i++) {
      const sock = net.connect(srv.port, '127.0.0.1')
      await new Promise((r) => sock.on('connect', r))
      sock.write(`POST /x HTTP/1.1\r\nHost: x\r\nIdempotency-Key: ${uniq('gone')}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"partial":`)
      await sleep(30)
      sock.destroy()
    }
    await sleep(200)
    assert.equal(reported.filter((e) => e && e.aborted).length, 1, `reported: ${reported.map(String)}`)
  } finally {
    await srv.close()
  }
})

test('a method called with a wrong `this` is a typed INVALID_ARGUMENT, never an untyped TypeError', async () => {
  const { retrieve, forTenant } = service
  await assert.rejects(retrieve('x'), (e) => e.type === 'invalid_data' && e.code === 'INVALID_ARGUMENT')
  await assert.rejects(IdempotencyKeyService.prototype.workStage.call({}, 'x', async () => ({})), (e) => e.code === 'INVALID_ARGUMENT')
  assert.throws(() => forTenant('t'), (e) => e.type === 'invalid_data' && e.code === 'INVALID_ARGUMENT')
  assert.throws(() => Object.getOwnPropertyDescriptor(IdempotencyKeyService.prototype, 'tenant').get.call(Object.create(IdempotencyKeyService.prototype)), (e) => e.code === 'INVALID_ARGUMENT')
})

test('a URL pointing at a port that is not PostgreSQL is CONNECTION_FAILED, naming no driver internals', { skip: !isPostgres && 'postgres URLs only' }, async () => {
  // Answers the driver's first message the way an HTTP server does.
  const garbage = net.createServer((c) => {
    c.on('error', () => {})
    c.once('data', () => c.end('HTTP/1.1 400 Bad Request\r\n\r\n'))
  })
  await new Promise((r) => garbage.listen(0, '127.0.0.1', r))
  try {
    await assert.rejects(IdempotencyKeyService.connect({ url: `postgres://u:pw@127.0.0.1:${garbage.address().port}/db`, acquireTimeoutMs: 3000 }), (e) => {
      assert.equal(e.code, 'CONNECTION_FAILED')
      assert.equal(e.type, 'database_error')
      assert.doesNotMatch(e.message, /sqlx|pw/)
      return true
    })
  } finally {
    await new Promise((r) => garbage.close(r))
  }
})
