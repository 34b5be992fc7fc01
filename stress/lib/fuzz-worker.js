'use strict'
// The fuzz child of stress/fuzz.js: runs fast-check properties against the addon in THIS process,
// so that a crash, an abort or a blocked event loop is observed by the parent, not suffered.
//
//   node stress/lib/fuzz-worker.js '<json config>'
//   config: { backend: 'sqlite'|'postgres', url, budgetMs, seed, props?: [names], replay?: { prop, seed, path } }
//
// Protocol (stdout, one line each, written synchronously so the last one survives an abort):
//   CASE {"p":prop,"i":run,"d":description}   before every case
//   FAIL {...}                                 a property failed (counterexample shrunk)
//   HANG {...}                                 a case did not settle in time (then exit 3)
//   DONE {...}                                 all properties ran
// Nothing is written to stderr by this file: the parent scans stderr for panics and aborts.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { types } = require('node:util')
const { fc, V, describe, wrap, special, specials, odd, anyString, jsonData, numberArb, hostileString, MB, GETTER_THROWS, throwingGetter, throwingProxy } = require('./fuzz/values')
const { fail, judge, judgeSync, checkKey, expectedJson, hasNul, isValidDate, untyped, showErr, showOut, jsonMismatch, isFinding } = require('./fuzz/oracle')
const { IdempotencyKeyService, TransactionManager } = require('../..')

const config = JSON.parse(process.argv[2])
const T0 = Date.now()
const isPg = config.backend === 'postgres'
const CASE_TIMEOUT_MS = config.caseTimeoutMs || 15000

const out = (tag, obj) => fs.writeSync(1, `${tag} ${JSON.stringify(obj)}\n`)

// ---------------------------------------------------------------------------------------------
// Case bookkeeping and the per-case timeout

let current = { p: null, i: 0, d: '' }
let cases = 0
const strays = []

process.on('unhandledRejection', (reason) => {
  strays.push({ prop: current.p, run: current.i, d: current.d, what: `unhandled rejection: ${showErr(reason)}` })
})
process.on('uncaughtException', (err) => {
  strays.push({ prop: current.p, run: current.i, d: current.d, what: `uncaught exception: ${showErr(err)}` })
})

function hang(what, hint, kind = 'hang') {
  out('HANG', { prop: current.p, run: current.i, seed: current.seed, path: current.path, d: current.d, what, hint, kind, cases })
  process.exit(3)
}

/** Settle `p` within the case timeout, or report a hang and exit. */
function guard(p, what) {
  let t
  const timer = new Promise(() => {
    t = setTimeout(() => hang(`${what} did not settle within ${CASE_TIMEOUT_MS} ms`), CASE_TIMEOUT_MS)
  })
  return Promise.race([p, timer]).finally(() => clearTimeout(t))
}

/** SQL of tx.query calls not settled yet (to explain a stage that timed out). */
const pendingSql = new Set()

/** tx.query through this, so a stuck statement can be named. */
function txQuery(tx, sql, params) {
  const p = tx.query(sql, params)
  if (p instanceof Promise) {
    const entry = { sql, settled: false, closed: false }
    pendingSql.add(entry)
    p.then(
      () => (entry.settled = true),
      (e) => {
        entry.settled = true
        // Rejected only because the stage ended around it: it had not completed either.
        entry.closed = Boolean(e && e.code === 'TRANSACTION_CLOSED')
      },
    )
  }
  return p
}

/**
 * A stage of this fuzz never waits on its own: its callbacks sleep at most 15 ms. STAGE_TIMEOUT
 * therefore means a statement never completed; the connection (and on SQLite the write lock) is
 * stuck with it, so this child reports a hang and exits, and the parent starts a clean one.
 */
function checkStageTimeout(o, what, called) {
  let code
  try {
    code = o.k === 'rej' && o.e && typeof o.e === 'object' ? o.e.code : undefined
  } catch {
    code = undefined // a revoked proxy or a throwing getter thrown by the callback itself
  }
  if (code === 'STAGE_TIMEOUT') {
    const open = [...pendingSql].filter((e) => !e.settled || e.closed)
    const stuck = open.map((e) => describe(e.sql))
    const nul = open.some((e) => typeof e.sql === 'string' && e.sql.includes('\u0000'))
    const why = !called
      ? 'the callback was never called (the stage waited for its connection or the write lock: something earlier holds it)'
      : stuck.length
        ? `tx.query(${stuck.join(', ')}) never settled (the stage says rolled back, but the statement still holds the connection)`
        : 'the callback never settled'
    hang(`${what} ended with STAGE_TIMEOUT: ${why}`, nul ? 'nul-sql' : undefined)
  }
}

/** Call `fn`, classify: { k: 'ok'|'rej' } for a promise, { k: 'value'|'throw' } for a sync result. */
async function call(fn, what = 'the call') {
  let r
  try {
    r = fn()
  } catch (e) {
    return { k: 'throw', e }
  }
  if (!(r instanceof Promise)) return { k: 'value', v: r }
  return guard(r, what).then(
    (v) => ({ k: 'ok', v }),
    (e) => ({ k: 'rej', e }),
  )
}

const callSync = (fn) => {
  try {
    const v = fn()
    if (v instanceof Promise) {
      v.catch(() => {})
      return { k: 'ok', v }
    }
    return { k: 'value', v }
  } catch (e) {
    return { k: 'throw', e }
  }
}

let uniq = 0
const fresh = (tag = 'fresh') => `fz-${tag}-${process.pid}-${++uniq}-${Math.random().toString(36).slice(2, 8)}`

/** A key that does not exist yet: a new one for every case (shrinking replays values). */
class FreshKey extends V {
  constructor(tag) {
    super(`<a fresh key>`, undefined)
    this.tag = tag
    this.cls = 'absent'
  }
  get v() {
    if (this._case !== cases) {
      this._case = cases
      this._v = fresh(this.tag)
    }
    return this._v
  }
  set v(_) {}
}

// ---------------------------------------------------------------------------------------------
// Context: the service under test and its keys

const ctx = {
  service: null,
  keys: [], // pool keys: stages, locks, updates move them around
  qKeys: [], // keys of the tx.query property (stages that run odd SQL)
  execKeys: [], // keys of the bound-executor properties (PostgreSQL: work in a rolled-back transaction)
  pg: null,
  tmp: null,
}

async function setup() {
  ctx.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idem-fuzz-work-'))
  process.chdir(ctx.tmp) // relative sqlite URLs (connect fuzz) land here, never in the repo
  ctx.service = await IdempotencyKeyService.connect({ url: config.url, stageTimeoutMs: 5000, acquireTimeoutMs: 5000, lockTimeoutMs: 200 })
  await ctx.service.migrate()
  for (let i = 0; i < 16; i++) ctx.keys.push(`fz-key-${i}`)
  for (let i = 0; i < 4; i++) ctx.qKeys.push(`fz-qkey-${i}`)
  for (let i = 0; i < 4; i++) ctx.execKeys.push(`fz-xkey-${i}`)
  await ensureKeys()
  const scratch = isPg
    ? 'CREATE TABLE IF NOT EXISTS fz_scratch (t text, i integer, j jsonb, b bytea, ts timestamptz)'
    : 'CREATE TABLE IF NOT EXISTS fz_scratch (t text, i integer, j text, b blob, ts text)'
  await ctx.service.workStage(ctx.qKeys[0], async (tx) => {
    await tx.query(scratch)
    return { recovery_point: 'scratch_created' }
  })
  if (isPg) {
    const { Client } = require('pg')
    ctx.pg = new Client({ connectionString: config.url })
    ctx.pg.on('error', () => {})
    await ctx.pg.connect()
  }
}

/**
 * SQLite: nothing may keep the write lock once a case has settled (cases run one at a time). An
 * independent connection (better-sqlite3) takes and drops the write lock, waiting at most 500 ms.
 */
