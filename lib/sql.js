'use strict'
// The statements of the tables the JS side keeps (accepted requests, the completer's attempts)
// and the middleware's release of an unaccepted key, by name, from the core
// (crates/core/src/bookkeeping.rs), where they sit beside those tables' migrations: the JS
// side holds no SQL text of its own. `$n` placeholders, one text for PostgreSQL and SQLite.
const native = require('./binding.js')

/** `SQL.acceptRequest`, `SQL.countAttempt`, … (see bookkeeping.rs for each one's parameters). */
const SQL = Object.freeze(native.bookkeepingStatements())

/** The completer's listing for `routes` registered routes, of one tenant when `scoped`: `{ sql, countSql }`. */
function completerList(routes, scoped) {
  return native.completerListStatements(routes, scoped)
}

module.exports = { SQL, completerList }
