// initializeRequest() (SPEC §2, §3): a new key with or without the client's header, key
// validation, replays of the same request and refusal of a reused key; against a fresh database of the backend IDEM_BACKEND selects, verified through an
// independent client (node-postgres / better-sqlite3): methods-fixture.js.
const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { rejects, sleep } = require('./helpers')
const { useMethodsDb, row, count } = require('./methods-fixture')
const { assertErr } = require('../test-support/errors')
const { uniq, UUID_V4, assertKeyShape } = require('../test-support/keys')

let fx, service // set by useMethodsDb (methods-fixture.js)
useMethodsDb((t) => ({ fx, service } = t))

// ---------------------------------------------------------------------------------------------
describe('initializeRequest()', () => {
  for (const [label, header] of [
    ["''", ''],
    ['undefined', undefined],
    ['null', null],
  ]) {
    test(`header ${label} creates a new key whose value is a UUID v4`, async () => {
      const path = uniq('/init-empty')
      const k = await service.initializeRequest(header, 'POST', { a: 1 }, path)
      assertKeyShape(k)
      assert.match(k.idempotency_key, UUID_V4)
      assert.equal(k.request_method, 'POST')
      assert.deepEqual(k.request_params, { a: 1 })
      assert.equal(k.request_path, path)
      assert.equal(k.recovery_point, 'started')
      const r = await row(k.idempotency_key)
      assert.equal(r.id, k.id)
      // Two calls without a header get two different keys.
      const k2 = await service.initializeRequest(header, 'POST', { a: 1 }, path)
      assert.notEqual(k2.idempotency_key, k.idempotency_key)
      assert.notEqual(k2.id, k.id)
    })
  }

  test('an unknown client key is created with that value; the returned object is complete', async () => {
    const key = uniq('client')
    const k = await service.initializeRequest(key, 'POST', { cart: 'c1', n: [1, 2] }, '/store/carts/c1/complete')
    assertKeyShape(k)
    assert.equal(k.idempotency_key, key)
    assert.equal(k.request_method, 'POST')
    assert.deepEqual(k.request_params, { cart: 'c1', n: [1, 2] })
    assert.equal(k.request_path, '/store/carts/c1/complete')
    assert.equal(k.recovery_point, 'started')
    assert.equal(k.response_code, null)
    assert.equal(k.response_body, null)
    assert.ok(k.locked_at instanceof Date, 'the lease shows in locked_at')
    assert.ok(k.created_at instanceof Date)
    const r = await row(key)
    assert.equal(r.id, k.id)
    assert.equal(r.locked_at.getTime(), k.locked_at.getTime())
    assert.equal(r.created_at.getTime(), k.created_at.getTime())
  })

  test('a key with minimal arguments still has every field, nulls not undefined', async () => {
    const key = uniq('minimal')
    const k = await service.initializeRequest(key)
    assertKeyShape(k)
    assert.equal(k.request_method, null)
    assert.equal(k.request_params, null)
    assert.equal(k.request_path, null)
  })

  test('255 printable ASCII characters are accepted', async () => {
    const key = ('x'.repeat(250) + uniq('')).slice(-255).replace(/-/g, '~')
    assert.equal(key.length, 255)
    const k = await service.initializeRequest(key, 'POST', {}, '/long')
    assert.equal(k.idempotency_key, key)
  })

  for (const [label, bad] of [
    ['256 characters', 'a'.repeat(256)],
    ["non-ASCII 'é'", 'caf\u00e9-key'],
    ["control character '\\n'", 'line\nbreak'],
    ['a number', 12345],
    ['an object', { key: 'x' }],
  ]) {
    test(`invalid key (${label}) → invalid_data / INVALID_ARGUMENT`, async () => {
      const e = await rejects(service.initializeRequest(bad, 'POST', {}, '/bad-key'))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  test('no row is created for an invalid key', async () => {
    await rejects(service.initializeRequest('a'.repeat(256), 'POST', {}, '/no-row'))
    assert.equal(await count(`idempotency_key WHERE request_path = '/no-row'`), 0)
  })

  test('an existing key with the same request is returned (after its lease expired)', async () => {
    const s = await fx.connect({ lockTimeoutMs: 100 })
    const key = uniq('same')
    const a = await s.initializeRequest(key, 'POST', { x: 1 }, '/same')
    await sleep(250)
    const b = await s.initializeRequest(key, 'POST', { x: 1 }, '/same')
    assert.equal(b.id, a.id)
    assert.equal(b.idempotency_key, key)
    assert.equal(await count('idempotency_key WHERE idempotency_key = $1', [key]), 1)
  })

  for (const [label, args] of [
    ['method', ['PUT', { x: 1 }, '/reuse']],
    ['path', ['POST', { x: 1 }, '/reuse-other']],
    ['params', ['POST', { x: 2 }, '/reuse']],
  ]) {
    test(`a key reused with a different ${label} → duplicate_error / IDEMPOTENCY_KEY_REUSED (leased or not)`, async () => {
      const s = await fx.connect({ lockTimeoutMs: 150 })
      const key = uniq('reuse')
      await s.initializeRequest(key, 'POST', { x: 1 }, '/reuse')
      // Still leased.
      const e1 = await rejects(s.initializeRequest(key, ...args))
      assertErr(e1, 'duplicate_error', 'IDEMPOTENCY_KEY_REUSED')
      // Lease expired.
      await sleep(300)
      const e2 = await rejects(s.initializeRequest(key, ...args))
      assertErr(e2, 'duplicate_error', 'IDEMPOTENCY_KEY_REUSED')
      // The row is untouched.
      const r = await row(key)
      assert.equal(r.request_method, 'POST')
      assert.equal(r.request_path, '/reuse')
      assert.deepEqual(r.request_params, { x: 1 })
    })
  }
})
