'use strict'
// The completer: drives requests whose client gave up half-way to the end, with the route's own
// stages rebuilt from what the key stores (`request_params`), so the HTTP handler and the
// completer run the same code.
//
// A pass lists abandoned keys (`listAbandoned`), and for each key of a registered route:
//   1. claims it with `initializeRequest` called with the key's own stored fingerprint: the
//      same atomic lease a request takes, so a client coming back meanwhile gets 409 and two
//      completers (in two processes) never drive one key; a finished key comes back as is;
//   2. counts the attempt in `idempotency_key_completer`, in a bookkeeping transaction of its
//      own that commits before any stage runs (so an attempt that crashes the process counts
//      too), and leaves the key alone while it is backing off or past `maxAttempts`;
//   3. walks the route's stages with `workStage(key, stage, { recoveryPoint })`, as the
//      middleware's `req.idempotency.run` does;
//   4. on a stage that throws (rolled back as always), records the error and the time before
//      which no completer retries it, again in its own committed transaction.
// Bookkeeping transactions go through the native `workStage` (they lock the key's row, check its
// recovery point and commit without moving it), so they are not reported as stages on
// diagnostics_channel; the route's stages are.

const dc = require('node:diagnostics_channel')
const { performance } = require('node:perf_hooks')
const { tracing, dbOf } = require('./tracing.js')

const channels = {
  completerPass: dc.channel('medusa-idempotency:completer:pass'),
  completerComplete: dc.channel('medusa-idempotency:completer:complete'),
  completerFail: dc.channel('medusa-idempotency:completer:fail'),
  completerGiveUp: dc.channel('medusa-idempotency:completer:giveup'),
}

const HOUR = 3_600_000
/** How far past the shown limit a pass looks for keys it may drive (unregistered routes, keys backing off). */
const MAX_SCAN = 10_000
/** A key given up on is looked at again (its attempts row re-read) after this long, or on restart. */
const GIVE_UP_RECHECK_MS = HOUR
/** Attempt rows of keys that are finished or gone are swept once their last attempt is this old. */
const SWEEP_AFTER_MS = 24 * HOUR
const SWEEP_BATCH = 500
const MAX_ERROR_LENGTH = 1000

// The attempt, counted before it starts. The upsert has no read before it, so two completers
// counting different keys at once do not conflict under SERIALIZABLE; a key backing off or past
// maxAttempts returns no row.
const COUNT_ATTEMPT = `INSERT INTO idempotency_key_completer AS c (key_id, idempotency_key, attempts, last_attempt_at)
  VALUES ($1, $2, 1, $3)
  ON CONFLICT (key_id) DO UPDATE SET attempts = c.attempts + 1, last_attempt_at = excluded.last_attempt_at
  WHERE c.attempts < $4 AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= excluded.last_attempt_at)
  RETURNING attempts`
const READ_ATTEMPTS = 'SELECT attempts, next_attempt_at, gave_up_at FROM idempotency_key_completer WHERE key_id = $1'
const MARK_GAVE_UP = 'UPDATE idempotency_key_completer SET gave_up_at = $2 WHERE key_id = $1 AND gave_up_at IS NULL'
const RECORD_FAILURE = `UPDATE idempotency_key_completer
  SET last_error_code = $2, last_error = $3, next_attempt_at = $4, gave_up_at = $5 WHERE key_id = $1`
const sweepSql = (scoped) => `DELETE FROM idempotency_key_completer WHERE key_id IN (
  SELECT c.key_id FROM idempotency_key_completer c LEFT JOIN idempotency_key k ON k.id = c.key_id
  WHERE (k.id IS NULL OR k.recovery_point = 'finished') AND c.last_attempt_at < $1
  ${scoped ? 'AND substr(c.idempotency_key, 1, $3) = $4' : ''} LIMIT $2)`

function invalid(message) {
  return Object.assign(new Error(message), { type: 'invalid_data', code: 'INVALID_ARGUMENT', date: new Date() })
}

/** A field of a thrown value, never throwing (a getter that throws, a revoked proxy). */
function field(e, name) {
  try {
    return e != null && (typeof e === 'object' || typeof e === 'function') ? e[name] : undefined
  } catch {
    return undefined
  }
}

function describe(e) {
  const code = field(e, 'code')
  let message
  try {
    message = String(field(e, 'message') ?? e)
  } catch {
    message = 'a thrown value that cannot be read'
  }
  return { code: typeof code === 'string' ? code.slice(0, 100) : null, message: message.slice(0, MAX_ERROR_LENGTH) }
}

