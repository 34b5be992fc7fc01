'use strict'
// The statement probe, run by bench.js as a child process while the bench database has
// `log_statement = 'all'` (ALTER DATABASE … SET, so only this child's fresh connections log).
// Every implementation connects through the counting proxy (lib/wire.js); after a warm-up
// (connections open, statements prepared) each operation kind runs K times sequentially and is
// counted twice, independently:
//   wire: CommandComplete (statements), ReadyForQuery (round trips), Parse messages;
//   log:  the server log's `statement:` / `execute …:` lines for this database.
// One stage's logged SQL is kept as a sample. Prints one JSON line.
//
//   node lib/probe.js <url> <db> <K> <poolSize> <pgLogPath|-> [--pg-prepared]
const fs = require('node:fs')
const { randomUUID } = require('node:crypto')
const { startProxy } = require('./wire')
const { buildAll, STAGES, cycle } = require('./impls')

const [url, db, kArg, poolArg, logPath] = process.argv.slice(2)
const K = Number(kArg)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function logSize() {
  try {
    return fs.statSync(logPath).size
  } catch {
    return null
  }
}

const LINE = new RegExp(`@${db} LOG:  (statement|execute [^:]*): (.*)$`)

function logLines(from) {
  if (from == null) return null
  const fd = fs.openSync(logPath, 'r')
  try {
    const size = fs.fstatSync(fd).size
    const buf = Buffer.alloc(Math.max(0, size - from))
    fs.readSync(fd, buf, 0, buf.length, from)
    return buf
      .toString('utf8')
      .split('\n')
      .map((l) => l.match(LINE))
      .filter(Boolean)
      .map((m) => m[2])
  } finally {
    fs.closeSync(fd)
  }
}

;(async () => {
  const target = new URL(url)
  const proxy = await startProxy({ host: target.hostname, port: Number(target.port || 5432) })
  const viaProxy = new URL(url)
  viaProxy.port = String(proxy.port)
  // Plain TCP: the proxy counts protocol messages, which TLS (sslmode=prefer, our default) hides.
  viaProxy.searchParams.set('sslmode', 'disable')
  const impls = await buildAll(viaProxy.toString(), Number(poolArg), { prepared: process.argv.includes('--pg-prepared') })
  const out = {}

  async function segment(fn, ops) {
    const before = proxy.counters.snapshot()
    const off = logSize()
    await fn()
    await sleep(300) // let the backends' log writes land
    const after = proxy.counters.snapshot()
    const lines = logLines(off)
    const per = (k) => (after[k] - before[k]) / ops
    return {
      statements: per('statements'),
      roundTrips: per('roundTrips'),
      parses: per('parses'),
      logged: lines == null ? null : lines.length / ops,
      sample: lines,
    }
  }

  for (const impl of Object.values(impls)) {
    for (let i = 0; i < 3; i++) await cycle(impl)
    const warmKey = (await impl.initializeRequest(randomUUID())).idempotency_key
    await impl.retrieve(warmKey)

    const init = await segment(async () => {
      for (let i = 0; i < K; i++) await impl.initializeRequest(randomUUID())
    }, K)
    const keys = []
    for (let i = 0; i < K; i++) keys.push((await impl.initializeRequest(randomUUID())).idempotency_key)
    const stage = await segment(async () => {
      for (const k of keys) for (const [n, from, to] of STAGES) await impl.stage(k, n, from, to)
    }, K * STAGES.length)
    const retrieve = await segment(async () => {
      for (const k of keys) await impl.retrieve(k)
    }, K)
    // One stage and one initializeRequest, as the server logged them.
    const sampleKey = (await impl.initializeRequest(randomUUID())).idempotency_key
    const one = await segment(() => impl.stage(sampleKey, 1, 'started', 'stage_1'), 1)
    const oneInit = await segment(() => impl.initializeRequest(randomUUID()), 1)
    for (const s of [init, stage, retrieve]) delete s.sample
    out[impl.name] = { init, stage, retrieve, stageSql: one.sample, initSql: oneInit.sample }
  }
  for (const impl of Object.values(impls)) await impl.close()
  await proxy.close()
  process.stdout.write(JSON.stringify({ K, tls: proxy.counters.tls, log: logSize() != null, results: out }) + '\n')
})().catch((e) => {
  console.error(e)
  process.exit(1)
})
