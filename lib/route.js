'use strict'
// Routes and acceptance, shared by the middleware and the completer.
//
// The trust rule (README, "What is stored when"): a request is *accepted* once its handler began
// its work, and only an accepted request leaves an idempotent result or may be finished by the
// completer. Acceptance is a row in `idempotency_key_accepted` naming the route that took the
// request ("POST /store/carts/:id/complete", as the app declared it) and its decoded path
// parameters, so the completer selects keys by route in SQL and never re-parses a stored path.
// The row is written in the same transaction as the first stage the handler runs, or by an
// explicit `accept()` that commits on its own (when the first stage is not the right marker).
const { invalid, typedError } = require('./errors.js')
const { SQL } = require('./sql.js')

/** Keys the middleware refuses from clients: the completer's own row lives under this prefix. */
const RESERVED_PREFIX = 'medusa-idempotency-native:'

const ROUTE = /^([A-Za-z]+) (\/\S*)$/

/** `"post /a/:id"` → `{ method: 'POST', path: '/a/:id', name: 'POST /a/:id' }`, or null if malformed. */
function parseRouteName(name) {
  const m = typeof name === 'string' ? ROUTE.exec(name) : null
  if (!m) return null
  const method = m[1].toUpperCase()
  return { method, path: m[2], name: `${method} ${m[2]}` }
}

/**
 * The path of a request target as Express routes it (`parseurl(req).pathname`): the query and
 * fragment dropped, and an absolute-form target (`http://host/p`, RFC 9112 §3.2.2) reduced to
 * its path.
 */
