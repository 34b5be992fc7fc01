'use strict'
// Shared helpers of the stress scenarios (not a scenario itself: run.js skips stress/lib/).
//
// - freshDatabase(): a PostgreSQL database of its own for every run (other agents test on the
//   same server concurrently), migrated, with an independent node-postgres verification client.
// - routeRequest(): one request through the flow of a Medusa route (initializeRequest →
//   workStage with { recoveryPoint } … → the stored response), retried after a short backoff on
//   a typed conflict, as a client re-sending the request would.
// - typed-error checks, percentiles, FIGURES output, PostgreSQL stop/start with a safety marker.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const assert = require('node:assert/strict')
const { execFileSync } = require('node:child_process')
const { Client } = require('pg')
const { IdempotencyKeyService } = require('../..')
const { dbUrl } = require('../../test-support/db')
const { sleep, withTimeout } = require('../../test-support/async')
const { CONFLICT_CODES, isConflict, isTypedDbError, isTypedError, describe, assertDbError } = require('../../test-support/errors')

const { ADMIN_URL, admin, createDatabase } = require('./pgadmin')
const SHORT = process.argv.includes('--short') || process.env.STRESS_SHORT === '1'

const now = () => Number(process.hrtime.bigint()) / 1e6

/**
 * A fresh database `idem_stress_<pid>_<rand>`, migrated through the addon, with a verification
 * client `pg` (node-postgres, independent of the addon) and `drop()`. `setupSql` runs first
 * (side-effect tables).
 */
async function freshDatabase({ setupSql = [] } = {}) {
  const { name, url, drop: dropDatabase } = await createDatabase('idem_stress')
  const newVerifier = () => {
    const c = new Client({ connectionString: url })
    // A verification client must report its failures through its queries instead of crashing
    // the process with an unhandled 'error' event (PostgreSQL stopped under it).
    c.on('error', () => {})
    return c
  }
  let pg = newVerifier()
  const opened = []
  try {
    await pg.connect()
    for (const sql of setupSql) await pg.query(sql)
    const s = await IdempotencyKeyService.connect({ url, maxConnections: 1 })
    try {
      await s.migrate()
    } finally {
      await s.close()
    }
  } catch (e) {
    await pg.end().catch(() => {})
    await dropDatabase().catch(() => {})
    throw e
  }
  const connect = async (opts = {}) => {
    const s = await IdempotencyKeyService.connect({ url, ...opts })
    opened.push(s)
    return s
  }
  const drop = async () => {
    for (const s of opened) await withTimeout(s.close(), 10000, 'service.close()').catch(() => {})
    await pg.end().catch(() => {})
    await dropDatabase()
  }
  /** A new verification client (after PostgreSQL was stopped and started). */
  const reconnect = async () => {
    await pg.end().catch(() => {})
    pg = newVerifier()
    await pg.connect()
  }
  return {
    name,
    url,
    get pg() {
      return pg
    },
    connect,
    reconnect,
    drop,
  }
}

// ---------------------------------------------------------------------------------------------
// The route

/**
 * The stages of the stress route. Every stage inserts one row (key, stage) into `side` in the
 * stage's transaction; the last one finishes the key with a response derived from the key.
 */
const STAGES = [
  { at: 'started', stage: 'reserve', next: 'stock_reserved' },
  { at: 'stock_reserved', stage: 'charge', next: 'payment_captured' },
  { at: 'payment_captured', stage: 'order', next: null },
]
const STAGE_NAMES = STAGES.map((s) => s.stage)
const SIDE_TABLE_SQL = 'CREATE TABLE side (k text NOT NULL, stage text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())'
const responseFor = (key) => ({ order_id: `order_${key}`, total: key.length })
const METHOD = 'POST'
const PATH = '/store/carts/complete'
const paramsFor = (key) => ({ cart_id: `cart_${key}` })

