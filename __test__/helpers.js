// Shared setup for the JS contract tests, run against either backend from one source:
//
//   IDEM_BACKEND=postgres (default)  every test file gets its own fresh PostgreSQL database
//                                    (dropped afterwards), verified through node-postgres;
//   IDEM_BACKEND=sqlite              every test file gets its own fresh SQLite file in /tmp
//                                    (removed with its -wal/-shm files afterwards), verified
//                                    through better-sqlite3. No PostgreSQL server is needed.
//   IDEM_PG_POOLER=pgbouncer         (postgres only) every fresh database also gets a PgBouncer
//                                    of its own (test-support/pgbouncer.js: transaction mode,
//                                    default_pool_size IDEM_PG_POOL_SIZE, default 4), and the
//                                    SERVICE connects through it; `db` stays direct.
//   IDEM_PG_POOLER=pgbouncer125      the same with PgBouncer 1.25 (built by
//                                    scripts/ensure-pgbouncer.sh) and max_prepared_statements.
//   IDEM_PG_POOLER=pgbouncer125+recorder  both: the recording proxy in front of PgBouncer 1.25.
//   IDEM_PG_POOLER=recorder          the service connects through a recording proxy
//                                    (test-support/wire-recorder.js); a file fails at cleanup if
//                                    the service sent SQL-level PREPARE/EXECUTE/DEALLOCATE, a
//                                    simple Query (but the migration) or, in the default mode, a
//                                    named statement.
//   IDEM_PG_PREPARED=1               services connect with preparedStatements: true by default.
//
// Either way the test sees the same `db.query(sql, params) -> rows` / `db.exec(sql)` verification
// client, independent of the addon, with `$1, $2…` placeholders on both.
const fs = require('node:fs')
const path = require('node:path')
const assert = require('node:assert/strict')
const { IdempotencyKeyService } = require('..')
const { ADMIN_URL, admin, createDatabase } = require('../test-support/db')
const { sleep } = require('../test-support/async')
const { rejects } = require('../test-support/errors')

const BACKENDS = ['postgres', 'sqlite']
const backend = process.env.IDEM_BACKEND || 'postgres'
if (!BACKENDS.includes(backend)) {
  throw new Error(`IDEM_BACKEND must be one of ${BACKENDS.join(', ')}, got ${JSON.stringify(backend)}`)
}
const isPostgres = backend === 'postgres'
const isSqlite = backend === 'sqlite'
const pooler = process.env.IDEM_PG_POOLER || null
const POOLERS = ['pgbouncer', 'pgbouncer125', 'recorder', 'pgbouncer125+recorder']
if (pooler !== null && (!POOLERS.includes(pooler) || !isPostgres)) {
  throw new Error(`IDEM_PG_POOLER must be one of ${POOLERS.join(', ')} (with IDEM_BACKEND=postgres), got ${JSON.stringify(pooler)}`)
}
const preparedDefault = process.env.IDEM_PG_PREPARED === '1'

/** Choose a per-backend value (SQL text, expected code…): `pick({ postgres: a, sqlite: b })`. */
function pick(choices) {
  if (!(backend in choices)) throw new Error(`pick(): no choice for backend ${backend}`)
  return choices[backend]
}

/**
 * A SELECT that keeps the database busy for roughly `seconds`: `pg_sleep` on PostgreSQL; SQLite
 * has no sleep function, so a recursive CTE counting to ~1e6 rows per second (the debug addon's
 * SQLite; a release build is faster, which only shortens it). Tests use it to have a statement
 * in flight, never to measure time.
 */
