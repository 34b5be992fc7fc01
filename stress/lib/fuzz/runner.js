'use strict'
// Running one property: fast-check with the time limit checked between cases, a CASE line
// before every case, a FAIL line per distinct failure (shrunk), failures already known skipped.
const { fc } = require('./values')
const { isFinding, showErr } = require('./oracle')
const { config, T0, isPg } = require('./config')
const { out, signature, safeStack } = require('./report')
const { book, hang, pendingSql } = require('./cases')
const { STAGE_PROPS, writeLockHeld } = require('./context')

const known = new Set()
let knownHits = 0

/** Run property `name` of `P` from `seed` for `budgetMs` (or one case: extra.path), writing CASE and FAIL lines. */
async function runProperty(P, name, seed, budgetMs, extra = {}) {
  const base = P[name]()
  let run = 0
  let failedInCheck = false
  let checkSeed = seed
  const originalRun = base.run.bind(base)
  let stopAt = Infinity
  base.run = (v, ...rest) => {
    // The time limit, checked BETWEEN cases: fast-check's interruptAfterTimeLimit races the case
    // that is running and abandons it, which would let it overlap the next case.
    if (Date.now() > stopAt) return Promise.resolve(new fc.PreconditionFailure(true))
    run++
    book.cases++
    let d
    try {
      d = fc.stringify(v)
    } catch {
      d = '<undescribable>'
    }
    if (d.length > 600) d = d.slice(0, 600) + '…'
    pendingSql.clear()
    book.current = { p: name, i: run, seed: checkSeed, path: failedInCheck ? null : String(run - 1), d }
    out('CASE', { p: name, i: run, s: checkSeed, path: book.current.path, t: Date.now() - T0, d })
    return Promise.resolve(originalRun(v, ...rest)).then(async (r) => {
      if (!isPg && STAGE_PROPS.has(name)) {
        const held = await writeLockHeld()
        // Every later write of this process would wait for it: report this case and start afresh.
        if (held) hang(`this case left the SQLite write lock held after it settled: ${held}; every later write waits busyTimeoutMs, then fails with DATABASE_BUSY`)
      }
      if (r && 'error' in r) {
        if (known.has(signature(r.error))) {
          knownHits++
          return null // reported already: keep exploring for other failures
        }
        failedInCheck = true
      }
      return r
    })
  }
  const started = Date.now()
  const deadline = started + budgetMs
  const failures = []
  let numRuns = 0
  for (let attempt = 0; attempt < 6; attempt++) {
    const left = deadline - Date.now()
    if (left < 100 && !extra.path) break
    failedInCheck = false
    stopAt = extra.path ? Infinity : deadline
    const params = { seed: checkSeed, numRuns: extra.path ? 1 : 1e9, markInterruptAsFailure: false }
    if (extra.path) params.path = extra.path
    const runsBefore = run
    const r = await fc.check(base, params)
    numRuns += r.numRuns
    // Interrupted by the time limit before a case completed: fast-check calls that failed.
    if (!r.failed || (r.counterexample === null && r.errorInstance === null)) break
    const e = r.errorInstance
    const sig = signature(e)
    known.add(sig)
    let counterexample
    try {
      counterexample = fc.stringify(r.counterexample)
    } catch {
      counterexample = '<undescribable>'
    }
    const f = {
      prop: name,
      backend: config.backend,
      seed: checkSeed,
      path: r.counterexamplePath,
      sig,
      error: isFinding(e) ? e.message : `HARNESS/unexpected: ${showErr(e)} ${r.errorInstance === undefined || r.errorInstance === null ? String(r.error) : ''} ${safeStack(e)}`,
      counterexample: counterexample.length > 3000 ? counterexample.slice(0, 3000) + '…' : counterexample,
      shrinks: r.numShrinks,
      runsToFind: run - runsBefore - r.numShrinks,
    }
    failures.push(f)
    out('FAIL', f)
    if (extra.path) break
    checkSeed += 7919
  }
  return { prop: name, runs: run, numRuns, ms: Date.now() - started, failures: failures.length }
}

module.exports = { runProperty, known, knownHits: () => knownHits }
