'use strict'
// Crash: a child Node process (stress/lib/crash-child.js) walks the route and is killed with
// SIGKILL in the middle of a stage, after its callback wrote its side-effect row and before
// the stage committed: either while the transaction is idle (the callback awaits) or while a
// statement of the callback is still running on the server (pg_sleep; the orphaned backend
// keeps the row lock until it notices its client is gone).
//
// Afterwards: the callback's write is absent; the key's recovery point is the last committed
// one; listAbandoned() lists the key at that point once it has been idle; a retry (a client re-sending the request, with backoff on 409) resumes from it and
// finishes with exactly one side-effect row per stage; a further retry replays the stored
// response. Every round crashes at a different stage (reserve / charge / order).
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawn } = require('node:child_process')
const {
  freshDatabase,
  routeRequest,
  routeAttempt,
  assertStoredResponse,
  assertExactlyOnce,
  withTimeout,
  describe,
  percentile,
  figures,
  log,
  now,
  sleep,
  STAGES,
  STAGE_NAMES,
  SIDE_TABLE_SQL,
} = require('./lib/common')

const CHILD = path.join(__dirname, 'lib', 'crash-child.js')

/** Spawn the child, wait for its WROTE line; resolves { child, pid (backend), exited }. */
function startChild(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, JSON.stringify(args)], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`crash child did not reach its stage within 20 s; stdout: ${out} stderr: ${err}`))
    }, 20000)
    child.stderr.on('data', (d) => (err += d))
    child.stdout.on('data', (d) => {
      out += d
      const m = /WROTE (\{.*\})\n/.exec(out)
      if (m) {
        clearTimeout(timer)
        resolve({ child, pid: JSON.parse(m[1]).pid, exited })
      } else if (/CHILD ERROR|FINISHED/.test(out)) {
        clearTimeout(timer)
        reject(new Error(`crash child: ${out.trim()} ${err.trim()}`))
      }
    })
    exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`crash child exited early (code ${code}, signal ${signal}); stdout: ${out} stderr: ${err}`))
    })
  })
}

async function backendState(pg, pid) {
  const { rows } = await pg.query('SELECT state FROM pg_stat_activity WHERE pid = $1', [pid])
  return rows.length ? rows[0].state : null
}

async function sideRows(pg, key) {
  const { rows } = await pg.query('SELECT stage FROM side WHERE k = $1 ORDER BY at', [key])
  return rows.map((r) => r.stage)
}

