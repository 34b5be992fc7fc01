'use strict'
// Properties: workStage(key, callback, options), tx.query inside a stage, the handle after it.
const { types } = require('node:util')
const { isPg } = require('../config')
const { fc, V, describe, special, specials, odd, GETTER_THROWS, throwingGetter, throwingProxy } = require('../values')
const { fail, judge, judgeSync, checkKey, deepEq, jsonMismatch, untyped, showErr, showOut } = require('../oracle')
const { book, guard, call, callSync, checkStageTimeout, txQuery } = require('../cases')
const { ctx, state, tryState, sameState } = require('../context')
const { nullish, keyArb, keyArgProblem } = require('../slots')
const { SESSION, sqlArb, paramsArb, riskySql } = require('../sql')
const { isolated, probeAfter, judgeQueries } = require('../sql-checks')
const { rpArb, callbackArb, buildCallback } = require('../callbacks')
const { classifyResult } = require('../callback-result')

const P = {}

/** workStage(key, callback, options): callback results, thrown values, odd SQL, atomicity. */
P.workStage = () => {
  const optionsArb = fc.oneof(
    { weight: 4, arbitrary: fc.constant(new V('no options', undefined)) },
    { weight: 2, arbitrary: fc.constant(null).map(() => Object.assign(new V('{ recoveryPoint: <current> }', undefined), { current: true })) },
    { weight: 2, arbitrary: rpArb.map((x) => new V(`{ recoveryPoint: ${x.d} }`, { recoveryPoint: x.v })) },
    { weight: 1, arbitrary: odd },
    { weight: 1, arbitrary: specials([special('{ getter recoveryPoint throws }', () => throwingGetter('recoveryPoint')), special('Proxy whose traps throw', () => throwingProxy())]) },
  )
  return fc.asyncProperty(keyArb(), callbackArb, optionsArb, async (k0, cb, opt) => {
    // An odd string may name a key an earlier case created: then it is an existing key.
    const k = k0.cls === 'odd' && typeof k0.v === 'string' && (await tryState(k0.v)) ? Object.assign(new V(k0.d, k0.v), { cls: 'existing' }) : k0
    const before = k.cls === 'existing' ? await state(k.v) : null
    const options = opt.current ? { recoveryPoint: before ? before.recovery_point : 'started' } : opt.v
    const marker = `/fz-marker-${++book.uniq}`
    const rec = { calls: 0, problems: [], queries: [], floating: [] }
    const fn = cb.kind === 'fn' ? buildCallback(cb, k.v, marker, rec, 'native') : cb.v.v
    const riskyOps = cb.kind === 'fn' ? cb.ops.filter((op) => op.op === 'txctl' || (op.op === 'query' && riskySql(op.sql.v))) : []
    const svc = riskyOps.length ? await isolated() : ctx.service
    // The expectation before the callback: bad arguments, absent key, stale recovery point.
    let pre = null
    if (keyArgProblem(k)) pre = 'invalid'
    else if (typeof fn !== 'function') pre = 'invalid'
    else if (options !== undefined && options !== null) {
      if (typeof options !== 'object' || types.isProxy(options)) pre = typeof options === 'object' ? 'any' : 'invalid'
      else {
        const d = Object.getOwnPropertyDescriptor(options, 'recoveryPoint')
        if (d && d.get) pre = 'invalid'
        else if (!nullish(options.recoveryPoint) && typeof options.recoveryPoint !== 'string') pre = 'invalid'
        else if (before && typeof options.recoveryPoint === 'string' && options.recoveryPoint.toWellFormed() !== before.recovery_point) pre = 'stale'
      }
    }
    if (!pre && k.cls === 'absent') pre = 'absent'
    const o = await call(() => svc.workStage(k.v, fn, options), 'workStage')
    checkStageTimeout(o, 'workStage', rec.calls > 0)
    if (svc !== ctx.service) await probeAfter(svc, riskyOps.map((op) => JSON.stringify(op.op === 'txctl' ? op.sql : op.sql.v)).join(', '), riskyOps.some((op) => op.op === 'query' && SESSION.test(op.sql.v)))
    const floating = await guard(Promise.all(rec.floating), 'an unawaited tx.query')
    for (const f of floating) {
      if (f.k === 'rej') {
        const why = untyped(f.e)
        if (why) fail(`an unawaited tx.query: ${why}`)
      } else if (!Array.isArray(f.v)) fail(`an unawaited tx.query resolved to ${describe(f.v)}`)
    }
    judgeQueries(rec.queries.map((q) => ({ o: q.o, sql: q.sql.v, params: q.params.v })))
    if (rec.problems.length) fail(rec.problems.join('; '))
    if (pre === 'any') {
      // Options that are a Proxy: reading `recoveryPoint` through it may throw (refused, a
      // typed error) or work (the stage runs, and is judged like any other below).
      if (!rec.calls) {
        judge(o, {})
        return
      }
      pre = null
    }
    if (pre) {
      if (rec.calls) fail(`the callback ran although the stage had to be refused (${pre})`)
      if (pre === 'invalid') judge(o, { invalid: true })
      else if (pre === 'stale') judge(o, { errors: [['conflict', 'IDEMPOTENCY_KEY_STALE']], allowSuccess: false })
      else if (pre === 'absent') judge(o, { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND']], allowSuccess: false })
      else judge(o, {})
      if (before) {
        const after = await state(k.v)
        if (!after || !sameState(before, after)) fail(`a refused stage changed the key: ${describe(before)} → ${describe(after)}`)
      }
      return
    }
    if (cb.kind === 'notfn') {
      // A foreign function (Math.max, a class…) as the callback: whatever it returns or throws
      // (a class throws its own TypeError when called), the stage settles: a key or a rejection.
      if (o.k === 'ok') checkKey(o.v)
      else if (o.k !== 'rej') judge(o, {})
      return
    }
    if (k.cls !== 'existing') {
      // An odd string key that happens to be absent (or refused).
      judge(o, {})
      if (o.k === 'ok') checkKey(o.v)
      return
    }
    if (!rec.calls) {
      judge(o, { errors: [['conflict', 'IDEMPOTENCY_KEY_LOCKED']], allowSuccess: false })
      return
    }
    // The callback ran.
    if (rec.escaped) {
      if (cb.end.how === 'thenable-rejects' && cb.style === 'sync' && cb.ops.length === 0 && !(o.k === 'rej' && Object.is(o.e, rec.escaped.v)) && !rec.failedQuery) {
        fail(`the callback returned a thenable (PromiseLike, not a native Promise); the stage did not await it: it rejects with ${describe(rec.escaped.v)}, the stage ${showOut(o)}`)
      }
      judge(o, { mustBeIdentical: [rec.escaped.v], identical: [rec.escaped.v] })
    } else {
      const R = rec.result.R
      const cls = classifyResult(R)
      const tainted = rec.tainted || rec.failedQuery || rec.txctl
      if (rec.result.thenable && !tainted && o.k === 'ok') {
        const ok = cls.rp !== undefined ? o.v.recovery_point === cls.rp.toWellFormed() : !cls.invalid && !cls.getterInvalid && o.v.recovery_point === 'finished' && (cls.finish && cls.finish.code !== undefined ? o.v.response_code === cls.finish.code : true) && (cls.finish && !cls.finish.bodyAbsent && !cls.finish.bodyLoose ? deepEq(o.v.response_body, cls.finish.body) : true)
        if (!ok) fail(`the callback returned a thenable (PromiseLike, not a native Promise); the stage did not await it: it resolves to ${describe(R)}, the stage stored recovery_point ${describe(o.v.recovery_point)}, response_code ${describe(o.v.response_code)}, response_body ${describe(o.v.response_body)}`)
      }
      if (cls.thenThrows && o.k === 'rej' && deepEq(o.e, cls.thenThrows.v)) {
        // What looking up `then` on the returned Proxy throws: the callback's own rejection.
      } else if (tainted) judge(o, {})
      else if (cls.invalid) judge(o, { invalid: true })
      else if (cls.getterInvalid) judge(o, { identical: [GETTER_THROWS], errors: [['invalid_data', 'INVALID_ARGUMENT']], allowSuccess: false })
      else if (cls.any || cls.lenient) judge(o, {})
      else if (cls.nul && isPg) judge(o, { errors: [['database_error', null], ['invalid_data', 'INVALID_ARGUMENT']] })
      else judge(o, { mustSucceed: true })
      if (o.k === 'ok') {
        checkKey(o.v)
        if (o.v.idempotency_key !== k.v) fail(`the stage returned key ${describe(o.v.idempotency_key)}`)
        if (cls.rp !== undefined && !cls.lenient && o.v.recovery_point !== cls.rp.toWellFormed()) fail(`recovery_point is ${describe(o.v.recovery_point)}, the callback returned ${describe(cls.rp)}${rec.result.thenable ? ' (through a thenable)' : ''}`)
        if (cls.rp !== undefined && (o.v.response_code !== before.response_code || !deepEq(o.v.response_body, before.response_body))) fail(`a result with a recovery_point changed the response too (SPEC §4: only recovery_point changes): ${describe(before.response_code)}/${describe(before.response_body)} → ${describe(o.v.response_code)}/${describe(o.v.response_body)}`)
        if (cls.finish) {
          if (o.v.recovery_point !== 'finished') fail(`recovery_point is ${describe(o.v.recovery_point)} after a result without one`)
          const code = cls.finish.code === undefined ? before.response_code : cls.finish.code
          if (o.v.response_code !== code) fail(`response_code is ${describe(o.v.response_code)}, expected ${describe(code)}`)
          const body = cls.finish.bodyAbsent ? before.response_body : cls.finish.body
          const mm = cls.finish.bodyLoose ? null : jsonMismatch(o.v.response_body, body)
          if (mm) fail(`workStage response_body: ${mm}`)
        }
      }
    }
    // Atomicity: the key changed exactly when the stage says it committed.
    const after = await state(k.v)
    if (!after) fail('the key disappeared')
    if (o.k === 'rej') {
      if (!sameState(before, after)) fail(`the stage failed (${showErr(o.e)}) but the key changed: ${describe(before)} → ${describe(after)}`)
    } else {
      for (const f of ['recovery_point', 'response_code']) if (after[f] !== o.v[f]) fail(`the stage returned ${f} ${describe(o.v[f])} but the database has ${describe(after[f])}`)
      if (!deepEq(after.response_body, o.v.response_body)) fail(`the stage returned response_body ${describe(o.v.response_body)} but the database has ${describe(after.response_body)}`)
      if (rec.wrote && !rec.undone && after.request_path !== marker) fail(`the stage succeeded but the callback's write is gone (request_path ${describe(after.request_path)})`)
    }
    // The handle is closed afterwards, and (SQLite) the write lock released.
    if (rec.tx && rec.tx.active !== false) fail(`tx.active is ${describe(rec.tx.active)} after the stage settled`)
  })
}

/** tx.query(sql, params) with every odd value, inside a stage, then the stage outcome. */
P.txQuery = () =>
  fc.asyncProperty(fc.constantFrom(...ctx.qKeys), fc.array(fc.record({ sql: sqlArb, params: paramsArb }), { minLength: 1, maxLength: 4 }), fc.boolean(), async (key, qs, rollback) => {
    const results = []
    const marker = new Error('fz rollback marker')
    let called = false
    const risky = qs.filter((q) => riskySql(q.sql.v))
    const svc = risky.length ? await isolated() : ctx.service
    const o = await call(
      () =>
        svc.workStage(key, async (tx) => {
          called = true
          results.length = 0
          for (const q of qs) results.push(await call(() => txQuery(tx, q.sql.v, q.params.v), 'tx.query'))
          if (rollback) throw marker
          return { recovery_point: 'fz_q' }
        }),
      'workStage(txQuery)',
    )
    checkStageTimeout(o, 'workStage', called)
    if (svc !== ctx.service) await probeAfter(svc, risky.map((q) => JSON.stringify(q.sql.v)).join(', '), risky.some((q) => SESSION.test(q.sql.v)))
    judgeQueries(results.map((o, i) => ({ o, sql: qs[i].sql.v, params: qs[i].params.v })))
    if (!called) judge(o, { errors: [['conflict', 'IDEMPOTENCY_KEY_LOCKED']], allowSuccess: false })
    else if (rollback) judge(o, { mustBeIdentical: [marker], identical: [marker] })
    else judge(o, { onSuccess: (k) => checkKey(k) })
  })

/** A stage's handle after the stage: every use is a typed error (TRANSACTION_CLOSED). */
P.txAfterStage = () =>
  fc.asyncProperty(sqlArb, paramsArb, fc.constantFrom('query', 'withTransaction.retrieve', 'withTransaction.workStage'), fc.boolean(), async (sql, params, use, failed) => {
    let tx = null
    const key = ctx.keys[book.uniq % ctx.keys.length]
    const boom = new Error('fz stage fails')
    const st = await call(() => ctx.service.workStage(key, async (t) => {
      tx = t
      if (failed) throw boom
      return { recovery_point: 'fz_after' }
    }), 'workStage')
    if (!tx) return judge(st, {})
    if (tx.active !== false) fail(`tx.active is ${describe(tx.active)} after the stage`)
    const closed = { errors: [['unexpected_state', 'TRANSACTION_CLOSED'], ['invalid_data', 'INVALID_ARGUMENT']], allowSuccess: false }
    if (use === 'query') {
      const o = await call(() => tx.query(sql.v, params.v), 'tx.query after the stage')
      judge(o, closed)
    } else {
      const b = callSync(() => ctx.service.withTransaction(tx))
      judgeSync(b, {})
      if (b.k !== 'value') return
      const o =
        use === 'withTransaction.retrieve'
          ? await call(() => b.v.retrieve(key), 'bound retrieve after the stage')
          : await call(() => b.v.workStage(key, () => ({ recovery_point: 'never' })), 'bound workStage after the stage')
      judge(o, closed)
    }
  })

module.exports = P
