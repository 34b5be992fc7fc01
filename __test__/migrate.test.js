// migrate() (SPEC §1, §7): twice in a row is fine, the table matches Medusa's schema exactly,
// and over a table Medusa's own migration created it changes nothing but our added indexes;
// against a fresh database of the backend IDEM_BACKEND selects, verified through an
// independent client (node-postgres / better-sqlite3): methods-fixture.js.
const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const { IdempotencyKeyService } = require('..')
const { isPostgres, decodeKeyRow, openSqliteVerifier, removeSqliteFiles } = require('./helpers')
const { useMethodsDb } = require('./methods-fixture')
const { createDatabase } = require('../test-support/db')
const { assertKeyShape } = require('../test-support/keys')

let db, service // set by useMethodsDb (methods-fixture.js)
useMethodsDb((t) => ({ db, service } = t))

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

  // runs twice without error and the table matches SPEC §1 exactly (SQLite: same names, nullability
  // and defaults; timestamptz and jsonb are text)
  test('runs twice without error and the table matches SPEC §1 exactly', async () => {
    await service.migrate()
    await service.migrate()
    const t = await describeTable(db)
    assertMedusaTable(withoutAdditive(t))
    assertAdditiveIndexes(t)
  })

  // on a database whose table Medusa's own migration created, migrate() is a no-op and the service
  // works (postgres only: Medusa's migration is PostgreSQL DDL; on SQLite, an idempotency_key table
  // that already exists, written in another layout, is left as it is and the service works on it)
  test("on a table Medusa's own migration created, migrate() is a no-op and the service works", async () => {
    if (isPostgres) return medusaTableOnPostgres()
    return existingTableOnSqlite()
  })

  async function medusaTableOnPostgres() {
    const { Client } = require('pg')
    const { url, drop } = await createDatabase('idem_test_medusa')
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
      await drop()
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
