'use strict'
// A throwaway PgBouncer for the tests and the stress scenarios (not a test file: it lives
// outside __test__/ and stress/, so neither `node --test __test__/` nor stress/run.js runs it).
//
//   const { startPgBouncer } = require('../test-support/pgbouncer')
//   const bouncer = await startPgBouncer({ database: 'idem_test_…', poolSize: 4 })
//   … IdempotencyKeyService.connect(bouncer.url) …
//   await bouncer.stop()
//
// Every instance gets a config of its own in a temp dir: listen on 127.0.0.1 on a free port
// (no unix socket), pool_mode transaction, a small default_pool_size (so a few server
// connections are shared by many clients, which is what makes a transaction-mode pooler
// different from a direct connection), auth_type trust with a userlist, and the target server
// of TEST_PG_ADMIN_URL (127.0.0.1:5432, user postgres). PgBouncer refuses to run as root, so as
// root it is started as the postgres user (setpriv, with the parent-death signal set: an
// instance never outlives the process that started it); otherwise as the current user.
// `pgbouncer` comes from Debian's package (scripts/ensure-pgbouncer.sh installs it; .ci/run
// calls that); PGBOUNCER_BIN overrides the binary.
const fs = require('node:fs')
const os = require('node:os')
const net = require('node:net')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')

const ADMIN_URL = process.env.TEST_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres'

/** The pgbouncer binary: PGBOUNCER_BIN, else Debian's /usr/sbin/pgbouncer, else PATH. */
function pgbouncerBin() {
  if (process.env.PGBOUNCER_BIN) return process.env.PGBOUNCER_BIN
  for (const p of ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer']) {
    if (fs.existsSync(p)) return p
  }
  for (const dir of (process.env.PATH || '').split(':')) {
    const p = path.join(dir || '.', 'pgbouncer')
    if (fs.existsSync(p)) return p
  }
  return null
}

let versionCache
/**
 * The installed PgBouncer's version, e.g. '1.18.0' (Debian 12), or null when none is
 * installed. `pgbouncerVersion({ full: true })` gives the whole `--version` line.
 */
function pgbouncerVersion({ full = false } = {}) {
  if (versionCache === undefined) {
    const bin = pgbouncerBin()
    versionCache = null
    if (bin) {
      try {
        const line = execFileSync(bin, ['--version'], { encoding: 'utf8', timeout: 10000 }).split('\n')[0].trim()
        const m = /(\d+\.\d+(?:\.\d+)?)/.exec(line)
        versionCache = { line, version: m ? m[1] : line }
      } catch {
        versionCache = null
      }
    }
  }
  if (!versionCache) return null
  return full ? versionCache.line : versionCache.version
}

/**
 * The PgBouncer 1.25 that scripts/ensure-pgbouncer.sh builds into the cache (PGBOUNCER125_BIN
 * overrides), or null when it is not built.
 */
function pgbouncer125Bin() {
  if (process.env.PGBOUNCER125_BIN) return process.env.PGBOUNCER125_BIN
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache')
  const p = path.join(cache, 'medusa-idempotency-native', 'pgbouncer-1.25.2', 'bin', 'pgbouncer')
  return fs.existsSync(p) ? p : null
}

/** Throws a clear error when PgBouncer is not installed (the tests must not skip silently). */
function requirePgBouncer() {
  const bin = pgbouncerBin()
  if (!bin) {
    throw new Error(
      'pgbouncer is not installed: run `bash scripts/ensure-pgbouncer.sh` as root (apt-get install pgbouncer); .ci/run does this',
    )
  }
  return bin
}

/** A TCP port that was free a moment ago (the caller retries if PgBouncer cannot bind it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** uid/gid of a local user from /etc/passwd, or null. */
function lookupUser(name) {
  try {
    for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':')
      if (f[0] === name) return { uid: Number(f[2]), gid: Number(f[3]) }
    }
  } catch {}
  return null
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Resolves true once something accepts TCP connections on host:port. */
function canConnect(host, port) {
  return new Promise((resolve) => {
    const s = net.connect({ host, port })
    const done = (ok) => {
      s.destroy()
      resolve(ok)
    }
    s.once('connect', () => done(true))
    s.once('error', () => done(false))
    s.setTimeout(1000, () => done(false))
  })
}

