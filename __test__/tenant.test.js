// Tenant scope: `service.forTenant(id)` gives a copy that sees only that tenant's keys, stored as
// `<tenant>/<key>` in Medusa's table. Two tenants sending the same client key never see each
// other's keys, responses, locks, abandoned requests or reaping. Runs on the backend
// IDEM_BACKEND selects; stored rows are checked through the verification client.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { ageKey, useFreshDb, holdStage, isPostgres } = require('./helpers')
const { uniq } = require('../test-support/keys')

/** Await `fn()`, expect a rejection whose fields include `fields`. */
async function rejects(fn, fields) {
  let err
  try {
    await fn()
  } catch (e) {
    err = e
  }
  assert.ok(err instanceof Error, `expected a rejection with ${JSON.stringify(fields)}`)
  for (const [k, v] of Object.entries(fields)) assert.equal(err[k], v, `${k} of ${err.message}`)
  return err
}

let fx
let db
useFreshDb((f) => {
  fx = f
  db = fx.db
})

async function storedKeys(like) {
  const rows = await db.query('SELECT idempotency_key FROM idempotency_key WHERE idempotency_key LIKE $1 ORDER BY idempotency_key', [like])
  return rows.map((r) => r.idempotency_key)
}

const finish = (body) => async () => ({ response_code: 201, response_body: body })

test('two tenants with the same client key get separate keys and their own responses', async () => {
  const key = uniq('same')
  const a = fx.service.forTenant(uniq('acme'))
  const b = fx.service.forTenant(uniq('globex'))
  assert.match(a.tenant, /^acme-/)
  assert.equal(fx.service.tenant, null)

  const ka = await a.initializeRequest(key, 'POST', { cart: 1 }, '/checkout')
  assert.equal(ka.idempotency_key, key, 'the tenant sees its client key, not the stored form')
  // Tenant B's identical request is not "in flight" (it would be LOCKED unscoped): its own key.
  const kb = await b.initializeRequest(key, 'POST', { cart: 1 }, '/checkout')
  assert.equal(kb.idempotency_key, key)
  assert.notEqual(ka.id, kb.id)
  assert.deepEqual(await storedKeys(`%/${key}`), [`${a.tenant}/${key}`, `${b.tenant}/${key}`].sort())

  await a.workStage(key, finish({ who: 'a' }))
  await b.workStage(key, finish({ who: 'b' }))
  assert.deepEqual((await a.initializeRequest(key, 'POST', { cart: 1 }, '/checkout')).response_body, { who: 'a' })
  assert.deepEqual((await b.initializeRequest(key, 'POST', { cart: 1 }, '/checkout')).response_body, { who: 'b' })
  // A different request body under tenant B's key is B's reuse, not a collision with A.
  await rejects(() => b.initializeRequest(key, 'POST', { cart: 2 }, '/checkout'), { type: 'duplicate_error', code: 'IDEMPOTENCY_KEY_REUSED' })
})

test('a tenant cannot retrieve, lock, update or stage another tenant\'s key', async () => {
  const key = uniq('private')
  const a = fx.service.forTenant(uniq('t'))
  const b = fx.service.forTenant(uniq('t'))
  await a.create({ idempotency_key: key, request_path: '/only-a' })
  const notFound = { type: 'not_found' }
  await rejects(() => b.retrieve(key), notFound)
  await rejects(() => b.retrieve({ idempotency_key: key }), notFound)
  await rejects(() => b.retrieve({ request_path: '/only-a' }), notFound)
  await rejects(() => b.lock(key), notFound)
  await rejects(() => b.update(key, { recovery_point: 'x' }), notFound)
  let ran = false
  await rejects(() => b.workStage(key, async () => { ran = true; return { recovery_point: 'x' } }), notFound)
  assert.equal(ran, false)
  // The owner sees it, by key and by selector, with the client key.
  assert.equal((await a.retrieve(key)).idempotency_key, key)
  assert.equal((await a.retrieve({ request_path: '/only-a' })).idempotency_key, key)
  assert.equal((await a.retrieve({ idempotency_key: [key, 'other'] })).idempotency_key, key)
  // The unscoped service sees the stored form.
  assert.equal((await fx.service.retrieve(`${a.tenant}/${key}`)).request_path, '/only-a')
  // Error messages name the client's key, not the stored form.
  const err = await b.retrieve(key).catch((e) => e)
  assert.ok(err.message.includes(key) && !err.message.includes(`${b.tenant}/`), err.message)
})

test('a fresh key (empty header) and create() without a key are stored under the tenant', async () => {
  const t = fx.service.forTenant(uniq('gen'))
  const k1 = await t.initializeRequest('', 'POST', null, '/fresh')
  const k2 = await t.create({})
  for (const k of [k1, k2]) {
    assert.match(k.idempotency_key, /^[0-9a-f-]{36}$/)
    assert.deepEqual(await storedKeys(`${t.tenant}/${k.idempotency_key}`), [`${t.tenant}/${k.idempotency_key}`])
  }
})

