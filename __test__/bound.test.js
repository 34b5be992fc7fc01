// Bound mode (SPEC §3–§6): `withTransaction(executor)` over a caller's executor — a TypeORM 0.3
// EntityManager inside `manager.transaction(...)`, a node-postgres client inside BEGIN…COMMIT, a
// hand-made `{ query }` — and the Medusa container class (`medusa-idempotency-native/medusa`),
// constructed as Medusa's loader does. Everything runs against a fresh PostgreSQL database created
// by this file (not helpers.js); rows are counted through an independent node-postgres client and
// errors are checked by `type` and `code`, never by message text.
//
// Bound mode over an executor is PostgreSQL-only: with IDEM_BACKEND=sqlite this file runs only
// the assertion that holds on SQLite (binding an executor is refused with invalid_data).
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { IdempotencyKeyService } = require('..')
const { createDatabase } = require('../test-support/db')
const { sleep } = require('../test-support/async')
const { rejects, assertErr } = require('../test-support/errors')
const { uniq, assertKeyShape } = require('../test-support/keys')

const isSqlite = process.env.IDEM_BACKEND === 'sqlite'

const METHOD = 'POST'
const PATH = '/store/carts/cart_01/complete'
const PARAMS = { cart_id: 'cart_01' }
const N = 16

// ---------------------------------------------------------------------------------------------
// SQLite run: executor binding is PostgreSQL-only.

// withTransaction(executor) on a SQLite service throws invalid_data / INVALID_ARGUMENT (SQLite:
// executor binding is PostgreSQL-only)
test('withTransaction(executor) on a SQLite service → invalid_data / INVALID_ARGUMENT', async (t) => {
  if (isSqlite) {
    t.diagnostic(
      'IDEM_BACKEND=sqlite: only this test runs; the bound-mode tests (TypeORM, node-postgres, Medusa class) need PostgreSQL and run with IDEM_BACKEND=postgres',
    )
  }
  const s = await IdempotencyKeyService.connect('sqlite::memory:')
  try {
    let thrown
    try {
      s.withTransaction({ query: async () => [] })
    } catch (e) {
      thrown = e
    }
    assert.ok(thrown !== undefined, 'withTransaction(executor) must throw on SQLite')
    assertErr(thrown, 'invalid_data', 'INVALID_ARGUMENT')
    // No argument still returns the service itself.
    assert.equal(s.withTransaction(), s)
  } finally {
    await s.close()
  }
})

if (!isSqlite) definePostgresTests()

