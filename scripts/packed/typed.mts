// Type-checked with tsc --strict (module nodenext) against the installed package's types,
// then run: the types and the runtime exports must agree.
import { IdempotencyKeyService, TransactionManager, channels } from 'medusa-idempotency-native'
import type { IdempotencyKey, StageEndEvent } from 'medusa-idempotency-native'
import MedusaService from 'medusa-idempotency-native/medusa'
import { idempotency, type IdempotencyMiddleware } from 'medusa-idempotency-native/middleware'

const service: IdempotencyKeyService = await IdempotencyKeyService.connect({ url: 'sqlite::memory:', maxConnections: 1 })
await service.migrate()
const seen: StageEndEvent[] = []
channels.stageEnd.subscribe((e) => seen.push(e as StageEndEvent))
const started: IdempotencyKey = await service.initializeRequest('typed-1', 'POST', { a: 1 }, '/typed')
const done: IdempotencyKey = await service.workStage(started.idempotency_key, async (tx: TransactionManager) => {
  const rows = await tx.query('SELECT 1 AS one', [])
  return { response_code: 200, response_body: { rows: rows.length } }
})
const mw: IdempotencyMiddleware = idempotency({ service, required: false })
const medusa = new MedusaService({ manager: {} })
const forTenant: MedusaService = medusa.forTenant('t1')
if (done.recovery_point !== 'finished' || seen.length !== 1 || typeof mw !== 'function' || !forTenant) {
  throw new Error('typed.mts: unexpected result')
}
await service.close()
console.log('typed.mts: ok')
