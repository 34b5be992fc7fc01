// TransactionManager.query value mapping (SPEC §5, §7), both directions, on the backend
// IDEM_BACKEND selects. On PostgreSQL the reference is node-postgres running the same SQL on the
// same database. On SQLite, which has storage classes instead of column types, the reference is
// better-sqlite3 read with the documented mapping (integer → number, or string beyond 2^53;
// real → number; text → string; blob → Buffer; null → null), and every case also pins the values.
const { test, describe } = require('node:test')
const assert = require('node:assert/strict')
const helpers = require('./helpers')
const { assertErr } = require('../test-support/errors')
const { useFreshDb, rejects, pick, isPostgres } = helpers

let fx // the fresh database: service, connect(), cleanup()
let db // its verification client
let service
const KEY = `values-${process.pid}`

/** Run `fn(tx)` inside a native stage that must commit; return what `fn` returned. */
const inStage = (fn) => helpers.inStage(service, KEY, fn, 'values')

/**
 * Run `fn(tx)` inside a stage whose own outcome is not under test (a rejected query may or
 * may not fail the stage); assertion failures inside `fn` still propagate.
 */
async function inStageLoose(fn) {
  let out
  let failed = null
  await service
    .workStage(KEY, async (tx) => {
      try {
        out = await fn(tx)
      } catch (e) {
        failed = { e }
      }
      return { recovery_point: 'values' }
    })
    .catch(() => {})
  if (failed) throw failed.e
  return out
}

const TWO_53 = 2n ** 53n

/** SPEC §7's integer rule, applied to better-sqlite3's exact BigInts. */
function sqliteInteger(v) {
  return v >= -TWO_53 && v <= TWO_53 ? Number(v) : String(v)
}

/**
 * The reference client's rows. PostgreSQL: node-postgres. SQLite: better-sqlite3 with exact
 * integers, mapped by storage class (its reals, text, blobs and NULLs are already number,
 * string, Buffer and null).
 */
async function reference(sql, params = []) {
  if (isPostgres) return db.query(sql, params)
  const stmt = fx.sqlite.prepare(sql.replace(/\$(\d+)/g, '?$1'))
  stmt.safeIntegers(true)
  const named = Object.fromEntries(params.map((p, i) => [i + 1, p]))
  const rows = params.length ? stmt.all(named) : stmt.all()
  return rows.map((r) =>
    Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === 'bigint' ? sqliteInteger(v) : v])),
  )
}

/** The same SELECT through tx.query and through the reference client. */
async function both(sql, params = []) {
  const ours = await inStage((tx) => tx.query(sql, params))
  const theirs = await reference(sql, params)
  return { ours, theirs }
}

/** A case's title: as is when it holds on both backends, else why it is PostgreSQL's alone. */
const title = (label, sqliteWhy) => (sqliteWhy ? `${label} (postgres only: ${sqliteWhy})` : label)

useFreshDb(async (f) => {
  fx = f
  service = fx.service
  db = fx.db
  await service.create({ idempotency_key: KEY })
  await db.exec(
    pick({
      postgres: `CREATE TABLE typed (
        id serial PRIMARY KEY,
        ts timestamptz, u uuid, j jsonb, i int4, big int8, b bytea, f float8, flag bool, t text
      )`,
      // The same columns by SQLite affinity: text for timestamps, UUIDs and JSON.
      sqlite: `CREATE TABLE typed (
        id INTEGER PRIMARY KEY,
        ts text, u text, j text, i integer, big integer, b blob, f real, flag integer, t text
      )`,
    }),
  )
})

