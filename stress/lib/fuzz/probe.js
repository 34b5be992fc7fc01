'use strict'
// Hostile-size inputs for stress/fuzz.js, one per child process: values that are cheap to build
// in JS but enormous once expanded (a sparse array of length 2**32-1 is a few bytes), or option
// values that size allocations. Each must end in a typed error or a correct result within the
// parent's timeout, without the process aborting or growing without bound.
//
//   node stress/lib/fuzz/probe.js '{"name": "...", "url": "...", "backend": "sqlite"|"postgres"}'
//   prints `PROBE {"name", "outcome"}` and exits 0; a crash, hang or memory blow-up is judged by
//   the parent.
const fs = require('node:fs')

const HUGE = 2 ** 32 - 1
const huge = () => new Array(HUGE)

/** name → { backends, run(service, url, IdempotencyKeyService) → promise of the outcome }. */
const PROBES = {
  'connect({ maxConnections: 2**32-1 })': {
    backends: ['sqlite', 'postgres'],
    fresh: true,
    run: (s, url, S) => S.connect({ url, maxConnections: HUGE }).then((x) => x.close().then(() => 'connected')),
  },
  'connect({ maxConnections: 2**31 })': {
    backends: ['sqlite'],
    fresh: true,
    run: (s, url, S) => S.connect({ url, maxConnections: 2 ** 31 }).then((x) => x.close().then(() => 'connected')),
  },
  'initializeRequest(key, "POST", new Array(2**32-1), "/")': {
    backends: ['sqlite', 'postgres'],
    run: (s) => s.initializeRequest('probe-init', 'POST', huge(), '/'),
  },
  'create({ request_params: new Array(2**32-1) })': {
    backends: ['sqlite'],
    run: (s) => s.create({ idempotency_key: 'probe-create', request_params: huge() }),
  },
  'update(key, { response_body: new Array(2**32-1) })': {
    backends: ['sqlite'],
    run: (s) => s.update('probe-key', { response_body: huge() }),
  },
  'retrieve({ idempotency_key: new Array(2**32-1) })': {
    backends: ['sqlite'],
    run: (s) => s.retrieve({ idempotency_key: huge() }),
  },
  'tx.query("SELECT 1", new Array(2**32-1))': {
    backends: ['sqlite', 'postgres'],
    run: (s) => s.workStage('probe-key', async (tx) => ({ recovery_point: String(await tx.query('SELECT 1', huge())) })),
  },
  'tx.query("SELECT $1 AS v", [new Array(2**32-1)])': {
    backends: ['sqlite'],
    run: (s) => s.workStage('probe-key', async (tx) => ({ recovery_point: String(await tx.query('SELECT $1 AS v', [huge()])) })),
  },
  'workStage callback returns { response_body: new Array(2**32-1) }': {
    backends: ['sqlite'],
    run: (s) => s.workStage('probe-key', async () => ({ response_body: huge() })),
  },
  'tx.query("SELECT 1 AS a\\u0000b") (a NUL byte in the SQL)': {
    backends: ['sqlite', 'postgres'],
    run: (s) => s.workStage('probe-key', async (tx) => ({ recovery_point: String(await tx.query('SELECT 1 AS a\u0000b')) })),
  },
  'withTransaction(executor) whose rows have 100k columns': {
    backends: ['sqlite', 'postgres'],
    run: (s, url, S) => {
      const row = {}
      for (let i = 0; i < 100000; i++) row[`c${i}`] = i
      const d = S.detached(async () => ({ rows: [] }))
      return d.withTransaction({ query: async () => [row] }).retrieve('probe-key')
    },
  },
}

const TYPES = new Set(['not_found', 'conflict', 'duplicate_error', 'invalid_data', 'database_error', 'unexpected_state'])

async function main() {
  const { name, url } = JSON.parse(process.argv[2])
  const probe = PROBES[name]
  const { IdempotencyKeyService } = require('./addon')
  let service = null
  if (!probe.fresh) {
    service = await IdempotencyKeyService.connect({ url, stageTimeoutMs: 30000 })
    await service.migrate()
    await service.create({ idempotency_key: 'probe-key' }).catch(() => {})
  }
  const started = Date.now()
  let outcome
  try {
    const v = await probe.run(service, url, IdempotencyKeyService)
    outcome = { ok: true, result: typeof v === 'string' ? v : 'a result' }
  } catch (e) {
    const typed = e instanceof Error && TYPES.has(e.type) && typeof e.code === 'string' && e.code !== 'INTERNAL_ERROR'
    outcome = { ok: typed, error: e instanceof Error ? `${e.type}/${e.code}: ${String(e.message).slice(0, 160)}` : `non-Error ${String(e)}` }
  }
  outcome.ms = Date.now() - started
  fs.writeSync(1, `PROBE ${JSON.stringify({ name, outcome })}\n`)
  if (service) await service.close()
  process.exit(0)
}

module.exports = { PROBES }
if (require.main === module) {
  main().catch((e) => {
    fs.writeSync(1, `PROBE ${JSON.stringify({ setupFailed: String(e && e.stack) })}\n`)
    process.exit(2)
  })
}
