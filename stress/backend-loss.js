'use strict'
// Backend loss, in three parts (each runs even if an earlier one failed; the scenario fails at
// the end listing every violation):
//
// 1. `pg_terminate_backend` on the connection of a running stage, after its callback wrote:
//    while a statement of the callback runs (pg_sleep), while the transaction is idle (the
//    callback awaits, then returns and the commit meets the dead connection), and idle with one
//    more tx.query after the kill. The stage must reject with a typed database error (57P01, or
//    CONNECTION_FAILED for an I/O error), its write must be absent, the recovery point and lease
//    as before the stage; the pool replaces the connection: the very next request (same key)
//    succeeds at its first attempt, and a burst of 2 × pool requests all succeed, with no
//    restart of Node.
// 2. `pg_terminate_backend` on the pool's idle connections (what a PostgreSQL restart, a
//    failover or idle_session_timeout does to a pool): the next requests succeed.
// 3. (not with --short) PostgreSQL stopped (`pg_ctlcluster … stop -m fast`), left down ~1.5 s,
//    and started again under light load: while it is down every failure is a typed error (database
//    error with a SQLSTATE, CONNECTION_FAILED or POOL_TIMEOUT; or a conflict); once it is back
//    the service recovers by itself; after a sweep every key has exactly one row per stage.
//    The stop is always followed by a start in a finally block (and run.js starts the server
//    if this process dies while it is stopped).
const assert = require('node:assert/strict')
const {
  freshDatabase,
  routeRequest,
  routeAttempt,
  assertStoredResponse,
  assertExactlyOnce,
  sweep,
  withTimeout,
  isConflict,
  isTypedDbError,
  assertDbError,
  describe,
  percentile,
  figures,
  log,
  now,
  sleep,
  pgStop,
  pgStart,
  SIDE_TABLE_SQL,
  METHOD,
  PATH,
  paramsFor,
} = require('./lib/common')

const TERMINATED = ['57P01', 'CONNECTION_FAILED']

async function poolBackends(pg) {
  const { rows } = await pg.query(
    'SELECT pid, state FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid',
  )
  return rows
}

