'use strict'
// SQL for tx.query: the statements per backend, SQL text and parameter arbitraries, and which
// statements unsettle the transaction or the session.
const { fc, V, wrap, special, specials, odd, anyString, jsonData, hostileString, GETTER_THROWS, throwingProxy } = require('./values')
const { isPg, AVOID } = require('./config')

/** Text that is not one well-formed statement (or fails at once), the same on both backends. */
const MALFORMED_SQL = [
  'SELECT 1; SELECT 2',
  '',
  ' ',
  ';',
  '-- only a comment',
  '/* unterminated',
  'SELEKT 1',
  'SELECT 1/0',
]
const PG_SQL = [
  'SELECT 1 AS one',
  'SELECT $1 AS v',
  'SELECT $1::text AS v',
  'SELECT $1::int AS v',
  'SELECT $1::int8 AS v',
  'SELECT $1::float8 AS v',
  'SELECT $1::numeric AS v',
  'SELECT $1::bool AS v',
  'SELECT $1::jsonb AS v',
  'SELECT $1::json AS v',
  'SELECT $1::bytea AS v',
  'SELECT $1::timestamptz AS v',
  'SELECT $1::date AS v',
  'SELECT $1::uuid AS v',
  'SELECT $1::text[] AS v',
  'SELECT $1::int[] AS v',
  'SELECT $1::varchar(3) AS v',
  'SELECT $1::interval AS v',
  'SELECT $1::inet AS v',
  'SELECT $1::point AS v',
  'SELECT $1::text AS a, $2::int AS b',
  'SELECT $2::text AS v',
  'SELECT $70000::text AS v',
  'SELECT $0',
  "SELECT '$1' AS v",
  ...MALFORMED_SQL,
  'SELECT pg_sleep(0.01)',
  'SELECT generate_series(1, 2000) AS n',
  "SELECT repeat('x', 1000000) AS v",
  'SELECT NULL AS v',
  'SELECT ARRAY[1, NULL, 3] AS v',
  'SELECT 1 AS a, 2 AS a',
  'SELECT 1 AS "__proto__"',
  'SELECT 1 AS "constructor", 2 AS "toString"',
  "SELECT 'NaN'::float8 AS v, 'Infinity'::float8 AS w, '-0'::float8 AS z",
  "SELECT 9223372036854775807::int8 AS v, 1e400::numeric AS w",
  "SELECT '\\x00ff'::bytea AS v",
  "SELECT 'infinity'::timestamptz AS v, '-infinity'::date AS w",
  "SELECT '294276-12-31 23:59:59 UTC'::timestamptz AS v",
  "SELECT '4713-01-01 BC'::date AS v",
  "SELECT '{\"a\":[1,{\"b\":null}]}'::jsonb AS v",
  "SELECT ROW(1, 'a') AS v",
  "SELECT '(1,2)'::point AS v, '1 day'::interval AS w, 'fe80::1'::inet AS x, B'101' AS y, '\\xDEADBEEF'::bytea AS z",
  'SELECT money(1.5) AS v',
  'SELECT txid_current() AS v',
  "SELECT 'a'::\"char\" AS v",
  'SELECT * FROM idempotency_key LIMIT 3',
  'SELECT * FROM idempotency_key FOR UPDATE NOWAIT',
  'INSERT INTO fz_scratch (t, i, j, b, ts) VALUES ($1, $2, $3, $4, $5) RETURNING *',
  'INSERT INTO fz_scratch (t) VALUES ($1) RETURNING *',
  'UPDATE fz_scratch SET t = $1 WHERE false RETURNING *',
  'DELETE FROM fz_scratch WHERE t = $1 RETURNING *',
  'SAVEPOINT fz_sp',
  'ROLLBACK TO SAVEPOINT fz_sp',
  'RELEASE SAVEPOINT fz_sp',
  'SET LOCAL statement_timeout = 1',
  'SET LOCAL lock_timeout = 1',
  "SELECT set_config('fz.x', $1, true) AS v",
  'LISTEN fz_channel',
  "NOTIFY fz_channel, 'x'",
  'COPY fz_scratch TO STDOUT',
  'COPY fz_scratch FROM STDIN',
  'VACUUM fz_scratch',
  'DISCARD ALL',
  "PREPARE TRANSACTION 'fz'",
  'LOCK TABLE fz_scratch IN ACCESS EXCLUSIVE MODE NOWAIT',
  "DO $$ BEGIN RAISE EXCEPTION 'fz raised %', 1 USING ERRCODE = 'P0001'; END $$",
  "DO $$ BEGIN RAISE NOTICE 'fz notice'; RAISE WARNING 'fz warning'; END $$",
  "SELECT pg_advisory_xact_lock(42)",
  'SELECT pg_terminate_backend(pg_backend_pid())',
]
const SQLITE_SQL = [
  'SELECT 1 AS one',
  'SELECT $1 AS v',
  'SELECT $1 AS a, $2 AS b',
  'SELECT ?1 AS v',
  'SELECT ? AS v',
  'SELECT :name AS v',
  'SELECT @x AS v',
  'SELECT $2 AS v',
  'SELECT $999999 AS v',
  'SELECT $0',
  "SELECT '$1' AS v",
  'SELECT CAST($1 AS INTEGER) AS v',
  'SELECT typeof($1) AS t, $1 AS v',
  'SELECT length($1) AS n',
  'SELECT json($1) AS v',
  'SELECT zeroblob(10) AS b',
  'SELECT randomblob(1000000) AS b',
  'SELECT 9223372036854775807 AS v, -9223372036854775808 AS w',
  'SELECT 9007199254740993 AS v',
  'SELECT 1e999 AS v, -1e999 AS w',
  "SELECT 'a' || char(0) || 'b' AS v",
  "SELECT CAST(x'ff' AS TEXT) AS v",
  'SELECT 1 AS a, 2 AS a',
  'SELECT 1 AS "__proto__"',
  ...MALFORMED_SQL,
  'SELECT abs(-9223372036854775808)',
  "SELECT json_extract('{\"a\":1}', '$.a') AS v",
  'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT count(*) AS n FROM c',
  'SELECT * FROM idempotency_key LIMIT 3',
  'INSERT INTO fz_scratch (t, i, j, b, ts) VALUES ($1, $2, $3, $4, $5) RETURNING *',
  'INSERT INTO fz_scratch (t) VALUES ($1) RETURNING *',
  'UPDATE fz_scratch SET t = $1 WHERE 0 RETURNING *',
  'DELETE FROM fz_scratch WHERE t = $1 RETURNING *',
  'SAVEPOINT fz_sp',
  'ROLLBACK TO fz_sp',
  'RELEASE fz_sp',
  'PRAGMA journal_mode',
  'PRAGMA foreign_keys = OFF',
  'PRAGMA query_only = 1',
  "ATTACH DATABASE ':memory:' AS fz_aux",
  'DETACH DATABASE fz_aux',
  'VACUUM',
  'CREATE TEMP TABLE IF NOT EXISTS fz_tmp (x)',
  'SELECT load_extension($1)',
]
const SQL = isPg ? PG_SQL : SQLITE_SQL
/** Statements that end or restart the transaction behind the stage's back. */
const TXCTL = isPg ? ['COMMIT', 'ROLLBACK', 'BEGIN', 'END', 'ABORT', 'COMMIT AND CHAIN', 'START TRANSACTION'] : ['COMMIT', 'ROLLBACK', 'BEGIN', 'END', 'BEGIN IMMEDIATE']
/** Statements after which the callback's writes may legitimately be gone (savepoints). */
const UNDOING = new Set(['ROLLBACK TO SAVEPOINT fz_sp', 'ROLLBACK TO fz_sp', 'DISCARD ALL', 'SELECT pg_terminate_backend(pg_backend_pid())'])
/**
 * SQL text: the statements above, or anything odd. Once a run has shown that SQL with a NUL byte
 * hangs the connection ('nul-sql'), later child processes leave NUL out of SQL text so the rest
 * of the space is still explored (the hang is reported once, with its input).
 */
