'use strict'
// Multi-process: 8 Node processes (stress/lib/multiprocess-worker.js), each with its own service
// and pool, share one key set, the way an app scaled out to many processes shares one database.
// Every client sends route-style requests (initializeRequest → 3 × workStage with
// { recoveryPoint }, each stage inserting a side row (key, stage)) for keys picked at random, and
// re-sends a request after a short backoff while the answer is a typed conflict (409: LOCKED,
// STALE, 40001, 40P01), until it ends with the stored response. Run twice: directly against
// PostgreSQL, and through PgBouncer in transaction mode (test-support/pgbouncer.js, pool 4: the
// 8 processes' connections share 4 server connections).
//
// Asserts, for each run: every request ended with the stored response (no unexpected error, none
// still refused at the deadline); all requests of a key, in every process, got the same
// response_body, the one stored in the row (it names the process that finished the key and a
// random nonce, so a replay is told from a recomputation); exactly one side row per (key,
// stage); every key finished with no lease left; through PgBouncer at most default_pool_size
// server connections; directly at most 8 × pool backends. Prints requests, keys, requests/s,
// conflicts by code, p50/p99 per request (backoffs included).
//
//   node stress/multiprocess.js [--short]
const path = require('node:path')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const { freshDatabase, assertExactlyOnce, percentile, figures, log, sleep, STAGE_NAMES } = require('./lib/common')
const { onTaggedLines } = require('./lib/tagged-lines')
const { startPgBouncer, pgbouncerVersion } = require('../test-support/pgbouncer')

const WORKER = path.join(__dirname, 'lib', 'multiprocess-worker.js')
const { canonical } = require(WORKER)
const SIDE_SQL = 'CREATE TABLE side (k text NOT NULL, stage text NOT NULL, pid integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())'

/** Start a worker; resolves once it is connected (READY), with { child, result } handles. */
function startWorker(cfg, timeoutMs) {
  const env = { ...process.env }
  delete env.DATABASE_URL
  const child = spawn(process.execPath, [WORKER, JSON.stringify(cfg)], { stdio: ['pipe', 'pipe', 'pipe'], env })
  const res = { result: null, error: null, stderr: '', code: null, signal: null, timedOut: false }
  let onReady
  const ready = new Promise((r) => (onReady = r))
  onTaggedLines(child.stdout, (tag, obj) => {
    if (tag === 'READY') onReady(true)
    else if (tag === 'RESULT') res.result = obj
    else if (tag === 'ERROR') res.error = obj
  })
  child.stderr.on('data', (d) => {
    if (res.stderr.length < 20000) res.stderr += d
  })
  child.stdin.on('error', () => {})
  const timer = setTimeout(() => {
    res.timedOut = true
    child.kill('SIGKILL')
  }, timeoutMs)
  const done = new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      Object.assign(res, { code, signal })
      onReady(false)
      resolve(res)
    })
  })
  return { child, ready, done }
}

/**
 * One run: `cfg.procs` workers on `url` over the key set `prefix-0…`, started together. While
 * it runs, `sample()` is polled for connection counts. Resolves the merged figures.
 */
