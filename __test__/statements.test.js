// The pooler-safe statement mode (the default on PostgreSQL) writes a callback's parameters into
// its statement as literals cast to the types the server inferred, and leaves nothing prepared
// on the server connection. These cases would go wrong with a naive `$n` replacement or a
// leaked statement; each runs in both statement modes and must give the same answer.
const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { freshDb, rejects, isPostgres } = require('./helpers')

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

    async function inStage(fn) {
      let out
      await service.workStage(KEY, async (tx) => {
        out = await fn(tx)
        return { recovery_point: 'stmts' }
      })
      return out
    }

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

    test('CALL with a parameter (a statement PREPARE does not take) and DDL in a stage', async () => {
      await inStage(async (tx) => {
        await tx.query('CALL add_feeling($1)', ['sad'])
        await tx.query('CREATE TABLE made_in_stage (x int)')
        return null
      })
      const [{ n }] = await fx.db.query("SELECT count(*)::int AS n FROM feelings WHERE m = 'sad' AND ms IS NULL")
      assert.equal(n, 1)
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

    test('a failed statement leaves nothing prepared on the connection, in the default mode', async () => {
      // One connection, so the next stage runs on the same server session.
      const one = await fx.connect({ maxConnections: 1, preparedStatements })
      await rejects(
        one.workStage(KEY, async (tx) => {
          await tx.query('SELECT $1::int4 / 0 AS boom', [1])
          return { recovery_point: 'never' }
        }),
      )
      const names = await (async () => {
        let rows
        await one.workStage(KEY, async (tx) => {
          rows = await tx.query('SELECT name FROM pg_prepared_statements ORDER BY name')
          return { recovery_point: 'stmts' }
        })
        return rows.map((r) => r.name)
      })()
      if (preparedStatements) {
        assert.ok(names.includes('medusa_ikey_lock') && names.includes('medusa_ikey_apply'), names.join())
      } else {
        assert.deepStrictEqual(names, [], 'pooler-safe: no statement outlives its message')
      }
      await one.close()
    })
  })
}
