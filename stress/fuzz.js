'use strict'
// Bad input: a property-based fuzz (fast-check) of every public method's arguments and every
// callback result, on SQLite and on PostgreSQL. Every case must end in a typed error of the
// contract (SPEC §6: an Error with string `type` and `code`), the callback's own thrown value
// untouched (===), or a correct result (the ten key fields, values that round-trip); the process
// must never crash, abort or hang, and no Rust panic text may reach stderr.
//
// The addon runs in CHILD processes (stress/lib/fuzz-worker.js, one per backend, in parallel),
// so a crash or an abort is observed here, not suffered: this process never loads the addon.
// Each child writes a CASE line before every case; when a child dies (signal, abort, non-zero
// exit), stops writing for STALL_MS (a blocked event loop), grows past RSS_CAP_MB, or reports a
// case that did not settle within its per-case timeout (HANG), the case it was running is
// reported and a new child carries on with the properties that are left. Its stderr is scanned
// for 'panicked' / 'RUST_BACKTRACE' / 'fatal' / 'Abort'. Then stress/lib/fuzz/probe.js runs the
// hostile-size inputs (2**32-1 sparse arrays, pool sizes), one child each, with a hard timeout.
//
//   node stress/fuzz.js [--short] [--seed N] [--backend sqlite|postgres]
//   node stress/fuzz.js --replay <backend>:<property>:<seed>:<path>   (one failing case again)
//
// Full run ~2 min, --short ~20 s. Prints the number of cases tried and a FIGURES line.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')

const WORKER = path.join(__dirname, 'lib', 'fuzz-worker.js')
const PROBE = path.join(__dirname, 'lib', 'fuzz', 'probe.js')
const { createDatabase } = require('./lib/pgadmin')
const { onTaggedLines } = require('./lib/tagged-lines')
const STALL_MS = 25000 // no CASE line for this long: the child's event loop is blocked
const RSS_CAP_MB = 3072 // a child past this is killed (memory blow-up), before it hurts the machine
const STDERR_BAD = [/panicked/, /RUST_BACKTRACE/, /fatal/i, /Abort/, /memory allocation of \d+ bytes failed/, /Segmentation fault/, /Native stack trace/]

const arg = (name) => {
  const i = process.argv.indexOf(name)
  return i >= 0 ? process.argv[i + 1] : undefined
}

// ---------------------------------------------------------------------------------------------
// Databases: PostgreSQL through node-postgres (this process never loads the addon)

async function freshPg() {
  const { url, drop } = await createDatabase('idem_fuzz')
  return { url, drop }
}

function freshSqliteDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idem-fuzz-'))
  return { dir, url: `sqlite://${path.join(dir, 'fuzz.db')}`, drop: async () => fs.rmSync(dir, { recursive: true, force: true }) }
}

// ---------------------------------------------------------------------------------------------
// A child, watched: lines, stalls, memory, exit, stderr

function rssMb(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) / 1024 : 0
  } catch {
    return 0
  }
}

/**
 * Run `node script json` and watch it. Resolves { code, signal, killedFor, stderr, lastCase,
 * lines: { TAG: [objects] }, stderrCases: [{ text, lastCase }] }.
 */
