'use strict'
// Running one fuzz case in the child: which case is running, calls classified and bounded by
// the per-case timeout (a case that does not settle is reported as HANG and the child exits).
const { CASE_TIMEOUT_MS } = require('./config')
const { out } = require('./report')
const { V, describe } = require('./values')
const { showErr } = require('./oracle')

/** The case running now, the cases run so far, a counter for unique names: one per process. */
const book = { current: { p: null, i: 0, d: '' }, cases: 0, uniq: 0 }
const strays = []

/** Record what escapes a case (reported in DONE). The entry point calls it once its modules are loaded. */
function watchStrays() {
  process.on('unhandledRejection', (reason) => {
    strays.push({ prop: book.current.p, run: book.current.i, d: book.current.d, what: `unhandled rejection: ${showErr(reason)}` })
  })
  process.on('uncaughtException', (err) => {
    strays.push({ prop: book.current.p, run: book.current.i, d: book.current.d, what: `uncaught exception: ${showErr(err)}` })
  })
}

function hang(what, hint, kind = 'hang') {
  out('HANG', { prop: book.current.p, run: book.current.i, seed: book.current.seed, path: book.current.path, d: book.current.d, what, hint, kind, cases: book.cases })
  process.exit(3)
}

/** Settle `p` within the case timeout, or report a hang and exit. */
function guard(p, what) {
  let t
  const timer = new Promise(() => {
    t = setTimeout(() => hang(`${what} did not settle within ${CASE_TIMEOUT_MS} ms`), CASE_TIMEOUT_MS)
  })
  return Promise.race([p, timer]).finally(() => clearTimeout(t))
}

/** SQL of tx.query calls not settled yet (to explain a stage that timed out). */
const pendingSql = new Set()

/** tx.query through this, so a stuck statement can be named. */
function txQuery(tx, sql, params) {
  const p = tx.query(sql, params)
  if (p instanceof Promise) {
    const entry = { sql, settled: false, closed: false }
    pendingSql.add(entry)
    p.then(
      () => (entry.settled = true),
      (e) => {
        entry.settled = true
        // Rejected only because the stage ended around it: it had not completed either.
        entry.closed = Boolean(e && e.code === 'TRANSACTION_CLOSED')
      },
    )
  }
  return p
}

/**
 * A stage of this fuzz never waits on its own: its callbacks sleep at most 15 ms. STAGE_TIMEOUT
 * therefore means a statement never completed; the connection (and on SQLite the write lock) is
 * stuck with it, so this child reports a hang and exits, and the parent starts a clean one.
 */
function checkStageTimeout(o, what, called) {
  let code
  try {
    code = o.k === 'rej' && o.e && typeof o.e === 'object' ? o.e.code : undefined
  } catch {
    code = undefined // a revoked proxy or a throwing getter thrown by the callback itself
  }
  if (code === 'STAGE_TIMEOUT') {
    const open = [...pendingSql].filter((e) => !e.settled || e.closed)
    const stuck = open.map((e) => describe(e.sql))
    const nul = open.some((e) => typeof e.sql === 'string' && e.sql.includes('\u0000'))
    const why = !called
      ? 'the callback was never called (the stage waited for its connection or the write lock: something earlier holds it)'
      : stuck.length
        ? `tx.query(${stuck.join(', ')}) never settled (the stage says rolled back, but the statement still holds the connection)`
        : 'the callback never settled'
    hang(`${what} ended with STAGE_TIMEOUT: ${why}`, nul ? 'nul-sql' : undefined)
  }
}

/** Call `fn`, classify: { k: 'ok'|'rej' } for a promise, { k: 'value'|'throw' } for a sync result. */
async function call(fn, what = 'the call') {
  let r
  try {
    r = fn()
  } catch (e) {
    return { k: 'throw', e }
  }
  if (!(r instanceof Promise)) return { k: 'value', v: r }
  return guard(r, what).then(
    (v) => ({ k: 'ok', v }),
    (e) => ({ k: 'rej', e }),
  )
}

const callSync = (fn) => {
  try {
    const v = fn()
    if (v instanceof Promise) {
      v.catch(() => {})
      return { k: 'ok', v }
    }
    return { k: 'value', v }
  } catch (e) {
    return { k: 'throw', e }
  }
}

const fresh = (tag = 'fresh') => `fz-${tag}-${process.pid}-${++book.uniq}-${Math.random().toString(36).slice(2, 8)}`

/** A key that does not exist yet: a new one for every case (shrinking replays values). */
class FreshKey extends V {
  constructor(tag) {
    super(`<a fresh key>`, undefined)
    this.tag = tag
    this.cls = 'absent'
  }
  get v() {
    if (this._case !== book.cases) {
      this._case = book.cases
      this._v = fresh(this.tag)
    }
    return this._v
  }
  set v(_) {}
}

module.exports = { book, strays, watchStrays, hang, guard, pendingSql, txQuery, checkStageTimeout, call, callSync, fresh, FreshKey }