/**
 * One attempt of the route: initializeRequest, then one workStage per recovery point (with
 * `{ recoveryPoint }`), then the stored response. Resolves `{ key }` (finished) or rejects with
 * the service's error. `hooks.inStage(stage, tx, key)` runs inside every callback after its
 * write (delays, fault injection).
 */
async function routeAttempt(service, key, hooks = {}) {
  let k = await service.initializeRequest(key, METHOD, paramsFor(key), PATH)
  while (k.recovery_point !== 'finished') {
    const step = STAGES.find((s) => s.at === k.recovery_point)
    if (!step) throw new Error(`unknown recovery point ${k.recovery_point} for ${key}`)
    k = await service.workStage(
      key,
      async (tx) => {
        await tx.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, step.stage])
        if (hooks.inStage) await hooks.inStage(step.stage, tx, key)
        return step.next ? { recovery_point: step.next } : { response_code: 201, response_body: responseFor(key) }
      },
      { recoveryPoint: step.at },
    )
  }
  return k
}

/**
 * A client request: route attempts, re-sent after a short jittered backoff whenever the answer
 * is a typed conflict (409), up to `maxAttempts`. Resolves
 * `{ ok: true, key, attempts, conflicts }` with the stored response, or
 * `{ ok: false, error, attempts, conflicts }` when it ended with a typed conflict. Any other
 * error rejects (the caller decides whether it is allowed). `onAttempt(ms)` sees every attempt's
 * duration.
 */
async function routeRequest(service, key, { maxAttempts = 60, backoffMs = [5, 40], deadline = Infinity, hooks, onConflict, onAttempt } = {}) {
  let conflicts = 0
  for (let attempt = 1; ; attempt++) {
    const t0 = now()
    try {
      const k = await routeAttempt(service, key, hooks)
      if (onAttempt) onAttempt(now() - t0)
      return { ok: true, key: k, attempts: attempt, conflicts }
    } catch (e) {
      if (onAttempt) onAttempt(now() - t0)
      if (!isConflict(e)) throw e
      conflicts++
      if (onConflict) onConflict(e)
      if (attempt >= maxAttempts || now() > deadline) return { ok: false, error: e, attempts: attempt, conflicts }
      await sleep(backoffMs[0] + Math.random() * (backoffMs[1] - backoffMs[0]))
    }
  }
}

/**
 * A client that keeps re-sending every key in `keys` (`concurrency` at a time) until it gets the
 * stored response, for at most `seconds`; asserts every key ends finished with its response.
 */
async function sweep(service, keys, { concurrency = 8, seconds = 30 } = {}) {
  const queue = [...keys]
  const deadline = now() + seconds * 1000
  const worker = async () => {
    for (let key; (key = queue.shift()) !== undefined; ) {
      const r = await routeRequest(service, key, { maxAttempts: 10000, backoffMs: [20, 60], deadline })
      assert.ok(r.ok, `sweep: ${key} still refused after ${seconds} s: ${r.ok ? '' : describe(r.error)}`)
      assertStoredResponse(r.key, key, `sweep of ${key}`)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
}

/** Check a finished key's response is the one the route stores. */
function assertStoredResponse(k, key, what = key) {
  assert.equal(k.recovery_point, 'finished', `${what}: recovery point`)
  assert.equal(k.response_code, 201, `${what}: response_code`)
  assert.deepEqual(k.response_body, responseFor(key), `${what}: response_body`)
}

/**
 * Exactly-once over the side table: for every key in `keys`, exactly one row per stage in
 * `stagesFor(key)` (default: all three), and (unless `onlyKeys`) no row for any other key.
 * Returns the number of (key, stage) pairs checked.
 */
async function assertExactlyOnce(pg, keys, { stagesFor = () => STAGE_NAMES, onlyKeys = false } = {}) {
  keys = [...keys]
  const { rows } = onlyKeys
    ? await pg.query('SELECT k, stage, CAST(count(*) AS integer) AS n FROM side WHERE k = ANY($1) GROUP BY k, stage', [keys])
    : await pg.query('SELECT k, stage, CAST(count(*) AS integer) AS n FROM side GROUP BY k, stage')
  const got = new Map(rows.map((r) => [`${r.k}\u0000${r.stage}`, r.n]))
  const problems = []
  let expected = 0
  for (const key of keys) {
    for (const stage of stagesFor(key)) {
      expected++
      const n = got.get(`${key}\u0000${stage}`) ?? 0
      if (n !== 1) problems.push(`${key}/${stage}: ${n} rows`)
      got.delete(`${key}\u0000${stage}`)
    }
  }
  for (const [kk, n] of got) problems.push(`unexpected ${kk.replace('\u0000', '/')}: ${n} rows`)
  assert.equal(problems.length, 0, `side effects not exactly once (${problems.length} problems): ${problems.slice(0, 10).join('; ')}`)
  return expected
}

// ---------------------------------------------------------------------------------------------
// Figures

function percentile(values, p) {
  if (!values.length) return null
  const s = [...values].sort((a, b) => a - b)
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))
  return Math.round(s[i] * 10) / 10
}