function watchChild(script, config, { timeoutMs, stallMs = STALL_MS, rssCapMb = RSS_CAP_MB }) {
  return new Promise((resolve) => {
    const env = { ...process.env }
    delete env.DATABASE_URL
    const child = spawn(process.execPath, [script, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe'], env })
    const res = { code: null, signal: null, killedFor: null, stderr: '', lastCase: null, lines: {}, stderrCases: [], maxRssMb: 0 }
    let lastData = Date.now()
    const kill = (why) => {
      if (res.killedFor) return
      res.killedFor = why
      child.kill('SIGKILL')
    }
    child.stdout.on('data', () => {
      lastData = Date.now()
    })
    onTaggedLines(child.stdout, (tag, obj) => {
      if (tag === 'CASE') res.lastCase = obj
      else (res.lines[tag] = res.lines[tag] || []).push(obj)
    })
    child.stderr.on('data', (d) => {
      const text = String(d)
      if (res.stderr.length < 200000) res.stderr += text
      if (STDERR_BAD.some((re) => re.test(text))) {
        // One entry per case: a panic's message and backtrace arrive in several chunks.
        const prev = res.stderrCases[res.stderrCases.length - 1]
        if (prev && prev.lastCase === res.lastCase) {
          if (prev.text.length < 2000) prev.text += text.slice(0, 2000 - prev.text.length)
        } else res.stderrCases.push({ text: text.slice(0, 2000), lastCase: res.lastCase })
      }
    })
    const started = Date.now()
    const timer = setInterval(() => {
      const rss = rssMb(child.pid)
      res.maxRssMb = Math.max(res.maxRssMb, rss)
      if (rss > rssCapMb) kill(`memory: RSS ${Math.round(rss)} MB > ${rssCapMb} MB`)
      else if (Date.now() - lastData > stallMs) kill(`stall: no progress for ${stallMs / 1000} s (event loop blocked)`)
      else if (Date.now() - started > timeoutMs) kill(`timeout: still running after ${timeoutMs / 1000} s`)
    }, 250)
    child.on('close', (code, signal) => {
      clearInterval(timer)
      res.code = code
      res.signal = signal
      resolve(res)
    })
  })
}

// ---------------------------------------------------------------------------------------------
// One backend: workers until the budget is spent, restarting after a crash or hang

const PROPS = ['connect', 'migrate', 'initializeRequest', 'create', 'retrieve', 'lock', 'update', 'workStage', 'txQuery', 'txAfterStage', 'withTransaction', 'bindExecutor', 'detached', 'reapAndList', 'forTenant', 'wrapExecutor']

function describeCase(c) {
  return c ? `${c.p} case #${c.i}: ${c.d}` : '(before the first case)'
}

async function fuzzBackend(backend, url, { budgetMs, seed, log, caseTimeoutMs, stallMs }) {
  const deadline = Date.now() + budgetMs
  const out = { backend, cases: 0, failures: [], crashes: [], workers: 0, perProp: {}, maxRssMb: 0 }
  const crashedProps = new Map()
  let remaining = PROPS.slice()
  const known = new Set()
  const avoid = new Set()
  let s = seed
  while (remaining.length && Date.now() < deadline - 1500 && out.workers < 8) {
    out.workers++
    const config = { backend, url, budgetMs: deadline - Date.now() - 1000, seed: s, props: remaining, known: [...known], avoid: [...avoid], caseTimeoutMs }
    const r = await watchChild(WORKER, config, { timeoutMs: config.budgetMs + 60000, stallMs })
    out.maxRssMb = Math.max(out.maxRssMb, Math.round(r.maxRssMb))
    const done = r.lines.DONE && r.lines.DONE[0]
    for (const f of r.lines.FAIL || []) {
      known.add(f.sig)
      out.failures.push({ kind: 'property', ...f })
    }
    for (const p of r.lines.PROP_DONE || []) {
      out.perProp[p.prop] = (out.perProp[p.prop] || 0) + p.runs
      remaining = remaining.filter((x) => x !== p.prop)
    }
    for (const p of r.lines.PROP_MORE || []) out.perProp[p.prop] = (out.perProp[p.prop] || 0) + p.runs
    let cases = done ? done.cases : 0
    if (!done) {
      // Count the cases the child got through from its CASE lines (the last one is enough: i is per property).
      cases = [...(r.lines.PROP_DONE || []), ...(r.lines.PROP_MORE || [])].reduce((a, p) => a + p.runs, 0) + (r.lastCase ? r.lastCase.i : 0)
      if (r.lastCase) out.perProp[r.lastCase.p] = (out.perProp[r.lastCase.p] || 0) + r.lastCase.i
    }
    out.cases += cases
    const diedIn = done ? null : r.lastCase
    for (const sc of r.stderrCases) {
      if (diedIn && sc.lastCase === diedIn) continue // reported with the crash below
      out.failures.push({ kind: 'stderr', backend, prop: sc.lastCase && sc.lastCase.p, error: `stderr of the child contains panic/abort text: ${sc.text.split('\n').slice(0, 3).join(' | ')}`, counterexample: describeCase(sc.lastCase), replay: replayOf(backend, sc.lastCase) })
    }
    if (done) {
      for (const st of done.strays) out.failures.push({ kind: 'unhandled', backend, prop: st.prop, error: st.what, counterexample: st.d })
      break
    }
    if (r.lines.SETUP_FAILED) {
      out.failures.push({ kind: 'setup', backend, error: r.lines.SETUP_FAILED[0].error, counterexample: r.lines.SETUP_FAILED[0].stack })
      break
    }
    // The child did not finish: a crash, an abort, a hang or a memory blow-up, during lastCase.
    const hang = r.lines.HANG && r.lines.HANG[0]
    if (hang && hang.hint) avoid.add(hang.hint)
    const lc = hang ? { p: hang.prop, i: hang.run, d: hang.d, s: hang.seed, path: hang.path } : r.lastCase
    // An event loop blocked while converting an executor's odd rows: known after once (see isWide).
    if (lc && /"shape":"(rows-odd|row-odd|resolve-odd|sync-value|raw-rows-odd|raw-odd)"/.test(lc.d || '') && /1 MB|100k|10k keys|1e5|1e6/.test(lc.d || '')) avoid.add('wide-rows')
    // A pool of millions of connections allocated up front (abort, or GBs of RSS): known after once.
    if ((lc && lc.p === 'connect' && /maxConnections: (\d{7,}|2\*\*3|Number\.MAX|1\.\d+e\+)/.test(lc.d || '')) || (r.killedFor && r.killedFor.startsWith('memory'))) avoid.add('huge-pool')
    const kind = hang ? hang.kind || 'hang' : r.killedFor ? (r.killedFor.startsWith('memory') ? 'memory' : 'hang') : 'crash'
    const what = hang ? hang.what : r.killedFor || `the child died: ${r.signal ? `signal ${r.signal}` : `exit code ${r.code}`}`
    const stderrHead = r.stderr.split('\n').filter((l) => l.trim() && !/^\s+(at |\d+:)/.test(l)).slice(0, 4).join(' | ')
    const crash = { kind, backend, prop: lc && lc.p, error: `${what}${stderrHead ? ` — stderr: ${stderrHead.slice(0, 400)}` : ''}`, counterexample: describeCase(lc), replay: replayOf(backend, lc), lastCase: lc }
    out.crashes.push(crash)
    log(`  [${backend}] ${kind} in ${describeCase(lc).slice(0, 300)} — ${what}; restarting`)
    // Carry on: the property that crashed goes last (and is dropped after crashing twice).
    if (lc && lc.p) {
      const n = (crashedProps.get(lc.p) || 0) + 1
      crashedProps.set(lc.p, n)
      remaining = remaining.filter((x) => x !== lc.p)
      if (n < 2) remaining.push(lc.p)
    }
    s += 1000003
  }
  return out
}

function replayOf(backend, c) {
  if (!c || c.s === undefined || c.path === null || c.path === undefined) return null
  return `node stress/fuzz.js --replay ${backend}:${c.p}:${c.s}:${c.path}`
}

// ---------------------------------------------------------------------------------------------
// Hostile-size probes, one child each

async function runProbes(names, urlFor, { timeoutMs, parallel, log }) {
  const results = []
  const queue = names.slice()
  const runOne = async ([name, backend]) => {
    const target = await urlFor(backend)
    const started = Date.now()
    const r = await watchChild(PROBE, { name, url: target.url, backend }, { timeoutMs, stallMs: timeoutMs + 1000, rssCapMb: 2048 })
    await target.drop().catch(() => {})
    const line = r.lines.PROBE && r.lines.PROBE[0]
    const bad = r.stderrCases.length ? r.stderrCases[0].text.split('\n').slice(0, 2).join(' | ') : null
    let verdict
    if (line && line.outcome && line.outcome.ok && !bad && r.code === 0) verdict = { ok: true, detail: line.outcome.error || line.outcome.result }
    else if (line && line.outcome && !line.outcome.ok) verdict = { ok: false, kind: 'untyped', detail: line.outcome.error }
    else if (r.killedFor) verdict = { ok: false, kind: r.killedFor.startsWith('memory') ? 'memory' : 'hang', detail: `${r.killedFor} (max RSS ${Math.round(r.maxRssMb)} MB)` }
    else verdict = { ok: false, kind: 'crash', detail: `${r.signal ? `signal ${r.signal}` : `exit code ${r.code}`}; stderr: ${r.stderr.split('\n').filter((l) => l.trim() && !/^\s+(at |\d+:)/.test(l)).slice(0, 3).join(' | ').slice(0, 400)}` }
    if (verdict.ok && bad) verdict = { ok: false, kind: 'stderr', detail: bad }
    const res = { name, backend, ms: Date.now() - started, ...verdict }
    results.push(res)
    log(`  probe [${backend}] ${name}: ${res.ok ? 'ok' : res.kind.toUpperCase()} (${(res.ms / 1000).toFixed(1)} s) ${res.detail ? String(res.detail).slice(0, 200) : ''}`)
  }
  const lanes = Array.from({ length: parallel }, async () => {
    while (queue.length) await runOne(queue.shift())
  })
  await Promise.all(lanes)
  return results
}

// ---------------------------------------------------------------------------------------------

async function replay(spec, log) {
  const [backend, prop, seed, ...rest] = spec.split(':')
  const pathStr = rest.join(':')
  const target = backend === 'postgres' ? await freshPg() : freshSqliteDir()
  try {
    const r = await watchChild(WORKER, { backend, url: target.url, budgetMs: 60000, seed: Number(seed), props: [prop], replay: { prop, seed: Number(seed), path: pathStr } }, { timeoutMs: 120000 })
    log(`replay ${spec}: exit ${r.signal || r.code}${r.killedFor ? `, killed: ${r.killedFor}` : ''}`)
    if (r.lastCase) log(`  case: ${describeCase(r.lastCase)}`)
    for (const f of r.lines.FAIL || []) log(`  FAIL ${f.error}\n    counterexample: ${f.counterexample}`)
    for (const h of r.lines.HANG || []) log(`  HANG ${h.what}`)
    if (r.stderr.trim()) log(`  stderr: ${r.stderr.split('\n').slice(0, 6).join('\n          ')}`)
    return r
  } finally {
    await target.drop().catch(() => {})
  }
}

async function main({ short = false } = {}) {
  const log = (...a) => console.log(...a)
  const started = Date.now()
  const replaySpec = arg('--replay')
  if (replaySpec) {
    const r = await replay(replaySpec, log)
    const bad = r.signal || r.code !== 0 || r.killedFor || (r.lines.FAIL || []).length || r.stderrCases.length
    if (bad) throw new Error(`the case fails (see above)`)
    return { replay: replaySpec, ok: true }
  }
  // FUZZ_SEED pins the cases (npm test does, so CI is repeatable); otherwise each run explores new ones.
  const seed = Number(arg('--seed') ?? process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
  const only = arg('--backend')
  const backends = only ? [only] : ['sqlite', 'postgres']
  const budgetMs = short ? 12000 : 80000
  const caseTimeoutMs = short ? 7000 : 15000
  const stallMs = short ? 10000 : STALL_MS
  log(`fuzz: seed ${seed}, ${budgetMs / 1000} s per backend (${backends.join(', ')} in parallel), each case bounded (${caseTimeoutMs / 1000} s per call, ${stallMs / 1000} s without progress)`)

  const targets = {}
  for (const b of backends) targets[b] = b === 'postgres' ? await freshPg() : freshSqliteDir()
  let results
  try {
    results = await Promise.all(backends.map((b) => fuzzBackend(b, targets[b].url, { budgetMs, seed, log, caseTimeoutMs, stallMs })))
  } finally {
    for (const b of backends) await targets[b].drop().catch(() => {})
  }

  // Hostile sizes: every probe in a child of its own.
  const { PROBES } = require('./lib/fuzz/probe')
  let probeNames = []
  for (const [name, p] of Object.entries(PROBES)) for (const b of p.backends) if (backends.includes(b)) probeNames.push([name, b])
  if (short) probeNames = probeNames.filter(([n, b]) => b === 'sqlite' && /maxConnections: 2\*\*32|initializeRequest|tx.query\("SELECT 1|NUL byte/.test(n))
  log(`probes: ${probeNames.length} hostile-size inputs, one child each (${short ? 4 : 6} s timeout)`)
  const probes = await runProbes(probeNames, async (b) => (b === 'postgres' ? freshPg() : freshSqliteDir()), { timeoutMs: short ? 4000 : 6000, parallel: short ? 3 : 2, log })

  // Report.
  const cases = results.reduce((a, r) => a + r.cases, 0)
  const failures = []
  const seen = new Set()
  for (const r of results) {
    for (const f of [...r.failures, ...r.crashes]) {
      const key = `${f.backend}|${f.prop}|${f.kind}|${f.sig || f.error.slice(0, 80)}`
      if (seen.has(key)) continue
      seen.add(key)
      failures.push(f)
    }
  }
  const probeFailures = probes.filter((p) => !p.ok)
  log('')
  for (const r of results) {
    log(`[${r.backend}] ${r.cases} cases in ${r.workers} child process(es), max child RSS ${r.maxRssMb} MB; per property: ${Object.entries(r.perProp).map(([k, v]) => `${k} ${v}`).join(', ')}`)
  }
  log(`cases tried: ${cases} (${results.map((r) => `${r.backend} ${r.cases}`).join(', ')}), probes: ${probes.length}`)
  if (failures.length || probeFailures.length) {
    log(`\n${failures.length} distinct fuzz failure(s), ${probeFailures.length} probe failure(s):`)
    failures.forEach((f, i) => {
      log(`\n#${i + 1} [${f.backend}] ${f.prop} — ${f.kind}`)
      log(`  ${f.error}`)
      if (f.counterexample) log(`  input: ${String(f.counterexample).slice(0, 1500)}`)
      const rp = f.replay || (f.seed !== undefined && f.path ? `node stress/fuzz.js --replay ${f.backend}:${f.prop}:${f.seed}:${f.path}` : null)
      if (rp) log(`  replay: ${rp}`)
    })
    for (const p of probeFailures) log(`\nprobe [${p.backend}] ${p.name} — ${p.kind}: ${p.detail}`)
  }
  const crashes = results.reduce((a, r) => a + r.crashes.filter((c) => c.kind === 'crash').length, 0)
  const hangs = results.reduce((a, r) => a + r.crashes.filter((c) => c.kind === 'hang').length, 0)
  const memory = results.reduce((a, r) => a + r.crashes.filter((c) => c.kind === 'memory').length, 0)
  const figures = {
    cases,
    sqlite_cases: results.find((r) => r.backend === 'sqlite')?.cases ?? 0,
    postgres_cases: results.find((r) => r.backend === 'postgres')?.cases ?? 0,
    failures: failures.length,
    crashes,
    hangs,
    memory_blowups: memory,
    probes: probes.length,
    probe_failures: probeFailures.length,
    seed,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  }
  global.__stressFiguresPrinted = true
  log('FIGURES ' + JSON.stringify(figures))
  if (failures.length || probeFailures.length) {
    throw new Error(`${failures.length} fuzz failure(s) (${crashes} crash(es), ${hangs} hang(s), ${memory} memory blow-up(s)) and ${probeFailures.length} probe failure(s) in ${cases} cases; see the list above`)
  }
  return figures
}

module.exports = { main }
if (require.main === module) require('./lib/child').runScenario(__filename)
