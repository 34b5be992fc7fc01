'use strict'
// Properties: retrieve(keyOrSelector), lock(key) and update(key, partial).
const { fc, V, describe, wrap, odd, anyString, hostileString } = require('../values')
const { fail, judge, checkKey, expectedJson, jsonMismatch, showErr } = require('../oracle')
const { call } = require('../cases')
const { ctx, state, sameState } = require('../context')
const { keyArb, keyArgProblem, COLUMNS } = require('../slots')
const { rpArb, codeArb, bodyArb } = require('../callbacks')

const P = {}

/** retrieve(keyOrSelector). */
P.retrieve = () => {
  const colArb = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...COLUMNS) }, { weight: 1, arbitrary: fc.constantFrom('nope', '__proto__', 'constructor', 'id; DROP TABLE x', 'idempotency_key ', 'ID', '') }, { weight: 1, arbitrary: hostileString })
  const valArb = fc.oneof(
    { weight: 2, arbitrary: fc.constantFrom(...ctx.keys).map((k) => new V(JSON.stringify(k), k)) },
    { weight: 1, arbitrary: fc.constant(new V('null', null)) },
    { weight: 1, arbitrary: fc.array(fc.oneof(fc.constantFrom(...ctx.keys).map((k) => new V(JSON.stringify(k), k)), odd), { maxLength: 3 }).map((xs) => new V(`[${xs.map((x) => x.d)}]`, xs.map((x) => x.v))) },
    { weight: 3, arbitrary: odd },
  )
  const selectorArb = fc.array(fc.tuple(colArb, valArb), { minLength: 0, maxLength: 3 }).map((entries) => {
    const o = {}
    for (const [k, x] of entries) {
      if (k === '__proto__') Object.defineProperty(o, k, { value: x.v, enumerable: true, configurable: true, writable: true })
      else o[k] = x.v
    }
    return Object.assign(new V(`{ ${entries.map(([k, x]) => `${JSON.stringify(k)}: ${x.d}`).join(', ')} }`, o), { entries })
  })
  const argArb = fc.oneof({ weight: 3, arbitrary: keyArb() }, { weight: 3, arbitrary: selectorArb }, {
    weight: 1,
    arbitrary: fc.constantFrom(...ctx.keys).map((k) => Object.assign(new V(`{ idempotency_key: ${JSON.stringify(k)} }`, { idempotency_key: k }), { exact: k })),
  })
  return fc.asyncProperty(argArb, async (arg) => {
    const v = arg.v
    let exp = {}
    if (v === undefined || v === null) exp = { errors: [['not_found', null]], allowSuccess: false }
    else if (['number', 'boolean', 'bigint', 'symbol', 'function'].includes(typeof v)) exp = { invalid: true }
    else if (arg.cls === 'existing') exp = { mustSucceed: true }
    else if (arg.cls === 'absent') exp = { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND']], allowSuccess: false }
    else if (arg.exact) exp = { mustSucceed: true }
    else if (arg.entries) {
      const defined = Object.keys(v).map((k) => [k, { v: v[k] }]).filter(([, x]) => x.v !== undefined)
      if (defined.some(([k]) => !COLUMNS.includes(k))) exp = { invalid: true }
      else if (defined.length === 0) exp = { invalid: true }
      else if (defined.some(([, x]) => typeof x.v === 'function' || typeof x.v === 'symbol')) exp = { invalid: true }
    }
    const o = await call(() => ctx.service.retrieve(v), 'retrieve')
    judge(o, {
      ...exp,
      onSuccess: (k) => {
        checkKey(k)
        if (typeof v === 'string' && k.idempotency_key !== v) fail(`retrieve(${describe(v)}) returned ${describe(k.idempotency_key)}`)
        if (arg.exact && k.idempotency_key !== arg.exact) fail(`retrieve({ idempotency_key }) returned ${describe(k.idempotency_key)}`)
      },
    })
  })
}

