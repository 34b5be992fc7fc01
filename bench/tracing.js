'use strict'
// The cost of tracing, per call, where it shows most: sequential one-stage cycles
// (initializeRequest + workStage with one tx.query) on `sqlite::memory:`. Modes, each in a
// child process of its own, interleaved over ROUNDS rounds, medians of wall and CPU time reported:
//   off       nothing subscribed (what every user pays)
//   channels  every TracingChannel subscribed with empty handlers (the events alone)
//   otel      medusa-idempotency-native/otel with the real SDK: in-memory span exporter, a
//             metric reader, AsyncLocalStorageContextManager (what an APM user pays)
//   baseline  (with BASELINE_LIB=<dir>) another build of lib/, e.g. main's, nothing subscribed
//   node bench/tracing.js               N=3000 cycles per child, ROUNDS=5
const { execFileSync } = require('node:child_process')
const path = require('node:path')

const N = Number(process.env.N || 3000)
const ROUNDS = Number(process.env.ROUNDS || 5)

async function child(mode, lib) {
  const { IdempotencyKeyService } = require(lib)
  if (mode === 'channels') {
    const { tracingChannels } = require(lib)
    const noop = { start() {}, end() {}, asyncStart() {}, asyncEnd() {}, error() {} }
    for (const c of Object.values(tracingChannels)) c.subscribe(noop)
  } else if (mode === 'otel') {
    const api = require('@opentelemetry/api')
    const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks')
    const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base')
    const { MeterProvider, MetricReader } = require('@opentelemetry/sdk-metrics')
    class Reader extends MetricReader {
      async onForceFlush() {}
      async onShutdown() {}
    }
    api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
    const exporter = new InMemorySpanExporter()
    const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
    require(path.join(path.dirname(lib), 'otel.js')).instrument({ tracerProvider, meterProvider: new MeterProvider({ readers: [new Reader()] }) })
    setInterval(() => exporter.reset(), 200).unref() // keep memory flat
  }
  const service = await IdempotencyKeyService.connect('sqlite::memory:')
  await service.migrate()
  const cycle = async () => {
    const k = await service.initializeRequest(undefined, 'POST', {}, '/tracing')
    await service.workStage(k.idempotency_key, async (tx) => {
      await tx.query('SELECT 1 AS one')
      return { response_code: 200, response_body: {} }
    })
  }
  for (let i = 0; i < 300; i++) await cycle() // warm-up
  const t = process.hrtime.bigint()
  const cpu = process.cpuUsage()
  for (let i = 0; i < N; i++) await cycle()
  const { user, system } = process.cpuUsage(cpu)
  const us = Number(process.hrtime.bigint() - t) / 1e3 / N
  await service.close()
  // CPU time (every thread of the process: JS, tokio, SQLite) is less sensitive to a busy machine than wall time.
  process.stdout.write(JSON.stringify({ mode, usPerCycle: us, cpuUsPerCycle: (user + system) / N }))
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

if (process.argv[2] === '--child') {
  child(process.argv[3], process.argv[4]).catch((e) => {
    console.error(e)
    process.exit(1)
  })
} else {
  const lib = path.join(__dirname, '..', 'lib', 'index.js')
  const modes = [['off', lib], ['channels', lib], ['otel', lib]]
  if (process.env.BASELINE_LIB) modes.unshift(['baseline', path.resolve(process.env.BASELINE_LIB, 'index.js')])
  const seen = Object.fromEntries(modes.map(([m]) => [m, { wall: [], cpu: [] }]))
  for (let r = 0; r < ROUNDS; r++) {
    for (const [mode, from] of modes) {
      const out = JSON.parse(execFileSync(process.execPath, [__filename, '--child', mode, from], { encoding: 'utf8', env: { ...process.env, N: String(N) } }))
      seen[mode].wall.push(out.usPerCycle)
      seen[mode].cpu.push(out.cpuUsPerCycle)
    }
  }
  const round = (x) => Math.round(x * 10) / 10
  const result = Object.fromEntries(
    Object.entries(seen).map(([m, { wall, cpu }]) => [m, { wallUsPerCycle: round(median(wall)), cpuUsPerCycle: round(median(cpu)), wallRuns: wall.map(Math.round), cpuRuns: cpu.map(Math.round) }]),
  )
  console.log(JSON.stringify({ n: N, rounds: ROUNDS, ...result }, null, 2))
}
