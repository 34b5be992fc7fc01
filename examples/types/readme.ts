// The README's TypeScript examples, compiled by `npm test` (tsc --noEmit against the package's
// own types: types.d.ts, index.d.ts, middleware.d.ts), so the documented API cannot drift from
// the declared one. Never run.
import dc from 'node:diagnostics_channel'
import http from 'node:http'
import express from 'express'
import { IdempotencyKeyService, TransactionManager, channels, type IdempotencyKey, type StageEndEvent, type ConflictEvent } from 'medusa-idempotency-native'
import { idempotency } from 'medusa-idempotency-native/middleware'

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
  app.post('/store/carts/:id/complete', async (req, res, next) => {
    try {
      const idem = req.idempotency!
      const key = await idem.run({
        started: async (tx) => {
          await tx.query('INSERT INTO reservations (cart_id) VALUES ($1)', [req.params.id])
          return { recovery_point: 'stock_reserved' }
        },
        stock_reserved: async (tx) => {
          const [order] = await tx.query('INSERT INTO orders (cart_id) VALUES ($1) RETURNING id', [req.params.id])
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
      const key = await req.idempotency!.run({
        started: async (tx) => {
          await tx.query('INSERT INTO charges (amount) VALUES ($1)', [(req as any).body.amount])
          return { response_code: 201, response_body: { charged: true } }
        },
      })
      req.idempotency!.respond(key)
    }),
  )
}

export function reaping(service: IdempotencyKeyService) {
  setInterval(() => service.reap({ olderThanMs: 24 * 3600_000 }).catch(console.error), 10 * 60_000).unref()
}

export async function completeAbandoned(service: IdempotencyKeyService, stages: Record<string, (tx: any) => Promise<object>>) {
  for (const key of await service.listAbandoned({ idleMs: 5 * 60_000, limit: 50 })) {
    let k: IdempotencyKey = key
    try {
      while (k.recovery_point !== 'finished') {
        k = await service.workStage(k.idempotency_key, stages[k.recovery_point], { recoveryPoint: k.recovery_point })
      }
    } catch (e: any) {
      if (e.type !== 'conflict') throw e
    }
  }
}

export async function tenants(service: IdempotencyKeyService, req: express.Request & { auth: { customerId: string } }) {
  const scoped = service.forTenant(req.auth.customerId)
  const tenant: string | null = scoped.tenant
  const key = await scoped.initializeRequest(req.get('Idempotency-Key') ?? '', req.method, req.body, req.path)
  return [tenant, key] as const
}

export function counters() {
  const counters = { stages: 0, stageMs: 0, failures: 0, retries: 0, conflicts: {} as Record<string, number>, replays: 0, reaped: 0 }
  channels.stageEnd.subscribe((m) => { const e = m as StageEndEvent; counters.stages++; counters.stageMs += e.durationMs })
  channels.stageError.subscribe(() => counters.failures++)
  channels.retry.subscribe(() => counters.retries++)
  channels.conflict.subscribe((m) => { const { code } = m as ConflictEvent; counters.conflicts[code] = (counters.conflicts[code] ?? 0) + 1 })
  dc.subscribe('medusa-idempotency:replay', () => counters.replays++)
  channels.reap.subscribe((m: any) => (counters.reaped += m.removed))
  return counters
}
