'use strict'
// What a fuzz case may end in (stress/fuzz.js): a typed error of the contract (SPEC §6), the
// callback's own thrown value untouched, or a correct result. Used inside the fuzz child.
const { types } = require('node:util')
const { describe, GETTER_THROWS } = require('./values')

/** A broken expectation: fast-check reports the case and shrinks it. */
class Finding extends Error {}
const fail = (msg) => {
  throw new Finding(msg)
}

const TYPES = new Set(['not_found', 'conflict', 'duplicate_error', 'invalid_data', 'database_error', 'unexpected_state'])
const KEY_FIELDS = ['created_at', 'id', 'idempotency_key', 'locked_at', 'recovery_point', 'request_method', 'request_params', 'request_path', 'response_body', 'response_code']
const KEY_ID = /^ikey_[0-9A-HJKMNP-TV-Z]{26}$/

/** Is `e` one of our Findings (safe on Proxies, whose traps may throw)? */
function isFinding(e) {
  try {
    return !types.isProxy(e) && e instanceof Finding
  } catch {
    return false
  }
}

/** `e instanceof Error`, safe on Proxies. */
function isError(e) {
  try {
    return !types.isProxy(e) && e instanceof Error
  } catch {
    return false
  }
}

/** Why `e` is not a typed error of the contract, or null. */
function untyped(e) {
  if (!isError(e)) return `rejected with a non-Error: ${describe(e)}`
  const what = `${e.constructor && e.constructor.name}(type=${describe(e.type)}, code=${describe(e.code)}): ${msgOf(e)}`
  if (typeof e.type !== 'string' || typeof e.code !== 'string') return `untyped error ${what}`
  if (!TYPES.has(e.type)) return `unknown error type ${what}`
  if (e.code === 'INTERNAL_ERROR') return `INTERNAL_ERROR (a Rust panic caught at the boundary) ${what}`
  if (typeof e.message !== 'string') return `message is not a string ${what}`
  if (!(e.date instanceof Date)) return `no Date in .date ${what}`
  return null
}

function msgOf(e) {
  try {
    return JSON.stringify(String(e.message).slice(0, 300))
  } catch {
    return '<message unreadable>'
  }
}

function showErr(e) {
  if (isError(e)) return `${e.constructor && e.constructor.name}(type=${describe(e.type)}, code=${describe(e.code)}): ${msgOf(e)}`
  return `non-Error ${describe(e)}`
}

function showOut(out) {
  switch (out.k) {
    case 'ok':
      return `resolved ${describe(out.v, 200)}`
    case 'rej':
      return `rejected ${showErr(out.e)}`
    case 'throw':
      return `threw synchronously ${showErr(out.e)}`
    default:
      return `returned ${describe(out.v, 200)}`
  }
}

/**
 * Judge an async method's outcome.
 * - `identical`: values whose rejection must come back as is (Object.is), e.g. what a callback threw
 * - `errors`: allowed [type, code|null] pairs; `invalid: true` is [['invalid_data','INVALID_ARGUMENT']]
 * - `mustSucceed`; `onSuccess(v)`; `allowSuccess` (default true)
 */
function judge(out, exp = {}) {
  if (out.k === 'throw') fail(`threw synchronously instead of rejecting: ${showErr(out.e)}`)
  if (out.k === 'value') fail(`returned a non-promise: ${describe(out.v)}`)
  const errors = exp.invalid ? [['invalid_data', 'INVALID_ARGUMENT']] : exp.errors
  if (out.k === 'rej' && isError(out.e) && /transaction depth/.test(String(out.e.message))) {
    fail(`a pooled connection was left inside a transaction by an earlier call; this call failed with ${showErr(out.e)}`)
  }
  if (out.k === 'rej') {
    if (exp.identical && exp.identical.some((x) => Object.is(x, out.e))) return
    if (exp.mustBeIdentical) fail(`expected the callback's own thrown value ${describe(exp.mustBeIdentical[0])} back, got ${showErr(out.e)}`)
    const why = untyped(out.e)
    if (why) fail(why)
    if (exp.mustSucceed) fail(`expected success, got ${showErr(out.e)}`)
    if (errors && !errors.some(([t, c]) => t === out.e.type && (c === null || c === out.e.code))) {
      fail(`expected ${errors.map(([t, c]) => `${t}/${c ?? '*'}`).join(' or ')}, got ${showErr(out.e)}`)
    }
    return
  }
  if (exp.mustBeIdentical) fail(`expected the callback's own thrown value ${describe(exp.mustBeIdentical[0])} back, got success ${describe(out.v)}`)
  if (errors && exp.allowSuccess === false) fail(`expected ${errors.map(([t, c]) => `${t}/${c ?? '*'}`).join(' or ')}, got success ${describe(out.v)}`)
  if (exp.invalid) fail(`expected invalid_data/INVALID_ARGUMENT, got success ${describe(out.v)}`)
  if (exp.onSuccess) exp.onSuccess(out.v)
}