async function runMode(fx, label, url, cfg, sample) {
  const run = Math.random().toString(36).slice(2, 8)
  const prefix = `mp-${label}-${run}`
  const timeoutMs = (cfg.seconds + 30) * 1000
  const workers = Array.from({ length: cfg.procs }, () =>
    startWorker(
      { url, prefix, keys: cfg.keys, clients: cfg.clients, requests: cfg.requests, pool: cfg.pool, lockTimeoutMs: cfg.lockTimeoutMs, backoffMs: cfg.backoffMs, seconds: cfg.seconds },
      timeoutMs,
    ),
  )
  const readies = await Promise.all(workers.map((w) => w.ready))
  let maxConns = { servers: 0, clients: 0 }
  let watching = true
  const watcher = (async () => {
    while (watching) {
      const c = await sample().catch(() => null)
      if (c) maxConns = { servers: Math.max(maxConns.servers, c.servers), clients: Math.max(maxConns.clients, c.clients ?? 0) }
      await sleep(25)
    }
  })()
  const t0 = Date.now()
  if (readies.every(Boolean)) for (const w of workers) w.child.stdin.end('go\n')
  else for (const w of workers) w.child.kill('SIGKILL') // one could not connect: its ERROR says why
  let results
  try {
    results = await Promise.all(workers.map((w) => w.done))
  } finally {
    watching = false
    await watcher
  }
  const elapsed = (Date.now() - t0) / 1000

  // Every process ran to the end.
  const problems = []
  for (const [i, r] of results.entries()) {
    if (r.timedOut) problems.push(`process ${i}: still running after ${timeoutMs / 1000} s (killed)`)
    else if (r.error) problems.push(`process ${i}: ${r.error.error}`)
    else if (!r.result) problems.push(`process ${i}: exited ${r.signal || r.code} without a result${r.stderr ? `; stderr: ${r.stderr.slice(0, 400)}` : ''}`)
  }
  if (problems.length) throw new Error(`${label}: ${problems.join('\n')}`)
  const rs = results.map((r) => r.result)

  // Every request ended with the stored response.
  const sum = (f) => rs.reduce((a, r) => a + f(r), 0)
  const requests = sum((r) => r.requests)
  const unexpected = sum((r) => r.unexpected)
  const unfinished = rs.flatMap((r) => r.unfinished)
  assert.equal(unexpected, 0, `${label}: ${unexpected} request(s) ended with an error that is not a typed conflict: ${rs.flatMap((r) => r.unexpectedSample).slice(0, 5).join('; ')}`)
  assert.equal(unfinished.length, 0, `${label}: ${unfinished.length} request(s) still refused at the deadline: ${unfinished.slice(0, 5).join('; ')}`)
  assert.equal(sum((r) => r.completed), requests, `${label}: every request completed`)

  // One response per key, across processes, and it is the stored one.
  const bodies = new Map()
  for (const r of rs) for (const [k, list] of Object.entries(r.bodies)) for (const b of list) (bodies.get(k) ?? bodies.set(k, new Set()).get(k)).add(b)
  const keys = [...bodies.keys()]
  const { rows } = await fx.pg.query(
    'SELECT idempotency_key, recovery_point, locked_at, response_code, response_body FROM idempotency_key WHERE starts_with(idempotency_key, $1)',
    [`${prefix}-`],
  )
  assert.equal(rows.length, keys.length, `${label}: one idempotency_key row per key used`)
  const differing = []
  for (const row of rows) {
    const seen = bodies.get(row.idempotency_key)
    assert.ok(seen, `${label}: a row for ${row.idempotency_key}, which no request got a response for`)
    assert.equal(row.recovery_point, 'finished', `${row.idempotency_key} finished`)
    assert.equal(row.locked_at, null, `${row.idempotency_key}: a finished key holds no lease`)
    assert.equal(row.response_code, 201)
    if (seen.size !== 1 || [...seen][0] !== canonical(row.response_body)) differing.push(`${row.idempotency_key}: stored ${JSON.stringify(row.response_body)}, requests got ${[...seen].join(' | ')}`)
  }
  assert.deepEqual(differing.slice(0, 5), [], `${label}: ${differing.length} key(s) whose requests did not all get the stored response`)
  const sideRows = await assertExactlyOnce(fx.pg, keys, { onlyKeys: true })
  const { rows: byPid } = await fx.pg.query('SELECT CAST(count(DISTINCT pid) AS integer) AS n FROM side WHERE starts_with(k, $1)', [`${prefix}-`])

  const conflictCodes = {}
  for (const r of rs) for (const [c, n] of Object.entries(r.conflictCodes)) conflictCodes[c] = (conflictCodes[c] ?? 0) + n
  const latencies = rs.flatMap((r) => r.latencies)
  return {
    requests,
    keys: keys.length,
    'requests/s': Math.round(requests / elapsed),
    attempts: sum((r) => r.attempts),
    replays: sum((r) => r.replays),
    conflicts: Object.values(conflictCodes).reduce((a, b) => a + b, 0),
    conflict_codes: conflictCodes,
    side_rows: sideRows,
    stage_writers: byPid[0].n,
    p50_ms: percentile(latencies, 50),
    p99_ms: percentile(latencies, 99),
    max_ms: percentile(latencies, 100),
    max_server_conns: maxConns.servers,
    ...(maxConns.clients ? { max_client_conns: maxConns.clients } : {}),
    seconds: Math.round(elapsed * 10) / 10,
  }
}

