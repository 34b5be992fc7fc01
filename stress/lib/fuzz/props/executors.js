'use strict'
// Properties: withTransaction(manager), bindExecutor(query), detached(release), wrapExecutor(executor).
const { types } = require('node:util')
const { IdempotencyKeyService, TransactionManager } = require('../addon')
const { isPg } = require('../config')
const { fc, V, describe, special, specials, odd, throwingGetter } = require('../values')
const { fail, judge, judgeSync, checkKey, showErr, showOut } = require('../oracle')
const { book, call, callSync } = require('../cases')
const { ctx } = require('../context')
const { nullish, optNumArb, isolationArb, optionsInvalid } = require('../slots')
const { sqlArb, paramsArb } = require('../sql')
const { PASS_SHAPES, execModelArb, rawModelArb, buildExecutor, buildRaw, BOUND_METHODS, retriedOnReleaseRace, boundCall, inPgTransaction, judgeBound } = require('../executors')

const P = {}

/** withTransaction(manager): odd managers, native handles (live and dead), odd executors. */
P.withTransaction = () => {
  const managerArb = fc.oneof(
    { weight: 3, arbitrary: odd.map((v) => ({ kind: 'odd', v })) },
    { weight: 1, arbitrary: fc.constant({ kind: 'none' }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'liveTx' }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'deadTx' }) },
    { weight: 4, arbitrary: execModelArb.map((m) => ({ kind: 'exec', m })) },
    { weight: 1, arbitrary: specials([special('{ get query() throws }', () => throwingGetter('query')), special('{ query: 42 }', () => ({ query: 42 })), special('TransactionManager.prototype', () => TransactionManager.prototype), special('Object.create(TransactionManager.prototype)', () => Object.create(TransactionManager.prototype)), special('the service itself', () => ctx.service)]).map((v) => ({ kind: 'odd', v })) },
  )
  return fc.asyncProperty(managerArb, fc.constantFrom(...BOUND_METHODS), async (mg, method) => {
    const key = ctx.execKeys[book.uniq % ctx.execKeys.length]
    const boom = new Error('fz bound callback throws')
    const called = { ran: false }
    const run = (bound) => (method === 'workStage-throws' ? call(() => bound.workStage(key, () => { called.ran = true; throw boom }), 'bound workStage (throws)') : boundCall(bound, method, key))
    if (mg.kind === 'none') {
      const b = callSync(() => ctx.service.withTransaction())
      judgeSync(b, { mustSucceed: true, onSuccess: (s) => s === ctx.service || fail('withTransaction() did not return the service itself') })
      return
    }
    if (mg.kind === 'odd') {
      const m = mg.v.v
      let isExec
      try {
        isExec = m !== null && m !== undefined && !(m instanceof TransactionManager) && typeof m.query === 'function'
      } catch {
        isExec = false // inspecting it throws: not an executor, so invalid_data
      }
      const b = callSync(() => ctx.service.withTransaction(m))
      if (nullish(m)) return judgeSync(b, { mustSucceed: true, onSuccess: (s) => s === ctx.service || fail('withTransaction(nullish) did not return the service itself') })
      judgeSync(b, isExec ? {} : { invalid: true })
      return
    }
    if (mg.kind === 'liveTx') {
      let inner = null
      const st = await call(() => ctx.service.workStage(key, async (tx) => {
        const b = callSync(() => ctx.service.withTransaction(tx))
        if (b.k !== 'value' || !(b.v instanceof IdempotencyKeyService)) {
          inner = { problem: `withTransaction(tx) ${showOut(b)}` }
          return { recovery_point: 'fz_live' }
        }
        // Inside the stage the key's row is ours: a nested stage on it would wait on itself.
        const otherKey = ctx.execKeys[(ctx.execKeys.indexOf(key) + 1) % ctx.execKeys.length]
        inner = { o: await (method === 'workStage-throws' ? call(() => b.v.workStage(otherKey, () => { called.ran = true; throw boom }), 'nested workStage') : boundCall(b.v, method, otherKey)) }
        return { recovery_point: 'fz_live' }
      }), 'workStage(liveTx)')
      if (inner && inner.problem) fail(inner.problem)
      if (inner) {
        if (method === 'workStage-throws') judgeBound(inner.o, method, false, boom, called)
        else judge(inner.o, { onSuccess: (k) => checkKey(k) })
      }
      judge(st, {})
      return
    }
    if (mg.kind === 'deadTx') {
      let tx = null
      await call(() => ctx.service.workStage(key, async (t) => ((tx = t), { recovery_point: 'fz_dead' })), 'workStage(deadTx)')
      if (!tx) return
      const b = callSync(() => ctx.service.withTransaction(tx))
      judgeSync(b, {})
      if (b.k !== 'value') return
      const o = await run(b.v)
      if (method === 'workStage-throws') {
        judge(o, { allowSuccess: false })
      } else judge(o, { errors: [['unexpected_state', 'TRANSACTION_CLOSED']], allowSuccess: false })
      return
    }
    // An executor.
    const calls = { n: 0 }
    const ex = buildExecutor(mg.m, key, calls)
    const b = callSync(() => ctx.service.withTransaction(ex))
    if (!isPg) return judgeSync(b, { invalid: true })
    judgeSync(b, { mustSucceed: true })
    if (!(b.v instanceof IdempotencyKeyService) || b.v === ctx.service) fail(`withTransaction(executor) returned ${describe(b.v)}`)
    const o = await retriedOnReleaseRace(method, () => inPgTransaction(() => run(b.v)))
    judgeBound(o, method, PASS_SHAPES.has(mg.m.shape), boom, called)
  })
}