async function writeLockHeld() {
  if (isPg) return null
  if (!ctx.lite) {
    const Database = require('better-sqlite3')
    ctx.lite = new Database(config.url.replace(/^sqlite:\/\//, ''), { timeout: 500 })
    ctx.lockCheck = await IdempotencyKeyService.connect({ url: config.url, busyTimeoutMs: 500, maxConnections: 1, stageTimeoutMs: 2000 })
  }
  try {
    ctx.lite.exec('BEGIN IMMEDIATE')
    ctx.lite.exec('ROLLBACK')
  } catch (e) {
    return `another SQLite connection cannot take the write lock (${e.code})`
  }
  // The addon also serialises writers of one file inside the process: a new service must get in.
  const o = await call(() => ctx.lockCheck.workStage(PROBE_KEY, () => ({ recovery_point: 'lock_checked' })), 'the write-lock check stage')
  if (o.k === 'rej' && o.e && ['DATABASE_BUSY', 'STAGE_TIMEOUT', 'POOL_TIMEOUT'].includes(o.e.code)) return `a stage of another service on the same file fails with ${o.e.code}`
  return null
}

/** Properties whose cases run stages on the shared SQLite file: each case must leave the write lock free. */
const STAGE_PROPS = new Set(['workStage', 'txQuery', 'txAfterStage', 'withTransaction'])

/** (Re)create every pool key that is missing (reap may delete them). */
const PROBE_KEY = 'fz-probe-key'

async function ensureKeys() {
  for (const k of [...ctx.keys, ...ctx.qKeys, ...ctx.execKeys, PROBE_KEY]) {
    await ctx.service.create({ idempotency_key: k, request_method: 'POST', request_params: { k }, request_path: '/fuzz' }).catch((e) => {
      if (!(e && e.code === '23505')) throw e
    })
  }
}

/** A key's state, or null when it does not exist. */
async function state(key) {
  let o
  // A connection killed by a case (pg_terminate_backend) may fail one call: retry.
  for (let i = 0; i < 3; i++) {
    o = await call(() => ctx.service.retrieve(key), 'retrieve(state)')
    if (o.k === 'ok') return o.v
    if (o.k === 'rej' && o.e && o.e.type === 'not_found') return null
    if (!(o.k === 'rej' && o.e && o.e.type === 'database_error')) break
  }
  // Keep the pool key usable for later cases (an unreadable locked_at is reset), then report.
  await call(() => ctx.service.update(key, { locked_at: null }), 'repair')
  fail(`reading the state of ${describe(key)} failed: ${showOut(o)}`)
}

/** A key's state, or null when it is absent or cannot be read (odd strings). */
async function tryState(key) {
  const o = await call(() => ctx.service.retrieve(key), 'retrieve(tryState)')
  return o.k === 'ok' ? o.v : null
}

const sameState = (a, b) => {
  const pick = (k) => JSON.stringify([k.recovery_point, k.response_code, k.response_body, k.request_path, k.request_method, k.request_params])
  return pick(a) === pick(b)
}

// ---------------------------------------------------------------------------------------------
// Slots shared by several properties

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

// ---------------------------------------------------------------------------------------------
// SQL for tx.query

const PG_SQL = [
  'SELECT 1 AS one',
  'SELECT $1 AS v',
  'SELECT $1::text AS v',
  'SELECT $1::int AS v',
  'SELECT $1::int8 AS v',
  'SELECT $1::float8 AS v',
  'SELECT $1::numeric AS v',
  'SELECT $1::bool AS v',
  'SELECT $1::jsonb AS v',
  'SELECT $1::json AS v',
  'SELECT $1::bytea AS v',
  'SELECT $1::timestamptz AS v',
  'SELECT $1::date AS v',
  'SELECT $1::uuid AS v',
  'SELECT $1::text[] AS v',
  'SELECT $1::int[] AS v',
  'SELECT $1::varchar(3) AS v',
  'SELECT $1::interval AS v',
  'SELECT $1::inet AS v',
  'SELECT $1::point AS v',
  'SELECT $1::text AS a, $2::int AS b',
  'SELECT $2::text AS v',
  'SELECT $70000::text AS v',
  'SELECT $0',
  "SELECT '$1' AS v",
  'SELECT 1; SELECT 2',
  '',
  ' ',
  ';',
  '-- only a comment',
  '/* unterminated',
  'SELEKT 1',
  'SELECT 1/0',
  'SELECT pg_sleep(0.01)',
  'SELECT generate_series(1, 2000) AS n',
  "SELECT repeat('x', 1000000) AS v",
  'SELECT NULL AS v',
  'SELECT ARRAY[1, NULL, 3] AS v',
  'SELECT 1 AS a, 2 AS a',
  'SELECT 1 AS "__proto__"',
  'SELECT 1 AS "constructor", 2 AS "toString"',
  "SELECT 'NaN'::float8 AS v, 'Infinity'::float8 AS w, '-0'::float8 AS z",
  "SELECT 9223372036854775807::int8 AS v, 1e400::numeric AS w",
  "SELECT '\\x00ff'::bytea AS v",
  "SELECT 'infinity'::timestamptz AS v, '-infinity'::date AS w",
  "SELECT '294276-12-31 23:59:59 UTC'::timestamptz AS v",
  "SELECT '4713-01-01 BC'::date AS v",
  "SELECT '{\"a\":[1,{\"b\":null}]}'::jsonb AS v",
  "SELECT ROW(1, 'a') AS v",
  "SELECT '(1,2)'::point AS v, '1 day'::interval AS w, 'fe80::1'::inet AS x, B'101' AS y, '\\xDEADBEEF'::bytea AS z",
  'SELECT money(1.5) AS v',
  'SELECT txid_current() AS v',
  "SELECT 'a'::\"char\" AS v",
  'SELECT * FROM idempotency_key LIMIT 3',
  'SELECT * FROM idempotency_key FOR UPDATE NOWAIT',
  'INSERT INTO fz_scratch (t, i, j, b, ts) VALUES ($1, $2, $3, $4, $5) RETURNING *',
  'INSERT INTO fz_scratch (t) VALUES ($1) RETURNING *',
  'UPDATE fz_scratch SET t = $1 WHERE false RETURNING *',
  'DELETE FROM fz_scratch WHERE t = $1 RETURNING *',
  'SAVEPOINT fz_sp',
  'ROLLBACK TO SAVEPOINT fz_sp',
  'RELEASE SAVEPOINT fz_sp',
  'SET LOCAL statement_timeout = 1',
  'SET LOCAL lock_timeout = 1',
  "SELECT set_config('fz.x', $1, true) AS v",
  'LISTEN fz_channel',
  "NOTIFY fz_channel, 'x'",
  'COPY fz_scratch TO STDOUT',
  'COPY fz_scratch FROM STDIN',
  'VACUUM fz_scratch',
  'DISCARD ALL',
  "PREPARE TRANSACTION 'fz'",
  'LOCK TABLE fz_scratch IN ACCESS EXCLUSIVE MODE NOWAIT',
  "DO $$ BEGIN RAISE EXCEPTION 'fz raised %', 1 USING ERRCODE = 'P0001'; END $$",
  "DO $$ BEGIN RAISE NOTICE 'fz notice'; RAISE WARNING 'fz warning'; END $$",
  "SELECT pg_advisory_xact_lock(42)",
  'SELECT pg_terminate_backend(pg_backend_pid())',
]
const SQLITE_SQL = [
  'SELECT 1 AS one',
  'SELECT $1 AS v',
  'SELECT $1 AS a, $2 AS b',
  'SELECT ?1 AS v',
  'SELECT ? AS v',
  'SELECT :name AS v',
  'SELECT @x AS v',
  'SELECT $2 AS v',
  'SELECT $999999 AS v',
  'SELECT $0',
  "SELECT '$1' AS v",
  'SELECT CAST($1 AS INTEGER) AS v',
  'SELECT typeof($1) AS t, $1 AS v',
  'SELECT length($1) AS n',
  'SELECT json($1) AS v',
  'SELECT zeroblob(10) AS b',
  'SELECT randomblob(1000000) AS b',
  'SELECT 9223372036854775807 AS v, -9223372036854775808 AS w',
  'SELECT 9007199254740993 AS v',
  'SELECT 1e999 AS v, -1e999 AS w',
  "SELECT 'a' || char(0) || 'b' AS v",
  "SELECT CAST(x'ff' AS TEXT) AS v",
  'SELECT 1 AS a, 2 AS a',
  'SELECT 1 AS "__proto__"',
  'SELECT 1; SELECT 2',
  '',
  ' ',
  ';',
  '-- only a comment',
  '/* unterminated',
  'SELEKT 1',
  'SELECT 1/0',
  'SELECT abs(-9223372036854775808)',
  "SELECT json_extract('{\"a\":1}', '$.a') AS v",
  'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT count(*) AS n FROM c',
  'SELECT * FROM idempotency_key LIMIT 3',
  'INSERT INTO fz_scratch (t, i, j, b, ts) VALUES ($1, $2, $3, $4, $5) RETURNING *',
  'INSERT INTO fz_scratch (t) VALUES ($1) RETURNING *',
  'UPDATE fz_scratch SET t = $1 WHERE 0 RETURNING *',
  'DELETE FROM fz_scratch WHERE t = $1 RETURNING *',
  'SAVEPOINT fz_sp',
  'ROLLBACK TO fz_sp',
  'RELEASE fz_sp',
  'PRAGMA journal_mode',
  'PRAGMA foreign_keys = OFF',
  'PRAGMA query_only = 1',
  "ATTACH DATABASE ':memory:' AS fz_aux",
  'DETACH DATABASE fz_aux',
  'VACUUM',
  'CREATE TEMP TABLE IF NOT EXISTS fz_tmp (x)',
  'SELECT load_extension($1)',
]
const SQL = isPg ? PG_SQL : SQLITE_SQL
/** Statements that end or restart the transaction behind the stage's back. */
const TXCTL = isPg ? ['COMMIT', 'ROLLBACK', 'BEGIN', 'END', 'ABORT', 'COMMIT AND CHAIN', 'START TRANSACTION'] : ['COMMIT', 'ROLLBACK', 'BEGIN', 'END', 'BEGIN IMMEDIATE']
/** Statements after which the callback's writes may legitimately be gone (savepoints). */
const UNDOING = new Set(['ROLLBACK TO SAVEPOINT fz_sp', 'ROLLBACK TO fz_sp', 'DISCARD ALL', 'SELECT pg_terminate_backend(pg_backend_pid())'])

const AVOID = new Set(config.avoid || [])
/**
 * SQL text: the statements above, or anything odd. Once a run has shown that SQL with a NUL byte
 * hangs the connection ('nul-sql'), later child processes leave NUL out of SQL text so the rest
 * of the space is still explored (the hang is reported once, with its input).
 */
const sqlArb = fc
  .oneof({ weight: 6, arbitrary: wrap(fc.constantFrom(...SQL)) }, { weight: 1, arbitrary: odd }, { weight: 1, arbitrary: anyString })
  .filter((x) => !(AVOID.has('nul-sql') && typeof x.v === 'string' && x.v.includes('\u0000')))

const paramValueArb = fc.oneof(
  { weight: 3, arbitrary: odd },
  { weight: 2, arbitrary: jsonData },
  { weight: 2, arbitrary: wrap(hostileString) },
  { weight: 1, arbitrary: wrap(fc.date({ noInvalidDate: false })) },
  { weight: 1, arbitrary: wrap(fc.uint8Array({ maxLength: 16 }).map((a) => Buffer.from(a))) },
  { weight: 1, arbitrary: wrap(fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n })) },
  { weight: 1, arbitrary: wrap(fc.double()) },
)
const PARAM_ARRAY_SPECIALS = [
  special('70000 params', () => new Array(70000).fill(1)),
  special('sparse [ , , ]', () => new Array(3)),
  special('array with a throwing index getter', () => {
    const a = [1, 2]
    Object.defineProperty(a, 0, {
      get() {
        throw GETTER_THROWS
      },
    })
    return a
  }),
  special('Proxy(array) whose traps throw', () => throwingProxy([1])),
  special('frozen [1]', () => Object.freeze([1])),
  special('array subclass', () => {
    class A extends Array {}
    return A.from([1, 'a'])
  }),
  special('array-like { length: 1, 0: "x" }', () => ({ length: 1, 0: 'x' })),
  special('arguments object', function () {
    return (function () {
      return arguments // eslint-disable-line prefer-rest-params
    })(1, 2)
  }),
]
const paramsArb = fc.oneof(
  { weight: 2, arbitrary: fc.constant(new V('no params', undefined)) },
  { weight: 6, arbitrary: fc.array(paramValueArb, { maxLength: 5 }).map((xs) => new V(`[${xs.map((x) => x.d).join(', ')}]`, xs.map((x) => x.v))) },
  { weight: 1, arbitrary: specials(PARAM_ARRAY_SPECIALS) },
  { weight: 1, arbitrary: odd },
)

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

