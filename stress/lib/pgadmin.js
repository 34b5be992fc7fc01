'use strict'
// The admin connection of the stress scenarios, without the addon: the orchestrators (fuzz.js,
// memory.js) create and drop databases for child processes but never load the addon themselves.
const { Client } = require('pg')

const ADMIN_URL = process.env.TEST_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres'

/** Run one statement on the admin database, retrying while the server refuses (restarting). */
async function admin(sql, params = [], { attempts = 20 } = {}) {
  for (let i = 1; ; i++) {
    const c = new Client({ connectionString: ADMIN_URL })
    try {
      await c.connect()
      return await c.query(sql, params)
    } catch (e) {
      // 55006: template1 busy (another agent's CREATE DATABASE); 57P03: server starting up.
      const transient = ['55006', '57P03', 'ECONNREFUSED', 'ECONNRESET'].includes(e.code)
      if (!transient || i >= attempts) throw e
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 200))
    } finally {
      await c.end().catch(() => {})
    }
  }
}

module.exports = { ADMIN_URL, admin }
