// create(), retrieve() and update() (SPEC §2): what is stored and returned, selectors, and
// their typed errors; against a fresh database of the backend IDEM_BACKEND selects, verified through an
// independent client (node-postgres / better-sqlite3): methods-fixture.js.
const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { rejects, pick } = require('./helpers')
const { useMethodsDb, row } = require('./methods-fixture')
const { assertErr } = require('../test-support/errors')
const { uniq, UUID_V4, assertKeyShape } = require('../test-support/keys')

let db, service // set by useMethodsDb (methods-fixture.js)
useMethodsDb((t) => ({ db, service } = t))

// ---------------------------------------------------------------------------------------------
describe('create()', () => {
  test('with a key: stored with that value, recovery_point started, all ten fields', async () => {
    const key = uniq('create')
    const k = await service.create({
      idempotency_key: key,
      request_method: 'POST',
      request_params: { a: [1, { b: null }] },
      request_path: '/create',
    })
    assertKeyShape(k)
    assert.equal(k.idempotency_key, key)
    assert.equal(k.recovery_point, 'started')
    assert.equal(k.request_method, 'POST')
    assert.deepEqual(k.request_params, { a: [1, { b: null }] })
    assert.equal(k.request_path, '/create')
    assert.equal(k.response_code, null)
    assert.equal(k.response_body, null)
    const r = await row(key)
    assert.equal(r.id, k.id)
    assert.equal(r.recovery_point, 'started')
    assert.deepEqual(r.request_params, { a: [1, { b: null }] })
  })

  test('without a key (absent, undefined or null): a UUID v4 key', async () => {
    for (const payload of [{}, { idempotency_key: undefined }, { idempotency_key: null }]) {
      const k = await service.create(payload)
      assertKeyShape(k)
      assert.match(k.idempotency_key, UUID_V4)
      assert.equal(k.recovery_point, 'started')
      assert.equal(k.request_method, null)
      assert.equal(k.request_params, null)
      assert.equal(k.request_path, null)
      assert.ok((await row(k.idempotency_key)) !== undefined)
    }
  })

  test('a duplicate key → duplicate_error / 23505, and the first row is intact', async () => {
    const key = uniq('dup')
    const first = await service.create({ idempotency_key: key, request_path: '/first' })
    const e = await rejects(service.create({ idempotency_key: key, request_path: '/second' }))
    assertErr(e, 'duplicate_error', '23505')
    const r = await row(key)
    assert.equal(r.id, first.id)
    assert.equal(r.request_path, '/first')
  })
})