// ---------------------------------------------------------------------------------------------
describe('results: the same values the reference client returns (node-postgres; better-sqlite3 by storage class)', () => {
  // [label, PostgreSQL SQL, SQLite: { why (set when the PostgreSQL case cannot hold there), sql, expect }]
  const cases = [
    [
      'int2',
      `SELECT 1::int2 AS a, (-32768)::int2 AS b, 32767::int2 AS c`,
      {
        why: 'SQLite has no int2; on SQLite small integers are the integer storage class, read as numbers',
        sql: `SELECT 1 AS a, -32768 AS b, 32767 AS c`,
        expect: [{ a: 1, b: -32768, c: 32767 }],
      },
    ],
    [
      'int4',
      `SELECT 0::int4 AS a, 2147483647::int4 AS b, (-2147483648)::int4 AS c`,
      {
        why: 'SQLite has no int4; on SQLite 32-bit integers are the integer storage class, read as numbers',
        sql: `SELECT 0 AS a, 2147483647 AS b, -2147483648 AS c`,
        expect: [{ a: 0, b: 2147483647, c: -2147483648 }],
      },
    ],
    [
      'int8',
      `SELECT 1::int8 AS a, 9223372036854775807::int8 AS b, (-9223372036854775808)::int8 AS c`,
      {
        why: 'SQLite integers are untyped 64-bit values, so 1 reads as a number, not "1"; on SQLite integers up to 2^53 are numbers and beyond it strings',
        sql: `SELECT 1 AS a, 9223372036854775807 AS b, -9223372036854775808 AS c,
                     9007199254740991 AS d, -9007199254740991 AS e, 9007199254740993 AS f, -9007199254740993 AS g`,
        expect: [
          {
            a: 1,
            b: '9223372036854775807',
            c: '-9223372036854775808',
            d: 9007199254740991,
            e: -9007199254740991,
            f: '9007199254740993',
            g: '-9007199254740993',
          },
        ],
      },
    ],
    [
      'float4',
      `SELECT 0.1::float4 AS a, 1.5::float4 AS b, (-3.25)::float4 AS c, 3.4e38::float4 AS d, 'NaN'::float4 AS e`,
      {
        why: 'SQLite has no float4 and no NaN; on SQLite reals are 8-byte floats, read as numbers',
        sql: `SELECT 0.1 AS a, 1.5 AS b, -3.25 AS c, 3.4e38 AS d`,
        expect: [{ a: 0.1, b: 1.5, c: -3.25, d: 3.4e38 }],
      },
    ],
    [
      'float8',
      `SELECT 0.1::float8 AS a, 1e300::float8 AS b, (-0.0)::float8 AS c, 'NaN'::float8 AS d,
              'Infinity'::float8 AS e, '-Infinity'::float8 AS f, 5e-324::float8 AS g, 123456789.125::float8 AS h`,
      {
        why: 'SQLite has no NaN (it stores NULL instead); on SQLite reals read as numbers, -0 and ±Infinity included',
        sql: `SELECT 0.1 AS a, 1e300 AS b, -0.0 AS c, 9e999 AS e, -9e999 AS f, 5e-324 AS g, 123456789.125 AS h, 2.0 AS i`,
        expect: [{ a: 0.1, b: 1e300, c: -0, e: Infinity, f: -Infinity, g: 5e-324, h: 123456789.125, i: 2 }],
      },
    ],
    [
      'numeric',
      `SELECT '12345678901234567890.123456789'::numeric AS a, 1.50::numeric AS b, 0::numeric AS c,
              (-0.000001)::numeric AS d, 1e20::numeric AS e, 'NaN'::numeric AS f, 12.3400::numeric(10,4) AS g,
              '-99999999999999999999999999999999999999.99999999999999999999'::numeric AS h`,
      {
        why: 'SQLite has no exact numeric type: NUMERIC converts to an integer or a real; on SQLite those read as numbers',
        sql: `SELECT CAST('12345678901234567890.123456789' AS NUMERIC) AS a, CAST('1.50' AS NUMERIC) AS b,
                     CAST('0' AS NUMERIC) AS c, CAST('-0.000001' AS NUMERIC) AS d, CAST('12.3400' AS NUMERIC) AS g`,
        expect: [{ a: 12345678901234567890.123456789, b: 1.5, c: 0, d: -0.000001, g: 12.34 }],
      },
    ],
    [
      'bool',
      `SELECT true AS a, false AS b`,
      {
        why: 'SQLite has no boolean type; on SQLite true and false are the integers 1 and 0',
        sql: `SELECT true AS a, false AS b, 1 = 1 AS c`,
        expect: [{ a: 1, b: 0, c: 1 }],
      },
    ],
    [
      'text',
      `SELECT 'hello'::text AS a, ''::text AS b, 'h\u00e9llo \u2713 \u{1F600}'::text AS c, E'tab\\tnl\\n'::text AS d`,
      {
        sql: `SELECT 'hello' AS a, '' AS b, 'h\u00e9llo \u2713 \u{1F600}' AS c, 'tab' || char(9) || 'nl' || char(10) AS d`,
        expect: [{ a: 'hello', b: '', c: 'h\u00e9llo \u2713 \u{1F600}', d: 'tab\tnl\n' }],
      },
    ],
    [
      'varchar',
      `SELECT 'abc'::varchar AS a, 'xy'::varchar(5) AS b, 'c'::char(3) AS c, 'nm'::name AS d`,
      {
        why: 'SQLite has no char(n) padding and no name type; on SQLite varchar and char are text, unpadded',
        sql: `SELECT CAST('abc' AS varchar) AS a, CAST('xy' AS varchar(5)) AS b, CAST('c' AS char(3)) AS c`,
        expect: [{ a: 'abc', b: 'xy', c: 'c' }],
      },
    ],
    [
      'uuid',
      `SELECT 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid AS a`,
      {
        why: 'SQLite has no uuid type to normalise case; on SQLite a UUID is text, returned as written',
        sql: `SELECT 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11' AS a`,
        expect: [{ a: 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11' }],
      },
    ],
    [
      'json',
      `SELECT '{"b":1,"a":[1,2,{"c":null}],"s":"x"}'::json AS a, '[1,"two",false]'::json AS b, '"str"'::json AS c, '3.5'::json AS d, 'null'::json AS e`,
      {
        why: 'SQLite has no json type: JSON is text; on SQLite it reads back as the string, unparsed',
        sql: `SELECT json('{"b":1,"a":[1,2,{"c":null}],"s":"x"}') AS a, json('[1,"two",false]') AS b, json('"str"') AS c,
                     json('3.5') AS d, json('null') AS e`,
        expect: [{ a: '{"b":1,"a":[1,2,{"c":null}],"s":"x"}', b: '[1,"two",false]', c: '"str"', d: '3.5', e: 'null' }],
      },
    ],
    [
      'jsonb',
      `SELECT '{"b":1,"a":[1,2,{"c":null}],"s":"x"}'::jsonb AS a, '[]'::jsonb AS b, '"str"'::jsonb AS c, 'true'::jsonb AS d, 'null'::jsonb AS e, '{}'::jsonb AS f`,
      {
        why: "SQLite's jsonb is a binary blob, not parsed JSON; on SQLite jsonb() reads as a Buffer and json() as text",
        sql: `SELECT jsonb('{"a":1}') AS a, json(jsonb('{"b":1,"a":[1,2]}')) AS b, json_object('k', json_array(1, 2)) AS c`,
        expect: [{ a: Buffer.from([0x4c, 0x17, 0x61, 0x13, 0x31]), b: '{"b":1,"a":[1,2]}', c: '{"k":[1,2]}' }],
      },
    ],
    [
      'jsonb with nested arrays',
      `SELECT '[[1,[2,[3,[]]]],{"x":[[{"y":[null,1.25]}]]}]'::jsonb AS a`,
      {
        why: 'SQLite has no jsonb column type to parse; on SQLite nested JSON reads back as its text',
        sql: `SELECT json('[[1,[2,[3,[]]]],{"x":[[{"y":[null,1.25]}]]}]') AS a`,
        expect: [{ a: '[[1,[2,[3,[]]]],{"x":[[{"y":[null,1.25]}]]}]' }],
      },
    ],
    [
      'timestamptz',
      `SELECT '2024-01-02 03:04:05.678+00'::timestamptz AS a, '2024-06-30 23:59:59+05:30'::timestamptz AS b,
              '1970-01-01 00:00:00+00'::timestamptz AS c, '1900-02-03 04:05:06.007+00'::timestamptz AS d,
              '2024-01-02 03:04:05.678901+00'::timestamptz AS e, '2262-04-11 23:47:16.854775+00'::timestamptz AS f`,
      {
        why: 'SQLite has no timestamp type: date functions return text; on SQLite they read back as strings, not Dates',
        sql: `SELECT strftime('%Y-%m-%dT%H:%M:%fZ', '2024-01-02 03:04:05.678') AS a, datetime('2024-06-30 23:59:59+05:30') AS b,
                     strftime('%Y-%m-%dT%H:%M:%fZ', '1970-01-01 00:00:00') AS c, datetime('1900-02-03 04:05:06.007') AS d,
                     julianday('2024-01-02') AS e, unixepoch('2024-01-02') AS f`,
        expect: [
          {
            a: '2024-01-02T03:04:05.678Z',
            b: '2024-06-30 18:29:59',
            c: '1970-01-01T00:00:00.000Z',
            d: '1900-02-03 04:05:06',
            e: 2460311.5,
            f: 1704153600,
          },
        ],
      },
    ],
    // Sub-millisecond precision before 1970: node-postgres (Date.UTC on the parsed fields)
    // lands on the earlier millisecond.
    [
      'timestamptz before 1970 with microseconds',
      `SELECT '1969-12-31 23:59:59.9995+00'::timestamptz AS a, '1901-06-07 08:09:10.123456+00'::timestamptz AS b`,
      {
        why: 'SQLite has no timestamp type; on SQLite times before 1970 are text too, at millisecond precision',
        sql: `SELECT strftime('%Y-%m-%dT%H:%M:%fZ', '1969-12-31 23:59:59.999') AS a, strftime('%Y-%m-%dT%H:%M:%fZ', '1901-06-07 08:09:10.123456') AS b`,
        expect: [{ a: '1969-12-31T23:59:59.999Z', b: '1901-06-07T08:09:10.123Z' }],
      },
    ],
    [
      'bytea (blob on SQLite)',
      `SELECT '\\x00ff10'::bytea AS a, ''::bytea AS b, convert_to('h\u00e9', 'UTF8') AS c`,
      {
        sql: `SELECT x'00ff10' AS a, x'' AS b, CAST('h\u00e9' AS BLOB) AS c`,
        expect: [{ a: Buffer.from([0, 0xff, 0x10]), b: Buffer.alloc(0), c: Buffer.from('h\u00e9') }],
      },
    ],
    [
      'int4[]',
      `SELECT ARRAY[1,2,3]::int4[] AS a, ARRAY[]::int4[] AS b, ARRAY[1,NULL,3]::int4[] AS c`,
      {
        why: 'SQLite has no arrays; on SQLite json_array() builds JSON text, read back as a string',
        sql: `SELECT json_array(1,2,3) AS a, json_array() AS b, json_array(1,NULL,3) AS c`,
        expect: [{ a: '[1,2,3]', b: '[]', c: '[1,null,3]' }],
      },
    ],
    [
      'other arrays (int2[], int8[], float8[], bool[], uuid[], numeric[], timestamptz[], jsonb[])',
      `SELECT '{1,-2}'::int2[] AS a, '{1,9223372036854775807}'::int8[] AS b, '{1.5,NaN}'::float8[] AS c,
              '{t,f,NULL}'::bool[] AS d, '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'::uuid[] AS e,
              '{1.50,2}'::numeric[] AS f, '{"2024-01-01 00:00:00+00"}'::timestamptz[] AS g,
              ARRAY['{"x":[1]}'::jsonb, 'null'::jsonb] AS h, '{{1,2},{3,4}}'::int4[] AS i`,
      {
        why: 'SQLite has no arrays; on SQLite JSON arrays of any values are text',
        sql: `SELECT json_array(1, 9223372036854775807, 1.5, true, json('{"x":[1]}'), json_array(json_array(1,2), json_array(3,4))) AS a`,
        expect: [{ a: '[1,9223372036854775807,1.5,1,{"x":[1]},[[1,2],[3,4]]]' }],
      },
    ],
    [
      'text[]',
      `SELECT ARRAY['a','b c','', 'q"uote', 'NULL']::text[] AS a, ARRAY['x',NULL]::text[] AS b`,
      {
        why: 'SQLite has no arrays; on SQLite a JSON array of strings is text',
        sql: `SELECT json_array('a','b c','','q"uote','NULL') AS a, json_array('x',NULL) AS b`,
        expect: [{ a: '["a","b c","","q\\"uote","NULL"]', b: '["x",null]' }],
      },
    ],
    [
      'NULL of several types',
      `SELECT NULL::int4 AS a, NULL::int8 AS b, NULL::text AS c, NULL::jsonb AS d, NULL::timestamptz AS e,
              NULL::numeric AS f, NULL::bool AS g, NULL::bytea AS h, NULL::uuid AS i, NULL::int4[] AS j,
              NULL::float8 AS k, NULL AS l`,
      {
        sql: `SELECT CAST(NULL AS integer) AS a, CAST(NULL AS text) AS c, json(NULL) AS d, CAST(NULL AS numeric) AS f,
                     CAST(NULL AS blob) AS h, CAST(NULL AS real) AS k, NULL AS l`,
        expect: [{ a: null, c: null, d: null, f: null, h: null, k: null, l: null }],
      },
    ],
    [
      'several rows and column order',
      `SELECT g AS n, g::text AS s FROM generate_series(1, 3) g ORDER BY g`,
      {
        sql: `WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3) SELECT n, CAST(n AS text) AS s FROM g ORDER BY n`,
        expect: [
          { n: 1, s: '1' },
          { n: 2, s: '2' },
          { n: 3, s: '3' },
        ],
      },
    ],
    ['no rows', `SELECT 1 AS a WHERE false`, { sql: `SELECT 1 AS a WHERE false`, expect: [] }],
  ]

  for (const [label, pgSql, lite] of cases) {
    test(title(label, lite.why), async () => {
      const sql = pick({ postgres: pgSql, sqlite: lite.sql })
      const { ours, theirs } = await both(sql)
      assert.deepStrictEqual(ours, theirs)
      if (theirs.length) assert.deepStrictEqual(Object.keys(ours[0]), Object.keys(theirs[0]))
      if (!isPostgres) assert.deepStrictEqual(ours, lite.expect)
    })
  }

  test('the returned types, spelled out', async () => {
    if (isPostgres) {
      const [r] = await inStage((tx) =>
        tx.query(`SELECT 1::int2 AS i2, 1::int4 AS i4, 1::int8 AS i8, 1.5::float8 AS f8, 1.5::numeric AS n,
                         true AS b, 'x'::text AS t, '{"a":1}'::jsonb AS j, now() AS ts, '\\x01'::bytea AS by,
                         NULL::int4 AS nul`),
      )
      assert.equal(r.i2, 1)
      assert.equal(r.i4, 1)
      assert.equal(r.i8, '1')
      assert.equal(r.f8, 1.5)
      assert.equal(r.n, '1.5')
      assert.equal(r.b, true)
      assert.equal(r.t, 'x')
      assert.deepStrictEqual(r.j, { a: 1 })
      assert.ok(r.ts instanceof Date)
      assert.ok(Buffer.isBuffer(r.by))
      assert.equal(r.nul, null)
      return
    }
    // SQLite: by storage class, whatever the expression.
    const [r] = await inStage((tx) =>
      tx.query(`SELECT 1 AS i, 9007199254740993 AS big, 1.5 AS f, 'x' AS t, x'01' AS by, NULL AS nul,
                       true AS b, json('{"a":1}') AS j, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS ts,
                       typeof(1) AS ti, typeof(1.5) AS tf, typeof('x') AS tt, typeof(x'01') AS tby, typeof(NULL) AS tnul`),
    )
    assert.deepStrictEqual([r.ti, r.tf, r.tt, r.tby, r.tnul], ['integer', 'real', 'text', 'blob', 'null'])
    assert.strictEqual(r.i, 1)
    assert.strictEqual(r.big, '9007199254740993')
    assert.strictEqual(r.f, 1.5)
    assert.strictEqual(r.t, 'x')
    assert.ok(Buffer.isBuffer(r.by))
    assert.deepStrictEqual(r.by, Buffer.from([1]))
    assert.strictEqual(r.nul, null)
    assert.strictEqual(r.b, 1)
    assert.strictEqual(r.j, '{"a":1}')
    assert.equal(typeof r.ts, 'string')
    assert.match(r.ts, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/)
  })

  // Deliberate difference: node-postgres parses `timestamp` (without time zone) and `date`
  // in the process's local time zone; we read them as UTC, whatever TZ is. In a UTC process
  // (as here) the two agree; the assertions below pin what we return.
  test(
    title(
      'timestamp without time zone is read as UTC',
      'SQLite has no timestamp type; on SQLite datetime() text reads back as that string, in any TZ',
    ),
    async () => {
      if (!isPostgres) {
        const { ours, theirs } = await both(`SELECT datetime('2024-01-02 03:04:05.678') AS a, datetime('1999-12-31 23:59:59') AS b`)
        assert.deepStrictEqual(ours, theirs)
        assert.deepStrictEqual(ours, [{ a: '2024-01-02 03:04:05', b: '1999-12-31 23:59:59' }])
        return
      }
      const sql = `SELECT '2024-01-02 03:04:05.678'::timestamp AS a, '1999-12-31 23:59:59'::timestamp AS b`
      const { ours, theirs } = await both(sql)
      assert.deepStrictEqual(ours, [{ a: new Date('2024-01-02T03:04:05.678Z'), b: new Date('1999-12-31T23:59:59Z') }])
      // node-postgres: local time.
      assert.deepStrictEqual(theirs, [{ a: new Date(2024, 0, 2, 3, 4, 5, 678), b: new Date(1999, 11, 31, 23, 59, 59) }])
    },
  )

  test(
    title('date is read as UTC midnight', 'SQLite has no date type; on SQLite date() text reads back as that string'),
    async () => {
      if (!isPostgres) {
        const { ours, theirs } = await both(`SELECT date('2024-01-02') AS a, date('1969-07-20') AS b`)
        assert.deepStrictEqual(ours, theirs)
        assert.deepStrictEqual(ours, [{ a: '2024-01-02', b: '1969-07-20' }])
        return
      }
      const sql = `SELECT '2024-01-02'::date AS a, '1969-07-20'::date AS b`
      const { ours, theirs } = await both(sql)
      assert.deepStrictEqual(ours, [{ a: new Date('2024-01-02T00:00:00Z'), b: new Date('1969-07-20T00:00:00Z') }])
      // node-postgres: local midnight.
      assert.deepStrictEqual(theirs, [{ a: new Date(2024, 0, 2), b: new Date(1969, 6, 20) }])
    },
  )
})

// ---------------------------------------------------------------------------------------------
describe('parameters', () => {
  /** INSERT `params` into `columns` of `typed` through tx.query; read the row back through the reference client. */
  async function insertAndRead(columns, params) {
    const { row } = await insertAndReadStored(columns, params)
    return row
  }

  /** As insertAndRead, plus (on SQLite) the storage class each column ended up in. */
  async function insertAndReadStored(columns, params) {
    const cols = columns.join(', ')
    const ph = columns.map((_, i) => `$${i + 1}`).join(', ')
    const [ret] = await inStage((tx) => tx.query(`INSERT INTO typed (${cols}) VALUES (${ph}) RETURNING id`, params))
    assert.equal(typeof ret.id, 'number')
    const [row] = await reference(`SELECT ${cols} FROM typed WHERE id = $1`, [ret.id])
    if (isPostgres) return { row }
    const [types] = await db.query(`SELECT ${columns.map((c) => `typeof(${c}) AS ${c}`).join(', ')} FROM typed WHERE id = $1`, [ret.id])
    return { row, types }
  }

  test(
    title(
      'strings bound to timestamptz, uuid, jsonb and integer columns (server-side inference)',
      'SQLite has no column types to infer, only affinity; on SQLite a numeric string in an INTEGER column becomes an integer, the others stay text as given',
    ),
    async () => {
      const strings = ['2024-01-02T03:04:05.678Z', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a":[1,2],"b":"x"}', '42', '9007199254740993']
      if (!isPostgres) {
        const { row, types } = await insertAndReadStored(['ts', 'u', 'j', 'i', 'big'], strings)
        assert.deepStrictEqual(row, {
          ts: '2024-01-02T03:04:05.678Z',
          u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          j: '{"a":[1,2],"b":"x"}',
          i: 42,
          big: '9007199254740993',
        })
        assert.deepStrictEqual(types, { ts: 'text', u: 'text', j: 'text', i: 'integer', big: 'integer' })
        // A JSON string is stored as that JSON text, not double-encoded.
        const t = await db.query(`SELECT json_type(j) AS t FROM typed WHERE j = $1`, ['{"a":[1,2],"b":"x"}'])
        assert.deepStrictEqual(t, [{ t: 'object' }])
        return
      }
      const r = await insertAndRead(['ts', 'u', 'j', 'i', 'big'], strings)
      assert.deepStrictEqual(r, {
        ts: new Date('2024-01-02T03:04:05.678Z'),
        u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        j: { a: [1, 2], b: 'x' },
        i: 42,
        big: '9007199254740993',
      })
      // A JSON string literal is stored as that JSON, not double-encoded.
      const t = await db.query(`SELECT jsonb_typeof(j) AS t FROM typed WHERE j = '{"a":[1,2],"b":"x"}'::jsonb`)
      assert.deepStrictEqual(t, [{ t: 'object' }])
    },
  )

  test(
    title(
      'a string bound through a cast in a SELECT',
      'SQLite has no timestamptz, uuid or jsonb casts; on SQLite CAST to integer, real and text converts a bound string, and json() reads it as JSON text',
    ),
    async () => {
      if (!isPostgres) {
        const rows = await inStage((tx) =>
          tx.query(`SELECT CAST($1 AS integer) + 1 AS i, CAST($2 AS real) AS r, CAST($3 AS text) AS t, json($4) AS j`, [
            '41',
            '2.5',
            7,
            '[1, {"x": null}]',
          ]),
        )
        assert.deepStrictEqual(rows, [{ i: 42, r: 2.5, t: '7', j: '[1,{"x":null}]' }])
        return
      }
      const rows = await inStage((tx) =>
        tx.query(`SELECT $1::timestamptz AS ts, $2::uuid AS u, $3::int4 + 1 AS i, $4::jsonb AS j`, [
          '2024-05-06 07:08:09+02',
          'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
          '41',
          '[1,{"x":null}]',
        ]),
      )
      assert.deepStrictEqual(rows, [
        {
          ts: new Date('2024-05-06T05:08:09Z'),
          u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          i: 42,
          j: [1, { x: null }],
        },
      ])
    },
  )

  test(
    title(
      'Date into timestamptz',
      'SQLite has no timestamp type to read back as a Date; on SQLite a Date binds as ISO 8601 UTC text with milliseconds',
    ),
    async () => {
      const d = new Date('2023-03-04T05:06:07.089Z')
      if (!isPostgres) {
        const { row, types } = await insertAndReadStored(['ts'], [d])
        assert.deepStrictEqual(row, { ts: '2023-03-04T05:06:07.089Z' })
        assert.deepStrictEqual(types, { ts: 'text' })
        const [x] = await inStage((tx) => tx.query('SELECT $1 AS ts, typeof($1) AS t', [new Date(-1)]))
        assert.deepStrictEqual(x, { ts: '1969-12-31T23:59:59.999Z', t: 'text' })
        // The same text form as the service's own timestamps, so the two compare in SQL.
        const [c] = await inStage((tx) =>
          tx.query('SELECT CAST(count(*) AS integer) AS n FROM idempotency_key WHERE idempotency_key = $1 AND created_at > $2 AND created_at < $3', [
            KEY,
            new Date(Date.now() - 3600_000),
            new Date(Date.now() + 3600_000),
          ]),
        )
        assert.deepStrictEqual(c, { n: 1 })
        return
      }
      const r = await insertAndRead(['ts'], [d])
      assert.deepStrictEqual(r, { ts: d })
      const [x] = await inStage((tx) => tx.query('SELECT $1::timestamptz AS ts', [new Date(-1)]))
      assert.deepStrictEqual(x, { ts: new Date(-1) })
    },
  )

  test(
    title('number, boolean, null', 'SQLite has no boolean type; on SQLite true and false bind as the integers 1 and 0'),
    async () => {
      if (!isPostgres) {
        const a = await insertAndReadStored(['i', 'f', 'flag', 't'], [7, 2.5, true, null])
        assert.deepStrictEqual(a.row, { i: 7, f: 2.5, flag: 1, t: null })
        assert.deepStrictEqual(a.types, { i: 'integer', f: 'real', flag: 'integer', t: 'null' })
        const b = await insertAndReadStored(['i', 'flag', 'j', 'ts', 'big'], [null, false, null, null, null])
        assert.deepStrictEqual(b.row, { i: null, flag: 0, j: null, ts: null, big: null })
        assert.deepStrictEqual(b.types, { i: 'null', flag: 'integer', j: 'null', ts: 'null', big: 'null' })
        // Bound without a column: the storage class comes from the JS value alone.
        const [x] = await inStage((tx) =>
          tx.query('SELECT $1 AS a, typeof($1) AS ta, $2 AS b, typeof($2) AS tb, $3 AS c, typeof($3) AS tc, $4 IS NULL AS d, typeof($4) AS td', [
            -3,
            -0.125,
            false,
            null,
          ]),
        )
        assert.deepStrictEqual(x, { a: -3, ta: 'integer', b: -0.125, tb: 'real', c: 0, tc: 'integer', d: 1, td: 'null' })
        return
      }
      const r = await insertAndRead(['i', 'f', 'flag', 't'], [7, 2.5, true, null])
      assert.deepStrictEqual(r, { i: 7, f: 2.5, flag: true, t: null })
      const r2 = await insertAndRead(['i', 'flag', 'j', 'ts', 'big'], [null, false, null, null, null])
      assert.deepStrictEqual(r2, { i: null, flag: false, j: null, ts: null, big: null })
      const isNull = await db.query('SELECT j IS NULL AS n FROM typed WHERE flag = false AND i IS NULL AND j IS NULL')
      assert.ok(isNull.length >= 1, 'null into jsonb is SQL NULL')
      const [x] = await inStage((tx) => tx.query('SELECT $1::int4 AS a, $2::float8 AS b, $3::bool AS c, $4::int4 IS NULL AS d', [-3, -0.125, false, null]))
      assert.deepStrictEqual(x, { a: -3, b: -0.125, c: false, d: true })
    },
  )

  test('Buffer into bytea (blob on SQLite)', async () => {
    const buf = Buffer.from([0, 1, 2, 254, 255, 0x5c, 0x27])
    const { row, types } = await insertAndReadStored(['b'], [buf])
    assert.deepStrictEqual(row, { b: buf })
    if (!isPostgres) assert.deepStrictEqual(types, { b: 'blob' })
    const [x] = await inStage((tx) =>
      tx.query(pick({ postgres: 'SELECT $1::bytea AS b, length($1::bytea) AS n', sqlite: 'SELECT $1 AS b, length($1) AS n' }), [Buffer.alloc(0)]),
    )
    assert.deepStrictEqual(x, { b: Buffer.alloc(0), n: 0 })
  })

  test(
    title(
      'plain objects and arrays into jsonb (as JSON)',
      'SQLite has no jsonb type, so JSON reads back as text, not parsed; on SQLite objects and arrays bind as JSON text',
    ),
    async () => {
      const obj = { a: 1, nested: { arr: [1, 'two', null, { deep: true }] }, s: 'h\u00e9' }
      const arr = [1, [2, [3]], { x: 'y' }, null]
      if (!isPostgres) {
        const a = await insertAndReadStored(['j'], [obj])
        assert.deepStrictEqual(a.types, { j: 'text' })
        assert.equal(typeof a.row.j, 'string')
        assert.deepStrictEqual(JSON.parse(a.row.j), obj)
        const b = await insertAndReadStored(['j'], [arr])
        assert.deepStrictEqual(b.types, { j: 'text' })
        assert.deepStrictEqual(JSON.parse(b.row.j), arr)
        const t = await db.query(`SELECT json_type(j) AS t, json_valid(j) AS v FROM typed WHERE j = $1`, [b.row.j])
        assert.deepStrictEqual(t, [{ t: 'array', v: 1 }])
        const [x] = await inStage((tx) => tx.query('SELECT $1 AS j, typeof($1) AS t, json_type($1) AS jt', [{ k: [] }]))
        assert.deepStrictEqual(x, { j: '{"k":[]}', t: 'text', jt: 'object' })
        return
      }
      const r = await insertAndRead(['j'], [obj])
      assert.deepStrictEqual(r, { j: obj })
      const r2 = await insertAndRead(['j'], [arr])
      assert.deepStrictEqual(r2, { j: arr })
      const t = await db.query(`SELECT jsonb_typeof(j) AS t FROM typed WHERE j = $1::jsonb`, [JSON.stringify(arr)])
      assert.deepStrictEqual(t, [{ t: 'array' }])
      const [x] = await inStage((tx) => tx.query('SELECT $1::jsonb AS j', [{ k: [] }]))
      assert.deepStrictEqual(x, { j: { k: [] } })
    },
  )

  test(
    title(
      'a JS array for = ANY($1) on int4',
      'SQLite has no arrays or ANY; on SQLite a JS array binds as JSON text, matched through json_each()',
    ),
    async () => {
      if (!isPostgres) {
        const sql = `WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 10)
                     SELECT g FROM s WHERE g IN (SELECT value FROM json_each($1)) ORDER BY g`
        const ints = await inStage((tx) => tx.query(sql, [[2, 5, 11]]))
        assert.deepStrictEqual(ints, [{ g: 2 }, { g: 5 }])
        // Same as better-sqlite3 given the JSON text.
        assert.deepStrictEqual(ints, await reference(sql, [JSON.stringify([2, 5, 11])]))
        const empty = await inStage((tx) => tx.query(sql, [[]]))
        assert.deepStrictEqual(empty, [])
        return
      }
      const ints = await inStage((tx) =>
        tx.query('SELECT g FROM generate_series(1, 10) g WHERE g = ANY($1) ORDER BY g', [[2, 5, 11]]),
      )
      assert.deepStrictEqual(ints, [{ g: 2 }, { g: 5 }])
      // Same as node-postgres.
      const theirs = await db.query('SELECT g FROM generate_series(1, 10) g WHERE g = ANY($1) ORDER BY g', [[2, 5, 11]])
      assert.deepStrictEqual(ints, theirs)
      const empty = await inStage((tx) => tx.query('SELECT g FROM generate_series(1, 3) g WHERE g = ANY($1)', [[]]))
      assert.deepStrictEqual(empty, [])
    },
  )

  test(
    title(
      'a JS array for = ANY($1) on text',
      'SQLite has no arrays or ANY; on SQLite a JS array of strings binds as JSON text, matched through json_each()',
    ),
    async () => {
      const texts = await inStage((tx) =>
        tx.query(
          pick({
            postgres: `SELECT s FROM unnest(ARRAY['a','b','c c','d']) s WHERE s = ANY($1) ORDER BY s`,
            sqlite: `SELECT s FROM (SELECT 'a' AS s UNION ALL SELECT 'b' UNION ALL SELECT 'c c' UNION ALL SELECT 'd')
                      WHERE s IN (SELECT value FROM json_each($1)) ORDER BY s`,
          }),
          [['c c', 'a', 'z']],
        ),
      )
      assert.deepStrictEqual(texts, [{ s: 'a' }, { s: 'c c' }])
    },
  )

  test('BigInt into int8 (integer on SQLite)', async () => {
    const a = await insertAndReadStored(['big'], [9223372036854775807n])
    assert.deepStrictEqual(a.row, { big: '9223372036854775807' })
    const b = await insertAndReadStored(['big'], [-9007199254740993n])
    assert.deepStrictEqual(b.row, { big: '-9007199254740993' })
    if (!isPostgres) {
      assert.deepStrictEqual(a.types, { big: 'integer' })
      assert.deepStrictEqual(b.types, { big: 'integer' })
    }
    const [x] = await inStage((tx) => tx.query(pick({ postgres: 'SELECT $1::int8 AS v', sqlite: 'SELECT $1 AS v' }), [2n ** 60n]))
    assert.deepStrictEqual(x, { v: String(2n ** 60n) })
  })

  test(
    title(
      'a number beyond 2^53 into int8 → invalid_data',
      'SQLite has no int8 column type to refuse it; on SQLite such a number binds as an exact real, which an INTEGER column stores as an integer',
    ),
    async () => {
      if (!isPostgres) {
        for (const n of [2 ** 60, 2 ** 53 + 2, -(2 ** 60)]) {
          const [x] = await inStage((tx) => tx.query('SELECT $1 AS v, typeof($1) AS t', [n]))
          assert.deepStrictEqual(x, { v: n, t: 'real' })
          const { row, types } = await insertAndReadStored(['big', 't'], [n, 'beyond-2^53'])
          assert.deepStrictEqual(row, { big: String(BigInt(n)), t: 'beyond-2^53' })
          assert.deepStrictEqual(types, { big: 'integer', t: 'text' })
        }
        // 2^53 - 1 binds as an integer.
        const [x] = await inStage((tx) => tx.query('SELECT $1 AS v, typeof($1) AS t', [Number.MAX_SAFE_INTEGER]))
        assert.deepStrictEqual(x, { v: 9007199254740991, t: 'integer' })
        return
      }
      for (const n of [2 ** 60, 2 ** 53 + 2, -(2 ** 60)]) {
        const e = await inStageLoose((tx) => rejects(tx.query(`INSERT INTO typed (big, t) VALUES ($1, 'beyond-2^53')`, [n])))
        assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
      }
      const [n] = await db.query(`SELECT count(*)::int AS n FROM typed WHERE t = 'beyond-2^53'`)
      assert.equal(n.n, 0)
      // 2^53 - 1 is still fine.
      const [x] = await inStage((tx) => tx.query('SELECT $1::int8 AS v', [Number.MAX_SAFE_INTEGER]))
      assert.deepStrictEqual(x, { v: '9007199254740991' })
    },
  )

  test('wrong parameter count → invalid_data', async () => {
    const few = await inStageLoose((tx) => rejects(tx.query('SELECT CAST($1 AS integer) AS a, CAST($2 AS integer) AS b', [1])))
    assertErr(few, 'invalid_data', 'INVALID_ARGUMENT')
    const none = await inStageLoose((tx) => rejects(tx.query('SELECT CAST($1 AS integer) AS a')))
    assertErr(none, 'invalid_data', 'INVALID_ARGUMENT')
    const many = await inStageLoose((tx) => rejects(tx.query('SELECT CAST($1 AS integer) AS a', [1, 2])))
    assertErr(many, 'invalid_data', 'INVALID_ARGUMENT')
  })

  test('a function or a Symbol as a parameter → invalid_data', async () => {
    for (const p of [() => 1, function named() {}, Symbol('s')]) {
      const e = await inStageLoose((tx) => rejects(tx.query('SELECT CAST($1 AS text) AS a', [p])))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    }
  })

  test('params that are not an array, or sql that is not a string → invalid_data', async () => {
    for (const [sql, params] of [
      ['SELECT CAST($1 AS integer) AS a', 1],
      ['SELECT CAST($1 AS integer) AS a', 'x'],
      ['SELECT CAST($1 AS integer) AS a', { 0: 1 }],
      [42, []],
      [undefined, []],
      [Symbol('q'), []],
    ]) {
      const e = await inStageLoose((tx) => rejects(tx.query(sql, params)))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    }
  })

  test('statements without RETURNING resolve to []', async () => {
    const out = await inStage(async (tx) => [
      await tx.query('INSERT INTO typed (t) VALUES ($1)', ['no-returning']),
      await tx.query('UPDATE typed SET i = 1 WHERE t = $1', ['no-returning']),
      await tx.query('DELETE FROM typed WHERE t = $1', ['no-returning-none']),
      await tx.query(pick({ postgres: 'CREATE TEMP TABLE tmp_x (a int) ON COMMIT DROP', sqlite: 'CREATE TEMP TABLE tmp_x (a int)' })),
    ])
    assert.deepStrictEqual(out, [[], [], [], []])
    const r = await db.query(`SELECT i FROM typed WHERE t = 'no-returning'`)
    assert.deepStrictEqual(r, [{ i: 1 }])
  })

  test('the service still works after the rejected queries', async () => {
    const rows = await inStage((tx) => tx.query('SELECT CAST($1 AS text) AS ok', ['yes']))
    assert.deepStrictEqual(rows, [{ ok: 'yes' }])
    assert.equal((await service.retrieve(KEY)).recovery_point, 'values')
  })
})

describe('JSON columns', () => {
  test('Dates inside request_params are stored as JSON.stringify prints them, over the whole Date range', async () => {
    const dates = [
      new Date(0),
      new Date('1969-12-31T23:59:59.999Z'),
      new Date('0000-01-01T00:00:00Z'),
      new Date('-000001-12-31T23:59:59.999Z'),
      new Date('9999-12-31T23:59:59.999Z'),
      new Date('+010000-01-01T00:00:00Z'),
      new Date('+200000-02-29T12:00:00Z'), // a leap day beyond chrono's range
      new Date(8.64e15), // the largest Date: +275760-09-13
      new Date(-8.64e15), // the smallest: -271821-04-20
      new Date(NaN), // invalid: JSON null
    ]
    const params = { dates, nested: { at: new Date(-8.64e15 + 1) } }
    const key = await service.create({ request_params: params })
    const expected = JSON.parse(JSON.stringify(params))
    assert.equal(expected.dates[8], '-271821-04-20T00:00:00.000Z')
    assert.deepStrictEqual(key.request_params, expected)
    assert.deepStrictEqual((await service.retrieve(key.idempotency_key)).request_params, expected)
  })

  test('Date parameters beyond chrono\'s years bind (timestamptz: the Date; text and SQLite: the toISOString text)', async () => {
    const far = new Date(8.64e15) // +275760-09-13, the largest Date
    const rows = await inStage((tx) =>
      tx.query(pick({ postgres: 'SELECT $1::timestamptz AS v, $2::text AS t', sqlite: 'SELECT $1 AS v, $2 AS t' }), [far, far]),
    )
    // timestamptz: the Date itself; as text: what toISOString prints.
    assert.deepStrictEqual(rows, [{ v: pick({ postgres: far, sqlite: far.toISOString() }), t: far.toISOString() }])
  })

  test('an invalid Date as a parameter → invalid_data, never the epoch', async () => {
    // It used to bind as 1970-01-01 for timestamptz (a NaN time value read as 0 ms).
    const sql = pick({ postgres: 'SELECT $1::timestamptz AS v', sqlite: 'SELECT $1 AS v' })
    const e = await inStageLoose((tx) => rejects(tx.query(sql, [new Date(NaN)])))
    assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
  })

  test('a "__proto__" key in stored JSON comes back as an own property, as JSON.parse makes it, never as the prototype', async () => {
    const params = JSON.parse('{"__proto__": {"isAdmin": true}, "cart": {"__proto__": [1]}}')
    const key = await service.create({ request_params: params })
    for (const got of [key.request_params, (await service.retrieve(key.idempotency_key)).request_params]) {
      assert.equal(got.isAdmin, undefined, 'nothing inherited from the stored data')
      assert.equal(Object.getPrototypeOf(got), Object.prototype)
      assert.deepStrictEqual(Object.keys(got), ['__proto__', 'cart'])
      assert.deepStrictEqual(got, params)
    }
    const rows = await inStage((tx) => tx.query(pick({ postgres: 'SELECT $1::jsonb AS j', sqlite: 'SELECT json($1) AS j' }), [params]))
    if (isPostgres) assert.deepStrictEqual(rows[0].j, params) // SQLite returns JSON as text
  })

  test('a Date given to update() as a whole JSON column is stored as JSON.stringify prints it', async () => {
    const key = await service.create({})
    const at = new Date(1234)
    const k = await service.update(key.idempotency_key, { response_body: at, request_params: new Date('2024-02-29T12:34:56.789Z') })
    assert.equal(k.response_body, JSON.parse(JSON.stringify(at)))
    assert.equal(k.response_body, '1970-01-01T00:00:01.234Z')
    assert.equal(k.request_params, '2024-02-29T12:34:56.789Z')
  })
})
