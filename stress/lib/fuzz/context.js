'use strict'
// The service under test, its keys, and reading a key's state between cases.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { IdempotencyKeyService } = require('./addon')
const { config, isPg } = require('./config')
const { call } = require('./cases')
const { describe } = require('./values')
const { fail, showOut } = require('./oracle')

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

module.exports = { ctx, setup, writeLockHeld, STAGE_PROPS, PROBE_KEY, ensureKeys, state, tryState, sameState }
