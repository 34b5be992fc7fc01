'use strict'
// Child processes for completer.test.js, and the route they share with it. Not a test file
// (node --test runs *.test.js only).
//
//   node completer-child.js server <url> <tenant>     an HTTP server behind the middleware whose
//        handler stops after the route's first stage (`x-pause: between`) or inside its second,
//        after that stage's side row is written (`x-pause: inside`), and prints where; the
//        parent SIGKILLs it there.
//   node completer-child.js completer <url> <tenant>  prints `ready`, waits for `go` on stdin,
//        runs one completer pass and prints `result <json>`.
//   node completer-child.js idle <url>                starts a completer (interval 60 s) and
//        does nothing else: the process must exit by itself after the first pass.
//   node completer-child.js hang <url>                a completer pass whose `POST /hang` stage
//        prints `inside <key>` and never returns; the parent SIGKILLs it there.
const http = require('node:http')

/** Three stages, each writing one side row for (key, stage); the response names the order. */
const checkout = (params, key) => {
  const side = (tx, stage) => tx.query('INSERT INTO completer_side (idem_key, stage, pid) VALUES ($1, $2, $3)', [key.idempotency_key, stage, process.pid])
  return {
    started: async (tx) => {
      await side(tx, 'started')
      return { recovery_point: 'reserved' }
    },
    reserved: async (tx) => {
      await side(tx, 'reserved')
      return { recovery_point: 'charged' }
    },
    charged: async (tx) => {
      await side(tx, 'charged')
      return { response_code: 201, response_body: { order: `order_${key.idempotency_key}`, cart: params.cart, amount: params.amount } }
    },
  }
}

const LOCK_TIMEOUT_MS = 200
const IDLE_MS = 400

const print = (line) => process.stdout.write(`${line}\n`)
const forever = () => new Promise(() => setInterval(() => {}, 1 << 30))

async function server(url, tenant) {
  const { IdempotencyKeyService } = require('..')
  const { idempotency } = require('medusa-idempotency-native/middleware')
  const service = await IdempotencyKeyService.connect({ url, lockTimeoutMs: LOCK_TIMEOUT_MS })
  const mw = idempotency({ service, tenant: () => tenant, reap: false })
  const srv = http.createServer((req, res) =>
    mw(req, res, async () => {
      const idem = req.idempotency
      const k = idem.key.idempotency_key
      const stages = checkout(req.body, idem.key)
      await idem.accept({ route: 'POST /checkout' })
      await idem.service.workStage(k, stages.started, { recoveryPoint: 'started' })
      if (req.headers['x-pause'] === 'between') {
        print(`between ${k}`)
        return forever()
      }
      await idem.service.workStage(k, async (tx) => {
        const r = await stages.reserved(tx)
        print(`inside ${k}`)
        await forever()
        return r
      }, { recoveryPoint: 'reserved' })
    }),
  )
  srv.listen(0, '127.0.0.1', () => print(`listening ${srv.address().port}`))
}

async function completer(url, tenant) {
  const { IdempotencyKeyService, channels } = require('..')
  const service = await IdempotencyKeyService.connect({ url, lockTimeoutMs: LOCK_TIMEOUT_MS })
  const c = service.forTenant(tenant).completer({ routes: { 'POST /checkout': checkout }, idleMs: IDLE_MS, limit: 100 })
  const completed = []
  channels.completerComplete.subscribe((e) => completed.push(e.key))
  let line = ''
  process.stdin.on('data', async (chunk) => {
    line += chunk
    if (!line.includes('go')) return
    process.stdin.pause()
    const startedAt = Date.now()
    const result = await c.runOnce()
    const endedAt = Date.now()
    print(`result ${JSON.stringify({ pid: process.pid, result, completed, startedAt, endedAt })}`)
    await service.close()
    process.exit(0)
  })
  print('ready')
}

async function idle(url) {
  const { IdempotencyKeyService, channels } = require('..')
  const service = await IdempotencyKeyService.connect({ url })
  channels.completerPass.subscribe((e) => print(`pass ${JSON.stringify({ completed: e.completed, skipped: e.skipped })}`))
  service.completer({ routes: { 'POST /nothing-here': checkout }, intervalMs: 60_000 }).start()
  process.on('exit', () => print('exit'))
}

async function hang(url) {
  const { IdempotencyKeyService } = require('..')
  const service = await IdempotencyKeyService.connect({ url, lockTimeoutMs: LOCK_TIMEOUT_MS })
  const stuck = (params, key) => ({
    reserved: async () => {
      print(`inside ${key.idempotency_key}`)
      return forever()
    },
  })
  await service.completer({ routes: { 'POST /hang': stuck }, idleMs: IDLE_MS }).runOnce()
}

if (require.main === module) {
  const [mode, url, tenant] = process.argv.slice(2)
  const run = { server, completer, idle, hang }[mode]
  if (!run) throw new Error(`unknown mode ${mode}`)
  run(url, tenant).catch((e) => {
    console.error(e)
    process.exit(1)
  })
}

module.exports = { checkout, LOCK_TIMEOUT_MS, IDLE_MS }
