'use strict'
// Property: forTenant(tenant) and the scoped copy.
const { fc, describe, wrap, odd, anyString } = require('../values')
const { fail, judge, judgeSync, checkKey, showOut } = require('../oracle')
const { call, callSync } = require('../cases')
const { ctx } = require('../context')
const { nullish } = require('../slots')

const P = {}

/** forTenant(tenant), then the scoped copy's initializeRequest and retrieve. */
P.forTenant = () => {
  const tenantArb = fc.oneof(
    { weight: 3, arbitrary: wrap(fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 130 })) },
    { weight: 2, arbitrary: anyString },
    { weight: 2, arbitrary: odd },
  )
  const keyArbT = fc.oneof({ weight: 3, arbitrary: wrap(fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 40 })) }, { weight: 1, arbitrary: odd })
  return fc.asyncProperty(tenantArb, keyArbT, async (t, k) => {
    const valid = typeof t.v === 'string' && /^[\x20-\x2e\x30-\x7e]{1,128}$/.test(t.v)
    const s = callSync(() => ctx.service.forTenant(t.v))
    judgeSync(s, { invalid: !valid })
    if (s.k !== 'value') return
    if (s.v.tenant !== t.v) fail(`forTenant(${describe(t.v)}).tenant is ${describe(s.v.tenant)}`)
    const keyOk = typeof k.v === 'string' && /^[\x20-\x7e]{1,255}$/.test(k.v)
    const o = await call(() => s.v.initializeRequest(k.v, 'POST', null, '/fz-tenant'), 'scoped initializeRequest')
    judge(o, {
      ...(keyOk ? { errors: [['conflict', 'IDEMPOTENCY_KEY_LOCKED'], ['conflict', 'IDEMPOTENCY_KEY_REUSED'], ['duplicate_error', 'IDEMPOTENCY_KEY_REUSED']] } : { invalid: nullish(k.v) || k.v === '' ? false : true }),
      onSuccess: (key) => {
        checkKey(key)
        if (keyOk && key.idempotency_key !== k.v) fail(`the scoped copy returned key ${describe(key.idempotency_key)} for ${describe(k.v)}`)
      },
    })
    if (o.k !== 'ok') return
    // Stored under the tenant: the unscoped service finds it by the stored form only.
    const stored = await call(() => ctx.service.retrieve(`${t.v}/${o.v.idempotency_key}`), 'retrieve(stored form)')
    if (stored.k !== 'ok' || stored.v.id !== o.v.id) fail(`the scoped key is not stored as <tenant>/<key>: ${showOut(stored)}`)
  })
}

module.exports = P