/** Judge a synchronous method (withTransaction, bindExecutor, detached). */
function judgeSync(out, exp = {}) {
  if (out.k === 'ok' || out.k === 'rej') fail(`returned a promise from a synchronous method`)
  if (out.k === 'throw') {
    const why = untyped(out.e)
    if (why) fail(`threw ${why}`)
    if (exp.mustSucceed) fail(`expected a result, threw ${showErr(out.e)}`)
    if (exp.invalid && !(out.e.type === 'invalid_data' && out.e.code === 'INVALID_ARGUMENT')) fail(`expected invalid_data/INVALID_ARGUMENT, threw ${showErr(out.e)}`)
    return
  }
  if (exp.invalid) fail(`expected to throw invalid_data/INVALID_ARGUMENT, returned ${describe(out.v)}`)
  if (exp.onSuccess) exp.onSuccess(out.v)
}

function isValidDate(d) {
  return d instanceof Date && Number.isFinite(d.getTime())
}

/** The ten fields of Medusa's entity, with their types (SPEC §2). */
function checkKey(k, what = 'result', { looseId = false } = {}) {
  if (k === null || typeof k !== 'object' || Array.isArray(k)) fail(`${what} is not a key object: ${describe(k)}`)
  const keys = Object.keys(k).sort()
  if (keys.join() !== KEY_FIELDS.join()) fail(`${what} has fields [${keys.join(', ')}], expected the ten of Medusa's entity`)
  if (typeof k.id !== 'string' || (!looseId && !KEY_ID.test(k.id))) fail(`${what}.id ${describe(k.id)} is not ikey_ + ULID`)
  if (typeof k.idempotency_key !== 'string') fail(`${what}.idempotency_key is ${describe(k.idempotency_key)}`)
  if (!isValidDate(k.created_at)) fail(`${what}.created_at is ${describe(k.created_at)}`)
  if (k.locked_at !== null && !isValidDate(k.locked_at)) fail(`${what}.locked_at is ${describe(k.locked_at)}`)
  for (const f of ['request_method', 'request_path']) {
    if (k[f] !== null && typeof k[f] !== 'string') fail(`${what}.${f} is ${describe(k[f])}`)
  }
  if (k.response_code !== null && !Number.isInteger(k.response_code)) fail(`${what}.response_code is ${describe(k.response_code)}`)
  if (typeof k.recovery_point !== 'string') fail(`${what}.recovery_point is ${describe(k.recovery_point)}`)
  return k
}

// ---------------------------------------------------------------------------------------------
// What the addon should make of a JS value as JSON (SPEC: like JSON.stringify; a BigInt, a cycle
// or a throwing getter is invalid_data). `exotic` values (Buffers, boxed primitives, toJSON
// methods, Proxies, Maps…) are serialised differently by different reasonable mappings, so no
// exact value is expected for them.

const EXOTIC = Symbol('exotic')
const INVALID = Symbol('invalid')

function isPlainish(o) {
  const p = Object.getPrototypeOf(o)
  return p === Object.prototype || p === null
}

/**
 * The JSON a value must become: `{ json }` (exact expectation, `undefined` when dropped),
 * `{ invalid: reason }`, or `{ exotic: reason }` (anything typed or any JSON is accepted).
 */
