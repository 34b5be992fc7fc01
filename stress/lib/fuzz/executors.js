'use strict'
// Executors: the fake query executors and raw functions bound by withTransaction(executor),
// bindExecutor(query) and detached(release), calls on a bound copy, and judging them.
const { types } = require('node:util')
const { config, AVOID } = require('./config')
const { fc, odd } = require('./values')
const { judge, checkKey } = require('./oracle')
const { call, fresh } = require('./cases')
const { ctx } = require('./context')
const { COLUMNS } = require('./slots')

const SHAPES = ['pg', 'rows', 'typeorm', 'thenable', 'slow', 'mutate-field', 'drop-field', 'dup-rows', 'rows-odd', 'resolve-odd', 'row-odd', 'throw-sync', 'reject', 'then-throws', 'pg-error', 'fail-after-n', 'sync-value']
const PASS_SHAPES = new Set(['pg', 'rows', 'typeorm', 'thenable', 'slow'])
/** A value that becomes thousands of columns when used as a row (a long string, a wide array or object). */
function isWide(v, depth = 0) {
  try {
    if (typeof v === 'string') return v.length > 10000
    if (v === null || typeof v !== 'object' || types.isProxy(v)) return false
    if (Array.isArray(v)) return v.length > 10000 || (depth === 0 && v.some((x) => isWide(x, 1)))
    return Object.keys(v).length > 10000
  } catch {
    return false
  }
}
/**
 * Rows an executor returns. Once a run has shown that wide rows block the event loop
 * ('wide-rows'), later child processes leave them out so the rest is still explored.
 */
const execModelArb = fc
  .record({ shape: fc.constantFrom(...SHAPES), v: odd, field: fc.constantFrom(...COLUMNS), n: fc.integer({ min: 0, max: 3 }), form: fc.constantFrom('object', 'class', 'function') })
  .filter((m) => !(AVOID.has('wide-rows') && ['rows-odd', 'row-odd', 'resolve-odd', 'sync-value'].includes(m.shape) && isWide(m.v.v)))
const rawModelArb = fc
  .record({ shape: fc.constantFrom('raw-pass', 'raw-odd', 'raw-error', 'raw-error-odd', 'raw-rows-odd', 'raw-throw', 'raw-reject', 'raw-sync', 'raw-error-codes'), v: odd, v2: odd, n: fc.integer({ min: 0, max: 3 }) })
  .filter((m) => !(AVOID.has('wide-rows') && ['raw-rows-odd', 'raw-odd'].includes(m.shape) && isWide(m.v.v)))

/** A plausible key row for fake executors (no database behind them). */
function fakeRow(key) {
  return { id: 'ikey_01ARZ3NDEKTSV4RRFFQ69G5FAV', idempotency_key: key, created_at: new Date(), locked_at: null, request_method: 'POST', request_params: { k: key }, request_path: '/fuzz', response_code: null, response_body: null, recovery_point: 'started' }
}

/** Run `sql` for real (PostgreSQL) or fake a key row; resolves like node-postgres: { rows, rowCount }. */
async function realQuery(sql, params, key) {
  if (ctx.pg) return ctx.pg.query(sql, params)
  const rows = /idempotency_key/i.test(sql) ? [fakeRow(key)] : []
  return { rows, rowCount: rows.length }
}

function buildExecutor(model, key, calls) {
  const q = function query(sql, params) {
    calls.n++
    const shape = model.shape === 'fail-after-n' ? (calls.n > model.n ? 'reject' : 'pg') : model.shape
    const v = model.v.v
    switch (shape) {
      case 'pg':
        return realQuery(sql, params, key)
      case 'rows':
        return realQuery(sql, params, key).then((r) => r.rows)
      case 'typeorm':
        return realQuery(sql, params, key).then((r) => (/^\s*(UPDATE|DELETE)/i.test(sql) ? [r.rows, r.rowCount] : r.rows))
      case 'thenable':
        return { then: (res, rej) => realQuery(sql, params, key).then(res, rej) }
      case 'slow':
        return new Promise((r) => setTimeout(r, 10)).then(() => realQuery(sql, params, key))
      case 'mutate-field':
        return realQuery(sql, params, key).then((r) => r.rows.map((row) => ({ ...row, [model.field]: v })))
      case 'drop-field':
        return realQuery(sql, params, key).then((r) =>
          r.rows.map((row) => {
            const c = { ...row }
            delete c[model.field]
            return c
          }),
        )
      case 'dup-rows':
        return realQuery(sql, params, key).then((r) => [...r.rows, ...r.rows])
      case 'rows-odd':
        return Promise.resolve({ rows: v })
      case 'resolve-odd':
        return Promise.resolve(v)
      case 'row-odd':
        return realQuery(sql, params, key).then((r) => r.rows.map(() => v))
      case 'throw-sync':
        throw v
      case 'reject':
        return Promise.reject(v)
      case 'then-throws':
        return {
          get then() {
            throw v
          },
        }
      case 'pg-error':
        return Promise.reject(Object.assign(new Error('fz executor failure'), { code: v }))
      case 'sync-value':
        return v
      default:
        throw new Error('unknown shape')
    }
  }
  if (model.form === 'class') {
    class Exec {
      query(sql, params) {
        if (this !== exec) return Promise.reject(new Error('executor called with a wrong this'))
        return q(sql, params)
      }
    }
    const exec = new Exec()
    return exec
  }
  if (model.form === 'function') return Object.assign(function executorFn() {}, { query: q })
  return { query: q }
}

