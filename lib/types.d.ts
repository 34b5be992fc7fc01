// The package's types: the generated binding types (the package root's index.d.ts, written by `napi build`) plus
// what index.js adds in JavaScript — the tracing channels and the executor wrapper.
import type { Channel, TracingChannel } from 'node:diagnostics_channel'
import type { IdempotencyKey } from '../index'
import type { CompleterChannels } from './completer'

export * from '../index'
export * from './completer'

/** Published on `medusa-idempotency:stage:start` when a `workStage` call begins. */
export interface StageStartEvent {
  /** The key as the caller passed it (without the tenant). */
  key: string
  /** The service's tenant (`forTenant`), or null. */
  tenant: string | null
  /** The recovery point the caller expects (`{ recoveryPoint }`), if given. */
  recoveryPoint?: string
}

/** Published on `medusa-idempotency:stage:end` when a stage committed. */
export interface StageEndEvent {
  key: string
  tenant: string | null
  /** The recovery point the stage moved the key to (`"finished"` when it stored a response). */
  recoveryPoint: string
  /** The recovery point the caller expected, if given. */
  from?: string
  finished: boolean
  /** Wall time of the whole call, retries included, in ms. */
  durationMs: number
  /** How many times the callback ran (more than 1 after serialization failures). */
  attempts: number
}

/** Published on `medusa-idempotency:stage:error` when a stage rolled back. */
export interface StageErrorEvent {
  key: string
  tenant: string | null
  recoveryPoint?: string
  durationMs: number
  attempts: number
  /** What the `workStage` promise rejects with: the callback's own error, or a typed one. */
  error: unknown
  code?: string
}

/** Published on `medusa-idempotency:retry` before a native stage's callback runs again. */
export interface RetryEvent {
  key: string
  tenant: string | null
  recoveryPoint?: string
  /** 2 for the first retry. */
  attempt: number
}

/** Published on `medusa-idempotency:conflict` when a call fails with LOCKED, STALE, REUSED or DATABASE_BUSY. */
export interface ConflictEvent {
  method: 'initializeRequest' | 'lock' | 'workStage'
  key: unknown
  tenant: string | null
  code: 'IDEMPOTENCY_KEY_LOCKED' | 'IDEMPOTENCY_KEY_STALE' | 'IDEMPOTENCY_KEY_REUSED' | 'DATABASE_BUSY'
  type: string
  message: string
}

/** Published on `medusa-idempotency:replay` when `initializeRequest` returns a finished key. */
export interface ReplayEvent {
  key: string
  tenant: string | null
  responseCode: number | null
}

/** Published on `medusa-idempotency:reap` when `reap()` resolves. */
export interface ReapEvent {
  removed: number
  durationMs: number
  tenant: string | null
}

/**
 * The `diagnostics_channel` channels the service publishes on (also reachable by name,
 * `dc.subscribe('medusa-idempotency:stage:end', fn)`). Nothing is published, and no event
 * object is built, while a channel has no subscriber.
 */
export declare const channels: CompleterChannels & {
  stageStart: Channel<StageStartEvent>
  stageEnd: Channel<StageEndEvent>
  stageError: Channel<StageErrorEvent>
  retry: Channel<RetryEvent>
  conflict: Channel<ConflictEvent>
  replay: Channel<ReplayEvent>
  reap: Channel<ReapEvent>
}

/**
 * What the service's methods reject with (SPEC §6): Medusa's `type`, a stable `code`. An
 * `IDEMPOTENCY_KEY_LOCKED` refusal (initializeRequest, lock, workStage) also carries
 * `retryAfter`: whole seconds until the holder's lease can expire, at least 1 (what the
 * middleware sends as `Retry-After`).
 */
export interface IdempotencyError extends Error {
  type: string
  code: string
  date?: Date
  retryAfter?: number
}

/**
 * The context object of one traced call, the same object on its start / end / asyncStart /
 * asyncEnd / error events (Node sets `result` or `error` on it).
 */
export interface TracingContext {
  operation: 'initializeRequest' | 'workStage' | 'retrieve' | 'lock' | 'update' | 'create' | 'reap' | 'listAbandoned' | 'query' | 'completer.pass'
  /** `'postgresql'` or `'sqlite'`; null when unknown. */
  dbSystem: 'postgresql' | 'sqlite' | null
  /** PostgreSQL: the host and port of the connection URL. */
  serverAddress: string | null
  serverPort: number | null
  /** PostgreSQL: the database name; SQLite: the file (or `:memory:`). */
  dbNamespace: string | null
  /** The service's tenant (`forTenant`), or null (absent on `query`). */
  tenant?: string | null
  /** The key the caller named (initializeRequest, workStage, retrieve, lock, update), or null. */
  key?: string | null
  /** workStage: the recovery point the caller expects, if given. */
  recoveryPoint?: string
  /** workStage: how many times the callback has run (0 when refused before it; more than 1 after retries). */
  attempts?: number
  /** query: the statement text the stage callback passed to `tx.query`. */
  query?: string | null
  /** query: how many rows it returned (null until it resolved); for the service's own, returned or touched (null when it failed). */
  rowCount?: number | null
  /**
   * query: true for a round trip of the service's own statements (a stage's BEGIN and row lock,
   * its UPDATE and COMMIT…), published once the call's native work settled, with the times the
   * core measured: read `startTime` and `duration`, not when the events arrive.
   */
  internal?: true
  /** query, internal: the round trip's statements (`query` is them joined by `;\n`), text only. */
  statements?: string[]
  /** query, internal: when it was sent, in ms since the Unix epoch. */
  startTime?: number
  /** query, internal: how long it took, in ms. */
  duration?: number
  /** What the call resolved to. */
  result?: unknown
  /** What the call rejected with. */
  error?: unknown
}

/**
 * TracingChannels (`diagnostics_channel.tracingChannel('medusa-idempotency:<operation>')`), one per
 * public operation, one for each statement a native stage's callback sends (`tx.query`) and the
 * service sends itself (`internal`), and one for a completer pass. Nothing is built or published while a channel has no subscriber.
 */
export declare const tracingChannels: {
  initializeRequest: TracingChannel<unknown, TracingContext>
  workStage: TracingChannel<unknown, TracingContext>
  retrieve: TracingChannel<unknown, TracingContext>
  lock: TracingChannel<unknown, TracingContext>
  update: TracingChannel<unknown, TracingContext>
  create: TracingChannel<unknown, TracingContext>
  reap: TracingChannel<unknown, TracingContext>
  listAbandoned: TracingChannel<unknown, TracingContext>
  query: TracingChannel<unknown, TracingContext>
  completerPass: TracingChannel<unknown, TracingContext>
}

/**
 * An executor's `query` (TypeORM `EntityManager`, node-postgres client) wrapped to resolve to
 * `{ rows }` or `{ error: { code, message } }`, never rejecting; what `withTransaction(executor)`
 * binds with.
 */
export declare function wrapExecutor(executor: { query: (sql: string, params?: unknown[]) => unknown }): (sql: string, params: unknown[]) => Promise<{ rows: unknown[] } | { error: { code?: string, message: string } }>

export type { IdempotencyKey }
