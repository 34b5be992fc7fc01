// The HTTP middleware (middleware.js) over real servers on port 0 and real requests (fetch),
// under Express 5, Express 4 and plain node:http, on the backend IDEM_BACKEND selects. Every
// scenario is run for each server kind; side effects and stored keys are counted through the
// verification client.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const express5 = require('express')
const express4 = require('express4')
const { idempotency, parseIdempotencyKey } = require('medusa-idempotency-native/middleware')
const { useFreshDb, sleep } = require('./helpers')
const { uniq } = require('../test-support/keys')

const KINDS = ['express5', 'express4', 'node']
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
const PRE_EXPOSED = 'X-Request-Id' // set by an earlier middleware; must survive

let fx
let db
// A long request lease, so a slow handler's key stays "in flight" however slow the machine.
useFreshDb(
  async (f) => {
    fx = f
    db = fx.db
    await db.exec('CREATE TABLE effects (k text, stage text)')
  },
  { lockTimeoutMs: 10_000 },
)

async function effects(k) {
  const rows = await db.query('SELECT stage, CAST(count(*) AS integer) AS n FROM effects WHERE k = $1 GROUP BY stage', [k])
  return Object.fromEntries(rows.map((r) => [r.stage, r.n]))
}

async function keyRows(stored) {
  return db.query('SELECT idempotency_key, recovery_point, request_method, request_path FROM idempotency_key WHERE idempotency_key = $1', [stored])
}

async function keyCount() {
  const [r] = await db.query('SELECT CAST(count(*) AS integer) AS n FROM idempotency_key')
  return r.n
}

// ---------------------------------------------------------------------------------------------
// The application: one route, three work stages, written once against node's API.

function makeApp(kind) {
  const calls = new Map() // handler invocations per key
  const gates = new Map() // key → { entered, release, enteredP, releaseP }
  const failOnce = new Set() // keys whose charge stage throws once, after its INSERT

  async function route(req, res) {
    const path = String(req.originalUrl ?? req.url).split('?')[0]
    if (req.method === 'GET' && path === '/api/boom') throw new Error('boom')
    if (req.method === 'GET') {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ passthrough: true, sawIdempotency: req.idempotency !== undefined }))
      return
    }
    const idem = req.idempotency
    assert.ok(idem, `the middleware ran for ${req.method} ${path}`)
    const k = idem.key.idempotency_key
    calls.set(k, (calls.get(k) ?? 0) + 1)
    res.setHeader('x-resumed-from', idem.key.recovery_point)
    res.setHeader('x-tenant', String(idem.tenant))
    const gate = gates.get(k)
    if (gate) {
      gate.entered()
      await gate.releaseP
    }
    const body = req.body
    const cart = body && typeof body === 'object' ? body.cart_id ?? null : null
    const done = await idem.run({
      started: async (tx) => {
        await tx.query('INSERT INTO effects (k, stage) VALUES ($1, $2)', [k, 'reserve'])
        return { recovery_point: 'reserved' }
      },
      reserved: async (tx) => {
        await tx.query('INSERT INTO effects (k, stage) VALUES ($1, $2)', [k, 'charge'])
        if (failOnce.delete(k)) throw new Error('card network timeout')
        return { recovery_point: 'charged' }
      },
      charged: async (tx) => {
        await tx.query('INSERT INTO effects (k, stage) VALUES ($1, $2)', [k, 'order'])
        // Keys deliberately not in jsonb's order, non-ASCII text, nesting: replay must be the same bytes.
        return {
          response_code: 201,
          response_body: { order_id: `order_${k}`, cart, path, note: 'naïve € ✓ "q"', nested: { zeta: 1, alpha: [1, 2.5, null], b: true } },
        }
      },
    })
    // Express's own res.json for the first answer, the middleware's helper on node:http: the
    // replay must be byte-identical either way.
    if (kind === 'node') idem.respond(done)
    else res.status(done.response_code).json(done.response_body)
  }

  function gate(k) {
    const g = {}
    g.enteredP = new Promise((r) => (g.entered = r))
    g.releaseP = new Promise((r) => (g.release = r))
    gates.set(k, g)
    return g
  }

  return { route, calls, gate, failOnce }
}

