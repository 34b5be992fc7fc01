// Types of the completer (completer.js): `service.completer(options)` and its diagnostics_channel
// events. types.d.ts re-exports them.
import type { Channel } from 'node:diagnostics_channel'
import type { IdempotencyKey, StageReturnValue, TransactionManager } from '../index'

/** A work stage: what `workStage` runs for one recovery point. */
export type CompleterStage = (tx: TransactionManager | any) => StageReturnValue | Promise<StageReturnValue>

/** Which registered route a key matched, and the values of its `:name` path segments. */
export interface RouteMatch {
  /** The route as registered, `"POST /store/carts/:id/complete"`. */
  route: string
  /** `{ id: "cart_123" }` for `/store/carts/:id/complete`: the decoded `req.params` the handler saw when it accepted the request. */
  pathParams: Record<string, string>
}

/**
 * A route's stages rebuilt from what the key stores: `params` is the stored `request_params`
 * (the request body), `key` the claimed key. The HTTP handler calls the same function with
 * `req.body` and `req.idempotency.key`, so both run the same code. The completer also passes
 * `match` (the handler has `req.params`).
 */
export type CompleterRoute = (params: any, key: IdempotencyKey & { scoped_key: string }, match?: RouteMatch) => Record<string, CompleterStage>

export interface CompleterOptions {
  /**
   * `"METHOD /path"` as the app declares the route (Express's `req.baseUrl + req.route.path`, or
   * the `route` given to `run`/`accept`) → the route's stages. Only keys a handler accepted for
   * one of these routes are selected; keys of other routes, and keys no handler accepted, are
   * never listed or touched.
   */
  routes: Record<string, CompleterRoute>
  /** A key is abandoned when unfinished with no progress (stage commit, else creation) for this long, as `listAbandoned` (default 60000). Keep it above `lockTimeoutMs`. */
  idleMs?: number
  /** The time between passes of `start()`, from the end of one to the start of the next (default 30000). */
  intervalMs?: number
  /** Keys a pass selects and drives at most (default 100, at most 10000). */
  limit?: number
  /** Attempts per key, counted across passes, processes and restarts; then the key is left for an operator (default 5). */
  maxAttempts?: number
  /** No retry before `backoffMs × 2^(attempt − 1)` after a failed attempt, at most `maxBackoffMs` (default `idleMs`). */
  backoffMs?: number
  /** The longest backoff (default one hour, or `backoffMs` if larger). */
  maxBackoffMs?: number
  /** Receives a pass that failed under `start()` (the database unreachable…); default `process.emitWarning`. */
  onError?: (err: unknown) => void
}

/** Why keys were skipped in a pass. */
export interface CompleterSkipped {
  /** Kept for compatibility: keys of unregistered routes are not selected, so this is 0. */
  route: number
  /** Its lease is fresh (a live request, another completer) or its row is locked by a stage. Not touched. */
  locked: number
  /** Finished by the time it was claimed (by its client or another completer). Not touched. */
  finished: number
  /** Moved on by someone else while this pass was driving it. */
  stale: number
  /** Failed before and still backing off (counted, not selected). */
  backoff: number
  /** `maxAttempts` reached: left for an operator (counted, not selected). */
  gaveUp: number
}

/** What `runOnce()` resolves to. */
export interface CompleterPassResult {
  /** Keys this pass moved to `finished`. */
  completed: number
  /** Keys listed and left alone, see `skippedBy`. */
  skipped: number
  /** Keys whose stage threw in this pass (rolled back; counted toward `maxAttempts`). */
  failed: number
  skippedBy: CompleterSkipped
  durationMs: number
}

export interface Completer {
  readonly idleMs: number
  readonly intervalMs: number
  readonly limit: number
  readonly maxAttempts: number
  readonly backoffMs: number
  readonly maxBackoffMs: number
  /** The service's tenant (`forTenant`), or null: a scoped completer completes only its tenant's keys. */
  readonly tenant: string | null
  /** True while a pass is running. */
  readonly running: boolean
  /** The backoff in ms after failed attempt `n` (1-based). */
  backoff(n: number): number
  /** One pass over the abandoned keys. A call while a pass is running returns that pass. */
  runOnce(): Promise<CompleterPassResult>
  /** A pass now, then one `intervalMs` after each pass ends; the timer is unref'd (the process can exit). */
  start(): this
  /** No further pass; the key in hand is finished and the rest of the running pass skipped. Resolves when that pass has ended. */
  stop(): Promise<void>
}

/** Published on `medusa-idempotency:completer:pass` when a pass ends. */
export interface CompleterPassEvent extends CompleterPassResult {
  tenant: string | null
  /** Set when the pass itself failed (`runOnce()` rejects with it); the counts are up to there. */
  error?: unknown
}

/** Published on `medusa-idempotency:completer:complete` for each key a pass finished. */
export interface CompleterCompleteEvent {
  key: string
  tenant: string | null
  route: string
  /** The recovery point the key was abandoned at. */
  from: string
  /** 1 for the first attempt. */
  attempt: number
  durationMs: number
  /** The stored response's code. */
  responseCode: number | null
}

/** Published on `medusa-idempotency:completer:fail` for each key whose stage threw in a pass. */
export interface CompleterFailEvent {
  key: string
  tenant: string | null
  route: string
  /** The recovery point of the stage that failed (the key stays there). */
  recoveryPoint: string
  /** 1 for the first attempt; null when the key could not even be claimed as itself. */
  attempt: number | null
  maxAttempts: number
  /** This was the last attempt: `completer:giveup` follows. */
  gaveUp: boolean
  /** No completer retries it before this. */
  nextAttemptAt: Date | null
  /** What the stage threw. */
  error: unknown
  code: string | null
}

/** Published on `medusa-idempotency:completer:giveup` when a key reaches `maxAttempts`; the key is left for an operator. */
export interface CompleterGiveUpEvent {
  key: string
  tenant: string | null
  route: string
  recoveryPoint: string
  attempts: number
  /** The last attempt's error (absent when that attempt ended with its process). */
  error?: unknown
  code?: string | null
}

export interface CompleterChannels {
  completerPass: Channel<CompleterPassEvent>
  completerComplete: Channel<CompleterCompleteEvent>
  completerFail: Channel<CompleterFailEvent>
  completerGiveUp: Channel<CompleterGiveUpEvent>
}

declare module '../index' {
  interface IdempotencyKeyService {
    /**
     * A completer over this service (or its `forTenant` copy): passes that claim abandoned keys
     * of the registered routes with the request's own lease and walk their stages to `finished`.
     * Needs `migrate()` (its attempts table).
     */
    completer(options: CompleterOptions): Completer
    /**
     * Mark a claimed key's request accepted by the handler that took it, in a committed step of
     * its own, so a completer registering `route` may finish it. The middleware does this itself
     * (with the first stage, or `req.idempotency.accept()`); code that claims keys with
     * `initializeRequest` calls it once its own checks passed. A finished key is returned as is.
     */
    accept(idempotencyKey: string, options?: { route?: string | null; pathParams?: Record<string, string> }): Promise<IdempotencyKey>
  }
}
