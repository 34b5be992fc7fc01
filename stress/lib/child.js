'use strict'
// Runs one scenario file in this process: `node stress/lib/child.js <file> [--short]` (what
// run.js spawns), or `node stress/<scenario>.js [--short]` (every scenario ends with
// `if (require.main === module) require('./lib/child').runScenario(__filename)`).
//
// A scenario either exports `async main({ short })` (called here; its resolved value, if an
// object and no FIGURES line was printed yet, is printed as the FIGURES line) or runs itself
// when required. Exit code 0 only if main resolved and no unhandled rejection or uncaught
// exception happened meanwhile; the process exits shortly after main settles, so a leaked
// handle cannot keep it alive.
const path = require('node:path')

function runScenario(scenarioFile) {
  const file = path.resolve(scenarioFile)
  const short = process.argv.includes('--short') || process.env.STRESS_SHORT === '1'
  const name = path.basename(file, '.js')
  const stray = []

  process.on('unhandledRejection', (reason) => {
    const text = reason instanceof Error ? reason.stack : String(reason)
    stray.push(`unhandled rejection: ${text}`)
    console.error(`[${name}] UNHANDLED REJECTION: ${text}`)
  })
  process.on('uncaughtException', (err) => {
    stray.push(`uncaught exception: ${err && err.stack}`)
    console.error(`[${name}] UNCAUGHT EXCEPTION: ${err && err.stack}`)
  })
  process.on('exit', (code) => {
    if (stray.length && code === 0) process.exitCode = 1
  })

  const started = Date.now()
  const finish = (code) => {
    // Let late rejections surface before judging, then exit regardless of open handles.
    setTimeout(() => {
      if (stray.length) {
        console.error(`FAIL ${name}: ${stray.length} unhandled rejection(s) / uncaught exception(s)`)
        code = 1
      } else if (code === 0) console.log(`PASS ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`)
      process.exit(code)
    }, 300)
  }

  ;(async () => {
    const mod = require(file)
    const main = typeof mod === 'function' ? mod : mod && typeof mod.main === 'function' ? mod.main : null
    if (!main) return null // the file ran itself on require and sets its own exit code
    const result = await main({ short })
    if (result && typeof result === 'object' && !global.__stressFiguresPrinted) {
      console.log('FIGURES ' + JSON.stringify(result))
    }
    return 0
  })().then(
    (code) => {
      if (code !== null) finish(code)
    },
    (err) => {
      console.error(`FAIL ${name}: ${err && err.stack ? err.stack : String(err)}`)
      finish(1)
    },
  )
}

module.exports = { runScenario }
if (require.main === module) runScenario(process.argv[2])