const preHeaders = (req, res) => res.setHeader('Access-Control-Expose-Headers', PRE_EXPOSED)

/** Start a server of `kind` with the middleware (`mwOptions`) on /api; returns { base, app, errors, close }. */
async function startServer(kind, mwOptions = {}) {
  const app = makeApp(kind)
  const errors = [] // what the middleware reported through onError
  const mw = idempotency({ service: fx.service, onError: (e) => errors.push(e), ...mwOptions })
  let server
  if (kind === 'node') {
    server = http.createServer((req, res) => {
      preHeaders(req, res)
      mw(req, res, () => app.route(req, res))
    })
  } else {
    const lib = kind === 'express5' ? express5 : express4
    const ex = lib()
    ex.use((req, res, next) => {
      preHeaders(req, res)
      next()
    })
    const router = lib.Router()
    router.use(lib.json())
    router.use(mw)
    router.use((req, res, next) => {
      Promise.resolve(app.route(req, res)).catch(next)
    })
    ex.use('/api', router)
    // The application's error handler: what next(err) reaches.
    ex.use((err, req, res, _next) => {
      res.status(err.status ?? 500).set('x-app-error-handler', '1').json({ type: err.type ?? 'unknown_error', code: err.code ?? 'unknown_error', message: err.message })
    })
    server = http.createServer(ex)
  }
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const base = `http://127.0.0.1:${server.address().port}`
  const close = () =>
    new Promise((r) => {
      server.close(r)
      server.closeAllConnections()
    })
  return { base, app, errors, close }
}

async function withServer(kind, mwOptions, fn) {
  const s = await startServer(kind, mwOptions)
  try {
    return await fn(s)
  } finally {
    await s.close()
  }
}

/** One request: JSON bodies are sent as application/json, strings as they are. */
async function call(base, { method = 'POST', path = '/api/orders', key, body, headers = {} } = {}) {
  const h = { ...headers }
  if (key !== undefined) h['idempotency-key'] = key
  let payload
  if (typeof body === 'string') payload = body
  else if (body !== undefined) {
    payload = JSON.stringify(body)
    h['content-type'] ??= 'application/json'
  }
  const r = await fetch(base + path, { method, headers: h, body: payload, signal: AbortSignal.timeout(20_000) })
  const text = await r.text()
  let json
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: r.status, headers: r.headers, text, json }
}

/** POST with raw header lines (fetch folds repeated headers into one). */
function rawPost(base, path, headers, body) {
  const u = new URL(base)
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path, headers }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c) => (text += c))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text, json: text ? JSON.parse(text) : undefined }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

function header(r, name) {
  return typeof r.headers.get === 'function' ? r.headers.get(name) : r.headers[name.toLowerCase()] ?? null
}

/** The headers every answer to a matching method carries. `key === null`: no key is known. */
function assertProtocolHeaders(r, key) {
  assert.equal(header(r, 'access-control-expose-headers'), `${PRE_EXPOSED}, Idempotency-Key, Idempotent-Replayed`)
  assert.equal(header(r, 'idempotency-key'), key)
}

function assertError(r, status, type, code) {
  assert.equal(r.status, status, r.text)
  assert.match(header(r, 'content-type'), /^application\/json/)
  assert.equal(r.json.type, type, r.text)
  assert.equal(r.json.code, code, r.text)
  assert.equal(typeof r.json.message, 'string')
}

const CART = { cart_id: 'cart_01', amount: 4200 }

// ---------------------------------------------------------------------------------------------