function deepEq(a, b) {
  try {
    require('node:assert').deepStrictEqual(a, b)
    return true
  } catch {
    return false
  }
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

/** Statements after which later results in the same transaction are no longer predictable. */
const UNSETTLING = /SET LOCAL|terminate|COPY|DISCARD|PRAGMA|ATTACH|DETACH|ROLLBACK|COMMIT|BEGIN|END|ABORT|START|RELEASE|SAVEPOINT|LOCK|VACUUM|PREPARE/i

/** Statements that change the connection's session beyond the transaction (the caller's doing). */
const SESSION = /PRAGMA|ATTACH|DETACH|LISTEN/i
const riskySql = (sql) => typeof sql === 'string' && (UNSETTLING.test(sql) || SESSION.test(sql))

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

// ---------------------------------------------------------------------------------------------
// Stage callbacks: a model (plain data, printable) turned into a function at run time

const rpArb = fc.oneof(
  { weight: 4, arbitrary: wrap(fc.constantFrom('fz_a', 'fz_b', 'fz_c', 'started', 'finished')) },
  { weight: 2, arbitrary: anyString },
  { weight: 1, arbitrary: odd },
)
const codeArb = fc.oneof(
  { weight: 4, arbitrary: wrap(fc.integer({ min: 100, max: 599 })) },
  { weight: 1, arbitrary: wrap(fc.integer()) },
  { weight: 2, arbitrary: numberArb },
  { weight: 2, arbitrary: odd },
)
const bodyArb = fc.oneof({ weight: 3, arbitrary: jsonData }, { weight: 2, arbitrary: odd })

const stageObjArb = fc
  .record({ recovery_point: rpArb, response_code: codeArb, response_body: bodyArb }, { requiredKeys: [] })
  .map((m) => ({ t: 'obj', m }))
const getterResultArb = fc.constantFrom('recovery_point', 'response_code', 'response_body').map((f) => ({ t: 'getter', f }))
const resultArb = fc.oneof(
  { weight: 5, arbitrary: stageObjArb },
  { weight: 3, arbitrary: odd.map((v) => ({ t: 'odd', v })) },
  { weight: 1, arbitrary: getterResultArb },
)
const thrownArb = fc.oneof(
  { weight: 3, arbitrary: odd },
  { weight: 1, arbitrary: specials([special('new Error("boom")', () => new Error('boom')), special('Error with custom props', () => Object.assign(new TypeError('custom'), { type: 'mine', code: 42, extra: { a: 1 } })), special('the getter marker', () => GETTER_THROWS)]) },
)
const endArb = fc.oneof(
  { weight: 6, arbitrary: resultArb.map((r) => ({ how: 'return', r })) },
  { weight: 2, arbitrary: thrownArb.map((t) => ({ how: 'throw', t })) },
  { weight: 1, arbitrary: thrownArb.map((t) => ({ how: 'reject-promise', t })) },
  { weight: 1, arbitrary: stageObjArb.map((r) => ({ how: 'return-thenable', r })) },
  { weight: 1, arbitrary: thrownArb.map((t) => ({ how: 'thenable-rejects', t })) },
  { weight: 1, arbitrary: stageObjArb.map((r) => ({ how: 'return-later', r })) },
)
const opArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ op: 'write' }) },
  { weight: 1, arbitrary: fc.constant({ op: 'active' }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('query'), sql: sqlArb, params: paramsArb, caught: fc.boolean({ trueWeight: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('txctl'), sql: fc.constantFrom(...TXCTL) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('unawaited'), sql: wrap(fc.constantFrom('SELECT 1 AS one', isPg ? 'SELECT pg_sleep(0.05)' : 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000) SELECT count(*) AS n FROM c')) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('parallel'), n: fc.integer({ min: 2, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('nested'), m: fc.constantFrom('retrieve', 'create') }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('sleep'), ms: fc.integer({ min: 0, max: 15 }) }) },
)
const callbackArb = fc.oneof(
  { weight: 1, arbitrary: odd.map((v) => ({ kind: 'notfn', v })) },
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('fn'), style: fc.constantFrom('async', 'sync'), ops: fc.array(opArb, { maxLength: 3 }), end: endArb }) },
)

function stageObject(m) {
  const o = {}
  for (const [k, x] of Object.entries(m)) o[k] = x.v
  return o
}

function resultValue(r) {
  if (r.t === 'obj') return stageObject(r.m)
  if (r.t === 'odd') return r.v.v
  return Object.defineProperty({ recovery_point: 'fz_getter' }, r.f, {
    enumerable: true,
    get() {
      throw GETTER_THROWS
    },
  })
}

/**
 * What a stage must do with a callback result (SPEC §4 step 3): { invalid }, { any }, or
 * { rp } (move the recovery point) / { finish: { code, body } } (finish the key).
 */
function classifyResult(R) {
  try {
    return classifyResult_(R)
  } catch (e) {
    return { any: `inspecting the result threw ${describe(e)}` }
  }
}

function classifyResult_(R) {
  if (R === null || (typeof R !== 'object' && typeof R !== 'function')) return { invalid: `a ${kindOf(R)}` }
  if (typeof R === 'function') return { any: 'a function' }
  if (types.isProxy(R)) {
    // Resolving a promise with it looks up `then`: if that throws, the callback's promise
    // rejects with what was thrown (JS itself does this, as `await callback()` would).
    try {
      void R.then
      return { any: 'a Proxy', getter: true }
    } catch (e) {
      return { any: 'a Proxy', getter: true, thenThrows: { v: e } }
    }
  }
  if (R instanceof Promise) return { any: 'a promise (adopted by the async callback)' }
  const fields = {}
  for (const f of ['recovery_point', 'response_code', 'response_body']) {
    const d = Object.getOwnPropertyDescriptor(R, f)
    if (d && d.get) return { getterInvalid: f }
    fields[f] = R[f]
  }
  const { recovery_point: rp, response_code: code, response_body: body } = fields
  let problem = null
  if (!nullish(rp) && typeof rp !== 'string') problem = 'recovery_point is not a string'
  let codeOk = true
  if (code !== undefined && code !== null) codeOk = typeof code === 'number' && Number.isInteger(code) && code >= -(2 ** 31) && code < 2 ** 31
  const bodyJ = body === undefined ? { json: undefined, absent: true } : expectedJson(body)
  const moves = typeof rp === 'string' && rp !== ''
  if (problem) return { invalid: problem }
  if (moves) {
    // Medusa ignores code/body when a recovery point is set; refusing bad ones is also fine.
    return { rp, lenient: !codeOk || bodyJ.invalid || bodyJ.exotic, nul: rp.includes('\u0000') }
  }
  if (!codeOk) return { invalid: `response_code ${describe(code)}` }
  if (bodyJ.invalid) return { invalid: `response_body: ${bodyJ.invalid}` }
  if (bodyJ.exotic) return { any: `response_body: ${bodyJ.exotic}` }
  // A body that JSON.stringify drops (a Symbol, a function): NULL or unchanged are both fine.
  return { finish: { code, body: bodyJ.json, bodyAbsent: bodyJ.absent, bodyLoose: !bodyJ.absent && bodyJ.json === undefined }, nul: hasNul(body) }
}

/**
 * Build the callback of a model. `rec` records what happened: calls, what escaped (threw), the
 * result returned, writes done, whether the run was "tainted" (state no longer predictable).
 */
function buildCallback(model, key, marker, rec, tag) {
  const ops = async (tx) => {
    for (const op of model.ops) {
      switch (op.op) {
        case 'write': {
          const o = await call(() => tx.query('UPDATE idempotency_key SET request_path = $1 WHERE idempotency_key = $2', [marker, key]), 'tx.query(write)')
          judgeQuery(o, null, null, 'the marker write')
          if (o.k === 'ok') rec.wrote = true
          else rec.failedQuery = true
          break
        }
        case 'active':
          if (tx.active !== true) rec.problems.push(`tx.active is ${describe(tx.active)} inside the callback`)
          break
        case 'query': {
          const o = await call(() => txQuery(tx, op.sql.v, op.params.v), 'tx.query')
          rec.queries.push({ sql: op.sql, params: op.params, o })
          if (UNDOING.has(op.sql.v)) rec.undone = true
          if (o.k === 'rej') rec.failedQuery = true
          if (o.k === 'rej' && !op.caught) throw o.e
          break
        }
        case 'txctl': {
          const o = await call(() => txQuery(tx, op.sql), `tx.query(${op.sql})`)
          rec.queries.push({ sql: new V(op.sql, op.sql), params: new V('no params', undefined), o })
          rec.txctl = true
          if (o.k === 'rej') rec.failedQuery = true
          break
        }
        case 'unawaited': {
          let p
          try {
            p = tx.query(op.sql.v)
          } catch (e) {
            rec.problems.push(`unawaited tx.query threw synchronously ${showErr(e)}`)
            break
          }
          rec.tainted = true
          rec.floating.push(p.then((v) => ({ k: 'ok', v }), (e) => ({ k: 'rej', e })))
          break
        }
        case 'parallel': {
          const os = await Promise.all(Array.from({ length: op.n }, (_, i) => call(() => tx.query(isPg ? 'SELECT $1::int AS i' : 'SELECT $1 AS i', [i]), 'parallel tx.query')))
          os.forEach((o, i) => {
            if (o.k === 'ok' && !deepEq(o.v, [{ i }])) rec.problems.push(`parallel tx.query ${i} returned ${describe(o.v)}`)
            if (o.k === 'rej') {
              rec.failedQuery = true
              const why = untyped(o.e)
              if (why) rec.problems.push(`parallel tx.query: ${why}`)
            }
          })
          break
        }
        case 'nested': {
          const bound = callSync(() => ctx.service.withTransaction(tx))
          if (bound.k !== 'value' || !(bound.v instanceof IdempotencyKeyService)) {
            rec.problems.push(`withTransaction(tx) inside a stage: ${showOut(bound)}`)
            break
          }
          const o = await call(() => (op.m === 'retrieve' ? bound.v.retrieve(key) : bound.v.create({ idempotency_key: fresh('nested') })), `bound ${op.m}`)
          if (o.k === 'rej') {
            rec.failedQuery = true
            const why = untyped(o.e)
            if (why) rec.problems.push(`withTransaction(tx).${op.m}: ${why}`)
          } else if (o.k === 'ok') {
            try {
              checkKey(o.v, `withTransaction(tx).${op.m}`)
            } catch (e) {
              rec.problems.push(e.message)
            }
          }
          break
        }
        case 'sleep':
          await new Promise((r) => setTimeout(r, op.ms))
          break
        default:
      }
    }
  }
  const finish = () => {
    const end = model.end
    switch (end.how) {
      case 'return': {
        const R = resultValue(end.r)
        rec.result = { R }
        return R
      }
      case 'throw':
        rec.escaped = { v: end.t.v }
        throw end.t.v
      case 'reject-promise':
        rec.escaped = { v: end.t.v }
        return Promise.reject(end.t.v)
      case 'return-thenable': {
        const R = stageObject(end.r.m)
        // Only a synchronous callback hands the addon the thenable itself: an async one adopts it.
        rec.result = { R, thenable: model.style === 'sync' && model.ops.length === 0 }
        return {
          then(resolve) {
            resolve(R)
          },
        }
      }
      case 'thenable-rejects':
        rec.escaped = { v: end.t.v }
        return {
          then(_, reject) {
            reject(end.t.v)
          },
        }
      case 'return-later': {
        const R = stageObject(end.r.m)
        rec.result = { R }
        return new Promise((r) => setTimeout(() => r(R), 5))
      }
      default:
        throw new Error('unknown end')
    }
  }
  const wrapped = (tx) => {
    rec.calls++
    rec.tx = tx
    if (rec.calls > 1) {
      // A re-run (serialization failure): start over.
      rec.result = undefined
      rec.escaped = undefined
    }
    if (!(tx instanceof TransactionManager) && tag !== 'bound') rec.problems.push(`the callback got ${describe(tx)} instead of a TransactionManager`)
    if (model.style === 'sync' && model.ops.length === 0) {
      return finish()
    }
    return (async () => {
      try {
        await ops(tx)
      } catch (e) {
        if (isFinding(e)) {
          rec.problems.push(e.message)
          rec.escaped = { v: e }
          throw e
        }
        rec.escaped = { v: e }
        throw e
      }
      const r = finish()
      return r
    })()
  }
  return wrapped
}

// ---------------------------------------------------------------------------------------------
// Properties

const P = {}

/**
 * Pool sizes. Once a run has shown that a huge maxConnections aborts or exhausts memory
 * ('huge-pool'), later child processes keep it under 10^6 so the rest is still explored.
 */
const poolSizeArb = optNumArb.filter((x) => !(AVOID.has('huge-pool') && typeof x.v === 'number' && x.v > 1e6))

/** connect(urlOrOptions): URLs and option objects with bad fields. */
P.connect = () => {
  const BAD_URLS = [
    'postgres://postgres@127.0.0.1:1/fz',
    'postgres://postgres@127.0.0.1:5432/fz_no_such_database',
    'postgres://fz_no_such_role@127.0.0.1:5432/postgres',
    'postgres://',
    'postgres://:@/',
    'postgresql://[::1',
    'postgres://postgres@127.0.0.1:99999/fz',
    'postgres://postgres@127.0.0.1:5432/fz?sslmode=require',
    'postgres://postgres@127.0.0.1:5432/fz?sslmode=bogus',
    `postgres://postgres@127.0.0.1:5432/${'d'.repeat(4096)}`,
    'postgres://postgres@127.0.0.1:5432/a\u0000b',
    'postgres://postgres@127.0.0.1:5432/postgres?application_name=%FF%FE',
    'postgres://postgres@127.0.0.1:5432/postgres?options=-c%20statement_timeout%3D1',
    'postgres://u:p%ZZ@127.0.0.1:5432/x',
    'sqlite:',
    'sqlite://',
    'sqlite::memory:',
    'sqlite://:memory:',
    'sqlite:///nonexistent_dir_fz/sub/x.db',
    'sqlite://./fz_ro.db?mode=ro',
    'sqlite://./fz.db?mode=bogus',
    'sqlite://./fz_a\u0000b.db',
    `sqlite://./${'p'.repeat(5000)}.db`,
    'sqlite://./fz_dir_does_not_exist/x.db',
    'sqlite://./fz_shared.db?mode=memory&cache=shared',
    'sqlite://./fz_rel.db',
    'mysql://root@127.0.0.1/x',
    'http://127.0.0.1/',
    'not a url',
    '',
    '\uD800',
  ]
  const urlArb = fc.oneof(
    { weight: 3, arbitrary: fc.constant(new V('<the run database URL>', config.url)) },
    { weight: 4, arbitrary: wrap(fc.constantFrom(...BAD_URLS)) },
    { weight: 1, arbitrary: anyString },
    { weight: 2, arbitrary: odd },
  )
  const optionsArb = fc
    .record({ url: urlArb, maxConnections: poolSizeArb, isolationLevel: isolationArb, lockTimeoutMs: optNumArb, maxRetries: optNumArb, stageTimeoutMs: optNumArb, acquireTimeoutMs: optNumArb, busyTimeoutMs: optNumArb }, { requiredKeys: [] })
    .map((m) => {
      const o = {}
      for (const [k, x] of Object.entries(m)) o[k] = x.v
      return new V(`{ ${Object.entries(m).map(([k, x]) => `${k}: ${x.d}`).join(', ')} }`, o)
    })
  const argArb = fc.oneof(
    { weight: 5, arbitrary: optionsArb },
    { weight: 2, arbitrary: urlArb },
    { weight: 1, arbitrary: odd.filter((x) => typeof x.v !== 'string') },
    {
      weight: 1,
      arbitrary: specials([
        special('{ url: <run url>, getter maxConnections throws }', () => Object.defineProperty({ url: config.url }, 'maxConnections', { get: () => { throw GETTER_THROWS } })),
        special('{ getter url throws }', () => throwingGetter('url')),
        special('Proxy whose traps throw', () => throwingProxy()),
        special('options inheriting url from the prototype', () => Object.create({ url: config.url })),
        special('[url]', () => [config.url]),
      ]),
    },
    { weight: 1, arbitrary: fc.constant(new V('no argument', undefined)) },
  )
  const followArb = fc.constantFrom('retrieve', 'workStage', 'close-then-retrieve', 'migrate-fresh-sqlite')
  return fc.asyncProperty(argArb, followArb, async (arg, follow) => {
    const a = arg.v
    let exp = {}
    try {
      if (['number', 'boolean', 'bigint', 'symbol', 'function'].includes(typeof a)) exp = { invalid: true }
      else if (a !== null && typeof a === 'object' && !types.isProxy(a) && !Array.isArray(a)) {
        if (optionsInvalid(a)) exp = { invalid: true }
        else if (a.url === config.url && (nullish(a.acquireTimeoutMs) || a.acquireTimeoutMs >= 2000) && (nullish(a.isolationLevel) || ['SERIALIZABLE', 'REPEATABLE READ', 'READ COMMITTED'].includes(a.isolationLevel))) exp = { mustSucceed: true }
      } else if (a === config.url) exp = { mustSucceed: true }
    } catch {
      exp = {} // a getter of the options threw: any typed outcome
    }
    const o = await call(() => (a === undefined && arg.d === 'no argument' ? IdempotencyKeyService.connect() : IdempotencyKeyService.connect(a)), 'connect')
    const rss = process.memoryUsage().rss / 1048576
    // A pool sized up front by maxConnections: report it, and let the parent start a lean child.
    if (rss > 1024) hang(`connect() left the process at ${Math.round(rss)} MB RSS (${showOut(o)}): memory sized by maxConnections up front`, 'huge-pool', 'memory')
    judge(o, exp)
    if (o.k !== 'ok') return
    const svc = o.v
    if (!(svc instanceof IdempotencyKeyService)) fail(`connect resolved to ${describe(svc)}`)
    try {
      if (follow === 'retrieve') judge(await call(() => svc.retrieve(fresh('absent')), 'retrieve on a new service'), { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND'], ['database_error', null], ['unexpected_state', null]] })
      if (follow === 'workStage') {
        let called = false
        const s = await call(() => svc.workStage(fresh('absent'), () => ((called = true), { recovery_point: 'x' })), 'workStage on a new service')
        judge(s, {})
        if (s.k === 'ok') fail('a stage on an absent key succeeded')
        if (called) fail('the callback ran for an absent key')
      }
      if (follow === 'close-then-retrieve') {
        judge(await call(() => svc.close(), 'close'), {})
        judge(await call(() => svc.retrieve('x'), 'retrieve after close'), { allowSuccess: false, errors: [['database_error', null], ['unexpected_state', null]] })
      }
      if (follow === 'migrate-fresh-sqlite' && typeof a === 'string' && a.startsWith('sqlite:')) {
        judge(await call(() => svc.migrate(), 'migrate'), {})
      }
    } finally {
      await call(() => svc.close(), 'close')
    }
  })
}

/** migrate(...junk): a no-op on a migrated database, whatever it is passed. */
P.migrate = () =>
  fc.asyncProperty(fc.array(odd, { maxLength: 2 }), async (args) => {
    const o = await call(() => ctx.service.migrate(...args.map((x) => x.v)), 'migrate')
    judge(o, { mustSucceed: true, onSuccess: (v) => v === undefined || fail(`migrate resolved ${describe(v)}`) })
  })

const methodArb = fc.oneof(
  { weight: 3, arbitrary: wrap(fc.constantFrom('POST', 'GET', 'DELETE')) },
  { weight: 1, arbitrary: fc.constant(new V('undefined', undefined)) },
  { weight: 1, arbitrary: fc.constant(new V('null', null)) },
  { weight: 2, arbitrary: anyString },
  { weight: 2, arbitrary: odd },
)
const pathArb = fc.oneof(
  { weight: 3, arbitrary: wrap(fc.constantFrom('/store/carts/1/complete', '/fuzz', '/')) },
  { weight: 1, arbitrary: fc.constant(new V('undefined', undefined)) },
  { weight: 2, arbitrary: anyString },
  { weight: 2, arbitrary: odd },
)
const reqParamsArb = fc.oneof({ weight: 3, arbitrary: jsonData }, { weight: 1, arbitrary: fc.constant(new V('undefined', undefined)) }, { weight: 3, arbitrary: odd })

/** Would these fields be refused as invalid_data (SPEC §3 validation)? 'invalid' | 'ok' | 'any'. */
function fingerprintClass(method, params, pathv) {
  for (const s of [method, pathv]) if (!nullish(s) && typeof s !== 'string') return 'invalid'
  const j = expectedJson(params)
  if (j.invalid) return 'invalid'
  if (j.exotic) return 'any'
  return 'ok'
}

/** initializeRequest(headerKey, method, params, path). */
P.initializeRequest = () => {
  const hkArb = fc.oneof(
    { weight: 3, arbitrary: keyArb() },
    { weight: 1, arbitrary: fc.constantFrom(new V('""', ''), new V('undefined', undefined), new V('null', null)).map((x) => Object.assign(x, { cls: 'new' })) },
    { weight: 1, arbitrary: wrap(fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 255 })).map((x) => Object.assign(x, { cls: 'ascii' })) },
  )
  return fc.asyncProperty(hkArb, methodArb, reqParamsArb, pathArb, async (hk, m, p, pa) => {
    const before = hk.cls === 'existing' ? await state(hk.v) : null
    const fpc = fingerprintClass(m.v, p.v, pa.v)
    let exp = {}
    if (!nullish(hk.v) && typeof hk.v !== 'string') exp = { invalid: true }
    else if (fpc === 'invalid') exp = { invalid: true }
    else if (typeof hk.v === 'string' && hk.v !== '' && !/^[\x20-\x7e]{1,255}$/.test(hk.v)) exp = { invalid: true } // SPEC §3: 1–255 printable ASCII
    const o = await call(() => ctx.service.initializeRequest(hk.v, m.v, p.v, pa.v), 'initializeRequest')
    judge(o, {
      ...exp,
      onSuccess: (k) => {
        checkKey(k)
        if (typeof hk.v === 'string' && hk.v !== '' && k.idempotency_key !== hk.v) fail(`returned key ${describe(k.idempotency_key)} for header ${describe(hk.v)}`)
        if ((hk.cls === 'new' || hk.cls === 'absent') && fpc === 'ok') {
          if (typeof m.v === 'string' && k.request_method !== m.v.toWellFormed()) fail(`request_method stored as ${describe(k.request_method)}`)
          if (typeof pa.v === 'string' && k.request_path !== pa.v.toWellFormed()) fail(`request_path stored as ${describe(k.request_path)}`)
          const j = expectedJson(p.v)
          const mm = j.json !== undefined && j.json !== null ? jsonMismatch(k.request_params, j.json) : null
          if (mm) fail(`initializeRequest request_params: ${mm}`)
        }
        if (before && k.id !== before.id) fail('an existing key came back with another id')
      },
    })
    if (o.k === 'rej' && (hk.cls === 'new' || hk.cls === 'absent') && fpc === 'ok' && !exp.invalid) {
      // A new key with valid fields may only fail on the database (NUL bytes on PostgreSQL, 1 MB keys…).
      if (!['database_error', 'invalid_data'].includes(o.e.type)) fail(`a new key failed with ${showErr(o.e)}`)
    }
  })
}

/** create(payload). */
P.create = () => {
  const ikArb = fc.oneof(
    { weight: 3, arbitrary: fc.constant(null).map(() => new FreshKey('create')) },
    { weight: 2, arbitrary: keyArb() },
    { weight: 1, arbitrary: fc.constant(Object.assign(new V('absent', undefined), { cls: 'none' })) },
  )
  const payloadArb = fc.oneof(
    {
      weight: 6,
      arbitrary: fc
        .record({ idempotency_key: ikArb, request_method: methodArb, request_params: reqParamsArb, request_path: pathArb, recovery_point: fc.oneof(rpArb, fc.constant(new V('absent', undefined))), extra: fc.oneof(fc.constant(null), odd) }, { requiredKeys: ['idempotency_key'] })
        .map((m) => {
          const o = {}
          for (const [k, x] of Object.entries(m)) if (k !== 'extra') o[k] = x.v
          if (m.extra) o.unknown_field = m.extra.v
          return Object.assign(new V(`{ ${Object.entries(m).map(([k, x]) => `${k}: ${x && x.d}`).join(', ')} }`, o), { m })
        }),
    },
    { weight: 2, arbitrary: odd },
    {
      weight: 1,
      arbitrary: specials([
        special('{ getter idempotency_key throws }', () => throwingGetter('idempotency_key')),
        special('{ getter request_params throws }', () => throwingGetter('request_params')),
        special('Proxy whose traps throw', () => throwingProxy()),
      ]),
    },
  )
  return fc.asyncProperty(payloadArb, async (pl) => {
    const v = pl.v
    let exp = {}
    let strict = null
    if (v !== null && v !== undefined && typeof v !== 'object') exp = { invalid: true }
    else if (pl.m) {
      const { idempotency_key: ik, request_method: m, request_params: p, request_path: pa, recovery_point: rp } = v
      const fpc = fingerprintClass(m, p, pa)
      if (!nullish(ik) && typeof ik !== 'string') exp = { invalid: true }
      else if (!nullish(rp) && typeof rp !== 'string') exp = { invalid: true }
      else if (fpc === 'invalid') exp = { invalid: true }
      else if (fpc === 'ok' && pl.m.idempotency_key.cls === 'existing') strict = 'duplicate'
      else if (fpc === 'ok') strict = 'fresh'
    }
    const o = await call(() => ctx.service.create(v), 'create')
    judge(o, {
      ...exp,
      onSuccess: (k) => {
        checkKey(k)
        if (strict === 'duplicate') fail(`create() with an existing key succeeded: ${describe(k)}`)
        if (pl.m && typeof v.idempotency_key === 'string' && v.idempotency_key !== '' && k.idempotency_key !== v.idempotency_key.toWellFormed()) fail(`created ${describe(k.idempotency_key)} for ${describe(v.idempotency_key)}`)
        if (strict === 'fresh') {
          if (typeof v.recovery_point === 'string' && v.recovery_point !== '' && k.recovery_point !== v.recovery_point.toWellFormed()) fail(`recovery_point ${describe(k.recovery_point)} for ${describe(v.recovery_point)}`)
          if (nullish(v.recovery_point) && k.recovery_point !== 'started') fail(`default recovery_point is ${describe(k.recovery_point)}`)
          if (k.response_code !== null || k.response_body !== null) fail('a new key has a response')
        }
      },
    })
    if (o.k === 'rej' && strict === 'duplicate' && !(o.e.type === 'duplicate_error' && o.e.code === '23505') && o.e.type !== 'database_error') fail(`create() with an existing key: expected duplicate_error/23505, got ${showErr(o.e)}`)
  })
}

const COLUMNS = ['id', 'idempotency_key', 'created_at', 'locked_at', 'request_method', 'request_params', 'request_path', 'response_code', 'response_body', 'recovery_point']

/** retrieve(keyOrSelector). */
P.retrieve = () => {
  const colArb = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...COLUMNS) }, { weight: 1, arbitrary: fc.constantFrom('nope', '__proto__', 'constructor', 'id; DROP TABLE x', 'idempotency_key ', 'ID', '') }, { weight: 1, arbitrary: hostileString })
  const valArb = fc.oneof(
    { weight: 2, arbitrary: fc.constantFrom(...ctx.keys).map((k) => new V(JSON.stringify(k), k)) },
    { weight: 1, arbitrary: fc.constant(new V('null', null)) },
    { weight: 1, arbitrary: fc.array(fc.oneof(fc.constantFrom(...ctx.keys).map((k) => new V(JSON.stringify(k), k)), odd), { maxLength: 3 }).map((xs) => new V(`[${xs.map((x) => x.d)}]`, xs.map((x) => x.v))) },
    { weight: 3, arbitrary: odd },
  )
  const selectorArb = fc.array(fc.tuple(colArb, valArb), { minLength: 0, maxLength: 3 }).map((entries) => {
    const o = {}
    for (const [k, x] of entries) {
      if (k === '__proto__') Object.defineProperty(o, k, { value: x.v, enumerable: true, configurable: true, writable: true })
      else o[k] = x.v
    }
    return Object.assign(new V(`{ ${entries.map(([k, x]) => `${JSON.stringify(k)}: ${x.d}`).join(', ')} }`, o), { entries })
  })
  const argArb = fc.oneof({ weight: 3, arbitrary: keyArb() }, { weight: 3, arbitrary: selectorArb }, {
    weight: 1,
    arbitrary: fc.constantFrom(...ctx.keys).map((k) => Object.assign(new V(`{ idempotency_key: ${JSON.stringify(k)} }`, { idempotency_key: k }), { exact: k })),
  })
  return fc.asyncProperty(argArb, async (arg) => {
    const v = arg.v
    let exp = {}
    if (v === undefined || v === null) exp = { errors: [['not_found', null]], allowSuccess: false }
    else if (['number', 'boolean', 'bigint', 'symbol', 'function'].includes(typeof v)) exp = { invalid: true }
    else if (arg.cls === 'existing') exp = { mustSucceed: true }
    else if (arg.cls === 'absent') exp = { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND']], allowSuccess: false }
    else if (arg.exact) exp = { mustSucceed: true }
    else if (arg.entries) {
      const defined = Object.keys(v).map((k) => [k, { v: v[k] }]).filter(([, x]) => x.v !== undefined)
      if (defined.some(([k]) => !COLUMNS.includes(k))) exp = { invalid: true }
      else if (defined.length === 0) exp = { invalid: true }
      else if (defined.some(([, x]) => typeof x.v === 'function' || typeof x.v === 'symbol')) exp = { invalid: true }
    }
    const o = await call(() => ctx.service.retrieve(v), 'retrieve')
    judge(o, {
      ...exp,
      onSuccess: (k) => {
        checkKey(k)
        if (typeof v === 'string' && k.idempotency_key !== v) fail(`retrieve(${describe(v)}) returned ${describe(k.idempotency_key)}`)
        if (arg.exact && k.idempotency_key !== arg.exact) fail(`retrieve({ idempotency_key }) returned ${describe(k.idempotency_key)}`)
      },
    })
  })
}