/** bindExecutor(query): the raw protocol, with every odd answer. */
P.bindExecutor = () =>
  fc.asyncProperty(fc.oneof({ weight: 1, arbitrary: odd.map((v) => ({ kind: 'odd', v })) }, { weight: 4, arbitrary: rawModelArb.map((m) => ({ kind: 'raw', m })) }), fc.constantFrom(...BOUND_METHODS), async (q, method) => {
    const key = ctx.execKeys[book.uniq % ctx.execKeys.length]
    if (q.kind === 'odd') return judgeSync(callSync(() => ctx.service.bindExecutor(q.v.v)), typeof q.v.v === 'function' && isPg ? {} : { invalid: true })
    const calls = { n: 0 }
    const fn = buildRaw(q.m, key, calls)
    const b = callSync(() => ctx.service.bindExecutor(fn))
    if (!isPg) return judgeSync(b, { invalid: true })
    judgeSync(b, { mustSucceed: true })
    const boom = new Error('fz raw bound callback throws')
    const called = { ran: false }
    const o = await retriedOnReleaseRace(method, () => inPgTransaction(() => (method === 'workStage-throws' ? call(() => b.v.workStage(key, () => { called.ran = true; throw boom }), 'raw bound workStage') : boundCall(b.v, method, key))))
    if (method === 'workStage-throws') return judgeBound(o, method, false, boom, called)
    // A raw function that throws or rejects breaks the documented protocol: a typed error, or that value back.
    const own = ['raw-throw', 'raw-reject'].includes(q.m.shape) ? [q.m.v.v] : []
    judge(o, { identical: own, mustSucceed: q.m.shape === 'raw-pass' && ['retrieve', 'create', 'update', 'workStage'].includes(method), onSuccess: (k) => checkKey(k) })
  })

