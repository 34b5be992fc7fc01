'use strict'
// Pool exhaustion: more concurrent stages than connections, with callbacks that hold their
// connection.
//
// 1. Held: `maxConnections` stages write and then hold their transaction open; further stages
//    (and an initializeRequest, a retrieve) wait up to `acquireTimeoutMs` and then reject with
//    database_error / POOL_TIMEOUT and a clear message, without running their callbacks; the
//    holders then commit normally and the pool serves the next requests.
// 2. Stuck: the holders' callbacks never settle; `stageTimeoutMs` rolls them back
//    (unexpected_state / STAGE_TIMEOUT, their writes absent) and the callers waiting for a
//    connection (acquire timeout longer than the stage timeout) get one and succeed.
// 3. Route flow: many concurrent requests whose stages hold their connection a while, on a
//    small pool with a short acquire timeout: every request ends with the stored response, a
//    typed conflict or POOL_TIMEOUT, each POOL_TIMEOUT within the acquire timeout (+ slack);
//    afterwards the pool works and every key ends with exactly one row per stage.
// Nothing may hang: every wait is bounded by withTimeout.
const assert = require('node:assert/strict')
const {
  freshDatabase,
  routeRequest,
  assertStoredResponse,
  assertExactlyOnce,
  sweep,
  withTimeout,
  isTypedDbError,
  assertDbError,
  describe,
  percentile,
  figures,
  log,
  now,
  sleep,
  SIDE_TABLE_SQL,
  METHOD,
  PATH,
  paramsFor,
} = require('./lib/common')

/** A full garbage collection, with or without node --expose-gc. */
const gc =
  global.gc ||
  (() => {
    require('node:v8').setFlagsFromString('--expose-gc')
    return require('node:vm').runInNewContext('gc')
  })()

const SLACK_MS = 1500 // how late past acquireTimeoutMs a POOL_TIMEOUT may arrive on a busy machine

const settle = (p) =>
  p.then(
    (v) => ({ ok: true, v }),
    (e) => ({ ok: false, e }),
  )

