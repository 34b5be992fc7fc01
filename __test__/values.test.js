// TransactionManager.query value mapping (SPEC §5), both directions, compared against
// node-postgres running the same SQL on the same database.
const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const util = require('node:util')
const { freshDb, rejects } = require('./helpers')

let db
let service
let pg
const KEY = `values-${process.pid}`

function assertErr(e, type, code) {
  assert.ok(e instanceof Error, `expected an Error, got ${util.inspect(e)}`)
  assert.equal(typeof e.message, 'string')
  assert.ok(e.date instanceof Date, `date of ${util.inspect(e)}`)
  assert.equal(e.type, type, `type of ${util.inspect(e)}`)
  assert.equal(e.code, code, `code of ${util.inspect(e)}`)
}

/** Run `fn(tx)` inside a native stage that must commit; return what `fn` returned. */
async function inStage(fn) {
  let out
  await service.workStage(KEY, async (tx) => {
    out = await fn(tx)
    return { recovery_point: 'values' }
  })
  return out
}

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

/** The same SELECT through tx.query and through node-postgres. */
async function both(sql, params = []) {
  const ours = await inStage((tx) => tx.query(sql, params))
  const theirs = (await pg.query(sql, params)).rows
  return { ours, theirs }
}

before(async () => {
  db = await freshDb()
  service = db.service
  pg = db.pg
  await service.create({ idempotency_key: KEY })
  await pg.query(`CREATE TABLE typed (
    id serial PRIMARY KEY,
    ts timestamptz, u uuid, j jsonb, i int4, big int8, b bytea, f float8, flag bool, t text
  )`)
})

after(async () => {
  if (db) await db.cleanup()
})

