#!/usr/bin/env node
'use strict'
// Medusa 1.20's original IdempotencyKeyService vs medusa-idempotency-native (native mode and
// bound mode over TypeORM) vs a bare node-postgres floor, on one fresh PostgreSQL database, in
// one run. See README.md in this folder for what each scenario does and how each number is
// measured.
//
//   node bench.js                 full run (release build of the addon, median of --runs=5)
//   node bench.js --smoke         one small iteration of every scenario, the local build in lib/
//
// Options: --runs=N  --pool=N (pool size of every implementation, default 10)
//          --pg-prepared (named statements for the floor)  --no-build  --out=FILE
//          --admin-url=postgres://…/postgres (or BENCH_PG_ADMIN_URL)
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync, spawn } = require('node:child_process')
const { randomUUID, randomBytes } = require('node:crypto')
const { performance } = require('node:perf_hooks')

const argv = process.argv.slice(2)
const flag = (name) => argv.includes(`--${name}`)
const opt = (name, dflt) => {
  const a = argv.find((x) => x.startsWith(`--${name}=`))
  return a ? a.slice(name.length + 3) : dflt
}

const SMOKE = flag('smoke')
const RUNS = Number(opt('runs', SMOKE ? 1 : 5))
const POOL = Number(opt('pool', 10))
const PG_PREPARED = flag('pg-prepared')
const ADMIN_URL = opt('admin-url', process.env.BENCH_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres')
const OUT = opt('out', SMOKE ? null : path.join(__dirname, 'RESULTS.md'))
const IMPLS = ['original', 'bound', 'native', 'prepared', 'pg']
const LABEL = {
  original: 'Medusa 1.20 original (TypeORM)',
  bound: 'ours, bound mode (TypeORM executor)',
  native: 'ours, native mode (default: unnamed statements, every pooler)',
  prepared: 'ours, native mode, preparedStatements: true',
  pg: 'bare `pg` floor',
}

// Operation counts per measurement: [ops, warm-up ops]. Fixed; each measurement is also capped
// in time (CAP_MS) so a pathological run cannot hang the bench.
const FULL = {
  init: { 1: [150, 15], 16: [501, 64] },
  cycle: { 1: [81, 8], 16: [300, 32], 64: [384, 64] },
  retrieve: { 1: [501, 50], 16: [2001, 200] },
  race: { rounds: 50, callers: 16 },
  seed: 20000,
  probeK: 20,
  bridge: { n: 5000, warm: 10000, total: 100000 },
}
const SMALL = {
  init: { 1: [5, 2], 16: [32, 16] },
  cycle: { 1: [3, 1], 16: [16, 16], 64: [64, 64] },
  retrieve: { 1: [5, 2], 16: [32, 16] },
  race: { rounds: 2, callers: 16 },
  seed: 200,
  probeK: 2,
  bridge: { n: 500, warm: 500, total: 2000 },
}
const PLAN = SMOKE ? SMALL : FULL
const CAP_MS = SMOKE ? 5000 : 20000
const SLICES = SMOKE ? 1 : 3

const log = (...a) => console.error(...a)
// ---------------------------------------------------------------------------------------------

const build = require('./lib/build')
const addon = SMOKE || flag('no-build') ? (SMOKE ? build.useLocalBuild() : build.useReleaseBuild({ build: false })) : build.useReleaseBuild()

const { Client } = require('pg')
const { measure, mergeSlices, pgBackendProbe } = require('./lib/measure')
const impls = require('./lib/impls')
const { median } = require('./lib/report')

/**
 * Every implementation gets this URL. Plain TCP for all (`sslmode=disable`): node-postgres and
 * TypeORM do not use TLS unless told to, while the addon, like libpq, prefers it when the server
 * offers it; over loopback the comparison is of the statement paths, not of TLS.
 */
function dbUrl(name) {
  const u = new URL(ADMIN_URL)
  u.pathname = '/' + name
  if (!u.searchParams.has('sslmode')) u.searchParams.set('sslmode', 'disable')
  return u.toString()
}

async function connect(url) {
  const c = new Client({ connectionString: url })
  c.on('error', (e) => log(`admin connection: ${e.message}`))
  await c.connect()
  return c
}

function machine(pgVersion) {
  const cpus = os.cpus()
  let nproc = String(cpus.length)
  try {
    nproc = execFileSync('nproc', { encoding: 'utf8' }).trim()
  } catch {}
  let commit = 'an unknown commit'
  try {
    const git = (...a) => execFileSync('git', a, { cwd: build.ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    const dirty = git('status', '--porcelain', '--', 'src', 'crates', 'migrations', 'Cargo.toml', 'Cargo.lock', 'lib') !== ''
    commit = `commit ${git('rev-parse', '--short', 'HEAD')}${dirty ? ' + uncommitted changes' : ''}`
  } catch {}
  return {
    commit,
    nproc,
    cpu: cpus[0]?.model ?? '?',
    ramGiB: (os.totalmem() / 2 ** 30).toFixed(1),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    pg: pgVersion,
    load: os.loadavg().map((x) => x.toFixed(2)).join(' '),
    versions: Object.fromEntries(
      [['medusa', '@medusajs/medusa'], ['typeorm', 'typeorm'], ['pg', 'pg']].map(([k, name]) => [
        k,
        JSON.parse(fs.readFileSync(path.join(__dirname, 'node_modules', name, 'package.json'), 'utf8')).version,
      ]),
    ),
  }
}

/** The server log, for the statement probe: BENCH_PG_LOG, else Debian's default path. */
function pgLogPath(major) {
  const p = process.env.BENCH_PG_LOG || `/var/log/postgresql/postgresql-${major}-main.log`
  try {
    fs.accessSync(p, fs.constants.R_OK)
    return p
  } catch {
    return '-'
  }
}

/** Run `node …args` in this folder; resolve to the last line of its stdout, parsed as JSON. */
function runChild(args, { env = {}, nodeArgs = [] } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgs, ...args], {
      cwd: __dirname,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.on('error', reject)
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`node ${args.join(' ')} exited with ${code}`))
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()))
      } catch (e) {
        reject(new Error(`node ${args.join(' ')}: no JSON result (${e.message})`))
      }
    })
  })
}