const sqlArb = fc
  .oneof({ weight: 6, arbitrary: wrap(fc.constantFrom(...SQL)) }, { weight: 1, arbitrary: odd }, { weight: 1, arbitrary: anyString })
  .filter((x) => !(AVOID.has('nul-sql') && typeof x.v === 'string' && x.v.includes('\u0000')))

const paramValueArb = fc.oneof(
  { weight: 3, arbitrary: odd },
  { weight: 2, arbitrary: jsonData },
  { weight: 2, arbitrary: wrap(hostileString) },
  { weight: 1, arbitrary: wrap(fc.date({ noInvalidDate: false })) },
  { weight: 1, arbitrary: wrap(fc.uint8Array({ maxLength: 16 }).map((a) => Buffer.from(a))) },
  { weight: 1, arbitrary: wrap(fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n })) },
  { weight: 1, arbitrary: wrap(fc.double()) },
)
const PARAM_ARRAY_SPECIALS = [
  special('70000 params', () => new Array(70000).fill(1)),
  special('sparse [ , , ]', () => new Array(3)),
  special('array with a throwing index getter', () => {
    const a = [1, 2]
    Object.defineProperty(a, 0, {
      get() {
        throw GETTER_THROWS
      },
    })
    return a
  }),
  special('Proxy(array) whose traps throw', () => throwingProxy([1])),
  special('frozen [1]', () => Object.freeze([1])),
  special('array subclass', () => {
    class A extends Array {}
    return A.from([1, 'a'])
  }),
  special('array-like { length: 1, 0: "x" }', () => ({ length: 1, 0: 'x' })),
  special('arguments object', function () {
    return (function () {
      return arguments // eslint-disable-line prefer-rest-params
    })(1, 2)
  }),
]
const paramsArb = fc.oneof(
  { weight: 2, arbitrary: fc.constant(new V('no params', undefined)) },
  { weight: 6, arbitrary: fc.array(paramValueArb, { maxLength: 5 }).map((xs) => new V(`[${xs.map((x) => x.d).join(', ')}]`, xs.map((x) => x.v))) },
  { weight: 1, arbitrary: specials(PARAM_ARRAY_SPECIALS) },
  { weight: 1, arbitrary: odd },
)

/** Statements after which later results in the same transaction are no longer predictable. */
const UNSETTLING = /SET LOCAL|terminate|COPY|DISCARD|PRAGMA|ATTACH|DETACH|ROLLBACK|COMMIT|BEGIN|END|ABORT|START|RELEASE|SAVEPOINT|LOCK|VACUUM|PREPARE/i

/** Statements that change the connection's session beyond the transaction (the caller's doing). */
const SESSION = /PRAGMA|ATTACH|DETACH|LISTEN/i
const riskySql = (sql) => typeof sql === 'string' && (UNSETTLING.test(sql) || SESSION.test(sql))

module.exports = { TXCTL, UNDOING, sqlArb, paramsArb, UNSETTLING, SESSION, riskySql }
