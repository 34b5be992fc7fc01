'use strict'
// The expectation for the value a stage callback returns: refused, accepted, or either.
const { types } = require('node:util')
const { describe } = require('./values')
const { expectedJson, hasNul } = require('./oracle')
const { kindOf, nullish } = require('./slots')

/**
 * What a stage must do with a callback result (SPEC §4 step 3): { invalid }, { any }, or
 * { rp } (move the recovery point) / { finish: { code, body } } (finish the key).
 */
function classifyResult(R) {
  try {
    return classifyResult_(R)
  } catch (e) {
    return { any: `inspecting the result threw ${describe(e)}` }
  }
}

function classifyResult_(R) {
  if (R === null || (typeof R !== 'object' && typeof R !== 'function')) return { invalid: `a ${kindOf(R)}` }
  if (typeof R === 'function') return { any: 'a function' }
  if (types.isProxy(R)) {
    // Resolving a promise with it looks up `then`: if that throws, the callback's promise
    // rejects with what was thrown (JS itself does this, as `await callback()` would).
    try {
      void R.then
      return { any: 'a Proxy', getter: true }
    } catch (e) {
      return { any: 'a Proxy', getter: true, thenThrows: { v: e } }
    }
  }
  if (R instanceof Promise) return { any: 'a promise (adopted by the async callback)' }
  const fields = {}
  for (const f of ['recovery_point', 'response_code', 'response_body']) {
    const d = Object.getOwnPropertyDescriptor(R, f)
    if (d && d.get) return { getterInvalid: f }
    fields[f] = R[f]
  }
  const { recovery_point: rp, response_code: code, response_body: body } = fields
  let problem = null
  if (!nullish(rp) && typeof rp !== 'string') problem = 'recovery_point is not a string'
  let codeOk = true
  if (code !== undefined && code !== null) codeOk = typeof code === 'number' && Number.isInteger(code) && code >= -(2 ** 31) && code < 2 ** 31
  const bodyJ = body === undefined ? { json: undefined, absent: true } : expectedJson(body)
  const moves = typeof rp === 'string' && rp !== ''
  if (problem) return { invalid: problem }
  if (moves) {
    // Medusa ignores code/body when a recovery point is set; refusing bad ones is also fine.
    return { rp, lenient: !codeOk || bodyJ.invalid || bodyJ.exotic, nul: rp.includes('\u0000') }
  }
  if (!codeOk) return { invalid: `response_code ${describe(code)}` }
  if (bodyJ.invalid) return { invalid: `response_body: ${bodyJ.invalid}` }
  if (bodyJ.exotic) return { any: `response_body: ${bodyJ.exotic}` }
  // A body that JSON.stringify drops (a Symbol, a function): NULL or unchanged are both fine.
  return { finish: { code, body: bodyJ.json, bodyAbsent: bodyJ.absent, bodyLoose: !bodyJ.absent && bodyJ.json === undefined }, nul: hasNul(body) }
}

module.exports = { classifyResult }
