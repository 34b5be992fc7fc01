'use strict'
// Medians, same-run ratios, targets and the markdown report.

const median = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (!v.length) return NaN
  const m = v.length >> 1
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2
}
const range = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x))
  return v.length ? [Math.min(...v), Math.max(...v)] : [NaN, NaN]
}
const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a')
const fx = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : 'n/a')
const int = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : 'n/a')

/** Per-run ratio a/b (paired by run index), as { med, lo, hi, all }. */
function pairedRatio(as, bs, key) {
  const all = as.map((a, i) => (bs[i] ? a[key] / bs[i][key] : NaN))
  const [lo, hi] = range(all)
  return { med: median(all), lo, hi, all }
}

const CONTENTION = new Set(['40001', '40P01', '53200', '55P03', 'IDEMPOTENCY_KEY_LOCKED'])

const SCENARIO_TITLE = {
  init: '(a) initializeRequest, new key',
  cycle: '(b) full cycle: init + 3 stages',
  retrieve: '(c) retrieve, existing key',
}

function render(ctx) {
  const { env, addon, results, races, probe, bridge, labels, impls, scenarios } = ctx
  const lines = []
  const p = (s = '') => lines.push(s)
  const stat = (sid, impl, key) => median((results[sid]?.[impl] ?? []).map((r) => r[key]))
  const ratio = (sid, a, b, key = 'opsPerSec') => pairedRatio(results[sid]?.[a] ?? [], results[sid]?.[b] ?? [], key)
  const showRatio = (r) => (r.unit ? `${f(r.med, 2)} ${r.unit}` : ctx.runs > 1 && Number.isFinite(r.lo) ? `${fx(r.med)} (${f(r.lo)}–${f(r.hi)})` : fx(r.med))

  // Targets (full cycle, same run, same database).
  const t = []
  const b16 = 'b16'
  const b1 = 'b1'
  if (results[b16] && results[b1]) {
    const nOrig = ratio(b16, 'native', 'original')
    const nPg = ratio(b16, 'native', 'pg')
    const bOrig = ratio(b16, 'bound', 'original')
    const lat = ratio(b1, 'native', 'original', 'p50')
    const tp = (sid, a, b) => `${int(stat(sid, a, 'opsPerSec'))} vs ${int(stat(sid, b, 'opsPerSec'))} cycles/s`
    const ms = (sid, a, b) => `${f(stat(sid, a, 'p50'))} vs ${f(stat(sid, b, 'p50'))} ms`
    const one = (sid, impl, key) => ({ med: stat(sid, impl, key), lo: NaN, hi: NaN, unit: 'ms' })
    t.push(['(b) c=16 throughput, native (default mode) ÷ original', '≥ 2.5×', nOrig, nOrig.med >= 2.5, tp(b16, 'native', 'original')])
    t.push(['(b) c=16 throughput, native (default mode) ÷ bare pg', '≥ 1.2×', nPg, nPg.med >= 1.2, tp(b16, 'native', 'pg')])
    if (results.b64) {
      const o64 = ratio('b64', 'native', 'original')
      const p64 = ratio('b64', 'native', 'pg')
      t.push(['(b) c=64 throughput, native (default mode) ÷ original', '≥ 2.5×', o64, o64.med >= 2.5, tp('b64', 'native', 'original')])
      t.push(['(b) c=64 throughput, native (default mode) ÷ bare pg', '≥ 1.2×', p64, p64.med >= 1.2, tp('b64', 'native', 'pg')])
    }
    t.push(['(b) c=16 throughput, bound ÷ original', '≥ 1.5×', bOrig, bOrig.med >= 1.5, tp(b16, 'bound', 'original')])
    t.push(['(b) c=1 p50 latency, native ÷ original', '≤ 0.5×', lat, lat.med <= 0.5, ms(b1, 'native', 'original')])
    const pgCpu = one(b16, 'native', 'pgCpuPerOp')
    const pgFloor = stat(b16, 'pg', 'pgCpuPerOp')
    t.push(['(b) c=16 PostgreSQL CPU per cycle, native (default mode), ms', `≤ bare pg's (${f(pgFloor, 2)})`, pgCpu, pgCpu.med <= pgFloor, `${f(pgCpu.med, 2)} vs ${f(pgFloor, 2)} ms`])
    const nodeCpu = one(b16, 'native', 'nodeCpuPerOp')
    t.push(['(b) c=16 Node CPU per cycle (JS thread + addon threads), native, ms', '≤ 0.45', nodeCpu, nodeCpu.med <= 0.45, `${f(nodeCpu.med, 2)} ms`])
    // The two statement modes: the unnamed statement by default, protocol-level named ones as an opt-in.
    if (results[b16].prepared) {
      const pOrig = ratio(b16, 'prepared', 'original')
      const pSafe = ratio(b16, 'prepared', 'native')
      t.push(['(b) c=16 throughput, native prepared ÷ original', '≥ 3.0×', pOrig, pOrig.med >= 3.0, tp(b16, 'prepared', 'original')])
      t.push(['(b) c=16 throughput, prepared ÷ default mode (the opt-in\'s gain)', 'report', pSafe, true, tp(b16, 'prepared', 'native')])
      if (results.b64?.prepared) {
        const p64 = ratio('b64', 'prepared', 'native')
        t.push(['(b) c=64 throughput, prepared ÷ default mode', 'report', p64, true, tp('b64', 'prepared', 'native')])
      }
    }
  }
  const mem = bridge?.memory
  const growth = mem ? mem.atEnd.rss / mem.atWarm.rss : NaN

  p(`## Benchmark results${ctx.smoke ? ' (SMOKE RUN: tiny counts, numbers meaningless)' : ''}`)
  p()
  p(
    `Machine: ${env.nproc} CPUs (\`nproc\`; ${env.cpu}), ${env.ramGiB} GiB RAM, ${env.os}; ${env.pg} on the same machine (loopback TCP); ` +
      `Node ${env.node}; addon: ${addon.profile} build of ${env.commit}; @medusajs/medusa ${env.versions.medusa}, typeorm ${env.versions.typeorm}, pg ${env.versions.pg}. ` +
      `Load average at start: ${env.load}; during the timed runs the machine was ${f(100 * env.busy, 0)}% busy, ${f(100 * env.steal, 1)}% stolen by the hypervisor, ` +
      `and processes other than the bench and its database backends used ${f(100 * env.others, 0)}% of it (median over measurements).`,
  )
  p()
  p(
    `Each implementation has its own pool of ${ctx.pool} connections (the two TypeORM ones share Medusa's DataSource, as they would in one app). ` +
      `Numbers are the median of ${ctx.runs} run${ctx.runs > 1 ? 's' : ''}; ratios are the median of the per-run ratios (both sides measured in the same run), range in brackets. ` +
      `Whole bench: ${f(ctx.wallS, 0)} s.`,
  )
  p()
  if (t.length || mem) {
    p('### Targets')
    p()
    p('| target | wanted | measured: median (range over runs) | medians | met |')
    p('|---|---|---|---|---|')
    for (const [name, want, r, ok, abs] of t) p(`| ${name} | ${want} | ${showRatio(r)} | ${abs} | ${ok ? 'yes' : '**no**'} |`)
    if (mem) {
      p(
        `| memory: RSS after ${int(mem.total)} empty stages ÷ RSS after ${int(mem.warm)} | ≤ 1.10× | ${fx(growth)} (one run) | ${f(mem.atWarm.rss / 2 ** 20, 1)} → ${f(mem.atEnd.rss / 2 ** 20, 1)} MiB | ${growth <= 1.1 ? 'yes' : '**no**'} |`,
      )
    }
    p()
  }

  p('### Throughput, latency, CPU')
  p()
  p('One op of (b) is a whole cycle: initializeRequest with a new key, then three workStages, each inserting one side row through its handle.')
  p()
  p('| scenario | c | implementation | ops/s | p50 ms | p99 ms | Node CPU ms/op (JS thread + other threads) | PG backends CPU ms/op | Node ctx switches/op | machine busy (others, stolen) | ÷ original | ÷ bare pg | errors |')
  p('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for (const s of scenarios) {
    for (const impl of impls) {
      const runs = results[s.id]?.[impl]
      if (!runs) continue
      const errs = {}
      for (const r of runs) for (const [k, v] of Object.entries(r.errors)) if (k !== '_first') errs[k] = (errs[k] ?? 0) + v
      const errText = Object.keys(errs).length ? Object.entries(errs).map(([k, v]) => `${k}: ${v}`).join(', ') : '0'
      const capped = runs.some((r) => r.cappedAt) ? ' (time cap hit)' : ''
      p(
        `| ${SCENARIO_TITLE[s.kind]} | ${s.c} | ${labels[impl]} | ${int(stat(s.id, impl, 'opsPerSec'))}${capped} | ${f(stat(s.id, impl, 'p50'))} | ${f(stat(s.id, impl, 'p99'))} | ` +
          `${f(stat(s.id, impl, 'nodeCpuPerOp'), 3)} (${f(stat(s.id, impl, 'mainCpuPerOp'), 3)} + ${f(stat(s.id, impl, 'otherCpuPerOp'), 3)}) | ${f(stat(s.id, impl, 'pgCpuPerOp'), 3)} | ${f(stat(s.id, impl, 'nodeSwitchesPerOp'), 1)} | ` +
          `${f(100 * stat(s.id, impl, 'machineBusy'), 0)}% (${f(100 * stat(s.id, impl, 'others'), 0)}%, ${f(100 * stat(s.id, impl, 'steal'), 0)}%) | ${impl === 'original' ? '1' : showRatio(ratio(s.id, impl, 'original'))} | ` +
          `${impl === 'pg' ? '1' : showRatio(ratio(s.id, impl, 'pg'))} | ${errText} |`,
      )
    }
  }
  p()

  // Where the time goes in the full cycle: CPU per cycle by side and thread, context switches
  // (each cross-thread hand-off blocks one thread: a voluntary switch), statements and round
  // trips from the probe.
  const profiled = scenarios.filter((s) => s.kind === 'cycle')
  if (profiled.length) {
    p('### Profile of the full cycle (per cycle)')
    p()
    p(
      'Node CPU split by thread (`/proc/self/task/*/stat`): the JS main thread, the addon\'s tokio workers, the rest (libuv, V8). ' +
        'Context switches: `process.resourceUsage()` for Node (all threads), `/proc/<pid>/status` for the backends; a hop between threads costs one. ' +
        'Statements, round trips and parses per cycle come from the probe (next section).',
    )
    p()
    p('| c | implementation | cycles/s | Node CPU ms: JS thread / tokio / other | PG CPU ms | total CPU ms | Node ctx switches | PG ctx switches | statements | round trips | parses |')
    p('|---|---|---|---|---|---|---|---|---|---|---|')
    for (const s of profiled) {
      for (const impl of impls) {
        const runs = results[s.id]?.[impl]
        if (!runs) continue
        const tokio = median(runs.map((r) => (r.threads['tokio-rt-worker'] ?? 0) / Math.max(1, r.ops)))
        const other = median(runs.map((r) => r.otherCpuPerOp - (r.threads['tokio-rt-worker'] ?? 0) / Math.max(1, r.ops)))
        const pr = probe?.results?.[impl]
        const per = (k) => (pr ? pr.init[k] + 3 * pr.stage[k] : NaN)
        p(
          `| ${s.c} | ${labels[impl]} | ${int(stat(s.id, impl, 'opsPerSec'))} | ${f(stat(s.id, impl, 'mainCpuPerOp'), 2)} / ${f(tokio, 2)} / ${f(other, 2)} | ` +
            `${f(stat(s.id, impl, 'pgCpuPerOp'), 2)} | ${f(median(runs.map((r) => r.nodeCpuPerOp + r.pgCpuPerOp)), 2)} | ${f(stat(s.id, impl, 'nodeSwitchesPerOp'), 1)} | ` +
            `${f(stat(s.id, impl, 'pgSwitchesPerOp'), 1)} | ${f(per('statements'), 0)} | ${f(per('roundTrips'), 1)} | ${f(per('parses'), 1)} |`,
        )
      }
    }
    p()
  }

  if (probe) {
    const pr = probe.results
    p('### SQL per operation')
    p()
    p(
      `Measured, not assumed: a child process with its own connections runs each operation ${probe.K} times sequentially after a warm-up, through a counting proxy ` +
        `(statements = CommandComplete messages, round trips = ReadyForQuery messages, parses = Parse messages) while the bench database has \`log_statement = 'all'\`` +
        `${probe.log ? " (logged = that database's `statement:`/`execute` lines in the server log: a simple-protocol batch such as `BEGIN …; EXECUTE …` is one line, so logged < statements means batching)" : ' (server log not readable here: logged column empty)'}.`,
    )
    p()
    p('| implementation | op | statements | logged | round trips | parses |')
    p('|---|---|---|---|---|---|')
    for (const impl of impls) {
      const r = pr[impl]
      if (!r) continue
      for (const [op, v] of [
        ['initializeRequest (new key)', r.init],
        ['workStage (1 side INSERT)', r.stage],
        ['retrieve', r.retrieve],
      ]) {
        p(`| ${labels[impl]} | ${op} | ${f(v.statements, 1)} | ${v.logged == null ? 'n/a' : f(v.logged, 1)} | ${f(v.roundTrips, 1)} | ${f(v.parses, 1)} |`)
      }
      p(`| ${labels[impl]} | **cycle** (init + 3 stages) | ${f(r.init.statements + 3 * r.stage.statements, 1)} | ${r.init.logged == null ? 'n/a' : f(r.init.logged + 3 * r.stage.logged, 1)} | ${f(r.init.roundTrips + 3 * r.stage.roundTrips, 1)} | ${f(r.init.parses + 3 * r.stage.parses, 1)} |`)
    }
    p()
    if (probe.log) {
      p('<details><summary>One workStage and one initializeRequest as the server logged them</summary>')
      p()
      for (const impl of impls) {
        const r = pr[impl]
        if (!r?.stageSql) continue
        p(`${labels[impl]}, workStage:`)
        p('```')
        for (const l of r.stageSql) p(l.length > 220 ? l.slice(0, 217) + '...' : l)
        p('```')
        p(`${labels[impl]}, initializeRequest:`)
        p('```')
        for (const l of r.initSql ?? []) p(l.length > 220 ? l.slice(0, 217) + '...' : l)
        p('```')
      }
      p('</details>')
      p()
    }
  }

  if (Object.keys(races).length) {
    const rp = ctx.plan.race
    p(`### (d) ${rp.callers} concurrent callers on one key, ${rp.rounds} rounds`)
    p()
    p(
      'Each round: a new key, then all callers call workStage on it at once (callback: insert a side row, move to `stage_1`), each the way its users call it ' +
        '(ours pass the recovery point they read). Allowed: one stage body per round.',
    )
    p()
    p('| implementation | bodies committed | allowed | bodies run | outcomes (all callers, all rounds) |')
    p('|---|---|---|---|---|')
    for (const impl of impls) {
      const rs = races[impl]
      if (!rs) continue
      const outs = {}
      for (const r of rs) for (const [k, v] of Object.entries(r.outcomes)) outs[k] = (outs[k] ?? 0) + v / rs.length
      const committed = rs.map((r) => r.committed)
      const [lo, hi] = range(committed)
      p(
        `| ${labels[impl]} | ${int(median(committed))}${ctx.runs > 1 && lo !== hi ? ` (${lo}–${hi})` : ''} | ${rs[0].allowed} | ${int(median(rs.map((r) => r.bodies)))} | ` +
          `${Object.entries(outs).map(([k, v]) => `${k}: ${int(v)}`).join(', ')} |`,
      )
    }
    p()
    p('Medians per run of the bench; outcomes averaged over runs.')
    p()
  }

  if (bridge) {
    p('### The bridge alone (in-memory SQLite, no PostgreSQL, sequential awaits)')
    p()
    p('| call | µs per call (wall) | CPU µs per call |')
    p('|---|---|---|')
    p(`| plain JS \`await noop()\` | ${f(bridge.plainAsync.wallUsPerCall)} | ${f(bridge.plainAsync.cpuUsPerCall)} |`)
    p(`| \`retrieve(key)\` (one JS→Rust→JS async call, one SELECT) | ${f(bridge.retrieve.wallUsPerCall, 1)} | ${f(bridge.retrieve.cpuUsPerCall, 1)} |`)
    p(`| empty \`workStage\` (async callback, no SQL; BEGIN, select, update, COMMIT) | ${f(bridge.emptyStage.wallUsPerCall, 1)} | ${f(bridge.emptyStage.cpuUsPerCall, 1)} |`)
    p(`| empty \`workStage\`, synchronous callback | ${f(bridge.emptyStageSyncCallback.wallUsPerCall, 1)} | ${f(bridge.emptyStageSyncCallback.cpuUsPerCall, 1)} |`)
    p()
    p(`${int(bridge.n)} calls each.`)
    p()
    p(`### Memory: ${int(mem.total)} empty stages in one child process (in-memory SQLite)`)
    p()
    p('RSS and V8 heap after a forced GC at each checkpoint. heapTotal is what V8 has reserved; heapUsed is what is live.')
    p()
    p('| stages | RSS MiB | V8 heapTotal MiB | V8 heapUsed MiB | external MiB |')
    p('|---|---|---|---|---|')
    for (const c of [{ stages: 0, ...mem.before }, ...(mem.curve ?? [mem.atWarm, mem.atEnd])]) {
      p(`| ${int(c.stages)} | ${f(c.rss / 2 ** 20, 1)} | ${f(c.heapTotal / 2 ** 20, 1)} | ${f(c.heapUsed / 2 ** 20, 1)} | ${f(c.external / 2 ** 20, 1)} |`)
    }
    p()
    const last = mem.curve?.length > 2 ? mem.curve[Math.floor(mem.curve.length / 2)] : null
    p(
      `RSS after ${int(mem.total)} ÷ after ${int(mem.warm)}: ${fx(growth)}` +
        (last ? `; after ${int(mem.total)} ÷ after ${int(last.stages)}: ${fx(mem.atEnd.rss / last.rss)}` : '') +
        `. ${f(mem.wallMs / 1000, 1)} s.`,
    )
    p()
  }

  p('### How it was measured')
  p()
  p(
    '- One fresh database per bench run (`CREATE DATABASE bench_<pid>_<rand>`, dropped at the end), schema from Medusa\'s initial migration run through Medusa\'s own DataSource, ' +
      `${int(ctx.plan.seed)} seeded keys and ANALYZE, plus a side table \`bench_side\`.`,
  )
  p(
    '- Closed loop: `c` workers, fixed operation count per measurement, a warm-up before it (not counted), a time cap of 20 s per measurement. ' +
      'Each measurement is taken in three slices interleaved with the other implementations\' (A B C D A B C D A B C D) and merged, so bursts of outside load on this shared machine fall on all of them; ' +
      'implementations rotate their order every run. Latency is per operation (a whole cycle for (b)).',
  )
  p(
    '- Node CPU: `process.cpuUsage()` of the bench process (all threads; the split reads `/proc/self/task/*/stat`: the JS main thread vs the rest: tokio workers, libuv, V8). ' +
      'PostgreSQL CPU: utime+stime from `/proc/<pid>/stat` of the bench database\'s client backends (`pg_stat_activity`), before and after each measurement. ' +
      'CPU busy: the whole machine, from `/proc/stat`.',
  )
  p(
    '- original and bound are called as Medusa 1.20\'s routes and cart-completion strategy call the service: `manager.transaction(tm => service.withTransaction(tm).workStage(…))` ' +
      '(default isolation). native: `service.workStage(key, cb, { recoveryPoint })` in its own SERIALIZABLE transaction. ' +
      `bare pg: \`BEGIN; SELECT … FOR UPDATE NOWAIT; INSERT side; UPDATE … RETURNING *; COMMIT\` (READ COMMITTED, ${ctx.pgPrepared ? 'named prepared statements' : 'unnamed statements'}), a new key is one INSERT.`,
  )
  p()

  // What a smoke run must see: every scenario ran every implementation without errors, the
  // race allowed exactly one body per round for ours and the floor, the probes produced numbers.
  const smokeProblems = []
  for (const s of scenarios)
    for (const impl of impls) {
      const runs = results[s.id]?.[impl] ?? []
      if (!runs.length) smokeProblems.push(`${s.id} ${impl}: no measurement`)
      for (const r of runs) {
        if (r.ops === 0) smokeProblems.push(`${s.id} ${impl}: no operation completed`)
        // Serialization failures and lock conflicts under load are reported in the table, not
        // failed on: anything else is a bug in the bench or in an implementation.
        const e = Object.keys(r.errors).filter((k) => k !== '_first' && !CONTENTION.has(k))
        if (e.length) smokeProblems.push(`${s.id} ${impl}: errors ${JSON.stringify(r.errors)}`)
      }
    }
  // Both statement modes keep a native stage at 3 round trips (BEGIN + lock, the callback's
  // INSERT, apply + COMMIT).
  for (const impl of ['native', 'prepared']) {
    const rt = probe?.results?.[impl]?.stage?.roundTrips
    if (Number.isFinite(rt) && rt !== 3) smokeProblems.push(`probe ${impl}: ${rt} round trips per stage, expected 3`)
  }
  for (const impl of ['bound', 'native', 'prepared', 'pg'])
    for (const r of races[impl] ?? []) if (r.committed !== r.allowed) smokeProblems.push(`race ${impl}: ${r.committed} committed, ${r.allowed} allowed`)
  for (const impl of impls) if (!Number.isFinite(probe?.results?.[impl]?.stage?.statements)) smokeProblems.push(`probe ${impl}: no counts`)
  if (!Number.isFinite(growth)) smokeProblems.push('memory: no numbers')

  return { markdown: lines.join('\n'), smokeProblems }
}

module.exports = { render, median }
