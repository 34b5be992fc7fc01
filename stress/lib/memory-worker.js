'use strict'
// The child of stress/memory.js (run with --expose-gc): `n` empty work stages, one after the
// other, on one key; RSS sampled (after two full GCs) once `warmup` stages are done, every
// `every` stages, and at the end. Prints `MEM {json}` lines; nothing on stderr.
//
//   node --expose-gc stress/lib/memory-worker.js '{"url":"sqlite::memory:","n":100000,"warmup":10000,"every":10000}'
const fs = require('node:fs')
const { IdempotencyKeyService } = require('../..')

const cfg = JSON.parse(process.argv[2])
const out = (tag, o) => fs.writeSync(1, `${tag} ${JSON.stringify(o)}\n`)
const mb = (b) => Math.round((b / 1048576) * 10) / 10

async function sample(label, done, started) {
  for (let i = 0; i < 2; i++) {
    global.gc()
    await new Promise((r) => setImmediate(r))
  }
  await new Promise((r) => setTimeout(r, 50))
  global.gc()
  const m = process.memoryUsage()
  const s = { label, done, rssMb: mb(m.rss), heapTotalMb: mb(m.heapTotal), heapUsedMb: mb(m.heapUsed), externalMb: mb(m.external), seconds: Math.round((Date.now() - started) / 100) / 10 }
  out('MEM', s)
  return s
}

async function main() {
  if (typeof global.gc !== 'function') throw new Error('run with --expose-gc')
  const service = await IdempotencyKeyService.connect({ url: cfg.url })
  await service.migrate()
  const key = `mem-${process.pid}`
  await service.create({ idempotency_key: key })
  const callbacks = [() => ({ recovery_point: 'a' }), async () => ({ recovery_point: 'b' })]
  const started = Date.now()
  const samples = []
  for (let i = 1; i <= cfg.n; i++) {
    await service.workStage(key, callbacks[i & 1])
    if (i === cfg.warmup) samples.push(await sample('warm-up', i, started))
    else if (i > cfg.warmup && i % cfg.every === 0 && i !== cfg.n) samples.push(await sample('progress', i, started))
  }
  samples.push(await sample('end', cfg.n, started))
  await service.close()
  out('DONE', { samples, seconds: (Date.now() - started) / 1000 })
  process.exit(0)
}

main().catch((e) => {
  out('ERROR', { error: `${e && e.type}/${e && e.code}: ${e && e.message}`, stack: String(e && e.stack) })
  process.exit(2)
})
