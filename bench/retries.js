#!/usr/bin/env node
'use strict'
// Stage re-runs under load: full route cycles (initializeRequest + 3 stages, each inserting a
// side row) at concurrency 16 and 64 on one fresh database, SERIALIZABLE (the default), pool
// of `--pool` (default 10). Counts the stages re-run after 40001 / 40P01 (a second call of the
// callback) and the requests that still failed with them once maxRetries (3) were spent.
//
//   node bench/retries.js [--cycles=2000] [--pool=10] [--admin-url=postgres://…/postgres]
const path = require('node:path')
const { Client } = require(path.join(__dirname, '..', 'node_modules', 'pg'))
const { IdempotencyKeyService } = require('..')

const opt = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`))
  return a ? a.slice(name.length + 3) : dflt
}
const CYCLES = Number(opt('cycles', 2000))
const POOL = Number(opt('pool', 10))
const ADMIN = opt('admin-url', process.env.BENCH_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres')

async function admin(sql) {
  const c = new Client({ connectionString: ADMIN })
  await c.connect()
  try {
    return await c.query(sql)
  } finally {
    await c.end()
  }
}

async function run(concurrency) {
  const name = `idem_retries_${process.pid}_${concurrency}`
  await admin(`CREATE DATABASE ${name}`)
  const url = new URL(ADMIN)
  url.pathname = `/${name}`
  const service = await IdempotencyKeyService.connect({ url: url.toString(), maxConnections: POOL })
  try {
    await service.migrate()
    const setup = new Client({ connectionString: url.toString() })
    await setup.connect()
    await setup.query('CREATE TABLE side (k text, stage text)')
    await setup.end()
    let reruns = 0
    let exhausted = 0
    let other = 0
    let next = 0
    const t0 = Date.now()
    const stage = (key, name, result) => {
      let calls = 0
      return service.workStage(key, async (tx) => {
        if (++calls > 1) reruns++
        await tx.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, name])
        return result
      })
    }
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < CYCLES) {
          const key = `r-${next++}`
          try {
            const k = await service.initializeRequest(key, 'POST', { cart: key }, '/checkout')
            await stage(k.idempotency_key, 'reserve', { recovery_point: 'reserved' })
            await stage(k.idempotency_key, 'charge', { recovery_point: 'charged' })
            await stage(k.idempotency_key, 'order', { response_code: 201, response_body: { ok: true } })
          } catch (e) {
            if (['40001', '40P01'].includes(e.code)) exhausted++
            else other++
          }
        }
      }),
    )
    const seconds = (Date.now() - t0) / 1000
    return { concurrency, cycles: CYCLES, stages: CYCLES * 3, reruns, exhausted, other, cyclesPerSecond: Math.round(CYCLES / seconds) }
  } finally {
    await service.close()
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  }
}

;(async () => {
  for (const c of [16, 64]) console.log(JSON.stringify(await run(c)))
})().catch((e) => {
  console.error(e)
  process.exit(1)
})
