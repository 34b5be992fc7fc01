// The database of the method contract files (migrate, initialize-request, create-retrieve-update,
// work-stage, bad-arguments, errors, with-transaction): each file gets a fresh database of the
// backend IDEM_BACKEND selects (helpers.js) with a `side` table for stage writes, and reads rows
// back through the independent verification client (node-postgres / better-sqlite3).
const { useFreshDb, decodeKeyRow } = require('./helpers')

let db // the verification client of this file's database

/**
 * This file's database (before/after hooks): migrated, with `side (tag, v)`. `ready` gets
 * `{ fx, db, service }`: the fixture (connect(), cleanup()…), its verification client, its
 * service.
 *
 *   let fx, db, service
 *   useMethodsDb((t) => ({ fx, db, service } = t))
 */
function useMethodsDb(ready) {
  useFreshDb(async (fx) => {
    ready({ fx, db: fx.db, service: fx.service })
    db = fx.db
    await db.exec('CREATE TABLE side (tag text NOT NULL, v text NOT NULL)')
  })
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

module.exports = { useMethodsDb, row, sideRows, count }
