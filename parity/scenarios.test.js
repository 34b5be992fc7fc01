'use strict'
// One scenario source, run against Medusa 1.20's original IdempotencyKeyService and against
// medusa-idempotency-native/medusa, both built as Medusa's loaders build them (harness.js), over
// one fresh PostgreSQL database. Where SPEC §3 says we deliberately differ, each side's
// behaviour is asserted, not skipped. Every test prints what each side did (`# medusa: …`).
const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { setup, settle, tally, uniq } = require('./harness.js')
const { KEY_FIELDS: FIELDS, UUID_V4 } = require('../test-support/keys')

let h
before(async () => {
  h = await setup()
  // What stage bodies "did" (tax lines, payment authorisation, order): one row per committed body.
  await h.manager.query(
    'CREATE TABLE parity_effect (id serial PRIMARY KEY, ikey varchar NOT NULL, stage varchar NOT NULL)',
  )
})
after(async () => {
  await h?.teardown()
})

const IMPLEMENTATIONS = [
  { name: 'medusa', make: () => h.make.medusa() },
  { name: 'native', make: () => h.make.native() },
]

/** The key as a plain object (Medusa returns entity instances, ours plain objects). */
const plain = (key) => Object.fromEntries(FIELDS.map((f) => [f, key[f]]))

const cartRequest = (cartId = `cart_${uniq('c').slice(2, 14)}`) => ({
  method: 'POST',
  params: { id: cartId },
  path: `/store/carts/${cartId}/complete`,
})

/** The complete-cart route's first step: initializeRequest bound to a route transaction. */
function initialize(svc, headerKey, req) {
  return h.manager.transaction((tm) =>
    svc.withTransaction(tm).initializeRequest(headerKey, req.method, req.params, req.path),
  )
}

/** One stage as Medusa's cart-completion strategy runs it (default isolation since 1.20). */
function stage(svc, key, name, result, options) {
  const args = [
    key,
    async (m) => {
      await m.query('INSERT INTO parity_effect (ikey, stage) VALUES ($1, $2)', [key, name])
      return result
    },
  ]
  if (options) args.push(options)
  return h.manager.transaction((tm) => svc.withTransaction(tm).workStage(...args))
}

const orderFor = (req) => ({ type: 'order', data: { id: `order_for_${req.params.id}`, cart_id: req.params.id } })

/** Medusa's CartCompletionStrategy.complete loop: run stages until `finished`. */
async function complete(svc, key, req) {
  const seen = []
  for (;;) {
    seen.push(key.recovery_point)
    switch (key.recovery_point) {
      case 'started':
        key = await stage(svc, key.idempotency_key, 'tax_lines', { recovery_point: 'tax_lines_created' })
        break
      case 'tax_lines_created':
        key = await stage(svc, key.idempotency_key, 'authorize_payment', { recovery_point: 'payment_authorized' })
        break
      case 'payment_authorized':
        key = await stage(svc, key.idempotency_key, 'create_order', {
          response_code: 200,
          response_body: orderFor(req),
        })
        break
      case 'finished':
        return { key, seen }
      default:
        throw new Error(`unexpected recovery point ${key.recovery_point}`)
    }
  }
}

async function effects(ikey) {
  const rows = await h.manager.query('SELECT stage FROM parity_effect WHERE ikey = $1 ORDER BY id', [ikey])
  return rows.map((r) => r.stage)
}

async function rowsWhere(column, value) {
  return h.manager.query(`SELECT * FROM idempotency_key WHERE ${column} = $1`, [value])
}

const errorSummary = (e) => ({ name: e?.name, type: e?.type, code: e?.code, message: e?.message })

