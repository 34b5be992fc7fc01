#!/usr/bin/env node
'use strict'
// `npm run stress`: every scenario file in stress/ (every stress/*.js except this one; shared
// helpers live in stress/lib/), in sequence, each in its own child process with a hard
// timeout. Prints each scenario's output, then a summary table of the figures each one
// printed as a `FIGURES {json}` line; exits non-zero if any scenario failed or timed out.
//
//   node stress/run.js            full run (bounded to a few minutes)
//   node stress/run.js --short    small counts, and no PostgreSQL stop/start (runs in npm test)
//   --only=load,crash             run only these scenarios
//   --timeout=SECONDS             hard timeout per scenario (default 150, 60 with --short)
//
// Needs PostgreSQL on 127.0.0.1:5432 (TEST_PG_ADMIN_URL overrides); every scenario works in a
// database of its own, which this runner also drops if the scenario was killed.
const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { Client } = require('pg')
const { restartIfLeftStopped, ADMIN_URL } = require('./lib/common')

const argv = process.argv.slice(2)
const SHORT = argv.includes('--short')
const opt = (name) => {
  const a = argv.find((x) => x.startsWith(`--${name}=`))
  return a ? a.slice(name.length + 3) : undefined
}
const ONLY = opt('only') ? opt('only').split(',') : null
const TIMEOUT_S = Number(opt('timeout') ?? (SHORT ? 60 : 150))
const ORDER = ['load', 'crash', 'backend-loss', 'pool'] // then any other scenario, alphabetically

function discover() {
  const names = fs
    .readdirSync(__dirname)
    .filter((f) => f.endsWith('.js') && f !== 'run.js' && fs.statSync(path.join(__dirname, f)).isFile())
    .map((f) => f.slice(0, -3))
  const rank = (n) => (ORDER.includes(n) ? ORDER.indexOf(n) : ORDER.length)
  names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
  return ONLY ? names.filter((n) => ONLY.includes(n)) : names
}

