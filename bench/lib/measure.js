'use strict'
// Closed-loop load with a fixed operation count, a time cap and a warm-up; per-op latency;
// CPU of this Node process (total and split by thread: the JS main thread vs the rest, i.e.
// tokio workers, libuv and V8 helpers) and of the PostgreSQL backends serving the bench
// database, read from /proc before and after.
const fs = require('node:fs')
const { performance } = require('node:perf_hooks')

const TICK_MS = 1000 / 100 // USER_HZ is 100 on Linux x86-64 (`getconf CLK_TCK`)

/** utime + stime of a process or thread, in ms; null when it is gone. */
function procCpuMs(statPath) {
  let s
  try {
    s = fs.readFileSync(statPath, 'utf8')
  } catch {
    return null
  }
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ') // fields from #3 (state) on
  return (Number(f[11]) + Number(f[12])) * TICK_MS // #14 utime, #15 stime
}

/** Voluntary + involuntary context switches of a process (one PostgreSQL backend). */
function procSwitches(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    const v = Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(s)?.[1] ?? 0)
    const n = Number(/nonvoluntary_ctxt_switches:\s+(\d+)/.exec(s)?.[1] ?? 0)
    return v + n
  } catch {
    return null
  }
}

/** CPU ms of each thread of this process, keyed by tid, with its name. */
function threadCpu() {
  const out = new Map()
  for (const tid of fs.readdirSync('/proc/self/task')) {
    const ms = procCpuMs(`/proc/self/task/${tid}/stat`)
    if (ms == null) continue
    let comm = ''
    try {
      comm = fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim()
    } catch {}
    out.set(tid, { ms, comm })
  }
  return out
}

function threadDelta(before, after) {
  const mainTid = String(process.pid)
  let main = 0
  let other = 0
  const byName = {}
  for (const [tid, { ms, comm }] of after) {
    const d = ms - (before.get(tid)?.ms ?? 0)
    if (tid === mainTid) main += d
    else other += d
    const group = comm.replace(/[-_ ]?\d+$/, '') || '?'
    byName[group] = (byName[group] ?? 0) + d
  }
  return { main, other, byName }
}

/** Machine-wide busy and total jiffies from /proc/stat. */
function machineCpu() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  const idle = v[3] + (v[4] || 0)
  const total = v.reduce((a, b) => a + b, 0)
  return { idle, total, steal: v[7] || 0 }
}

/** A CPU probe of the backends of database `dbName`, through an admin client on another db. */
function pgBackendProbe(admin, dbName) {
  async function pids() {
    const { rows } = await admin.query(
      "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
      [dbName],
    )
    return rows.map((r) => r.pid)
  }
  return {
    async snapshot() {
      const snap = new Map()
      for (const pid of await pids()) snap.set(pid, { ms: procCpuMs(`/proc/${pid}/stat`) ?? 0, cs: procSwitches(pid) ?? 0 })
      return snap
    },
    /** CPU ms and context switches of the backends since `before` (a new one counts whole). */
    async since(before) {
      let ms = 0
      let cs = 0
      let n = 0
      for (const pid of await pids()) {
        const now = procCpuMs(`/proc/${pid}/stat`)
        if (now == null) continue
        ms += now - (before.get(pid)?.ms ?? 0)
        cs += (procSwitches(pid) ?? 0) - (before.get(pid)?.cs ?? 0)
        n++
      }
      return { ms, cs, backends: n }
    },
  }
}

function percentile(sorted, p) {
  if (!sorted.length) return NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[i]
}