/** Refusals that mean someone else holds or moved the key: not the key's failure. */
const HELD = new Set(['IDEMPOTENCY_KEY_LOCKED', 'DATABASE_BUSY'])

/**
 * Waits before retrying the failure record of an attempt refused with IDEMPOTENCY_KEY_LOCKED: the
 * failed stage released the key's lease, so the client or another completer may hold its row for
 * a moment. The refusal comes before the callback, so a retry is safe. (A stage of a key the
 * completer holds is not retried: a refused claim no longer locks the row, see pgsql.rs.)
 */
const LOCKED_RETRY_MS = [5, 10, 20, 40, 80]
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** `run()`, again after a LOCKED refusal, a few times. */
async function retryLocked(run) {
  for (let i = 0; ; i++) {
    try {
      return await run()
    } catch (e) {
      if (i >= LOCKED_RETRY_MS.length || field(e, 'code') !== 'IDEMPOTENCY_KEY_LOCKED') throw e
      await sleep(LOCKED_RETRY_MS[i])
    }
  }
}

function toDate(v) {
  if (v == null) return null
  const d = v instanceof Date ? v : new Date(v)
  return Number.isNaN(d.getTime()) ? null : d
}

function optionNumber(options, name, fallback, { min = 0, integer = false, max = 2 ** 32 - 1 } = {}) {
  const v = options[name]
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw invalid(`completer(): \`${name}\` must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}`)
  }
  return v
}

const ROUTE = /^([A-Za-z]+) (\/\S*)$/

/**
 * `"METHOD /path"` → a matcher over the stored `request_method` / `request_path`. `:name`
 * segments match one path segment each (`/store/carts/:id/complete`); the values are passed to
 * the route's function as `match.pathParams`.
 */
function compileRoute(name, build) {
  const m = typeof name === 'string' ? ROUTE.exec(name) : null
  if (!m) throw invalid(`completer(): route ${JSON.stringify(name)} must be "METHOD /path", as stored in request_method and request_path`)
  if (typeof build !== 'function') throw invalid(`completer(): route "${name}" must be a function (params, key, match) => stages`)
  const method = m[1].toUpperCase()
  const path = m[2]
  const names = []
  let pattern = null
  if (path.split('/').some((s) => s.startsWith(':'))) {
    const source = path
      .split('/')
      .map((s) => {
        if (!s.startsWith(':')) return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
        names.push(s.slice(1))
        return '([^/]+)'
      })
      .join('/')
    pattern = new RegExp(`^${source}$`)
  }
  return {
    name,
    build,
    method,
    match(reqPath) {
      if (pattern === null) return reqPath === path ? {} : null
      const found = pattern.exec(reqPath)
      if (!found) return null
      const pathParams = {}
      names.forEach((n, i) => (pathParams[n] = found[i + 1]))
      return pathParams
    },
    exact: pattern === null,
  }
}

function compileRoutes(routes) {
  if (routes === null || typeof routes !== 'object') throw invalid('completer(): `routes` must be an object of "METHOD /path": (params, key) => stages')
  const compiled = Object.keys(routes).map((name) => compileRoute(name, routes[name]))
  if (compiled.length === 0) throw invalid('completer(): `routes` names no route')
  // Exact paths win over patterns; patterns are tried in the order given.
  return [...compiled.filter((r) => r.exact), ...compiled.filter((r) => !r.exact)]
}

function defaultOnError(err) {
  const { message } = describe(err)
  process.emitWarning(`medusa-idempotency-native completer: ${message}`, { code: 'IDEMPOTENCY_COMPLETER' })
}

