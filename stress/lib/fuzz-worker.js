'use strict'
// The fuzz child of stress/fuzz.js: runs fast-check properties against the addon in THIS process,
// so that a crash, an abort or a blocked event loop is observed by the parent, not suffered.
//
//   node stress/lib/fuzz-worker.js '<json config>'
//   config: { backend: 'sqlite'|'postgres', url, budgetMs, seed, props?: [names], replay?: { prop, seed, path } }
//
// Protocol (stdout, one line each, written synchronously so the last one survives an abort):
//   CASE {"p":prop,"i":run,"d":description}   before every case
//   FAIL {...}                                 a property failed (counterexample shrunk)
//   HANG {...}                                 a case did not settle in time (then exit 3)
//   DONE {...}                                 all properties ran
//   PROP_DONE / PROP_MORE {...}                a property's first / a later round ended
//   SETUP_FAILED {...}                         setup (or this file) threw (then exit 2)
// Nothing is written to stderr by this file or its modules: the parent scans stderr for panics
// and aborts.
//
// This file wires the modules in stress/lib/fuzz/: config (the argument), report (the lines
// above), cases (the running case, the per-case timeout), context (the service and its keys),
// props/ (the properties, per method, built from slots, sql, sql-checks, callbacks,
// callback-result, executors, values and oracle), runner (one property under fast-check).
const fs = require('node:fs')
const { config } = require('./fuzz/config')
const { out } = require('./fuzz/report')
const { showErr } = require('./fuzz/oracle')
const { book, strays, watchStrays, guard } = require('./fuzz/cases')
const { ctx, setup } = require('./fuzz/context')
const P = require('./fuzz/props')
const { runProperty, known, knownHits } = require('./fuzz/runner')

watchStrays()

async function main() {
  for (const sig of config.known || []) known.add(sig)
  await setup()
  const names = config.props || Object.keys(P)
  const results = []
  if (config.replay) {
    results.push(await runProperty(P, config.replay.prop, config.replay.seed, 120000, { path: config.replay.path }))
  } else {
    const deadline = Date.now() + config.budgetMs
    // Split the budget over the properties; time a property leaves unused goes to the rest, and
    // what is left after a round (properties that stopped early) goes to another round.
    for (let round = 0; round < 5 && deadline - Date.now() > 1500; round++) {
      for (let i = 0; i < names.length; i++) {
        const left = deadline - Date.now()
        if (left <= 0) break
        const slice = Math.max(200, Math.floor(left / (names.length - i)))
        const r = await runProperty(P, names[i], config.seed + i * 104729 + round * 15485863, slice)
        results.push(r)
        if (round === 0) out('PROP_DONE', r)
        else out('PROP_MORE', r)
      }
    }
  }
  if (ctx.pg) await ctx.pg.end().catch(() => {})
  await guard(ctx.service.close(), 'close')
  await new Promise((r) => setTimeout(r, 200)) // let late rejections surface
  out('DONE', { cases: book.cases, knownHits: knownHits(), results, strays })
  fs.rmSync(ctx.tmp, { recursive: true, force: true })
  process.exit(0)
}

main().catch((e) => {
  out('SETUP_FAILED', { error: showErr(e), stack: String(e && e.stack) })
  process.exit(2)
})