function definePostgresTests() {
  const { Client, Pool } = require('pg')
  const { DataSource } = require('typeorm')
  const Medusa = require('medusa-idempotency-native/medusa')

  let database // this file's database: { name, url, drop() }
  let url
  let service // connect()ed, migrated
  let verify // independent node-postgres client
  let ds // TypeORM DataSource
  let pool // node-postgres pool for caller-owned transactions

  before(async () => {
    database = await createDatabase('idem_bound')
    url = database.url
    service = await IdempotencyKeyService.connect({ url })
    await service.migrate()
    verify = new Client({ connectionString: url })
    await verify.connect()
    await verify.query('CREATE TABLE side (id serial PRIMARY KEY, k text NOT NULL, stage text NOT NULL)')
    ds = new DataSource({ type: 'postgres', url, extra: { max: 24 } })
    await ds.initialize()
    pool = new Pool({ connectionString: url, max: 8 })
    // The database is dropped WITH (FORCE) at the end: a pooled client the pool has not closed
    // yet is terminated then, and an unhandled pool 'error' would fail the run after the tests.
    pool.on('error', () => {})
    verify.on('error', () => {})
  })

  after(async () => {
    if (ds?.isInitialized) await ds.destroy().catch(() => {})
    if (pool) await pool.end().catch(() => {})
    if (verify) await verify.end().catch(() => {})
    if (service) await service.close().catch(() => {})
    if (database) await database.drop()
  })

  async function row(key) {
    const { rows } = await verify.query(
      'SELECT recovery_point, locked_at, response_code, response_body FROM idempotency_key WHERE idempotency_key = $1',
      [key],
    )
    assert.equal(rows.length, 1, `exactly one row for ${key}`)
    return rows[0]
  }

  async function sideCount(key, stage) {
    const { rows } = stage
      ? await verify.query('SELECT count(*)::int AS n FROM side WHERE k = $1 AND stage = $2', [key, stage])
      : await verify.query('SELECT count(*)::int AS n FROM side WHERE k = $1', [key])
    return rows[0].n
  }

  /** Poll (bounded) until `locked_at` is NULL; return whether it became NULL within `ms`. */
  async function leaseReleasedWithin(key, ms) {
    const deadline = Date.now() + ms
    for (;;) {
      if ((await row(key)).locked_at === null) return true
      if (Date.now() >= deadline) return false
      await sleep(20)
    }
  }

  /** A route's `node-postgres` transaction: BEGIN, fn(client), COMMIT — or ROLLBACK and rethrow. */
  async function pgTransaction(fn) {
    const c = await pool.connect()
    try {
      await c.query('BEGIN ISOLATION LEVEL SERIALIZABLE')
      try {
        const out = await fn(c)
        await c.query('COMMIT')
        return out
      } catch (e) {
        await c.query('ROLLBACK')
        throw e
      }
    } finally {
      c.release()
    }
  }

  // The stages of a cart-completion-like route: recovery point → next result.
  const STAGES = {
    started: { next: { recovery_point: 'tax_lines_created' } },
    tax_lines_created: { next: { recovery_point: 'payment_authorized' } },
    payment_authorized: { next: { response_code: 200, response_body: { type: 'order', data: { id: 'order_01', total: 4200 } } } },
  }

  /**
   * SPEC §5, Medusa's route code unchanged: one TypeORM SERIALIZABLE transaction per stage,
   * `svc.withTransaction(tm).workStage(...)`, until the key is finished.
   */
  async function runRoute(svc, headerKey) {
    let key = await svc.initializeRequest(headerKey, METHOD, PARAMS, PATH)
    assertKeyShape(key)
    assert.equal(key.idempotency_key, headerKey)
    assert.equal(key.recovery_point, 'started')
    assert.ok(key.locked_at instanceof Date, 'initializeRequest takes the lease')
    const seen = []
    while (key.recovery_point !== 'finished') {
      const at = key.recovery_point
      const stage = STAGES[at]
      assert.ok(stage, `unexpected recovery point ${at}`)
      let handle
      await ds.manager.transaction('SERIALIZABLE', async (tm) => {
        key = await svc.withTransaction(tm).workStage(key.idempotency_key, async (m) => {
          handle = m === tm
          await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [headerKey, at])
          // Inside the caller's transaction: the write is visible through m, not yet outside.
          const { rows } = await verify.query('SELECT count(*)::int AS n FROM side WHERE k = $1 AND stage = $2', [headerKey, at])
          assert.equal(rows[0].n, 0, 'uncommitted write is invisible outside the caller transaction')
          return stage.next
        })
        // Still inside the caller's transaction: the recovery point is not committed yet.
        assert.equal((await row(headerKey)).recovery_point, at, 'recovery point commits with the caller, not before')
      })
      assert.equal(handle, true, 'the callback receives the caller’s EntityManager itself')
      seen.push(at)
      assertKeyShape(key)
      const committed = await row(headerKey)
      assert.equal(committed.recovery_point, key.recovery_point)
      assert.equal(await sideCount(headerKey, at), 1, `stage ${at} committed exactly once`)
      if (key.recovery_point !== 'finished') {
        assert.ok(key.locked_at instanceof Date, 'a non-final stage refreshes the lease')
        assert.ok(committed.locked_at instanceof Date)
      }
    }
    assert.deepEqual(seen, ['started', 'tax_lines_created', 'payment_authorized'])
    assert.equal(key.response_code, 200)
    assert.deepEqual(key.response_body, STAGES.payment_authorized.next.response_body)
    const done = await row(headerKey)
    assert.equal(done.recovery_point, 'finished')
    assert.equal(done.locked_at, null, 'finishing clears the lease')
    assert.equal(done.response_code, 200)
    assert.deepEqual(done.response_body, STAGES.payment_authorized.next.response_body)
    assert.equal(await sideCount(headerKey), 3)

    // Replay: the stored response, no new row, no new stage.
    const replay = await svc.initializeRequest(headerKey, METHOD, PARAMS, PATH)
    assertKeyShape(replay)
    assert.equal(replay.recovery_point, 'finished')
    assert.equal(replay.response_code, 200)
    assert.deepEqual(replay.response_body, STAGES.payment_authorized.next.response_body)
    assert.equal(replay.id, key.id)
    const { rows } = await verify.query('SELECT count(*)::int AS n FROM idempotency_key WHERE idempotency_key = $1', [headerKey])
    assert.equal(rows[0].n, 1)
  }

  // ------------------------------------------------------------------------------------------
  // 1. SPEC §5 route pattern end to end

  test('1a. route pattern with TypeORM, connect()ed service: stages commit with the caller, then replay', async () => {
    await runRoute(service, uniq('route-native'))
  })

  test('1b. route pattern with TypeORM, Medusa container class on cradle.manager: stages commit with the caller, then replay', async () => {
    await runRoute(new Medusa({ manager: ds.manager }), uniq('route-medusa'))
  })

  test('1c. Medusa container class: forTenant scopes keys per tenant, also inside a route transaction', async () => {
    const medusa = new Medusa({ manager: ds.manager })
    const key = uniq('medusa-tenant')
    const a = medusa.forTenant('acme')
    const b = medusa.forTenant('globex')
    const ka = await a.initializeRequest(key, METHOD, PARAMS, PATH)
    const kb = await b.initializeRequest(key, METHOD, PARAMS, PATH) // not LOCKED: another tenant's key
    assert.equal(ka.idempotency_key, key)
    assert.notEqual(ka.id, kb.id)
    await ds.manager.transaction('SERIALIZABLE', async (m) => {
      await a.withTransaction(m).workStage(key, async () => ({ response_code: 201, response_body: { who: 'acme' } }))
    })
    assert.deepEqual((await a.retrieve(key)).response_body, { who: 'acme' })
    assert.equal((await b.retrieve(key)).recovery_point, 'started')
    const stored = await verify.query('SELECT idempotency_key FROM idempotency_key WHERE idempotency_key LIKE $1 ORDER BY 1', [`%/${key}`])
    assert.deepEqual(stored.rows.map((r) => r.idempotency_key), [`acme/${key}`, `globex/${key}`])
    assert.throws(() => a.forTenant('globex'), (e) => e.type === 'invalid_data')
  })

  // ------------------------------------------------------------------------------------------
  // 2. Atomicity in bound mode

  const CALLERS = {
    TypeORM: (fn) => ds.manager.transaction('SERIALIZABLE', fn),
    'node-postgres': pgTransaction,
  }

  for (const [name, transaction] of Object.entries(CALLERS)) {
    // 2. ${name}: a callback that writes then throws leaves nothing after the caller rolls back;
    // the same error object reaches the caller
    test(`2. ${name}: a callback that writes then throws leaves nothing; its error reaches the caller`, async () => {
      const key = uniq(`atomic-throw-${name}`)
      const before = await service.initializeRequest(key, METHOD, PARAMS, PATH)
      assert.ok(before.locked_at instanceof Date)
      const boom = new Error('stage failed')
      boom.custom = { retry: false }
      let inner
      let handle
      const outer = await rejects(
        transaction(async (ex) => {
          inner = await rejects(
            service.withTransaction(ex).workStage(key, async (m) => {
              handle = m === ex
              await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'started'])
              throw boom
            }),
          )
          throw inner
        }),
      )
      assert.equal(handle, true, 'the callback receives the caller’s executor itself')
      assert.equal(inner, boom, 'workStage rejects with the identical error object')
      assert.deepEqual(inner.custom, { retry: false })
      assert.equal(outer, boom, 'and it reaches the caller through its rollback')
      assert.equal(await sideCount(key), 0, 'the callback’s write rolled back with the caller')
      const r = await row(key)
      assert.equal(r.recovery_point, 'started', 'recovery point unchanged')
      assert.equal(r.response_code, null)
      // The failed stage (its callback ran) releases the lease in the background.
      assert.equal(await leaseReleasedWithin(key, 200), true, 'lease released within 200 ms of the rollback')
    })

    test(`2. ${name}: a caller that rolls back after a successful workStage leaves nothing`, async () => {
      const key = uniq(`atomic-rollback-${name}`)
      const before = await service.initializeRequest(key, METHOD, PARAMS, PATH)
      const lockedBefore = (await row(key)).locked_at
      const abort = new Error('caller aborts')
      let staged
      const outer = await rejects(
        transaction(async (ex) => {
          staged = await service.withTransaction(ex).workStage(
            key,
            async (m) => {
              await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'started'])
              return { recovery_point: 'tax_lines_created' }
            },
            { recoveryPoint: 'started' },
          )
          throw abort
        }),
      )
      assert.equal(outer, abort)
      assertKeyShape(staged)
      assert.equal(staged.recovery_point, 'tax_lines_created', 'workStage reported the in-transaction state')
      assert.equal(await sideCount(key), 0, 'side write gone')
      const r = await row(key)
      assert.equal(r.recovery_point, 'started', 'recovery point unchanged')
      assert.equal(r.locked_at?.getTime(), lockedBefore?.getTime(), 'lease refresh rolled back too')
      assert.equal(r.locked_at?.getTime(), before.locked_at.getTime())
    })
  }

  // ------------------------------------------------------------------------------------------
  // 3. Concurrency: 16 route-style requests per round

  test('3. 16 concurrent route-style TypeORM stages on one key × 6 rounds: exactly one stage body commits per round', async (t) => {
    const key = uniq('bound-race')
    await service.initializeRequest(key, METHOD, PARAMS, PATH)
    const ROUNDS = 6
    const points = Array.from({ length: ROUNDS }, (_, i) => (i === 0 ? 'started' : `rp_${i}`))
    const codes = {}
    for (let round = 0; round < ROUNDS; round++) {
      const at = points[round]
      const last = round === ROUNDS - 1
      const ran = new Array(N).fill(false)
      const inner = new Array(N).fill(undefined) // workStage's own rejection, if any
      let go
      const gate = new Promise((r) => (go = r))
      const requests = Array.from({ length: N }, (_, c) =>
        ds.manager.transaction('SERIALIZABLE', async (tm) => {
          await gate
          try {
            return await service.withTransaction(tm).workStage(
              key,
              async (m) => {
                ran[c] = true
                await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, `round_${round}`])
                await m.query('SELECT pg_sleep(0.02)')
                return last ? { response_code: 201, response_body: { round } } : { recovery_point: points[round + 1] }
              },
              { recoveryPoint: at },
            )
          } catch (e) {
            inner[c] = e
            throw e
          }
        }),
      )
      go()
      const results = await Promise.allSettled(requests)
      const ok = results.filter((r) => r.status === 'fulfilled')
      const detail = results
        .map((r, c) => (r.status === 'fulfilled' ? 'ok' : `${r.reason?.type}/${r.reason?.code}${inner[c] ? '' : '(commit)'}`))
        .join(', ')
      assert.equal(ok.length, 1, `round ${round}: exactly one request succeeds: ${detail}`)
      assert.equal(await sideCount(key, `round_${round}`), 1, `round ${round}: exactly one stage body committed (${detail})`)
      for (const [c, r] of results.entries()) {
        if (r.status === 'fulfilled') continue
        const e = r.reason
        codes[e.code] = (codes[e.code] || 0) + 1
        if (inner[c] !== undefined) {
          // Refused by workStage itself: typed conflict.
          assert.equal(e, inner[c])
          assert.ok(e instanceof Error)
          assert.equal(e.type, 'conflict', `round ${round} request ${c}: type of ${e.message} (code ${e.code})`)
          assert.ok(
            ['IDEMPOTENCY_KEY_LOCKED', 'IDEMPOTENCY_KEY_STALE', '40001'].includes(e.code),
            `round ${round} request ${c}: code ${e.code} (${e.message})`,
          )
          if (e.code !== '40001') assert.equal(ran[c], false, `a ${e.code} refusal comes before the callback`)
        } else {
          // workStage succeeded but TypeORM's SERIALIZABLE COMMIT failed.
          assert.equal(e.code, '40001', `round ${round} request ${c}: commit failure ${e.message}`)
        }
      }
      const r = await row(key)
      assert.equal(r.recovery_point, last ? 'finished' : points[round + 1])
    }
    t.diagnostic(`refusals by code: ${JSON.stringify(codes)}`)
    assert.equal(await sideCount(key), ROUNDS, `one committed stage body per round (${JSON.stringify(codes)})`)
    const r = await row(key)
    assert.equal(r.response_code, 201)
    assert.deepEqual(r.response_body, { round: ROUNDS - 1 })
    assert.equal(r.locked_at, null)
  })

  // ------------------------------------------------------------------------------------------
  // 4. Two requests through the Medusa class

  test('4. Medusa class: B is refused while A is between stages, B replays A’s response after A finished', async () => {
    const medusa = new Medusa({ manager: ds.manager })
    const key = uniq('medusa-two')
    let a = await medusa.initializeRequest(key, METHOD, PARAMS, PATH)
    assert.equal(a.recovery_point, 'started')
    await ds.manager.transaction('SERIALIZABLE', async (tm) => {
      a = await medusa.withTransaction(tm).workStage(a.idempotency_key, async (m) => {
        await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'started'])
        return { recovery_point: 'tax_lines_created' }
      })
    })
    assert.equal(a.recovery_point, 'tax_lines_created')

    // B arrives while A is between stages.
    const eb = await rejects(medusa.initializeRequest(key, METHOD, PARAMS, PATH))
    assertErr(eb, 'conflict', 'IDEMPOTENCY_KEY_LOCKED')

    const response = { type: 'order', data: { id: 'order_A' } }
    await ds.manager.transaction('SERIALIZABLE', async (tm) => {
      a = await medusa.withTransaction(tm).workStage(a.idempotency_key, async (m) => {
        await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'tax_lines_created'])
        return { response_code: 200, response_body: response }
      })
    })
    assert.equal(a.recovery_point, 'finished')

    // B's retry: A's stored response.
    const b = await medusa.initializeRequest(key, METHOD, PARAMS, PATH)
    assert.equal(b.recovery_point, 'finished')
    assert.equal(b.response_code, 200)
    assert.deepEqual(b.response_body, response)
    assert.equal(b.id, a.id)
    assert.equal(await sideCount(key), 2)
  })

  test('4. Medusa class: a stage of A that throws releases the lease; an immediate retry resumes from the last recovery point', async () => {
    const medusa = new Medusa({ manager: ds.manager })
    const key = uniq('medusa-retry')
    let a = await medusa.initializeRequest(key, METHOD, PARAMS, PATH)
    await ds.manager.transaction('SERIALIZABLE', async (tm) => {
      a = await medusa.withTransaction(tm).workStage(a.idempotency_key, async (m) => {
        await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'started'])
        return { recovery_point: 'tax_lines_created' }
      })
    })
    const boom = Object.assign(new Error('payment provider down'), { provider: 'stripe' })
    const failed = await rejects(
      ds.manager.transaction('SERIALIZABLE', async (tm) => {
        a = await medusa.withTransaction(tm).workStage(a.idempotency_key, async (m) => {
          await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'tax_lines_created'])
          throw boom
        })
      }),
    )
    assert.equal(failed, boom, 'the route gets the identical error')
    assert.equal(await sideCount(key, 'tax_lines_created'), 0)

    // The background release goes through cradle.manager once the route's transaction ended.
    assert.equal(await leaseReleasedWithin(key, 200), true, 'lease released within 200 ms')

    // The retry (a new request with the same key) proceeds from the last recovery point.
    let b = await medusa.initializeRequest(key, METHOD, PARAMS, PATH)
    assert.equal(b.recovery_point, 'tax_lines_created')
    assert.ok(b.locked_at instanceof Date, 'the retry holds the lease')
    const stillA = await rejects(medusa.initializeRequest(key, METHOD, PARAMS, PATH))
    assertErr(stillA, 'conflict', 'IDEMPOTENCY_KEY_LOCKED')
    for (const at of ['tax_lines_created', 'payment_authorized']) {
      await ds.manager.transaction('SERIALIZABLE', async (tm) => {
        b = await medusa.withTransaction(tm).workStage(b.idempotency_key, async (m) => {
          await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, at])
          return STAGES[at].next
        })
      })
    }
    assert.equal(b.recovery_point, 'finished')
    assert.equal(await sideCount(key, 'started'), 1)
    assert.equal(await sideCount(key, 'tax_lines_created'), 1)
    assert.equal(await sideCount(key, 'payment_authorized'), 1)
    assert.equal((await row(key)).locked_at, null)
  })

  // ------------------------------------------------------------------------------------------
  // 5. The Medusa container class

  // Medusa v1's error handler (api/middlewares/error-handler): MedusaError type → HTTP status.
  const MEDUSA_STATUS = { not_found: 404, conflict: 409, duplicate_error: 422, invalid_data: 400 }

  test('5. Medusa class as the loader builds it: withTransaction() semantics and Medusa error types', async () => {
    const cradle = { manager: ds.manager, someOtherService: {} }
    const medusa = new Medusa(cradle)
    assert.equal(medusa.withTransaction(), medusa, 'no argument returns the same instance')
    assert.equal(medusa.withTransaction(undefined), medusa)
    assert.equal(medusa.transactionManager_, undefined)

    await ds.manager.transaction(async (tm) => {
      const bound = medusa.withTransaction(tm)
      assert.notEqual(bound, medusa, 'a bound copy is a different object')
      assert.ok(bound instanceof Medusa, 'of the same class')
      assert.equal(Object.getPrototypeOf(bound), Medusa.prototype)
      assert.equal(bound.transactionManager_, tm, 'transactionManager_ is set')
      assert.equal(medusa.transactionManager_, undefined, 'the original stays unbound')
      assert.equal(bound.withTransaction(), bound)
      // A bound copy's errors are typed too.
      assertErr(await rejects(bound.retrieve(uniq('missing-bound'))), 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
    })

    // Missing key → not_found (404).
    const nf = await rejects(medusa.retrieve(uniq('missing')))
    assertErr(nf, 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
    assert.equal(MEDUSA_STATUS[nf.type], 404)
    const nfStage = await rejects(medusa.workStage(uniq('missing-stage'), async () => ({ recovery_point: 'x' })))
    assertErr(nfStage, 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')

    // Held lease → conflict (409).
    const key = uniq('medusa-lease')
    const first = await medusa.initializeRequest(key, METHOD, PARAMS, PATH)
    assert.equal(first.idempotency_key, key)
    const held = await rejects(medusa.initializeRequest(key, METHOD, PARAMS, PATH))
    assertErr(held, 'conflict', 'IDEMPOTENCY_KEY_LOCKED')
    assert.equal(MEDUSA_STATUS[held.type], 409)

    // Reused key for a different request → duplicate_error (422), lease or not.
    const reused = await rejects(medusa.initializeRequest(key, METHOD, PARAMS, '/store/carts/cart_02/complete'))
    assertErr(reused, 'duplicate_error', 'IDEMPOTENCY_KEY_REUSED')
    assert.equal(MEDUSA_STATUS[reused.type], 422)
    assert.ok(reused.date instanceof Date || typeof reused.date === 'string' || typeof reused.date === 'number', 'errors carry a date')

    // Unbound workStage runs in its own transaction on cradle.manager and hands the callback
    // that transaction's EntityManager.
    let handle
    const staged = await medusa.workStage(key, async (m) => {
      handle = m
      await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'unbound'])
      return { recovery_point: 'tax_lines_created' }
    })
    assert.equal(staged.recovery_point, 'tax_lines_created')
    assert.ok(handle && typeof handle.query === 'function' && handle !== ds.manager && handle.queryRunner, 'a transactional EntityManager')
    assert.equal(await sideCount(key, 'unbound'), 1)
    assert.equal((await row(key)).recovery_point, 'tax_lines_created')
  })

  // ------------------------------------------------------------------------------------------
  // 6. Result-shape normalisation and failing executors

  /** Exercise create/update/retrieve/lock/workStage through `svc` (bound to `ex`). */
  async function exerciseExecutor(svc, ex, label) {
    const key = uniq(`shape-${label}`)
    const params = { cart_id: 'cart_shape', items: [1, 2] }
    const created = await svc.create({ idempotency_key: key, request_method: 'POST', request_params: params, request_path: '/shape' })
    assertKeyShape(created)
    assert.equal(created.idempotency_key, key)
    assert.deepEqual(created.request_params, params)
    assert.equal(created.recovery_point, 'started')

    const updated = await svc.update(key, { response_code: 202, request_path: '/shape2' }) // UPDATE … RETURNING
    assertKeyShape(updated)
    assert.equal(updated.response_code, 202)
    assert.equal(updated.request_path, '/shape2')

    const got = await svc.retrieve(key)
    assertKeyShape(got)
    assert.equal(got.id, created.id)
    assert.equal(got.response_code, 202)
    const bySelector = await svc.retrieve({ request_path: '/shape2', idempotency_key: key })
    assert.equal(bySelector.id, created.id)

    const locked = await svc.lock(key)
    assertKeyShape(locked)
    assert.ok(locked.locked_at instanceof Date, 'lock() returns the lease it took')

    let handle
    const staged = await svc.workStage(
      key,
      async (m) => {
        handle = m
        await m.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, 'shape'])
        return { recovery_point: 'tax_lines_created' }
      },
      { recoveryPoint: 'started' },
    )
    assertKeyShape(staged)
    assert.equal(handle, ex, 'the callback receives the executor itself')
    assert.equal(staged.recovery_point, 'tax_lines_created')
    const finished = await svc.workStage(key, async () => ({ response_code: 200, response_body: { ok: label } }))
    assertKeyShape(finished)
    assert.equal(finished.recovery_point, 'finished')
    assert.equal(finished.response_code, 200)
    assert.deepEqual(finished.response_body, { ok: label })
    assert.equal(finished.locked_at, null)
    return key
  }

  async function assertCommitted(key, label) {
    const r = await row(key)
    assert.equal(r.recovery_point, 'finished')
    assert.equal(r.response_code, 200)
    assert.deepEqual(r.response_body, { ok: label })
    assert.equal(await sideCount(key, 'shape'), 1)
  }

  // 7. 16 concurrent bound initializeRequest (node-postgres, each in BEGIN…COMMIT) on one new key:
  // one winner, 15 IDEMPOTENCY_KEY_LOCKED
  test('7. 16 concurrent bound initializeRequest on one new key: one winner, 15 LOCKED', async () => {
    // A claim that fails on the row lock must not abort the caller's transaction (found by the
    // parity suite: losers got 25P02 from the follow-up statement).
    const key = uniq('bound-init')
    const big = new Pool({ connectionString: url, max: N })
    try {
      const outcomes = await Promise.all(
        Array.from({ length: N }, async () => {
          const c = await big.connect()
          try {
            await c.query('BEGIN')
            const r = await service.withTransaction(c).initializeRequest(key, METHOD, PARAMS, PATH)
            await c.query('COMMIT')
            return { ok: r }
          } catch (e) {
            await c.query('ROLLBACK')
            return { err: e }
          } finally {
            c.release()
          }
        }),
      )
      assert.equal(outcomes.filter((o) => o.ok).length, 1)
      for (const o of outcomes.filter((x) => x.err)) assertErr(o.err, 'conflict', 'IDEMPOTENCY_KEY_LOCKED')
      const { rows } = await verify.query('SELECT count(*)::int AS n FROM idempotency_key WHERE idempotency_key = $1', [key])
      assert.equal(rows[0].n, 1)
    } finally {
      await big.end()
    }
  })

  test('6. executor returning node-postgres { rows } (fake wrapper over a pg client in BEGIN…COMMIT)', async () => {
    const c = await pool.connect()
    try {
      await c.query('BEGIN')
      const ex = { query: async (sql, params) => c.query(sql, params) }
      const key = await exerciseExecutor(service.withTransaction(ex), ex, 'pg-rows')
      await c.query('COMMIT')
      await assertCommitted(key, 'pg-rows')
    } finally {
      c.release()
    }
  })

  test('6. executor returning plain row arrays', async () => {
    const c = await pool.connect()
    try {
      await c.query('BEGIN')
      const ex = { query: async (sql, params) => (await c.query(sql, params)).rows }
      const key = await exerciseExecutor(service.withTransaction(ex), ex, 'plain-arrays')
      await c.query('COMMIT')
      await assertCommitted(key, 'plain-arrays')
    } finally {
      c.release()
    }
  })

  test('6. TypeORM EntityManager (native [rows, count] for UPDATE … RETURNING), in a transaction and directly', async () => {
    // Check the premise: TypeORM really returns [rows, count] for UPDATE … RETURNING.
    const raw = await ds.manager.query("UPDATE idempotency_key SET request_path = request_path WHERE false RETURNING id")
    assert.ok(Array.isArray(raw) && raw.length === 2 && Array.isArray(raw[0]) && typeof raw[1] === 'number', 'TypeORM shape')

    let key
    await ds.manager.transaction(async (tm) => {
      key = await exerciseExecutor(service.withTransaction(tm), tm, 'typeorm-tx')
    })
    await assertCommitted(key, 'typeorm-tx')

    // The DataSource's manager directly (autocommit per statement).
    const direct = await exerciseExecutor(service.withTransaction(ds.manager), ds.manager, 'typeorm-direct')
    await assertCommitted(direct, 'typeorm-direct')
  })

  test('6. failing executors give typed errors, never a crash: sync throw / rejection with 40001, other failures', async () => {
    const key = uniq('failing-exec')
    await service.create({ idempotency_key: key })
    const serialization = () => Object.assign(new Error('could not serialize access'), { code: '40001' })
    const executors = {
      'throws synchronously (40001)': {
        query() {
          throw serialization()
        },
      },
      'rejects with { code: "40001" }': { query: async () => Promise.reject({ code: '40001' }) },
      'rejects with a TypeORM-like QueryFailedError (driverError.code 40001)': {
        query: async () => Promise.reject(Object.assign(new Error('QueryFailedError'), { driverError: { code: '40001' } })),
      },
    }
    for (const [label, ex] of Object.entries(executors)) {
      const svc = service.withTransaction(ex)
      let ran = false
      const calls = {
        create: () => svc.create({ idempotency_key: uniq('never') }),
        update: () => svc.update(key, { response_code: 500 }),
        retrieve: () => svc.retrieve(key),
        lock: () => svc.lock(key),
        initializeRequest: () => svc.initializeRequest(uniq('never'), METHOD, PARAMS, PATH),
        workStage: () =>
          svc.workStage(key, async () => {
            ran = true
            return { recovery_point: 'x' }
          }),
      }
      for (const [method, call] of Object.entries(calls)) {
        let p
        assert.doesNotThrow(() => {
          p = call()
        }, `${label}: ${method} does not throw synchronously`)
        const e = await rejects(p)
        assert.ok(e instanceof Error, `${label}: ${method} rejects with an Error, got ${String(e)}`)
        assert.equal(e.type, 'conflict', `${label}: ${method} type (${e.message})`)
        assert.equal(e.code, '40001', `${label}: ${method} code (${e.message})`)
      }
      assert.equal(ran, false, `${label}: the callback never runs when the row lock failed`)
    }

    // Something without a SQLSTATE: still a typed error (database_error), never a crash.
    for (const [label, ex] of Object.entries({
      'throws a plain Error': {
        query() {
          throw new Error('socket closed')
        },
      },
      'rejects with undefined': { query: () => Promise.reject(undefined) },
      'resolves to a non-row value': { query: async () => 42 },
    })) {
      const e = await rejects(service.withTransaction(ex).workStage(key, async () => ({ recovery_point: 'x' })))
      assert.ok(e instanceof Error, `${label}: an Error, got ${String(e)}`)
      assert.equal(typeof e.type, 'string', `${label}: typed (${e.message})`)
      if (label !== 'resolves to a non-row value') assert.equal(e.type, 'database_error', `${label}: type (code ${e.code})`)
    }
    // The key is untouched.
    assert.equal((await row(key)).recovery_point, 'started')
  })
}
