'use strict'
// Argument slots shared by several properties: keys, numeric and isolation options, columns.
const { fc, V, wrap, odd, numberArb } = require('./values')
const { FreshKey } = require('./cases')
const { ctx } = require('./context')

const kindOf = (v) => (v === null ? 'null' : typeof v)
const nullish = (v) => v === undefined || v === null

/** A key argument: an existing key, a fresh (absent) one, or anything odd. */
const keyArb = () =>
  fc.oneof(
    { weight: 5, arbitrary: fc.constantFrom(...ctx.keys).map((k) => Object.assign(new V(JSON.stringify(k), k), { cls: 'existing' })) },
    { weight: 2, arbitrary: fc.constant(null).map(() => new FreshKey('absent')) },
    { weight: 4, arbitrary: odd.map((x) => Object.assign(x, { cls: 'odd' })) },
  )

/** Expectation for a key argument of lock/update/workStage (a string, SPEC §3). */
function keyArgProblem(k) {
  return typeof k.v !== 'string' ? 'invalid' : null
}

const positive = (n) => typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffffffff

const optNumArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant(new V('absent', undefined)) },
  { weight: 3, arbitrary: wrap(fc.integer({ min: 0, max: 60000 })) },
  { weight: 2, arbitrary: numberArb },
  { weight: 2, arbitrary: odd },
)
const ISOLATIONS = ['SERIALIZABLE', 'REPEATABLE READ', 'READ COMMITTED', 'read committed', 'Serializable', 'READ UNCOMMITTED', 'SNAPSHOT', '']
const isolationArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant(new V('absent', undefined)) },
  { weight: 3, arbitrary: wrap(fc.constantFrom(...ISOLATIONS)) },
  { weight: 2, arbitrary: odd },
)
const NUM_OPTS = ['maxConnections', 'lockTimeoutMs', 'maxRetries', 'stageTimeoutMs', 'acquireTimeoutMs', 'busyTimeoutMs']

/** Is a numeric option valid (SPEC: non-negative integer ≤ u32)? null: invalid. */
const numOptOk = (v) => nullish(v) || positive(v)

function buildOptions(model, url) {
  const o = {}
  if (url) o.url = url.v
  for (const [k, x] of Object.entries(model)) if (x.v !== undefined || x.d !== 'absent') o[k] = x.v
  return o
}

/** Which option fields make `connect`/`detached` refuse with invalid_data (SPEC §6). */
function optionsInvalid(o, { url = true } = {}) {
  if (url && !nullish(o.url) && typeof o.url !== 'string') return 'url'
  for (const k of NUM_OPTS) if (k in o && !numOptOk(o[k])) return k
  if (o.maxConnections === 0 && url) return 'maxConnections 0'
  if (typeof o.maxConnections === 'number' && o.maxConnections > 1000 && url) return 'maxConnections over 1000'
  if ('isolationLevel' in o && !nullish(o.isolationLevel)) {
    if (typeof o.isolationLevel !== 'string') return 'isolationLevel'
    if (!['SERIALIZABLE', 'REPEATABLE READ', 'READ COMMITTED'].includes(o.isolationLevel.toUpperCase())) return null // unknown text: typed either way
  }
  return null
}

const COLUMNS = ['id', 'idempotency_key', 'created_at', 'locked_at', 'request_method', 'request_params', 'request_path', 'response_code', 'response_body', 'recovery_point']

module.exports = { kindOf, nullish, keyArb, keyArgProblem, positive, optNumArb, isolationArb, numOptOk, optionsInvalid, COLUMNS }
