/* HTTP middleware for IdempotencyKeyService (middleware.js): Express 4, Express 5, node:http. */
import type { IncomingMessage, ServerResponse } from 'http'
import type { IdempotencyKey, IdempotencyKeyService, StageReturnValue, TransactionManager } from '../index'

/** Options of {@link idempotency}. */
export interface IdempotencyOptions {
  /** The service keys are claimed, staged and reaped through. */
  service: IdempotencyKeyService
  /**
   * Whether a matching request must carry `Idempotency-Key` (default `true`: 400 without one).
   * `false`: a request without the header gets a fresh UUID key (Medusa's behaviour), returned
   * in the response's `Idempotency-Key` header so the client can retry with it.
   */
  required?: boolean
  /** Methods the middleware handles (default `['POST', 'PATCH']`); others pass straight through. */
  methods?: string[]
  /**
   * How long a key is kept, in ms (default 24 h). Requests trigger `service.reap({ olderThanMs:
   * ttl })` in the background at most once per `min(ttl, 60 s)`, one at a time, never awaited by
   * a request; no timer is left running.
   */
  ttl?: number
  /** `false` disables the background reap (when a cron or another process reaps). Default `true`. */
  reap?: boolean
  /**
   * The request's tenant: a string scopes the request to `service.forTenant(id)` (the same client
   * key from two tenants names two keys); `undefined`/`null` leaves it unscoped. A request without
   * a tenant may not use a key containing `/` (400, with or without this option), so no unscoped
   * request can name a tenant's stored key (`<tenant>/<key>`). A tenant id the service refuses is
   * a 400.
   */
  tenant?: (req: IncomingMessage) => string | undefined | null
  /** Largest request body the middleware reads itself (no body parser ran), in bytes; default 1 MiB, 413 beyond. */
  limit?: number
  /**
   * Failures nobody is waiting for: a background reap or key release that rejected, a node:http
   * handler that threw something not of Medusa's error types (answered with a 500 "An unknown
   * error occurred."), clients that left mid-body (at most once a minute, with how many since).
   * Default: `process.emitWarning`.
   */
  onError?: (err: unknown) => void
}

/** A work stage: what `workStage` runs for one recovery point. */
export type IdempotencyStage = (tx: TransactionManager | any) => StageReturnValue | Promise<StageReturnValue>

/** A key as the handler sees it: the row, plus the key as stored. */
export type ScopedIdempotencyKey = IdempotencyKey & {
  /**
   * The key as stored, unique across tenants: `<tenant>/<key>` under a tenant, else the key. The
   * key to give a payment provider and to key side rows by; `idempotency_key` is the client's
   * own value, which two tenants may both send.
   */
  scoped_key: string
}

/** Options of `run` and `accept`. */
export interface AcceptOptions {
  /**
   * The route that took the request, `"METHOD /path"` as the completer registers it
   * (`"POST /store/carts/:id/complete"`); its `:name` values are read from the request's path,
   * decoded. Default: Express's `req.baseUrl + req.route.path` and `req.params`. Without either
   * (node:http) the request is accepted but no completer will drive it.
   */
  route?: string
}