/** lock(key). */
P.lock = () =>
  fc.asyncProperty(keyArb(), async (k) => {
    let exp = {}
    if (keyArgProblem(k)) exp = { invalid: true }
    else if (k.cls === 'existing') exp = { errors: [['conflict', 'IDEMPOTENCY_KEY_LOCKED']] }
    else if (k.cls === 'absent') exp = { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND']], allowSuccess: false }
    const o = await call(() => ctx.service.lock(k.v), 'lock')
    judge(o, {
      ...exp,
      onSuccess: (key) => {
        checkKey(key)
        if (key.idempotency_key !== k.v) fail(`lock(${describe(k.v)}) returned ${describe(key.idempotency_key)}`)
        if (!(key.locked_at instanceof Date)) fail('lock() returned locked_at null')
      },
    })
  })

const UPDATABLE = ['locked_at', 'request_method', 'request_params', 'request_path', 'response_code', 'response_body', 'recovery_point']

/** update(key, partial). */
P.update = () => {
  const fieldValue = (f) => {
    switch (f) {
      case 'response_code':
        return codeArb
      case 'recovery_point':
        return rpArb
      case 'locked_at':
        return fc.oneof(fc.constant(null).map(() => new V('new Date()', new Date())), wrap(fc.date({ noInvalidDate: false })), odd)
      case 'request_params':
      case 'response_body':
        return bodyArb
      default:
        return fc.oneof(anyString, odd)
    }
  }
  const fieldArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...UPDATABLE) }, { weight: 1, arbitrary: fc.constantFrom('id', 'idempotency_key', 'created_at', 'nope', '__proto__') })
  const partialArb = fc.oneof(
    {
      weight: 6,
      arbitrary: fc
        .uniqueArray(fieldArb, { maxLength: 3 })
        .chain((fs) => fc.tuple(...fs.map((f) => fieldValue(f).map((x) => [f, x]))))
        .map((entries) => {
          const o = {}
          for (const [k, x] of entries) {
            if (k === '__proto__') Object.defineProperty(o, k, { value: x.v, enumerable: true, configurable: true, writable: true })
            else o[k] = x.v
          }
          return Object.assign(new V(`{ ${entries.map(([k, x]) => `${k}: ${x.d}`).join(', ')} }`, o), { entries })
        }),
    },
    { weight: 2, arbitrary: odd },
  )
  return fc.asyncProperty(keyArb(), partialArb, async (k, part) => {
    const v = part.v
    let exp = {}
    let expectFields = null
    if (keyArgProblem(k)) exp = { invalid: true }
    else if (v === null || typeof v !== 'object') exp = { invalid: true }
    else if (part.entries) {
      const defined = part.entries.filter(([, x]) => x.v !== undefined)
      const bad = defined.find(([f, x]) => {
        const val = x.v
        if (!UPDATABLE.includes(f)) return true
        if (val === null) return f === 'recovery_point' ? false : false
        if (typeof val === 'function' || typeof val === 'symbol') return true
        if (f === 'response_code') return !(typeof val === 'number' && Number.isInteger(val) && val >= -(2 ** 31) && val < 2 ** 31)
        if (f === 'recovery_point' || f === 'request_method' || f === 'request_path') return typeof val !== 'string'
        if (f === 'locked_at') return false // a Date, or something the database may refuse
        const j = expectedJson(val)
        return Boolean(j.invalid)
      })
      if (bad) exp = { invalid: true }
      else if (k.cls === 'absent') exp = { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND'], ['database_error', null], ['invalid_data', null]], allowSuccess: false }
      else expectFields = defined
    }
    const before = k.cls === 'existing' ? await state(k.v) : null
    const o = await call(() => ctx.service.update(k.v, v), 'update')
    judge(o, {
      ...exp,
      onSuccess: (key) => {
        checkKey(key)
        if (key.idempotency_key !== k.v) fail(`update(${describe(k.v)}) returned ${describe(key.idempotency_key)}`)
        for (const [f, x] of expectFields || []) {
          const val = x.v
          if (f === 'response_code' && key.response_code !== val) fail(`response_code is ${describe(key.response_code)} after update to ${describe(val)}`)
          if ((f === 'request_method' || f === 'request_path') && key[f] !== (val === null ? null : val.toWellFormed())) fail(`${f} is ${describe(key[f])} after update to ${describe(val)}`)
          if (f === 'recovery_point' && typeof val === 'string' && key.recovery_point !== val.toWellFormed()) fail(`recovery_point is ${describe(key.recovery_point)} after update to ${describe(val)}`)
          if (f === 'response_body' || f === 'request_params') {
            const j = expectedJson(val)
            const mm = !j.exotic && j.json !== undefined ? jsonMismatch(key[f], j.json) : null
            if (mm) fail(`update ${f}: ${mm}`)
          }
        }
      },
    })
    if (o.k === 'rej' && before) {
      const after = await state(k.v)
      if (after && !sameState(before, after)) fail(`a failed update (${showErr(o.e)}) changed the key: ${describe(before)} → ${describe(after)}`)
    }
    if (o.k === 'ok') {
      // What update() accepted must not break the key: a plain stage on it still works.
      const st = await call(() => ctx.service.workStage(k.v, () => ({ recovery_point: o.v.recovery_point || 'fz_u' })), 'workStage after update')
      if (st.k === 'rej' && st.e && st.e.type === 'database_error') {
        await call(() => ctx.service.update(k.v, { locked_at: null }), 'repair')
        fail(`update() accepted ${describe(v)} but a later workStage on the key fails with ${showErr(st.e)}`)
      }
    }
  })
}

