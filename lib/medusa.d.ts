import type { IdempotencyKey, StageReturnValue, WorkStageOptions } from '../index'

/**
 * Medusa v1 container class: `export { default } from "medusa-idempotency-native/medusa"` in
 * `src/services/idempotency-key.ts` replaces Medusa's IdempotencyKeyService. Every statement
 * goes through `cradle.manager` (TypeORM), so stages commit with the route's transaction.
 */
declare class IdempotencyKeyService {
  constructor(cradle: { manager: any }, configModule?: { idempotency?: { lockTimeoutMs?: number; stageTimeoutMs?: number } })
  withTransaction(transactionManager?: any): this
  /** A copy that sees only `tenant`'s keys (stored as `<tenant>/<key>` in the same table). */
  forTenant(tenant: string): this
  initializeRequest(headerKey: string | undefined | null, reqMethod?: string | null, reqParams?: unknown, reqPath?: string | null): Promise<IdempotencyKey>
  create(payload: { idempotency_key?: string | null; request_method?: string | null; request_params?: unknown; request_path?: string | null; recovery_point?: string }): Promise<IdempotencyKey>
  retrieve(idempotencyKeyOrSelector: string | Partial<Record<keyof IdempotencyKey, unknown>>): Promise<IdempotencyKey>
  lock(idempotencyKey: string): Promise<IdempotencyKey>
  update(idempotencyKey: string, update: Partial<Omit<IdempotencyKey, 'id' | 'idempotency_key' | 'created_at'>>): Promise<IdempotencyKey>
  workStage(idempotencyKey: string, callback: (manager: any) => StageReturnValue | Promise<StageReturnValue>, options?: WorkStageOptions): Promise<IdempotencyKey>
}

// medusa.js sets `module.exports` to the class (with `.default` and `.IdempotencyKeyService`
// pointing back at it), so the types say `export =`: `require()` returns the class, a default
// import is the class, and `import { IdempotencyKeyService }` works too.
declare namespace IdempotencyKeyService {
  export { IdempotencyKeyService as default, IdempotencyKeyService }
}

export = IdempotencyKeyService