/** What the handler finds on `req.idempotency` (only for a matching method whose key is not finished). */
export interface IdempotencyContext {
  /**
   * The key as `initializeRequest` returned it (leased to this request), with `scoped_key`:
   * `recovery_point` says where to resume. `run` keeps it current.
   */
  key: ScopedIdempotencyKey
  /** `key.scoped_key`: the key as stored, unique across tenants (for side effects and payment providers). */
  readonly scopedKey: string
  /** The service for this request: `forTenant(tenant)` when the `tenant` option named one. */
  readonly service: IdempotencyKeyService
  /** The tenant the request is scoped to, if any. */
  readonly tenant: string | undefined
  /**
   * Walk the stages from `key.recovery_point` until the key is finished, each through
   * `service.workStage(key, stage, { recoveryPoint })`, and resolve to the finished key. A
   * recovery point without a stage rejects; a stage's error rejects with that error (its writes
   * rolled back, the lease released, so the client's retry resumes there). The first stage this
   * request runs also records the request as accepted (`idempotency_key_accepted`, in that
   * stage's transaction): from its commit on, a completer registering the route may finish it.
   */
  run(stages: Record<string, IdempotencyStage>, options?: AcceptOptions): Promise<ScopedIdempotencyKey>
  /**
   * Record now, in a transaction of its own, that the handler accepted this request — for a
   * handler whose first stage is not the right marker (it calls an external service, or the work
   * goes on after an early response). Call it after the app's own checks. Without `run` or
   * `accept`, the key is released when the response ends (see README, "Trust rules").
   */
  accept(options?: AcceptOptions): Promise<ScopedIdempotencyKey>
  /**
   * Send a finished key's stored response (default: the key `run` finished): status
   * `response_code`, body `JSON.stringify(response_body)`, `application/json; charset=utf-8`.
   * Replays are written the same way, so the first response and every replay are the same bytes.
   * Throws a TypeError for a key that is not finished.
   */
  respond(key?: IdempotencyKey): void
}

/**
 * `(req, res, next)`, usable as Express 4/5 middleware and from `node:http`
 * (`(req, res) => mw(req, res, () => handler(req, res))`).
 *
 * For a matching method it reads `Idempotency-Key` (a bare token, or the IETF draft's
 * sf-string `"…"`), the body (`req.body` from a body parser, else the stream: JSON parsed, other
 * types as text, none as `null`) and the path (`req.originalUrl ?? req.url` without the query
 * string), claims the key, and then:
 * - missing (when required) or malformed key: 400 `IDEMPOTENCY_KEY_MISSING` / `_MALFORMED`
 *   (also a key under the reserved `medusa-idempotency-native:` prefix, and a key with `/` on a
 *   request without a tenant); a key the service refuses: 400 with its code; invalid JSON body:
 *   400 `INVALID_JSON`; a body the fingerprint cannot hold exactly (not UTF-8, a NUL, a lone
 *   surrogate, a number out of range): 400 `INVALID_BODY`;
 * - key in flight: 409 `IDEMPOTENCY_KEY_LOCKED` with `Retry-After` (seconds until the holder's lease can expire, at least 1); key used for another request: 422 `IDEMPOTENCY_KEY_REUSED`;
 * - finished key: its stored response, with `Idempotent-Replayed: true`; the handler does not run;
 * - anything else: under Express `next(err)`; on node:http what Medusa's error handler answers
 *   (its status and message for Medusa's own error types, else 500 "An unknown error occurred."),
 *   also for a handler that throws or rejects.
 * Error bodies are `{ type, code, message }`. Every answer to a matching method carries
 * `Idempotency-Key` (once known) and lists `Idempotency-Key, Idempotent-Replayed` in
 * `Access-Control-Expose-Headers` (appended to a value set before the middleware).
 * Otherwise it sets `req.idempotency` and calls `next()`; the handler runs the stages and sends
 * the response. A request whose response ends before its handler called `run` or `accept`
 * (refused by authentication or validation, a 404) has its key released: no result is kept, no
 * completer runs it, the client's key is free again. The returned promise never rejects.
 */
export type IdempotencyMiddleware = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => unknown) => Promise<void>

export declare function idempotency(options: IdempotencyOptions): IdempotencyMiddleware

/** The key an `Idempotency-Key` header value carries (bare token or sf-string), or `null` if it is malformed. */
export declare function parseIdempotencyKey(value: string): string | null

/** Write a finished key's stored response on `res` (what `respond` and replays use). */
export declare function sendStoredResponse(res: ServerResponse, key: IdempotencyKey, replayed?: boolean): void

declare module 'http' {
  interface IncomingMessage {
    /** Set by the idempotency middleware for a matching request that the handler must run. */
    idempotency?: IdempotencyContext
  }
}
