'use strict'
// Child process of bench.js (run with --expose-gc): the bridge alone, no PostgreSQL.
//
//   --mode=overhead --n=N
//             an empty workStage (callback does no SQL, returns a recovery point) on in-memory
//             SQLite, sequential awaits: wall and CPU per call, next to a plain JS async call
//             and a one-hop addon call (retrieve) for scale;
//   --mode=memory --warm=W --total=T
//             `total` empty stages in this one process: RSS (after a GC) once `warm` stages
//             have run and again at the end.
//
// Prints one JSON line.
const path = require('node:path')
const { performance } = require('node:perf_hooks')
const { IdempotencyKeyService } = require(path.join(__dirname, '..'))

const args = Object.fromEntries(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, '').split('=')
    return [k, v]
  }),
)
const MODE = args.mode || 'overhead'
const N = Number(args.n) || 5000
const WARM = Number(args.warm) || 10000
const TOTAL = Number(args.total) || 100000

function gcRss() {
  if (global.gc) {
    global.gc()
    global.gc()
  }
  const m = process.memoryUsage()
  return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external }
}

async function timed(n, fn) {
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  for (let i = 0; i < n; i++) await fn(i)
  const wall = performance.now() - t0
  const c = process.cpuUsage(c0)
  return { wallUsPerCall: (wall * 1000) / n, cpuUsPerCall: (c.user + c.system) / n }
}

;(async () => {
  const svc = await IdempotencyKeyService.connect({ url: 'sqlite::memory:' })
  await svc.migrate()
  const key = (await svc.create({ idempotency_key: 'bridge' })).idempotency_key
  const rps = ['a', 'b']
  const empty = (i) => svc.workStage(key, () => ({ recovery_point: rps[i & 1] }))
  const emptyAsync = (i) => svc.workStage(key, async () => ({ recovery_point: rps[i & 1] }))
  let out
  if (MODE === 'overhead') {
    await timed(Math.min(2000, N), emptyAsync) // warm-up
    const noop = async (x) => x
    const plain = await timed(N, (i) => noop(i))
    const retrieve = await timed(N, () => svc.retrieve(key))
    const stage = await timed(N, emptyAsync)
    const stageSync = await timed(N, empty)
    out = { n: N, plainAsync: plain, retrieve, emptyStage: stage, emptyStageSyncCallback: stageSync }
  } else {
    // RSS after `warm` stages vs after `total`, in this one process.
    // RSS every `warm` stages too, so a plateau (allocator, V8 heap sizing) can be told from a
    // leak (steady growth).
    let done = 0
    const before = gcRss()
    for (; done < WARM; done++) await emptyAsync(done)
    const atWarm = gcRss()
    const curve = [{ stages: done, ...atWarm }]
    const t0 = performance.now()
    while (done < TOTAL) {
      const until = Math.min(TOTAL, done + WARM)
      for (; done < until; done++) await emptyAsync(done)
      curve.push({ stages: done, ...gcRss() })
    }
    const atEnd = curve[curve.length - 1]
    out = { warm: WARM, total: TOTAL, before, atWarm, atEnd, curve, growth: atEnd.rss / atWarm.rss - 1, wallMs: performance.now() - t0 }
  }
  await svc.close()
  process.stdout.write(JSON.stringify(out) + '\n')
})().catch((e) => {
  console.error(e)
  process.exit(1)
})