/** IdempotencyKeyService.detached(release, options), then calls on it and on a bound copy. */
P.detached = () => {
  const optionsArb = fc.oneof(
    { weight: 2, arbitrary: fc.constant(new V('no options', undefined)) },
    { weight: 3, arbitrary: fc.record({ lockTimeoutMs: optNumArb, stageTimeoutMs: optNumArb, isolationLevel: isolationArb, maxRetries: optNumArb }, { requiredKeys: [] }).map((m) => new V(`{ ${Object.entries(m).map(([k, x]) => `${k}: ${x.d}`).join(', ')} }`, Object.fromEntries(Object.entries(m).map(([k, x]) => [k, x.v])))) },
    { weight: 1, arbitrary: odd },
  )
  const releaseArb = fc.oneof({ weight: 1, arbitrary: odd.map((v) => ({ kind: 'odd', v })) }, { weight: 3, arbitrary: rawModelArb.map((m) => ({ kind: 'raw', m })) })
  return fc.asyncProperty(releaseArb, optionsArb, execModelArb, fc.constantFrom(...BOUND_METHODS, 'unbound-retrieve', 'close'), async (rel, opt, exm, method) => {
    const key = ctx.execKeys[book.uniq % ctx.execKeys.length]
    const relCalls = { n: 0 }
    const release = rel.kind === 'odd' ? rel.v.v : buildRaw(rel.m, key, relCalls)
    let exp = {}
    if (typeof release !== 'function') exp = { invalid: true }
    else if (opt.v !== undefined && opt.v !== null) {
      if (typeof opt.v === 'function') exp = {}
      else if (typeof opt.v !== 'object') exp = { invalid: true }
      else if (!types.isProxy(opt.v)) {
        let bad = null
        try {
          bad = optionsInvalid(opt.v, { url: false })
        } catch {
          bad = null
        }
        if (bad) exp = { invalid: true }
      }
    }
    const d = callSync(() => IdempotencyKeyService.detached(release, opt.v))
    judgeSync(d, exp)
    if (d.k !== 'value') return
    if (!(d.v instanceof IdempotencyKeyService)) fail(`detached() returned ${describe(d.v)}`)
    if (method === 'unbound-retrieve') return judge(await call(() => d.v.retrieve(key), 'detached retrieve'), {})
    if (method === 'close') return judge(await call(() => d.v.close(), 'detached close'), {})
    const calls = { n: 0 }
    const ex = buildExecutor(exm, key, calls)
    const b = callSync(() => d.v.withTransaction(ex))
    judgeSync(b, { mustSucceed: true })
    const boom = new Error('fz detached callback throws')
    const called = { ran: false }
    const o = await inPgTransaction(() => (method === 'workStage-throws' ? call(() => b.v.workStage(key, () => { called.ran = true; throw boom }), 'detached bound workStage') : boundCall(b.v, method, key)))
    judgeBound(o, method, isPg && PASS_SHAPES.has(exm.shape), boom, called)
  })
}

/** index.js's exported wrapExecutor(executor): resolves { rows } or { error }, never throws or rejects. */
P.wrapExecutor = () => {
  const { wrapExecutor } = require('../addon')
  const exArb = fc.oneof({ weight: 1, arbitrary: odd.map((v) => ({ kind: 'odd', v })) }, { weight: 3, arbitrary: execModelArb.map((m) => ({ kind: 'exec', m })) })
  return fc.asyncProperty(exArb, sqlArb, paramsArb, async (ex, sql, params) => {
    const e = ex.kind === 'odd' ? ex.v.v : buildExecutor(ex.m, ctx.execKeys[0], { n: 0 })
    const w = callSync(() => wrapExecutor(e))
    if (w.k === 'throw') fail(`wrapExecutor(${describe(e)}) threw ${showErr(w.e)}`)
    if (typeof w.v !== 'function') fail(`wrapExecutor returned ${describe(w.v)}`)
    // The SQL runs on the shared verification client: only harmless text there (odd SQL is not
    // what wrapExecutor is about; fake executors get the odd SQL).
    const text = isPg ? 'SELECT 1 AS one' : sql.v
    const o = await inPgTransaction(() => call(() => w.v(text, isPg ? [] : params.v), 'the wrapped executor'))
    if (o.k !== 'ok') fail(`the wrapped executor must resolve { rows } or { error }, it ${showOut(o)}`)
    const r = o.v
    const ok = r !== null && typeof r === 'object' && (Array.isArray(r.rows) || (r.error !== null && typeof r.error === 'object' && typeof r.error.message === 'string'))
    if (!ok) fail(`the wrapped executor resolved ${describe(r)}, not { rows } or { error: { code, message } }`)
  })
}

module.exports = P