function expectedJson(v) {
  const seen = new Set()
  let exotic = null
  const walk = (x, depth) => {
    if (depth > 60) {
      exotic = exotic || 'nested more than 60 levels'
      return null
    }
    switch (typeof x) {
      case 'undefined':
      case 'function':
      case 'symbol':
        return undefined
      case 'bigint':
        throw INVALID
      case 'boolean':
        return x
      case 'number':
        return Number.isFinite(x) ? (Object.is(x, -0) ? 0 : x) : null
      case 'string':
        return x.toWellFormed()
      default:
    }
    if (x === null) return null
    if (seen.has(x)) throw INVALID
    if (x instanceof Date) return isValidDate(x) ? x.toISOString() : null
    if (Array.isArray(x)) {
      if (x.length > 200000) {
        exotic = exotic || 'a huge array'
        return null
      }
      seen.add(x)
      const out = []
      for (let i = 0; i < x.length; i++) {
        const d = Object.getOwnPropertyDescriptor(x, i)
        if (d && d.get) throw INVALID // a throwing (or any) getter: invalid or exotic
        const j = walk(x[i], depth + 1)
        out.push(j === undefined ? null : j)
      }
      seen.delete(x)
      return out
    }
    if (!isPlainish(x) || typeof x.toJSON === 'function') {
      exotic = exotic || `a ${Object.prototype.toString.call(x)} with prototype ${x.constructor && x.constructor.name}`
    }
    seen.add(x)
    const out = {}
    for (const k of Object.keys(x)) {
      const d = Object.getOwnPropertyDescriptor(x, k)
      if (d && d.get) throw INVALID
      if (k === '__proto__') exotic = exotic || 'an own "__proto__" key'
      const j = walk(x[k], depth + 1)
      if (j !== undefined) out[k.toWellFormed()] = j
    }
    seen.delete(x)
    return out
  }
  try {
    if (v !== null && typeof v === 'object' && isProxyLike(v)) return { exotic: 'a Proxy' }
    const json = walk(v, 0)
    return exotic ? { exotic } : { json }
  } catch (e) {
    if (e === INVALID) return { invalid: 'a BigInt, a cycle or a getter' }
    if (e === GETTER_THROWS) return { invalid: 'a throwing Proxy trap' }
    return { exotic: `inspecting it threw ${describe(e)}` }
  }
}

function isProxyLike(v) {
  return types.isProxy(v)
}

/** Does any string inside (values or keys) contain NUL? PostgreSQL text/jsonb refuse it. */
function hasNul(v, depth = 0) {
  if (typeof v === 'string') return v.includes('\u0000')
  if (v === null || typeof v !== 'object' || depth > 60 || types.isProxy(v)) return false
  try {
    for (const k of Object.keys(v)) {
      if (k.includes('\u0000')) return true
      const d = Object.getOwnPropertyDescriptor(v, k)
      if (d && d.get) continue
      if (hasNul(v[k], depth + 1)) return true
    }
  } catch {
    return false
  }
  return false
}

/**
 * Compare what came back with what was expected as JSON. Returns null when equal, else a message
 * whose start is stable (so one kind of difference is reported once).
 */
function jsonMismatch(got, want, where = '') {
  if (typeof want === 'number' && typeof got === 'number') {
    if (Object.is(got, want) || (got === 0 && want === 0)) return null
    const rel = Math.abs(got - want) / Math.max(Math.abs(want), Number.MIN_VALUE)
    if (rel < 1e-12) return `a JSON number changed in a round trip (precision): ${want} came back as ${got} at ${where || 'top level'}`
    return `a JSON number changed: ${want} came back as ${got} at ${where || 'top level'}`
  }
  if (want === null || typeof want !== 'object' || got === null || typeof got !== 'object') {
    return Object.is(got, want) ? null : `JSON value ${describe(want)} came back as ${describe(got)} at ${where || 'top level'}`
  }
  if (Array.isArray(want) !== Array.isArray(got)) return `JSON ${Array.isArray(want) ? 'array' : 'object'} came back as ${describe(got)} at ${where || 'top level'}`
  const wk = Object.keys(want).sort()
  const gk = Object.keys(got).sort()
  if (wk.join('\u0000') !== gk.join('\u0000')) return `JSON keys ${describe(wk)} came back as ${describe(gk)} at ${where || 'top level'}`
  if (!Array.isArray(got) && Object.getPrototypeOf(got) !== Object.prototype) return `a JSON object came back with a non-standard prototype at ${where || 'top level'}`
  for (const k of wk) {
    const m = jsonMismatch(got[k], want[k], `${where}/${k}`)
    if (m) return m
  }
  return null
}

/** Deeply and strictly equal (node:assert's deepStrictEqual, as a boolean). */
function deepEq(a, b) {
  try {
    require('node:assert').deepStrictEqual(a, b)
    return true
  } catch {
    return false
  }
}

module.exports = {
  jsonMismatch,
  deepEq,
  isFinding,
  isError, Finding, fail, TYPES, KEY_FIELDS, untyped, showErr, showOut, judge, judgeSync, checkKey, expectedJson, hasNul, isValidDate, EXOTIC }