function targetPath(url) {
  let u = String(url ?? '/')
  const abs = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(u)
  if (abs) u = u.slice(abs[0].length)
  const end = u.search(/[?#]/)
  if (end !== -1) u = u.slice(0, end)
  return u === '' ? '/' : u
}

function decode(segment) {
  try {
    return decodeURIComponent(segment)
  } catch {
    return null
  }
}

/**
 * Match `path` against a declared route path the way Express's default router does: case
 * insensitive, an optional trailing slash, `:name` one segment each, values percent-decoded.
 * Returns the decoded parameters, or null.
 */
function matchPath(pattern, path) {
  const want = pattern.split('/')
  let have = path.split('/')
  if (have.length === want.length + 1 && have[have.length - 1] === '') have = have.slice(0, -1)
  if (have.length !== want.length) return null
  const params = {}
  for (let i = 0; i < want.length; i++) {
    if (want[i].startsWith(':')) {
      if (have[i] === '') return null
      const v = decode(have[i])
      if (v === null) return null
      params[want[i].slice(1)] = v
    } else if (want[i].toLowerCase() !== have[i].toLowerCase()) {
      return null
    }
  }
  return params
}

/**
 * The route that took `req` and its decoded parameters: `route` when given (a declared route
 * name, matched against the request's path), else Express's `req.route` (with `req.baseUrl`
 * and `req.params`), else `{ name: null }` (accepted, but no completer will drive it).
 */
function routeOf(req, route) {
  const method = String(req.method).toUpperCase()
  if (route !== undefined && route !== null) {
    const parsed = parseRouteName(route)
    if (!parsed) throw invalid(`accept(): route ${JSON.stringify(route)} must be "METHOD /path"`)
    if (parsed.method !== method) throw invalid(`accept(): route "${parsed.name}" is not for a ${method} request`)
    const params = matchPath(parsed.path, targetPath(req.originalUrl ?? req.url))
    if (!params) throw invalid(`accept(): route "${parsed.name}" does not match the request's path`)
    return { name: parsed.name, pathParams: params }
  }
  const r = req.route
  if (r && typeof r.path === 'string') {
    const pathParams = {}
    const p = req.params
    if (p && typeof p === 'object') for (const k of Object.keys(p)) if (typeof p[k] === 'string') pathParams[k] = p[k]
    return { name: `${method} ${typeof req.baseUrl === 'string' ? req.baseUrl : ''}${r.path}`, pathParams }
  }
  return { name: null, pathParams: {} }
}

/**
 * Rows from whatever a stage's handle or a caller's executor resolved to: ours and TypeORM's
 * SELECT, a rows array; TypeORM's UPDATE/DELETE … RETURNING, `[rows, rowCount]`;
 * node-postgres, `{ rows }`.
 */
function rowsOf(result) {
  if (Array.isArray(result)) return result.length === 2 && Array.isArray(result[0]) && typeof result[1] === 'number' ? result[0] : result
  return result && Array.isArray(result.rows) ? result.rows : []
}

/** The key as stored: `<tenant>/<key>` under forTenant, else the key itself. Unique across tenants. */
function scopedKey(tenant, key) {
  return tenant === undefined || tenant === null ? key : `${tenant}/${key}`
}

/** Record acceptance through a stage's handle (inside the caller's transaction). */
async function recordAcceptance(tx, key, storedKey, route) {
  await tx.query(SQL.acceptRequest, [key.id, storedKey, route.name, JSON.stringify(route.pathParams ?? {}), new Date()])
}

/**
 * `stage` run as an accepted request's stage: recording the acceptance first when `record`
 * (`{ storedKey, route }`) is given, and removing it with the stage that finishes the key (a
 * finished key needs no completer), all in the stage's own transaction.
 */
function acceptedStage(stage, key, record) {
  return async (tx) => {
    if (record) await recordAcceptance(tx, key, record.storedKey, record.route)
    const result = await stage(tx)
    let finishes = false
    try {
      finishes = result !== null && typeof result === 'object' && !result.recovery_point
    } catch {
      // An unreadable result: the service refuses it and rolls back.
    }
    if (finishes) await tx.query(SQL.forgetAcceptance, [key.id])
    return result
  }
}

/** A missing acceptance table means the schema predates it. */
function migrationHint(e) {
  let code
  let message
  try {
    code = e?.code
    message = String(e?.message ?? '')
  } catch {
    return e
  }
  if (code === '42P01' || /no such table: idempotency_key_accepted/.test(message)) {
    return typedError('database_error', code, 'the idempotency_key_accepted table is missing; run service.migrate()', { cause: e })
  }
  return e
}

// The service's own row: a finished key, created on first use, whose stage gives the completer
// and the middleware's sweep a transaction for their statements (the service runs SQL only
// inside a key's stage). Clients cannot name it (the middleware refuses RESERVED_PREFIX); its
// method is no HTTP method, so no request's fingerprint matches it; reap() may remove it, and it
// is made again.
const ANCHOR = `${RESERVED_PREFIX}completer`
const ANCHOR_METHOD = 'MEDUSA-IDEMPOTENCY-NATIVE'

/**
 * Run `fn(tx)` in a stage on the service's own row (`workStage`, the native one when given),
 * creating the row if it is missing. Resolves to what `fn` returned.
 */
async function onAnchor(service, workStage, fn) {
  for (let created = false; ; created = true) {
    let out
    try {
      await workStage.call(
        service,
        ANCHOR,
        async (tx) => {
          out = await fn(tx)
          return { recovery_point: 'finished' }
        },
        { recoveryPoint: 'finished' },
      )
      return out
    } catch (e) {
      if (created || e?.code !== 'IDEMPOTENCY_KEY_NOT_FOUND') throw e
    }
    try {
      await service.create({ idempotency_key: ANCHOR, request_method: ANCHOR_METHOD, request_path: '/', recovery_point: 'finished' })
    } catch (e) {
      if (e?.type !== 'duplicate_error') throw e // made meanwhile by another process: use it
    }
  }
}

/** Acceptance rows of keys that are finished or gone (reaped), removed in batches. */
async function sweepAccepted(tx, tenant, batch) {
  const prefix = tenant === null || tenant === undefined ? null : `${tenant}/`
  const rows = await tx.query(prefix === null ? SQL.sweepAccepted : SQL.sweepAcceptedScoped, prefix === null ? [batch] : [batch, prefix.length, prefix])
  return rows
}

module.exports = { onAnchor, sweepAccepted, acceptedStage, RESERVED_PREFIX, parseRouteName, targetPath, matchPath, routeOf, rowsOf, scopedKey, recordAcceptance, migrationHint }