/** workStage(key, callback, options): callback results, thrown values, odd SQL, atomicity. */
P.workStage = () => {
  const optionsArb = fc.oneof(
    { weight: 4, arbitrary: fc.constant(new V('no options', undefined)) },
    { weight: 2, arbitrary: fc.constant(null).map(() => Object.assign(new V('{ recoveryPoint: <current> }', undefined), { current: true })) },
    { weight: 2, arbitrary: rpArb.map((x) => new V(`{ recoveryPoint: ${x.d} }`, { recoveryPoint: x.v })) },
    { weight: 1, arbitrary: odd },
    { weight: 1, arbitrary: specials([special('{ getter recoveryPoint throws }', () => throwingGetter('recoveryPoint')), special('Proxy whose traps throw', () => throwingProxy())]) },
  )
  return fc.asyncProperty(keyArb(), callbackArb, optionsArb, async (k0, cb, opt) => {
    // An odd string may name a key an earlier case created: then it is an existing key.
    const k = k0.cls === 'odd' && typeof k0.v === 'string' && (await tryState(k0.v)) ? Object.assign(new V(k0.d, k0.v), { cls: 'existing' }) : k0
    const before = k.cls === 'existing' ? await state(k.v) : null
    const options = opt.current ? { recoveryPoint: before ? before.recovery_point : 'started' } : opt.v
    const marker = `/fz-marker-${++uniq}`
    const rec = { calls: 0, problems: [], queries: [], floating: [] }
    const fn = cb.kind === 'fn' ? buildCallback(cb, k.v, marker, rec, 'native') : cb.v.v
    const riskyOps = cb.kind === 'fn' ? cb.ops.filter((op) => op.op === 'txctl' || (op.op === 'query' && riskySql(op.sql.v))) : []
    const svc = riskyOps.length ? await isolated() : ctx.service
    // The expectation before the callback: bad arguments, absent key, stale recovery point.
    let pre = null
    if (keyArgProblem(k)) pre = 'invalid'
    else if (typeof fn !== 'function') pre = 'invalid'
    else if (options !== undefined && options !== null) {
      if (typeof options !== 'object' || types.isProxy(options)) pre = typeof options === 'object' ? 'any' : 'invalid'
      else {
        const d = Object.getOwnPropertyDescriptor(options, 'recoveryPoint')
        if (d && d.get) pre = 'invalid'
        else if (!nullish(options.recoveryPoint) && typeof options.recoveryPoint !== 'string') pre = 'invalid'
        else if (before && typeof options.recoveryPoint === 'string' && options.recoveryPoint.toWellFormed() !== before.recovery_point) pre = 'stale'
      }
    }
    if (!pre && k.cls === 'absent') pre = 'absent'
    const o = await call(() => svc.workStage(k.v, fn, options), 'workStage')
    checkStageTimeout(o, 'workStage', rec.calls > 0)
    if (svc !== ctx.service) await probeAfter(svc, riskyOps.map((op) => JSON.stringify(op.op === 'txctl' ? op.sql : op.sql.v)).join(', '), riskyOps.some((op) => op.op === 'query' && SESSION.test(op.sql.v)))
    const floating = await guard(Promise.all(rec.floating), 'an unawaited tx.query')
    for (const f of floating) {
      if (f.k === 'rej') {
        const why = untyped(f.e)
        if (why) fail(`an unawaited tx.query: ${why}`)
      } else if (!Array.isArray(f.v)) fail(`an unawaited tx.query resolved to ${describe(f.v)}`)
    }
    judgeQueries(rec.queries.map((q) => ({ o: q.o, sql: q.sql.v, params: q.params.v })))
    if (rec.problems.length) fail(rec.problems.join('; '))
    if (pre === 'any') {
      // Options that are a Proxy: reading `recoveryPoint` through it may throw (refused, a
      // typed error) or work (the stage runs, and is judged like any other below).
      if (!rec.calls) {
        judge(o, {})
        return
      }
      pre = null
    }
    if (pre) {
      if (rec.calls) fail(`the callback ran although the stage had to be refused (${pre})`)
      if (pre === 'invalid') judge(o, { invalid: true })
      else if (pre === 'stale') judge(o, { errors: [['conflict', 'IDEMPOTENCY_KEY_STALE']], allowSuccess: false })
      else if (pre === 'absent') judge(o, { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND']], allowSuccess: false })
      else judge(o, {})
      if (before) {
        const after = await state(k.v)
        if (!after || !sameState(before, after)) fail(`a refused stage changed the key: ${describe(before)} → ${describe(after)}`)
      }
      return
    }
    if (cb.kind === 'notfn') {
      // A foreign function (Math.max, a class…) as the callback: whatever it returns or throws
      // (a class throws its own TypeError when called), the stage settles: a key or a rejection.
      if (o.k === 'ok') checkKey(o.v)
      else if (o.k !== 'rej') judge(o, {})
      return
    }
    if (k.cls !== 'existing') {
      // An odd string key that happens to be absent (or refused).
      judge(o, {})
      if (o.k === 'ok') checkKey(o.v)
      return
    }
    if (!rec.calls) {
      judge(o, { errors: [['conflict', 'IDEMPOTENCY_KEY_LOCKED']], allowSuccess: false })
      return
    }
    // The callback ran.
    if (rec.escaped) {
      if (cb.end.how === 'thenable-rejects' && cb.style === 'sync' && cb.ops.length === 0 && !(o.k === 'rej' && Object.is(o.e, rec.escaped.v)) && !rec.failedQuery) {
        fail(`the callback returned a thenable (PromiseLike, not a native Promise); the stage did not await it: it rejects with ${describe(rec.escaped.v)}, the stage ${showOut(o)}`)
      }
      judge(o, { mustBeIdentical: [rec.escaped.v], identical: [rec.escaped.v] })
    } else {
      const R = rec.result.R
      const cls = classifyResult(R)
      const tainted = rec.tainted || rec.failedQuery || rec.txctl
      if (rec.result.thenable && !tainted && o.k === 'ok') {
        const ok = cls.rp !== undefined ? o.v.recovery_point === cls.rp.toWellFormed() : !cls.invalid && !cls.getterInvalid && o.v.recovery_point === 'finished' && (cls.finish && cls.finish.code !== undefined ? o.v.response_code === cls.finish.code : true) && (cls.finish && !cls.finish.bodyAbsent && !cls.finish.bodyLoose ? deepEq(o.v.response_body, cls.finish.body) : true)
        if (!ok) fail(`the callback returned a thenable (PromiseLike, not a native Promise); the stage did not await it: it resolves to ${describe(R)}, the stage stored recovery_point ${describe(o.v.recovery_point)}, response_code ${describe(o.v.response_code)}, response_body ${describe(o.v.response_body)}`)
      }
      if (cls.thenThrows && o.k === 'rej' && deepEq(o.e, cls.thenThrows.v)) {
        // What looking up `then` on the returned Proxy throws: the callback's own rejection.
      } else if (tainted) judge(o, {})
      else if (cls.invalid) judge(o, { invalid: true })
      else if (cls.getterInvalid) judge(o, { identical: [GETTER_THROWS], errors: [['invalid_data', 'INVALID_ARGUMENT']], allowSuccess: false })
      else if (cls.any || cls.lenient) judge(o, {})
      else if (cls.nul && isPg) judge(o, { errors: [['database_error', null], ['invalid_data', 'INVALID_ARGUMENT']] })
      else judge(o, { mustSucceed: true })
      if (o.k === 'ok') {
        checkKey(o.v)
        if (o.v.idempotency_key !== k.v) fail(`the stage returned key ${describe(o.v.idempotency_key)}`)
        if (cls.rp !== undefined && !cls.lenient && o.v.recovery_point !== cls.rp.toWellFormed()) fail(`recovery_point is ${describe(o.v.recovery_point)}, the callback returned ${describe(cls.rp)}${rec.result.thenable ? ' (through a thenable)' : ''}`)
        if (cls.rp !== undefined && (o.v.response_code !== before.response_code || !deepEq(o.v.response_body, before.response_body))) fail(`a result with a recovery_point changed the response too (SPEC §4: only recovery_point changes): ${describe(before.response_code)}/${describe(before.response_body)} → ${describe(o.v.response_code)}/${describe(o.v.response_body)}`)
        if (cls.finish) {
          if (o.v.recovery_point !== 'finished') fail(`recovery_point is ${describe(o.v.recovery_point)} after a result without one`)
          const code = cls.finish.code === undefined ? before.response_code : cls.finish.code
          if (o.v.response_code !== code) fail(`response_code is ${describe(o.v.response_code)}, expected ${describe(code)}`)
          const body = cls.finish.bodyAbsent ? before.response_body : cls.finish.body
          const mm = cls.finish.bodyLoose ? null : jsonMismatch(o.v.response_body, body)
          if (mm) fail(`workStage response_body: ${mm}`)
        }
      }
    }
    // Atomicity: the key changed exactly when the stage says it committed.
    const after = await state(k.v)
    if (!after) fail('the key disappeared')
    if (o.k === 'rej') {
      if (!sameState(before, after)) fail(`the stage failed (${showErr(o.e)}) but the key changed: ${describe(before)} → ${describe(after)}`)
    } else {
      for (const f of ['recovery_point', 'response_code']) if (after[f] !== o.v[f]) fail(`the stage returned ${f} ${describe(o.v[f])} but the database has ${describe(after[f])}`)
      if (!deepEq(after.response_body, o.v.response_body)) fail(`the stage returned response_body ${describe(o.v.response_body)} but the database has ${describe(after.response_body)}`)
      if (rec.wrote && !rec.undone && after.request_path !== marker) fail(`the stage succeeded but the callback's write is gone (request_path ${describe(after.request_path)})`)
    }
    // The handle is closed afterwards, and (SQLite) the write lock released.
    if (rec.tx && rec.tx.active !== false) fail(`tx.active is ${describe(rec.tx.active)} after the stage settled`)
  })
}

/** tx.query(sql, params) with every odd value, inside a stage, then the stage outcome. */
P.txQuery = () =>
  fc.asyncProperty(fc.constantFrom(...ctx.qKeys), fc.array(fc.record({ sql: sqlArb, params: paramsArb }), { minLength: 1, maxLength: 4 }), fc.boolean(), async (key, qs, rollback) => {
    const results = []
    const marker = new Error('fz rollback marker')
    let called = false
    const risky = qs.filter((q) => riskySql(q.sql.v))
    const svc = risky.length ? await isolated() : ctx.service
    const o = await call(
      () =>
        svc.workStage(key, async (tx) => {
          called = true
          results.length = 0
          for (const q of qs) results.push(await call(() => txQuery(tx, q.sql.v, q.params.v), 'tx.query'))
          if (rollback) throw marker
          return { recovery_point: 'fz_q' }
        }),
      'workStage(txQuery)',
    )
    checkStageTimeout(o, 'workStage', called)
    if (svc !== ctx.service) await probeAfter(svc, risky.map((q) => JSON.stringify(q.sql.v)).join(', '), risky.some((q) => SESSION.test(q.sql.v)))
    judgeQueries(results.map((o, i) => ({ o, sql: qs[i].sql.v, params: qs[i].params.v })))
    if (!called) judge(o, { errors: [['conflict', 'IDEMPOTENCY_KEY_LOCKED']], allowSuccess: false })
    else if (rollback) judge(o, { mustBeIdentical: [marker], identical: [marker] })
    else judge(o, { onSuccess: (k) => checkKey(k) })
  })

/** A stage's handle after the stage: every use is a typed error (TRANSACTION_CLOSED). */
P.txAfterStage = () =>
  fc.asyncProperty(sqlArb, paramsArb, fc.constantFrom('query', 'withTransaction.retrieve', 'withTransaction.workStage'), fc.boolean(), async (sql, params, use, failed) => {
    let tx = null
    const key = ctx.keys[uniq % ctx.keys.length]
    const boom = new Error('fz stage fails')
    const st = await call(() => ctx.service.workStage(key, async (t) => {
      tx = t
      if (failed) throw boom
      return { recovery_point: 'fz_after' }
    }), 'workStage')
    if (!tx) return judge(st, {})
    if (tx.active !== false) fail(`tx.active is ${describe(tx.active)} after the stage`)
    const closed = { errors: [['unexpected_state', 'TRANSACTION_CLOSED'], ['invalid_data', 'INVALID_ARGUMENT']], allowSuccess: false }
    if (use === 'query') {
      const o = await call(() => tx.query(sql.v, params.v), 'tx.query after the stage')
      judge(o, closed)
    } else {
      const b = callSync(() => ctx.service.withTransaction(tx))
      judgeSync(b, {})
      if (b.k !== 'value') return
      const o =
        use === 'withTransaction.retrieve'
          ? await call(() => b.v.retrieve(key), 'bound retrieve after the stage')
          : await call(() => b.v.workStage(key, () => ({ recovery_point: 'never' })), 'bound workStage after the stage')
      judge(o, closed)
    }
  })

// ---------------------------------------------------------------------------------------------
// Executors: withTransaction(executor), bindExecutor(query), detached(release)

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

/** withTransaction(manager): odd managers, native handles (live and dead), odd executors. */
P.withTransaction = () => {
  const managerArb = fc.oneof(
    { weight: 3, arbitrary: odd.map((v) => ({ kind: 'odd', v })) },
    { weight: 1, arbitrary: fc.constant({ kind: 'none' }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'liveTx' }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'deadTx' }) },
    { weight: 4, arbitrary: execModelArb.map((m) => ({ kind: 'exec', m })) },
    { weight: 1, arbitrary: specials([special('{ get query() throws }', () => throwingGetter('query')), special('{ query: 42 }', () => ({ query: 42 })), special('TransactionManager.prototype', () => TransactionManager.prototype), special('Object.create(TransactionManager.prototype)', () => Object.create(TransactionManager.prototype)), special('the service itself', () => ctx.service)]).map((v) => ({ kind: 'odd', v })) },
  )
  return fc.asyncProperty(managerArb, fc.constantFrom(...BOUND_METHODS), async (mg, method) => {
    const key = ctx.execKeys[uniq % ctx.execKeys.length]
    const boom = new Error('fz bound callback throws')
    const called = { ran: false }
    const run = (bound) => (method === 'workStage-throws' ? call(() => bound.workStage(key, () => { called.ran = true; throw boom }), 'bound workStage (throws)') : boundCall(bound, method, key))
    if (mg.kind === 'none') {
      const b = callSync(() => ctx.service.withTransaction())
      judgeSync(b, { mustSucceed: true, onSuccess: (s) => s === ctx.service || fail('withTransaction() did not return the service itself') })
      return
    }
    if (mg.kind === 'odd') {
      const m = mg.v.v
      let isExec
      try {
        isExec = m !== null && m !== undefined && !(m instanceof TransactionManager) && typeof m.query === 'function'
      } catch {
        isExec = false // inspecting it throws: not an executor, so invalid_data
      }
      const b = callSync(() => ctx.service.withTransaction(m))
      if (nullish(m)) return judgeSync(b, { mustSucceed: true, onSuccess: (s) => s === ctx.service || fail('withTransaction(nullish) did not return the service itself') })
      judgeSync(b, isExec ? {} : { invalid: true })
      return
    }
    if (mg.kind === 'liveTx') {
      let inner = null
      const st = await call(() => ctx.service.workStage(key, async (tx) => {
        const b = callSync(() => ctx.service.withTransaction(tx))
        if (b.k !== 'value' || !(b.v instanceof IdempotencyKeyService)) {
          inner = { problem: `withTransaction(tx) ${showOut(b)}` }
          return { recovery_point: 'fz_live' }
        }
        // Inside the stage the key's row is ours: a nested stage on it would wait on itself.
        const otherKey = ctx.execKeys[(ctx.execKeys.indexOf(key) + 1) % ctx.execKeys.length]
        inner = { o: await (method === 'workStage-throws' ? call(() => b.v.workStage(otherKey, () => { called.ran = true; throw boom }), 'nested workStage') : boundCall(b.v, method, otherKey)) }
        return { recovery_point: 'fz_live' }
      }), 'workStage(liveTx)')
      if (inner && inner.problem) fail(inner.problem)
      if (inner) {
        if (method === 'workStage-throws') judgeBound(inner.o, method, false, boom, called)
        else judge(inner.o, { onSuccess: (k) => checkKey(k) })
      }
      judge(st, {})
      return
    }
    if (mg.kind === 'deadTx') {
      let tx = null
      await call(() => ctx.service.workStage(key, async (t) => ((tx = t), { recovery_point: 'fz_dead' })), 'workStage(deadTx)')
      if (!tx) return
      const b = callSync(() => ctx.service.withTransaction(tx))
      judgeSync(b, {})
      if (b.k !== 'value') return
      const o = await run(b.v)
      if (method === 'workStage-throws') {
        judge(o, { allowSuccess: false })
      } else judge(o, { errors: [['unexpected_state', 'TRANSACTION_CLOSED']], allowSuccess: false })
      return
    }
    // An executor.
    const calls = { n: 0 }
    const ex = buildExecutor(mg.m, key, calls)
    const b = callSync(() => ctx.service.withTransaction(ex))
    if (!isPg) return judgeSync(b, { invalid: true })
    judgeSync(b, { mustSucceed: true })
    if (!(b.v instanceof IdempotencyKeyService) || b.v === ctx.service) fail(`withTransaction(executor) returned ${describe(b.v)}`)
    const o = await retriedOnReleaseRace(method, () => inPgTransaction(() => run(b.v)))
    judgeBound(o, method, PASS_SHAPES.has(mg.m.shape), boom, called)
  })
}