describe('table', () => {
  it("Medusa's initial migration creates SPEC §1's table; our migrate() leaves it untouched but for one additive index", async () => {
    const snapshot = async () => ({
      columns: await h.manager.query(
        `SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns
          WHERE table_schema = 'public' AND table_name = 'idempotency_key' ORDER BY ordinal_position`,
      ),
      indexes: await h.manager.query(
        `SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'idempotency_key' ORDER BY indexname`,
      ),
      constraints: await h.manager.query(
        `SELECT conname, contype FROM pg_constraint WHERE conrelid = 'public.idempotency_key'::regclass ORDER BY conname`,
      ),
    })
    const medusa = await snapshot()
    assert.deepEqual(
      medusa.columns.map((c) => c.column_name),
      FIELDS,
    )
    assert.deepEqual(
      medusa.constraints.map((c) => [c.conname, c.contype]),
      [['PK_213f125e14469be304f9ff1d452', 'p']],
    )
    assert.deepEqual(
      medusa.indexes.map((i) => i.indexname),
      ['IDX_a421bf4588d0004a9b0c0fe84f', 'PK_213f125e14469be304f9ff1d452'],
    )
    const { IdempotencyKeyService } = require('medusa-idempotency-native')
    const svc = await IdempotencyKeyService.connect({ url: h.url, maxConnections: 1 })
    try {
      await svc.migrate()
      await svc.migrate()
    } finally {
      await svc.close()
    }
    // Columns, constraints and Medusa's own indexes are untouched; the only change is the
    // additive expiry migration's index (reap() by created_at).
    const after = await snapshot()
    assert.deepEqual(after.columns, medusa.columns)
    assert.deepEqual(after.constraints, medusa.constraints)
    const ours = ['IDX_idempotency_key_created_at']
    assert.deepEqual(after.indexes.filter((i) => !ours.includes(i.indexname)), medusa.indexes)
    assert.deepEqual(after.indexes.filter((i) => ours.includes(i.indexname)).map((i) => i.indexname), ours)
  })
})