/** The raw `bindExecutor` protocol: resolve { rows } or { error: { code, message } }. */
function buildRaw(model, key, calls) {
  return (sql, params) => {
    calls.n++
    const v = model.v.v
    switch (model.shape) {
      case 'raw-pass':
        return realQuery(sql, params, key).then(
          (r) => ({ rows: r.rows }),
          (e) => ({ error: { code: e.code, message: e.message } }),
        )
      case 'raw-odd':
        return Promise.resolve(v)
      case 'raw-error':
        return Promise.resolve({ error: { code: v, message: model.v2.v } })
      case 'raw-error-codes':
        return Promise.resolve({ error: { code: ['40001', '40P01', '23505', '55P03', '25P02', '57014', 'ECONNRESET'][model.n], message: 'fz' } })
      case 'raw-error-odd':
        return Promise.resolve({ error: v })
      case 'raw-rows-odd':
        return Promise.resolve({ rows: v })
      case 'raw-throw':
        throw v
      case 'raw-reject':
        return Promise.reject(v)
      case 'raw-sync':
        return { rows: [fakeRow(key)] }
      default:
        throw new Error('unknown raw shape')
    }
  }
}

const BOUND_METHODS = ['retrieve', 'create', 'lock', 'update', 'initializeRequest', 'workStage', 'workStage-throws']

/** Call one method on a bound copy, with valid arguments. */
/**
 * A bound workStage refused with LOCKED is run once more, after a pause: an earlier case's
 * failed bound stage on the same key releases its lease in the background (it cannot wait: the
 * caller's transaction may still hold the row), and for the moment that UPDATE runs the row
 * is locked. LOCKED is the typed "retry later" a client would act on; twice in a row is a bug.
 */
async function retriedOnReleaseRace(method, run) {
  const o = await run()
  let code
  try {
    code = o.e?.code
  } catch {
    // a revoked proxy or a throwing getter: not ours
  }
  if (method !== 'workStage' || o.k !== 'rej' || code !== 'IDEMPOTENCY_KEY_LOCKED') return o
  await new Promise((r) => setTimeout(r, 200))
  return run()
}

function boundCall(bound, method, key) {
  switch (method) {
    case 'retrieve':
      return call(() => bound.retrieve(key), 'bound retrieve')
    case 'create':
      return call(() => bound.create({ idempotency_key: fresh('bound') }), 'bound create')
    case 'lock':
      return call(() => bound.lock(key), 'bound lock')
    case 'update':
      return call(() => bound.update(key, { request_method: 'PUT' }), 'bound update')
    case 'initializeRequest':
      return call(() => bound.initializeRequest(key, 'POST', { k: key }, '/fuzz'), 'bound initializeRequest')
    case 'workStage':
      return call(() => bound.workStage(key, async () => ({ recovery_point: 'fz_bound' })), 'bound workStage')
    default:
      throw new Error(method)
  }
}

async function inPgTransaction(fn) {
  if (!ctx.pg) return fn()
  try {
    await ctx.pg.query('BEGIN')
  } catch {
    // The client was broken by an earlier case (its executor ran odd SQL): a new one.
    const { Client } = require('pg')
    ctx.pg.end().catch(() => {})
    ctx.pg = new Client({ connectionString: config.url })
    ctx.pg.on('error', () => {})
    await ctx.pg.connect()
    await ctx.pg.query('BEGIN')
  }
  try {
    return await fn()
  } finally {
    await ctx.pg.query('ROLLBACK').catch(() => {})
  }
}

/** Judge a bound method's outcome. Pass-through executors must work; others: typed or correct. */
function judgeBound(o, method, pass, thrown, called) {
  if (method === 'workStage-throws') return called.ran ? judge(o, { mustBeIdentical: [thrown], identical: [thrown] }) : judge(o, { allowSuccess: false })
  // Rows a mutated executor returns are the caller's data: an id it made up comes back as is.
  const exp = { onSuccess: (k) => checkKey(k, 'result', { looseId: !pass }) }
  if (pass && ['retrieve', 'create', 'update', 'workStage'].includes(method)) exp.mustSucceed = true
  judge(o, exp)
}

module.exports = { PASS_SHAPES, execModelArb, rawModelArb, buildExecutor, buildRaw, BOUND_METHODS, retriedOnReleaseRace, boundCall, inPgTransaction, judgeBound }