/** bindExecutor(query): the raw protocol, with every odd answer. */
P.bindExecutor = () =>
  fc.asyncProperty(fc.oneof({ weight: 1, arbitrary: odd.map((v) => ({ kind: 'odd', v })) }, { weight: 4, arbitrary: rawModelArb.map((m) => ({ kind: 'raw', m })) }), fc.constantFrom(...BOUND_METHODS), async (q, method) => {
    const key = ctx.execKeys[uniq % ctx.execKeys.length]
    if (q.kind === 'odd') return judgeSync(callSync(() => ctx.service.bindExecutor(q.v.v)), typeof q.v.v === 'function' && isPg ? {} : { invalid: true })
    const calls = { n: 0 }
    const fn = buildRaw(q.m, key, calls)
    const b = callSync(() => ctx.service.bindExecutor(fn))
    if (!isPg) return judgeSync(b, { invalid: true })
    judgeSync(b, { mustSucceed: true })
    const boom = new Error('fz raw bound callback throws')
    const called = { ran: false }
    const o = await retriedOnReleaseRace(method, () => inPgTransaction(() => (method === 'workStage-throws' ? call(() => b.v.workStage(key, () => { called.ran = true; throw boom }), 'raw bound workStage') : boundCall(b.v, method, key))))
    if (method === 'workStage-throws') return judgeBound(o, method, false, boom, called)
    // A raw function that throws or rejects breaks the documented protocol: a typed error, or that value back.
    const own = ['raw-throw', 'raw-reject'].includes(q.m.shape) ? [q.m.v.v] : []
    judge(o, { identical: own, mustSucceed: q.m.shape === 'raw-pass' && ['retrieve', 'create', 'update', 'workStage'].includes(method), onSuccess: (k) => checkKey(k) })
  })

