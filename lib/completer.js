'use strict'
// The completer: drives requests whose client gave up half-way to the end, with the route's own
// stages rebuilt from what the key stores (`request_params`), so the HTTP handler and the
// completer run the same code.
//
// It drives only requests a handler accepted (lib/route.js: a row in idempotency_key_accepted,
// committed with the first stage the handler ran or by accept()), never one that ended before
// its handler began (refused by authentication or validation, a 404): that one has no result to
// finish. A pass selects, in one statement, accepted keys of its registered routes (by the route
// the handler recorded, so no stored path is re-parsed) that are unfinished and idle and not
// backing off, oldest progress first, up to `limit`, loading only ids, route and path
// parameters; however many other keys the table holds, memory stays bounded by `limit` and the
// oldest eligible key is reached. For each:
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
// diagnostics_channel; the route's stages are. The listing runs in a stage on the service's own
// row (route.js `onAnchor`), as does the sweep of rows of finished or deleted keys.

const { invalid, field, typedError } = require('./errors.js')
const { SQL, completerList } = require('./sql.js')
const dc = require('node:diagnostics_channel')
const { AsyncResource } = require('node:async_hooks')
const { onAnchor, sweepAccepted, acceptedStage, parseRouteName, recordAcceptance, scopedKey, migrationHint } = require('./route.js')
const { performance } = require('node:perf_hooks')
const { tracing, dbOf } = require('./tracing.js')

const channels = {
  completerPass: dc.channel('medusa-idempotency:completer:pass'),
  completerComplete: dc.channel('medusa-idempotency:completer:complete'),
  completerFail: dc.channel('medusa-idempotency:completer:fail'),
  completerGiveUp: dc.channel('medusa-idempotency:completer:giveup'),
}

const HOUR = 3_600_000
/** The largest `limit`. */
const MAX_SCAN = 10_000
/** A key given up on is looked at again (its attempts row re-read) after this long, or on restart. */
const GIVE_UP_RECHECK_MS = HOUR
/** Attempt rows of keys that are finished or gone are swept once their last attempt is this old. */
const SWEEP_AFTER_MS = 24 * HOUR
const SWEEP_BATCH = 500
const MAX_ERROR_LENGTH = 1000

/**
 * The accepted keys a pass may drive: of a registered route, unfinished, idle, not backing off
 * and not given up on (a key at maxAttempts whose give-up is not yet recorded is listed once more,
 * to record it). Only the columns the pass needs; the key's stored request is read when it is
 * driven, one at a time. `countSql` counts the keys of the same routes left out for backing off
 * or given up on (the pass reports them as skipped).
 */
function listSql({ routes, idleBefore, now, maxAttempts, prefix, limit }) {
  // Parameters in the order bookkeeping.rs numbers them.
  const common = [...routes, idleBefore, idleBefore, ...(prefix === null ? [] : [prefix.length, prefix]), maxAttempts, now]
  const { sql, countSql } = completerList(routes.length, prefix !== null)
  return { sql, params: [...common, limit], countSql, countParams: common }
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
 * completer holds is not retried: a refused claim no longer locks the row, see `initialize` in
 * crates/core/src/pg/sql.rs.)
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

/**
 * `"METHOD /path"` → a matcher over the stored `request_method` / `request_path`. `:name`
 * segments match one path segment each (`/store/carts/:id/complete`); the values are passed to
 * the route's function as `match.pathParams`.
 */
/**
 * `"METHOD /path"` → the route as the handler that accepted a request recorded it: the method
 * and the path as the app declared it (`/store/carts/:id/complete`, with a router's mount
 * path in front). Keys are selected by that name; `:name` values come from what the handler saw
 * (`req.params`, decoded), never from re-parsing the stored path.
 */
function compileRoute(name, build) {
  const parsed = parseRouteName(name)
  if (!parsed) throw invalid(`completer(): route ${JSON.stringify(name)} must be "METHOD /path", as the app declares the route`)
  if (typeof build !== 'function') throw invalid(`completer(): route "${name}" must be a function (params, key, match) => stages`)
  return { name: parsed.name, build }
}

