// Errors (SPEC §6): every error is typed and dated, failed connections never leak the
// password, connect() checks its arguments; against a fresh database of the backend IDEM_BACKEND selects, verified through an
// independent client (node-postgres / better-sqlite3): methods-fixture.js.
const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const util = require('node:util')
const { IdempotencyKeyService } = require('..')
const { rejects, isPostgres } = require('./helpers')
const { useMethodsDb } = require('./methods-fixture')
const { assertErr } = require('../test-support/errors')
const { uniq } = require('../test-support/keys')

let fx, service // set by useMethodsDb (methods-fixture.js)
useMethodsDb((t) => ({ fx, service } = t))

// ---------------------------------------------------------------------------------------------
describe('errors', () => {
  test('every error is an Error with string type, code, message and a Date', async () => {
    const errs = [
      await rejects(service.retrieve(uniq('nf'))),
      await rejects(service.retrieve(undefined)),
      await rejects(service.create({ idempotency_key: 5 })),
      await rejects(service.update(uniq('nf'), { response_code: 1 })),
    ]
    assertErr(errs[0], 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
    assertErr(errs[1], 'not_found')
    assertErr(errs[2], 'invalid_data', 'INVALID_ARGUMENT')
    assertErr(errs[3], 'not_found', 'IDEMPOTENCY_KEY_NOT_FOUND')
    for (const e of errs) {
      assert.equal(typeof e.stack, 'string')
      assert.ok(Math.abs(e.date.getTime() - Date.now()) < 60_000, 'date is current')
    }
  })

  // a failed connection rejects with database_error and never leaks the password (postgres only:
  // SQLite has no server and its URLs carry no credentials; on SQLite a file that cannot be opened
  // rejects with database_error / SQLITE_14)
  test('a failed connection rejects with database_error and never leaks the password', async () => {
    if (!isPostgres) {
      // SQLITE_CANTOPEN (14): a directory that does not exist; through the URL and the options.
      const url = `sqlite:///tmp/idem_test_no_such_dir_${process.pid}/sub/x.db`
      const e = await rejects(IdempotencyKeyService.connect(url))
      assertErr(e, 'database_error', 'SQLITE_14')
      const e2 = await rejects(IdempotencyKeyService.connect({ url, acquireTimeoutMs: 500 }))
      assertErr(e2, 'database_error', 'SQLITE_14')
      return
    }
    const e = await rejects(IdempotencyKeyService.connect('postgres://someuser:s3cretpw@127.0.0.1:1/db'))
    assertErr(e, 'database_error')
    assert.ok(!e.message.includes('s3cretpw'), e.message)
    assert.ok(!String(e.stack).includes('s3cretpw'), e.stack)
    assert.ok(!util.inspect(e, { depth: Infinity, showHidden: true }).includes('s3cretpw'))
    // Same through the options object (short acquire timeout to keep the suite fast).
    const e2 = await rejects(
      IdempotencyKeyService.connect({ url: 'postgres://someuser:s3cretpw@127.0.0.1:1/db', acquireTimeoutMs: 500 }),
    )
    assertErr(e2, 'database_error')
    assert.ok(!util.inspect(e2, { depth: Infinity, showHidden: true }).includes('s3cretpw'))
    // A reachable server refusing the role: the server's SQLSTATE, still no password.
    const e3 = await rejects(IdempotencyKeyService.connect('postgres://someuser:s3cretpw@127.0.0.1:5432/db'))
    assertErr(e3, 'database_error', '28000')
    assert.ok(!util.inspect(e3, { depth: Infinity, showHidden: true }).includes('s3cretpw'))
  })

  test('connect() with a bad argument → invalid_data', async () => {
    assertErr(await rejects(IdempotencyKeyService.connect(42)), 'invalid_data', 'INVALID_ARGUMENT')
    assertErr(await rejects(IdempotencyKeyService.connect(Symbol('u'))), 'invalid_data', 'INVALID_ARGUMENT')
    assertErr(await rejects(IdempotencyKeyService.connect({ url: 42 })), 'invalid_data', 'INVALID_ARGUMENT')
  })

  test('connect() with the largest timeouts works (SQLite takes its busy timeout as an int: a larger one is capped, not a panic)', async () => {
    const s = await fx.connect({ busyTimeoutMs: 2 ** 32 - 1, acquireTimeoutMs: 2 ** 32 - 1, lockTimeoutMs: 2 ** 32 - 1 })
    try {
      const k = await s.create({})
      assert.equal((await s.retrieve(k.idempotency_key)).id, k.id)
    } finally {
      await s.close()
    }
  })
})
