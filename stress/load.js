'use strict'
// Load: 64 concurrent clients over a set of keys, through the flow of a Medusa route
// (initializeRequest → workStage with { recoveryPoint } × 3 → stored response). Every request
// is sent 4 times with the same key (the original and 3 retries): the first retry always
// while the original is in flight, the second half of the time, the third after the others
// settled. Clients pick keys at random from a shared set, so different clients also collide
// on one key. A send that gets a typed conflict (409) is re-sent after a short backoff.
//
// Asserts: exactly one side-effect row per (key, stage) once every key is finished (a sweep
// re-sends every key until it is); every send ends with the stored response or a typed
// conflict (anything else fails, a POOL_TIMEOUT is pool starvation); the run ends within its
// bound and no 40P01 reaches a client (no deadlock, no hang); no unhandled rejection
// (stress/lib/child.js); the pool never holds more backends than maxConnections.
// Prints requests/s (a request = one send), conflicts (409s seen, by code) and latency
// percentiles per send (including its backoffs) and per attempt.
const assert = require('node:assert/strict')
const {
  freshDatabase,
  routeRequest,
  assertStoredResponse,
  assertExactlyOnce,
  sweep,
  withTimeout,
  isTypedDbError,
  describe,
  percentile,
  figures,
  log,
  now,
  sleep,
  SIDE_TABLE_SQL,
} = require('./lib/common')

async function main({ short = false } = {}) {
  const cfg = short
    ? { clients: 64, requestsPerClient: 2, keys: 96, pool: 16, seconds: 6 }
    : { clients: 64, requestsPerClient: 16, keys: 512, pool: 16, seconds: 60 }
  const lockTimeoutMs = 500 // short leases: concurrent retries also take over expired leases
  log(`load: ${cfg.clients} clients × ${cfg.requestsPerClient} requests × 4 sends over ${cfg.keys} keys, pool ${cfg.pool}, lease ${lockTimeoutMs} ms, bound ${cfg.seconds} s`)

  const fx = await freshDatabase({ setupSql: [SIDE_TABLE_SQL] })
  try {
    const service = await fx.connect({ maxConnections: cfg.pool, acquireTimeoutMs: 10000, lockTimeoutMs, stageTimeoutMs: 20000 })
    const run = Math.random().toString(36).slice(2, 8)
    const keyName = (i) => `load-${run}-${i}`
    const touched = new Set()

    const sendLatencies = []
  const attemptLatencies = []
    const conflictCodes = {}
    const bad = [] // sends that ended with anything but the stored response or a typed conflict
    let sends = 0
    let sendsOk = 0
    let sendsConflict = 0
    let attempts = 0
    let callbacks = 0
    let maxBackends = 0
    const deadline = now() + cfg.seconds * 1000

    const hooks = {
      async inStage() {
        callbacks++
        // Widen the window between the write and the commit now and then.
        if (Math.random() < 0.3) await sleep(Math.random() * 3)
      },
    }

    async function send(key) {
      const t0 = now()
      sends++
      try {
        const r = await routeRequest(service, key, {
          hooks,
          deadline,
          onConflict: (e) => (conflictCodes[e.code] = (conflictCodes[e.code] ?? 0) + 1),
          onAttempt: (ms) => attemptLatencies.push(ms),
        })
        attempts += r.attempts
        if (r.ok) {
          assertStoredResponse(r.key, key)
          sendsOk++
        } else {
          sendsConflict++
        }
      } catch (e) {
        bad.push({ key, error: e })
      } finally {
        sendLatencies.push(now() - t0)
      }
    }

    async function request(key) {
      const original = send(key)
      const retry1 = sleep(Math.random() * 15).then(() => send(key))
      const concurrent2 = Math.random() < 0.5
      const retry2 = concurrent2 ? sleep(Math.random() * 30).then(() => send(key)) : null
      await Promise.all([original, retry1, retry2])
      if (!concurrent2) await send(key)
      await send(key)
    }

    async function client() {
      for (let i = 0; i < cfg.requestsPerClient && now() < deadline; i++) {
        const key = keyName(Math.floor(Math.random() * cfg.keys))
        touched.add(key)
        await request(key)
      }
    }

    // Watch the pool from the server's side while the load runs.
    let watching = true
    const watcher = (async () => {
      while (watching) {
        const { rows } = await fx.pg.query(
          'SELECT CAST(count(*) AS integer) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()',
        )
        maxBackends = Math.max(maxBackends, rows[0].n)
        await sleep(50)
      }
    })()

    let elapsed
    try {
      const t0 = now()
      await withTimeout(Promise.all(Array.from({ length: cfg.clients }, client)), cfg.seconds * 1000 + 30000, 'the load (deadlock or starvation?)')
      elapsed = (now() - t0) / 1000
    } finally {
      watching = false
      await watcher
    }

    // Every send must have ended with the stored response or a typed conflict.
    const starvation = bad.filter((b) => isTypedDbError(b.error, ['POOL_TIMEOUT']))
    if (bad.length) {
      const sample = bad.slice(0, 5).map((b) => `${b.key}: ${describe(b.error)}`)
      throw new Error(`${bad.length} send(s) ended with neither the stored response nor a typed conflict (${starvation.length} POOL_TIMEOUT = pool starvation):\n  ${sample.join('\n  ')}`)
    }

    // Drive every key to finished (a client that keeps retrying), then check exactly-once.
    await sweep(service, touched, { concurrency: 16 })
    const sideRows = await assertExactlyOnce(fx.pg, touched)
    const { rows: keyRows } = await fx.pg.query('SELECT idempotency_key, recovery_point, locked_at FROM idempotency_key')
    assert.equal(keyRows.length, touched.size, 'one idempotency_key row per key used')
    for (const r of keyRows) {
      assert.equal(r.recovery_point, 'finished', `${r.idempotency_key} finished`)
      assert.equal(r.locked_at, null, `${r.idempotency_key}: a finished key holds no lease`)
    }
    assert.equal(conflictCodes['40P01'], undefined, `no deadlock (40P01) reached a client, saw ${conflictCodes['40P01']}`)
    assert.ok(maxBackends <= cfg.pool, `at most maxConnections (${cfg.pool}) backends, saw ${maxBackends}`)

    const conflicts = Object.values(conflictCodes).reduce((a, b) => a + b, 0)
    const out = {
      scenario: 'load',
      clients: cfg.clients,
      keys: touched.size,
      requests: sends,
      'requests/s': Math.round(sends / elapsed),
      completed: sendsOk,
      ended_in_conflict: sendsConflict,
      conflicts,
      conflict_codes: conflictCodes,
      attempts,
      stage_callbacks: callbacks,
      side_rows: sideRows,
      request_p50_ms: percentile(sendLatencies, 50),
      request_p99_ms: percentile(sendLatencies, 99),
      request_max_ms: percentile(sendLatencies, 100),
      attempt_p50_ms: percentile(attemptLatencies, 50),
      attempt_p99_ms: percentile(attemptLatencies, 99),
      max_backends: maxBackends,
      seconds: Math.round(elapsed * 10) / 10,
    }
    figures(out)
    return out
  } finally {
    await fx.drop()
  }
}

module.exports = { main }
if (require.main === module) require('./lib/child').runScenario(__filename)
