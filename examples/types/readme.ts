// The README's TypeScript examples, compiled by `npm test` (tsc --noEmit against the package's
// own types: lib/types.d.ts, index.d.ts, lib/middleware.d.ts, lib/otel.d.ts), so the documented API cannot
// drift from the declared one. Never run.
import dc from 'node:diagnostics_channel'
import http from 'node:http'
import express from 'express'
import { IdempotencyKeyService, TransactionManager, channels, type IdempotencyKey, type StageEndEvent, type ConflictEvent, type CompleterRoute, type CompleterStage, type CompleterPassResult, type CompleterGiveUpEvent } from 'medusa-idempotency-native'
import { idempotency } from 'medusa-idempotency-native/middleware'
import { instrument } from 'medusa-idempotency-native/otel'
import { tracingChannels, type IdempotencyError } from 'medusa-idempotency-native'

export async function api(req: express.Request, res: express.Response) {
  const service = await IdempotencyKeyService.connect('postgres://postgres@127.0.0.1:5432/app')
  await service.migrate()
  let key = await service.initializeRequest(req.get('Idempotency-Key') ?? '', req.method, req.body, req.path)
  while (key.recovery_point !== 'finished') {
    switch (key.recovery_point) {
      case 'started':
        key = await service.workStage(key.idempotency_key, async (tx: TransactionManager) => {
          await tx.query('INSERT INTO reservations (cart_id) VALUES ($1)', [req.body.cart_id])
          return { recovery_point: 'stock_reserved' }
        }, { recoveryPoint: 'started' })
        break
      case 'stock_reserved':
        key = await service.workStage(key.idempotency_key, async (tx) => {
          const [order] = await tx.query('INSERT INTO orders (cart_id) VALUES ($1) RETURNING id', [req.body.cart_id])
          return { response_code: 201, response_body: { order_id: order.id } }
        }, { recoveryPoint: 'stock_reserved' })
        break
    }
  }
  res.status(key.response_code!).json(key.response_body)
}

export async function expressApp() {
  const service = await IdempotencyKeyService.connect(process.env.DATABASE_URL)
  await service.migrate()
  const app = express()
  app.use(express.json())
  app.use(idempotency({ service }))
  const requireCustomer: express.RequestHandler = (req, res, next) => (req.headers.authorization ? next() : res.status(401).end())
  app.post('/store/carts/:id/complete', requireCustomer, async (req, res, next) => {
    try {
      const idem = req.idempotency!
      const key = await idem.run({
        started: async (tx) => {
          await tx.query('INSERT INTO reservations (idem_key, cart_id) VALUES ($1, $2)', [idem.key.scoped_key, req.params.id])
          return { recovery_point: 'stock_reserved' }
        },
        stock_reserved: async (tx) => {
          const [order] = await tx.query('INSERT INTO orders (idem_key, cart_id) VALUES ($1, $2) RETURNING id', [idem.key.scoped_key, req.params.id])
          return { response_code: 201, response_body: { order_id: order.id } }
        },
      })
      idem.respond(key)
    } catch (e) {
      next(e)
    }
  })
  return app
}

export function nodeHttp(service: IdempotencyKeyService) {
  const mw = idempotency({ service, ttl: 24 * 3600_000 })
  return http.createServer((req, res) =>
    mw(req, res, async () => {
      const idem = req.idempotency!
      const key = await idem.run({
        started: async (tx) => {
          await tx.query('INSERT INTO charges (idem_key, amount) VALUES ($1, $2)', [idem.key.scoped_key, (req as any).body.amount])
          return { response_code: 201, response_body: { charged: true } }
        },
      }, { route: 'POST /charges' })
      idem.respond(key)
    }),
  )
}

export function reaping(service: IdempotencyKeyService) {
  setInterval(() => service.reap({ olderThanMs: 24 * 3600_000 }).catch(console.error), 10 * 60_000).unref()
}

export async function completeAbandoned(service: IdempotencyKeyService, stagesFor: (key: IdempotencyKey) => Record<string, CompleterStage> | undefined) {
  for (const listed of await service.listAbandoned({ idleMs: 5 * 60_000, limit: 50 })) {
    const stages = stagesFor(listed) // from listed.request_method, request_path, request_params
    if (!stages) continue // not a route this loop knows
    try {
      // The same request again: a free lease is claimed, a fresh one refused, a finished key returned.
      let k = await service.initializeRequest(listed.idempotency_key, listed.request_method, listed.request_params, listed.request_path)
      while (k.recovery_point !== 'finished') {
        k = await service.workStage(k.idempotency_key, stages[k.recovery_point], { recoveryPoint: k.recovery_point })
      }
    } catch (e: any) {
      if (e.type !== 'conflict') console.error(listed.idempotency_key, e) // LOCKED / STALE: someone else has it
    }
  }
}

declare const payments: { charge(o: { amount: number, idempotencyKey: string }): Promise<{ id: string }> }