test('parseIdempotencyKey: bare tokens, sf-strings, and what is malformed', () => {
  assert.equal(parseIdempotencyKey('abc-123'), 'abc-123')
  assert.equal(parseIdempotencyKey('"abc-123"'), 'abc-123')
  assert.equal(parseIdempotencyKey('"a\\"b\\\\c"'), 'a"b\\c')
  assert.equal(parseIdempotencyKey('"abc";v=1'), 'abc', 'sf parameters are ignored')
  for (const bad of ['', '   ', '""', '"abc', '"abc"x', '"a\\x"', '"a"b"', 'a\tb', 'a\x00b', '"a\x7fb"', undefined, 42]) {
    assert.equal(parseIdempotencyKey(bad), null, JSON.stringify(bad))
  }
})

test('idempotency(): options are validated', () => {
  assert.throws(() => idempotency(), TypeError)
  assert.throws(() => idempotency({}), TypeError)
  assert.throws(() => idempotency({ service: fx.service, ttl: 0 }), TypeError)
  assert.throws(() => idempotency({ service: fx.service, methods: 'POST' }), TypeError)
  assert.throws(() => idempotency({ service: fx.service, tenant: 'acme' }), TypeError)
  assert.throws(() => idempotency({ service: { initializeRequest() {} } }), /reap/)
  assert.equal(typeof idempotency({ service: { initializeRequest() {} }, reap: false }), 'function')
})