async function main({ short = false } = {}) {
  const POOL = 3
  const rounds = short ? 1 : 3
  const out = { scenario: 'pool', pool: POOL }
  const waits = [] // ms from call to POOL_TIMEOUT
  let poolTimeouts = 0
  let beyondPool = 0
  let stageTimeouts = 0
  let holdersCommitted = 0
  let waitersServed = 0

  const violations = []
  const check = async (name, fn) => {
    try {
      await fn()
    } catch (e) {
      violations.push(`${name}: ${e.message}`)
      log(`  VIOLATION: ${name}: ${e.message}`)
    }
  }

  const fx = await freshDatabase({ setupSql: [SIDE_TABLE_SQL] })
  try {
    const run = Math.random().toString(36).slice(2, 8)
    const sideCount = async (k) => (await fx.pg.query('SELECT count(*)::int AS n FROM side WHERE k = $1', [k])).rows[0].n

    // --------------------------------------------------------------------------------------
    // 1. held connections → POOL_TIMEOUT for the callers beyond the pool
    const ACQUIRE = short ? 300 : 500
    const held = await fx.connect({ maxConnections: POOL, acquireTimeoutMs: ACQUIRE, stageTimeoutMs: 30000, lockTimeoutMs: 300 })
    log(`pool 1: ${POOL} connections held by stages, ${POOL + 5} more callers, acquireTimeoutMs ${ACQUIRE}, × ${rounds}`)
    for (let round = 0; round < rounds; round++) {
      const hk = Array.from({ length: POOL }, (_, i) => `pool-${run}-hold-${round}-${i}`)
      const xk = Array.from({ length: POOL + 3 }, (_, i) => `pool-${run}-extra-${round}-${i}`)
      for (const k of [...hk, ...xk]) await held.initializeRequest(k, METHOD, paramsFor(k), PATH)
      let entered = 0
      let allIn
      const allEntered = new Promise((r) => (allIn = r))
      let release
      const released = new Promise((r) => (release = r))
      const holders = hk.map((k) =>
        settle(
          held.workStage(
            k,
            async (tx) => {
              await tx.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [k, 'reserve'])
              if (++entered === POOL) allIn()
              await released
              return { recovery_point: 'stock_reserved' }
            },
            { recoveryPoint: 'started' },
          ),
        ),
      )
      await withTimeout(allEntered, 5000, `${POOL} holder stages entering their callbacks`)

      let extraRuns = 0
      const t0 = now()
      const timed = (p) => settle(p).then((r) => ({ ...r, ms: now() - t0 }))
      const extras = [
        ...xk.map((k) =>
          timed(
            held.workStage(
              k,
              async () => {
                extraRuns++
                return { recovery_point: 'stock_reserved' }
              },
              { recoveryPoint: 'started' },
            ),
          ),
        ),
        timed(held.initializeRequest(`pool-${run}-init-${round}`, METHOD, {}, PATH)),
        timed(held.retrieve(hk[0])),
      ]
      beyondPool += extras.length
      const results = await withTimeout(Promise.all(extras), ACQUIRE + SLACK_MS + 5000, 'callers beyond the pool')
      for (const r of results) {
        assert.equal(r.ok, false, 'a caller beyond the pool must not get a connection while all are held')
        assertDbError(r.e, ['POOL_TIMEOUT'], 'a caller beyond the pool')
        assert.match(r.e.message, /pool|connection/i, `a clear message, got "${r.e.message}"`)
        assert.ok(r.ms >= ACQUIRE - 50, `waited ${Math.round(r.ms)} ms, at least acquireTimeoutMs ${ACQUIRE}`)
        assert.ok(r.ms <= ACQUIRE + SLACK_MS, `waited ${Math.round(r.ms)} ms, not much more than acquireTimeoutMs ${ACQUIRE}`)
        waits.push(r.ms)
        poolTimeouts++
      }
      assert.equal(extraRuns, 0, 'no callback of a stage that got no connection ran')
      for (const k of xk) assert.equal(await sideCount(k), 0)

      // The holders were untouched by all that: they commit.
      release()
      const done = await withTimeout(Promise.all(holders), 10000, 'holder stages after release')
      for (const [i, r] of done.entries()) {
        assert.ok(r.ok, `holder ${hk[i]} committed: ${r.ok ? '' : describe(r.e)}`)
        assert.equal(r.v.recovery_point, 'stock_reserved')
        holdersCommitted++
      }
      // And the pool serves everyone again: every key of this round is finished exactly once.
      const next = await withTimeout(
        Promise.all([...hk, ...xk].map((k) => routeRequest(held, k, { maxAttempts: 100, backoffMs: [10, 30] }))),
        30000,
        'requests after the pool was released',
      )
      for (const [i, r] of next.entries()) assert.ok(r.ok, `request ${i} after release: ${r.ok ? '' : describe(r.error)}`)
      await assertExactlyOnce(fx.pg, [...hk, ...xk], { onlyKeys: true })
    }

    // --------------------------------------------------------------------------------------
    // 2. stuck callbacks → STAGE_TIMEOUT frees the connections; the waiters get them. Two
    //    variants: the never-settling promise is still referenced (a callback awaiting an
    //    operation that hangs), or nothing references it any more and V8 collects it (a
    //    callback awaiting an event nobody will emit): the contract is the same.
    const STAGE_TIMEOUT = 600
    const stuck = await fx.connect({ maxConnections: POOL, acquireTimeoutMs: 5000, stageTimeoutMs: STAGE_TIMEOUT, lockTimeoutMs: 1000 })
    log(`pool 2: ${POOL} stages that never settle (stageTimeoutMs ${STAGE_TIMEOUT}; promise kept / garbage-collected), ${POOL * 2} callers waiting (acquireTimeoutMs 5000), × ${rounds}`)
    const keep = []
    for (let round = 0; round < rounds; round++) {
      for (const variant of ['kept', 'collected']) {
        await check(`never-settling stages (${variant}, #${round + 1}) end with STAGE_TIMEOUT and free their connections`, async () => {
          const sk = Array.from({ length: POOL }, (_, i) => `pool-${run}-stuck-${variant}-${round}-${i}`)
          const wk = Array.from({ length: POOL * 2 }, (_, i) => `pool-${run}-wait-${variant}-${round}-${i}`)
          for (const k of [...sk, ...wk]) await stuck.initializeRequest(k, METHOD, paramsFor(k), PATH)
          let entered = 0
          let allIn
          const allEntered = new Promise((r) => (allIn = r))
          const t0 = now()
          const stuckStages = sk.map((k) =>
            settle(
              stuck.workStage(
                k,
                async (tx) => {
                  await tx.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [k, 'reserve'])
                  if (++entered === POOL) allIn()
                  const hang = new Promise(() => {}) // never settles
                  if (variant === 'kept') keep.push(hang)
                  return hang
                },
                { recoveryPoint: 'started' },
              ),
            ),
          )
          await withTimeout(allEntered, 5000, 'stuck stages entering their callbacks')
          const waiters = wk.map((k) => settle(routeRequest(stuck, k, { maxAttempts: 100, backoffMs: [10, 30] })))
          beyondPool += waiters.length
          if (variant === 'collected') {
            await sleep(50)
            gc()
          }
          const stuckResults = await withTimeout(Promise.all(stuckStages), STAGE_TIMEOUT + 10000, 'stages that never settle')
          const stuckMs = now() - t0
          const waited = await withTimeout(Promise.all(waiters), 30000, 'callers waiting for a connection')
          for (const r of stuckResults) assert.equal(r.ok, false, 'a stage that never settles must not succeed')
          assert.ok(stuckMs < STAGE_TIMEOUT + SLACK_MS + 1000, `the never-settling stages ended after ${Math.round(stuckMs)} ms`)
          for (const k of sk) assert.equal(await sideCount(k), 0, `${k}: the timed-out stage's write is absent`)
          for (const [i, r] of waited.entries()) {
            assert.ok(r.ok && r.v.ok, `waiter ${wk[i]} served after the stage timeout: ${r.ok ? describe(r.v.error) : describe(r.e)}`)
            assertStoredResponse(r.v.key, wk[i])
            waitersServed++
          }
          // The timed-out keys resume and finish.
          for (const k of sk) {
            const r = await routeRequest(stuck, k, { maxAttempts: 200, backoffMs: [10, 30] })
            assert.ok(r.ok, `${k} after its stage timed out: ${r.ok ? '' : describe(r.error)}`)
          }
          await assertExactlyOnce(fx.pg, [...sk, ...wk], { onlyKeys: true })
          // (Checked last, so that the checks above still run when this one fails.)
          for (const r of stuckResults) {
            assert.ok(
              r.e instanceof Error && r.e.type === 'unexpected_state' && r.e.code === 'STAGE_TIMEOUT',
              `a never-settling stage must reject with unexpected_state / STAGE_TIMEOUT, got ${describe(r.e)} after ${Math.round(stuckMs)} ms (its write was rolled back, the waiters were served)`,
            )
            stageTimeouts++
          }
        })
      }
    }
    keep.length = 0

    // --------------------------------------------------------------------------------------
    // 3. the route flow on an exhausted pool
    const FLOW_ACQUIRE = 400
    const N = short ? 24 : 48
    const flow = await fx.connect({ maxConnections: POOL, acquireTimeoutMs: FLOW_ACQUIRE, stageTimeoutMs: 30000, lockTimeoutMs: 300 })
    log(`pool 3: ${N} concurrent route requests, stages holding ~100 ms, pool ${POOL}, acquireTimeoutMs ${FLOW_ACQUIRE}, × ${rounds}`)
    const flowOutcomes = { ok: 0, conflict: 0, POOL_TIMEOUT: 0 }
    const flowWaits = []
    const flowConflictCodes = {}
    const flowKeys = []
    for (let round = 0; round < rounds; round++) {
      const keys = Array.from({ length: N }, (_, i) => `pool-${run}-flow-${round}-${i}`)
      flowKeys.push(...keys)
      const results = await withTimeout(
        Promise.all(
          keys.map(async (k) => {
            const t0 = now()
            try {
              // One attempt per send, as a client that gives up on 409/500 and comes back later.
              const r = await routeRequest(flow, k, { maxAttempts: 1, hooks: { inStage: () => sleep(100) } })
              if (r.ok) return 'ok'
              flowConflictCodes[r.error.code] = (flowConflictCodes[r.error.code] ?? 0) + 1
              return 'conflict'
            } catch (e) {
              if (isTypedDbError(e, ['POOL_TIMEOUT'])) {
                flowWaits.push(now() - t0)
                return 'POOL_TIMEOUT'
              }
              throw new Error(`${k}: neither a response, a conflict nor POOL_TIMEOUT: ${describe(e)}`)
            }
          }),
        ),
        60000,
        'route requests on an exhausted pool',
      )
      for (const r of results) flowOutcomes[r]++
    }
    assert.ok(flowOutcomes.POOL_TIMEOUT > 0, 'the pool was exhausted (some POOL_TIMEOUT)')
    assert.ok(flowOutcomes.ok > 0, 'some requests completed meanwhile')
    // Each POOL_TIMEOUT waited for one connection at most acquireTimeoutMs; a request makes up
    // to 4 acquisitions (initializeRequest + 3 stages), so its total is bounded by 4 of them
    // plus the stages it ran.
    const maxFlowWait = percentile(flowWaits, 100)
    assert.ok(maxFlowWait <= 4 * (FLOW_ACQUIRE + 300) + SLACK_MS, `a POOL_TIMEOUT request took ${maxFlowWait} ms`)
    // Afterwards every key finishes, exactly once.
    const sweeper = await fx.connect({ maxConnections: 8, acquireTimeoutMs: 10000, lockTimeoutMs: 300 })
    log(`pool 3: sweeping ${flowKeys.length} keys to finished`)
    await sweep(sweeper, flowKeys, { concurrency: 16 })
    await assertExactlyOnce(fx.pg, flowKeys, { onlyKeys: true })

    Object.assign(out, {
      acquire_timeout_ms: ACQUIRE,
      callers_beyond_pool: beyondPool,
      pool_timeouts: poolTimeouts,
      pool_timeout_wait_p50_ms: percentile(waits, 50),
      pool_timeout_wait_max_ms: percentile(waits, 100),
      holders_committed: holdersCommitted,
      stage_timeouts: stageTimeouts,
      waiters_served_after_stage_timeout: waitersServed,
      flow_requests: flowKeys.length,
      flow_ok: flowOutcomes.ok,
      flow_conflict: flowOutcomes.conflict,
      flow_conflict_codes: flowConflictCodes,
      flow_pool_timeout: flowOutcomes.POOL_TIMEOUT,
      flow_pool_timeout_max_ms: maxFlowWait,
      violations: violations.length,
    })
    figures(out)
    if (violations.length) throw new Error(`${violations.length} violation(s):\n  ${violations.join('\n  ')}`)
    return out
  } finally {
    await fx.drop()
  }
}

module.exports = { main }
if (require.main === module) require('./lib/child').runScenario(__filename)