export async function completer(service: IdempotencyKeyService, app: express.Express) {
  // One definition per route: the stages, built from the stored request params and the key.
  const checkout: CompleterRoute = (params, key) => ({
    started: async (tx) => {
      await tx.query('INSERT INTO reservations (idem_key, cart_id) VALUES ($1, $2)', [key.scoped_key, params.cart_id])
      return { recovery_point: 'reserved' }
    },
    reserved: async (tx) => {
      // The provider deduplicates by the key: a charge whose stage rolled back is not made twice.
      const charge = await payments.charge({ amount: params.amount, idempotencyKey: key.scoped_key })
      await tx.query('INSERT INTO charges (idem_key, charge_id) VALUES ($1, $2)', [key.scoped_key, charge.id])
      return { recovery_point: 'charged' }
    },
    charged: async (tx) => {
      const [order] = await tx.query('INSERT INTO orders (idem_key, cart_id) VALUES ($1, $2) RETURNING id', [key.scoped_key, params.cart_id])
      return { response_code: 201, response_body: { order_id: order.id } }
    },
  })

  const requireCustomer: express.RequestHandler = (req, res, next) => (req.headers.authorization ? next() : res.status(401).end())
  app.use(express.json())
  app.use(idempotency({ service }))
  app.post('/checkout', requireCustomer, async (req, res, next) => {
    try {
      // Accepted when its first stage commits; a request requireCustomer refused is released.
      await req.idempotency!.run(checkout(req.body, req.idempotency!.key))
      req.idempotency!.respond()
    } catch (e) {
      next(e)
    }
  })

  const completer = service.completer({
    routes: { 'POST /checkout': checkout }, // "METHOD /path" as the route is declared (req.route)
    idleMs: 60_000, // abandoned: unfinished, no progress for idleMs (as listAbandoned)
    intervalMs: 30_000, // for start()
    limit: 100, // keys per pass
    maxAttempts: 5, // per key, across passes, processes and restarts; then left for an operator
  })
  app.post('/checkout-later', requireCustomer, async (req, res) => {
    await req.idempotency!.accept() // committed now: from here on the completer may finish it
    res.status(202).json({ status: 'processing' })
    await req.idempotency!.run(checkout(req.body, req.idempotency!.key)).catch(() => {}) // or leave it to the completer
  })
  await service.accept('a-claimed-key', { route: 'POST /store/carts/:id/complete', pathParams: { id: 'cart_1' } })

  const { completed, skipped, failed }: CompleterPassResult = await completer.runOnce() // one pass
  completer.start() // a pass now, then every intervalMs; the timer is unref'd
  process.once('SIGTERM', () => completer.stop().then(() => process.exit(0))) // waits for the running pass
  return [completed, skipped, failed, service.forTenant('acme').completer({ routes: { 'POST /store/carts/:id/complete': (params, key, match) => checkout({ ...params, cart_id: match?.pathParams.id }, key) } })] as const
}

export async function tenants(service: IdempotencyKeyService, req: express.Request & { auth: { customerId: string } }) {
  const scoped = service.forTenant(req.auth.customerId)
  const tenant: string | null = scoped.tenant
  const key = await scoped.initializeRequest(req.get('Idempotency-Key') ?? '', req.method, req.body, req.path)
  return [tenant, key] as const
}

export function counters() {
  const counters = { stages: 0, stageMs: 0, failures: 0, retries: 0, conflicts: {} as Record<string, number>, replays: 0, reaped: 0 }
  const alert = (message: string) => console.error(message)
  channels.stageEnd.subscribe((m) => { const e = m as StageEndEvent; counters.stages++; counters.stageMs += e.durationMs })
  channels.stageError.subscribe(() => counters.failures++)
  channels.retry.subscribe(() => counters.retries++)
  channels.conflict.subscribe((m) => { const { code } = m as ConflictEvent; counters.conflicts[code] = (counters.conflicts[code] ?? 0) + 1 })
  dc.subscribe('medusa-idempotency:replay', () => counters.replays++)
  channels.reap.subscribe((m: any) => (counters.reaped += m.removed))
  channels.completerGiveUp.subscribe((m) => { const e = m as CompleterGiveUpEvent; alert(`completer gave up on ${e.key} after ${e.attempts} attempts`) })
  return counters
}

// Tracing and metrics: the TracingChannels and the OpenTelemetry subpath.
export function tracing(tracerProvider: import('@opentelemetry/api').TracerProvider, meterProvider: import('@opentelemetry/api').MeterProvider) {
  const otel = instrument({ tracerProvider, meterProvider })
  instrument({ captureQueryText: true }).disable()
  tracingChannels.query.subscribe({ asyncEnd: (ctx) => console.log(ctx.query, ctx.rowCount), start() {}, end() {}, asyncStart() {}, error() {} })
  return otel.disable
}

// Retry-After for callers without the middleware.
export async function retryAfter(service: IdempotencyKeyService) {
  try {
    await service.lock('k')
  } catch (e) {
    const err = e as IdempotencyError
    if (err.code === 'IDEMPOTENCY_KEY_LOCKED') return err.retryAfter
  }
  return service.database.system === 'postgresql' ? service.lockTimeoutMs : 0
}