/** A libpq connection-string value: quoted when it has spaces, quotes or backslashes. */
function connValue(v) {
  v = String(v)
  return /^[A-Za-z0-9_.\-/:]+$/.test(v) ? v : `'${v.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`
}

const live = new Set() // running instances, killed synchronously if this process exits first

process.on('exit', () => {
  for (const inst of live) {
    try {
      process.kill(inst.pid, 'SIGKILL')
    } catch {}
    try {
      fs.rmSync(inst.dir, { recursive: true, force: true })
    } catch {}
  }
})

/**
 * Start a PgBouncer in front of the PostgreSQL server of TEST_PG_ADMIN_URL.
 *
 * options:
 *   database      the database clients connect to (mapped to the same name on the server);
 *                 omitted: any database (a `*` fallback entry). `url` points at it.
 *   poolSize      default_pool_size: server connections per (database, user); default 4
 *   poolMode      'transaction' (default), 'session' or 'statement'
 *   maxClientConn default 500
 *   ignoreStartupParameters  default PGBOUNCER_IGNORE_STARTUP_PARAMETERS, else none:
 *                 PgBouncer 1.18 refuses a client that sends a startup parameter it does not
 *                 track (`options` with -c settings, `extra_float_digits`), and the service
 *                 must connect to a pooler configured that strictly.
 *   settings      further [pgbouncer] settings, { name: value }, written last (they win)
 *   timeoutMs     how long to wait until it accepts connections; default 10000
 *
 * Resolves { url, port, host, pid, dir, config, version, database, poolSize, poolMode,
 * admin(sql), log(), stop() }: `url` is a postgres:// URL through the pooler (user postgres,
 * `database`), `admin(sql)` runs a command on PgBouncer's admin console (`SHOW POOLS`, `SHOW
 * SERVERS`…) and resolves its rows, `log()` is the log so far, `stop()` kills it by its pid
 * (SIGTERM, then SIGKILL) and removes its temp dir.
 */