// ---------------------------------------------------------------------------------------------
describe('results: the same values node-postgres returns', () => {
  const cases = [
    ['int2', `SELECT 1::int2 AS a, (-32768)::int2 AS b, 32767::int2 AS c`],
    ['int4', `SELECT 0::int4 AS a, 2147483647::int4 AS b, (-2147483648)::int4 AS c`],
    ['int8', `SELECT 1::int8 AS a, 9223372036854775807::int8 AS b, (-9223372036854775808)::int8 AS c`],
    ['float4', `SELECT 0.1::float4 AS a, 1.5::float4 AS b, (-3.25)::float4 AS c, 3.4e38::float4 AS d, 'NaN'::float4 AS e`],
    [
      'float8',
      `SELECT 0.1::float8 AS a, 1e300::float8 AS b, (-0.0)::float8 AS c, 'NaN'::float8 AS d,
              'Infinity'::float8 AS e, '-Infinity'::float8 AS f, 5e-324::float8 AS g, 123456789.125::float8 AS h`,
    ],
    [
      'numeric',
      `SELECT '12345678901234567890.123456789'::numeric AS a, 1.50::numeric AS b, 0::numeric AS c,
              (-0.000001)::numeric AS d, 1e20::numeric AS e, 'NaN'::numeric AS f, 12.3400::numeric(10,4) AS g,
              '-99999999999999999999999999999999999999.99999999999999999999'::numeric AS h`,
    ],
    ['bool', `SELECT true AS a, false AS b`],
    ['text', `SELECT 'hello'::text AS a, ''::text AS b, 'h\u00e9llo \u2713 \u{1F600}'::text AS c, E'tab\\tnl\\n'::text AS d`],
    ['varchar', `SELECT 'abc'::varchar AS a, 'xy'::varchar(5) AS b, 'c'::char(3) AS c, 'nm'::name AS d`],
    ['uuid', `SELECT 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid AS a`],
    ['json', `SELECT '{"b":1,"a":[1,2,{"c":null}],"s":"x"}'::json AS a, '[1,"two",false]'::json AS b, '"str"'::json AS c, '3.5'::json AS d, 'null'::json AS e`],
    ['jsonb', `SELECT '{"b":1,"a":[1,2,{"c":null}],"s":"x"}'::jsonb AS a, '[]'::jsonb AS b, '"str"'::jsonb AS c, 'true'::jsonb AS d, 'null'::jsonb AS e, '{}'::jsonb AS f`],
    ['jsonb with nested arrays', `SELECT '[[1,[2,[3,[]]]],{"x":[[{"y":[null,1.25]}]]}]'::jsonb AS a`],
    [
      'timestamptz',
      `SELECT '2024-01-02 03:04:05.678+00'::timestamptz AS a, '2024-06-30 23:59:59+05:30'::timestamptz AS b,
              '1970-01-01 00:00:00+00'::timestamptz AS c, '1900-02-03 04:05:06.007+00'::timestamptz AS d,
              '2024-01-02 03:04:05.678901+00'::timestamptz AS e, '2262-04-11 23:47:16.854775+00'::timestamptz AS f`,
    ],
    // Sub-millisecond precision before 1970: node-postgres (Date.UTC on the parsed fields)
    // lands on the earlier millisecond.
    ['timestamptz before 1970 with microseconds', `SELECT '1969-12-31 23:59:59.9995+00'::timestamptz AS a, '1901-06-07 08:09:10.123456+00'::timestamptz AS b`],
    ['bytea', `SELECT '\\x00ff10'::bytea AS a, ''::bytea AS b, convert_to('h\u00e9', 'UTF8') AS c`],
    ['int4[]', `SELECT ARRAY[1,2,3]::int4[] AS a, ARRAY[]::int4[] AS b, ARRAY[1,NULL,3]::int4[] AS c`],
    [
      'other arrays (int2[], int8[], float8[], bool[], uuid[], numeric[], timestamptz[], jsonb[])',
      `SELECT '{1,-2}'::int2[] AS a, '{1,9223372036854775807}'::int8[] AS b, '{1.5,NaN}'::float8[] AS c,
              '{t,f,NULL}'::bool[] AS d, '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'::uuid[] AS e,
              '{1.50,2}'::numeric[] AS f, '{"2024-01-01 00:00:00+00"}'::timestamptz[] AS g,
              ARRAY['{"x":[1]}'::jsonb, 'null'::jsonb] AS h, '{{1,2},{3,4}}'::int4[] AS i`,
    ],
    ['text[]', `SELECT ARRAY['a','b c','', 'q"uote', 'NULL']::text[] AS a, ARRAY['x',NULL]::text[] AS b`],
    [
      'NULL of several types',
      `SELECT NULL::int4 AS a, NULL::int8 AS b, NULL::text AS c, NULL::jsonb AS d, NULL::timestamptz AS e,
              NULL::numeric AS f, NULL::bool AS g, NULL::bytea AS h, NULL::uuid AS i, NULL::int4[] AS j,
              NULL::float8 AS k, NULL AS l`,
    ],
    ['several rows and column order', `SELECT g AS n, g::text AS s FROM generate_series(1, 3) g ORDER BY g`],
    ['no rows', `SELECT 1 AS a WHERE false`],
  ]

  for (const [label, sql] of cases) {
    test(label, async () => {
      const { ours, theirs } = await both(sql)
      assert.deepStrictEqual(ours, theirs)
      if (theirs.length) assert.deepStrictEqual(Object.keys(ours[0]), Object.keys(theirs[0]))
    })
  }

  test('the returned types, spelled out', async () => {
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
  })

  // Deliberate difference: node-postgres parses `timestamp` (without time zone) and `date`
  // in the process's local time zone; we read them as UTC, whatever TZ is. In a UTC process
  // (as here) the two agree; the assertions below pin what we return.
  test('timestamp without time zone is read as UTC', async () => {
    const sql = `SELECT '2024-01-02 03:04:05.678'::timestamp AS a, '1999-12-31 23:59:59'::timestamp AS b`
    const { ours, theirs } = await both(sql)
    assert.deepStrictEqual(ours, [
      { a: new Date('2024-01-02T03:04:05.678Z'), b: new Date('1999-12-31T23:59:59Z') },
    ])
    // node-postgres: local time.
    assert.deepStrictEqual(theirs, [
      { a: new Date(2024, 0, 2, 3, 4, 5, 678), b: new Date(1999, 11, 31, 23, 59, 59) },
    ])
  })

  test('date is read as UTC midnight', async () => {
    const sql = `SELECT '2024-01-02'::date AS a, '1969-07-20'::date AS b`
    const { ours, theirs } = await both(sql)
    assert.deepStrictEqual(ours, [{ a: new Date('2024-01-02T00:00:00Z'), b: new Date('1969-07-20T00:00:00Z') }])
    // node-postgres: local midnight.
    assert.deepStrictEqual(theirs, [{ a: new Date(2024, 0, 2), b: new Date(1969, 6, 20) }])
  })
})

