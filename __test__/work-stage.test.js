// workStage() (SPEC §3, §4, §6): a stage commits its writes with its recovery point or
// nothing; what the callback may return, throw or leave running; transaction control refused;
// against a fresh database of the backend IDEM_BACKEND selects, verified through an
// independent client (node-postgres / better-sqlite3): methods-fixture.js.
const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { TransactionManager } = require('..')
const { rejects, sleep, pick, isPostgres, slowSql } = require('./helpers')
const { useMethodsDb, row, sideRows } = require('./methods-fixture')
const { assertErr } = require('../test-support/errors')
const { uniq, assertKeyShape } = require('../test-support/keys')

let fx, db, service // set by useMethodsDb (methods-fixture.js)
useMethodsDb((t) => ({ fx, db, service } = t))

// ---------------------------------------------------------------------------------------------
describe('workStage()', () => {
  // An INSERT that only runs after ~0.3 s of other work (SQLite has no pg_sleep).
  const SLOW_INSERT = pick({
    postgres: 'INSERT INTO side (tag, v) SELECT $1, $2 FROM pg_sleep(0.3)',
    sqlite:
      'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) INSERT INTO side (tag, v) SELECT $1, $2 FROM (SELECT count(*) AS n FROM c)',
  })

  test('commits: side-table row visible, recovery point moved, locked_at refreshed', async () => {
    const key = uniq('ws-commit')
    const k0 = await service.initializeRequest(key, 'POST', {}, '/ws')
    await sleep(20)
    let sawActive
    const k = await service.workStage(key, async (tx) => {
      assert.ok(tx instanceof TransactionManager)
      sawActive = tx.active
      const rows = await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2) RETURNING v', [key, 'one'])
      assert.deepEqual(rows, [{ v: 'one' }])
      return { recovery_point: 'tax_lines_created' }
    })
    assert.equal(sawActive, true)
    assertKeyShape(k)
    assert.equal(k.recovery_point, 'tax_lines_created')
    assert.equal(k.response_code, null)
    assert.ok(k.locked_at instanceof Date)
    assert.ok(k.locked_at.getTime() > k0.locked_at.getTime(), 'locked_at refreshed by the commit')
    assert.deepEqual(await sideRows(key), ['one'])
    const r = await row(key)
    assert.equal(r.recovery_point, 'tax_lines_created')
    assert.equal(r.locked_at.getTime(), k.locked_at.getTime())
  })

  test('a result with response_code and response_body finishes the key and clears locked_at', async () => {
    const key = uniq('ws-finish')
    await service.initializeRequest(key, 'POST', {}, '/ws')
    const k = await service.workStage(key, async () => ({ response_code: 200, response_body: { cart: 'done', n: [1] } }))
    assert.equal(k.recovery_point, 'finished')
    assert.equal(k.response_code, 200)
    assert.deepEqual(k.response_body, { cart: 'done', n: [1] })
    assert.equal(k.locked_at, null)
    const r = await row(key)
    assert.equal(r.recovery_point, 'finished')
    assert.equal(r.locked_at, null)
    assert.equal(r.response_code, 200)
    assert.deepEqual(r.response_body, { cart: 'done', n: [1] })
  })

  test('a result with only response_code leaves response_body alone', async () => {
    const key = uniq('ws-code')
    await service.create({ idempotency_key: key })
    await service.update(key, { response_body: { kept: true } })
    const k = await service.workStage(key, async () => ({ response_code: 409 }))
    assert.equal(k.recovery_point, 'finished')
    assert.equal(k.response_code, 409)
    assert.deepEqual(k.response_body, { kept: true })
    assert.deepEqual((await row(key)).response_body, { kept: true })
  })

  // transaction control through tx.query is refused (invalid_data) and the stage commits nothing;
  // ROLLBACK TO SAVEPOINT is allowed
  test('transaction control through tx.query is refused, commits nothing; ROLLBACK TO SAVEPOINT is allowed', async () => {
    const key = uniq('ws-txctl')
    await service.create({ idempotency_key: key })
    for (const sql of ['COMMIT', 'ROLLBACK', '  -- note\n  begin', 'END', 'START TRANSACTION', '/* x */ abort']) {
      // Not caught: the stage rejects with the refusal and commits nothing.
      const err = await rejects(
        service.workStage(key, async (tx) => {
          await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, sql])
          await tx.query(sql)
          return { recovery_point: 'should_not_commit' }
        }),
      )
      assertErr(err, 'invalid_data', 'INVALID_ARGUMENT')
    }
    assert.deepEqual(await sideRows(key), [])
    assert.equal((await row(key)).recovery_point, 'started')
    // Caught: the refused statement never reached the database, so the stage's write and its
    // recovery point still commit together, once (a COMMIT sent through would have split them).
    const caught = await service.workStage(key, async (tx) => {
      await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'before'])
      assertErr(await rejects(tx.query('COMMIT')), 'invalid_data', 'INVALID_ARGUMENT')
      return { recovery_point: 'after_refusal' }
    })
    assert.equal(caught.recovery_point, 'after_refusal')
    assert.deepEqual(await sideRows(key), ['before'])
    await db.exec(`DELETE FROM side WHERE tag = '${key}'`)
    const k = await service.workStage(key, async (tx) => {
      await tx.query('SAVEPOINT sp')
      await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'undone'])
      await tx.query('ROLLBACK TO SAVEPOINT sp')
      await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'kept'])
      return { recovery_point: 'savepoint_ok' }
    })
    assert.equal(k.recovery_point, 'savepoint_ok')
    assert.deepEqual(await sideRows(key), ['kept'])
  })

  // SQLite: pragma setters, ATTACH and transaction control are refused in any statement of the
  // string, however spelled; inspecting pragmas run
  test('SQLite: pragma setters, ATTACH and transaction control are refused however spelled', async () => {
    const key = uniq('ws-pragma')
    await service.create({ idempotency_key: key })
    const refused = [
      'PRAGMA query_only = 1',
      'pragma QUERY_ONLY(1)',
      'PRAGMA [query_only] = 1',
      'PRAGMA/**/query_only = 1',
      'PRAGMA main . query_only = 1',
      'SELECT 1; PRAGMA query_only = 1',
      "ATTACH DATABASE ':memory:' AS aux",
      `INSERT INTO side (tag, v) VALUES ('${key}', 'smuggled'); COMMIT`,
    ]
    for (const sql of refused) {
      const err = await rejects(service.workStage(key, async (tx) => {
        await tx.query(sql)
        return { recovery_point: 'never' }
      }))
      // PostgreSQL prepares one statement at a time and has no PRAGMA: a syntax error there.
      if (isPostgres) assertErr(err, 'database_error', '42601')
      else assertErr(err, 'invalid_data', 'INVALID_ARGUMENT')
    }
    // Nothing committed: had COMMIT gone through, the INSERT before it would have survived the
    // stage's rollback; had `query_only` reached the pooled connection, every later write on
    // it would fail (SQLITE_8).
    assert.deepEqual(await sideRows(key), [])
    assert.equal((await row(key)).recovery_point, 'started')
    const k = await service.workStage(key, async (tx) => {
      if (!isPostgres) {
        const info = await tx.query('PRAGMA table_info(side)')
        assert.ok(info.some((c) => c.name === 'tag'))
        assert.equal((await tx.query('PRAGMA query_only')).length, 1)
      }
      await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'written'])
      return { recovery_point: 'pragma_ok' }
    })
    assert.equal(k.recovery_point, 'pragma_ok')
    assert.deepEqual(await sideRows(key), ['written'])
    assert.equal((await service.create({})).recovery_point, 'started')
  })

  test('a thenable returned by a plain callback is awaited like a promise (resolve and reject)', async () => {
    const key = uniq('ws-thenable')
    await service.create({ idempotency_key: key })
    const k = await service.workStage(key, () => ({ then: (resolve) => resolve({ recovery_point: 'via_thenable' }) }))
    assert.equal(k.recovery_point, 'via_thenable')
    const boom = new Error('thenable rejected')
    const err = await rejects(service.workStage(key, () => ({ then: (_, reject) => reject(boom) })))
    assert.equal(err, boom)
    assert.equal((await row(key)).recovery_point, 'via_thenable')
  })

  test('a truthy recovery_point changes only recovery_point', async () => {
    const key = uniq('ws-rp')
    await service.create({ idempotency_key: key })
    const k = await service.workStage(key, async () => ({
      recovery_point: 'payment_authorized',
      response_code: 500,
      response_body: { no: 1 },
    }))
    assert.equal(k.recovery_point, 'payment_authorized')
    assert.equal(k.response_code, null)
    assert.equal(k.response_body, null)
  })

  test('a throwing callback: write rolled back, recovery point unchanged, the IDENTICAL error rethrown', async () => {
    const key = uniq('ws-throw')
    await service.initializeRequest(key, 'POST', {}, '/ws')
    await service.workStage(key, async () => ({ recovery_point: 'tax_lines_created' }))
    class PaymentError extends Error {}
    const thrown = new PaymentError('card declined')
    thrown.type = 'payment_authorization_error'
    thrown.code = 'card_declined'
    thrown.extra = { detail: [1, 2] }
    const e = await rejects(
      service.workStage(key, async (tx) => {
        await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'gone'])
        throw thrown
      }),
    )
    assert.equal(e, thrown)
    assert.ok(e instanceof PaymentError)
    assert.equal(e.message, 'card declined')
    assert.equal(e.type, 'payment_authorization_error')
    assert.equal(e.code, 'card_declined')
    assert.equal(e.extra, thrown.extra)
    assert.deepEqual(await sideRows(key), [])
    const r = await row(key)
    assert.equal(r.recovery_point, 'tax_lines_created')
    assert.equal(r.response_code, null)
  })

  test('a failed stage releases the request lease (locked_at null)', async () => {
    const key = uniq('ws-release')
    await service.initializeRequest(key, 'POST', {}, '/ws')
    assert.ok((await row(key)).locked_at instanceof Date)
    await rejects(
      service.workStage(key, async () => {
        throw new Error('boom')
      }),
    )
    assert.equal((await row(key)).locked_at, null)
  })

  test('a synchronous throw from a non-async callback → the same error object, rolled back', async () => {
    const key = uniq('ws-sync')
    await service.create({ idempotency_key: key })
    const thrown = new TypeError('sync boom')
    thrown.custom = 42
    const e = await rejects(
      service.workStage(key, () => {
        throw thrown
      }),
    )
    assert.equal(e, thrown)
    assert.equal(e.custom, 42)
    assert.equal((await row(key)).recovery_point, 'started')
  })

  for (const [label, make] of [
    ['a string', () => 'just a string'],
    ['a plain object', () => ({ reason: 'plain', n: 1 })],
    ['undefined', () => undefined],
    ['null', () => null],
    ['a number', () => 7],
  ]) {
    test(`throwing a non-Error (${label}) → the same value`, async () => {
      const key = uniq('ws-nonerr')
      await service.create({ idempotency_key: key })
      const value = make()
      let caught = Symbol('nothing')
      try {
        await service.workStage(key, async (tx) => {
          await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'x'])
          throw value
        })
      } catch (e) {
        caught = e
      }
      assert.equal(caught, value)
      assert.deepEqual(await sideRows(key), [])
      assert.equal((await row(key)).recovery_point, 'started')
    })
  }

  for (const [label, result] of [
    ['42', 42],
    ['undefined', undefined],
    ['null', null],
    ["'x'", 'x'],
    ['true', true],
  ]) {
    test(`a callback resolving to ${label} → invalid_data / INVALID_ARGUMENT, rolled back`, async () => {
      const key = uniq('ws-badresult')
      await service.create({ idempotency_key: key })
      const e = await rejects(
        service.workStage(key, async (tx) => {
          await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'x'])
          return result
        }),
      )
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
      assert.deepEqual(await sideRows(key), [])
      assert.equal((await row(key)).recovery_point, 'started')
    })
  }

  test('a missing key → not_found without calling the callback', async () => {
    let called = false
    const e = await rejects(
      service.workStage(uniq('ws-missing'), async () => {
        called = true
        return { recovery_point: 'x' }
      }),
    )
    assertErr(e, 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
    assert.equal(called, false)
  })

  test('tx.query after the stage ended → unexpected_state / TRANSACTION_CLOSED, tx.active false', async () => {
    const key = uniq('ws-closed')
    await service.create({ idempotency_key: key })
    let saved
    await service.workStage(key, async (tx) => {
      saved = tx
      assert.equal(tx.active, true)
      return { recovery_point: 'a' }
    })
    assert.equal(saved.active, false)
    const e = await rejects(saved.query('SELECT 1'))
    assertErr(e, 'unexpected_state', 'TRANSACTION_CLOSED')
    const e2 = await rejects(saved.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'late']))
    assertErr(e2, 'unexpected_state', 'TRANSACTION_CLOSED')
    assert.deepEqual(await sideRows(key), [])

    // Also after a rolled-back stage.
    let saved2
    await rejects(
      service.workStage(key, async (tx) => {
        saved2 = tx
        throw new Error('x')
      }),
    )
    assert.equal(saved2.active, false)
    assertErr(await rejects(saved2.query('SELECT 1')), 'unexpected_state', 'TRANSACTION_CLOSED')
  })

  test('an un-awaited slow SELECT (~0.3 s) when the callback returns → QUERY_NOT_AWAITED, nothing committed', async () => {
    const key = uniq('ws-notawaited')
    await service.create({ idempotency_key: key })
    let dangling
    const e = await rejects(
      service.workStage(key, async (tx) => {
        await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'awaited'])
        dangling = tx.query(slowSql(0.3))
        dangling.catch(() => {})
        return { recovery_point: 'moved' }
      }),
    )
    assertErr(e, 'unexpected_state', 'QUERY_NOT_AWAITED')
    await dangling.catch(() => {})
    assert.deepEqual(await sideRows(key), [])
    assert.equal((await row(key)).recovery_point, 'started')
  })

  test('an un-awaited INSERT behind a slow statement (~0.3 s) → QUERY_NOT_AWAITED, the INSERT not committed', async () => {
    const key = uniq('ws-notawaited2')
    await service.create({ idempotency_key: key })
    let dangling
    const e = await rejects(
      service.workStage(key, async (tx) => {
        dangling = tx.query(SLOW_INSERT, [key, 'late'])
        dangling.catch(() => {})
        return { recovery_point: 'moved' }
      }),
    )
    assertErr(e, 'unexpected_state', 'QUERY_NOT_AWAITED')
    await dangling.catch(() => {})
    await sleep(400)
    assert.deepEqual(await sideRows(key), [])
    assert.equal((await row(key)).recovery_point, 'started')
  })

  test('a never-settling callback with stageTimeoutMs 200 → STAGE_TIMEOUT within ~2 s, its write not committed', async () => {
    const s = await fx.connect({ stageTimeoutMs: 200 })
    const key = uniq('ws-timeout')
    await s.create({ idempotency_key: key })
    const t0 = Date.now()
    const e = await rejects(
      s.workStage(key, async (tx) => {
        await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'never'])
        return new Promise(() => {})
      }),
    )
    const took = Date.now() - t0
    assertErr(e, 'unexpected_state', 'STAGE_TIMEOUT')
    assert.ok(took < 2000, `took ${took} ms`)
    assert.ok(took >= 150, `took only ${took} ms`)
    assert.deepEqual(await sideRows(key), [])
    assert.equal((await row(key)).recovery_point, 'started')
  })

  test('when STAGE_TIMEOUT rejects, the stage has already rolled back: lease released, key workable', async () => {
    // As for a callback that throws (see 'a failed stage releases the request lease'), the
    // rejection must come after the rollback, so a retry right away is not refused.
    const s = await fx.connect({ stageTimeoutMs: 200 })
    const key = uniq('ws-timeout-release')
    await s.initializeRequest(key, 'POST', {}, '/ws')
    const e = await rejects(s.workStage(key, () => new Promise(() => {})))
    assertErr(e, 'unexpected_state', 'STAGE_TIMEOUT')
    assert.equal((await row(key)).locked_at, null, 'lease released before the rejection')
    const k = await s.workStage(key, async () => ({ recovery_point: 'after_timeout' }))
    assert.equal(k.recovery_point, 'after_timeout')
  })

  test('a SQL error the callback caught → the stage rejects with database_error (42P01; SQLITE_1 on SQLite), nothing committed', async () => {
    const key = uniq('ws-caught')
    await service.create({ idempotency_key: key })
    let caughtInside
    const e = await rejects(
      service.workStage(key, async (tx) => {
        await tx.query('INSERT INTO side (tag, v) VALUES ($1, $2)', [key, 'before'])
        try {
          await tx.query('SELECT * FROM no_such_table')
        } catch (err) {
          caughtInside = err
        }
        return { recovery_point: 'moved' }
      }),
    )
    const NO_SUCH_TABLE = pick({ postgres: '42P01', sqlite: 'SQLITE_1' })
    assertErr(caughtInside, 'database_error', NO_SUCH_TABLE)
    assertErr(e, 'database_error', NO_SUCH_TABLE)
    assert.deepEqual(await sideRows(key), [])
    assert.equal((await row(key)).recovery_point, 'started')
  })
})
