// Contract tests for the service's methods (SPEC §1–§4, §6, §7), against a fresh database of
// the backend IDEM_BACKEND selects, verified through an independent client (node-postgres /
// better-sqlite3).
const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const util = require('node:util')
const { IdempotencyKeyService, TransactionManager } = require('..')
const {
  freshDb,
  rejects,
  sleep,
  admin,
  ADMIN_URL,
  pick,
  isPostgres,
  slowSql,
  decodeKeyRow,
  openSqliteVerifier,
  removeSqliteFiles,
} = require('./helpers')

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
const KEY_ID = /^ikey_[0-9A-HJKMNP-TV-Z]{26}$/
const FIELDS = [
  'id',
  'idempotency_key',
  'created_at',
  'locked_at',
  'request_method',
  'request_params',
  'request_path',
  'response_code',
  'response_body',
  'recovery_point',
]

let fx // the fresh database: service, connect(), cleanup()
let db // its verification client
let service
let seq = 0
const uniq = (p = 'k') => `${p}-${process.pid}-${++seq}-${Math.random().toString(36).slice(2, 8)}`

/** Every error the service raises: an Error with string type/code/message and a Date. */
function assertErr(e, type, code) {
  assert.ok(e instanceof Error, `expected an Error, got ${util.inspect(e)}`)
  assert.equal(typeof e.type, 'string', `type of ${util.inspect(e)}`)
  assert.equal(typeof e.code, 'string', `code of ${util.inspect(e)}`)
  assert.equal(typeof e.message, 'string')
  assert.ok(e.message.length > 0, 'message is empty')
  assert.ok(e.date instanceof Date, `date of ${util.inspect(e)}`)
  assert.ok(!Number.isNaN(e.date.getTime()), 'date is invalid')
  assert.equal(e.type, type, `type of ${util.inspect(e)}`)
  if (code !== undefined) assert.equal(e.code, code, `code of ${util.inspect(e)}`)
}

/** The returned key object: all ten fields, nulls not undefined, Dates, id format. */
function assertKeyShape(k) {
  assert.equal(typeof k, 'object')
  assert.notEqual(k, null)
  assert.deepEqual(Object.keys(k).sort(), [...FIELDS].sort())
  for (const f of FIELDS) assert.notEqual(k[f], undefined, `${f} is undefined`)
  assert.match(k.id, KEY_ID)
  assert.equal(typeof k.idempotency_key, 'string')
  assert.ok(k.created_at instanceof Date, 'created_at is a Date')
  assert.ok(!Number.isNaN(k.created_at.getTime()))
  assert.ok(k.locked_at === null || k.locked_at instanceof Date, 'locked_at is Date|null')
  assert.equal(typeof k.recovery_point, 'string')
  assert.ok(k.response_code === null || typeof k.response_code === 'number')
  assert.ok(k.request_method === null || typeof k.request_method === 'string')
  assert.ok(k.request_path === null || typeof k.request_path === 'string')
}

/** The key's row as committed (timestamps as Date, JSON parsed), or undefined. */
async function row(key) {
  const rows = await db.query('SELECT * FROM idempotency_key WHERE idempotency_key = $1', [key])
  return decodeKeyRow(rows[0])
}

async function sideRows(tag) {
  const rows = await db.query('SELECT v FROM side WHERE tag = $1 ORDER BY v', [tag])
  return rows.map((x) => x.v)
}

async function count(sql, params = []) {
  const [r] = await db.query(`SELECT CAST(count(*) AS integer) AS n FROM ${sql}`, params)
  return r.n
}

before(async () => {
  fx = await freshDb()
  service = fx.service
  db = fx.db
  await db.exec('CREATE TABLE side (tag text NOT NULL, v text NOT NULL)')
})

after(async () => {
  if (fx) await fx.cleanup()
})