for (const kind of KINDS) {
  test(`${kind}: a missing key is 400 when required; the handler does not run and no key is stored`, async () => {
    await withServer(kind, {}, async ({ base, app }) => {
      const before = await keyCount()
      const r = await call(base, { body: CART })
      assertError(r, 400, 'invalid_data', 'IDEMPOTENCY_KEY_MISSING')
      assertProtocolHeaders(r, null)
      assert.equal(app.calls.size, 0)
      assert.equal(await keyCount(), before)
    })
  })

  test(`${kind}: malformed keys are 400 (quoting, empty, control characters, repeated header, refused by the service)`, async () => {
    await withServer(kind, {}, async ({ base, app }) => {
      const before = await keyCount()
      for (const bad of ['"abc', '""', '"a\\x"', '"a"b"', 'a\tb']) {
        const r = await call(base, { key: bad, body: CART })
        assertError(r, 400, 'invalid_data', 'IDEMPOTENCY_KEY_MALFORMED')
        assertProtocolHeaders(r, null)
      }
      const twice = await rawPost(base, '/api/orders', { 'idempotency-key': ['k1', 'k2'], 'content-type': 'application/json' }, JSON.stringify(CART))
      assertError(twice, 400, 'invalid_data', 'IDEMPOTENCY_KEY_MALFORMED')
      // Syntactically a key, but the service refuses it (over 255 characters; not ASCII): its typed invalid_data.
      for (const refused of ['k'.repeat(256), 'caf\u00e9']) {
        const r = await call(base, { key: refused, body: CART })
        assertError(r, 400, 'invalid_data', 'INVALID_ARGUMENT')
        assert.equal(header(r, 'access-control-expose-headers'), `${PRE_EXPOSED}, Idempotency-Key, Idempotent-Replayed`)
      }
      assert.equal(app.calls.size, 0)
      assert.equal(await keyCount(), before)
    })
  })

  test(`${kind}: other methods pass straight through, without a key and without our headers`, async () => {
    await withServer(kind, {}, async ({ base, errors }) => {
      const r = await call(base, { method: 'GET', path: '/api/orders' })
      assert.equal(r.status, 200)
      assert.deepEqual(r.json, { passthrough: true, sawIdempotency: false })
      assert.equal(header(r, 'idempotency-key'), null)
      assert.equal(header(r, 'access-control-expose-headers'), PRE_EXPOSED)
      // A handler that throws: the application's error handler (Express) or a 500 from the middleware (node:http).
      const boom = await call(base, { method: 'GET', path: '/api/boom' })
      assertError(boom, 500, 'unknown_error', 'unknown_error')
      assert.equal(header(boom, 'x-app-error-handler'), kind === 'node' ? null : '1')
      assert.deepEqual(errors.map((e) => e.message), kind === 'node' ? ['boom'] : [])
    })
  })

  test(`${kind}: not required: a missing key gets a fresh one, returned in Idempotency-Key, and it replays`, async () => {
    await withServer(kind, { required: false }, async ({ base, app }) => {
      const r = await call(base, { body: CART })
      assert.equal(r.status, 201, r.text)
      const k = header(r, 'idempotency-key')
      assert.match(k, UUID)
      assertProtocolHeaders(r, k)
      assert.deepEqual(await effects(k), { reserve: 1, charge: 1, order: 1 })
      const rows = await keyRows(k)
      assert.equal(rows.length, 1)
      assert.equal(rows[0].recovery_point, 'finished')
      const again = await call(base, { key: k, body: CART })
      assert.equal(again.status, 201)
      assert.equal(header(again, 'idempotent-replayed'), 'true')
      assert.equal(again.text, r.text)
      assert.equal(app.calls.get(k), 1)
    })
  })

  test(`${kind}: two concurrent requests with one key: one 201, one 409; the retry is a byte-identical replay`, async () => {
    await withServer(kind, {}, async ({ base, app }) => {
      const k = uniq('race')
      const g = app.gate(k)
      const first = call(base, { key: k, body: CART })
      await g.enteredP // the first request holds the key and is inside its handler
      const second = await call(base, { key: k, body: CART })
      assertError(second, 409, 'conflict', 'IDEMPOTENCY_KEY_LOCKED')
      assertProtocolHeaders(second, k)
      // Retry-After: whole seconds until the first request's lease (10 s, just taken) can expire.
      const retryAfter = Number(header(second, 'retry-after'))
      assert.ok(Number.isInteger(retryAfter) && retryAfter >= 8 && retryAfter <= 10, `Retry-After ${header(second, 'retry-after')}`)
      g.release()
      const r1 = await first
      assert.equal(r1.status, 201, r1.text)
      assertProtocolHeaders(r1, k)
      assert.equal(header(r1, 'idempotent-replayed'), null)
      assert.equal(r1.json.order_id, `order_${k}`)
      assert.equal(r1.json.path, '/api/orders', 'the fingerprint path includes the mount point')
      assert.equal(app.calls.get(k), 1)

      const r3 = await call(base, { key: k, body: CART })
      assert.equal(r3.status, 201)
      assert.equal(header(r3, 'idempotent-replayed'), 'true')
      assert.equal(r3.text, r1.text, 'same bytes as the first response')
      assert.equal(header(r3, 'content-type'), header(r1, 'content-type'))
      assertProtocolHeaders(r3, k)
      assert.equal(app.calls.get(k), 1, 'the handler does not run for a replay')
      assert.deepEqual(await effects(k), { reserve: 1, charge: 1, order: 1 })
      const [row] = await keyRows(k)
      assert.deepEqual({ ...row }, { idempotency_key: k, recovery_point: 'finished', request_method: 'POST', request_path: '/api/orders' })
    })
  })

  test(`${kind}: the sf-string form and the bare token name the same key; a query string is not part of the fingerprint`, async () => {
    await withServer(kind, {}, async ({ base, app }) => {
      const k = `${uniq('q')}"with\\quote`
      const quoted = `"${k.replace(/[\\"]/g, (c) => `\\${c}`)}"`
      const r1 = await call(base, { key: quoted, body: CART })
      assert.equal(r1.status, 201, r1.text)
      assertProtocolHeaders(r1, k)
      assert.equal((await keyRows(k)).length, 1, 'stored unquoted and unescaped')
      const r2 = await call(base, { key: k, body: CART, path: '/api/orders?utm=x' })
      assert.equal(r2.status, 201)
      assert.equal(header(r2, 'idempotent-replayed'), 'true')
      assert.equal(r2.text, r1.text)
      assert.equal(app.calls.get(k), 1)
    })
  })

  test(`${kind}: the same key for a different body or path is 422; the stored request is untouched`, async () => {
    await withServer(kind, {}, async ({ base, app }) => {
      const k = uniq('reuse')
      const r1 = await call(base, { key: k, body: CART })
      assert.equal(r1.status, 201, r1.text)
      const otherBody = await call(base, { key: k, body: { ...CART, amount: 1 } })
      assertError(otherBody, 422, 'duplicate_error', 'IDEMPOTENCY_KEY_REUSED')
      assertProtocolHeaders(otherBody, k)
      const otherPath = await call(base, { key: k, body: CART, path: '/api/other' })
      assertError(otherPath, 422, 'duplicate_error', 'IDEMPOTENCY_KEY_REUSED')
      assertProtocolHeaders(otherPath, k)
      assert.equal(app.calls.get(k), 1)
      const replay = await call(base, { key: k, body: CART })
      assert.equal(replay.text, r1.text)
      assert.deepEqual(await effects(k), { reserve: 1, charge: 1, order: 1 })
    })
  })

  test(`${kind}: a stage that fails answers 500; the retry resumes at the recovery point and finishes exactly once`, async () => {
    await withServer(kind, {}, async ({ base, app, errors }) => {
      const k = uniq('resume')
      app.failOnce.add(k)
      const r1 = await call(base, { key: k, body: CART })
      assert.equal(r1.status, 500, r1.text)
      assert.equal(r1.json.type, 'unknown_error')
      assertProtocolHeaders(r1, k)
      if (kind === 'node') {
        assert.deepEqual(errors.map((e) => e.message), ['card network timeout'], 'node:http reports the handler failure')
      } else {
        assert.equal(header(r1, 'x-app-error-handler'), '1', 'Express: the failure went to next(err)')
      }
      // Stage 1 committed, stage 2's INSERT rolled back with it.
      assert.deepEqual(await effects(k), { reserve: 1 })
      assert.equal((await keyRows(k))[0].recovery_point, 'reserved')

      const r2 = await call(base, { key: k, body: CART })
      assert.equal(r2.status, 201, r2.text)
      assert.equal(header(r2, 'x-resumed-from'), 'reserved')
      assert.equal(header(r2, 'idempotent-replayed'), null)
      assertProtocolHeaders(r2, k)
      assert.deepEqual(await effects(k), { reserve: 1, charge: 1, order: 1 })

      const r3 = await call(base, { key: k, body: CART })
      assert.equal(header(r3, 'idempotent-replayed'), 'true')
      assert.equal(r3.status, 201)
      assert.equal(r3.text, r2.text)
      assert.equal(app.calls.get(k), 2)
      assert.deepEqual(await effects(k), { reserve: 1, charge: 1, order: 1 })
    })
  })

  test(`${kind}: a service failure outside the protocol goes to next(err) under Express, 500 JSON on node:http`, async () => {
    const failing = {
      initializeRequest: async () => {
        throw Object.assign(new Error('database unreachable'), { type: 'database_error', code: 'CONNECTION_FAILED' })
      },
      reap: async () => 0,
    }
    await withServer(kind, { service: failing }, async ({ base, app }) => {
      const k = uniq('down')
      const r = await call(base, { key: k, body: CART })
      assertError(r, 500, 'database_error', 'CONNECTION_FAILED')
      assertProtocolHeaders(r, k)
      assert.equal(header(r, 'x-app-error-handler'), kind === 'node' ? null : '1')
      assert.equal(app.calls.size, 0)
    })
  })

  test(`${kind}: tenant: one client key is a separate key per tenant; an unscoped request cannot name a tenant's key`, async () => {
    const tenant = (req) => req.headers['x-tenant-id'] || undefined
    await withServer(kind, { tenant }, async ({ base, app }) => {
      const k = uniq('tk')
      const [ta, tb] = [uniq('acme'), uniq('globex')]
      const as = (t) => ({ 'x-tenant-id': t })
      const ra = await call(base, { key: k, body: CART, headers: as(ta) })
      assert.equal(ra.status, 201, ra.text)
      assertProtocolHeaders(ra, k)
      assert.equal(header(ra, 'x-tenant'), ta, 'req.idempotency.tenant')
      // Tenant B's identical request is neither "in flight" nor a replay of A's: its own key.
      const rb = await call(base, { key: k, body: CART, headers: as(tb) })
      assert.equal(rb.status, 201, rb.text)
      assert.equal(header(rb, 'idempotent-replayed'), null)
      assertProtocolHeaders(rb, k)
      for (const t of [ta, tb]) assert.equal((await keyRows(`${t}/${k}`))[0]?.recovery_point, 'finished', `stored under ${t}`)
      const ra2 = await call(base, { key: k, body: CART, headers: as(ta) })
      assert.equal(header(ra2, 'idempotent-replayed'), 'true')
      assert.equal(ra2.text, ra.text)
      // Unscoped: the stored form of A's key is refused, the bare key is a key of its own.
      const sneak = await call(base, { key: `${ta}/${k}`, body: CART })
      assertError(sneak, 400, 'invalid_data', 'IDEMPOTENCY_KEY_MALFORMED')
      const plain = await call(base, { key: k, body: CART })
      assert.equal(plain.status, 201, plain.text)
      assert.equal(header(plain, 'idempotent-replayed'), null)
      assert.equal(header(plain, 'x-tenant'), 'undefined')
      assert.equal((await keyRows(k)).length, 1)
      assert.deepEqual(await effects(k), { reserve: 3, charge: 3, order: 3 }, 'each tenant and the unscoped request ran once')
      assert.equal(app.calls.get(k), 3)
      // A tenant id the service refuses is the request's fault: 400.
      const badTenant = await call(base, { key: uniq('bt'), body: CART, headers: as('a/b') })
      assertError(badTenant, 400, 'invalid_data', 'INVALID_ARGUMENT')
    })
  })

  test(`${kind}: ttl: keys older than ttl are reaped in the background, triggered by requests`, async () => {
    await withServer(kind, { ttl: 1000 }, async ({ base, errors }) => {
      const old = uniq('old')
      assert.equal((await call(base, { key: old, body: CART })).status, 201)
      await sleep(1200)
      assert.equal((await keyRows(old)).length, 1, 'nothing reaps without a request')
      const fresh = uniq('fresh')
      assert.equal((await call(base, { key: fresh, body: CART })).status, 201)
      const deadline = Date.now() + 5000
      while ((await keyRows(old)).length && Date.now() < deadline) await sleep(25)
      assert.equal((await keyRows(old)).length, 0, 'the old key was reaped')
      assert.equal((await keyRows(fresh)).length, 1, 'the fresh key was kept')
      assert.deepEqual(errors, [])
    })
  })

  test(`${kind}: reap runs at most once per min(ttl, 60 s), never blocks a request, and its failures are reported`, async () => {
    const reaps = []
    let behaviour = 'ok'
    const spy = {
      initializeRequest: (...a) => fx.service.initializeRequest(...a),
      workStage: (...a) => fx.service.workStage(...a),
      reap: (o) => {
        reaps.push(o)
        if (behaviour === 'fail') return Promise.reject(Object.assign(new Error('reap failed'), { code: 'X' }))
        if (behaviour === 'hang') return new Promise(() => {})
        return Promise.resolve(0)
      },
    }
    await withServer(kind, { service: spy, ttl: 400 }, async ({ base, errors }) => {
      behaviour = 'fail'
      for (let i = 0; i < 3; i++) assert.equal((await call(base, { key: uniq('t'), body: CART })).status, 201)
      assert.equal(reaps.length, 1, 'one reap for three quick requests')
      assert.deepEqual(reaps[0], { olderThanMs: 400 })
      assert.deepEqual(errors.map((e) => e.message), ['reap failed'])
      await sleep(450)
      behaviour = 'hang'
      assert.equal((await call(base, { key: uniq('t'), body: CART })).status, 201)
      assert.equal(reaps.length, 2, 'the interval passed: a second reap, after the first failed')
      await sleep(450)
      // The second reap never settles: requests still complete, and no reap piles up behind it.
      const t0 = Date.now()
      assert.equal((await call(base, { key: uniq('t'), body: CART })).status, 201)
      assert.ok(Date.now() - t0 < 5000)
      assert.equal(reaps.length, 2, 'no second reap while one is in flight')
    })
    // Under 60 s the interval is ttl; with the default 24 h ttl it is a minute, tested above only by its cap.
  })
}