test('listAbandoned() and reap() of a tenant touch only that tenant\'s keys', async () => {
  const a = fx.service.forTenant(uniq('ra'))
  const b = fx.service.forTenant(uniq('rb'))
  const key = uniq('old')
  await a.create({ idempotency_key: key })
  await b.create({ idempotency_key: key })
  await ageKey(db, `${a.tenant}/${key}`, 30)
  await ageKey(db, `${b.tenant}/${key}`, 30)
  const listed = await a.listAbandoned({ idleMs: 1000, limit: 1000 })
  assert.deepEqual(listed.map((k) => k.idempotency_key), [key])
  assert.equal(await a.reap({ olderThanMs: 3600_000 }), 1)
  assert.deepEqual(await storedKeys(`%/${key}`), [`${b.tenant}/${key}`])
  assert.equal((await b.listAbandoned({ idleMs: 1000 })).length, 1)
})

test('the scoped copy follows withTransaction: a nested stage in a tenant stage stays in the tenant', async () => {
  const t = fx.service.forTenant(uniq('tx'))
  const outer = uniq('outer')
  const inner = uniq('inner')
  await t.create({ idempotency_key: outer })
  await t.create({ idempotency_key: inner })
  await t.workStage(outer, async (tx) => {
    const scoped = t.withTransaction(tx)
    assert.equal(scoped.tenant, t.tenant)
    await scoped.workStage(inner, async () => ({ recovery_point: 'nested' }))
    return { recovery_point: 'done' }
  })
  assert.equal((await t.retrieve(inner)).recovery_point, 'nested')
})

test('bad tenant ids are invalid_data', async () => {
  for (const bad of ['', 'a/b', 'x'.repeat(129), 'tab\t', 'é', 42, null, undefined, {}]) {
    assert.throws(() => fx.service.forTenant(bad), (e) => e.type === 'invalid_data' && e.code === 'INVALID_ARGUMENT', `forTenant(${JSON.stringify(bad)})`)
  }
  assert.equal(fx.service.forTenant('x'.repeat(128)).tenant, 'x'.repeat(128))
})

test('a scoped copy cannot step into another tenant: forTenant on it is invalid_data', async () => {
  const a = fx.service.forTenant(uniq('outer'))
  assert.throws(() => a.forTenant('other'), (e) => e.type === 'invalid_data' && /already scoped/.test(e.message))
  assert.throws(() => a.forTenant(a.tenant), (e) => e.type === 'invalid_data')
})

test('a LOCKED message from a nested stage names the client key, not the stored form', async () => {
  const t = fx.service.forTenant(uniq('msg'))
  const outer = uniq('outer')
  const inner = uniq('held')
  await t.create({ idempotency_key: outer })
  await t.create({ idempotency_key: inner })
  // Another stage holds `inner`; a nested stage on it (inside a stage on `outer`) is refused.
  const holder = holdStage(t, inner)
  await holder.inside
  let err
  if (isPostgres) {
    await t.workStage(outer, async (tx) => {
      err = await t.withTransaction(tx).workStage(inner, async () => ({ recovery_point: 'never' })).catch((e) => e)
      return { recovery_point: 'outer_done' }
    })
  } else {
    // SQLite has one writer: the outer stage would wait for the holder. Same check, top level.
    err = await t.workStage(inner, async () => ({ recovery_point: 'never' })).catch((e) => e)
  }
  holder.release()
  await holder.done
  assert.equal(err?.code, 'IDEMPOTENCY_KEY_LOCKED', String(err))
  assert.ok(err.message.includes(inner) && !err.message.includes(`${t.tenant}/`), err.message)
})

test('bound mode: withTransaction(client).forTenant(t) stays bound and hands stages the client', { skip: !isPostgres && 'withTransaction(executor) is PostgreSQL-only' }, async () => {
  const { Client } = require('pg')
  const c = new Client({ connectionString: fx.url })
  await c.connect()
  try {
    const t = uniq('bound')
    const key = uniq('bk')
    await fx.service.forTenant(t).create({ idempotency_key: key })
    await c.query('BEGIN')
    let got
    const k = await fx.service.withTransaction(c).forTenant(t).workStage(key, async (m) => {
      got = m
      return { recovery_point: 'bound_done' }
    })
    await c.query('COMMIT')
    assert.equal(got, c, 'the callback received the caller\'s client')
    assert.equal(k.idempotency_key, key)
    assert.equal((await fx.service.forTenant(t).retrieve(key)).recovery_point, 'bound_done')
  } finally {
    await c.end()
  }
})