/** Drop the databases a killed scenario process left behind (idem_stress_<pid>_…). */
async function dropLeftovers(pid) {
  const c = new Client({ connectionString: ADMIN_URL })
  c.on('error', () => {})
  try {
    await c.connect()
    const { rows } = await c.query('SELECT datname FROM pg_database WHERE starts_with(datname, $1)', [`idem_stress_${pid}_`])
    for (const { datname } of rows) await c.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`)
    return rows.length
  } catch {
    return 0
  } finally {
    await c.end().catch(() => {})
  }
}

let current = null // the running child, for SIGINT/SIGTERM

function runScenario(name) {
  return new Promise((resolve) => {
    const file = path.join(__dirname, `${name}.js`)
    const args = [path.join(__dirname, 'lib', 'child.js'), file, ...(SHORT ? ['--short'] : [])]
    const started = Date.now()
    // Own process group, so a timeout also kills what the scenario spawned (crash children).
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, STRESS_SHORT: SHORT ? '1' : '' },
    })
    current = child
    let figures = null
    let timedOut = false
    const tail = []
    const pipe = (stream, out) => {
      let buf = ''
      stream.on('data', (d) => {
        buf += d
        let i
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i)
          buf = buf.slice(i + 1)
          if (line.startsWith('FIGURES ')) {
            try {
              figures = JSON.parse(line.slice(8))
            } catch {
              figures = { unparsable: line.slice(8, 200) }
            }
          }
          tail.push(line)
          if (tail.length > 40) tail.shift()
          out.write(`[${name}] ${line}\n`)
        }
      })
      stream.on('end', () => buf && out.write(`[${name}] ${buf}\n`))
    }
    pipe(child.stdout, process.stdout)
    pipe(child.stderr, process.stderr)
    const kill = (sig) => {
      try {
        process.kill(-child.pid, sig)
      } catch {}
    }
    const timer = setTimeout(() => {
      timedOut = true
      console.error(`[${name}] HARD TIMEOUT after ${TIMEOUT_S} s: killing the scenario`)
      kill('SIGTERM')
      setTimeout(() => kill('SIGKILL'), 3000).unref()
    }, TIMEOUT_S * 1000)
    child.on('exit', async (code, signal) => {
      clearTimeout(timer)
      current = null
      kill('SIGKILL') // anything the scenario left running in its group
      const seconds = (Date.now() - started) / 1000
      let note = ''
      try {
        if (restartIfLeftStopped(child.pid)) note = ' (PostgreSQL was left stopped: started again)'
      } catch (e) {
        note = ` (PostgreSQL was left stopped and could not be started: ${e.message})`
      }
      if (code !== 0) {
        const dropped = await dropLeftovers(child.pid)
        if (dropped) note += ` (dropped ${dropped} leftover database(s))`
      }
      const status = timedOut ? 'TIMEOUT' : code === 0 ? 'PASS' : 'FAIL'
      if (note) console.error(`[${name}]${note}`)
      resolve({ name, status, code, signal, seconds, figures, tail })
    })
  })
}

function formatFigures(f) {
  if (!f) return '(no FIGURES line)'
  return Object.entries(f)
    .filter(([k]) => k !== 'scenario')
    .map(([k, v]) => `${k}=${typeof v === 'object' && v !== null ? JSON.stringify(v) : v}`)
    .join('  ')
}

function table(results, totalS) {
  const rows = results.map((r) => [r.name, r.status, `${r.seconds.toFixed(1)} s`, formatFigures(r.figures)])
  const head = ['scenario', 'result', 'time', 'figures']
  const w = [0, 1, 2].map((i) => Math.max(head[i].length, ...rows.map((r) => r[i].length)))
  const width = Math.max(60, (process.stdout.columns || 160) - w[0] - w[1] - w[2] - 10)
  const wrap = (s) => {
    const out = []
    let line = ''
    for (const part of s.split('  ')) {
      if (line && line.length + part.length + 2 > width) {
        out.push(line)
        line = part
      } else line = line ? `${line}  ${part}` : part
    }
    out.push(line)
    return out
  }
  const fmt = (cells) => `| ${cells.map((c, i) => (i < 3 ? c.padEnd(w[i]) : c)).join(' | ')}`
  const lines = [fmt(head), `|${w.map((x) => '-'.repeat(x + 2)).join('|')}|${'-'.repeat(Math.min(width, 40))}`]
  for (const r of rows) {
    const parts = wrap(r[3])
    lines.push(fmt([r[0], r[1], r[2], parts[0]]))
    for (const p of parts.slice(1)) lines.push(fmt(['', '', '', p]))
  }
  lines.push(`total ${totalS.toFixed(1)} s`)
  return lines.join('\n')
}

async function main() {
  const names = discover()
  if (!names.length) {
    console.error('no scenario to run')
    process.exit(2)
  }
  console.log(
    `stress: ${SHORT ? 'SHORT run (--short): small counts; the PostgreSQL stop/start part of backend-loss is SKIPPED' : 'full run'}; ` +
      `scenarios: ${names.join(', ')}; hard timeout ${TIMEOUT_S} s each`,
  )
  const started = Date.now()
  const results = []
  for (const name of names) {
    console.log(`\n=== ${name} ${'='.repeat(Math.max(0, 60 - name.length))}`)
    results.push(await runScenario(name))
  }
  const totalS = (Date.now() - started) / 1000
  console.log(`\n=== summary (${SHORT ? 'short' : 'full'} run) ${'='.repeat(40)}`)
  console.log(table(results, totalS))
  const failed = results.filter((r) => r.status !== 'PASS')
  if (failed.length) {
    console.log(`\n${failed.length} scenario(s) failed: ${failed.map((r) => `${r.name} (${r.status})`).join(', ')}`)
    for (const r of failed) {
      // The scenario's FAIL message (up to its stack trace), else the end of its output.
      const at = r.tail.findLastIndex((l) => /^(FAIL |\[.*\] (UNHANDLED|UNCAUGHT))/.test(l))
      let why = at >= 0 ? r.tail.slice(at) : r.tail.slice(-8)
      const stack = why.findIndex((l) => /^\s+at /.test(l))
      if (stack > 0) why = why.slice(0, stack)
      console.log(`  ${r.name} (${r.status}):\n    ${why.slice(0, 15).join('\n    ')}`)
    }
    process.exit(1)
  }
  console.log('\nall scenarios passed')
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (current) {
      try {
        process.kill(-current.pid, 'SIGKILL')
      } catch {}
      try {
        restartIfLeftStopped(current.pid)
      } catch {}
    }
    process.exit(130)
  })
}

main().catch((e) => {
  console.error(e.stack || e.message)
  process.exit(1)
})
