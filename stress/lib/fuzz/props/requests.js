'use strict'
// Properties: initializeRequest(headerKey, method, params, path) and create(payload).
const { fc, V, describe, wrap, special, specials, odd, anyString, jsonData, throwingGetter, throwingProxy } = require('../values')
const { fail, judge, checkKey, expectedJson, jsonMismatch, showErr } = require('../oracle')
const { call, FreshKey } = require('../cases')
const { ctx, state } = require('../context')
const { nullish, keyArb } = require('../slots')
const { rpArb } = require('../callbacks')

const P = {}

const methodArb = fc.oneof(
  { weight: 3, arbitrary: wrap(fc.constantFrom('POST', 'GET', 'DELETE')) },
  { weight: 1, arbitrary: fc.constant(new V('undefined', undefined)) },
  { weight: 1, arbitrary: fc.constant(new V('null', null)) },
  { weight: 2, arbitrary: anyString },
  { weight: 2, arbitrary: odd },
)
const pathArb = fc.oneof(
  { weight: 3, arbitrary: wrap(fc.constantFrom('/store/carts/1/complete', '/fuzz', '/')) },
  { weight: 1, arbitrary: fc.constant(new V('undefined', undefined)) },
  { weight: 2, arbitrary: anyString },
  { weight: 2, arbitrary: odd },
)
const reqParamsArb = fc.oneof({ weight: 3, arbitrary: jsonData }, { weight: 1, arbitrary: fc.constant(new V('undefined', undefined)) }, { weight: 3, arbitrary: odd })

/** Would these fields be refused as invalid_data (SPEC §3 validation)? 'invalid' | 'ok' | 'any'. */
function fingerprintClass(method, params, pathv) {
  for (const s of [method, pathv]) if (!nullish(s) && typeof s !== 'string') return 'invalid'
  const j = expectedJson(params)
  if (j.invalid) return 'invalid'
  if (j.exotic) return 'any'
  return 'ok'
}

/** initializeRequest(headerKey, method, params, path). */
P.initializeRequest = () => {
  const hkArb = fc.oneof(
    { weight: 3, arbitrary: keyArb() },
    { weight: 1, arbitrary: fc.constantFrom(new V('""', ''), new V('undefined', undefined), new V('null', null)).map((x) => Object.assign(x, { cls: 'new' })) },
    { weight: 1, arbitrary: wrap(fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 255 })).map((x) => Object.assign(x, { cls: 'ascii' })) },
  )
  return fc.asyncProperty(hkArb, methodArb, reqParamsArb, pathArb, async (hk, m, p, pa) => {
    const before = hk.cls === 'existing' ? await state(hk.v) : null
    const fpc = fingerprintClass(m.v, p.v, pa.v)
    let exp = {}
    if (!nullish(hk.v) && typeof hk.v !== 'string') exp = { invalid: true }
    else if (fpc === 'invalid') exp = { invalid: true }
    else if (typeof hk.v === 'string' && hk.v !== '' && !/^[\x20-\x7e]{1,255}$/.test(hk.v)) exp = { invalid: true } // SPEC §3: 1–255 printable ASCII
    const o = await call(() => ctx.service.initializeRequest(hk.v, m.v, p.v, pa.v), 'initializeRequest')
    judge(o, {
      ...exp,
      onSuccess: (k) => {
        checkKey(k)
        if (typeof hk.v === 'string' && hk.v !== '' && k.idempotency_key !== hk.v) fail(`returned key ${describe(k.idempotency_key)} for header ${describe(hk.v)}`)
        if ((hk.cls === 'new' || hk.cls === 'absent') && fpc === 'ok') {
          if (typeof m.v === 'string' && k.request_method !== m.v.toWellFormed()) fail(`request_method stored as ${describe(k.request_method)}`)
          if (typeof pa.v === 'string' && k.request_path !== pa.v.toWellFormed()) fail(`request_path stored as ${describe(k.request_path)}`)
          const j = expectedJson(p.v)
          const mm = j.json !== undefined && j.json !== null ? jsonMismatch(k.request_params, j.json) : null
          if (mm) fail(`initializeRequest request_params: ${mm}`)
        }
        if (before && k.id !== before.id) fail('an existing key came back with another id')
      },
    })
    if (o.k === 'rej' && (hk.cls === 'new' || hk.cls === 'absent') && fpc === 'ok' && !exp.invalid) {
      // A new key with valid fields may only fail on the database (NUL bytes on PostgreSQL, 1 MB keys…).
      if (!['database_error', 'invalid_data'].includes(o.e.type)) fail(`a new key failed with ${showErr(o.e)}`)
    }
  })
}

