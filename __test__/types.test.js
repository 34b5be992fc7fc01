// tx.query against node-postgres on the same database: every builtin type, an enum, a domain,
// a composite and arrays of each, NULLs, as results and as parameters; CALL with parameters,
// DO and set_config; and databases whose settings differ from the defaults (DateStyle,
// IntervalStyle, extra_float_digits, bytea_output, TimeZone, standard_conforming_strings):
// the rows must be what node-postgres returns on a database with default settings.
process.env.TZ = 'UTC' // node-postgres reads timestamp and date in local time; we read UTC
const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { Client } = require('pg')
const helpers = require('./helpers')
const { freshDb, isPostgres } = helpers

const skip = isPostgres ? false : 'PostgreSQL only: the type matrix is PostgreSQL\'s'

// [type, a literal] — each is also read as an array, and as NULL. Literals with a backslash
// are E'' strings, which read the same whatever standard_conforming_strings says.
const MATRIX = [
  ['int2', '-32768'], ['int4', '2147483647'], ['int8', '-9223372036854775808'], ['float4', '0.1'],
  ['float8', '0.30000000000000004'], ['float8', "'NaN'"], ['float8', "'-Infinity'"], ['numeric', '12345.678900'],
  ['numeric', "'NaN'"], ['bool', 'true'], ['text', "E'héllo \"q\" \\\\ ,{}'"], ['varchar(5)', "'abc'"],
  ['char(3)', "'ab'"], ['name', "'nm'"], ['"char"', "'c'"], ['uuid', "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"],
  ['json', `'{"a":[1,2.5,"x"],"b":null}'`], ['jsonb', `'{"b":{"c":true},"a":1}'`], ['bytea', "E'\\\\x00ff5c27'"],
  ['timestamptz', "'2024-02-29 12:34:56.789+05:30'"], ['timestamptz', "'infinity'"], ['timestamp', "'1999-12-31 23:59:59.123456'"],
  ['date', "'2000-02-29'"], ['time', "'04:05:06.789'"], ['timetz', "'04:05:06+02'"],
  ['interval', "'1 year 2 mons 3 days 04:05:06.789'"], ['interval', "'-1 day +02:00:00'"], ['interval', "'00:00:00'"],
  ['money', "'12.34'"], ['inet', "'192.168.0.1/24'"], ['cidr', "'10.0.0.0/8'"], ['macaddr', "'08:00:2b:01:02:03'"],
  ['bit(3)', "B'101'"], ['varbit', "B'1101'"], ['point', "'(1.5,-2)'"], ['circle', "'<(1,2),3>'"], ['box', "'(1,1),(0,0)'"],
  ['int4range', "'[1,5)'"], ['tsvector', "'a fat cat'"], ['xml', "'<a>x</a>'"], ['oid', '42'],
  ['mood', "'happy'"], ['posint', '7'], ['pair', "ROW(1, 'x y')"],
]

const plain = (v) => {
  // node-postgres' interval is a PostgresInterval instance: compare its fields.
  if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date) && !Buffer.isBuffer(v)) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))
  }
  if (Array.isArray(v)) return v.map(plain)
  return v
}

const selectFor = () =>
  'SELECT ' +
  MATRIX.map(([t, lit], i) => `(${lit})::${t} AS c${i}, ARRAY[(${lit})::${t}, NULL] AS a${i}, NULL::${t} AS n${i}`).join(', ')