/** lock(key). */
P.lock = () =>
  fc.asyncProperty(keyArb(), async (k) => {
    let exp = {}
    if (keyArgProblem(k)) exp = { invalid: true }
    else if (k.cls === 'existing') exp = { errors: [['conflict', 'IDEMPOTENCY_KEY_LOCKED']] }
    else if (k.cls === 'absent') exp = { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND']], allowSuccess: false }
    const o = await call(() => ctx.service.lock(k.v), 'lock')
    judge(o, {
      ...exp,
      onSuccess: (key) => {
        checkKey(key)
        if (key.idempotency_key !== k.v) fail(`lock(${describe(k.v)}) returned ${describe(key.idempotency_key)}`)
        if (!(key.locked_at instanceof Date)) fail('lock() returned locked_at null')
      },
    })
  })

const UPDATABLE = ['locked_at', 'request_method', 'request_params', 'request_path', 'response_code', 'response_body', 'recovery_point']

/** update(key, partial). */
P.update = () => {
  const fieldValue = (f) => {
    switch (f) {
      case 'response_code':
        return codeArb
      case 'recovery_point':
        return rpArb
      case 'locked_at':
        return fc.oneof(fc.constant(null).map(() => new V('new Date()', new Date())), wrap(fc.date({ noInvalidDate: false })), odd)
      case 'request_params':
      case 'response_body':
        return bodyArb
      default:
        return fc.oneof(anyString, odd)
    }
  }
  const fieldArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...UPDATABLE) }, { weight: 1, arbitrary: fc.constantFrom('id', 'idempotency_key', 'created_at', 'nope', '__proto__') })
  const partialArb = fc.oneof(
    {
      weight: 6,
      arbitrary: fc
        .uniqueArray(fieldArb, { maxLength: 3 })
        .chain((fs) => fc.tuple(...fs.map((f) => fieldValue(f).map((x) => [f, x]))))
        .map((entries) => {
          const o = {}
          for (const [k, x] of entries) {
            if (k === '__proto__') Object.defineProperty(o, k, { value: x.v, enumerable: true, configurable: true, writable: true })
            else o[k] = x.v
          }
          return Object.assign(new V(`{ ${entries.map(([k, x]) => `${k}: ${x.d}`).join(', ')} }`, o), { entries })
        }),
    },
    { weight: 2, arbitrary: odd },
  )
  return fc.asyncProperty(keyArb(), partialArb, async (k, part) => {
    const v = part.v
    let exp = {}
    let expectFields = null
    if (keyArgProblem(k)) exp = { invalid: true }
    else if (v === null || typeof v !== 'object') exp = { invalid: true }
    else if (part.entries) {
      const defined = part.entries.filter(([, x]) => x.v !== undefined)
      const bad = defined.find(([f, x]) => {
        const val = x.v
        if (!UPDATABLE.includes(f)) return true
        if (val === null) return f === 'recovery_point' ? false : false
        if (typeof val === 'function' || typeof val === 'symbol') return true
        if (f === 'response_code') return !(typeof val === 'number' && Number.isInteger(val) && val >= -(2 ** 31) && val < 2 ** 31)
        if (f === 'recovery_point' || f === 'request_method' || f === 'request_path') return typeof val !== 'string'
        if (f === 'locked_at') return false // a Date, or something the database may refuse
        const j = expectedJson(val)
        return Boolean(j.invalid)
      })
      if (bad) exp = { invalid: true }
      else if (k.cls === 'absent') exp = { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND'], ['database_error', null], ['invalid_data', null]], allowSuccess: false }
      else expectFields = defined
    }
    const before = k.cls === 'existing' ? await state(k.v) : null
    const o = await call(() => ctx.service.update(k.v, v), 'update')
    judge(o, {
      ...exp,
      onSuccess: (key) => {
        checkKey(key)
        if (key.idempotency_key !== k.v) fail(`update(${describe(k.v)}) returned ${describe(key.idempotency_key)}`)
        for (const [f, x] of expectFields || []) {
          const val = x.v
          if (f === 'response_code' && key.response_code !== val) fail(`response_code is ${describe(key.response_code)} after update to ${describe(val)}`)
          if ((f === 'request_method' || f === 'request_path') && key[f] !== (val === null ? null : val.toWellFormed())) fail(`${f} is ${describe(key[f])} after update to ${describe(val)}`)
          if (f === 'recovery_point' && typeof val === 'string' && key.recovery_point !== val.toWellFormed()) fail(`recovery_point is ${describe(key.recovery_point)} after update to ${describe(val)}`)
          if (f === 'response_body' || f === 'request_params') {
            const j = expectedJson(val)
            const mm = !j.exotic && j.json !== undefined ? jsonMismatch(key[f], j.json) : null
            if (mm) fail(`update ${f}: ${mm}`)
          }
        }
      },
    })
    if (o.k === 'rej' && before) {
      const after = await state(k.v)
      if (after && !sameState(before, after)) fail(`a failed update (${showErr(o.e)}) changed the key: ${describe(before)} → ${describe(after)}`)
    }
    if (o.k === 'ok') {
      // What update() accepted must not break the key: a plain stage on it still works.
      const st = await call(() => ctx.service.workStage(k.v, () => ({ recovery_point: o.v.recovery_point || 'fz_u' })), 'workStage after update')
      if (st.k === 'rej' && st.e && st.e.type === 'database_error') {
        await call(() => ctx.service.update(k.v, { locked_at: null }), 'repair')
        fail(`update() accepted ${describe(v)} but a later workStage on the key fails with ${showErr(st.e)}`)
      }
    }
  })
}


module.exports = P