async function startPgBouncer(options = {}) {
  const {
    database,
    poolSize = 4,
    poolMode = 'transaction',
    maxClientConn = 500,
    ignoreStartupParameters = process.env.PGBOUNCER_IGNORE_STARTUP_PARAMETERS || '',
    settings = {},
    timeoutMs = 10000,
    bin: chosen,
  } = options
  const bin = chosen || requirePgBouncer()
  const target = new URL(ADMIN_URL)
  const serverHost = target.hostname || '127.0.0.1'
  const serverPort = Number(target.port || 5432)
  const user = decodeURIComponent(target.username || 'postgres')
  const password = decodeURIComponent(target.password || '')
  if (database !== undefined && !/^[A-Za-z0-9_]+$/.test(database)) {
    throw new Error(`startPgBouncer: database must be a plain identifier, got ${JSON.stringify(database)}`)
  }

  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0
  const runAs = asRoot ? lookupUser('postgres') : null
  if (asRoot && !runAs) throw new Error('startPgBouncer: running as root, and there is no postgres user to run pgbouncer as')

  let lastError
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort()
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idem-pgbouncer-'))
    const config = path.join(dir, 'pgbouncer.ini')
    const logfile = path.join(dir, 'pgbouncer.log')
    const userlist = path.join(dir, 'userlist.txt')
    const server = `host=${connValue(serverHost)} port=${serverPort} user=${connValue(user)}${password ? ` password=${connValue(password)}` : ''}`
    const dbLines = database !== undefined ? [`${database} = ${server} dbname=${database}`] : [`* = ${server}`]
    const all = {
      listen_addr: '127.0.0.1',
      listen_port: port,
      unix_socket_dir: '', // no socket in /tmp that could collide with another instance
      auth_type: 'trust',
      auth_file: userlist,
      admin_users: user,
      stats_users: user,
      pool_mode: poolMode,
      default_pool_size: poolSize,
      min_pool_size: 0,
      reserve_pool_size: 0,
      max_client_conn: maxClientConn,
      ...(ignoreStartupParameters ? { ignore_startup_parameters: ignoreStartupParameters } : {}),
      // A client waiting for a server connection fails after 30 s instead of PgBouncer's 120 s
      // default, so a starved pool shows as an error rather than as a hung test.
      query_wait_timeout: 30,
      logfile,
      pidfile: path.join(dir, 'pgbouncer.pid'),
      log_connections: 0,
      log_disconnections: 0,
      log_pooler_errors: 1,
      ...settings,
    }
    const ini = [
      '; written by test-support/pgbouncer.js',
      '[databases]',
      ...dbLines,
      '',
      '[pgbouncer]',
      ...Object.entries(all).map(([k, v]) => `${k} = ${v}`),
      '',
    ].join('\n')
    fs.writeFileSync(config, ini, { mode: 0o600 })
    // trust still needs the user in the auth file; its password is what PgBouncer logs in with.
    fs.writeFileSync(userlist, `"${user.replace(/"/g, '""')}" "${password.replace(/"/g, '""')}"\n`, { mode: 0o600 })
    if (runAs) {
      for (const p of [dir, config, userlist]) fs.chownSync(p, runAs.uid, runAs.gid)
    }

    const [cmd, args] = runAs
      ? ['setpriv', [`--reuid=${runAs.uid}`, `--regid=${runAs.gid}`, '--init-groups', '--pdeathsig=KILL', '--', bin, config]]
      : [bin, [config]]
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d) => {
      if (stderr.length < 20000) stderr += d
    })
    let exited = null
    const exit = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        exited = { code, signal }
        resolve(exited)
      })
      child.on('error', (e) => {
        exited = { code: null, signal: null, error: e }
        resolve(exited)
      })
    })
    const inst = { pid: child.pid, dir }
    live.add(inst)
    const readLog = () => {
      let text = ''
      try {
        text = fs.readFileSync(logfile, 'utf8')
      } catch {}
      return text + (stderr && !text.includes(stderr.trim()) ? stderr : '')
    }
    const cleanupDir = () => fs.rmSync(dir, { recursive: true, force: true })
    const kill = async () => {
      if (!exited) {
        try {
          process.kill(child.pid, 'SIGTERM')
        } catch {}
        const t = setTimeout(() => {
          try {
            process.kill(child.pid, 'SIGKILL')
          } catch {}
        }, 2000)
        await exit
        clearTimeout(t)
      }
      live.delete(inst)
      cleanupDir()
    }

    // Wait until it accepts connections (or exits: port taken, bad config).
    const deadline = Date.now() + timeoutMs
    let ready = false
    while (!exited && Date.now() < deadline) {
      if (await canConnect('127.0.0.1', port)) {
        ready = true
        break
      }
      await sleep(20)
    }
    if (!ready || exited) {
      const log = readLog()
      await kill()
      lastError = new Error(
        `pgbouncer did not start on 127.0.0.1:${port} (${exited ? `exited ${exited.error ? exited.error.message : `code ${exited.code} signal ${exited.signal}`}` : `not listening after ${timeoutMs} ms`}):\n${log.slice(-2000)}`,
      )
      if (exited && /bind|Address already in use/i.test(log)) continue // lost the port race: another port
      throw lastError
    }

    const url = new URL(`postgres://127.0.0.1:${port}/${database !== undefined ? database : 'postgres'}`)
    url.username = encodeURIComponent(user)
    if (password) url.password = encodeURIComponent(password)
    const adminUrl = new URL(url)
    adminUrl.pathname = '/pgbouncer'

    /** A command on the admin console (simple query protocol: node-postgres without params). */
    const admin = async (sql) => {
      const { Client } = require('pg')
      const c = new Client({ connectionString: adminUrl.toString() })
      c.on('error', () => {})
      await c.connect()
      try {
        return (await c.query(sql)).rows
      } finally {
        await c.end().catch(() => {})
      }
    }

    let stopped = null
    return {
      url: url.toString(),
      adminUrl: adminUrl.toString(),
      host: '127.0.0.1',
      port,
      pid: child.pid,
      dir,
      config,
      version: pgbouncerVersion(),
      database,
      poolSize,
      poolMode,
      admin,
      log: readLog,
      /** URL of another database through this instance (only without `database`). */
      urlFor(name) {
        const u = new URL(url)
        u.pathname = '/' + name
        return u.toString()
      },
      get running() {
        return !exited
      },
      stop() {
        if (!stopped) stopped = kill()
        return stopped
      },
    }
  }
  throw lastError
}

module.exports = { startPgBouncer, pgbouncerVersion, pgbouncerBin, pgbouncer125Bin, requirePgBouncer, ADMIN_URL }