function install(IdempotencyKeyService, native) {
  const { initializeRequest, workStage, isBound } = native

  class Completer {
    #service
    #routes
    #parked = new Map() // key id → { until, reason }: no claim before `until` (this process only)
    #running = null // the pass in flight
    #pass = null // its control: { stop }
    #timer = null
    #started = false
    #swept = false

    constructor(service, options) {
      if (options === null || typeof options !== 'object') throw invalid('completer(options): options must be an object')
      let bound
      try {
        bound = isBound(service)
      } catch {
        bound = true
      }
      if (bound) throw invalid('completer(): a completer runs its own transactions; create it on a connect()ed service or its forTenant() copy, not on a withTransaction() copy')
      this.#service = service
      this.#routes = compileRoutes(options.routes)
      this.idleMs = optionNumber(options, 'idleMs', 60_000, { min: 1, integer: true })
      this.intervalMs = optionNumber(options, 'intervalMs', 30_000, { min: 1, max: 2 ** 31 - 1 })
      this.limit = optionNumber(options, 'limit', 100, { min: 1, integer: true, max: MAX_SCAN })
      this.maxAttempts = optionNumber(options, 'maxAttempts', 5, { min: 1, integer: true, max: 2 ** 31 - 1 })
      this.backoffMs = optionNumber(options, 'backoffMs', this.idleMs, { max: 2 ** 31 - 1 })
      this.maxBackoffMs = optionNumber(options, 'maxBackoffMs', Math.max(HOUR, this.backoffMs), { min: this.backoffMs, max: 2 ** 31 - 1 })
      this.onError = options.onError ?? defaultOnError
      if (typeof this.onError !== 'function') throw invalid('completer(): `onError` must be a function')
    }

    get tenant() {
      try {
        return this.#service.tenant ?? null
      } catch {
        return null
      }
    }

    get running() {
      return this.#running !== null
    }

    /** The backoff after failed attempt `n` (1-based): backoffMs doubling, at most maxBackoffMs. */
    backoff(n) {
      return Math.min(this.maxBackoffMs, this.backoffMs * 2 ** Math.min(n - 1, 40))
    }

    /** One pass. A call while a pass is running returns that pass. */
    runOnce() {
      if (this.#running) return this.#running
      const control = { stop: false }
      this.#pass = control
      // A pass is one `medusa-idempotency:completer.pass` TracingChannel call (tracing.js).
      const pass = tracing.completerPass.hasSubscribers
        ? tracing.completerPass.tracePromise(() => this.#runPass(control), { operation: 'completer.pass', ...dbOf(this.#service), tenant: this.tenant })
        : this.#runPass(control)
      const pending = pass.finally(() => {
        if (this.#running === pending) {
          this.#running = null
          this.#pass = null
        }
      })
      this.#running = pending
      return pending
    }

    /** Passes every intervalMs (the first at once), one at a time; the timer never keeps the process alive. */
    start() {
      if (this.#started) return this
      this.#started = true
      this.#tick()
      return this
    }

    /** No further pass; the key in hand is finished, the rest of the running pass is skipped. Resolves when it has ended. */
    async stop() {
      this.#started = false
      if (this.#timer) {
        clearTimeout(this.#timer)
        this.#timer = null
      }
      const running = this.#running
      if (running) {
        if (this.#pass) this.#pass.stop = true
        await running.catch(() => {})
      }
    }

    #tick() {
      this.#timer = null
      if (!this.#started) return
      this.runOnce()
        .catch((e) => {
          try {
            this.onError(e)
          } catch {
            // A throwing reporter must not stop the completer or take the process down.
          }
        })
        .finally(() => {
          if (!this.#started || this.#timer) return
          this.#timer = setTimeout(() => this.#tick(), this.intervalMs)
          this.#timer.unref()
        })
    }

    #storedKey(key) {
      const t = this.tenant
      return t === null ? key : `${t}/${key}`
    }

    #route(key) {
      if (typeof key.request_method !== 'string' || typeof key.request_path !== 'string') return null
      const method = key.request_method.toUpperCase()
      for (const r of this.#routes) {
        if (r.method !== method) continue
        const pathParams = r.match(key.request_path)
        if (pathParams) return { route: r, match: { route: r.name, pathParams } }
      }
      return null
    }

    #parkedReason(id, now) {
      const p = this.#parked.get(id)
      if (!p) return null
      if (p.until <= now) {
        this.#parked.delete(id)
        return null
      }
      return p.reason
    }

    /** The abandoned keys this pass considers: listed further while ineligible ones hide `limit` eligible ones. */
    async #candidates() {
      let fetch = this.limit
      let listed
      const now = Date.now()
      for (;;) {
        listed = await this.#service.listAbandoned({ idleMs: this.idleMs, limit: fetch })
        const eligible = listed.filter((k) => this.#route(k) && !this.#parkedReason(k.id, now)).length
        if (eligible >= this.limit || listed.length < fetch || fetch >= MAX_SCAN) break
        fetch = Math.min(MAX_SCAN, fetch * 4)
      }
      if (listed.length < fetch) {
        // The whole abandoned set was seen: forget keys that are no longer in it.
        const seen = new Set(listed.map((k) => k.id))
        for (const id of this.#parked.keys()) if (!seen.has(id)) this.#parked.delete(id)
      }
      return listed
    }

    async #runPass(control) {
      const started = performance.now()
      const tally = { completed: 0, skipped: 0, failed: 0, skippedBy: { route: 0, locked: 0, finished: 0, stale: 0, backoff: 0, gaveUp: 0 } }
      const skip = (reason) => {
        tally.skipped++
        tally.skippedBy[reason]++
      }
      this.#swept = false
      let error
      try {
        const listed = await this.#candidates()
        let driven = 0
        for (const k of listed) {
          if (control.stop || driven >= this.limit) break
          const routed = this.#route(k)
          if (!routed) {
            skip('route')
            continue
          }
          const parked = this.#parkedReason(k.id, Date.now())
          if (parked) {
            skip(parked)
            continue
          }
          driven++
          const outcome = await this.#drive(k, routed)
          if (outcome === 'completed' || outcome === 'failed') tally[outcome]++
          else skip(outcome)
        }
      } catch (e) {
        error = e
      }
      const result = { ...tally, durationMs: performance.now() - started }
      if (channels.completerPass.hasSubscribers) {
        channels.completerPass.publish(error === undefined ? { tenant: this.tenant, ...result } : { tenant: this.tenant, ...result, error })
      }
      if (error !== undefined) throw error
      return result
    }

    /** Drive one key: 'completed', 'failed', or the reason it was skipped. */
    async #drive(listedKey, { route, match }) {
      const service = this.#service
      const started = performance.now()
      let key
      try {
        key = await initializeRequest.call(service, listedKey.idempotency_key, listedKey.request_method, listedKey.request_params, listedKey.request_path)
      } catch (e) {
        if (HELD.has(field(e, 'code'))) return 'locked'
        const type = field(e, 'type')
        if (type === 'duplicate_error' || type === 'invalid_data') {
          // The stored request cannot be claimed as itself (a key made some other way): not
          // something a retry fixes. Reported, and looked at again after the recheck period.
          this.#parked.set(listedKey.id, { until: Date.now() + GIVE_UP_RECHECK_MS, reason: 'gaveUp' })
          this.#publishFail({ key: listedKey, route, recoveryPoint: listedKey.recovery_point, attempt: null, gaveUp: false, nextAttemptAt: null, error: e })
          return 'failed'
        }
        throw e
      }
      if (key.recovery_point === 'finished') return 'finished'

      const from = key.recovery_point
      let gate
      try {
        gate = await this.#countAttempt(key)
      } catch (e) {
        const code = field(e, 'code')
        if (HELD.has(code)) return 'locked'
        if (code === 'IDEMPOTENCY_KEY_STALE') return 'stale'
        throw this.#bookkeepingError(e)
      }
      if (gate.skip) {
        const until = gate.skip === 'gaveUp' ? Date.now() + GIVE_UP_RECHECK_MS : gate.until?.getTime() ?? Date.now() + this.backoffMs
        this.#parked.set(key.id, { until, reason: gate.skip })
        if (gate.newlyGaveUp) this.#publishGiveUp({ key, route, attempts: gate.attempts })
        return gate.skip
      }
      key = gate.key
      const attempt = gate.attempt

      let at = key.recovery_point
      try {
        const stages = route.build(key.request_params, key, match)
        while (key.recovery_point !== 'finished') {
          at = key.recovery_point
          const stage = stages != null && Object.prototype.hasOwnProperty.call(stages, at) ? stages[at] : undefined
          if (typeof stage !== 'function') {
            throw Object.assign(new Error(`completer: route "${route.name}" has no stage for recovery point "${at}"`), { type: 'unexpected_state', code: 'COMPLETER_NO_STAGE' })
          }
          key = await service.workStage(key.idempotency_key, stage, { recoveryPoint: at })
        }
      } catch (e) {
        const code = field(e, 'code')
        // Refused before the callback ran: the client came back, another completer drove it on,
        // or (SQLite) another process held the write lock past busyTimeoutMs.
        if (code === 'IDEMPOTENCY_KEY_LOCKED' || code === 'DATABASE_BUSY') return 'locked'
        if (code === 'IDEMPOTENCY_KEY_STALE') return 'stale'
        await this.#recordFailure(key, route, at, attempt, e)
        return 'failed'
      }
      if (channels.completerComplete.hasSubscribers) {
        channels.completerComplete.publish({ key: key.idempotency_key, tenant: this.tenant, route: route.name, from, attempt, durationMs: performance.now() - started, responseCode: key.response_code })
      }
      return 'completed'
    }

    /** The attempt counted, committed, before any stage runs; or why the key is left alone. */
    async #countAttempt(key) {
      let outcome
      const storedKey = this.#storedKey(key.idempotency_key)
      const tenant = this.tenant
      const sweep = !this.#swept
      const updated = await workStage.call(
        this.#service,
        key.idempotency_key,
        async (tx) => {
          outcome = undefined // a stage re-run after a serialization failure starts over
          const now = new Date()
          if (sweep) {
            const cutoff = new Date(now.getTime() - SWEEP_AFTER_MS)
            const prefix = tenant === null ? null : `${tenant}/`
            await tx.query(sweepSql(prefix !== null), prefix === null ? [cutoff, SWEEP_BATCH] : [cutoff, SWEEP_BATCH, prefix.length, prefix])
          }
          const counted = await tx.query(COUNT_ATTEMPT, [key.id, storedKey, now, this.maxAttempts])
          if (counted.length > 0) {
            outcome = { attempt: Number(counted[0].attempts) }
          } else {
            const [row] = await tx.query(READ_ATTEMPTS, [key.id])
            const attempts = row ? Number(row.attempts) : 0
            if (attempts >= this.maxAttempts) {
              const newlyGaveUp = row.gave_up_at == null
              if (newlyGaveUp) await tx.query(MARK_GAVE_UP, [key.id, now])
              outcome = { skip: 'gaveUp', attempts, newlyGaveUp }
            } else {
              outcome = { skip: 'backoff', until: toDate(row?.next_attempt_at) }
            }
          }
          return { recovery_point: key.recovery_point }
        },
        { recoveryPoint: key.recovery_point },
      )
      if (sweep) this.#swept = true
      return { key: updated, ...outcome }
    }

    /** The failed attempt's error and backoff, in a transaction of its own (the stage's rolled back). */
    async #recordFailure(key, route, at, attempt, error) {
      const gaveUp = attempt >= this.maxAttempts
      const nextAttemptAt = gaveUp ? null : new Date(Date.now() + this.backoff(attempt))
      const { code, message } = describe(error)
      this.#parked.set(key.id, gaveUp ? { until: Date.now() + GIVE_UP_RECHECK_MS, reason: 'gaveUp' } : { until: nextAttemptAt.getTime(), reason: 'backoff' })
      try {
        await retryLocked(() => workStage.call(
          this.#service,
          key.idempotency_key,
          async (tx) => {
            await tx.query(RECORD_FAILURE, [key.id, code, message, nextAttemptAt, gaveUp ? new Date() : null])
            return { recovery_point: at }
          },
          { recoveryPoint: at },
        ))
      } catch (e) {
        const c = field(e, 'code')
        // The client (or another completer) has the key now: the attempt stays counted, its
        // error and backoff are not written. Anything else is the database failing the pass.
        if (!HELD.has(c) && c !== 'IDEMPOTENCY_KEY_STALE' && c !== 'IDEMPOTENCY_KEY_NOT_FOUND') throw this.#bookkeepingError(e)
      }
      this.#publishFail({ key, route, recoveryPoint: at, attempt, gaveUp, nextAttemptAt, error })
      if (gaveUp) this.#publishGiveUp({ key, route, attempts: attempt, error })
    }

    #publishFail({ key, route, recoveryPoint, attempt, gaveUp, nextAttemptAt, error }) {
      if (!channels.completerFail.hasSubscribers) return
      const { code } = describe(error)
      channels.completerFail.publish({ key: key.idempotency_key, tenant: this.tenant, route: route.name, recoveryPoint, attempt, maxAttempts: this.maxAttempts, gaveUp, nextAttemptAt, error, code })
    }

    #publishGiveUp({ key, route, attempts, error }) {
      if (!channels.completerGiveUp.hasSubscribers) return
      const event = { key: key.idempotency_key, tenant: this.tenant, route: route.name, recoveryPoint: key.recovery_point, attempts }
      if (error !== undefined) Object.assign(event, { error, code: describe(error).code })
      channels.completerGiveUp.publish(event)
    }

    /** A bookkeeping statement failed: say so when the completer's table is missing. */
    #bookkeepingError(e) {
      const { code, message } = describe(e)
      if (code === '42P01' || /no such table: idempotency_key_completer/.test(message)) {
        return Object.assign(new Error('completer: the idempotency_key_completer table is missing; run service.migrate()'), { type: 'database_error', code, cause: e, date: new Date() })
      }
      return e
    }
  }

  IdempotencyKeyService.prototype.completer = function completer(options) {
    return new Completer(this, options)
  }
  return { Completer, channels }
}

module.exports = { install, channels }