/** IdempotencyKeyService.detached(release, options), then calls on it and on a bound copy. */
P.detached = () => {
  const optionsArb = fc.oneof(
    { weight: 2, arbitrary: fc.constant(new V('no options', undefined)) },
    { weight: 3, arbitrary: fc.record({ lockTimeoutMs: optNumArb, stageTimeoutMs: optNumArb, isolationLevel: isolationArb, maxRetries: optNumArb }, { requiredKeys: [] }).map((m) => new V(`{ ${Object.entries(m).map(([k, x]) => `${k}: ${x.d}`).join(', ')} }`, Object.fromEntries(Object.entries(m).map(([k, x]) => [k, x.v])))) },
    { weight: 1, arbitrary: odd },
  )
  const releaseArb = fc.oneof({ weight: 1, arbitrary: odd.map((v) => ({ kind: 'odd', v })) }, { weight: 3, arbitrary: rawModelArb.map((m) => ({ kind: 'raw', m })) })
  return fc.asyncProperty(releaseArb, optionsArb, execModelArb, fc.constantFrom(...BOUND_METHODS, 'unbound-retrieve', 'close'), async (rel, opt, exm, method) => {
    const key = ctx.execKeys[uniq % ctx.execKeys.length]
    const relCalls = { n: 0 }
    const release = rel.kind === 'odd' ? rel.v.v : buildRaw(rel.m, key, relCalls)
    let exp = {}
    if (typeof release !== 'function') exp = { invalid: true }
    else if (opt.v !== undefined && opt.v !== null) {
      if (typeof opt.v === 'function') exp = {}
      else if (typeof opt.v !== 'object') exp = { invalid: true }
      else if (!types.isProxy(opt.v)) {
        let bad = null
        try {
          bad = optionsInvalid(opt.v, { url: false })
        } catch {
          bad = null
        }
        if (bad) exp = { invalid: true }
      }
    }
    const d = callSync(() => IdempotencyKeyService.detached(release, opt.v))
    judgeSync(d, exp)
    if (d.k !== 'value') return
    if (!(d.v instanceof IdempotencyKeyService)) fail(`detached() returned ${describe(d.v)}`)
    if (method === 'unbound-retrieve') return judge(await call(() => d.v.retrieve(key), 'detached retrieve'), {})
    if (method === 'close') return judge(await call(() => d.v.close(), 'detached close'), {})
    const calls = { n: 0 }
    const ex = buildExecutor(exm, key, calls)
    const b = callSync(() => d.v.withTransaction(ex))
    judgeSync(b, { mustSucceed: true })
    const boom = new Error('fz detached callback throws')
    const called = { ran: false }
    const o = await inPgTransaction(() => (method === 'workStage-throws' ? call(() => b.v.workStage(key, () => { called.ran = true; throw boom }), 'detached bound workStage') : boundCall(b.v, method, key)))
    judgeBound(o, method, isPg && PASS_SHAPES.has(exm.shape), boom, called)
  })
}