/** Steal and busy shares of the machine from /proc/stat (cpu line). */
function cpuTimes() {
  const v = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  return { total: v.reduce((a, b) => a + b, 0), idle: v[3] + (v[4] || 0), steal: v[7] || 0 }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/** (d): `callers` concurrent workStage calls on one fresh key per round. */
async function race(impl, db, { rounds, callers }) {
  let bodies = 0
  const outcomes = {}
  const keys = []
  const t0 = performance.now()
  for (let r = 0; r < rounds; r++) {
    const key = (await impl.initializeRequest(randomUUID())).idempotency_key
    keys.push(key)
    await Promise.all(
      Array.from({ length: callers }, () =>
        impl.stage(key, 100, 'started', 'stage_1', () => bodies++).then(
          () => (outcomes.ok = (outcomes.ok ?? 0) + 1),
          (e) => {
            const code = e?.code ?? e?.driverError?.code ?? e?.type ?? 'error'
            outcomes[code] = (outcomes[code] ?? 0) + 1
          },
        ),
      ),
    )
  }
  const wallMs = performance.now() - t0
  const { rows } = await db.query('SELECT count(*)::int AS n FROM bench_side WHERE stage = 100 AND idempotency_key = ANY($1)', [keys])
  return { rounds, callers, allowed: rounds, committed: rows[0].n, bodies, outcomes, wallMs }
}

async function main() {
  const tStart = performance.now()
  const admin = await connect(ADMIN_URL)
  const { rows: vrows } = await admin.query("SELECT current_setting('server_version') AS v, current_setting('server_version_num')::int AS n")
  const pgVersion = `PostgreSQL ${vrows[0].v}`
  const pgMajor = Math.floor(vrows[0].n / 10000)
  // Databases left by bench runs that died with the server (a restart mid-run) go first.
  const { rows: stale } = await admin.query("SELECT datname FROM pg_database WHERE datname ~ '^bench_[0-9]+_[0-9a-f]{6}$'")
  for (const { datname } of stale) {
    const pid = Number(datname.split('_')[1])
    let alive = true
    try {
      process.kill(pid, 0)
    } catch (e) {
      alive = e.code === 'EPERM'
    }
    if (!alive) await admin.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`).catch(() => {})
  }
  const dbName = `bench_${process.pid}_${randomBytes(3).toString('hex')}`
  const url = dbUrl(dbName)
  const env = machine(pgVersion)
  log(`medusa-idempotency-native bench${SMOKE ? ' (smoke)' : ''}: database ${dbName}, addon ${addon.profile} build, pool ${POOL}, ${RUNS} run(s)`)
  await admin.query(`CREATE DATABASE "${dbName}"`)
  let built = null
  let db = null
  try {
    // Medusa's initial migration creates the idempotency_key table (and the rest of Medusa's
    // schema) through the same DataSource Medusa's loader builds.
    const medusa = await impls.buildMedusa(url, POOL, { migrate: true })
    await medusa.dataSource.destroy()
    db = await connect(url)
    await db.query(
      'CREATE TABLE bench_side (id bigserial PRIMARY KEY, idempotency_key varchar NOT NULL, stage int NOT NULL, created_at timestamptz NOT NULL DEFAULT now())',
    )
    // A table that is not empty, so plans are the ones a live shop gets; (c) reads these keys.
    await db.query(
      `INSERT INTO idempotency_key (id, idempotency_key, request_method, request_params, request_path, recovery_point, response_code, response_body)
       SELECT 'ikey_seed' || g, 'seed-' || g, 'POST', '{"id":"cart_01SEED"}', '/store/carts/cart_01SEED/complete', 'finished', 200, '{"ok":true}'
       FROM generate_series(1, $1::int) g`,
      [PLAN.seed],
    )
    await db.query('ANALYZE')

    // Statement probe (child process, its own connections through the counting proxy), with
    // the memory run (child, in-memory SQLite) alongside: neither is timed against the others.
    let phase = performance.now()
    log('statement probe, and the memory run (100k stages in a child) alongside …')
    const logPath = pgLogPath(pgMajor)
    const b = PLAN.bridge
    const memoryRun = runChild(['bridge.js', '--mode=memory', `--warm=${b.warm}`, `--total=${b.total}`], { nodeArgs: ['--expose-gc'] })
    memoryRun.catch(() => {}) // awaited below
    if (logPath !== '-') await admin.query(`ALTER DATABASE "${dbName}" SET log_statement = 'all'`)
    let probe
    try {
      probe = await runChild(['lib/probe.js', url, dbName, String(PLAN.probeK), String(POOL), logPath, ...(PG_PREPARED ? ['--pg-prepared'] : [])])
    } finally {
      if (logPath !== '-') await admin.query(`ALTER DATABASE "${dbName}" RESET log_statement`)
    }
    const memory = await memoryRun
    log(`  ${((performance.now() - phase) / 1000).toFixed(0)} s`)

    // Bridge overhead (child, in-memory SQLite, no PostgreSQL), on a quiet machine.
    phase = performance.now()
    log('bridge overhead (in-memory SQLite, child process) …')
    const bridge = { ...(await runChild(['bridge.js', '--mode=overhead', `--n=${b.n}`], { nodeArgs: ['--expose-gc'] })), memory }
    log(`  ${((performance.now() - phase) / 1000).toFixed(0)} s`)

    built = await impls.buildAll(url, POOL, { prepared: PG_PREPARED })
    const pgProbe = pgBackendProbe(admin, dbName)
    let seedNo = 0
    const seedKey = () => `seed-${1 + (seedNo++ % PLAN.seed)}`

    const scenarios = [
      ...Object.keys(PLAN.init).map((c) => ({ id: `a${c}`, kind: 'init', c: Number(c), plan: PLAN.init[c] })),
      ...Object.keys(PLAN.cycle).map((c) => ({ id: `b${c}`, kind: 'cycle', c: Number(c), plan: PLAN.cycle[c] })),
      ...Object.keys(PLAN.retrieve).map((c) => ({ id: `c${c}`, kind: 'retrieve', c: Number(c), plan: PLAN.retrieve[c] })),
    ]
    const cpu0 = cpuTimes()
    const tRuns = performance.now()
    const results = {} // results[scenario][impl] = [run…]
    const races = {} // races[impl] = [run…]
    for (let run = 0; run < RUNS; run++) {
      // Rotate the order every run so no implementation always goes first or last.
      const order = IMPLS.map((_, i) => IMPLS[(i + run) % IMPLS.length])
      log(`run ${run + 1}/${RUNS} (order: ${order.join(', ')})`)
      for (const s of scenarios) {
        // Each implementation's measurement is taken in SLICES slices, interleaved with the
        // others' (A B C D A B C D …), then merged: a burst of outside load on this shared
        // machine then falls on every implementation alike instead of on one.
        const [ops, warmup] = s.plan
        const slices = {}
        for (let k = 0; k < SLICES; k++) {
          for (const name of order) {
            const impl = built[name]
            const op =
              s.kind === 'init'
                ? () => impl.initializeRequest(randomUUID())
                : s.kind === 'cycle'
                  ? () => impls.cycle(impl)
                  : () => impl.retrieve(seedKey())
            const n = Math.round(ops / SLICES)
            const warm = k === 0 ? warmup : Math.min(warmup, s.c)
            ;(slices[name] ??= []).push(await measure({ op, ops: n, concurrency: s.c, warmup: warm, capMs: CAP_MS / SLICES, pgProbe }))
          }
        }
        for (const name of order) {
          const r = mergeSlices(slices[name])
          delete r.lat
          ;((results[s.id] ??= {})[name] ??= []).push(r)
          const errs = Object.entries(r.errors).filter(([k]) => k !== '_first')
          log(
            `  ${s.id.padEnd(4)} ${name.padEnd(8)} ${r.opsPerSec.toFixed(0).padStart(6)} ops/s  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms` +
              `  node ${r.nodeCpuPerOp.toFixed(3)} ms/op  pg ${r.pgCpuPerOp.toFixed(3)} ms/op  others ${(100 * r.others).toFixed(0)}%  steal ${(100 * r.steal).toFixed(1)}%` +
              (errs.length ? `  errors ${JSON.stringify(r.errors)}` : '') +
              (r.cappedAt ? `  CAPPED at ${r.cappedAt}` : ''),
          )
        }
      }
      for (const name of order) {
        const r = await race(built[name], db, PLAN.race)
        ;(races[name] ??= []).push(r)
        log(`  d    ${name.padEnd(8)} committed ${r.committed}/${r.allowed} allowed, bodies run ${r.bodies}, ${JSON.stringify(r.outcomes)}`)
      }
    }
    const cpu1 = cpuTimes()
    env.steal = (cpu1.steal - cpu0.steal) / Math.max(1, cpu1.total - cpu0.total)
    env.busy = 1 - (cpu1.idle - cpu0.idle) / Math.max(1, cpu1.total - cpu0.total)
    env.others = median(Object.values(results).flatMap((byImpl) => Object.values(byImpl).flat().map((r) => r.others)))
    log(`runs: ${((performance.now() - tRuns) / 1000).toFixed(0)} s`)
    const wallS = (performance.now() - tStart) / 1000
    const report = require('./lib/report').render({
      smoke: SMOKE,
      env,
      addon,
      pool: POOL,
      pgPrepared: PG_PREPARED,
      runs: RUNS,
      plan: PLAN,
      scenarios,
      results,
      races,
      probe,
      bridge,
      labels: LABEL,
      impls: IMPLS,
      wallS,
      logPath,
    })
    process.stdout.write(report.markdown + '\n')
    if (OUT) {
      fs.writeFileSync(OUT, report.markdown + '\n')
      log(`written to ${path.relative(process.cwd(), OUT)}`)
    }
    if (SMOKE) {
      const problems = report.smokeProblems
      if (problems.length) throw new Error('smoke run found problems:\n  ' + problems.join('\n  '))
      log(`bench smoke: ok in ${wallS.toFixed(1)} s`)
    }
  } finally {
    if (built) for (const i of Object.values(built)) await i.close().catch(() => {})
    if (db) await db.end().catch(() => {})
    await admin.query(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`).catch((e) => log(`could not drop ${dbName}: ${e.message}`))
    await admin.end()
  }
}

main().catch((e) => {
  console.error(e?.stack ?? e)
  process.exit(1)
})