function slowSql(seconds) {
  return pick({
    postgres: `SELECT pg_sleep(${seconds})`,
    sqlite: `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${Math.max(1, Math.round(seconds * 1e6))}) SELECT count(*) AS n FROM c`,
  })
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

async function freshPostgres() {
  const { Client } = require('pg')
  const database = await createDatabase('idem_test')
  const { name, url: directUrl } = database
  let bouncer = null
  let recorder = null
  const dropNow = () => database.drop().catch(() => {})
  const [poolerKind, recording] = pooler === 'pgbouncer125+recorder' ? ['pgbouncer125', true] : [pooler, pooler === 'recorder']
  if (poolerKind === 'pgbouncer' || poolerKind === 'pgbouncer125') {
    const { startPgBouncer, pgbouncer125Bin } = require('../test-support/pgbouncer')
    const poolSize = Number(process.env.IDEM_PG_POOL_SIZE || 4)
    const current = poolerKind === 'pgbouncer125'
    if (current && !pgbouncer125Bin()) throw new Error('PgBouncer 1.25 is not built: run `bash scripts/ensure-pgbouncer.sh`')
    const extra = current ? { bin: pgbouncer125Bin(), settings: { max_prepared_statements: 100, server_tls_sslmode: 'disable' } } : {}
    bouncer = await startPgBouncer({ database: name, poolSize, ...extra }).catch(async (e) => {
      await dropNow()
      throw e
    })
  }
  if (recording) {
    const { startRecorder } = require('../test-support/wire-recorder')
    const target = new URL(bouncer ? bouncer.url : ADMIN_URL)
    recorder = await startRecorder({ host: target.hostname, port: Number(target.port || 5432) })
  }
  // The service's URL (through the pooler, if any); the verification client is always direct.
  const url = recorder ? recorder.url(name) : bouncer ? bouncer.url : directUrl
  const pg = new Client({ connectionString: directUrl })
  await pg.connect()
  const db = {
    backend,
    pg,
    async query(sql, params = []) {
      return (await pg.query(sql, params)).rows
    },
    async exec(sql) {
      await pg.query(sql)
    },
    async close() {
      await pg.end()
    },
  }
  const drop = async () => {
    if (bouncer) await bouncer.stop()
    await database.drop()
    if (recorder) {
      await recorder.stop()
      const bad = recorder.violations({ prepared: preparedDefault })
      if (bad.length) throw new Error(`the service sent what its statement path must not: ${JSON.stringify(bad.slice(0, 5))}`)
    }
  }
  return { url, directUrl, bouncer, recorder, name, db, drop }
}

// ---------------------------------------------------------------------------------------------
// SQLite

/** `$1` → `?1` (better-sqlite3 binds `?NNN` by number, from an object keyed 1, 2…). */
function toSqliteSql(sql) {
  return sql.replace(/\$(\d+)/g, '?$1')
}

function toSqliteParams(params) {
  assert.ok(Array.isArray(params), 'db.query params must be an array')
  const named = {}
  params.forEach((p, i) => {
    named[i + 1] = p
  })
  return named
}

/** Open an independent better-sqlite3 verification client on `file`. */
function openSqliteVerifier(file) {
  const Database = require('better-sqlite3')
  // Wait for the addon's write lock like any other writer would (reads never wait in WAL mode).
  // On another Node version than the one `npm ci` ran, scripts/test.js points at a copy of
  // better-sqlite3's addon built for it (scripts/ensure-node.sh).
  const nativeBinding = process.env.IDEM_BETTER_SQLITE3_BINDING || undefined
  const sqlite = new Database(file, { timeout: 5000, nativeBinding })
  const run = (sql, params) => {
    const stmt = sqlite.prepare(toSqliteSql(sql))
    const args = params.length ? [toSqliteParams(params)] : []
    if (stmt.reader) return stmt.all(...args)
    stmt.run(...args)
    return []
  }
  return {
    backend,
    sqlite,
    async query(sql, params = []) {
      return run(sql, params)
    },
    async exec(sql) {
      sqlite.exec(sql)
    },
    async close() {
      sqlite.close()
    },
  }
}

function sqliteFiles(file) {
  return [file, `${file}-wal`, `${file}-shm`, `${file}-journal`]
}

function removeSqliteFiles(file) {
  for (const f of sqliteFiles(file)) fs.rmSync(f, { force: true })
}

async function freshSqlite() {
  const name = `idem_test_${process.pid}_${Math.random().toString(36).slice(2, 10)}`
  const file = path.join('/tmp', `${name}.db`)
  removeSqliteFiles(file)
  const url = `sqlite://${file}`
  let db = null
  const drop = async () => removeSqliteFiles(file)
  // The verifier is opened after migrate() (the addon creates the file), see freshDb.
  return {
    url,
    name,
    file,
    get db() {
      return db
    },
    open() {
      // The addon must have created the file: better-sqlite3 would silently create an empty one.
      assert.ok(fs.existsSync(file), `the service did not create ${file}`)
      db = openSqliteVerifier(file)
      return db
    },
    drop,
  }
}

// ---------------------------------------------------------------------------------------------

/**
 * Create a fresh, migrated database on the backend chosen by IDEM_BACKEND and a service on it.
 * Returns { backend, url, service, db, connect(opts), cleanup() } (plus `pg` on PostgreSQL,
 * `sqlite` and `file` on SQLite, for backend-only checks). `db` is the independent
 * verification client: `await db.query(sql, params) -> rows`, `await db.exec(sql)`.
 */
async function freshDb(options = {}) {
  const opened = []
  let target
  let db
  if (isPostgres) {
    target = await freshPostgres()
    db = target.db
  } else {
    target = await freshSqlite()
  }
  const { url } = target
  const connect = async (opts = {}) => {
    const s = await IdempotencyKeyService.connect({ url, ...(preparedDefault ? { preparedStatements: true } : {}), ...options, ...opts })
    opened.push(s)
    return s
  }
  let service
  try {
    service = await connect()
    await service.migrate()
    if (isSqlite) db = target.open()
  } catch (e) {
    for (const s of opened) await s.close().catch(() => {})
    await target.drop().catch(() => {})
    throw e
  }
  const cleanup = async () => {
    if (db) await db.close().catch(() => {})
    for (const s of opened) await s.close().catch(() => {})
    await target.drop()
  }
  const out = { backend, url, name: target.name, service, db, connect, cleanup }
  if (isPostgres) {
    out.pg = db.pg
    out.directUrl = target.directUrl // = url unless IDEM_PG_POOLER
    out.bouncer = target.bouncer // the PgBouncer instance under IDEM_PG_POOLER, else null
    out.recorder = target.recorder // the recording proxy under IDEM_PG_POOLER=recorder, else null
  } else {
    out.sqlite = db.sqlite
    out.file = target.file
  }
  return out
}

/**
 * The test file's database: a before() hook makes it with freshDb(options) and passes it to
 * `ready(fx)` (the file keeps what it needs, creates its side tables…); an after() hook cleans it
 * up, also when `ready` failed.
 *
 *   let fx, db
 *   useFreshDb((f) => {
 *     fx = f
 *     db = f.db
 *   })
 */
function useFreshDb(ready = () => {}, options = {}) {
  const { before, after } = require('node:test')
  let fx
  before(async () => {
    fx = await freshDb(options)
    await ready(fx)
  })
  after(async () => {
    if (fx) await fx.cleanup()
  })
}

const ISO_MS_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

/**
 * A row of `idempotency_key` as read by the verification client, in one shape on both backends:
 * timestamps as Date, JSON columns parsed. On PostgreSQL node-postgres already returns that. On
 * SQLite the stored form is checked first (SPEC §7: ISO 8601 UTC text with milliseconds, JSON as
 * text), then converted, so a wrong storage format fails here. Columns not selected stay absent.
 */
function decodeKeyRow(row) {
  if (row === undefined || row === null || isPostgres) return row
  const out = { ...row }
  for (const c of ['created_at', 'locked_at']) {
    if (!(c in row) || row[c] === null) continue
    assert.equal(typeof row[c], 'string', `${c} is stored as text on SQLite, got ${typeof row[c]}`)
    assert.match(row[c], ISO_MS_UTC, `${c} is stored as ISO 8601 UTC with milliseconds`)
    out[c] = new Date(row[c])
  }
  for (const c of ['request_params', 'response_body']) {
    if (!(c in row) || row[c] === null) continue
    assert.equal(typeof row[c], 'string', `${c} is stored as JSON text on SQLite, got ${typeof row[c]}`)
    out[c] = JSON.parse(row[c])
  }
  return out
}

/** Move a key's created_at (and locked_at, if set) `hours` into the past, through `db`. */
async function ageKey(db, key, hours) {
  await db.exec(
    pick({
      postgres: `UPDATE idempotency_key SET created_at = created_at - interval '${hours} hours',
                 locked_at = locked_at - interval '${hours} hours' WHERE idempotency_key = '${key}'`,
      sqlite: `UPDATE idempotency_key SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', created_at, '-${hours} hours'),
               locked_at = strftime('%Y-%m-%dT%H:%M:%fZ', locked_at, '-${hours} hours') WHERE idempotency_key = '${key}'`,
    }),
  )
}

/** Run `fn(tx)` inside a native stage on `key` that must commit (moving it to `recoveryPoint`); resolve to what `fn` returned. */
async function inStage(service, key, fn, recoveryPoint = 'in-stage') {
  let out
  await service.workStage(key, async (tx) => {
    out = await fn(tx)
    return { recovery_point: recoveryPoint }
  })
  return out
}

/**
 * Start a stage on `key` that holds the key until released: `{ inside, release, done }`.
 * `inside` resolves once the callback runs; `release()` lets it return `result`; `done` is the
 * workStage promise. The gate is shared by every attempt, so a stage re-run after a
 * serialization failure is released too.
 */
function holdStage(service, key, result = { recovery_point: 'held' }) {
  let release
  const gate = new Promise((r) => (release = r))
  let entered
  const inside = new Promise((r) => (entered = r))
  const done = service.workStage(key, async () => {
    entered()
    await gate
    return result
  })
  return { inside, release, done }
}

module.exports = {
  ageKey,
  holdStage,
  inStage,
  backend,
  isPostgres,
  isSqlite,
  pooler,
  pick,
  slowSql,
  freshDb,
  useFreshDb,
  decodeKeyRow,
  openSqliteVerifier,
  removeSqliteFiles,
  rejects,
  sleep,
  admin,
  ADMIN_URL,
  ISO_MS_UTC,
}
