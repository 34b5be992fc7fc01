// The JS façade (lib/index.js) wraps the addon's classes instead of patching them: the addon's
// prototypes hold only the addon's own functions, the façade has every member the generated
// types declare, and neither class is made with `new` by a user. Runs on the backend
// IDEM_BACKEND selects.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const addon = require('../lib/binding.js')
const { IdempotencyKeyService, TransactionManager, StatementLog } = require('..')
const { useFreshDb, isPostgres } = require('./helpers')
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
  assert.deepEqual(members(StatementLog), members(addon.StatementLog))
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

test('a StatementLog is the only thing withStatementLog takes; misused, both are typed INVALID_ARGUMENT', async () => {
  const { service } = fx
  for (const bad of [{}, null, 10n, new Proxy({}, {})]) {
    assert.throws(() => service.withStatementLog(bad), { code: 'INVALID_ARGUMENT', type: 'invalid_data' })
  }
  assert.throws(() => StatementLog.prototype.take.call({}), { code: 'INVALID_ARGUMENT' })
  const log = new StatementLog()
  await service.withStatementLog(log).retrieve((await service.create({})).idempotency_key)
  assert.match(log.take()[0].sql[0], /^SELECT .*FROM idempotency_key/s)
  assert.deepEqual(log.take(), [])
})

// Bound copies hand their stage callbacks what they are bound to, whatever copy they came from.
test('a copy re-bound to a stage hands its callback that stage\'s TransactionManager; bindExecutor\'s copy hands undefined', { skip: !isPostgres && 'a caller\'s executor is PostgreSQL' }, async () => {
  const { Client } = require('pg')
  const { service } = fx
  const client = new Client({ connectionString: fx.directUrl })
  await client.connect()
  try {
    const outer = (await service.create({})).idempotency_key
    const inner = (await service.create({})).idempotency_key
    const viaClient = service.withTransaction(client)
    let handed
    await service.workStage(outer, async (tx) => {
      await viaClient.withTransaction(tx).workStage(inner, async (m) => {
        handed = m
        return { recovery_point: 'inner' }
      })
      return { recovery_point: 'outer' }
    })
    assert.ok(handed instanceof TransactionManager, 'the stage\'s handle, not the client the copy came from')
    assert.notEqual(handed, client)

    let got = 'unset'
    const third = (await service.create({})).idempotency_key
    await client.query('BEGIN')
    await service.bindExecutor(require('..').wrapExecutor(client)).workStage(third, async (m) => {
      got = m
      return { recovery_point: 'bound' }
    })
    await client.query('COMMIT')
    assert.equal(got, undefined)
    assert.equal((await service.retrieve(third)).recovery_point, 'bound')
  } finally {
    await client.end()
  }
})