function figures(obj) {
  global.__stressFiguresPrinted = true
  console.log('FIGURES ' + JSON.stringify(obj))
}

const log = (...a) => console.log(`[${process.uptime().toFixed(1)} s]`, ...a)

// ---------------------------------------------------------------------------------------------
// PostgreSQL stop/start (backend-loss). A marker file says "this process stopped the server":
// run.js starts the server again if a scenario died (hard timeout) while the marker existed.

const MARKER_DIR = path.join(os.tmpdir(), 'idem-stress-pg-stopped')
const PG_CTL = ['--skip-systemctl-redirect', '15', 'main']

function markerFor(pid) {
  return path.join(MARKER_DIR, String(pid))
}

function pgStop() {
  fs.mkdirSync(MARKER_DIR, { recursive: true })
  fs.writeFileSync(markerFor(process.pid), String(Date.now()))
  execFileSync('pg_ctlcluster', [...PG_CTL, 'stop', '-m', 'fast'], { stdio: 'pipe', timeout: 30000 })
}

function pgStart() {
  try {
    execFileSync('pg_ctlcluster', [...PG_CTL, 'start'], { stdio: 'pipe', timeout: 60000 })
  } catch (e) {
    // Exit 2: already running (someone else started it): fine.
    if (!pgIsRunning()) throw e
  }
  fs.rmSync(markerFor(process.pid), { force: true })
}

function pgIsRunning() {
  try {
    execFileSync('pg_ctlcluster', [...PG_CTL, 'status'], { stdio: 'pipe', timeout: 10000 })
    return true
  } catch {
    return false
  }
}

/** Called by run.js after a scenario exited: start PostgreSQL if that process left it stopped. */
function restartIfLeftStopped(pid) {
  const m = markerFor(pid)
  if (!fs.existsSync(m)) return false
  if (!pgIsRunning()) execFileSync('pg_ctlcluster', [...PG_CTL, 'start'], { stdio: 'pipe', timeout: 60000 })
  fs.rmSync(m, { force: true })
  return true
}

module.exports = {
  ADMIN_URL,
  SHORT,
  sleep,
  now,
  admin,
  dbUrl,
  freshDatabase,
  withTimeout,
  CONFLICT_CODES,
  isConflict,
  isTypedDbError,
  isTypedError,
  assertDbError,
  describe,
  STAGES,
  STAGE_NAMES,
  SIDE_TABLE_SQL,
  METHOD,
  PATH,
  paramsFor,
  responseFor,
  routeAttempt,
  routeRequest,
  assertStoredResponse,
  assertExactlyOnce,
  sweep,
  percentile,
  figures,
  log,
  pgStop,
  pgStart,
  pgIsRunning,
  restartIfLeftStopped,
}