// ---------------------------------------------------------------------------------------------
describe('migrate()', () => {
  const PK = 'PK_213f125e14469be304f9ff1d452'
  const IDX = 'IDX_a421bf4588d0004a9b0c0fe84f'

  // PostgreSQL: information_schema / pg_catalog, compared with SPEC §1 exactly.
  const expectedPgColumns = [
    ['created_at', 'timestamp with time zone', 'NO', 'now()'],
    ['id', 'character varying', 'NO', null],
    ['idempotency_key', 'character varying', 'NO', null],
    ['locked_at', 'timestamp with time zone', 'YES', null],
    ['recovery_point', 'character varying', 'NO', "'started'::character varying"],
    ['request_method', 'character varying', 'YES', null],
    ['request_params', 'jsonb', 'YES', null],
    ['request_path', 'character varying', 'YES', null],
    ['response_body', 'jsonb', 'YES', null],
    ['response_code', 'integer', 'YES', null],
  ]

  // SQLite (SPEC §7): the same columns in SPEC §1's order with the same nullability and
  // defaults; timestamptz is ISO 8601 text (the default writes it), jsonb is JSON text.
  // [name, declared type (lower case), notnull, default, pk]
  const expectedSqliteColumns = [
    ['id', 'varchar', 1, null, 1],
    ['idempotency_key', 'varchar', 1, null, 0],
    ['created_at', 'text', 1, "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", 0],
    ['locked_at', 'text', 0, null, 0],
    ['request_method', 'varchar', 0, null, 0],
    ['request_params', 'text', 0, null, 0],
    ['request_path', 'varchar', 0, null, 0],
    ['response_code', 'integer', 0, null, 0],
    ['response_body', 'text', 0, null, 0],
    ['recovery_point', 'varchar', 1, "'started'", 0],
  ]

  /** The table as the verification client `client` (db.query / db.exec shape) sees it. */
  async function describeTable(client) {
    if (isPostgres) {
      const cols = await client.query(
        `SELECT column_name, data_type, is_nullable, column_default, character_maximum_length
           FROM information_schema.columns
          WHERE table_schema = 'public' AND table_name = 'idempotency_key'
          ORDER BY column_name`,
      )
      const cons = await client.query(
        `SELECT conname, contype, pg_get_constraintdef(c.oid) AS def
           FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
          WHERE t.relname = 'idempotency_key' ORDER BY conname`,
      )
      const idx = await client.query(
        `SELECT indexname, indexdef FROM pg_indexes
          WHERE schemaname = 'public' AND tablename = 'idempotency_key' ORDER BY indexname`,
      )
      return { cols, cons, idx }
    }
    const cols = await client.query(`SELECT cid, name, type, "notnull", dflt_value, pk FROM pragma_table_info('idempotency_key') ORDER BY cid`)
    const master = await client.query(
      `SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master WHERE tbl_name = 'idempotency_key' ORDER BY name`,
    )
    const idx = await client.query(
      `SELECT name, "unique", origin, partial FROM pragma_index_list('idempotency_key') ORDER BY name`,
    )
    for (const i of idx) {
      i.columns = (await client.query(`SELECT name FROM pragma_index_info($1) ORDER BY seqno`, [i.name])).map((c) => c.name)
    }
    return { cols, master, idx }
  }

  // Our later, additive migrations add only this index (for reap()); none on columns stages write.
  const ADDITIVE = ['IDX_idempotency_key_created_at']

  /** The table description without our additive indexes: what Medusa's own schema has. */
  function withoutAdditive(t) {
    const out = { ...t, idx: t.idx.filter((i) => !ADDITIVE.includes(i.indexname ?? i.name)) }
    if (t.master) out.master = t.master.filter((m) => !ADDITIVE.includes(m.name))
    return out
  }

  function assertAdditiveIndexes(t) {
    const names = t.idx.map((i) => i.indexname ?? i.name).filter((n) => ADDITIVE.includes(n))
    assert.deepEqual(names.sort(), [...ADDITIVE].sort(), 'the additive indexes exist')
    for (const i of t.idx.filter((x) => ADDITIVE.includes(x.indexname ?? x.name))) {
      if (isPostgres) assert.doesNotMatch(i.indexdef, /UNIQUE/, 'additive indexes constrain nothing')
      else assert.equal(i.unique, 0, 'additive indexes constrain nothing')
    }
  }

  function assertMedusaTable(t) {
    if (isPostgres) {
      assert.deepEqual(
        t.cols.map((c) => [c.column_name, c.data_type, c.is_nullable, c.column_default]),
        expectedPgColumns,
      )
      for (const c of t.cols) assert.equal(c.character_maximum_length, null, `${c.column_name} has no length limit`)
      assert.deepEqual(t.cons, [{ conname: PK, contype: 'p', def: 'PRIMARY KEY (id)' }])
      assert.deepEqual(
        t.idx.map((i) => i.indexname),
        [IDX, PK],
      )
      const uniqueIdx = t.idx.find((i) => i.indexname === IDX)
      assert.equal(uniqueIdx.indexdef, `CREATE UNIQUE INDEX "${IDX}" ON public.idempotency_key USING btree (idempotency_key)`)
      return
    }
    assert.deepEqual(
      t.cols.map((c) => [c.name, c.type.toLowerCase(), c.notnull, c.dflt_value, c.pk]),
      expectedSqliteColumns,
    )
    // SQLite keeps constraint names only in the DDL text: the primary key is the named constraint.
    const table = t.master.filter((m) => m.type === 'table')
    assert.equal(table.length, 1)
    assert.match(table[0].sql, new RegExp(`CONSTRAINT "${PK}" PRIMARY KEY \\("?id"?\\)`))
    assert.equal((table[0].sql.match(/CONSTRAINT/g) || []).length, 1, `one named constraint: ${table[0].sql}`)
    // Two unique indexes: Medusa's on idempotency_key, and the primary key's on id.
    assert.deepEqual(
      t.idx.map((i) => [i.name, i.unique, i.origin, i.partial, i.columns]),
      [
        [IDX, 1, 'c', 0, ['idempotency_key']],
        ['sqlite_autoindex_idempotency_key_1', 1, 'pk', 0, ['id']],
      ],
    )
    assert.deepEqual(
      t.master.map((m) => [m.type, m.name]),
      [
        ['index', IDX],
        ['table', 'idempotency_key'],
        ['index', 'sqlite_autoindex_idempotency_key_1'],
      ].sort((x, y) => (x[1] < y[1] ? -1 : 1)),
      'nothing else (no triggers, no extra indexes) hangs off the table',
    )
  }

  test('runs twice without error and the table matches SPEC §1 exactly (SQLite: same names, nullability and defaults; timestamptz and jsonb are text)', async () => {
    await service.migrate()
    await service.migrate()
    const t = await describeTable(db)
    assertMedusaTable(withoutAdditive(t))
    assertAdditiveIndexes(t)
  })

  test("on a database whose table Medusa's own migration created, migrate() is a no-op and the service works (postgres only: Medusa's migration is PostgreSQL DDL; on SQLite, an idempotency_key table that already exists, written in another layout, is left as it is and the service works on it)", async () => {
    if (isPostgres) return medusaTableOnPostgres()
    return existingTableOnSqlite()
  })

  async function medusaTableOnPostgres() {
    const { Client } = require('pg')
    const name = `idem_test_medusa_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
    await admin(`CREATE DATABASE ${name}`)
    const u = new URL(ADMIN_URL)
    u.pathname = '/' + name
    const url = u.toString()
    const c = new Client({ connectionString: url })
    const client = { query: async (sql, params) => (await c.query(sql, params)).rows }
    let s
    try {
      await c.connect()
      // Medusa v1's InitialSchema1611063162649, verbatim for this table.
      await c.query(
        `CREATE TABLE "idempotency_key" ("id" character varying NOT NULL, "idempotency_key" character varying NOT NULL, "created_at" TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(), "locked_at" TIMESTAMP WITH TIME ZONE, "request_method" character varying, "request_params" jsonb, "request_path" character varying, "response_code" integer, "response_body" jsonb, "recovery_point" character varying NOT NULL DEFAULT 'started', CONSTRAINT "PK_213f125e14469be304f9ff1d452" PRIMARY KEY ("id"))`,
      )
      await c.query(`CREATE UNIQUE INDEX "IDX_a421bf4588d0004a9b0c0fe84f" ON "idempotency_key" ("idempotency_key") `)
      // A row Medusa wrote before the switch.
      await c.query(
        `INSERT INTO idempotency_key (id, idempotency_key, request_method, request_path, recovery_point)
         VALUES ('ikey_01ARZ3NDEKTSV4RRFFQ69G5FAV', 'medusa-old', 'POST', '/store/carts/1/complete', 'tax_lines_created')`,
      )
      const before = await describeTable(client)
      const oidBefore = (await c.query(`SELECT 'idempotency_key'::regclass::oid AS oid`)).rows[0].oid

      s = await IdempotencyKeyService.connect({ url })
      await s.migrate()
      await s.migrate()

      const afterT = await describeTable(client)
      // Medusa's table, constraint, index and rows are untouched; only our indexes were added.
      assert.deepEqual(withoutAdditive(afterT), before)
      assertMedusaTable(withoutAdditive(afterT))
      assertAdditiveIndexes(afterT)
      const oidAfter = (await c.query(`SELECT 'idempotency_key'::regclass::oid AS oid`)).rows[0].oid
      assert.equal(oidAfter, oidBefore, 'table was not recreated')
      const tables = await c.query(
        `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`,
      )
      assert.ok(
        tables.rows.some((r) => r.table_name === 'idempotency_key'),
        'idempotency_key still there',
      )

      await serviceWorksOn(s, client)
    } finally {
      await c.end().catch(() => {})
      if (s) await s.close().catch(() => {})
      await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    }
  }

  async function existingTableOnSqlite() {
    const file = `/tmp/idem_test_medusa_${process.pid}_${Math.random().toString(36).slice(2, 8)}.db`
    removeSqliteFiles(file)
    const client = openSqliteVerifier(file)
    let s
    try {
      // The SQLite form of SPEC §1, written by hand in a layout the addon does not use (unquoted
      // names, one line, lower-case keywords where allowed): if migrate() recreated the table,
      // the DDL text in sqlite_master would change.
      await client.exec(
        `create table idempotency_key (id varchar NOT NULL, idempotency_key varchar NOT NULL, created_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), locked_at text, request_method varchar, request_params text, request_path varchar, response_code integer, response_body text, recovery_point varchar NOT NULL DEFAULT 'started', CONSTRAINT "PK_213f125e14469be304f9ff1d452" PRIMARY KEY (id));
         create unique index "IDX_a421bf4588d0004a9b0c0fe84f" on idempotency_key (idempotency_key);`,
      )
      // A row written before the service was pointed at this file.
      await client.query(
        `INSERT INTO idempotency_key (id, idempotency_key, request_method, request_path, recovery_point)
         VALUES ('ikey_01ARZ3NDEKTSV4RRFFQ69G5FAV', 'medusa-old', 'POST', '/store/carts/1/complete', 'tax_lines_created')`,
      )
      const before = await describeTable(client)
      assertMedusaTable(before)
      const rowidBefore = await client.query(`SELECT rowid, * FROM idempotency_key`)

      s = await IdempotencyKeyService.connect({ url: `sqlite://${file}` })
      await s.migrate()
      await s.migrate()

      const afterT = await describeTable(client)
      // Same DDL text, same root pages: the table and its indexes were not recreated; only our
      // additive indexes were added.
      assert.deepEqual(withoutAdditive(afterT), before)
      assertAdditiveIndexes(afterT)
      assert.deepEqual(await client.query(`SELECT rowid, * FROM idempotency_key`), rowidBefore)

      await serviceWorksOn(s, client)
    } finally {
      await client.close().catch(() => {})
      if (s) await s.close().catch(() => {})
      removeSqliteFiles(file)
    }
  }

  /** The pre-existing row reads back, and a new key can be created and finished. */
  async function serviceWorksOn(s, client) {
    const old = await s.retrieve('medusa-old')
    assertKeyShape(old)
    assert.equal(old.recovery_point, 'tax_lines_created')
    assert.equal(old.request_path, '/store/carts/1/complete')

    const k = await s.create({ idempotency_key: 'on-medusa-table', request_method: 'POST' })
    assertKeyShape(k)
    const staged = await s.workStage('on-medusa-table', async () => ({ response_code: 201, response_body: { ok: 1 } }))
    assert.equal(staged.recovery_point, 'finished')
    const r = await client.query(`SELECT response_code, response_body FROM idempotency_key WHERE idempotency_key = 'on-medusa-table'`)
    assert.deepEqual(r.map(decodeKeyRow), [{ response_code: 201, response_body: { ok: 1 } }])
  }
})

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

  test('transaction control through tx.query is refused (invalid_data) and the stage commits nothing; ROLLBACK TO SAVEPOINT is allowed', async () => {
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

  test('SQLite: pragma setters, ATTACH and transaction control are refused in any statement of the string, however spelled; inspecting pragmas run', async () => {
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

// ---------------------------------------------------------------------------------------------
describe('bad argument types never crash', () => {
  const cyclic = {}
  cyclic.self = cyclic
  const throwingGetter = {}
  Object.defineProperty(throwingGetter, 'boom', {
    enumerable: true,
    get() {
      throw new Error('getter exploded')
    },
  })
  // An object whose getter for `name` throws.
  const getterOn = (name) =>
    Object.defineProperty({}, name, {
      enumerable: true,
      get() {
        throw new Error(`getter ${name} exploded`)
      },
    })
  const badScalars = [
    ['a number', 42],
    ['an object', { a: 1 }],
    ['a function', () => 'k'],
    ['a Symbol', Symbol('k')],
    ['a BigInt', 10n],
    ['an array', ['k']],
    ['a boolean', true],
  ]

  for (const [label, v] of badScalars) {
    test(`initializeRequest(headerKey = ${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.initializeRequest(v, 'POST', {}, '/bad')), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, v] of [...badScalars.filter(([l]) => l !== 'an array'), ['a cyclic object', cyclic]]) {
    test(`initializeRequest(reqMethod / reqPath = ${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.initializeRequest(uniq('badm'), v, {}, '/bad')), 'invalid_data', 'INVALID_ARGUMENT')
      assertErr(await rejects(service.initializeRequest(uniq('badp'), 'POST', {}, v)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, v] of [
    ['a cyclic object', cyclic],
    ['an object with a throwing getter', throwingGetter],
    ['a BigInt', 5n],
    ['an object holding a BigInt', { n: 5n }],
    ['an array holding a cyclic object', [1, { c: cyclic }]],
  ]) {
    // Functions and Symbols are not listed: like JSON.stringify (and TypeORM's jsonb
    // serialisation) the addon stores them as null, which is not a misuse error.
    test(`initializeRequest(reqParams = ${label}) → invalid_data, no row`, async () => {
      const key = uniq('badparams')
      assertErr(await rejects(service.initializeRequest(key, 'POST', v, '/bad')), 'invalid_data', 'INVALID_ARGUMENT')
      assert.equal(await row(key), undefined)
    })
  }

  for (const [label, v] of [
    ['a number', 42],
    ['a string', 'k'],
    ['a function', () => {}],
    ['a Symbol', Symbol('c')],
    ['a BigInt', 1n],
  ]) {
    test(`create(payload = ${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.create(v)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, payload] of [
    ['idempotency_key: number', { idempotency_key: 5 }],
    ['idempotency_key: 256 chars', { idempotency_key: 'z'.repeat(256) }],
    ['idempotency_key: Symbol', { idempotency_key: Symbol('x') }],
    ['request_method: object', { request_method: { m: 1 } }],
    ['request_path: number', { request_path: 1 }],
    ['request_params: cyclic', { request_params: cyclic }],
    ['request_params: throwing getter', { request_params: throwingGetter }],
    ['request_params: BigInt', { request_params: 1n }],
    ['recovery_point: number', { recovery_point: 3 }],
    ['a throwing getter for idempotency_key', getterOn('idempotency_key')],
    ['a throwing getter for request_params', getterOn('request_params')],
  ]) {
    test(`create({ ${label} }) → invalid_data`, async () => {
      assertErr(await rejects(service.create(payload)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, v] of [
    ['a number', 42],
    ['a function', () => {}],
    ['a Symbol', Symbol('r')],
    ['a BigInt', 1n],
    ['a boolean', false],
    ['a selector with an object value', { idempotency_key: { $ne: 'x' } }],
    ['a selector with a Symbol value', { idempotency_key: Symbol('x') }],
    ['a selector with a function value', { idempotency_key: () => {} }],
    ['a selector with a throwing getter', getterOn('idempotency_key')],
    ['a selector with a cyclic value', { request_params: cyclic }],
  ]) {
    test(`retrieve(${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.retrieve(v)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  for (const [label, v] of badScalars) {
    test(`lock(${label}) → invalid_data`, async () => {
      assertErr(await rejects(service.lock(v)), 'invalid_data', 'INVALID_ARGUMENT')
    })
  }

  test('update() with bad key or bad partial → invalid_data, nothing written', async () => {
    const key = uniq('badupd')
    await service.create({ idempotency_key: key })
    for (const [, v] of badScalars) {
      assertErr(await rejects(service.update(v, { response_code: 1 })), 'invalid_data', 'INVALID_ARGUMENT')
    }
    for (const partial of [
      42,
      'x',
      null,
      () => {},
      Symbol('u'),
      1n,
      { response_code: 'abc' },
      { response_code: { n: 1 } },
      { response_code: 1.5 },
      { response_code: 1n << 40n },
      { recovery_point: 5 },
      { request_method: 5 },
      { response_body: cyclic },
      { response_body: 2n },
      { response_body: throwingGetter },
      getterOn('response_code'),
      getterOn('response_body'),
      { id: 'ikey_other' },
      { created_at: new Date() },
    ]) {
      const e = await rejects(service.update(key, partial))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    }
    const r = await row(key)
    assert.equal(r.response_code, null)
    assert.equal(r.recovery_point, 'started')
    assert.match(r.id, KEY_ID)
  })

  test('workStage() with a bad key or a non-function callback → invalid_data, callback not run', async () => {
    const key = uniq('badws')
    await service.create({ idempotency_key: key })
    let called = false
    const cb = async () => {
      called = true
      return { recovery_point: 'x' }
    }
    for (const [, v] of badScalars) {
      assertErr(await rejects(service.workStage(v, cb)), 'invalid_data', 'INVALID_ARGUMENT')
    }
    for (const v of [undefined, null, 42, 'cb', {}, Symbol('cb'), 1n, [cb]]) {
      assertErr(await rejects(service.workStage(key, v)), 'invalid_data', 'INVALID_ARGUMENT')
    }
    for (const opts of [42, 'x', { recoveryPoint: 5 }, { recoveryPoint: {} }]) {
      assertErr(await rejects(service.workStage(key, cb, opts)), 'invalid_data', 'INVALID_ARGUMENT')
    }
    assert.equal(called, false)
    assert.equal((await row(key)).recovery_point, 'started')
  })

  test('the service still works after all of the above', async () => {
    const key = uniq('alive')
    const k = await service.create({ idempotency_key: key })
    const k2 = await service.workStage(key, async (tx) => {
      const r = await tx.query('SELECT 1 AS one')
      assert.deepEqual(r, [{ one: 1 }])
      return { recovery_point: 'alive' }
    })
    assert.equal(k2.id, k.id)
    assert.equal(k2.recovery_point, 'alive')
  })
})

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

  test('a failed connection rejects with database_error and never leaks the password (postgres only: SQLite has no server and its URLs carry no credentials; on SQLite a file that cannot be opened rejects with database_error / SQLITE_14)', async () => {
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
