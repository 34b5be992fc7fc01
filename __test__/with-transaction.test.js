// withTransaction() (SPEC §4): no argument gives the service back, a stage's tx binds create()
// and retrieve() to that transaction, anything else is refused; against a fresh database of the backend IDEM_BACKEND selects, verified through an
// independent client (node-postgres / better-sqlite3): methods-fixture.js.
const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { IdempotencyKeyService } = require('..')
const { rejects } = require('./helpers')
const { useMethodsDb, row } = require('./methods-fixture')
const { assertErr } = require('../test-support/errors')
const { uniq, assertKeyShape } = require('../test-support/keys')

let service // set by useMethodsDb (methods-fixture.js)
useMethodsDb((t) => ({ service } = t))

// ---------------------------------------------------------------------------------------------
describe('withTransaction()', () => {
  test('with no argument returns the same instance', () => {
    assert.equal(service.withTransaction(), service)
    assert.equal(service.withTransaction(undefined), service)
  })

  test('withTransaction(tx) inside a stage runs create()/retrieve() in that transaction', async () => {
    const outer = uniq('wt-outer')
    const inner = uniq('wt-inner')
    await service.create({ idempotency_key: outer })
    let visibleInside
    await service.workStage(outer, async (tx) => {
      const bound = service.withTransaction(tx)
      assert.ok(bound instanceof IdempotencyKeyService)
      assert.notEqual(bound, service)
      const k = await bound.create({ idempotency_key: inner, request_path: '/inner' })
      assertKeyShape(k)
      const r = await bound.retrieve(inner)
      assert.equal(r.id, k.id)
      // The same transaction sees it through tx too…
      const viaTx = await tx.query('SELECT id FROM idempotency_key WHERE idempotency_key = $1', [inner])
      assert.deepEqual(viaTx, [{ id: k.id }])
      // …but it has not committed.
      visibleInside = await row(inner)
      // And the unbound service (its own pool) cannot see it either.
      assertErr(await rejects(service.retrieve(inner)), 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
      return { recovery_point: 'inner_created' }
    })
    assert.equal(visibleInside, undefined)
    const r = await row(inner)
    assert.equal(r.request_path, '/inner')
    assert.equal((await row(outer)).recovery_point, 'inner_created')
  })

  test('a key created through withTransaction(tx) disappears when the outer callback throws', async () => {
    const outer = uniq('wt-outer2')
    const inner = uniq('wt-inner2')
    await service.create({ idempotency_key: outer })
    const boom = new Error('outer failed')
    const e = await rejects(
      service.workStage(outer, async (tx) => {
        await service.withTransaction(tx).create({ idempotency_key: inner })
        throw boom
      }),
    )
    assert.equal(e, boom)
    assert.equal(await row(inner), undefined)
    assertErr(await rejects(service.retrieve(inner)), 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
  })

  test('withTransaction(123) throws a typed invalid_data error', () => {
    for (const bad of [123, 'tx', Symbol('t'), true]) {
      let thrown
      try {
        service.withTransaction(bad)
      } catch (e) {
        thrown = e
      }
      assert.notEqual(thrown, undefined, `withTransaction(${String(bad)}) did not throw`)
      assertErr(thrown, 'invalid_data', 'INVALID_ARGUMENT')
    }
  })
})