/** Run `op(i)` `ops` times with `concurrency` workers; stop early at `capMs`. */
async function runLoad(op, ops, concurrency, capMs, record) {
  let next = 0
  let done = 0
  const errors = {}
  const deadline = performance.now() + capMs
  async function worker() {
    while (next < ops && performance.now() < deadline) {
      const i = next++
      const t = performance.now()
      try {
        await op(i)
        if (record) record[done] = performance.now() - t
        done++
      } catch (e) {
        const code = e?.code ?? e?.driverError?.code ?? e?.type ?? 'error'
        errors[code] = (errors[code] ?? 0) + 1
        if (!errors._first) errors._first = String(e?.message ?? e).slice(0, 200)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return { done, errors }
}

/**
 * One measurement: warm-up (not recorded), then `ops` operations. `op(i)` gets an index unique
 * within the measured phase; the warm-up calls `warmOp(i)` (default `op`).
 */
async function measure({ op, warmOp, ops, concurrency, warmup, capMs, pgProbe }) {
  await runLoad(warmOp ?? op, warmup, concurrency, capMs, null)
  const pgBefore = pgProbe ? await pgProbe.snapshot() : null
  const thrBefore = threadCpu()
  const machineBefore = machineCpu()
  const nodeBefore = process.cpuUsage()
  const ruBefore = process.resourceUsage()
  const lat = new Float64Array(ops)
  const t0 = performance.now()
  const { done, errors } = await runLoad(op, ops, concurrency, capMs, lat)
  const wallMs = performance.now() - t0
  const node = process.cpuUsage(nodeBefore)
  const ru = process.resourceUsage()
  const nodeSwitches =
    ru.voluntaryContextSwitches - ruBefore.voluntaryContextSwitches + ru.involuntaryContextSwitches - ruBefore.involuntaryContextSwitches
  const machineAfter = machineCpu()
  const threads = threadDelta(thrBefore, threadCpu())
  const pg = pgProbe ? await pgProbe.since(pgBefore) : { ms: NaN, cs: NaN, backends: 0 }
  const sorted = lat.subarray(0, done).sort()
  const nodeMs = (node.user + node.system) / 1000
  const attempted = done + Object.entries(errors).filter(([k]) => k !== '_first').reduce((a, [, v]) => a + v, 0)
  return {
    ops: done,
    attempted,
    cappedAt: attempted < ops ? attempted : null,
    wallMs,
    opsPerSec: (done / wallMs) * 1000,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    nodeCpuPerOp: nodeMs / Math.max(1, done),
    mainCpuPerOp: threads.main / Math.max(1, done),
    otherCpuPerOp: threads.other / Math.max(1, done),
    threads: threads.byName,
    pgCpuPerOp: pg.ms / Math.max(1, done),
    nodeSwitchesPerOp: nodeSwitches / Math.max(1, done),
    pgSwitchesPerOp: pg.cs / Math.max(1, done),
    pgBackends: pg.backends,
    machineBusy: 1 - (machineAfter.idle - machineBefore.idle) / Math.max(1, machineAfter.total - machineBefore.total),
    steal: (machineAfter.steal - machineBefore.steal) / Math.max(1, machineAfter.total - machineBefore.total),
    // Share of the machine busy outside this process and the bench database's backends (other
    // tenants, PostgreSQL's background processes): a measurement with a large one was disturbed.
    others: Math.max(
      0,
      ((machineAfter.total - machineAfter.idle - (machineBefore.total - machineBefore.idle)) * TICK_MS - nodeMs - (pg.ms || 0)) /
        Math.max(1, (machineAfter.total - machineBefore.total) * TICK_MS),
    ),
    errors,
    lat: sorted,
  }
}

/**
 * One measurement from several slices of it (taken interleaved with the other implementations,
 * so a burst of outside load hits every implementation alike): totals summed, latencies pooled.
 */
function mergeSlices(slices) {
  const ops = slices.reduce((a, r) => a + r.ops, 0)
  const wallMs = slices.reduce((a, r) => a + r.wallMs, 0)
  const per = (k) => slices.reduce((a, r) => a + r[k] * r.ops, 0) / Math.max(1, ops)
  const byWall = (k) => slices.reduce((a, r) => a + r[k] * r.wallMs, 0) / Math.max(1, wallMs)
  const lat = new Float64Array(ops)
  let o = 0
  for (const r of slices) {
    lat.set(r.lat, o)
    o += r.lat.length
  }
  lat.sort()
  const errors = {}
  const threads = {}
  for (const r of slices) {
    for (const [k, v] of Object.entries(r.errors)) errors[k] = k === '_first' ? (errors[k] ?? v) : (errors[k] ?? 0) + v
    for (const [k, v] of Object.entries(r.threads)) threads[k] = (threads[k] ?? 0) + v
  }
  return {
    ops,
    attempted: slices.reduce((a, r) => a + r.attempted, 0),
    cappedAt: slices.some((r) => r.cappedAt) ? slices.reduce((a, r) => a + r.attempted, 0) : null,
    wallMs,
    opsPerSec: (ops / wallMs) * 1000,
    p50: percentile(lat, 50),
    p99: percentile(lat, 99),
    nodeCpuPerOp: per('nodeCpuPerOp'),
    mainCpuPerOp: per('mainCpuPerOp'),
    otherCpuPerOp: per('otherCpuPerOp'),
    threads,
    pgCpuPerOp: per('pgCpuPerOp'),
    pgBackends: Math.max(...slices.map((r) => r.pgBackends)),
    nodeSwitchesPerOp: per('nodeSwitchesPerOp'),
    pgSwitchesPerOp: per('pgSwitchesPerOp'),
    machineBusy: byWall('machineBusy'),
    steal: byWall('steal'),
    others: byWall('others'),
    errors,
    slices: slices.length,
  }
}

module.exports = { measure, mergeSlices, runLoad, pgBackendProbe, percentile, procCpuMs }
