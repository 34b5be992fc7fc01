// Bad argument types never crash (SPEC §2): every method rejects a wrong type, a cyclic or
// throwing value with invalid_data and writes nothing, and the service works afterwards;
// against a fresh database of the backend IDEM_BACKEND selects, verified through an
// independent client (node-postgres / better-sqlite3): methods-fixture.js.
const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { rejects } = require('./helpers')
const { useMethodsDb, row } = require('./methods-fixture')
const { assertErr } = require('../test-support/errors')
const { uniq, KEY_ID } = require('../test-support/keys')

let service // set by useMethodsDb (methods-fixture.js)
useMethodsDb((t) => ({ service } = t))

// ---------------------------------------------------------------------------------------------
describe('bad argument types never crash', () => {
  const cyclic = {}
  cyclic.self = cyclic
  const throwingGetter = {}
  Object.defineProperty(throwingGetter, 'boom', {
    enumerable: true,
    get() {
      throw new Error('getter exploded')
    },
  })
  // An object whose getter for `name` throws.
  const getterOn = (name) =>
    Object.defineProperty({}, name, {
      enumerable: true,
      get() {
        throw new Error(`getter ${name} exploded`)
      },
    })
  const badScalars = [
    ['a number', 42],
    ['an object', { a: 1 }],
    ['a function', () => 'k'],
    ['a Symbol', Symbol('k')],
    ['a BigInt', 10n],
    ['an array', ['k']],
    ['a boolean', true],
  ]

  for (const [label, v] of badScalars) {
    test(`initializeRequest(headerKey = ${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.initializeRequest(v, 'POST', {}, '/bad')), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, v] of [...badScalars.filter(([l]) => l !== 'an array'), ['a cyclic object', cyclic]]) {
    test(`initializeRequest(reqMethod / reqPath = ${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.initializeRequest(uniq('badm'), v, {}, '/bad')), 'invalid_data', 'INVALID_ARGUMENT')
      assertErr(await rejects(service.initializeRequest(uniq('badp'), 'POST', {}, v)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, v] of [
    ['a cyclic object', cyclic],
    ['an object with a throwing getter', throwingGetter],
    ['a BigInt', 5n],
    ['an object holding a BigInt', { n: 5n }],
    ['an array holding a cyclic object', [1, { c: cyclic }]],
  ]) {
    // Functions and Symbols are not listed: like JSON.stringify (and TypeORM's jsonb
    // serialisation) the addon stores them as null, which is not a misuse error.
    test(`initializeRequest(reqParams = ${label}) → invalid_data, no row`, async () => {
      const key = uniq('badparams')
      assertErr(await rejects(service.initializeRequest(key, 'POST', v, '/bad')), 'invalid_data', 'INVALID_ARGUMENT')
      assert.equal(await row(key), undefined)
    })
  }

  for (const [label, v] of [
    ['a number', 42],
    ['a string', 'k'],
    ['a function', () => {}],
    ['a Symbol', Symbol('c')],
    ['a BigInt', 1n],
  ]) {
    test(`create(payload = ${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.create(v)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, payload] of [
    ['idempotency_key: number', { idempotency_key: 5 }],
    ['idempotency_key: 256 chars', { idempotency_key: 'z'.repeat(256) }],
    ['idempotency_key: Symbol', { idempotency_key: Symbol('x') }],
    ['request_method: object', { request_method: { m: 1 } }],
    ['request_path: number', { request_path: 1 }],
    ['request_params: cyclic', { request_params: cyclic }],
    ['request_params: throwing getter', { request_params: throwingGetter }],
    ['request_params: BigInt', { request_params: 1n }],
    ['recovery_point: number', { recovery_point: 3 }],
    ['a throwing getter for idempotency_key', getterOn('idempotency_key')],
    ['a throwing getter for request_params', getterOn('request_params')],
  ]) {
    test(`create({ ${label} }) → invalid_data`, async () => {
      assertErr(await rejects(service.create(payload)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, v] of [
    ['a number', 42],
    ['a function', () => {}],
    ['a Symbol', Symbol('r')],
    ['a BigInt', 1n],
    ['a boolean', false],
    ['a selector with an object value', { idempotency_key: { $ne: 'x' } }],
    ['a selector with a Symbol value', { idempotency_key: Symbol('x') }],
    ['a selector with a function value', { idempotency_key: () => {} }],
    ['a selector with a throwing getter', getterOn('idempotency_key')],
    ['a selector with a cyclic value', { request_params: cyclic }],
  ]) {
    test(`retrieve(${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.retrieve(v)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, v] of badScalars) {
    test(`lock(${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.lock(v)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  test('update() with bad key or bad partial → invalid_data, nothing written', async () => {
    const key = uniq('badupd')
    await service.create({ idempotency_key: key })
    for (const [, v] of badScalars) {
      assertErr(await rejects(service.update(v, { response_code: 1 })), 'invalid_data', 'INVALID_ARGUMENT')
    }
    for (const partial of [
      42,
      'x',
      null,
      () => {},
      Symbol('u'),
      1n,
      { response_code: 'abc' },
      { response_code: { n: 1 } },
      { response_code: 1.5 },
      { response_code: 1n << 40n },
      { recovery_point: 5 },
      { request_method: 5 },
      { response_body: cyclic },
      { response_body: 2n },
      { response_body: throwingGetter },
      getterOn('response_code'),
      getterOn('response_body'),
      { id: 'ikey_other' },
      { created_at: new Date() },
    ]) {
      const e = await rejects(service.update(key, partial))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    }
    const r = await row(key)
    assert.equal(r.response_code, null)
    assert.equal(r.recovery_point, 'started')
    assert.match(r.id, KEY_ID)
  })

  test('workStage() with a bad key or a non-function callback → invalid_data, callback not run', async () => {
    const key = uniq('badws')
    await service.create({ idempotency_key: key })
    let called = false
    const cb = async () => {
      called = true
      return { recovery_point: 'x' }
    }
    for (const [, v] of badScalars) {
      assertErr(await rejects(service.workStage(v, cb)), 'invalid_data', 'INVALID_ARGUMENT')
    }
    for (const v of [undefined, null, 42, 'cb', {}, Symbol('cb'), 1n, [cb]]) {
      assertErr(await rejects(service.workStage(key, v)), 'invalid_data', 'INVALID_ARGUMENT')
    }
    for (const opts of [42, 'x', { recoveryPoint: 5 }, { recoveryPoint: {} }]) {
      assertErr(await rejects(service.workStage(key, cb, opts)), 'invalid_data', 'INVALID_ARGUMENT')
    }
    assert.equal(called, false)
    assert.equal((await row(key)).recovery_point, 'started')
  })

  test('the service still works after all of the above', async () => {
    const key = uniq('alive')
    const k = await service.create({ idempotency_key: key })
    const k2 = await service.workStage(key, async (tx) => {
      const r = await tx.query('SELECT 1 AS one')
      assert.deepEqual(r, [{ one: 1 }])
      return { recovery_point: 'alive' }
    })
    assert.equal(k2.id, k.id)
    assert.equal(k2.recovery_point, 'alive')
  })
})
