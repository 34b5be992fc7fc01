#!/usr/bin/env node
// An idempotent checkout over plain node:http behind the idempotency() middleware, on the
// embedded SQLite default.
//
// POST /checkout with an `Idempotency-Key` header walks three work stages:
//   started → stock_reserved → payment_captured → finished (order created, 201 stored)
// Each stage's writes and its recovery point commit together, so a request that dies
// half-way is resumed by its retry from the last committed stage, and a retry of a finished
// request gets the stored response back instead of a second charge.
//
// The stages are built from the request body and the key (`checkoutStages`), so the completer
// can rebuild them from what the key stores and finish a request whose client went away.
//
// The script starts the server, fires duplicate, concurrent and failing-then-retried
// requests at it, has one client vanish after the charge (the completer finishes its order),
// prints what happened and exits 0 only if every order, charge and reservation exists
// exactly once.
const http = require('node:http')
const dc = require('node:diagnostics_channel')
const { IdempotencyKeyService } = require('medusa-idempotency-native')
const { idempotency } = require('medusa-idempotency-native/middleware')

const run = Date.now().toString(36)
const failOnce = new Set() // keys whose first charge attempt "times out" at the card network
const vanishAfterCharge = new Set() // keys whose client drops the connection once the charge is committed

async function setupTables(service) {
  const key = await service.initializeRequest('', 'SETUP', null, '/setup')
  await service.workStage(key.idempotency_key, async (tx) => {
    await tx.query('CREATE TABLE IF NOT EXISTS reservations (idem_key text, cart_id text, qty integer)')
    await tx.query('CREATE TABLE IF NOT EXISTS charges (idem_key text, amount integer)')
    await tx.query('CREATE TABLE IF NOT EXISTS orders (idem_key text, cart_id text, total integer)')
    return { response_code: 200, response_body: null }
  })
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

/**
 * The route's stages, built from the request body and the key: what the handler runs, and
 * what the completer rebuilds from the key's stored `request_params`. Each reads only what the
 * key and the database hold, so it is safe to run again from another process.
 */
function checkoutStages(body, key) {
  // The key as stored, unique across tenants: what side rows and a payment provider are keyed by.
  const k = key.scoped_key
  return {
    started: async (tx) => {
      await tx.query('INSERT INTO reservations VALUES ($1, $2, $3)', [k, body.cart_id, body.qty])
      return { recovery_point: 'stock_reserved' }
    },
    stock_reserved: async (tx) => {
      await tx.query('INSERT INTO charges VALUES ($1, $2)', [k, body.amount])
      if (failOnce.delete(k)) throw Object.assign(new Error('card network timeout'), { status: 502 })
      return { recovery_point: 'payment_captured' }
    },
    payment_captured: async (tx) => {
      await tx.query('INSERT INTO orders VALUES ($1, $2, $3)', [k, body.cart_id, body.amount])
      return { response_code: 201, response_body: { order: `order_${k}`, cart_id: body.cart_id, total: body.amount } }
    },
  }
}

/**
 * The route, behind the middleware: it only runs for a key that is not finished, and
 * `req.idempotency.run` walks the stages from the key's recovery point. The middleware has
 * already answered missing keys (400), requests in flight (409), reuse (422) and replays.
 */
async function checkout(req, res) {
  const idem = req.idempotency
  const k = idem.key.idempotency_key
  const walked = []
  const stages = {}
  // req.body was parsed by the middleware (node:http has no body parser).
  for (const [at, work] of Object.entries(checkoutStages(req.body, idem.key))) {
    stages[at] = async (tx) => {
      walked.push(at)
      return work(tx)
    }
  }
  if (vanishAfterCharge.delete(k)) {
    // The client's connection drops once the charge is committed, and the handler stops there,
    // as a server killed between two stages would: the order is never created by this request.
    stages.payment_captured = async () => {
      req.socket.destroy()
      throw Object.assign(new Error('the client went away'), { gone: true })
    }
  }
  try {
    // Accepted when its first stage commits; node:http has no req.route, so the route is named
    // here, as the completer registers it.
    const key = await idem.run(stages, { route: 'POST /checkout' })
    res.setHeader('x-stages-run', [...walked, 'finished'].join(','))
    idem.respond(key) // the stored response: a replay later sends these same bytes
  } catch (e) {
    if (e.gone) return
    res.setHeader('x-stages-run', walked.join(','))
    send(res, e.status ?? ({ conflict: 409 }[e.type] ?? 500), { message: e.message, code: e.code })
  }
}

function request(port, key, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body)
    const req = http.request(
      { port, method: 'POST', path: '/checkout', headers: { 'content-type': 'application/json', 'idempotency-key': key } },
      (res) => {
        let text = ''
        res.on('data', (c) => (text += c))
        res.on('end', () =>
          resolve({
            status: res.statusCode,
            replayed: res.headers['idempotent-replayed'] === 'true',
            walked: (res.headers['x-stages-run'] || '').split(',').filter(Boolean),
            body: JSON.parse(text),
          }),
        )
      },
    )
    req.on('error', reject)
    req.end(data)
  })
}

