'use strict'
// PostgreSQL fixtures shared by the contract suite (__test__/), the stress scenarios (stress/)
// and the parity suite (parity/): the admin URL, one statement on the admin database, and a
// database of its own per run (`<prefix>_<pid>_<random>`, dropped WITH (FORCE)).
//
//   const { createDatabase } = require('../test-support/db')
//   const { name, url, drop } = await createDatabase('idem_test')
//   … IdempotencyKeyService.connect(url) …
//   await drop()
const { Client } = require('pg')
const { sleep } = require('./async')

const ADMIN_URL = process.env.TEST_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres'

/** The URL of database `name` on the server (and as the user) of `adminUrl`. */
function dbUrl(name, adminUrl = ADMIN_URL) {
  const u = new URL(adminUrl)
  u.pathname = '/' + name
  return u.toString()
}

// 55006: template1 busy (another agent's CREATE DATABASE); 57P03: server starting up.
const TRANSIENT = ['55006', '57P03', 'ECONNREFUSED', 'ECONNRESET']

/**
 * Run one statement on the admin database, on a connection of its own. With `attempts` above 1
 * (the stress scenarios, whose server restarts), retry while the server refuses transiently.
 */
async function admin(sql, params = [], { url = ADMIN_URL, attempts = 1 } = {}) {
  for (let i = 1; ; i++) {
    const c = new Client({ connectionString: url })
    try {
      await c.connect()
      return await c.query(sql, params)
    } catch (e) {
      if (!TRANSIENT.includes(e.code) || i >= attempts) throw e
      await sleep(100 + Math.random() * 200)
    } finally {
      await c.end().catch(() => {})
    }
  }
}

/**
 * CREATE DATABASE `<prefix>_<pid>_<random>` on the server of `adminUrl`; resolves
 * `{ name, url, drop() }`, where drop() is DROP DATABASE IF EXISTS … WITH (FORCE). `attempts` as
 * for admin().
 */
async function createDatabase(prefix, { adminUrl = ADMIN_URL, attempts = 1 } = {}) {
  const name = `${prefix}_${process.pid}_${Math.random().toString(36).slice(2, 10)}`
  const run = (sql) => admin(sql, [], { url: adminUrl, attempts })
  await run(`CREATE DATABASE "${name}"`)
  return { name, url: dbUrl(name, adminUrl), drop: () => run(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`) }
}

module.exports = { ADMIN_URL, dbUrl, admin, createDatabase }
