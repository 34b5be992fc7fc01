'use strict'
// One of the processes of stress/multiprocess.js: its own service (own pool) on `url` (the
// database directly, or PgBouncer in front of it), `clients` concurrent clients, each sending
// `requests` route-style requests for keys picked at random from the key set every process
// shares. A request is re-sent after a short backoff while the answer is a typed conflict (409:
// LOCKED, STALE, 40001, 40P01), until it ends with the stored response.
//
//   node stress/lib/multiprocess-worker.js '{"url":…,"prefix":…,"keys":…,"clients":…,"requests":…,…}'
//
// Prints `READY {}` once connected, waits for a line on stdin (the start signal, so that all
// processes start together), then prints `RESULT {json}` and exits 0; `ERROR {json}` and exit 2
// if it could not run at all. Every stage inserts (key, stage, pid) into `side`; the last stage
// finishes the key with a response that names the process and client that finished it and a
// random nonce, so "every request got the same response" checks replays, not a recomputation.
const fs = require('node:fs')
const { IdempotencyKeyService } = require('../..')
const { STAGES, METHOD, PATH, paramsFor, isConflict, describe, now, sleep } = require('./common')

const cfg = require.main === module ? JSON.parse(process.argv[2]) : null
const out = (tag, o) => fs.writeSync(1, `${tag} ${JSON.stringify(o)}\n`)

/** JSON with object keys sorted (jsonb and the addon may order keys differently). */
const canonical = (v) => JSON.stringify(v, (_, x) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x))
/** One attempt of the route; resolves the finished key or rejects with the service's error. */
async function attempt(service, key, who) {
  let k = await service.initializeRequest(key, METHOD, paramsFor(key), PATH).catch((e) => {
    throw tag(e, 'initializeRequest')
  })
  while (k.recovery_point !== 'finished') {
    const step = STAGES.find((s) => s.at === k.recovery_point)
    if (!step) throw new Error(`unknown recovery point ${k.recovery_point} for ${key}`)
    k = await service.workStage(
      key,
      async (tx) => {
        await tx.query('INSERT INTO side (k, stage, pid) VALUES ($1, $2, $3)', [key, step.stage, process.pid])
        if (Math.random() < 0.2) await sleep(Math.random() * 3) // widen the write → commit window now and then
        if (step.next) return { recovery_point: step.next }
        return {
          response_code: 201,
          response_body: { order_id: `order_${key}`, finished_by: who, nonce: Math.random().toString(36).slice(2, 12) },
        }
      },
      { recoveryPoint: step.at },
    ).catch((e) => {
      throw tag(e, 'workStage')
    })
  }
  return k
}

/** Remember which call an error came from (for the conflict figures), keeping the error. */
function tag(e, op) {
  if (e instanceof Error) Object.defineProperty(e, 'op', { value: op, enumerable: false })
  return e
}

async function main() {
  const service = await IdempotencyKeyService.connect({
    url: cfg.url,
    maxConnections: cfg.pool,
    lockTimeoutMs: cfg.lockTimeoutMs,
    acquireTimeoutMs: 20000,
    stageTimeoutMs: 20000,
  })
  out('READY', {})
  await new Promise((resolve) => process.stdin.once('data', resolve))
  process.stdin.pause()

  const deadline = now() + cfg.seconds * 1000
  const latencies = [] // per request, backoffs included (ms)
  const conflictCodes = {} // 'initializeRequest:IDEMPOTENCY_KEY_LOCKED' → count
  const unexpected = [] // anything but the stored response or a typed conflict
  const unfinished = [] // still refused at the deadline
  const bodies = {} // key → distinct response bodies (JSON) this process's requests ended with
  let requests = 0
  let completed = 0
  let attempts = 0
  let replays = 0

  async function request(key, who) {
    const t0 = now()
    requests++
    for (let n = 1; ; n++) {
      attempts++
      try {
        const k = await attempt(service, key, who)
        if (k.response_code !== 201) throw new Error(`${key}: response_code ${k.response_code}`)
        const body = canonical(k.response_body)
        ;(bodies[key] ??= []).includes(body) || bodies[key].push(body)
        if (k.response_body.finished_by !== who) replays++
        completed++
        break
      } catch (e) {
        if (!isConflict(e)) {
          if (unexpected.length < 20) unexpected.push(`${key}: ${describe(e)}`)
          else unexpected.push('')
          break
        }
        const c = `${e.op ?? '?'}:${e.code}`
        conflictCodes[c] = (conflictCodes[c] ?? 0) + 1
        if (now() > deadline) {
          unfinished.push(`${key}: still ${e.code} after ${n} attempts at the deadline`)
          break
        }
        await sleep(cfg.backoffMs[0] + Math.random() * (cfg.backoffMs[1] - cfg.backoffMs[0]))
      }
    }
    latencies.push(Math.round((now() - t0) * 10) / 10)
  }

  const started = now()
  await Promise.all(
    Array.from({ length: cfg.clients }, async (_, c) => {
      for (let i = 0; i < cfg.requests; i++) {
        await request(`${cfg.prefix}-${Math.floor(Math.random() * cfg.keys)}`, `${process.pid}/${c}`)
      }
    }),
  )
  const seconds = (now() - started) / 1000
  await service.close()
  out('RESULT', {
    pid: process.pid,
    requests,
    completed,
    attempts,
    replays,
    conflictCodes,
    unexpected: unexpected.length,
    unexpectedSample: unexpected.filter(Boolean),
    unfinished,
    bodies,
    latencies,
    seconds,
  })
  process.exit(0)
}

module.exports = { canonical }
if (require.main === module) {
  main().catch((e) => {
    out('ERROR', { error: describe(e), stack: String(e && e.stack) })
    process.exit(2)
  })
}
