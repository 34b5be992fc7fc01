// Shared setup for the JS contract tests: every test file gets its own fresh PostgreSQL
// database (dropped afterwards), so runs and files never collide.
const { Client } = require('pg')
const { IdempotencyKeyService } = require('..')

const ADMIN_URL = process.env.TEST_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres'

function dbUrl(name) {
  const u = new URL(ADMIN_URL)
  u.pathname = '/' + name
  return u.toString()
}

async function admin(sql) {
  const c = new Client({ connectionString: ADMIN_URL })
  await c.connect()
  try {
    return await c.query(sql)
  } finally {
    await c.end()
  }
}

/**
 * Create a fresh database and a migrated service on it.
 * Returns { url, service, pg, connect(opts), cleanup() }; `pg` is an independent node-postgres
 * client for checking what really committed.
 */
async function freshDb(options = {}) {
  const name = `idem_test_${process.pid}_${Math.random().toString(36).slice(2, 10)}`
  await admin(`CREATE DATABASE ${name}`)
  const url = dbUrl(name)
  const opened = []
  const connect = async (opts = {}) => {
    const s = await IdempotencyKeyService.connect({ url, ...options, ...opts })
    opened.push(s)
    return s
  }
  const service = await connect()
  await service.migrate()
  const pg = new Client({ connectionString: url })
  await pg.connect()
  const cleanup = async () => {
    await pg.end().catch(() => {})
    for (const s of opened) await s.close().catch(() => {})
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  }
  return { url, name, service, pg, connect, cleanup }
}

/** Await a promise that must reject; return the rejection. */
async function rejects(promise) {
  try {
    await promise
  } catch (e) {
    return e
  }
  throw new Error('expected a rejection, got a result')
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

module.exports = { freshDb, rejects, sleep, admin, ADMIN_URL }