async function main({ short = false } = {}) {
  const plan = []
  const modes = ['idle', 'statement']
  const reps = short ? 1 : 2
  for (let rep = 0; rep < reps; rep++) {
    for (const [i, s] of STAGES.entries()) {
      plan.push({ crashStage: s.stage, mode: short ? modes[i % 2] : modes[rep % 2] })
      if (!short) plan.push({ crashStage: s.stage, mode: modes[(rep + 1) % 2] })
    }
  }
  const sleepSeconds = short ? 1 : 2
  const lockTimeoutMs = 300
  log(`crash: ${plan.length} SIGKILLs mid-stage (${plan.map((p) => `${p.crashStage}/${p.mode}`).join(', ')}), lease ${lockTimeoutMs} ms`)

  const fx = await freshDatabase({ setupSql: [SIDE_TABLE_SQL] })
  const children = [] // killed in the finally block whatever happens
  try {
    const service = await fx.connect({ maxConnections: 4, lockTimeoutMs, acquireTimeoutMs: 10000, stageTimeoutMs: 20000 })
    const run = Math.random().toString(36).slice(2, 8)
    const keys = []
    const recoveryMs = []
    const goneMs = []
    let retryConflicts = 0
    let abandonedListed = 0

    for (const [i, p] of plan.entries()) {
      const key = `crash-${run}-${i}-${p.crashStage}-${p.mode}`
      keys.push(key)
      const idx = STAGE_NAMES.indexOf(p.crashStage)
      const committedBefore = STAGE_NAMES.slice(0, idx)
      const expectedPoint = STAGES[idx].at

      const { child, pid, exited } = await startChild({ url: fx.url, key, crashStage: p.crashStage, mode: p.mode, sleepSeconds })
      children.push(child)
      // The child is inside the stage: its write exists only in its open transaction.
      // (In 'statement' mode the child reports before its pg_sleep reaches the server: wait.)
      const wanted = p.mode === 'idle' ? 'idle in transaction' : 'active'
      let state
      for (const t = now(); (state = await backendState(fx.pg, pid)) !== wanted && now() - t < 5000; ) await sleep(10)
      assert.equal(state, wanted, `${key}: the child's backend ${pid} state`)
      child.kill('SIGKILL')
      const tKill = now()
      const { signal } = await withTimeout(exited, 10000, `exit of the SIGKILLed child`)
      assert.equal(signal, 'SIGKILL', `${key}: child died of SIGKILL`)

      // Right after the crash: the write is absent, the key sits at the last committed point.
      assert.deepEqual(await sideRows(fx.pg, key), committedBefore, `${key}: after the crash only the committed stages' rows exist`)
      const { rows } = await fx.pg.query('SELECT recovery_point FROM idempotency_key WHERE idempotency_key = $1', [key])
      assert.equal(rows.length, 1, `${key}: one key row`)
      assert.equal(rows[0].recovery_point, expectedPoint, `${key}: recovery point is the last committed one`)

      // The crashed request is abandoned: once it has made no progress for the idle time,
      // listAbandoned() reports it at its last committed recovery point (what a completer
      // would drive forward), while the orphaned backend may still hold its row lock.
      const idleMs = 200
      await sleep(idleMs + 50)
      const abandoned = await withTimeout(service.listAbandoned({ idleMs, limit: 1000 }), 10000, 'listAbandoned')
      const listed = abandoned.find((k) => k.idempotency_key === key)
      assert.ok(listed, `${key}: listAbandoned({ idleMs: ${idleMs} }) after the crash does not list it`)
      assert.equal(listed.recovery_point, expectedPoint, `${key}: listed at the last committed recovery point`)
      abandonedListed++

      // A retry resumes from there and finishes exactly once (409 while the orphaned backend
      // still holds the row, or while the crashed request's lease is fresh).
      const walked = []
      const r = await withTimeout(
        routeRequest(service, key, {
          maxAttempts: 2000,
          backoffMs: [20, 50],
          deadline: now() + 30000,
          hooks: { inStage: async (stage) => walked.push(stage) },
          onConflict: () => retryConflicts++,
        }),
        40000,
        `retry of ${key}`,
      )
      assert.ok(r.ok, `${key}: retry still refused after 30 s: ${r.ok ? '' : describe(r.error)}`)
      recoveryMs.push(now() - tKill)
      assertStoredResponse(r.key, key)
      assert.deepEqual(walked, STAGE_NAMES.slice(idx), `${key}: the retry resumed at ${p.crashStage}`)
      assert.deepEqual((await sideRows(fx.pg, key)).sort(), [...STAGE_NAMES].sort(), `${key}: every stage exactly once`)

      // The orphaned backend is gone (its transaction rolled back, not committed late).
      const tGone = now()
      while ((await backendState(fx.pg, pid)) !== null) {
        assert.ok(now() - tGone < 15000, `${key}: the killed child's backend ${pid} still exists 15 s after the retry finished`)
        await sleep(20)
      }
      goneMs.push(now() - tKill)
      const after = await service.listAbandoned({ idleMs: 0, limit: 1000 })
      assert.ok(!after.some((k) => k.idempotency_key === key), `${key}: still listed as abandoned after it finished`)

      // A later retry replays the stored response without running a stage.
      let ran = 0
      const replay = await routeAttempt(service, key, { inStage: async () => ran++ })
      assertStoredResponse(replay, key, `replay of ${key}`)
      assert.equal(ran, 0, `${key}: a replay runs no stage`)
      log(`  ${key}: killed at ${p.crashStage}/${p.mode}, resumed from ${expectedPoint}, finished in ${Math.round(now() - tKill)} ms`)
    }

    // Nothing moved afterwards: every key still has exactly one row per stage.
    const rowsChecked = await assertExactlyOnce(fx.pg, keys)
    const out = {
      scenario: 'crash',
      crashes_survived: plan.length,
      resumed_exactly_once: keys.length,
      listed_abandoned: abandonedListed,
      side_rows: rowsChecked,
      retry_conflicts: retryConflicts,
      recovery_p50_ms: percentile(recoveryMs, 50),
      recovery_max_ms: percentile(recoveryMs, 100),
      backend_gone_max_ms: percentile(goneMs, 100),
    }
    figures(out)
    return out
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
    await fx.drop()
  }
}

module.exports = { main }
if (require.main === module) require('./lib/child').runScenario(__filename)
