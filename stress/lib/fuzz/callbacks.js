'use strict'
// Stage callbacks: a model (plain data, printable) turned into a function at run time.
const { IdempotencyKeyService, TransactionManager } = require('./addon')
const { isPg } = require('./config')
const { fc, V, describe, wrap, special, specials, odd, anyString, jsonData, numberArb, GETTER_THROWS } = require('./values')
const { checkKey, deepEq, untyped, showErr, showOut, isFinding } = require('./oracle')
const { call, callSync, txQuery, fresh } = require('./cases')
const { ctx } = require('./context')
const { TXCTL, UNDOING, sqlArb, paramsArb } = require('./sql')
const { judgeQuery } = require('./sql-checks')

const rpArb = fc.oneof(
  { weight: 4, arbitrary: wrap(fc.constantFrom('fz_a', 'fz_b', 'fz_c', 'started', 'finished')) },
  { weight: 2, arbitrary: anyString },
  { weight: 1, arbitrary: odd },
)
const codeArb = fc.oneof(
  { weight: 4, arbitrary: wrap(fc.integer({ min: 100, max: 599 })) },
  { weight: 1, arbitrary: wrap(fc.integer()) },
  { weight: 2, arbitrary: numberArb },
  { weight: 2, arbitrary: odd },
)
const bodyArb = fc.oneof({ weight: 3, arbitrary: jsonData }, { weight: 2, arbitrary: odd })

const stageObjArb = fc
  .record({ recovery_point: rpArb, response_code: codeArb, response_body: bodyArb }, { requiredKeys: [] })
  .map((m) => ({ t: 'obj', m }))
