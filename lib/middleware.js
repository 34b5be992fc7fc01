'use strict'
// HTTP middleware speaking the IETF `Idempotency-Key` header over IdempotencyKeyService, for
// Express 4, Express 5 and plain `node:http`. It only uses node's own request/response API
// (headers, statusCode, setHeader, end), so the same function runs under all three.
//
// Per matching request (POST and PATCH by default) it parses the header, claims the key with
// `initializeRequest` (method, path and body are the fingerprint), answers the protocol's
// refusals itself (400 missing/malformed, 409 in flight, 422 reused), replays a finished key's
// stored response, and otherwise hands the handler `req.idempotency`: the key, the (possibly
// tenant-scoped) service, `run(stages)` to walk the work stages and `respond()` to send the
// stored response, so the first answer and every replay are the same bytes.

const { field, typedError } = require('./errors.js')
const { SQL } = require('./sql.js')
const { RESERVED_PREFIX, targetPath, routeOf, rowsOf, scopedKey, acceptedStage, recordAcceptance, migrationHint } = require('./route.js')

const MINUTE = 60_000
const DAY = 24 * 60 * MINUTE
const EXPOSED = ['Idempotency-Key', 'Idempotent-Replayed']
// Medusa's error handler statuses by `MedusaError.Types` (node:http mode only; under Express
// anything but the protocol's own answers goes to the application's error handler). Only these
// types have their message shown to the client, as Medusa's handler does; any other thrown value
// (a payment library's error carrying a secret) gets "An unknown error occurred.".
const STATUS_BY_TYPE = {
  invalid_data: 400,
  not_allowed: 400,
  unauthorized: 401,
  not_found: 404,
  conflict: 409,
  duplicate_error: 422,
  payment_authorization_error: 422,
  unexpected_state: 500,
  invalid_argument: 500,
  database_error: 500,
}
// Medusa answers every conflict with this text, whatever the error said.
const CONFLICT_MESSAGE = 'The request conflicted with another request. You may retry the request with the provided Idempotency-Key.'
/** Aborted bodies are reported at most once per this interval (a client can send many). */
const ABORT_REPORT_MS = MINUTE

function httpError(status, code, message) {
  return typedError('invalid_data', code, message, { status })
}

// RFC 8941 sf-string: DQUOTE *( %x20-21 / %x23-5B / %x5D-7E / "\" ( DQUOTE / "\" ) ) DQUOTE,
// optionally followed by parameters (an Item may carry them; unknown ones are ignored).
const SF_STRING = /^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"((?:;[ ]*[a-z*][a-z0-9_.*-]*(?:=(?:"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"|[!#$%&'*+\-.^_`|~0-9A-Za-z:/?]+))?)*)$/
const CONTROL = /[\x00-\x1f\x7f]/

/**
 * The key a header value carries, or `null` if it is malformed. A value starting with a double
 * quote is the IETF draft's sf-string (`"abc"`, `\"` and `\\` unescaped); anything else is a bare
 * token (Stripe's form). Length and character set beyond that are the service's to judge.
 */
