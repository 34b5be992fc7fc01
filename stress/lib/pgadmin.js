'use strict'
// The admin connection of the stress scenarios, without the addon: the orchestrators (fuzz.js,
// memory.js) create and drop databases for child processes but never load the addon themselves.
// test-support/db.js, retrying while the server refuses transiently (scenarios restart it).
const db = require('../../test-support/db')

const ATTEMPTS = 20

/** Run one statement on the admin database, retrying while the server refuses (restarting). */
const admin = (sql, params = [], { attempts = ATTEMPTS } = {}) => db.admin(sql, params, { attempts })

/** A database of its own (`<prefix>_<pid>_<random>`): `{ name, url, drop() }`, with the same retries. */
const createDatabase = (prefix) => db.createDatabase(prefix, { attempts: ATTEMPTS })

module.exports = { ADMIN_URL: db.ADMIN_URL, ATTEMPTS, admin, createDatabase }