test('node: a JSON body is parsed from the stream; bad JSON is 400, an oversized body 413, raw text is fingerprinted as text', async () => {
  await withServer('node', { limit: 64 }, async ({ base, app }) => {
    const k = uniq('json')
    const r = await call(base, { key: k, body: { cart_id: 'c1' } })
    assert.equal(r.status, 201, r.text)
    assert.equal(r.json.cart, 'c1', 'the handler saw req.body parsed')
    const badJson = await call(base, { key: uniq('bad'), body: '{"cart_id":', headers: { 'content-type': 'application/json' } })
    assertError(badJson, 400, 'invalid_data', 'INVALID_JSON')
    const big = await call(base, { key: uniq('big'), body: { pad: 'x'.repeat(100) } })
    assertError(big, 413, 'invalid_data', 'PAYLOAD_TOO_LARGE')
    const t = uniq('text')
    const text1 = await call(base, { key: t, body: 'hello', headers: { 'content-type': 'text/plain' } })
    assert.equal(text1.status, 201, text1.text)
    const text2 = await call(base, { key: t, body: 'other', headers: { 'content-type': 'text/plain' } })
    assertError(text2, 422, 'duplicate_error', 'IDEMPOTENCY_KEY_REUSED')
    assert.equal(app.calls.get(t), 1)
  })
})