async function main({ short = false } = {}) {
  const violations = []
  const out = { scenario: 'backend-loss' }
  const check = async (name, fn) => {
    try {
      await fn()
      log(`  ok: ${name}`)
    } catch (e) {
      violations.push(`${name}: ${e.message}`)
      log(`  VIOLATION: ${name}: ${e.message}`)
    }
  }

  const fx = await freshDatabase({ setupSql: [SIDE_TABLE_SQL] })
  let stopped = false
  try {
    const run = Math.random().toString(36).slice(2, 8)
    const POOL = 4
    const service = await fx.connect({ maxConnections: POOL, lockTimeoutMs: 1000, acquireTimeoutMs: 5000, stageTimeoutMs: 20000 })

    // ------------------------------------------------------------------------------------
    // 1. terminate the connection of a running stage
    const modes = ['statement', 'idle', 'query-after']
    const reps = short ? 1 : 3
    let terminated = 0
    const stageRejectMs = []
    const rejectCodes = {}
    log(`backend-loss 1: pg_terminate_backend on a running stage's connection, ${modes.join(' / ')} × ${reps}`)
    for (let rep = 0; rep < reps; rep++) {
      for (const mode of modes) {
        const key = `bl-${run}-${mode}-${rep}`
        await check(`terminate during stage (${mode}, #${rep + 1})`, async () => {
          const k0 = await service.initializeRequest(key, METHOD, paramsFor(key), PATH)
          assert.equal(k0.recovery_point, 'started')
          let gotPid
          const pidP = new Promise((r) => (gotPid = r))
          let release
          const released = new Promise((r) => (release = r))
          let callbackRuns = 0
          const stage = service.workStage(
            key,
            async (tx) => {
              callbackRuns++
              await tx.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'reserve'])
              const [{ pid }] = await tx.query('SELECT pg_backend_pid() AS pid')
              gotPid(pid)
              if (mode === 'statement') await tx.query('SELECT pg_sleep(10)')
              else {
                await released
                if (mode === 'query-after') await tx.query('SELECT 1')
              }
              return { recovery_point: 'stock_reserved' }
            },
            { recoveryPoint: 'started' },
          )
          const settled = stage.then(
            (v) => ({ ok: true, v }),
            (e) => ({ ok: false, e }),
          )
          const pid = await withTimeout(pidP, 5000, 'the stage callback reaching its write')
          await sleep(50)
          const t0 = now()
          const { rows } = await fx.pg.query('SELECT pg_terminate_backend($1) AS t', [pid])
          assert.equal(rows[0].t, true, `pg_terminate_backend(${pid})`)
          terminated++
          if (mode !== 'statement') {
            // Let the server finish the backend before the callback goes on.
            while ((await poolBackends(fx.pg)).some((b) => b.pid === pid)) await sleep(10)
            release()
          }
          const r = await withTimeout(settled, 15000, `the stage whose backend was terminated (${mode})`)
          stageRejectMs.push(now() - t0)
          assert.equal(r.ok, false, 'the stage must reject, it resolved')
          assertDbError(r.e, TERMINATED, 'the stage whose backend was terminated')
          rejectCodes[r.e.code] = (rejectCodes[r.e.code] ?? 0) + 1
          assert.equal(callbackRuns, 1, 'a terminated stage is not re-run')

          // The write is absent, the key as before the stage, the lease released.
          const side = await fx.pg.query('SELECT count(*)::int AS n FROM side WHERE k = $1', [key])
          assert.equal(side.rows[0].n, 0, "the callback's write is absent")
          const { rows: kr } = await fx.pg.query('SELECT recovery_point, locked_at FROM idempotency_key WHERE idempotency_key = $1', [key])
          assert.equal(kr[0].recovery_point, 'started', 'recovery point unchanged')
          assert.equal(kr[0].locked_at, null, 'a stage that failed after its callback ran released the lease')
          assert.ok(!(await poolBackends(fx.pg)).some((b) => b.pid === pid), 'the terminated backend is gone')

          // The next request (the client's retry, same key) succeeds at its first attempt.
          const k = await routeAttempt(service, key)
          assertStoredResponse(k, key, 'the retry after the termination')
          await assertExactlyOnce(fx.pg, [key], { onlyKeys: true })
          // And the pool is whole: 2 × pool concurrent requests all succeed.
          const burst = Array.from({ length: 2 * POOL }, (_, i) => `${key}-next-${i}`)
          const results = await Promise.allSettled(burst.map((b) => routeRequest(service, b, { maxAttempts: 20 })))
          const failed = results.filter((x) => x.status === 'rejected' || !x.value.ok)
          assert.equal(failed.length, 0, `requests after the termination failed: ${failed.map((x) => describe(x.reason ?? x.value.error)).join('; ')}`)
          await assertExactlyOnce(fx.pg, [key, ...burst], { onlyKeys: true })
          const backends = await poolBackends(fx.pg)
          assert.ok(backends.length <= POOL, `at most ${POOL} backends, saw ${backends.length}`)
        })
      }
    }
    Object.assign(out, {
      stages_terminated: terminated,
      reject_codes: rejectCodes,
      stage_reject_p99_ms: percentile(stageRejectMs, 99),
    })

    // ------------------------------------------------------------------------------------
    // 2. terminate the pool's idle connections
    log(`backend-loss 2: pg_terminate_backend on the pool's idle connections`)
    const idleRounds = short ? 1 : 3
    let idleKilled = 0
    const idleFailures = []
    for (let round = 0; round < idleRounds; round++) {
      await check(`idle pooled connections terminated (#${round + 1}): the next requests succeed`, async () => {
        // A service of its own (a clean pool), every connection opened by POOL stages at once.
        const others = new Set((await poolBackends(fx.pg)).map((b) => b.pid))
        const s = await fx.connect({ maxConnections: POOL, lockTimeoutMs: 1000, acquireTimeoutMs: 5000, stageTimeoutMs: 20000 })
        await Promise.all(
          Array.from({ length: POOL }, (_, i) => routeRequest(s, `bl-${run}-warm-${round}-${i}`, { hooks: { inStage: () => sleep(30) } })),
        )
        const idle = (await poolBackends(fx.pg)).filter((b) => b.state === 'idle' && !others.has(b.pid))
        assert.ok(idle.length >= 1, 'the pool has idle connections')
        for (const b of idle) await fx.pg.query('SELECT pg_terminate_backend($1)', [b.pid])
        idleKilled += idle.length
        while ((await poolBackends(fx.pg)).some((b) => idle.some((x) => x.pid === b.pid))) await sleep(10)
        // Sequential requests until 3 in a row succeed (at most 4 × pool): each should succeed.
        const failures = []
        const codes = {}
        let streak = 0
        let sent = 0
        while (streak < 3 && sent < 4 * POOL) {
          const key = `bl-${run}-afteridle-${round}-${sent++}`
          try {
            const r = await routeRequest(s, key, { maxAttempts: 20 })
            if (!r.ok) throw r.error
            streak++
          } catch (e) {
            assert.ok(isTypedDbError(e) || isConflict(e), `an untyped error: ${describe(e)}`)
            streak = 0
            codes[e.code] = (codes[e.code] ?? 0) + 1
            failures.push(`request ${sent}: ${describe(e)}`)
          }
        }
        idleFailures.push(...failures)
        await s.close()
        assert.ok(
          failures.length === 0,
          `${idle.length} idle pooled connection(s) terminated; ${failures.length} of the next ${sent} sequential requests failed ` +
            `(${Object.entries(codes).map(([c, n]) => `${c} ×${n}`).join(', ')}; ${streak === 3 ? 'then it recovered' : 'NOT recovered'}): ${failures.join('; ')}`,
        )
      })
    }
    Object.assign(out, { idle_conns_terminated: idleKilled, requests_failed_after_idle_kill: idleFailures.length })

    // ------------------------------------------------------------------------------------
    // 3. PostgreSQL stopped and started under light load
    if (short) {
      log('backend-loss 3: SKIPPED with --short (PostgreSQL stop/start)')
      out.pg_restart = 'skipped (--short)'
    } else {
      log('backend-loss 3: PostgreSQL stopped for ~1.5 s (plus the stop and start themselves) and started again under light load (4 clients)')
      await check('PostgreSQL stopped and started under light load', async () => {
        const s = await fx.connect({ maxConnections: 4, lockTimeoutMs: 300, acquireTimeoutMs: 2000, stageTimeoutMs: 20000 })
        const keys = new Set()
        const errors = { down: {}, up: {} }
        const untyped = []
        let phase = 'before'
        let okBefore = 0
        let okAfter = 0
        let upAt = null
        let firstOkAfterUp = null
        let stop = false
        let seq = 0
        const worker = async (w) => {
          while (!stop) {
            const key = `bl-${run}-light-${w}-${seq++}`
            keys.add(key)
            const started = now()
            const startedPhase = phase
            try {
              const r = await routeRequest(s, key, { maxAttempts: 5 })
              if (r.ok && startedPhase === 'before') okBefore++
              if (r.ok && startedPhase === 'up') {
                okAfter++
                if (firstOkAfterUp === null) firstOkAfterUp = now()
              }
            } catch (e) {
              if (isTypedDbError(e) || isConflict(e)) {
                const bucket = startedPhase === 'up' && started >= upAt ? errors.up : errors.down
                bucket[e.code] = (bucket[e.code] ?? 0) + 1
              } else untyped.push(`${key} (${startedPhase}): ${describe(e)}`)
            }
            await sleep(20)
          }
        }
        const workers = Array.from({ length: 4 }, (_, w) => worker(w))
        let downMs = 0
        try {
          await sleep(1500)
          phase = 'down'
          const tStop = now()
          stopped = true
          pgStop()
          try {
            await sleep(1500)
          } finally {
            pgStart()
            stopped = false
            downMs = now() - tStop
            upAt = now()
            phase = 'up'
          }
          const recoverBy = now() + 15000
          while (firstOkAfterUp === null && now() < recoverBy) await sleep(50)
          await sleep(1500)
        } finally {
          stop = true
          await withTimeout(Promise.all(workers), 30000, 'the light-load clients after the restart')
        }
        await fx.reconnect()
        Object.assign(out, {
          pg_down_ms: Math.round(downMs),
          ok_before: okBefore,
          errors_while_down: errors.down,
          errors_after_up: errors.up,
          recovered_after_ms: firstOkAfterUp === null ? null : Math.round(firstOkAfterUp - upAt),
          ok_after_up: okAfter,
        })
        assert.equal(untyped.length, 0, `untyped errors: ${untyped.slice(0, 5).join('; ')}`)
        assert.ok(okBefore > 0, 'requests succeeded before the stop')
        assert.ok(Object.keys(errors.down).length > 0, 'requests failed (typed) while PostgreSQL was down')
        assert.ok(firstOkAfterUp !== null, 'the service recovered by itself within 15 s of PostgreSQL being back')
        // Drive every key to finished, then exactly one row per (key, stage).
        await sweep(s, keys, { concurrency: 8 })
        out.pg_restart_keys = keys.size
        await assertExactlyOnce(fx.pg, keys, { onlyKeys: true })
      })
    }
  } finally {
    if (stopped) pgStart()
    await fx.drop()
  }
  out.violations = violations.length
  figures(out)
  if (violations.length) throw new Error(`${violations.length} violation(s):\n  ${violations.join('\n  ')}`)
  return out
}

module.exports = { main }
if (require.main === module) require('./lib/child').runScenario(__filename)