/** reap(options) and listAbandoned(options). */
P.reapAndList = () => {
  const fieldArb = fc.oneof({ weight: 2, arbitrary: wrap(fc.integer({ min: 0, max: 10 ** 9 })) }, { weight: 2, arbitrary: fc.constant(new V('absent', undefined)) }, { weight: 2, arbitrary: numberArb }, { weight: 1, arbitrary: odd })
  const optsArb = (a, b) =>
    fc.oneof(
      { weight: 4, arbitrary: fc.record({ [a]: fieldArb, [b]: fieldArb }, { requiredKeys: [] }).map((m) => Object.assign(new V(`{ ${Object.entries(m).map(([k, x]) => `${k}: ${x.d}`).join(', ')} }`, Object.fromEntries(Object.entries(m).map(([k, x]) => [k, x.v]))), { fields: true })) },
      { weight: 1, arbitrary: fc.constant(new V('no options', undefined)) },
      { weight: 2, arbitrary: odd },
    )
  return fc.asyncProperty(fc.oneof(optsArb('olderThanMs', 'batchSize').map((o) => ['reap', o]), optsArb('idleMs', 'limit').map((o) => ['listAbandoned', o])), async ([m, opt]) => {
    const v = opt.v
    let exp = {}
    if (!nullish(v) && typeof v !== 'object') exp = { invalid: true }
    else if (opt.fields && Object.values(v).some((x) => !numOptOk(x))) exp = { invalid: true }
    const o = await call(() => ctx.service[m](v), m)
    judge(o, {
      ...exp,
      onSuccess: (r) => {
        if (m === 'reap' && !(Number.isInteger(r) && r >= 0)) fail(`reap resolved ${describe(r)}`)
        if (m === 'listAbandoned') {
          if (!Array.isArray(r)) fail(`listAbandoned resolved ${describe(r)}`)
          r.forEach((k, i) => checkKey(k, `listAbandoned()[${i}]`))
          if (opt.fields && positive(v.limit) && r.length > v.limit) fail(`listAbandoned returned ${r.length} keys, limit ${v.limit}`)
        }
      },
    })
    if (m === 'reap' && o.k === 'ok' && o.v > 0) await ensureKeys()
  })
}

/** forTenant(tenant), then the scoped copy's initializeRequest and retrieve. */
P.forTenant = () => {
  const tenantArb = fc.oneof(
    { weight: 3, arbitrary: wrap(fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 130 })) },
    { weight: 2, arbitrary: anyString },
    { weight: 2, arbitrary: odd },
  )
  const keyArbT = fc.oneof({ weight: 3, arbitrary: wrap(fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 40 })) }, { weight: 1, arbitrary: odd })
  return fc.asyncProperty(tenantArb, keyArbT, async (t, k) => {
    const valid = typeof t.v === 'string' && /^[\x20-\x2e\x30-\x7e]{1,128}$/.test(t.v)
    const s = callSync(() => ctx.service.forTenant(t.v))
    judgeSync(s, { invalid: !valid })
    if (s.k !== 'value') return
    if (s.v.tenant !== t.v) fail(`forTenant(${describe(t.v)}).tenant is ${describe(s.v.tenant)}`)
    const keyOk = typeof k.v === 'string' && /^[\x20-\x7e]{1,255}$/.test(k.v)
    const o = await call(() => s.v.initializeRequest(k.v, 'POST', null, '/fz-tenant'), 'scoped initializeRequest')
    judge(o, {
      ...(keyOk ? { errors: [['conflict', 'IDEMPOTENCY_KEY_LOCKED'], ['conflict', 'IDEMPOTENCY_KEY_REUSED'], ['duplicate_error', 'IDEMPOTENCY_KEY_REUSED']] } : { invalid: nullish(k.v) || k.v === '' ? false : true }),
      onSuccess: (key) => {
        checkKey(key)
        if (keyOk && key.idempotency_key !== k.v) fail(`the scoped copy returned key ${describe(key.idempotency_key)} for ${describe(k.v)}`)
      },
    })
    if (o.k !== 'ok') return
    // Stored under the tenant: the unscoped service finds it by the stored form only.
    const stored = await call(() => ctx.service.retrieve(`${t.v}/${o.v.idempotency_key}`), 'retrieve(stored form)')
    if (stored.k !== 'ok' || stored.v.id !== o.v.id) fail(`the scoped key is not stored as <tenant>/<key>: ${showOut(stored)}`)
  })
}

/** index.js's exported wrapExecutor(executor): resolves { rows } or { error }, never throws or rejects. */
P.wrapExecutor = () => {
  const { wrapExecutor } = require('../..')
  const exArb = fc.oneof({ weight: 1, arbitrary: odd.map((v) => ({ kind: 'odd', v })) }, { weight: 3, arbitrary: execModelArb.map((m) => ({ kind: 'exec', m })) })
  return fc.asyncProperty(exArb, sqlArb, paramsArb, async (ex, sql, params) => {
    const e = ex.kind === 'odd' ? ex.v.v : buildExecutor(ex.m, ctx.execKeys[0], { n: 0 })
    const w = callSync(() => wrapExecutor(e))
    if (w.k === 'throw') fail(`wrapExecutor(${describe(e)}) threw ${showErr(w.e)}`)
    if (typeof w.v !== 'function') fail(`wrapExecutor returned ${describe(w.v)}`)
    // The SQL runs on the shared verification client: only harmless text there (odd SQL is not
    // what wrapExecutor is about; fake executors get the odd SQL).
    const text = isPg ? 'SELECT 1 AS one' : sql.v
    const o = await inPgTransaction(() => call(() => w.v(text, isPg ? [] : params.v), 'the wrapped executor'))
    if (o.k !== 'ok') fail(`the wrapped executor must resolve { rows } or { error }, it ${showOut(o)}`)
    const r = o.v
    const ok = r !== null && typeof r === 'object' && (Array.isArray(r.rows) || (r.error !== null && typeof r.error === 'object' && typeof r.error.message === 'string'))
    if (!ok) fail(`the wrapped executor resolved ${describe(r)}, not { rows } or { error: { code, message } }`)
  })
}

// ---------------------------------------------------------------------------------------------
// Runner

/** A failure's signature: its message without values, so one bug is reported once. */
function signature(e) {
  const msg = isFinding(e) ? e.message : `harness error: ${showErr(e)}`
  let t = msg.replace(/"(?:[^"\\]|\\.)*"/g, 'S').replace(/'(?:[^'\\]|\\.)*'/g, 'S').replace(/<[^>]*>/g, 'X')
  for (let prev = null; prev !== t; ) {
    prev = t
    t = t.replace(/\{[^{}]*\}/g, 'O').replace(/\[[^\[\]]*\]/g, 'A')
  }
  // Truncated values leave unbalanced brackets: cut at the first one.
  t = t.replace(/[{\[].*$/, 'O')
  return t.replace(/-?\d+(\.\d+)?(e[+-]?\d+)?n?/gi, 'N').replace(/\s+/g, ' ').slice(0, 90)
}

function safeStack(e) {
  try {
    return String(e && e.stack).split('\n').slice(1, 4).join(' | ')
  } catch {
    return ''
  }
}

const known = new Set()
let knownHits = 0

async function runProperty(name, seed, budgetMs, extra = {}) {
  const base = P[name]()
  let run = 0
  let failedInCheck = false
  let checkSeed = seed
  const originalRun = base.run.bind(base)
  let stopAt = Infinity
  base.run = (v, ...rest) => {
    // The time limit, checked BETWEEN cases: fast-check's interruptAfterTimeLimit races the case
    // that is running and abandons it, which would let it overlap the next case.
    if (Date.now() > stopAt) return Promise.resolve(new fc.PreconditionFailure(true))
    run++
    cases++
    let d
    try {
      d = fc.stringify(v)
    } catch {
      d = '<undescribable>'
    }
    if (d.length > 600) d = d.slice(0, 600) + '…'
    pendingSql.clear()
    current = { p: name, i: run, seed: checkSeed, path: failedInCheck ? null : String(run - 1), d }
    out('CASE', { p: name, i: run, s: checkSeed, path: current.path, t: Date.now() - T0, d })
    return Promise.resolve(originalRun(v, ...rest)).then(async (r) => {
      if (!isPg && STAGE_PROPS.has(name)) {
        const held = await writeLockHeld()
        // Every later write of this process would wait for it: report this case and start afresh.
        if (held) hang(`this case left the SQLite write lock held after it settled: ${held}; every later write waits busyTimeoutMs, then fails with DATABASE_BUSY`)
      }
      if (r && 'error' in r) {
        if (known.has(signature(r.error))) {
          knownHits++
          return null // reported already: keep exploring for other failures
        }
        failedInCheck = true
      }
      return r
    })
  }
  const started = Date.now()
  const deadline = started + budgetMs
  const failures = []
  let numRuns = 0
  for (let attempt = 0; attempt < 6; attempt++) {
    const left = deadline - Date.now()
    if (left < 100 && !extra.path) break
    failedInCheck = false
    stopAt = extra.path ? Infinity : deadline
    const params = { seed: checkSeed, numRuns: extra.path ? 1 : 1e9, markInterruptAsFailure: false }
    if (extra.path) params.path = extra.path
    const runsBefore = run
    const r = await fc.check(base, params)
    numRuns += r.numRuns
    // Interrupted by the time limit before a case completed: fast-check calls that failed.
    if (!r.failed || (r.counterexample === null && r.errorInstance === null)) break
    const e = r.errorInstance
    const sig = signature(e)
    known.add(sig)
    let counterexample
    try {
      counterexample = fc.stringify(r.counterexample)
    } catch {
      counterexample = '<undescribable>'
    }
    const f = {
      prop: name,
      backend: config.backend,
      seed: checkSeed,
      path: r.counterexamplePath,
      sig,
      error: isFinding(e) ? e.message : `HARNESS/unexpected: ${showErr(e)} ${r.errorInstance === undefined || r.errorInstance === null ? String(r.error) : ''} ${safeStack(e)}`,
      counterexample: counterexample.length > 3000 ? counterexample.slice(0, 3000) + '…' : counterexample,
      shrinks: r.numShrinks,
      runsToFind: run - runsBefore - r.numShrinks,
    }
    failures.push(f)
    out('FAIL', f)
    if (extra.path) break
    checkSeed += 7919
  }
  return { prop: name, runs: run, numRuns, ms: Date.now() - started, failures: failures.length }
}

async function main() {
  for (const sig of config.known || []) known.add(sig)
  await setup()
  const names = config.props || Object.keys(P)
  const results = []
  if (config.replay) {
    results.push(await runProperty(config.replay.prop, config.replay.seed, 120000, { path: config.replay.path }))
  } else {
    const deadline = Date.now() + config.budgetMs
    // Split the budget over the properties; time a property leaves unused goes to the rest, and
    // what is left after a round (properties that stopped early) goes to another round.
    for (let round = 0; round < 5 && deadline - Date.now() > 1500; round++) {
      for (let i = 0; i < names.length; i++) {
        const left = deadline - Date.now()
        if (left <= 0) break
        const slice = Math.max(200, Math.floor(left / (names.length - i)))
        const r = await runProperty(names[i], config.seed + i * 104729 + round * 15485863, slice)
        results.push(r)
        if (round === 0) out('PROP_DONE', r)
        else out('PROP_MORE', r)
      }
    }
  }
  if (ctx.pg) await ctx.pg.end().catch(() => {})
  await guard(ctx.service.close(), 'close')
  await new Promise((r) => setTimeout(r, 200)) // let late rejections surface
  out('DONE', { cases, knownHits, results, strays })
  fs.rmSync(ctx.tmp, { recursive: true, force: true })
  process.exit(0)
}

main().catch((e) => {
  out('SETUP_FAILED', { error: showErr(e), stack: String(e && e.stack) })
  process.exit(2)
})