test('express4: a body its json parser skipped (text/plain) is still read for the fingerprint', async () => {
  // Express 4's json parser leaves req.body = {} on requests it does not parse; the fingerprint
  // must still tell two different texts apart.
  await withServer('express4', {}, async ({ base }) => {
    const t = uniq('text4')
    assert.equal((await call(base, { key: t, body: 'hello', headers: { 'content-type': 'text/plain' } })).status, 201)
    const r = await call(base, { key: t, body: 'other', headers: { 'content-type': 'text/plain' } })
    assertError(r, 422, 'duplicate_error', 'IDEMPOTENCY_KEY_REUSED')
  })
})

test('node: a finished key whose stored response_code is no HTTP status is answered 500 on replay, not left hanging', async () => {
  await withServer('node', {}, async ({ base }) => {
    const key = uniq('badcode')
    await fx.service.initializeRequest(key, 'POST', CART, '/api/orders')
    await fx.service.workStage(key, async () => ({ response_code: 1000, response_body: { odd: true } }))
    const r = await call(base, { key, body: CART })
    assertError(r, 500, 'unexpected_state', 'INVALID_RESPONSE_CODE')
    assertProtocolHeaders(r, key)
  })
})

test('node: a client gone before its body was read settles the middleware and is reported, nothing answered', async () => {
  const reported = []
  const mw = idempotency({ service: fx.service, onError: (e) => reported.push(e) })
  const server = http.createServer((req, res) => {
    // An async step before the middleware, during which the client leaves.
    req.on('close', () => {
      mw(req, res, () => res.end('handler ran')).then(() => reported.push('settled'))
    })
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  try {
    const { port } = server.address()
    const sock = require('node:net').connect(port, '127.0.0.1')
    await new Promise((r) => sock.on('connect', r))
    sock.write(`POST /api/orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: ${uniq('gone')}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"partial":`)
    await sleep(100)
    sock.destroy()
    for (let i = 0; i < 100 && !reported.includes('settled'); i++) await sleep(20)
    assert.ok(reported.includes('settled'), `the middleware settled (reported: ${reported.map(String)})`)
    assert.ok(reported.some((e) => e instanceof Error && e.aborted), `the abort was reported: ${reported.map(String)}`)
  } finally {
    server.closeAllConnections()
    await new Promise((r) => server.close(r))
  }
})