// ---------------------------------------------------------------------------------------------
describe('parameters', () => {
  async function insertAndRead(columns, params) {
    const cols = columns.join(', ')
    const ph = columns.map((_, i) => `$${i + 1}`).join(', ')
    const [ret] = await inStage((tx) => tx.query(`INSERT INTO typed (${cols}) VALUES (${ph}) RETURNING id`, params))
    assert.equal(typeof ret.id, 'number')
    const r = await pg.query(`SELECT ${cols} FROM typed WHERE id = $1`, [ret.id])
    return r.rows[0]
  }

  test('strings bound to timestamptz, uuid, jsonb and integer columns (server-side inference)', async () => {
    const r = await insertAndRead(
      ['ts', 'u', 'j', 'i', 'big'],
      ['2024-01-02T03:04:05.678Z', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a":[1,2],"b":"x"}', '42', '9007199254740993'],
    )
    assert.deepStrictEqual(r, {
      ts: new Date('2024-01-02T03:04:05.678Z'),
      u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
      j: { a: [1, 2], b: 'x' },
      i: 42,
      big: '9007199254740993',
    })
    // A JSON string literal is stored as that JSON, not double-encoded.
    const t = await pg.query(`SELECT jsonb_typeof(j) AS t FROM typed WHERE j = '{"a":[1,2],"b":"x"}'::jsonb`)
    assert.deepStrictEqual(t.rows, [{ t: 'object' }])
  })

  test('a string bound through a cast in a SELECT', async () => {
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
  })

  test('Date into timestamptz', async () => {
    const d = new Date('2023-03-04T05:06:07.089Z')
    const r = await insertAndRead(['ts'], [d])
    assert.deepStrictEqual(r, { ts: d })
    const [x] = await inStage((tx) => tx.query('SELECT $1::timestamptz AS ts', [new Date(-1)]))
    assert.deepStrictEqual(x, { ts: new Date(-1) })
  })

  test('number, boolean, null', async () => {
    const r = await insertAndRead(['i', 'f', 'flag', 't'], [7, 2.5, true, null])
    assert.deepStrictEqual(r, { i: 7, f: 2.5, flag: true, t: null })
    const r2 = await insertAndRead(['i', 'flag', 'j', 'ts', 'big'], [null, false, null, null, null])
    assert.deepStrictEqual(r2, { i: null, flag: false, j: null, ts: null, big: null })
    const isNull = await pg.query('SELECT j IS NULL AS n FROM typed WHERE flag = false AND i IS NULL AND j IS NULL')
    assert.ok(isNull.rows.length >= 1, 'null into jsonb is SQL NULL')
    const [x] = await inStage((tx) => tx.query('SELECT $1::int4 AS a, $2::float8 AS b, $3::bool AS c, $4::int4 IS NULL AS d', [-3, -0.125, false, null]))
    assert.deepStrictEqual(x, { a: -3, b: -0.125, c: false, d: true })
  })

  test('Buffer into bytea', async () => {
    const buf = Buffer.from([0, 1, 2, 254, 255, 0x5c, 0x27])
    const r = await insertAndRead(['b'], [buf])
    assert.deepStrictEqual(r, { b: buf })
    const [x] = await inStage((tx) => tx.query('SELECT $1::bytea AS b, length($1::bytea) AS n', [Buffer.alloc(0)]))
    assert.deepStrictEqual(x, { b: Buffer.alloc(0), n: 0 })
  })

  test('plain objects and arrays into jsonb (as JSON)', async () => {
    const obj = { a: 1, nested: { arr: [1, 'two', null, { deep: true }] }, s: 'h\u00e9' }
    const r = await insertAndRead(['j'], [obj])
    assert.deepStrictEqual(r, { j: obj })
    const arr = [1, [2, [3]], { x: 'y' }, null]
    const r2 = await insertAndRead(['j'], [arr])
    assert.deepStrictEqual(r2, { j: arr })
    const t = await pg.query(`SELECT jsonb_typeof(j) AS t FROM typed WHERE j = $1::jsonb`, [JSON.stringify(arr)])
    assert.deepStrictEqual(t.rows, [{ t: 'array' }])
    const [x] = await inStage((tx) => tx.query('SELECT $1::jsonb AS j', [{ k: [] }]))
    assert.deepStrictEqual(x, { j: { k: [] } })
  })

  test('a JS array for = ANY($1) on int4', async () => {
    const ints = await inStage((tx) =>
      tx.query('SELECT g FROM generate_series(1, 10) g WHERE g = ANY($1) ORDER BY g', [[2, 5, 11]]),
    )
    assert.deepStrictEqual(ints, [{ g: 2 }, { g: 5 }])
    // Same as node-postgres.
    const theirs = (await pg.query('SELECT g FROM generate_series(1, 10) g WHERE g = ANY($1) ORDER BY g', [[2, 5, 11]])).rows
    assert.deepStrictEqual(ints, theirs)
    const empty = await inStage((tx) => tx.query('SELECT g FROM generate_series(1, 3) g WHERE g = ANY($1)', [[]]))
    assert.deepStrictEqual(empty, [])
  })

  test('a JS array for = ANY($1) on text', async () => {
    const texts = await inStage((tx) =>
      tx.query(`SELECT s FROM unnest(ARRAY['a','b','c c','d']) s WHERE s = ANY($1) ORDER BY s`, [['c c', 'a', 'z']]),
    )
    assert.deepStrictEqual(texts, [{ s: 'a' }, { s: 'c c' }])
  })

  test('BigInt into int8', async () => {
    const r = await insertAndRead(['big'], [9223372036854775807n])
    assert.deepStrictEqual(r, { big: '9223372036854775807' })
    const r2 = await insertAndRead(['big'], [-9007199254740993n])
    assert.deepStrictEqual(r2, { big: '-9007199254740993' })
    const [x] = await inStage((tx) => tx.query('SELECT $1::int8 AS v', [2n ** 60n]))
    assert.deepStrictEqual(x, { v: String(2n ** 60n) })
  })

  test('a number beyond 2^53 into int8 → invalid_data', async () => {
    for (const n of [2 ** 60, 2 ** 53 + 2, -(2 ** 60)]) {
      const e = await inStageLoose((tx) => rejects(tx.query(`INSERT INTO typed (big, t) VALUES ($1, 'beyond-2^53')`, [n])))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    }
    const n = await pg.query(`SELECT count(*)::int AS n FROM typed WHERE t = 'beyond-2^53'`)
    assert.equal(n.rows[0].n, 0)
    // 2^53 - 1 is still fine.
    const [x] = await inStage((tx) => tx.query('SELECT $1::int8 AS v', [Number.MAX_SAFE_INTEGER]))
    assert.deepStrictEqual(x, { v: '9007199254740991' })
  })

  test('wrong parameter count → invalid_data', async () => {
    const few = await inStageLoose((tx) => rejects(tx.query('SELECT $1::int4 AS a, $2::int4 AS b', [1])))
    assertErr(few, 'invalid_data', 'INVALID_ARGUMENT')
    const none = await inStageLoose((tx) => rejects(tx.query('SELECT $1::int4 AS a')))
    assertErr(none, 'invalid_data', 'INVALID_ARGUMENT')
    const many = await inStageLoose((tx) => rejects(tx.query('SELECT $1::int4 AS a', [1, 2])))
    assertErr(many, 'invalid_data', 'INVALID_ARGUMENT')
  })

  test('a function or a Symbol as a parameter → invalid_data', async () => {
    for (const p of [() => 1, function named() {}, Symbol('s')]) {
      const e = await inStageLoose((tx) => rejects(tx.query('SELECT $1::text AS a', [p])))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    }
  })

  test('params that are not an array, or sql that is not a string → invalid_data', async () => {
    for (const [sql, params] of [
      ['SELECT $1::int4 AS a', 1],
      ['SELECT $1::int4 AS a', 'x'],
      ['SELECT $1::int4 AS a', { 0: 1 }],
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
      await tx.query('CREATE TEMP TABLE tmp_x (a int)'),
    ])
    assert.deepStrictEqual(out, [[], [], [], []])
    const r = await pg.query(`SELECT i FROM typed WHERE t = 'no-returning'`)
    assert.deepStrictEqual(r.rows, [{ i: 1 }])
  })

  test('the service still works after the rejected queries', async () => {
    const rows = await inStage((tx) => tx.query('SELECT $1::text AS ok', ['yes']))
    assert.deepStrictEqual(rows, [{ ok: 'yes' }])
    assert.equal((await service.retrieve(KEY)).recovery_point, 'values')
  })
})