/** create(payload). */
P.create = () => {
  const ikArb = fc.oneof(
    { weight: 3, arbitrary: fc.constant(null).map(() => new FreshKey('create')) },
    { weight: 2, arbitrary: keyArb() },
    { weight: 1, arbitrary: fc.constant(Object.assign(new V('absent', undefined), { cls: 'none' })) },
  )
  const payloadArb = fc.oneof(
    {
      weight: 6,
      arbitrary: fc
        .record({ idempotency_key: ikArb, request_method: methodArb, request_params: reqParamsArb, request_path: pathArb, recovery_point: fc.oneof(rpArb, fc.constant(new V('absent', undefined))), extra: fc.oneof(fc.constant(null), odd) }, { requiredKeys: ['idempotency_key'] })
        .map((m) => {
          const o = {}
          for (const [k, x] of Object.entries(m)) if (k !== 'extra') o[k] = x.v
          if (m.extra) o.unknown_field = m.extra.v
          return Object.assign(new V(`{ ${Object.entries(m).map(([k, x]) => `${k}: ${x && x.d}`).join(', ')} }`, o), { m })
        }),
    },
    { weight: 2, arbitrary: odd },
    {
      weight: 1,
      arbitrary: specials([
        special('{ getter idempotency_key throws }', () => throwingGetter('idempotency_key')),
        special('{ getter request_params throws }', () => throwingGetter('request_params')),
        special('Proxy whose traps throw', () => throwingProxy()),
      ]),
    },
  )
  return fc.asyncProperty(payloadArb, async (pl) => {
    const v = pl.v
    let exp = {}
    let strict = null
    if (v !== null && v !== undefined && typeof v !== 'object') exp = { invalid: true }
    else if (pl.m) {
      const { idempotency_key: ik, request_method: m, request_params: p, request_path: pa, recovery_point: rp } = v
      const fpc = fingerprintClass(m, p, pa)
      if (!nullish(ik) && typeof ik !== 'string') exp = { invalid: true }
      else if (!nullish(rp) && typeof rp !== 'string') exp = { invalid: true }
      else if (fpc === 'invalid') exp = { invalid: true }
      else if (fpc === 'ok' && pl.m.idempotency_key.cls === 'existing') strict = 'duplicate'
      else if (fpc === 'ok') strict = 'fresh'
    }
    const o = await call(() => ctx.service.create(v), 'create')
    judge(o, {
      ...exp,
      onSuccess: (k) => {
        checkKey(k)
        if (strict === 'duplicate') fail(`create() with an existing key succeeded: ${describe(k)}`)
        if (pl.m && typeof v.idempotency_key === 'string' && v.idempotency_key !== '' && k.idempotency_key !== v.idempotency_key.toWellFormed()) fail(`created ${describe(k.idempotency_key)} for ${describe(v.idempotency_key)}`)
        if (strict === 'fresh') {
          if (typeof v.recovery_point === 'string' && v.recovery_point !== '' && k.recovery_point !== v.recovery_point.toWellFormed()) fail(`recovery_point ${describe(k.recovery_point)} for ${describe(v.recovery_point)}`)
          if (nullish(v.recovery_point) && k.recovery_point !== 'started') fail(`default recovery_point is ${describe(k.recovery_point)}`)
          if (k.response_code !== null || k.response_body !== null) fail('a new key has a response')
        }
      },
    })
    if (o.k === 'rej' && strict === 'duplicate' && !(o.e.type === 'duplicate_error' && o.e.code === '23505') && o.e.type !== 'database_error') fail(`create() with an existing key: expected duplicate_error/23505, got ${showErr(o.e)}`)
  })
}

module.exports = P