for (const { name, make } of IMPLEMENTATIONS) {
  describe(name, () => {
    it('route flow: initializeRequest, three stages in route transactions, finished; a retry replays', async (t) => {
      const svc = make()
      const req = cartRequest()
      // No Idempotency-Key header: the route passes "".
      const first = await initialize(svc, '', req)
      assert.match(first.idempotency_key, UUID_V4)
      assert.match(first.id, /^ikey_[0-9A-HJKMNP-TV-Z]{26}$/)
      assert.equal(first.recovery_point, 'started')
      assert.equal(first.request_method, 'POST')
      assert.deepEqual(first.request_params, req.params)
      assert.equal(first.request_path, req.path)
      assert.equal(first.response_code, null)

      const { key: done, seen } = await complete(svc, first, req)
      assert.deepEqual(seen, ['started', 'tax_lines_created', 'payment_authorized', 'finished'])
      assert.equal(done.id, first.id)
      assert.equal(done.recovery_point, 'finished')
      assert.equal(done.response_code, 200)
      assert.deepEqual(done.response_body, orderFor(req))
      assert.deepEqual(await effects(first.idempotency_key), ['tax_lines', 'authorize_payment', 'create_order'])

      // The client retries with the Idempotency-Key the route returned.
      const replay = await initialize(svc, first.idempotency_key, req)
      assert.equal(replay.id, first.id)
      assert.equal(replay.recovery_point, 'finished')
      assert.equal(replay.response_code, 200)
      assert.deepEqual(replay.response_body, orderFor(req))
      assert.equal(replay.locked_at, null)
      const again = await complete(svc, replay, req)
      assert.deepEqual(again.seen, ['finished'])
      assert.deepEqual(await effects(first.idempotency_key), ['tax_lines', 'authorize_payment', 'create_order'])
      const stored = await svc.retrieve(first.idempotency_key)
      assert.deepEqual(plain(stored), plain(replay))
      t.diagnostic(`${name}: stages ${seen.join(' → ')}; retry replayed ${replay.response_code} ${JSON.stringify(replay.response_body)}`)
    })

    it("not found: retrieve of a missing key rejects not_found, 'Idempotency key <key> was not found'", async (t) => {
      const svc = make()
      const missing = uniq('missing')
      const err = await svc.retrieve(missing).then(
        () => assert.fail('retrieve resolved'),
        (e) => e,
      )
      assert.ok(err instanceof Error)
      assert.equal(err.type, 'not_found')
      assert.equal(err.message, `Idempotency key ${missing} was not found`)
      if (name === 'native') assert.equal(err.code, 'IDEMPOTENCY_KEY_NOT_FOUND')
      const undef = await svc.retrieve(undefined).then(
        () => assert.fail('retrieve(undefined) resolved'),
        (e) => e,
      )
      assert.equal(undef.type, 'not_found')
      assert.equal(undef.message, '"idempotencyKeyOrSelector" must be defined')
      t.diagnostic(`${name}: ${JSON.stringify(errorSummary(err))}`)
    })

    it('update: given fields are written (null writes NULL), others and undefined ones kept', async (t) => {
      const svc = make()
      const k = uniq('upd')
      await svc.create({ idempotency_key: k, request_method: 'POST', request_path: '/p', request_params: { a: 1 } })

      const u1 = await svc.update(k, { response_code: 201, response_body: { ok: true } })
      assert.equal(u1.response_code, 201)
      assert.deepEqual(u1.response_body, { ok: true })
      assert.equal(u1.recovery_point, 'started')
      assert.equal(u1.request_method, 'POST')
      assert.equal(u1.request_path, '/p')
      assert.deepEqual(u1.request_params, { a: 1 })

      const u2 = await svc.update(k, { recovery_point: 'tax_lines_created', request_method: null, response_code: undefined })
      assert.equal(u2.recovery_point, 'tax_lines_created')
      assert.equal(u2.request_method, null)
      const stored = await svc.retrieve(k)
      assert.equal(stored.recovery_point, 'tax_lines_created')
      assert.equal(stored.request_method, null)
      assert.equal(stored.response_code, 201, '`undefined` leaves the stored column alone')
      assert.deepEqual(stored.response_body, { ok: true })
      assert.equal(stored.request_path, '/p')
      assert.deepEqual(stored.request_params, { a: 1 })
      // What the call RETURNS for the `undefined` field differs: Medusa's returned entity shows
      // null (TypeORM skipped the column, the object says otherwise); ours shows the row.
      if (name === 'medusa') assert.equal(u2.response_code, null)
      else assert.equal(u2.response_code, 201)

      const missing = uniq('missing')
      const err = await svc.update(missing, { response_code: 1 }).then(
        () => assert.fail('update of a missing key resolved'),
        (e) => e,
      )
      assert.equal(err.type, 'not_found')
      assert.equal(err.message, `Idempotency key ${missing} was not found`)
      t.diagnostic(`${name}: stored after update(undefined) ${stored.response_code}; returned ${u2.response_code}`)
    })

    it("selector retrieve, as Medusa's Stripe plugin does: retrieve({ request_path, idempotency_key })", async (t) => {
      const svc = make()
      const k = uniq('evt')
      const created = await svc.create({ idempotency_key: k, request_path: '/stripe/hooks', request_method: 'POST' })
      const found = await svc.retrieve({ request_path: '/stripe/hooks', idempotency_key: k })
      assert.equal(found.id, created.id)
      assert.equal(found.idempotency_key, k)
      const miss = await svc.retrieve({ request_path: '/other', idempotency_key: k }).then(
        () => assert.fail('selector miss resolved'),
        (e) => e,
      )
      assert.equal(miss.type, 'not_found')
      t.diagnostic(`${name}: selector hit ${found.id}; miss ${JSON.stringify(errorSummary(miss))}`)
    })

    it("selector miss: Medusa's message 'Idempotency key with constraints <selector JSON> was not found'", async (t) => {
      const svc = make()
      const selector = { request_path: '/other', idempotency_key: uniq('evt') }
      const miss = await svc.retrieve(selector).then(
        () => assert.fail('selector miss resolved'),
        (e) => e,
      )
      t.diagnostic(`${name}: ${miss.message}`)
      assert.equal(miss.type, 'not_found')
      assert.equal(miss.message, `Idempotency key with constraints ${JSON.stringify(selector)} was not found`)
    })

    it('differs (a): an unknown client key — Medusa creates a fresh UUID key, ours creates the client key', async (t) => {
      const svc = make()
      const clientKey = uniq('client')
      const req = cartRequest()
      const key = await initialize(svc, clientKey, req)
      assert.equal(key.recovery_point, 'started')
      assert.equal(key.request_path, req.path)
      const byPath = await rowsWhere('request_path', req.path)
      assert.equal(byPath.length, 1)
      if (name === 'medusa') {
        assert.notEqual(key.idempotency_key, clientKey)
        assert.match(key.idempotency_key, UUID_V4)
        assert.equal((await rowsWhere('idempotency_key', clientKey)).length, 0)
        const err = await svc.retrieve(clientKey).then(
          () => assert.fail('client key exists'),
          (e) => e,
        )
        assert.equal(err.type, 'not_found')
      } else {
        assert.equal(key.idempotency_key, clientKey)
        assert.equal(byPath[0].idempotency_key, clientKey)
        assert.equal((await svc.retrieve(clientKey)).id, key.id)
      }
      t.diagnostic(`${name}: sent ${clientKey}, got ${key.idempotency_key}`)
    })

    it('differs (b): 16 concurrent initializeRequest with one unknown key — Medusa many rows, ours one', async (t) => {
      const svc = make()
      const clientKey = uniq('client')
      const req = cartRequest()
      const { values, errors } = await settle(Array.from({ length: 16 }, () => initialize(svc, clientKey, req)))
      const rows = await rowsWhere('request_path', req.path)
      const distinct = new Set(rows.map((r) => r.idempotency_key))
      t.diagnostic(
        `${name}: ${values.length} resolved, rejected ${JSON.stringify(tally(errors))}; ${rows.length} rows, ` +
          `${rows.filter((r) => r.idempotency_key === clientKey).length} carrying the client key`,
      )
      if (name === 'medusa') {
        assert.equal(errors.length, 0)
        assert.equal(rows.length, 16)
        assert.equal(distinct.size, 16)
        assert.ok(!distinct.has(clientKey))
      } else {
        assert.equal(rows.length, 1)
        assert.equal(rows[0].idempotency_key, clientKey)
        assert.equal(values.length, 1, 'exactly one caller gets the key')
        assert.equal(values[0].idempotency_key, clientKey)
        assert.deepEqual(tally(errors), { 'conflict/IDEMPOTENCY_KEY_LOCKED': 15 })
      }
    })

    it('differs (c): lock() — Medusa on Postgres never locks (22008 or "Key already locked"), ours locks once', async (t) => {
      const svc = make()
      const k = uniq('lock')
      await svc.create({ idempotency_key: k, request_path: '/lock' })
      const k16 = uniq('lock16')
      await svc.create({ idempotency_key: k16, request_path: '/lock' })
      const first = await svc.lock(k).then(
        (v) => v,
        (e) => e,
      )
      const second = await svc.lock(k).then(
        (v) => v,
        (e) => e,
      )
      const many = await settle(Array.from({ length: 16 }, () => svc.lock(k16)))
      t.diagnostic(
        `${name}: first ${first instanceof Error ? JSON.stringify(errorSummary(first)) : `locked_at ${first.locked_at.toISOString()}`}; ` +
          `second ${second instanceof Error ? JSON.stringify(errorSummary(second)) : 'locked'}; ` +
          `16 concurrent: ${many.values.length} locked, rejected ${JSON.stringify(tally(many.errors))}`,
      )
      if (name === 'medusa') {
        // It writes Date.now() (epoch ms) into a timestamptz. PostgreSQL words the 22008 as
        // "date/time field value out of range" or "timestamp out of range" depending on the digits.
        for (const e of [first, second, ...many.errors]) {
          assert.ok(e instanceof Error)
          assert.equal(e.code, '22008')
          assert.match(e.message, /out of range: "\d{13}"/)
        }
        assert.equal(many.values.length, 0)
        assert.equal((await svc.retrieve(k)).locked_at, null)
        // Its other branch: a fresh locked_at written by someone else is refused.
        await h.manager.query('UPDATE idempotency_key SET locked_at = now() WHERE idempotency_key = $1', [k])
        const locked = await svc.lock(k).then(
          () => assert.fail('lock resolved'),
          (e) => e,
        )
        assert.equal(locked.type, 'conflict')
        assert.equal(locked.message, 'Key already locked')
      } else {
        assert.ok(!(first instanceof Error), `lock failed: ${first?.message}`)
        assert.ok(first.locked_at instanceof Date)
        assert.ok(Math.abs(first.locked_at.getTime() - Date.now()) < 60_000)
        assert.deepEqual((await svc.retrieve(k)).locked_at, first.locked_at)
        assert.ok(second instanceof Error)
        assert.equal(second.type, 'conflict')
        assert.equal(second.code, 'IDEMPOTENCY_KEY_LOCKED')
        assert.equal(second.message, 'Key already locked', "Medusa's wording")
        assert.equal(many.values.length, 1, 'exactly one of 16 concurrent callers locks')
        assert.deepEqual(tally(many.errors), { 'conflict/IDEMPOTENCY_KEY_LOCKED': 15 })
      }
    })

    it('differs (d): a key reused for a different request — Medusa replays the stored key, ours refuses', async (t) => {
      const svc = make()
      const reqA = cartRequest()
      const reqB = cartRequest()
      const { key } = await complete(svc, await initialize(svc, '', reqA), reqA)
      assert.equal(key.recovery_point, 'finished')
      const reused = await initialize(svc, key.idempotency_key, reqB).then(
        (v) => v,
        (e) => e,
      )
      t.diagnostic(
        `${name}: ${reused instanceof Error ? JSON.stringify(errorSummary(reused)) : `returned ${reused.request_path} → ${JSON.stringify(reused.response_body)}`}`,
      )
      if (name === 'medusa') {
        assert.ok(!(reused instanceof Error), `initializeRequest failed: ${reused?.message}`)
        assert.equal(reused.id, key.id)
        assert.equal(reused.request_path, reqA.path)
        assert.deepEqual(reused.response_body, orderFor(reqA), "cart B's request gets cart A's order")
      } else {
        assert.ok(reused instanceof Error)
        assert.equal(reused.type, 'duplicate_error')
        assert.equal(reused.code, 'IDEMPOTENCY_KEY_REUSED')
        // The original request still replays.
        const replay = await initialize(svc, key.idempotency_key, reqA)
        assert.deepEqual(replay.response_body, orderFor(reqA))
      }
      // Either way nothing ran for cart B.
      assert.equal((await rowsWhere('request_path', reqB.path)).length, 0)
    })

    it('differs (e): 16 concurrent workStage on one key — committed stage bodies: Medusa > 1, ours exactly 1', async (t) => {
      const svc = make()
      const k = uniq('stage')
      await svc.create({ idempotency_key: k, request_path: '/stage' })
      // Ours gets { recoveryPoint: 'started' }; Medusa's workStage has no third argument.
      const options = name === 'native' ? { recoveryPoint: 'started' } : undefined
      const body = async (m) => {
        await m.query('INSERT INTO parity_effect (ikey, stage) VALUES ($1, $2)', [k, 'authorize_payment'])
        await m.query('SELECT pg_sleep(0.05)') // a payment provider round trip
        return { recovery_point: 'payment_authorized' }
      }
      const { values, errors } = await settle(
        Array.from({ length: 16 }, () =>
          h.manager.transaction((tm) =>
            options ? svc.withTransaction(tm).workStage(k, body, options) : svc.withTransaction(tm).workStage(k, body),
          ),
        ),
      )
      const committed = (await effects(k)).length
      t.diagnostic(
        `${name}: ${committed} stage bodies committed; ${values.length} resolved, rejected ${JSON.stringify(tally(errors))}`,
      )
      assert.equal((await svc.retrieve(k)).recovery_point, 'payment_authorized')
      if (name === 'medusa') {
        assert.ok(committed > 1, `expected Medusa to commit more than one stage body, got ${committed}`)
        assert.equal(committed, values.length)
      } else {
        assert.equal(committed, 1)
        assert.equal(values.length, 1)
        for (const e of errors) {
          assert.equal(e.type, 'conflict')
          assert.ok(['IDEMPOTENCY_KEY_LOCKED', 'IDEMPOTENCY_KEY_STALE'].includes(e.code), e.code)
        }
      }
    })

    it('a failing stage: same error value rethrown, its writes rolled back, a retry resumes', async (t) => {
      const svc = make()
      const req = cartRequest()
      let key = await initialize(svc, '', req)
      key = await stage(svc, key.idempotency_key, 'tax_lines', { recovery_point: 'tax_lines_created' })
      const declined = Object.assign(new Error('card declined'), { code: 'card_declined', decline: 'insufficient_funds' })
      const err = await h.manager
        .transaction((tm) =>
          svc.withTransaction(tm).workStage(key.idempotency_key, async (m) => {
            await m.query('INSERT INTO parity_effect (ikey, stage) VALUES ($1, $2)', [key.idempotency_key, 'authorize_payment'])
            throw declined
          }),
        )
        .then(
          () => assert.fail('stage resolved'),
          (e) => e,
        )
      assert.equal(err, declined)
      assert.deepEqual(await effects(key.idempotency_key), ['tax_lines'])
      assert.equal((await svc.retrieve(key.idempotency_key)).recovery_point, 'tax_lines_created')
      // Ours releases the request lease after the failed stage, asynchronously; wait for it
      // (at most lockTimeoutMs, after which it would have expired anyway).
      const deadline = Date.now() + 1500
      while ((await svc.retrieve(key.idempotency_key)).locked_at !== null && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10))
      }
      const retry = await initialize(svc, key.idempotency_key, req)
      assert.equal(retry.recovery_point, 'tax_lines_created')
      const { key: done, seen } = await complete(svc, retry, req)
      assert.deepEqual(seen, ['tax_lines_created', 'payment_authorized', 'finished'])
      assert.deepEqual(done.response_body, orderFor(req))
      assert.deepEqual(await effects(key.idempotency_key), ['tax_lines', 'authorize_payment', 'create_order'])
      t.diagnostic(`${name}: rethrew the same error object; retry resumed ${seen.join(' → ')}`)
    })
  })
}
