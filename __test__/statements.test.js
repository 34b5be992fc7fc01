// The pooler-safe statement mode (the default on PostgreSQL) writes a callback's parameters into
// its statement as literals cast to the types the server inferred, and leaves nothing prepared
// on the server connection. These cases would go wrong with a naive `$n` replacement or a
// leaked statement; each runs in both statement modes and must give the same answer.
const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const helpers = require('./helpers')
const { freshDb, rejects, isPostgres } = helpers

const skip = isPostgres ? false : 'PostgreSQL only: the statement modes are PostgreSQL\'s'

for (const preparedStatements of [false, true]) {
  describe(`tx.query with preparedStatements: ${preparedStatements}`, { skip }, () => {
    let fx
    let service
    const KEY = `stmts-${preparedStatements}`

    before(async () => {
      fx = await freshDb()
      service = await fx.connect({ preparedStatements })
      await service.create({ idempotency_key: KEY })
      await fx.db.exec(`
        CREATE TYPE mood AS ENUM ('happy', 'sad');
        CREATE TABLE feelings (id serial PRIMARY KEY, m mood, ms mood[]);
        CREATE PROCEDURE add_feeling(x mood) LANGUAGE sql AS $$ INSERT INTO feelings (m) VALUES (x) $$;
      `)
    })
    after(async () => {
      if (fx) await fx.cleanup()
    })

    const inStage = (fn) => helpers.inStage(service, KEY, fn, 'stmts')

    test('a $n inside a string, a quoted identifier, a dollar quote or a comment is not a parameter', async () => {
      const [row] = await inStage((tx) =>
        tx.query(
          `SELECT '$1' AS a, $1::int4 AS "b$1", $$ $2 $$ AS c, $t$ '$1' $t$ AS d, E'\\'$1' AS e /* $2 */ -- $2
           , $2::text AS f`,
          [5, 'x'],
        ),
      )
      assert.deepStrictEqual(row, { a: '$1', b$1: 5, c: ' $2 ', d: " '$1' ", e: "'$1", f: 'x' })
    })

    test('a parameter used twice, and a value with quotes, backslashes and a semicolon', async () => {
      const tricky = "it's \\ a ; DROP TABLE feelings; --"
      const [row] = await inStage((tx) => tx.query('SELECT $1::text AS a, length($1) AS n', [tricky]))
      assert.deepStrictEqual(row, { a: tricky, n: tricky.length })
      const [{ n }] = await fx.db.query("SELECT count(*)::int AS n FROM pg_class WHERE relname = 'feelings'")
      assert.equal(n, 1)
    })

    test('an enum and an enum[] parameter (types known to the server only)', async () => {
      await inStage((tx) => tx.query('INSERT INTO feelings (m, ms) VALUES ($1, $2)', ['happy', ['sad', 'happy']]))
      const rows = await inStage((tx) => tx.query('SELECT m, ms::text AS ms FROM feelings WHERE m = $1 AND $2 = ANY(ms)', ['happy', 'sad']))
      assert.deepStrictEqual(rows, [{ m: 'happy', ms: '{sad,happy}' }])
    })

    test('COPY … FROM STDIN / TO STDOUT is refused at once, and the stage goes on (it used to hang past the stage timeout)', { timeout: 20_000 }, async () => {
      for (const sql of ['COPY feelings FROM STDIN', 'copy feelings (m) from stdin with (format csv)', 'COPY (SELECT 1) TO STDOUT']) {
        const err = await inStage((tx) => tx.query(sql).then(() => null, (e) => e))
        assert.equal(err?.code, 'INVALID_ARGUMENT', `${sql}: ${err?.message}`)
      }
      const [row] = await inStage((tx) => tx.query('SELECT 1 AS one'))
      assert.deepStrictEqual(row, { one: 1 })
    })

    test('DDL and a CALL, with and without parameters, run in a stage', async () => {
      await inStage(async (tx) => {
        await tx.query(`CALL add_feeling('sad')`)
        await tx.query('CREATE TABLE made_in_stage (x int)')
        return null
      })
      const [{ n }] = await fx.db.query("SELECT count(*)::int AS n FROM feelings WHERE m = 'sad' AND ms IS NULL")
      assert.equal(n, 1)
      // Parameters are bound in the extended protocol in both modes, never written into the SQL.
      await inStage((tx) => tx.query('CALL add_feeling($1)', ['sad']))
      const [{ m }] = await fx.db.query("SELECT count(*)::int AS m FROM feelings WHERE m = 'sad' AND ms IS NULL")
      assert.equal(m, 2)
    })

    test('char(n), varchar(n) and bit(n) parameters keep their whole value', async () => {
      await fx.db.exec('CREATE TABLE IF NOT EXISTS sized (c char(3), v varchar(5), b bit(3))').catch(() => {})
      // bit has no binary encoder of ours: the prepared mode asks for a cast in SQL.
      const b = preparedStatements ? '$3::text::bit(3)' : '$3'
      await inStage((tx) => tx.query(`INSERT INTO sized (c, v, b) VALUES ($1, $2, ${b})`, ['abc', 'hello', '101']))
      const rows = await inStage((tx) => tx.query(`SELECT c, v, b::text AS b FROM sized WHERE c = $1 AND b = ${b.replace('$3', '$2')}`, ['abc', '101']))
      assert.deepStrictEqual(rows.slice(-1), [{ c: 'abc', v: 'hello', b: '101' }])
      const arr = await inStage((tx) => tx.query('SELECT $1::char(3)[] AS a', [['xyz', 'ab']]))
      assert.deepStrictEqual(arr, [{ a: ['xyz', 'ab '] }])
    })

    test('a comment ended by a carriage return, or a continued E-string, cannot hide a second statement', async () => {
      for (const sql of ['SELECT 1 AS x -- note\r; DELETE FROM feelings', "SELECT E'a'\n'\\', 1 --' AS x; DELETE FROM feelings"]) {
        const e = await rejects(inStage((tx) => tx.query(sql)))
        assert.ok(['42601', 'INVALID_ARGUMENT'].includes(e.code), `${JSON.stringify(sql)}: ${e.code} ${e.message}`)
      }
      const [{ n }] = await fx.db.query('SELECT count(*)::int AS n FROM feelings')
      assert.ok(n > 0, 'no DELETE ran')
    })

    test('two statements in one string are refused, as the extended protocol refuses them; nothing runs', async () => {
      const e = await rejects(
        service.workStage(KEY, async (tx) => {
          await tx.query('INSERT INTO feelings (m) VALUES ($1); DELETE FROM feelings', ['happy'])
          return { recovery_point: 'never' }
        }),
      )
      assert.equal(e.code, '42601')
      const [{ n }] = await fx.db.query('SELECT count(*)::int AS n FROM feelings')
      assert.ok(n > 0, 'the DELETE did not run')
    })

    if (preparedStatements) test('the prepared mode keeps at most 256 named statements per connection, closing the least recently used', async () => {
      const one = await fx.connect({ maxConnections: 1, preparedStatements: true })
      await one.create({ idempotency_key: 'evict' })
      const n = await helpers.inStage(one, 'evict', async (tx) => {
        for (let i = 0; i < 300; i++) await tx.query(`SELECT ${i} AS v`)
        const [{ n }] = await tx.query('SELECT count(*)::int AS n FROM pg_prepared_statements')
        return n
      }, 'evicted')
      assert.ok(n <= 256 + 1 && n >= 200, `${n} statements prepared`)
      // An evicted statement is prepared again when it comes back.
      const [row] = await helpers.inStage(one, 'evict', (tx) => tx.query('SELECT 0 AS v'), 'again')
      assert.deepStrictEqual(row, { v: 0 })
      await one.close()
    })

    if (preparedStatements) test('a cached statement whose result type changed after DDL fails once, then is prepared again', async () => {
      const one = await fx.connect({ maxConnections: 1, preparedStatements: true })
      await one.create({ idempotency_key: 'ddl' })
      await fx.db.exec('CREATE TABLE shifting (a int); INSERT INTO shifting VALUES (1)')
      const read = () => helpers.inStage(one, 'ddl', (tx) => tx.query('SELECT * FROM shifting'), 'ddl')
      assert.deepStrictEqual(await read(), [{ a: 1 }])
      await fx.db.exec('ALTER TABLE shifting ADD COLUMN b int')
      // The server refuses the named statement it cached (0A000, "cached plan must not change
      // result type"); the connection drops it from its cache …
      const e = await rejects(read())
      assert.equal(e.code, '0A000')
      // … so the next stage prepares it again and reads the new shape.
      assert.deepStrictEqual(await read(), [{ a: 1, b: null }])
      await one.close()
    })

    // no SQL-level PREPARE ever; the default mode leaves no statement on the connection, the
    // prepared mode only protocol-level ones
    test('no SQL-level PREPARE ever; what each mode leaves on the connection', async () => {
      // One connection, so the next stage runs on the same server session.
      const one = await fx.connect({ maxConnections: 1, preparedStatements })
      await rejects(
        one.workStage(KEY, async (tx) => {
          await tx.query('SELECT $1::int4 / 0 AS boom', [1])
          return { recovery_point: 'never' }
        }),
      )
      const rows = await (async () => {
        let rows
        await one.workStage(KEY, async (tx) => {
          rows = await tx.query('SELECT name, from_sql FROM pg_prepared_statements ORDER BY name')
          return { recovery_point: 'stmts' }
        })
        return rows
      })()
      if (preparedStatements) {
        assert.ok(rows.length >= 3, JSON.stringify(rows))
        assert.ok(rows.every((r) => r.from_sql === false && r.name.startsWith('medusa_ikey_')), JSON.stringify(rows))
      } else {
        assert.deepStrictEqual(rows, [], 'default mode: no statement outlives its flight')
      }
      await one.close()
    })
  })
}