function compileRoutes(routes) {
  if (routes === null || typeof routes !== 'object') throw invalid('completer(): `routes` must be an object of "METHOD /path": (params, key) => stages')
  const compiled = new Map()
  for (const name of Object.keys(routes)) {
    const r = compileRoute(name, routes[name])
    if (compiled.has(r.name)) throw invalid(`completer(): route "${r.name}" is registered twice`)
    compiled.set(r.name, r)
  }
  if (compiled.size === 0) throw invalid('completer(): `routes` names no route')
  return compiled
}

function pathParamsOf(text) {
  try {
    const v = JSON.parse(text)
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? v : {}
  } catch {
    return {}
  }
}

function defaultOnError(err) {
  const { message } = describe(err)
  process.emitWarning(`medusa-idempotency-native completer: ${message}`, { code: 'IDEMPOTENCY_COMPLETER' })
}

/**
 * The completer, over the façade's hooks (index.js): `isBound(service)`, `claim(service, …)`
 * (initializeRequest without an operation event) and `bookkeepingStage(service, key, cb, opts)`.
 */
function install({ isBound, claim, bookkeepingStage }) {
  // The completer's own bookkeeping stages, called as `workStage.call(service, …)`.
  const workStage = function (key, callback, options) {
    return bookkeepingStage(this, key, callback, options)
  }
  const initializeRequest = function (...args) {
    return claim(this, ...args)
  }

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

    /** A listed stored key as this service addresses it (a tenant's copy without its prefix). */
    #shownKey(stored) {
      const t = this.tenant
      return t !== null && stored.startsWith(`${t}/`) ? stored.slice(t.length + 1) : stored
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

    /**
     * The keys this pass considers (see listSql), read in a stage on the service's own row; the
     * first pass of a completer also sweeps rows of finished or deleted keys there. Another
     * completer listing at the same moment: this pass lists nothing.
     */
    async #list() {
      const now = Date.now()
      const tenant = this.tenant
      const prefix = tenant === null ? null : `${tenant}/`
      // Keys parked in this process are listed and skipped: list that many more.
      const limit = Math.min(MAX_SCAN, this.limit + this.#parked.size)
      const { sql, params, countSql, countParams } = listSql({ routes: [...this.#routes.keys()], idleBefore: new Date(now - this.idleMs), now: new Date(now), maxAttempts: this.maxAttempts, prefix, limit })
      const sweep = !this.#swept
      let rows
      try {
        rows = await retryLocked(() =>
          onAnchor(this.#service, workStage, async (tx) => {
            if (sweep) {
              const cutoff = new Date(now - SWEEP_AFTER_MS)
              await tx.query(prefix === null ? SQL.sweepAttempts : SQL.sweepAttemptsScoped, prefix === null ? [cutoff, SWEEP_BATCH] : [cutoff, SWEEP_BATCH, prefix.length, prefix])
              await sweepAccepted(tx, tenant, SWEEP_BATCH)
            }
            const [waiting] = await tx.query(countSql, countParams)
            return { listed: await tx.query(sql, params), backoff: Number(waiting?.backoff ?? 0), gaveUp: Number(waiting?.gave_up ?? 0) }
          }),
        )
      } catch (e) {
        if (HELD.has(field(e, 'code'))) return { listed: [], backoff: 0, gaveUp: 0 }
        throw this.#bookkeepingError(e)
      }
      if (sweep) this.#swept = true
      if (rows.listed.length < limit) {
        // The whole eligible set was seen: forget parked keys that are no longer in it.
        const seen = new Set(rows.listed.map((r) => r.id))
        for (const id of this.#parked.keys()) if (!seen.has(id)) this.#parked.delete(id)
      }
      return rows
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
        const { listed, backoff, gaveUp } = await this.#list()
        for (let i = 0; i < backoff; i++) skip('backoff')
        for (let i = 0; i < gaveUp; i++) skip('gaveUp')
        let driven = 0
        for (const row of listed) {
          if (control.stop || driven >= this.limit) break
          const route = this.#routes.get(row.route)
          if (!route) {
            skip('route')
            continue
          }
          const parked = this.#parkedReason(row.id, Date.now())
          if (parked) {
            skip(parked)
            continue
          }
          driven++
          const outcome = await this.#drive(row, { route, match: { route: route.name, pathParams: pathParamsOf(row.path_params) } })
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
    async #drive(row, { route, match }) {
      const service = this.#service
      const started = performance.now()
      let listedKey
      try {
        // The stored request (the listing left it out), one key at a time.
        listedKey = await service.retrieve(this.#shownKey(row.idempotency_key))
      } catch (e) {
        if (field(e, 'code') === 'IDEMPOTENCY_KEY_NOT_FOUND') return 'stale' // reaped meanwhile
        throw e
      }
      if (listedKey.id !== row.id) return 'stale'
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
      key.scoped_key = this.#storedKey(key.idempotency_key)
      const attempt = gate.attempt

      let at = key.recovery_point
      try {
        const stages = route.build(key.request_params, key, match)
        while (key.recovery_point !== 'finished') {
          at = key.recovery_point
          const stage = stages != null && Object.prototype.hasOwnProperty.call(stages, at) ? stages[at] : undefined
          if (typeof stage !== 'function') {
            throw typedError('unexpected_state', 'COMPLETER_NO_STAGE', `completer: route "${route.name}" has no stage for recovery point "${at}"`)
          }
          key = await service.workStage(key.idempotency_key, acceptedStage(stage, key, null), { recoveryPoint: at })
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
      const updated = await workStage.call(
        this.#service,
        key.idempotency_key,
        async (tx) => {
          outcome = undefined // a stage re-run after a serialization failure starts over
          const now = new Date()
          const counted = await tx.query(SQL.countAttempt, [key.id, storedKey, now, this.maxAttempts])
          if (counted.length > 0) {
            outcome = { attempt: Number(counted[0].attempts) }
          } else {
            const [row] = await tx.query(SQL.readAttempts, [key.id])
            const attempts = row ? Number(row.attempts) : 0
            if (attempts >= this.maxAttempts) {
              const newlyGaveUp = row.gave_up_at == null
              if (newlyGaveUp) await tx.query(SQL.markGaveUp, [key.id, now])
              outcome = { skip: 'gaveUp', attempts, newlyGaveUp }
            } else {
              outcome = { skip: 'backoff', until: toDate(row?.next_attempt_at) }
            }
          }
          return { recovery_point: key.recovery_point }
        },
        { recoveryPoint: key.recovery_point },
      )
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
            await tx.query(SQL.recordFailure, [key.id, code, message, nextAttemptAt, gaveUp ? new Date() : null])
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
      if (code === '42P01' || /no such table: idempotency_key_(completer|accepted)/.test(message)) {
        return typedError('database_error', code, 'completer: the idempotency_key_completer or idempotency_key_accepted table is missing; run service.migrate()', { cause: e })
      }
      return e
    }
  }

  /**
   * Mark a claimed key's request accepted by the handler that took it (`route`, as the app
   * declares it, and its decoded path parameters), in a committed step of its own: from then on
   * a completer registering `route` may finish it. The middleware does this itself (with the
   * first stage, or `req.idempotency.accept()`); code that claims keys with `initializeRequest`
   * calls this once its own checks passed. A finished key is returned as it is.
   */
  async function accept(service, idempotencyKey, options = {}) {
    if (options === null || typeof options !== 'object') throw invalid('accept(key, options): options must be an object')
    const { route: name = null, pathParams = {} } = options
    const route = name === null ? null : parseRouteName(name)
    if (name !== null && route === null) throw invalid(`accept(): route ${JSON.stringify(name)} must be "METHOD /path"`)
    if (pathParams === null || typeof pathParams !== 'object' || Object.values(pathParams).some((v) => typeof v !== 'string')) {
      throw invalid('accept(): pathParams must be an object of strings')
    }
    const key = await service.retrieve(idempotencyKey)
    if (key.recovery_point === 'finished') return key
    const at = key.recovery_point
    try {
      return await service.workStage(
        idempotencyKey,
        async (tx) => {
          await recordAcceptance(tx, key, scopedKey(service.tenant, key.idempotency_key), { name: route && route.name, pathParams: { ...pathParams } })
          return { recovery_point: at }
        },
        { recoveryPoint: at },
      )
    } catch (e) {
      throw migrationHint(e)
    }
  }
  return { Completer, accept, channels }
}

module.exports = { install, channels }
