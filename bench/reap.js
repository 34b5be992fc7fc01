#!/usr/bin/env node
'use strict'
// reap() at scale on PostgreSQL: a fresh database with N keys (default 1,000,000), a share of
// them (default 30%) past the 24 h retention, then one reap() while stages keep running on
// fresh keys. Prints how many keys went, how long the reap took, what a batch costs, the
// plan of one batch (it must use the created_at index), and the stage latency during the reap
// against the same stages without it. The debug build of the root addon unless a release
// build is there (npm run build).
//
//   node bench/reap.js [--rows=1000000] [--expired=0.3] [--batch=1000]
const { performance } = require('node:perf_hooks')
const { Client } = require('pg')
const { IdempotencyKeyService } = require('..')

const argv = process.argv.slice(2)
const opt = (name, dflt) => {
  const a = argv.find((x) => x.startsWith(`--${name}=`))
  return a ? Number(a.slice(name.length + 3)) : dflt
}
const ROWS = opt('rows', 1_000_000)
const EXPIRED = opt('expired', 0.3)
const BATCH = opt('batch', 1000)
const ADMIN_URL = process.env.TEST_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres'

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN
}
const ms = (x) => `${x.toFixed(1)} ms`

async function stagesWhile(service, busy) {
  const lat = []
  lat.conflicts = 0
  let i = 0
  const worker = async () => {
    while (!busy.done) {
      const t = performance.now()
      try {
        const k = await service.initializeRequest(`live-${process.pid}-${i++}`, 'POST', { i }, '/live')
        await service.workStage(k.idempotency_key, async (tx) => {
          await tx.query('SELECT 1')
          return { response_code: 200, response_body: { ok: true } }
        })
        lat.push(performance.now() - t)
      } catch (e) {
        if (e.type !== 'conflict') throw e
        lat.conflicts++ // a 40001 left after the stage's own retries: a client would retry (409)
      }
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()])
  return lat
}

async function main() {
  const name = `idem_reap_${process.pid}_${Date.now()}`
  const admin = new Client({ connectionString: ADMIN_URL })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  const url = new URL(ADMIN_URL)
  url.pathname = `/${name}`
  const pg = new Client({ connectionString: url.toString() })
  let service
  try {
    await pg.connect()
    service = await IdempotencyKeyService.connect({ url: url.toString(), maxConnections: 8 })
    await service.migrate()
    const old = Math.round(ROWS * EXPIRED)
    let t = performance.now()
    await pg.query(
      `INSERT INTO idempotency_key (id, idempotency_key, created_at, recovery_point, response_code, response_body, request_method, request_path)
       SELECT 'ikey_' || g, 'k-' || g,
              CASE WHEN g <= $2 THEN now() - interval '30 hours' - g * interval '1 millisecond'
                   ELSE now() - g * interval '10 milliseconds' END,
              'finished', 200, '{"ok":true}', 'POST', '/seed'
       FROM generate_series(1, $1::int) g`,
      [ROWS, old],
    )
    await pg.query('ANALYZE idempotency_key')
    console.log(`seeded ${ROWS.toLocaleString()} keys (${old.toLocaleString()} past 24 h) in ${((performance.now() - t) / 1000).toFixed(1)} s`)

    const { rows: plan } = await pg.query(
      `EXPLAIN SELECT id FROM idempotency_key WHERE created_at < clock_timestamp() - interval '24 hours'
       AND (locked_at IS NULL OR locked_at <= clock_timestamp() - interval '1 second')
       ORDER BY created_at LIMIT ${BATCH} FOR UPDATE SKIP LOCKED`,
    )
    const planText = plan.map((r) => r['QUERY PLAN']).join('\n  ')
    console.log(`plan of one batch:\n  ${planText}`)
    const usesIndex = /Index Scan using idx_idempotency_key_created_at|Index Scan.*created_at/i.test(planText)

    // A few unfinished keys among them, idle for hours: what listAbandoned() has to find.
    await pg.query(`UPDATE idempotency_key SET recovery_point = 'started', response_code = NULL WHERE id IN ('ikey_${old + 7}', 'ikey_${old + 70000}', 'ikey_${ROWS}')`)
    t = performance.now()
    const abandoned = await service.listAbandoned({ idleMs: 60_000, limit: 100 })
    const listMs = performance.now() - t
    console.log(`listAbandoned({ idleMs: 60000 }) over ${ROWS.toLocaleString()} keys: ${abandoned.length} found in ${ms(listMs)}`)

    const baseline = { done: false }
    setTimeout(() => (baseline.done = true), 3000)
    const before = await stagesWhile(service, baseline)

    const during = { done: false }
    const live = stagesWhile(service, during)
    t = performance.now()
    const removed = await service.reap({ batchSize: BATCH })
    const reapMs = performance.now() - t
    during.done = true
    const lat = await live
    const { rows: left } = await pg.query('SELECT count(*)::int AS n FROM idempotency_key')
    console.log(`reap removed ${removed.toLocaleString()} keys in ${(reapMs / 1000).toFixed(2)} s (${Math.ceil(removed / BATCH)} batches of ${BATCH}, ${ms(reapMs / Math.max(1, Math.ceil(removed / BATCH)))} each); ${left[0].n.toLocaleString()} keys left`)
    console.log(`stage cycle (initializeRequest + workStage), 4 workers: without reap p50 ${ms(pct(before, 50))} p99 ${ms(pct(before, 99))} (${before.length} cycles, ${before.conflicts} conflicts); during reap p50 ${ms(pct(lat, 50))} p99 ${ms(pct(lat, 99))} (${lat.length} cycles, ${lat.conflicts} conflicts)`)
    const ok = removed === old && usesIndex && abandoned.length === 3
    console.log(ok ? 'OK: every expired key removed, the batch uses the created_at index' : `NOT OK: removed ${removed} of ${old}, index used: ${usesIndex}`)
    process.exitCode = ok ? 0 : 1
  } finally {
    if (service) await service.close()
    await pg.end().catch(() => {})
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin.end()
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
