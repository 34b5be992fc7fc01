'use strict'
// Property: reap(options) and listAbandoned(options).
const { fc, V, describe, wrap, odd, numberArb } = require('../values')
const { fail, judge, checkKey } = require('../oracle')
const { call } = require('../cases')
const { ctx, ensureKeys } = require('../context')
const { nullish, positive, numOptOk } = require('../slots')

const P = {}

/** reap(options) and listAbandoned(options). */
P.reapAndList = () => {
  const fieldArb = fc.oneof({ weight: 2, arbitrary: wrap(fc.integer({ min: 0, max: 10 ** 9 })) }, { weight: 2, arbitrary: fc.constant(new V('absent', undefined)) }, { weight: 2, arbitrary: numberArb }, { weight: 1, arbitrary: odd })
  const optsArb = (a, b) =>
    fc.oneof(
      { weight: 4, arbitrary: fc.record({ [a]: fieldArb, [b]: fieldArb }, { requiredKeys: [] }).map((m) => Object.assign(new V(`{ ${Object.entries(m).map(([k, x]) => `${k}: ${x.d}`).join(', ')} }`, Object.fromEntries(Object.entries(m).map(([k, x]) => [k, x.v]))), { fields: true })) },
      { weight: 1, arbitrary: fc.constant(new V('no options', undefined)) },
      { weight: 2, arbitrary: odd },
    )
  return fc.asyncProperty(fc.oneof(optsArb('olderThanMs', 'batchSize').map((o) => ['reap', o]), optsArb('idleMs', 'limit').map((o) => ['listAbandoned', o])), async ([m, opt]) => {
    const v = opt.v
    let exp = {}
    if (!nullish(v) && typeof v !== 'object') exp = { invalid: true }
    else if (opt.fields && Object.values(v).some((x) => !numOptOk(x))) exp = { invalid: true }
    const o = await call(() => ctx.service[m](v), m)
    judge(o, {
      ...exp,
      onSuccess: (r) => {
        if (m === 'reap' && !(Number.isInteger(r) && r >= 0)) fail(`reap resolved ${describe(r)}`)
        if (m === 'listAbandoned') {
          if (!Array.isArray(r)) fail(`listAbandoned resolved ${describe(r)}`)
          r.forEach((k, i) => checkKey(k, `listAbandoned()[${i}]`))
          if (opt.fields && positive(v.limit) && r.length > v.limit) fail(`listAbandoned returned ${r.length} keys, limit ${v.limit}`)
        }
      },
    })
    if (m === 'reap' && o.k === 'ok' && o.v > 0) await ensureKeys()
  })
}

module.exports = P