async function main() {
  const service = await IdempotencyKeyService.connect() // DATABASE_URL, else sqlite://./idempotency.db
  await service.migrate()
  await setupTables(service)

  // Count what the service reports on diagnostics_channel, as a metrics exporter would.
  const events = {}
  for (const name of ['stage:end', 'stage:error', 'conflict', 'replay', 'completer:pass', 'completer:complete']) {
    dc.subscribe(`medusa-idempotency:${name}`, () => (events[name] = (events[name] ?? 0) + 1))
  }

  const guard = idempotency({ service }) // Idempotency-Key required on POST and PATCH
  const server = http.createServer((req, res) => guard(req, res, () => checkout(req, res)))
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address()
  const say = (...a) => console.log(...a)
  const tally = { requests: 0, created: 0, replays: 0, conflicts: 0, failed: 0, refused: 0, vanished: 0 }
  const fire = async (key, body) => {
    tally.requests++
    let r
    try {
      r = await request(port, key, body)
    } catch (e) {
      if (e.code !== 'ECONNRESET') throw e
      tally.vanished++
      return { status: 'no answer (connection reset)', walked: [], body: {} }
    }
    if (r.status === 201 && !r.replayed) tally.created++
    else if (r.replayed) tally.replays++
    else if (r.status === 409) tally.conflicts++
    else if (r.status === 422) tally.refused++
    else tally.failed++
    return r
  }

  say(`checkout demo on ${process.env.DATABASE_URL ? 'DATABASE_URL' : 'the embedded SQLite default (./idempotency.db)'}\n`)

  const a = `demo-${run}-a`
  const cartA = { cart_id: 'cart_a', qty: 1, amount: 4200 }
  let r = await fire(a, cartA)
  say(`1. first request ${a}: ${r.status}, walked ${r.walked.join(' → ')}`)
  r = await fire(a, cartA)
  say(`2. client retry of ${a}: ${r.status}, Idempotent-Replayed: ${r.replayed}, order ${r.body.order}`)

  const b = `demo-${run}-b`
  const cartB = { cart_id: 'cart_b', qty: 2, amount: 1999 }
  const burst = await Promise.all(Array.from({ length: 8 }, () => fire(b, cartB)))
  const codes = burst.map((x) => x.status).sort()
  say(`3. 8 concurrent requests with ${b}: statuses ${codes.join(',')}`)
  for (;;) {
    r = await fire(b, cartB)
    if (r.status !== 409) break
    await new Promise((res) => setTimeout(res, 100))
  }
  say(`   retry after they settle: ${r.status}, replayed ${r.replayed}, order ${r.body.order}`)

  const c = `demo-${run}-c`
  const cartC = { cart_id: 'cart_c', qty: 3, amount: 500 }
  failOnce.add(c)
  r = await fire(c, cartC)
  say(`4. ${c} fails mid-way: ${r.status} "${r.body.message}", walked ${r.walked.join(' → ')} (reservation kept, charge rolled back)`)
  r = await fire(c, cartC)
  say(`   its retry resumes: ${r.status}, walked ${r.walked.join(' → ')}`)

  r = await fire(a, { ...cartA, amount: 1 })
  say(`5. ${a} reused for a different cart total: ${r.status} ${r.body.code}`)

  // The completer: the same stages, rebuilt from what the key stores, for keys whose client
  // gave up half-way. A server runs it with start(); here one pass is run by hand.
  const idleMs = 200
  const completer = service.completer({ routes: { 'POST /checkout': checkoutStages }, idleMs })
  const d = `demo-${run}-d`
  const cartD = { cart_id: 'cart_d', qty: 1, amount: 7300 }
  vanishAfterCharge.add(d)
  r = await fire(d, cartD)
  const left = await service.retrieve(d)
  say(`6. ${d}: the client vanishes after the charge: ${r.status}; the key is left at ${left.recovery_point}`)
  await new Promise((res) => setTimeout(res, idleMs + 50)) // no progress for idleMs: abandoned
  const completedByCompleter = []
  const onComplete = (e) => completedByCompleter.push(e.key)
  dc.subscribe('medusa-idempotency:completer:complete', onComplete)
  const pass = await completer.runOnce()
  dc.unsubscribe('medusa-idempotency:completer:complete', onComplete)
  const finished = await service.retrieve(d)
  say(`   a completer pass: completed ${pass.completed}, skipped ${pass.skipped}, failed ${pass.failed}; ${d} is ${finished.recovery_point}, order ${finished.response_body.order}`)
  r = await fire(d, cartD)
  say(`   the client comes back: ${r.status}, Idempotent-Replayed: ${r.replayed}, order ${r.body.order}`)
  const vanishedOk = completedByCompleter.includes(d) && r.status === 201 && r.replayed && r.body.order === `order_${d}`

  // Check the invariants straight from the database.
  const probe = await service.initializeRequest('', 'CHECK', null, '/check')
  const counts = {}
  await service.workStage(probe.idempotency_key, async (tx) => {
    for (const t of ['reservations', 'charges', 'orders']) {
      counts[t] = await tx.query(`SELECT idem_key, count(*) AS n FROM ${t} WHERE idem_key IN ($1, $2, $3, $4) GROUP BY idem_key`, [a, b, c, d])
    }
    return { response_code: 200 }
  })
  server.close()
  await service.close()

  say(`\nevents seen on diagnostics_channel: ${Object.entries(events).map(([n, c]) => `${n} ${c}`).join(', ')}`)
  say(`${tally.requests} requests: ${tally.created} orders created, ${tally.replays} replays, ${tally.conflicts} refused while in flight (409), ${tally.refused} refused as reuse (422), ${tally.failed} failed mid-way, ${tally.vanished} client vanished (its order created by the completer)`)
  let ok = true
  for (const [table, rows] of Object.entries(counts)) {
    const line = rows.map((x) => `${x.idem_key.slice(-1)}=${x.n}`).join(' ')
    const exact = rows.length === 4 && rows.every((x) => Number(x.n) === 1)
    ok &&= exact
    say(`${table.padEnd(12)} per key: ${line}  ${exact ? 'exactly once' : 'WRONG'}`)
  }
  ok &&= tally.created === 3 && tally.failed === 1 && tally.refused === 1 && tally.vanished === 1 && vanishedOk
  say(ok ? '\nevery order, charge and reservation exists exactly once' : '\nINVARIANT BROKEN')
  process.exit(ok ? 0 : 1)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