function parseIdempotencyKey(value) {
  if (typeof value !== 'string') return null
  const v = value.trim()
  let key
  if (v.startsWith('"')) {
    const m = SF_STRING.exec(v)
    if (!m) return null
    key = m[1].replace(/\\(["\\])/g, '$1')
  } else {
    key = v
  }
  if (key === '' || CONTROL.test(key)) return null
  return key
}

function errorBody(err) {
  return { type: err.type, code: err.code, message: err.message }
}

function writeJson(res, status, body, extraHeaders) {
  const text = body === undefined ? '' : JSON.stringify(body)
  res.statusCode = status
  if (extraHeaders) for (const [k, v] of Object.entries(extraHeaders)) res.setHeader(k, v)
  const noBody = status === 204 || status === 304 || (status >= 100 && status < 200)
  if (noBody) {
    res.removeHeader('Content-Type')
    res.removeHeader('Content-Length')
    res.end()
    return
  }
  res.setHeader('Content-Type', 'application/json; charset=utf-8')
  res.setHeader('Content-Length', Buffer.byteLength(text))
  res.end(text)
}

/**
 * Write a finished key's stored response: status `response_code` (200 if none was stored),
 * `JSON.stringify(response_body)` (no body for 204/304). The first response and every replay
 * go through here, so they are byte-identical. `replayed` adds `Idempotent-Replayed: true`.
 */
function sendStoredResponse(res, key, replayed = false) {
  if (!key || key.recovery_point !== 'finished') {
    throw new TypeError(`the key is not finished (recovery point ${key && key.recovery_point}); run its stages first`)
  }
  const code = key.response_code
  if (code != null && !(Number.isInteger(code) && code >= 100 && code <= 999)) {
    // Stored by a stage, but no HTTP status: node would throw on it. Answer, do not hang.
    const err = typedError('unexpected_state', 'INVALID_RESPONSE_CODE', `the key's stored response_code ${code} is not an HTTP status`)
    writeJson(res, 500, errorBody(err))
    return
  }
  writeJson(res, code ?? 200, key.response_body, replayed ? { 'Idempotent-Replayed': 'true' } : undefined)
}

/** Append our headers to `Access-Control-Expose-Headers`, keeping whatever is already there. */
function exposeHeaders(res) {
  const existing = res.getHeader('Access-Control-Expose-Headers')
  const raw = Array.isArray(existing) ? existing.join(',') : existing == null ? '' : String(existing)
  const list = raw.split(',').map((s) => s.trim()).filter(Boolean)
  const have = new Set(list.map((s) => s.toLowerCase()))
  for (const h of EXPOSED) if (!have.has(h.toLowerCase())) list.push(h)
  res.setHeader('Access-Control-Expose-Headers', list.join(', '))
}

/**
 * The request path as Express routes it: without query string or fragment, an absolute-form
 * target reduced to its path; mount-independent (`originalUrl`), like Medusa's fingerprint.
 */
function requestPath(req) {
  return targetPath(req.originalUrl ?? req.url ?? '/')
}

function isJsonType(contentType) {
  if (typeof contentType !== 'string') return false
  const mime = contentType.split(';')[0].trim().toLowerCase()
  return mime === 'application/json' || (mime.startsWith('application/') && mime.endsWith('+json'))
}

/** Read the whole request stream (node:http, or Express without a body parser), up to `limit` bytes. */
function readStream(req, limit) {
  return new Promise((resolve, reject) => {
    if (req.destroyed || req.readableAborted || req.errored) {
      // The client left before the body was read (say, during an async step before us): its
      // 'close' has fired already and will not again.
      reject(Object.assign(new Error('the client closed the connection before the body was read'), { aborted: true }))
      return
    }
    const chunks = []
    let size = 0
    let failed = false
    const onData = (chunk) => {
      if (failed) return
      size += chunk.length
      if (size > limit) {
        failed = true
        chunks.length = 0
        reject(httpError(413, 'PAYLOAD_TOO_LARGE', `the request body exceeds ${limit} bytes`))
        return
      }
      chunks.push(chunk)
    }
    const cleanup = () => {
      req.removeListener('end', onEnd)
      req.removeListener('error', onError)
      req.removeListener('close', onClose)
    }
    const onEnd = () => {
      cleanup()
      if (!failed) resolve(Buffer.concat(chunks))
    }
    const onError = (e) => {
      cleanup()
      if (!failed) reject(Object.assign(e, { aborted: true }))
    }
    const onClose = () => {
      // 'close' before 'end': the client went away mid-body.
      if (!req.readableEnded) onError(new Error('the client closed the connection before the body was read'))
    }
    req.on('data', onData)
    req.on('end', onEnd)
    req.on('error', onError)
    req.on('close', onClose)
  })
}

/**
 * What a request without a body stores as its parameters: a value of its own, never the NULL of
 * a key made by `create()` (which matches any request).
 */
const NO_BODY = ''
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

function invalidBody(message) {
  return httpError(400, 'INVALID_BODY', message)
}

/** Bytes as text, exactly: bytes that are not UTF-8 are refused, never replaced by U+FFFD. */
function utf8(buf) {
  try {
    return UTF8.decode(buf)
  } catch {
    throw invalidBody('the request body is not valid UTF-8 text')
  }
}

/**
 * Refuse what the fingerprint cannot store exactly: a NUL (PostgreSQL's jsonb cannot hold it), a
 * lone surrogate (JSON escapes one; it has no UTF-8 form) or a number that is not finite (`1e400`
 * parses to Infinity, which is stored as null). Iterative: a deeply nested body cannot overflow
 * the stack.
 */
function checkBody(value) {
  const pending = [value]
  let seen = 0
  while (pending.length > 0) {
    const v = pending.pop()
    if (++seen > 1_000_000) throw invalidBody('the request body has too many values')
    if (typeof v === 'string') {
      if (v.includes('\0')) throw invalidBody('the request body contains a NUL character')
      if (!v.isWellFormed()) throw invalidBody('the request body contains a lone surrogate')
    } else if (typeof v === 'number') {
      if (!Number.isFinite(v)) throw invalidBody('the request body contains a number out of range')
    } else if (Array.isArray(v)) {
      for (const item of v) pending.push(item)
    } else if (v !== null && typeof v === 'object' && !(v instanceof Date)) {
      for (const k of Object.keys(v)) pending.push(k, v[k])
    }
  }
  return value
}

/**
 * The request parameters for the fingerprint: `req.body` when a body parser read the body (a
 * Buffer as its UTF-8 text); otherwise the stream is read here (and `req.body` set): JSON content
 * types parsed, anything else kept as the text. No body is `req.body` if something set it, else
 * `""`. Bodies the fingerprint cannot hold exactly are a 400 `INVALID_BODY`.
 */
async function requestBody(req, limit) {
  // A parser that read the stream (body-parser marks it with `_body`) owns `req.body`. Express
  // 4's json parser also leaves a placeholder `{}` on requests it did not parse (another content
  // type): then the stream is still unread, and its content is the fingerprint, not `{}`.
  if (req._body === true || req.readableEnded) return parsedBody(req.body)
  const buf = await readStream(req, limit)
  if (buf.length === 0) return parsedBody(req.body)
  const text = utf8(buf)
  let body = text
  if (isJsonType(req.headers['content-type'])) {
    try {
      body = JSON.parse(text)
    } catch (e) {
      throw httpError(400, 'INVALID_JSON', `the request body is not valid JSON: ${e.message}`)
    }
  }
  checkBody(body)
  req.body = body
  return body
}

function parsedBody(body) {
  if (body === undefined || body === null) return NO_BODY
  if (Buffer.isBuffer(body)) return checkBody(body.length === 0 ? NO_BODY : utf8(body))
  return checkBody(body)
}

/**
 * Answer a failure. The protocol's own refusals (400/409/413/422) are always answered here.
 * Anything else goes to next(err) under Express (the application's error handler answers);
 * node:http has no such chain, so it gets what Medusa's error handler answers: the status for
 * one of Medusa's error types with its message (a conflict with Medusa's fixed text), anything
 * else a 500 "An unknown error occurred." (and reported), whatever its `type` says.
 */
function answerError(req, res, next, err, express, report) {
  if (res.headersSent) {
    report(err)
    return
  }
  let status
  if (err && typeof err.status === 'number' && err.type === 'invalid_data') status = err.status
  else if (err && err.code === 'IDEMPOTENCY_KEY_LOCKED') status = 409
  else if (err && err.code === 'IDEMPOTENCY_KEY_REUSED') status = 422
  else if (err && err.type === 'invalid_data') status = 400
  if (status !== undefined) {
    writeJson(res, status, errorBody(err), status === 413 ? { Connection: 'close' } : status === 409 ? retryAfter(err) : undefined)
    return
  }
  if (express) {
    next(err)
    return
  }
  const type = field(err, 'type')
  const known = typeof type === 'string' && Object.prototype.hasOwnProperty.call(STATUS_BY_TYPE, type)
  if (!known) {
    report(err)
    writeJson(res, 500, { type: 'unknown_error', code: 'unknown_error', message: 'An unknown error occurred.' })
    return
  }
  let body
  try {
    body = errorBody(err)
    if (type === 'conflict') body.message = CONFLICT_MESSAGE
    if (typeof body.message !== 'string') body.message = String(body.message ?? '')
    if (body.code !== undefined && typeof body.code !== 'string' && typeof body.code !== 'number') body.code = undefined
  } catch {
    body = { type, message: '' }
  }
  writeJson(res, STATUS_BY_TYPE[type], body)
}

/** `Retry-After` for a 409: the seconds the service put on the error (until the holder's lease can expire). */
function retryAfter(err) {
  const seconds = err.retryAfter
  return Number.isInteger(seconds) && seconds >= 1 ? { 'Retry-After': String(seconds) } : undefined
}

/** Hand over to the handler. On node:http `next` is the handler: catch its throw or rejection. */
async function callNext(req, res, next, express, report) {
  if (express) {
    next()
    return
  }
  try {
    await next()
  } catch (e) {
    answerError(req, res, next, e, false, report)
  }
}

function defaultOnError(err) {
  const e = err instanceof Error ? err : new Error(String(err))
  process.emitWarning(`medusa-idempotency-native middleware: ${e.message}`, { code: 'IDEMPOTENCY_MIDDLEWARE' })
}

function validate(options) {
  if (!options || typeof options !== 'object') throw new TypeError('idempotency(options): options must be an object')
  const { service } = options
  if (!service || typeof service.initializeRequest !== 'function') {
    throw new TypeError('idempotency(options): `service` must be an IdempotencyKeyService')
  }
  const methods = options.methods ?? ['POST', 'PATCH']
  if (!Array.isArray(methods) || methods.some((m) => typeof m !== 'string')) {
    throw new TypeError('idempotency(options): `methods` must be an array of strings')
  }
  const ttl = options.ttl ?? DAY
  if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl <= 0) {
    throw new TypeError('idempotency(options): `ttl` must be a positive number of milliseconds')
  }
  const reap = options.reap ?? true
  if (reap && typeof service.reap !== 'function') {
    throw new TypeError('idempotency(options): `service` has no reap(); pass `reap: false`')
  }
  if (options.tenant !== undefined) {
    if (typeof options.tenant !== 'function') throw new TypeError('idempotency(options): `tenant` must be a function')
    if (typeof service.forTenant !== 'function') {
      throw new TypeError('idempotency(options): `tenant` needs a service with forTenant(tenantId)')
    }
  }
  const limit = options.limit ?? 1024 * 1024
  if (typeof limit !== 'number' || !(limit >= 0)) throw new TypeError('idempotency(options): `limit` must be a number of bytes')
  const onError = options.onError ?? defaultOnError
  if (typeof onError !== 'function') throw new TypeError('idempotency(options): `onError` must be a function')
  return {
    service,
    required: options.required ?? true,
    methods: new Set(methods.map((m) => m.toUpperCase())),
    ttl,
    reap: Boolean(reap),
    tenant: options.tenant,
    limit,
    onError,
  }
}

/**
 * `idempotency(options)` → `(req, res, next) => Promise<void>`. See middleware.d.ts for the
 * options and for what the handler finds on `req.idempotency`.
 */
function idempotency(options) {
  const opts = validate(options)
  const reapEveryMs = Math.min(opts.ttl, MINUTE)
  let lastReap = -Infinity
  let reaping = false

  const report = (err) => {
    try {
      opts.onError(err)
    } catch {
      // A throwing reporter must not take the request (or the process) down.
    }
  }

  // Request-driven expiry: no timer to keep the process alive, at most one reap in flight, and
  // never awaited by a request.
  function maybeReap() {
    if (!opts.reap || reaping) return
    const now = Date.now()
    if (now - lastReap < reapEveryMs) return
    lastReap = now
    reaping = true
    let pending
    try {
      pending = Promise.resolve(opts.service.reap({ olderThanMs: opts.ttl }))
    } catch (e) {
      pending = Promise.reject(e)
    }
    pending.then(
      () => {
        reaping = false
      },
      (e) => {
        reaping = false
        report(e)
      },
    )
  }

  const releases = releaseQueue(report)

  // A client that leaves mid-body is nobody's failure, and a client can do it at will: report it
  // at most once per ABORT_REPORT_MS, with how many were left unreported before it.
  let lastAbortReport = -Infinity
  let abortsUnreported = 0
  function reportAborted(err) {
    const now = Date.now()
    if (now - lastAbortReport < ABORT_REPORT_MS) {
      abortsUnreported++
      return
    }
    lastAbortReport = now
    if (abortsUnreported > 0) {
      try {
        err.message = `${err.message} (and ${abortsUnreported} more since the last report)`
      } catch {
        // A frozen error keeps its message.
      }
      abortsUnreported = 0
    }
    report(err)
  }

  return function idempotencyMiddleware(req, res, next) {
    maybeReap()
    // Never rejects: there is nobody to catch it.
    if (!opts.methods.has(String(req.method).toUpperCase())) {
      return callNext(req, res, next, typeof req.app === 'function', report).catch(report)
    }
    return handle(req, res, next).catch(report)
  }

  async function handle(req, res, next) {
    // Express (and anything that sets req.app the same way) has an error chain for next(err).
    const express = typeof req.app === 'function'
    exposeHeaders(res)

    const fail = (err) => answerError(req, res, next, err, express, report)

    let service = opts.service
    let tenant
    let key
    try {
      const values = req.headersDistinct ? req.headersDistinct['idempotency-key'] : undefined
      const raw = req.headers['idempotency-key']
      let headerKey = ''
      if (raw === undefined) {
        if (opts.required) throw httpError(400, 'IDEMPOTENCY_KEY_MISSING', 'the Idempotency-Key header is required')
      } else {
        const parsed = values && values.length > 1 ? null : parseIdempotencyKey(raw)
        if (parsed === null) throw httpError(400, 'IDEMPOTENCY_KEY_MALFORMED', 'the Idempotency-Key header is malformed')
        headerKey = parsed
        res.setHeader('Idempotency-Key', headerKey)
      }
      if (headerKey.startsWith(RESERVED_PREFIX)) {
        throw httpError(400, 'IDEMPOTENCY_KEY_MALFORMED', `an Idempotency-Key cannot start with "${RESERVED_PREFIX}"`)
      }

      if (opts.tenant) {
        const t = opts.tenant(req)
        if (t !== undefined && t !== null) {
          if (typeof t !== 'string') throw new TypeError('idempotency: tenant(req) must return a string or undefined')
          tenant = t
          service = opts.service.forTenant(t)
        }
      }
      // Tenant keys are stored as `<tenant>/<key>` and an unscoped service addresses stored keys
      // as they are: an unscoped request must not name (probe, replay or squat) a tenant's key,
      // whether or not this middleware has a `tenant` option (another one on the table may).
      if (tenant === undefined && headerKey.includes('/')) {
        throw httpError(400, 'IDEMPOTENCY_KEY_MALFORMED', 'an Idempotency-Key without a tenant cannot contain "/"')
      }

      const params = await requestBody(req, opts.limit)
      key = await service.initializeRequest(headerKey, req.method, params, requestPath(req))
      res.setHeader('Idempotency-Key', key.idempotency_key)
    } catch (e) {
      if (field(e, 'aborted')) return reportAborted(e) // the client is gone: nobody to answer
      return fail(e)
    }

    if (key.recovery_point === 'finished') {
      try {
        sendStoredResponse(res, key, true)
      } catch (e) {
        fail(e)
      }
      return
    }

    const stored = scopedKey(tenant, key.idempotency_key)
    const scoped = (k) => Object.assign(k, { scoped_key: scopedKey(tenant, k.idempotency_key) })
    // Whether the handler began its work (run or accept called), and whether this request has
    // committed its acceptance row (with its first stage, or accept()).
    let began = false
    let accepted = false
    let route

    const context = {
      key: scoped(key),
      service,
      tenant,
      /** The key as stored, unique across tenants: the key for side effects (a payment provider's idempotency key). */
      get scopedKey() {
        return stored
      },
      /** Mark the request accepted (committed on its own), before work whose first step is not a stage. */
      async accept(acceptOptions) {
        began = true
        if (accepted) return context.key
        route ??= routeOf(req, acceptOptions?.route)
        const at = context.key.recovery_point
        const first = context.key
        try {
          context.key = scoped(await service.workStage(
            first.idempotency_key,
            async (tx) => {
              await recordAcceptance(tx, first, stored, route)
              return { recovery_point: at }
            },
            { recoveryPoint: at },
          ))
        } catch (e) {
          throw migrationHint(e)
        }
        accepted = true
        return context.key
      },
      /** Walk the stages from the key's recovery point until it is finished; returns the finished key. */
      async run(stages, runOptions) {
        began = true
        route ??= routeOf(req, runOptions?.route)
        let k = context.key
        while (k.recovery_point !== 'finished') {
          const at = k.recovery_point
          const stage = Object.prototype.hasOwnProperty.call(stages, at) ? stages[at] : undefined
          if (typeof stage !== 'function') throw new Error(`idempotency: no stage for recovery point "${at}"`)
          // The first stage this request runs also records its acceptance, in its transaction:
          // accepted exactly when that stage commits.
          const run = acceptedStage(stage, k, accepted ? null : { storedKey: stored, route })
          try {
            k = scoped(await service.workStage(k.idempotency_key, run, { recoveryPoint: at }))
          } catch (e) {
            throw accepted ? e : migrationHint(e)
          }
          accepted = true
          context.key = k
        }
        return k
      },
      /** Send a finished key's stored response (default: the key `run` finished). */
      respond(k = context.key) {
        sendStoredResponse(res, k, false)
      },
    }
    req.idempotency = context

    // A request that ends before its handler began its work (refused by authentication or
    // validation, a 404, a client gone) leaves no idempotent result: its key is released.
    const onEnd = () => {
      if (!began) releases.push(service, key)
    }
    if (res.destroyed || res.writableFinished) setImmediate(onEnd)
    else res.once('close', onEnd)

    await callNext(req, res, next, express, report)
  }
}

// The release of a key no handler took: renamed out of every client's reach (a suffix starting
// with DEL, which no valid key contains), its stored request cleared and its row finished without
// a response, so the client's key is free again, no body is kept, and neither a retry nor the
// completer can finish it. reap() removes the row. A key that was accepted meanwhile (by an
// earlier request's accept()) or moved on is left as it is (SQL.releaseUnaccepted, from the core).
const NOT_RELEASED = Symbol('not released')
/** Releases waiting beyond this many are dropped (their keys stay until reaped), reported once a minute. */
const MAX_PENDING_RELEASES = 10_000
const RELEASE_RETRIES = [20, 80, 250]

/**
 * Releases run one at a time, after their responses: concurrent ones (each renames a key, a write
 * to the unique index another one's stage has read) fail each other's SERIALIZABLE transactions,
 * and nobody waits for them. A serialization failure is retried after a pause.
 */
function releaseQueue(report) {
  const pending = []
  let running = false
  let dropped = 0
  let lastDropReport = -Infinity
  async function drain() {
    running = true
    while (pending.length > 0) {
      const [service, key] = pending.shift()
      for (let i = 0; ; i++) {
        try {
          await release(service, key)
          break
        } catch (e) {
          const code = field(e, 'code')
          if ((code === '40001' || code === '40P01') && i < RELEASE_RETRIES.length) {
            await new Promise((r) => setTimeout(r, RELEASE_RETRIES[i] * (0.5 + Math.random())))
            continue
          }
          report(e)
          break
        }
      }
    }
    running = false
  }
  return {
    push(service, key) {
      if (pending.length >= MAX_PENDING_RELEASES) {
        dropped++
        if (Date.now() - lastDropReport >= ABORT_REPORT_MS) {
          lastDropReport = Date.now()
          report(new Error(`${dropped} key releases dropped (more than ${MAX_PENDING_RELEASES} waiting); those keys stay until reaped`))
          dropped = 0
        }
        return
      }
      pending.push([service, key])
      if (!running) drain().catch(report)
    },
  }
}
const LEFT_ALONE = new Set(['IDEMPOTENCY_KEY_LOCKED', 'IDEMPOTENCY_KEY_STALE', 'IDEMPOTENCY_KEY_NOT_FOUND', 'DATABASE_BUSY'])

async function release(service, key) {
  try {
    await service.workStage(
      key.idempotency_key,
      async (tx) => {
        const rows = rowsOf(await tx.query(SQL.releaseUnaccepted, [key.id, `\x7freleased ${key.id}`]))
        // Thrown, so the stage rolls back and releases the lease of a key that stays.
        if (rows.length === 0) throw NOT_RELEASED
        return { recovery_point: 'finished' }
      },
      { recoveryPoint: 'started' },
    )
  } catch (e) {
    if (e === NOT_RELEASED || LEFT_ALONE.has(field(e, 'code'))) return
    throw migrationHint(e)
  }
}

module.exports = { idempotency, parseIdempotencyKey, sendStoredResponse }