const getterResultArb = fc.constantFrom('recovery_point', 'response_code', 'response_body').map((f) => ({ t: 'getter', f }))
const resultArb = fc.oneof(
  { weight: 5, arbitrary: stageObjArb },
  { weight: 3, arbitrary: odd.map((v) => ({ t: 'odd', v })) },
  { weight: 1, arbitrary: getterResultArb },
)
const thrownArb = fc.oneof(
  { weight: 3, arbitrary: odd },
  { weight: 1, arbitrary: specials([special('new Error("boom")', () => new Error('boom')), special('Error with custom props', () => Object.assign(new TypeError('custom'), { type: 'mine', code: 42, extra: { a: 1 } })), special('the getter marker', () => GETTER_THROWS)]) },
)
const endArb = fc.oneof(
  { weight: 6, arbitrary: resultArb.map((r) => ({ how: 'return', r })) },
  { weight: 2, arbitrary: thrownArb.map((t) => ({ how: 'throw', t })) },
  { weight: 1, arbitrary: thrownArb.map((t) => ({ how: 'reject-promise', t })) },
  { weight: 1, arbitrary: stageObjArb.map((r) => ({ how: 'return-thenable', r })) },
  { weight: 1, arbitrary: thrownArb.map((t) => ({ how: 'thenable-rejects', t })) },
  { weight: 1, arbitrary: stageObjArb.map((r) => ({ how: 'return-later', r })) },
)
const opArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ op: 'write' }) },
  { weight: 1, arbitrary: fc.constant({ op: 'active' }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('query'), sql: sqlArb, params: paramsArb, caught: fc.boolean({ trueWeight: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('txctl'), sql: fc.constantFrom(...TXCTL) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('unawaited'), sql: wrap(fc.constantFrom('SELECT 1 AS one', isPg ? 'SELECT pg_sleep(0.05)' : 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000) SELECT count(*) AS n FROM c')) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('parallel'), n: fc.integer({ min: 2, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('nested'), m: fc.constantFrom('retrieve', 'create') }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('sleep'), ms: fc.integer({ min: 0, max: 15 }) }) },
)
const callbackArb = fc.oneof(
  { weight: 1, arbitrary: odd.map((v) => ({ kind: 'notfn', v })) },
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('fn'), style: fc.constantFrom('async', 'sync'), ops: fc.array(opArb, { maxLength: 3 }), end: endArb }) },
)

function stageObject(m) {
  const o = {}
  for (const [k, x] of Object.entries(m)) o[k] = x.v
  return o
}

function resultValue(r) {
  if (r.t === 'obj') return stageObject(r.m)
  if (r.t === 'odd') return r.v.v
  return Object.defineProperty({ recovery_point: 'fz_getter' }, r.f, {
    enumerable: true,
    get() {
      throw GETTER_THROWS
    },
  })
}

/**
 * Build the callback of a model. `rec` records what happened: calls, what escaped (threw), the
 * result returned, writes done, whether the run was "tainted" (state no longer predictable).
 */
function buildCallback(model, key, marker, rec, tag) {
  const ops = async (tx) => {
    for (const op of model.ops) {
      switch (op.op) {
        case 'write': {
          const o = await call(() => tx.query('UPDATE idempotency_key SET request_path = $1 WHERE idempotency_key = $2', [marker, key]), 'tx.query(write)')
          judgeQuery(o, null, null, 'the marker write')
          if (o.k === 'ok') rec.wrote = true
          else rec.failedQuery = true
          break
        }
        case 'active':
          if (tx.active !== true) rec.problems.push(`tx.active is ${describe(tx.active)} inside the callback`)
          break
        case 'query': {
          const o = await call(() => txQuery(tx, op.sql.v, op.params.v), 'tx.query')
          rec.queries.push({ sql: op.sql, params: op.params, o })
          if (UNDOING.has(op.sql.v)) rec.undone = true
          if (o.k === 'rej') rec.failedQuery = true
          if (o.k === 'rej' && !op.caught) throw o.e
          break
        }
        case 'txctl': {
          const o = await call(() => txQuery(tx, op.sql), `tx.query(${op.sql})`)
          rec.queries.push({ sql: new V(op.sql, op.sql), params: new V('no params', undefined), o })
          rec.txctl = true
          if (o.k === 'rej') rec.failedQuery = true
          break
        }
        case 'unawaited': {
          let p
          try {
            p = tx.query(op.sql.v)
          } catch (e) {
            rec.problems.push(`unawaited tx.query threw synchronously ${showErr(e)}`)
            break
          }
          rec.tainted = true
          rec.floating.push(p.then((v) => ({ k: 'ok', v }), (e) => ({ k: 'rej', e })))
          break
        }
        case 'parallel': {
          const os = await Promise.all(Array.from({ length: op.n }, (_, i) => call(() => tx.query(isPg ? 'SELECT $1::int AS i' : 'SELECT $1 AS i', [i]), 'parallel tx.query')))
          os.forEach((o, i) => {
            if (o.k === 'ok' && !deepEq(o.v, [{ i }])) rec.problems.push(`parallel tx.query ${i} returned ${describe(o.v)}`)
            if (o.k === 'rej') {
              rec.failedQuery = true
              const why = untyped(o.e)
              if (why) rec.problems.push(`parallel tx.query: ${why}`)
            }
          })
          break
        }
        case 'nested': {
          const bound = callSync(() => ctx.service.withTransaction(tx))
          if (bound.k !== 'value' || !(bound.v instanceof IdempotencyKeyService)) {
            rec.problems.push(`withTransaction(tx) inside a stage: ${showOut(bound)}`)
            break
          }
          const o = await call(() => (op.m === 'retrieve' ? bound.v.retrieve(key) : bound.v.create({ idempotency_key: fresh('nested') })), `bound ${op.m}`)
          if (o.k === 'rej') {
            rec.failedQuery = true
            const why = untyped(o.e)
            if (why) rec.problems.push(`withTransaction(tx).${op.m}: ${why}`)
          } else if (o.k === 'ok') {
            try {
              checkKey(o.v, `withTransaction(tx).${op.m}`)
            } catch (e) {
              rec.problems.push(e.message)
            }
          }
          break
        }
        case 'sleep':
          await new Promise((r) => setTimeout(r, op.ms))
          break
        default:
      }
    }
  }
  const finish = () => {
    const end = model.end
    switch (end.how) {
      case 'return': {
        const R = resultValue(end.r)
        rec.result = { R }
        return R
      }
      case 'throw':
        rec.escaped = { v: end.t.v }
        throw end.t.v
      case 'reject-promise':
        rec.escaped = { v: end.t.v }
        return Promise.reject(end.t.v)
      case 'return-thenable': {
        const R = stageObject(end.r.m)
        // Only a synchronous callback hands the addon the thenable itself: an async one adopts it.
        rec.result = { R, thenable: model.style === 'sync' && model.ops.length === 0 }
        return {
          then(resolve) {
            resolve(R)
          },
        }
      }
      case 'thenable-rejects':
        rec.escaped = { v: end.t.v }
        return {
          then(_, reject) {
            reject(end.t.v)
          },
        }
      case 'return-later': {
        const R = stageObject(end.r.m)
        rec.result = { R }
        return new Promise((r) => setTimeout(() => r(R), 5))
      }
      default:
        throw new Error('unknown end')
    }
  }
  const wrapped = (tx) => {
    rec.calls++
    rec.tx = tx
    if (rec.calls > 1) {
      // A re-run (serialization failure): start over.
      rec.result = undefined
      rec.escaped = undefined
    }
    if (!(tx instanceof TransactionManager) && tag !== 'bound') rec.problems.push(`the callback got ${describe(tx)} instead of a TransactionManager`)
    if (model.style === 'sync' && model.ops.length === 0) {
      return finish()
    }
    return (async () => {
      try {
        await ops(tx)
      } catch (e) {
        if (isFinding(e)) {
          rec.problems.push(e.message)
          rec.escaped = { v: e }
          throw e
        }
        rec.escaped = { v: e }
        throw e
      }
      const r = finish()
      return r
    })()
  }
  return wrapped
}

module.exports = { rpArb, codeArb, bodyArb, callbackArb, buildCallback }