async function main({ short = false } = {}) {
  const cfg = short
    ? { procs: 8, clients: 4, requests: 4, keys: 48, pool: 4, poolerSize: 4, lockTimeoutMs: 500, backoffMs: [5, 30], seconds: 20 }
    : { procs: 8, clients: 8, requests: 24, keys: 256, pool: 4, poolerSize: 4, lockTimeoutMs: 500, backoffMs: [5, 30], seconds: 60 }
  log(
    `multiprocess: ${cfg.procs} processes × ${cfg.clients} clients × ${cfg.requests} requests over ${cfg.keys} shared keys, pool ${cfg.pool} per process; ` +
      `directly, then through PgBouncer ${pgbouncerVersion() ?? '(not installed)'} (transaction mode, default_pool_size ${cfg.poolerSize})`,
  )
  const fx = await freshDatabase({ setupSql: [SIDE_SQL] })
  let bouncer = null
  const out = { scenario: 'multiprocess', processes: cfg.procs }
  try {
    const backends = async () => {
      const { rows } = await fx.pg.query(
        "SELECT CAST(count(*) AS integer) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
      )
      return { servers: rows[0].n }
    }
    const direct = await runMode(fx, 'direct', fx.url, cfg, backends)
    log(`direct: ${JSON.stringify(direct)}`)
    assert.ok(direct.max_server_conns <= cfg.procs * cfg.pool, `direct: at most ${cfg.procs} × ${cfg.pool} backends, saw ${direct.max_server_conns}`)

    bouncer = await startPgBouncer({ database: fx.name, poolSize: cfg.poolerSize, poolMode: 'transaction' })
    const pools = async () => {
      const p = (await bouncer.admin('SHOW POOLS')).find((x) => x.database === fx.name)
      return p ? { servers: p.sv_active + p.sv_idle + p.sv_used + p.sv_tested + p.sv_login, clients: p.cl_active + p.cl_waiting } : null
    }
    const pooled = await runMode(fx, 'pgbouncer', bouncer.url, cfg, pools)
    log(`pgbouncer: ${JSON.stringify(pooled)}`)
    assert.ok(pooled.max_server_conns <= cfg.poolerSize, `pgbouncer: at most default_pool_size (${cfg.poolerSize}) server connections, saw ${pooled.max_server_conns}`)

    // Nothing in the side table outside the two runs' keys, and one row per (key, stage) overall.
    const { rows } = await fx.pg.query('SELECT CAST(count(*) AS integer) AS n FROM side')
    assert.equal(rows[0].n, (direct.keys + pooled.keys) * STAGE_NAMES.length, 'side rows overall: one per (key, stage) of both runs')

    for (const [prefix, r] of [['direct', direct], ['pgbouncer', pooled]]) {
      for (const [k, v] of Object.entries(r)) out[`${prefix}_${k}`] = v
    }
    out.pgbouncer_version = bouncer.version
    figures(out)
    return out
  } finally {
    if (bouncer) await bouncer.stop()
    await fx.drop()
  }
}

module.exports = { main }
if (require.main === module) require('./lib/child').runScenario(__filename)