describe('types against node-postgres', { skip }, () => {
  let fx
  let service
  const KEY = 'types'
  const SETUP = `
    CREATE TYPE mood AS ENUM ('happy', 'sad');
    CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
    CREATE TYPE pair AS (n int4, s text);
    CREATE TABLE side (v text);
    CREATE PROCEDURE add_side(x text) LANGUAGE sql AS $$ INSERT INTO side (v) VALUES (x) $$;`
  before(async () => {
    fx = await freshDb()
    await fx.db.exec(SETUP)
    service = fx.service
    await service.create({ idempotency_key: KEY })
  })
  after(async () => {
    if (fx) await fx.cleanup()
  })
  const inStage = (s, fn) => helpers.inStage(s, KEY, fn, 'types')

  test('every type, its array and NULL as results: the same values as node-postgres', async () => {
    const sql = selectFor()
    const [ours] = await inStage(service, (tx) => tx.query(sql))
    const [theirs] = await fx.db.query(sql)
    for (const [i, [t]] of MATRIX.entries()) {
      for (const col of [`c${i}`, `a${i}`, `n${i}`]) {
        assert.deepStrictEqual(plain(ours[col]), plain(theirs[col]), `${t} (${col})`)
      }
    }
  })

  test("node-postgres' own values back as parameters give the same row", async () => {
    const sql = selectFor()
    const [theirs] = await fx.db.query(sql)
    for (const [i, [t]] of MATRIX.entries()) {
      if (['interval', 'point', 'circle'].includes(t)) continue // objects node-postgres itself cannot send back
      const back = `SELECT $1::${t} AS v`
      const value = theirs[`c${i}`]
      const [ours] = await inStage(service, (tx) => tx.query(back, [value]))
      const [ref] = await fx.db.query(back, [value])
      assert.deepStrictEqual(plain(ours.v), plain(ref.v), t)
    }
  })

  test('CALL with a parameter, DO, and set_config(…, true)', async () => {
    await inStage(service, async (tx) => {
      await tx.query('CALL add_side($1)', ['called'])
      await tx.query(`DO $$ BEGIN INSERT INTO side (v) VALUES ('done'); END $$`)
      const [{ s }] = await tx.query("SELECT set_config('app.x', $1, true) AS s", ['y'])
      assert.equal(s, 'y')
    })
    const rows = await fx.db.query('SELECT v FROM side ORDER BY v')
    assert.deepStrictEqual(rows, [{ v: 'called' }, { v: 'done' }])
  })

  test('a database whose output settings differ: the same values, and the service\'s own columns exact', async () => {
    const name = `${fx.name}_odd`
    const admin = new Client({ connectionString: fx.directUrl })
    await admin.connect()
    await admin.query(`CREATE DATABASE ${name}`)
    for (const set of [
      "DateStyle = 'SQL, DMY'",
      "IntervalStyle = 'sql_standard'",
      'extra_float_digits = 0',
      "bytea_output = 'escape'",
      "TimeZone = 'Asia/Kathmandu'",
      'standard_conforming_strings = off',
    ]) {
      await admin.query(`ALTER DATABASE ${name} SET ${set}`)
    }
    await admin.end()
    const url = new URL(fx.url)
    url.pathname = `/${name}`
    const odd = await fx.connect({ url: url.toString() })
    try {
      await odd.migrate()
      const setup = new Client({ connectionString: (() => { const u = new URL(fx.directUrl); u.pathname = `/${name}`; return u.toString() })() })
      await setup.connect()
      await setup.query(SETUP)
      await setup.end()
      const created = await odd.create({ idempotency_key: KEY })
      const sql = selectFor()
      const [ours] = await inStage(odd, (tx) => tx.query(sql))
      const [theirs] = await fx.db.query(sql) // default settings
      for (const [i, [t]] of MATRIX.entries()) {
        for (const col of [`c${i}`, `a${i}`]) {
          if (t === 'money' || t === 'timetz') continue // their text follows lc_monetary / the zone, as node-postgres' does
          assert.deepStrictEqual(plain(ours[col]), plain(theirs[col]), `${t} (${col}) on the odd database`)
        }
      }
      // Parameters are never read as literals: backslashes and quotes arrive as they are.
      const tricky = "it's \\ a \\x00 'quote'"
      const [p] = await inStage(odd, (tx) => tx.query('SELECT $1::text AS t, $2::bytea AS b', [tricky, Buffer.from([0, 92, 39])]))
      assert.deepStrictEqual(p, { t: tricky, b: Buffer.from([0, 92, 39]) })
      const [again] = await inStage(odd, (tx) => tx.query('SELECT created_at FROM idempotency_key WHERE idempotency_key = $1', [KEY]))
      assert.deepStrictEqual(again.created_at, created.created_at)
      const k = await odd.retrieve(KEY)
      assert.deepStrictEqual(k.created_at, created.created_at)
    } finally {
      await odd.close()
      const a = new Client({ connectionString: fx.directUrl })
      await a.connect()
      await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await a.end()
    }
  })
})