// ---------------------------------------------------------------------------------------------
describe('retrieve()', () => {
  test('by string', async () => {
    const key = uniq('ret')
    const c = await service.create({ idempotency_key: key, request_path: '/ret', request_params: { q: 1 } })
    const k = await service.retrieve(key)
    assertKeyShape(k)
    assert.deepEqual(k, c)
  })

  test('by selector { request_path, idempotency_key } (Stripe plugin)', async () => {
    const key = uniq('sel')
    const c = await service.create({ idempotency_key: key, request_path: '/stripe/hooks' })
    const k = await service.retrieve({ request_path: '/stripe/hooks', idempotency_key: key })
    assert.equal(k.id, c.id)
    const e = await rejects(service.retrieve({ request_path: '/other', idempotency_key: key }))
    assertErr(e, 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
  })

  test('{ response_code: null } means IS NULL', async () => {
    const path = uniq('/isnull')
    const a = await service.create({ idempotency_key: uniq('isnull-a'), request_path: path })
    const b = await service.create({ idempotency_key: uniq('isnull-b'), request_path: path })
    await service.update(b.idempotency_key, { response_code: 200 })
    const k = await service.retrieve({ request_path: path, response_code: null })
    assert.equal(k.id, a.id)
    const k2 = await service.retrieve({ request_path: path, response_code: 200 })
    assert.equal(k2.id, b.id)
  })

  test('an array means IN', async () => {
    const a = await service.create({ idempotency_key: uniq('in-a'), request_path: uniq('/in-a') })
    const b = await service.create({ idempotency_key: uniq('in-b'), request_path: uniq('/in-b') })
    const k = await service.retrieve({ idempotency_key: [a.idempotency_key, 'no-such-key-xyz'] })
    assert.equal(k.id, a.id)
    const e = await rejects(service.retrieve({ idempotency_key: [a.idempotency_key, b.idempotency_key] }))
    assertErr(e, 'unexpected_state', 'IDEMPOTENCY_KEY_AMBIGUOUS')
  })

  test('an unknown column → invalid_data / INVALID_ARGUMENT (never interpolated)', async () => {
    const e = await rejects(service.retrieve({ nope: 'x' }))
    assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    const e2 = await rejects(service.retrieve({ 'id" IS NOT NULL OR "id': 'x' }))
    assertErr(e2, 'invalid_data', 'INVALID_ARGUMENT')
  })

  test('two rows match → unexpected_state / IDEMPOTENCY_KEY_AMBIGUOUS', async () => {
    const path = uniq('/ambiguous')
    await service.create({ idempotency_key: uniq('amb1'), request_path: path })
    await service.create({ idempotency_key: uniq('amb2'), request_path: path })
    const e = await rejects(service.retrieve({ request_path: path }))
    assertErr(e, 'unexpected_state', 'IDEMPOTENCY_KEY_AMBIGUOUS')
  })

  test('undefined → not_found with Medusa\'s exact message', async () => {
    const e = await rejects(service.retrieve(undefined))
    assertErr(e, 'not_found')
    assert.equal(e.message, '"idempotencyKeyOrSelector" must be defined')
    const e2 = await rejects(service.retrieve())
    assertErr(e2, 'not_found')
    assert.equal(e2.message, '"idempotencyKeyOrSelector" must be defined')
  })

  test('a missing key → not_found / IDEMPOTENCY_KEY_NOT_FOUND with Medusa\'s message', async () => {
    const key = uniq('missing')
    const e = await rejects(service.retrieve(key))
    assertErr(e, 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
    assert.equal(e.message, `Idempotency key ${key} was not found`)
  })
})

// ---------------------------------------------------------------------------------------------
describe('update()', () => {
  test('undefined leaves a column alone, null writes NULL', async () => {
    const key = uniq('upd')
    await service.create({ idempotency_key: key, request_method: 'POST', request_path: '/upd', request_params: { p: 1 } })
    await service.update(key, { response_code: 200, response_body: { a: 1 } })
    const k = await service.update(key, { response_code: undefined, response_body: null, request_method: undefined })
    assertKeyShape(k)
    assert.equal(k.response_code, 200)
    assert.equal(k.response_body, null)
    assert.equal(k.request_method, 'POST')
    const r = await row(key)
    assert.equal(r.response_code, 200)
    assert.equal(r.response_body, null)
    assert.equal(r.request_method, 'POST')
    assert.deepEqual(r.request_params, { p: 1 })
    // null on a nullable column really writes SQL NULL (not JSON null).
    const [j] = await db.query(
      "SELECT CASE WHEN response_body IS NULL THEN 'sql null' ELSE 'not sql null' END AS null_kind FROM idempotency_key WHERE idempotency_key = $1",
      [key],
    )
    assert.equal(j.null_kind, 'sql null')
    const k2 = await service.update(key, { response_code: null, request_path: null })
    assert.equal(k2.response_code, null)
    assert.equal(k2.request_path, null)
    assert.equal(k2.request_method, 'POST')
  })

  test('response_body object stored as JSON (jsonb; JSON text on SQLite) and returned parsed', async () => {
    const key = uniq('updbody')
    await service.create({ idempotency_key: key })
    const body = { cart: { id: 'c1', items: [{ q: 2, price: 10.5 }], ok: true, none: null }, s: 'é✓' }
    const k = await service.update(key, { response_body: body, response_code: 201, recovery_point: 'payment_authorized' })
    assert.deepEqual(k.response_body, body)
    assert.equal(k.response_code, 201)
    assert.equal(k.recovery_point, 'payment_authorized')
    const r = await row(key)
    assert.deepEqual(r.response_body, body)
    const [t] = await db.query(
      `SELECT ${pick({ postgres: 'jsonb_typeof', sqlite: 'json_type' })}(response_body) AS t FROM idempotency_key WHERE idempotency_key = $1`,
      [key],
    )
    assert.equal(t.t, 'object')
  })

  test('an unknown field → invalid_data / INVALID_ARGUMENT, nothing written', async () => {
    const key = uniq('updunk')
    await service.create({ idempotency_key: key })
    const e = await rejects(service.update(key, { response_code: 500, nope: 1 }))
    assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    assert.equal((await row(key)).response_code, null)
  })

  test('a missing key → not_found / IDEMPOTENCY_KEY_NOT_FOUND', async () => {
    const e = await rejects(service.update(uniq('updmissing'), { response_code: 200 }))
    assertErr(e, 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
  })

  test("setting recovery_point 'finished' clears locked_at", async () => {
    const key = uniq('updfin')
    const k0 = await service.initializeRequest(key, 'POST', {}, '/updfin')
    assert.ok(k0.locked_at instanceof Date)
    assert.ok((await row(key)).locked_at instanceof Date)
    const k = await service.update(key, { recovery_point: 'finished', response_code: 200, response_body: {} })
    assert.equal(k.recovery_point, 'finished')
    assert.equal(k.locked_at, null)
    assert.equal((await row(key)).locked_at, null)
  })
})
