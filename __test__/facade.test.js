// The JS façade (lib/index.js) wraps the addon's classes instead of patching them: the addon's
// prototypes hold only the addon's own functions, the façade has every member the generated
// types declare, and neither class is made with `new` by a user. Runs on the backend
// IDEM_BACKEND selects.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const addon = require('../lib/binding.js')
const { IdempotencyKeyService, TransactionManager } = require('..')
const { useFreshDb } = require('./helpers')
const { uniq } = require('../test-support/keys')

let fx
useFreshDb((f) => (fx = f))

/** Own members of a class's prototype: name → 'method' | 'getter'. */
function members(Class) {
  const out = {}
  for (const name of Object.getOwnPropertyNames(Class.prototype)) {
    if (name === 'constructor') continue
    const d = Object.getOwnPropertyDescriptor(Class.prototype, name)
    out[name] = d.get ? 'getter' : 'method'
  }
  return out
}

test("the addon's prototypes hold only the addon's own functions: nothing patched onto them", () => {
  for (const Class of [addon.IdempotencyKeyService, addon.TransactionManager]) {
    for (const name of Object.getOwnPropertyNames(Class.prototype)) {
      if (name === 'constructor') continue
      const d = Object.getOwnPropertyDescriptor(Class.prototype, name)
      for (const fn of [d.value, d.get, d.set].filter((f) => typeof f === 'function')) {
        assert.match(Function.prototype.toString.call(fn), /\[native code\]/, `${Class.name}.prototype.${name}`)
      }
    }
  }
})

test('the façade has every member the generated types declare, and its own (completer, accept)', () => {
  const façade = members(IdempotencyKeyService)
  for (const [name, kind] of Object.entries(members(addon.IdempotencyKeyService))) assert.equal(façade[name], kind, `IdempotencyKeyService.${name}`)
  assert.equal(façade.completer, 'method')
  assert.equal(façade.accept, 'method')
  assert.deepEqual(members(TransactionManager), members(addon.TransactionManager))
  for (const name of ['connect', 'detached']) assert.equal(typeof IdempotencyKeyService[name], 'function')
  assert.notEqual(IdempotencyKeyService, addon.IdempotencyKeyService)
})

test('neither class is made with new; instances come from connect() and from stages', async () => {
  assert.throws(() => new IdempotencyKeyService(), { name: 'TypeError', message: /connect\(\)/ })
  assert.throws(() => new TransactionManager(), { name: 'TypeError' })
  const { service } = fx
  assert.ok(service instanceof IdempotencyKeyService)
  assert.ok(service.forTenant('t1') instanceof IdempotencyKeyService)
  const key = uniq('facade')
  await service.create({ idempotency_key: key })
  let bound
  await service.workStage(key, async (tx) => {
    assert.ok(tx instanceof TransactionManager)
    assert.equal(tx.active, true)
    bound = service.withTransaction(tx)
    assert.ok(bound instanceof IdempotencyKeyService)
    // A copy bound to the stage's transaction reads inside it.
    assert.equal((await bound.retrieve(key)).idempotency_key, key)
    return { recovery_point: 'next' }
  })
  assert.equal(service.withTransaction(), service, 'no manager: the service itself')
})
