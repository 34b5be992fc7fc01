'use strict'
// Judging tx.query: rows or a typed rejection, exact values for echo statements, and a
// connection of its own (probed afterwards) for cases that run risky statements.
const { IdempotencyKeyService } = require('./addon')
const { config, isPg } = require('./config')
const { call } = require('./cases')
const { PROBE_KEY } = require('./context')
const { describe } = require('./values')
const { fail, judge, deepEq, expectedJson, hasNul, isValidDate, untyped, showErr, showOut, jsonMismatch } = require('./oracle')
const { UNSETTLING } = require('./sql')

/** Exact results for echo statements with well-formed parameters; null: no exact expectation. */
function echoExpectation(sql, params) {
  if (!Array.isArray(params) || params.length !== 1) return null
  const p = params[0]
  const exact = (expect) => ({ expect })
  if (isPg) {
    if (sql === 'SELECT $1::text AS v' && typeof p === 'string') return p.includes('\u0000') ? { mustFail: 'NUL in text' } : exact([{ v: p.toWellFormed() }])
    if (sql === 'SELECT $1::float8 AS v' && typeof p === 'number') return { check: (rows) => rows.length === 1 && (Object.is(rows[0].v, p) || (p === 0 && rows[0].v === 0)) }
    if ((sql === 'SELECT $1::int8 AS v' || sql === 'SELECT $1::numeric AS v') && typeof p === 'bigint') {
      if (sql.includes('int8') && (p > 2n ** 63n - 1n || p < -(2n ** 63n))) return { mustFail: 'out of int8 range' }
      return exact([{ v: p.toString() }])
    }
    if (sql === 'SELECT $1::bool AS v' && typeof p === 'boolean') return exact([{ v: p }])
    if (sql === 'SELECT $1::timestamptz AS v' && p instanceof Date) {
      if (!isValidDate(p)) return { mustFail: 'an invalid Date (node-postgres sends "NaN-NaN…", which PostgreSQL refuses)' }
      const y = p.getUTCFullYear()
      if (y < -4700 || y > 294000) return null
      return { check: (rows) => rows.length === 1 && rows[0].v instanceof Date && rows[0].v.getTime() === p.getTime() }
    }
    if (sql === 'SELECT $1::bytea AS v' && Buffer.isBuffer(p)) return { check: (rows) => rows.length === 1 && Buffer.isBuffer(rows[0].v) && rows[0].v.equals(p) }
    if (sql === 'SELECT $1::jsonb AS v' && p !== null && typeof p === 'object' && !Array.isArray(p) && !(p instanceof Date) && !Buffer.isBuffer(p) && !hasNul(p)) {
      const e = expectedJson(p)
      if (e.json === undefined || e.exotic) return null
      return { check: (rows) => rows.length === 1 && !jsonMismatch(rows[0].v, e.json) }
    }
    return null
  }
  if (sql === 'SELECT $1 AS v' || sql === 'SELECT ?1 AS v') {
    if (typeof p === 'string') return exact([{ v: p.toWellFormed() }])
    if (typeof p === 'number' && Number.isFinite(p)) return { check: (rows) => rows.length === 1 && (rows[0].v === p || (p === 0 && rows[0].v === 0)) }
    if (typeof p === 'boolean') return exact([{ v: p ? 1 : 0 }])
    if (p === null || p === undefined) return exact([{ v: null }])
    if (typeof p === 'bigint') return { check: (rows) => rows.length === 1 && String(rows[0].v) === p.toString() }
    if (p instanceof Date) return isValidDate(p) ? exact([{ v: p.toISOString() }]) : { mustFail: 'an invalid Date' }
    if (Buffer.isBuffer(p)) return { check: (rows) => rows.length === 1 && Buffer.isBuffer(rows[0].v) && rows[0].v.equals(p) }
  }
  return null
}

/** Judge one tx.query outcome: rows (an array of objects) or a typed rejection; echo values exact. */
function judgeQuery(o, sql, params, what = 'tx.query') {
  if (o.k === 'throw') fail(`${what} threw synchronously: ${showErr(o.e)}`)
  if (o.k === 'value') fail(`${what} returned a non-promise ${describe(o.v)}`)
  let echo = null
  try {
    echo = typeof sql === 'string' ? echoExpectation(sql, params) : null
  } catch {
    echo = null // params whose inspection throws (Proxy traps): no exact expectation
  }
  if (o.k === 'rej') {
    const why = untyped(o.e)
    if (why) fail(`${what}: ${why}`)
    if (echo && (echo.expect || echo.check) && !['unexpected_state', 'conflict'].includes(o.e.type) && o.e.code !== '25P02' && o.e.code !== '57014' && o.e.code !== '55P03') {
      fail(`${what}(${describe(sql)}, ${describe(params)}) must return the value, got ${showErr(o.e)}`)
    }
    return false
  }
  if (!Array.isArray(o.v)) fail(`${what} resolved to a non-array ${describe(o.v)}`)
  for (const row of o.v) if (row === null || typeof row !== 'object') fail(`${what} resolved to a non-object row ${describe(row)}`)
  if (echo) {
    if (echo.mustFail) fail(`${what}(${describe(sql)}, ${describe(params)}) must fail (${echo.mustFail}), got rows ${describe(o.v)}`)
    if (echo.expect && !deepEq(o.v, echo.expect)) fail(`${what}(${describe(sql)}, ${describe(params)}) returned ${describe(o.v)}, expected ${describe(echo.expect)}`)
    if (echo.check && !echo.check(o.v)) fail(`${what}(${describe(sql)}, ${describe(params)}) returned ${describe(o.v)}, which does not round-trip`)
  }
  return true
}

/**
 * A service of its own with ONE connection, for cases that run transaction control or session
 * statements through tx.query: if they leave the connection in a bad state, the probe after the
 * case (a plain stage on the same connection) shows it, and the shared service stays clean.
 */
async function isolated() {
  return IdempotencyKeyService.connect({ url: config.url, stageTimeoutMs: 5000, acquireTimeoutMs: 5000, lockTimeoutMs: 200, maxConnections: 1 })
}

/** After a risky case: a plain stage on the same (single) connection must still work. */
async function probeAfter(svc, what, sessionTouched) {
  const o = await call(() => svc.workStage(PROBE_KEY, async (tx) => {
    const r = await tx.query('SELECT 1 AS one')
    if (!deepEq(r, [{ one: 1 }])) throw new Error(`probe read ${describe(r)}`)
    return { recovery_point: 'probed' }
  }), 'the probe stage')
  await call(() => svc.close(), 'close')
  if (sessionTouched) return judge(o, {})
  if (o.k !== 'ok') fail(`the connection is unusable after a stage that ran ${what}: the next stage on it failed with ${showOut(o)}`)
}

/** Judge a sequence of tx.query outcomes in one transaction: exact echoes only until one fails. */
function judgeQueries(list) {
  let strict = true
  for (const { o, sql, params } of list) {
    judgeQuery(o, strict ? sql : null, params)
    if (o.k !== 'ok' || typeof sql !== 'string' || UNSETTLING.test(sql)) strict = false
  }
}

module.exports = { judgeQuery, isolated, probeAfter, judgeQueries }
