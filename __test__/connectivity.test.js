// Production connectivity on PostgreSQL: TLS (sslmode, sslrootcert, the `ssl` option), bounded
// connection establishment, connection lifetime and idle shrinking, and the statement modes.
// Real servers only: the local PostgreSQL (TLS on, Debian's snakeoil certificate for
// `localhost`), or, where a machine has TLS off, a throwaway cluster started here with a
// certificate made here; a TCP listener that never answers; a TCP proxy to PostgreSQL.
const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { execFileSync, execSync } = require('node:child_process')
const { IdempotencyKeyService } = require('..')
const { freshDb, rejects, isPostgres, sleep } = require('./helpers')
const { ADMIN_URL, admin } = require('../test-support/db')
const { assertErr } = require('../test-support/errors')


/** A free TCP port on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: 'pipe' })
}

/** A CA of our own and a certificate it signed for `localhost`. */
function makeCa(dir) {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=idempotency test CA'], dir)
  return { ca: path.join(dir, 'ca.pem') }
}

/**
 * Where the TLS tests connect: the local server when it has TLS on, else a throwaway cluster
 * with TLS on (also forced with IDEM_TLS_THROWAWAY=1). `{ host, port, rootcert, url(params), stop() }`.
 */
async function tlsServer(dir) {
  const { Client } = require('pg')
  const c = new Client({ connectionString: ADMIN_URL })
  await c.connect()
  const [{ ssl }] = (await c.query('SHOW ssl')).rows
  const [{ ssl_cert_file: certFile }] = (await c.query('SHOW ssl_cert_file')).rows
  await c.end()
  if (ssl === 'on' && !process.env.IDEM_TLS_THROWAWAY) {
    const name = `idem_tls_${process.pid}`
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin(`CREATE DATABASE ${name}`)
    const server = new URL(ADMIN_URL)
    return {
      rootcert: path.resolve(path.dirname(certFile), certFile),
      url: (host, params) => `postgres://${server.username}@${host}:${server.port || 5432}/${name}?${params}`,
      async stop() {
        await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      },
    }
  }
  // A throwaway cluster with TLS on, run by the postgres user.
  const bin = execSync('ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1').toString().trim()
  const port = await freePort()
  fs.chmodSync(dir, 0o755)
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.crt', '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-addext', 'basicConstraints=CA:FALSE'], dir)
  fs.chmodSync(path.join(dir, 'server.key'), 0o600)
  execFileSync('chown', ['-R', 'postgres', dir])
  const data = path.join(dir, 'data')
  const asPg = (cmd, args) => execFileSync('runuser', ['-u', 'postgres', '--', path.join(bin, cmd), ...args], { stdio: 'pipe' })
  asPg('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres'])
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=${dir}/server.crt -c ssl_key_file=${dir}/server.key`
  asPg('pg_ctl', ['-D', data, '-o', opts, '-w', '-l', path.join(dir, 'log'), 'start'])
  return {
    rootcert: path.join(dir, 'server.crt'),
    url: (host, params) => `postgres://postgres@${host}:${port}/postgres?${params}`,
    async stop() {
      asPg('pg_ctl', ['-D', data, '-m', 'immediate', 'stop'])
    },
  }
}

/** Connect, run one stage, and report what pg_stat_ssl says of the stage's own connection. */
async function sslOfStage(opts) {
  const service = await IdempotencyKeyService.connect(opts)
  try {
    await service.migrate()
    const key = `tls-${Math.random().toString(36).slice(2)}`
    await service.create({ idempotency_key: key })
    let seen
    await service.workStage(key, async (tx) => {
      ;[seen] = await tx.query('SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
      return { recovery_point: 'checked' }
    })
    return seen
  } finally {
    await service.close()
  }
}

describe('TLS', { skip: !isPostgres && 'PostgreSQL only: SQLite has no network connection' }, () => {
  let dir
  let server
  let ca
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idem-tls-'))
    server = await tlsServer(dir)
    ca = makeCa(dir)
  })
  after(async () => {
    if (server) await server.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  test('sslmode=require encrypts the service connections (pg_stat_ssl.ssl = t)', async () => {
    const seen = await sslOfStage(server.url('127.0.0.1', 'sslmode=require'))
    assert.equal(seen.ssl, true)
    assert.match(seen.version, /^TLSv1\.[23]$/)
  })

  test('sslmode=verify-full with the server certificate as root and host localhost connects', async () => {
    const seen = await sslOfStage(server.url('localhost', `sslmode=verify-full&sslrootcert=${encodeURIComponent(server.rootcert)}`))
    assert.equal(seen.ssl, true)
  })

  test('the ssl option takes the CA as a PEM string, as pasted from a provider', async () => {
    const pem = fs.readFileSync(server.rootcert, 'utf8')
    const seen = await sslOfStage({ url: server.url('localhost', ''), ssl: { ca: pem } })
    assert.equal(seen.ssl, true)
    // rejectUnauthorized: false encrypts without verifying (the host name does not match here).
    const loose = await sslOfStage({ url: server.url('127.0.0.1', ''), ssl: { rejectUnauthorized: false } })
    assert.equal(loose.ssl, true)
  })

  test('verify-full with a CA that did not sign the server certificate is refused, typed, saying why', async () => {
    const url = server.url('localhost', `sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.ca)}`)
    const e = await rejects(IdempotencyKeyService.connect(url))
    assertErr(e, 'database_error', 'CONNECTION_FAILED')
    assert.match(e.message, /TLS/)
    assert.match(e.message, /certificate|issuer/i)
    const pem = fs.readFileSync(ca.ca, 'utf8')
    const viaOption = await rejects(IdempotencyKeyService.connect({ url: server.url('localhost', ''), ssl: { ca: pem } }))
    assertErr(viaOption, 'database_error', 'CONNECTION_FAILED')
  })

  test('verify-full against a host name the certificate does not name is refused', async () => {
    const url = server.url('127.0.0.1', `sslmode=verify-full&sslrootcert=${encodeURIComponent(server.rootcert)}`)
    const e = await rejects(IdempotencyKeyService.connect(url))
    assertErr(e, 'database_error', 'CONNECTION_FAILED')
    assert.match(e.message, /TLS/)
  })

  test('a password in the URL never appears in a connection error', async () => {
    const url = server.url('localhost', `sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.ca)}`).replace('postgres@', 'postgres:s3cr3t-pw@')
    const e = await rejects(IdempotencyKeyService.connect(url))
    assertErr(e, 'database_error', 'CONNECTION_FAILED')
    assert.doesNotMatch(e.message, /s3cr3t-pw/)
  })

  test('a missing sslrootcert file is invalid_data naming the file', async () => {
    const missing = path.join(dir, 'no-such-ca.pem')
    const e = await rejects(IdempotencyKeyService.connect(server.url('localhost', `sslmode=verify-full&sslrootcert=${encodeURIComponent(missing)}`)))
    assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    assert.ok(e.message.includes(missing), e.message)
  })

  test('sslmode=disable is plain; the ssl option overrides the URL', async () => {
    assert.equal((await sslOfStage(server.url('127.0.0.1', 'sslmode=disable'))).ssl, false)
    assert.equal((await sslOfStage({ url: server.url('127.0.0.1', 'sslmode=require'), ssl: false })).ssl, false)
  })

  test('the default, sslmode=prefer, encrypts when the server offers TLS', async () => {
    assert.equal((await sslOfStage(server.url('127.0.0.1', ''))).ssl, true)
  })

  test('a bad ssl option is invalid_data', async () => {
    for (const ssl of ['yes', 1, { ca: 42 }, { rejectUnauthorized: 'no' }]) {
      const e = await rejects(IdempotencyKeyService.connect({ url: server.url('127.0.0.1', ''), ssl }))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    }
  })
})

/** A TCP listener that accepts connections and never answers. */
async function silentServer() {
  const sockets = new Set()
  const server = net.createServer((s) => {
    sockets.add(s)
    s.on('error', () => {})
    s.on('close', () => sockets.delete(s))
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return {
    port: server.address().port,
    close: () => {
      for (const s of sockets) s.destroy()
      return new Promise((r) => server.close(r))
    },
  }
}

/** A TCP proxy to PostgreSQL; with `blackhole` set, new connections are accepted and ignored. */
async function proxyToPostgres() {
  const target = new URL(ADMIN_URL)
  const sockets = new Set()
  const state = { blackhole: false }
  const server = net.createServer((client) => {
    sockets.add(client)
    client.on('error', () => {})
    client.on('close', () => sockets.delete(client))
    if (state.blackhole) return
    const upstream = net.connect(Number(target.port || 5432), target.hostname)
    sockets.add(upstream)
    upstream.on('error', () => client.destroy())
    client.on('close', () => upstream.destroy())
    client.pipe(upstream).pipe(client)
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return {
    state,
    port: server.address().port,
    close: () => {
      for (const s of sockets) s.destroy()
      return new Promise((r) => server.close(r))
    },
  }
}

describe('connection establishment is bounded', { skip: !isPostgres && 'PostgreSQL only' }, () => {
  let silent
  before(async () => {
    silent = await silentServer()
  })
  after(async () => {
    await silent.close()
  })

  async function timed(p) {
    const t0 = Date.now()
    const e = await rejects(p)
    return { e, ms: Date.now() - t0 }
  }

  test('connectTimeoutMs: a server that accepts TCP and never answers fails connect() typed, in time', async () => {
    const { e, ms } = await timed(IdempotencyKeyService.connect({ url: `postgres://postgres@127.0.0.1:${silent.port}/x?sslmode=disable`, connectTimeoutMs: 300 }))
    assertErr(e, 'database_error', 'CONNECTION_FAILED')
    assert.match(e.message, /300 ms/)
    assert.ok(ms >= 250 && ms < 2000, `failed after ${ms} ms`)
  })

  test('without connectTimeoutMs, acquireTimeoutMs bounds it (TLS negotiation included)', async () => {
    const { e, ms } = await timed(IdempotencyKeyService.connect({ url: `postgres://postgres@127.0.0.1:${silent.port}/x`, acquireTimeoutMs: 400 }))
    assertErr(e, 'database_error', 'CONNECTION_FAILED')
    assert.ok(ms >= 350 && ms < 2000, `failed after ${ms} ms`)
  })

  test("the URL's connect_timeout (seconds, libpq) is honoured", async () => {
    const { e, ms } = await timed(IdempotencyKeyService.connect(`postgres://postgres@127.0.0.1:${silent.port}/x?connect_timeout=2`))
    assertErr(e, 'database_error', 'CONNECTION_FAILED')
    assert.ok(ms >= 1900 && ms < 4000, `failed after ${ms} ms`)
  })

  test('a new pooled connection to a server that stopped answering fails the call typed, in time', async () => {
    const fx = await freshDb()
    const proxy = await proxyToPostgres()
    try {
      const url = `postgres://postgres@127.0.0.1:${proxy.port}/${fx.name}?sslmode=disable`
      const service = await fx.connect({ url, connectTimeoutMs: 300, maxConnections: 2 })
      await service.create({ idempotency_key: 'held' })
      await service.create({ idempotency_key: 'other' })
      proxy.state.blackhole = true
      // The one open connection is busy in a stage; the next call needs a new one.
      let release
      const gate = new Promise((r) => (release = r))
      let entered
      const inside = new Promise((r) => (entered = r))
      const stage = service.workStage('held', async () => {
        entered()
        await gate
        return { recovery_point: 'held' }
      })
      await inside
      const { e, ms } = await timed(service.retrieve('other'))
      assertErr(e, 'database_error', 'CONNECTION_FAILED')
      assert.ok(ms < 2000, `failed after ${ms} ms`)
      release()
      assert.equal((await stage).recovery_point, 'held')
    } finally {
      await proxy.close()
      await fx.cleanup()
    }
  })
})

describe('pool hygiene', { skip: !isPostgres && 'PostgreSQL only' }, () => {
  let fx
  before(async () => {
    fx = await freshDb()
    for (const k of ['a', 'b', 'c', 'd']) await fx.service.create({ idempotency_key: `pool-${k}` })
  })
  after(async () => {
    if (fx) await fx.cleanup()
  })

  /** The backend pid of the connection a stage runs on. */
  async function stagePid(service, key) {
    let pid
    await service.workStage(key, async (tx) => {
      ;[{ pid }] = await tx.query('SELECT pg_backend_pid() AS pid')
      return { recovery_point: 'pid' }
    })
    return pid
  }

  test('a connection is reused until maxLifetimeMs, then replaced (its backend pid changes)', async () => {
    const keep = await fx.connect({ maxConnections: 1 })
    const p1 = await stagePid(keep, 'pool-a')
    assert.equal(await stagePid(keep, 'pool-a'), p1, 'without expiry the one connection is reused')
    const short = await fx.connect({ maxConnections: 1, maxLifetimeMs: 300 })
    const q1 = await stagePid(short, 'pool-b')
    assert.equal(await stagePid(short, 'pool-b'), q1)
    await sleep(450)
    const q2 = await stagePid(short, 'pool-b')
    assert.notEqual(q2, q1, 'an expired connection is replaced')
    await keep.close()
    await short.close()
  })

  test('idle connections are closed after idleTimeoutMs: the pool shrinks to nothing', async () => {
    // Counted by an application_name of this service's own, so that the backends of the previous
    // test's services, still exiting after their Terminate, are not counted.
    const url = new URL(fx.url)
    url.searchParams.set('application_name', 'idle_shrink_test')
    /** Server sessions of this test's service. */
    const sessions = async () => {
      const [{ n }] = await fx.db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'idle_shrink_test'")
      return n
    }
    const before = await sessions()
    assert.equal(before, 0)
    const service = await fx.connect({ url: url.toString(), maxConnections: 4, idleTimeoutMs: 400 })
    // Four stages at once: four connections.
    let release
    const gate = new Promise((r) => (release = r))
    let n = 0
    let allIn
    const inside = new Promise((r) => (allIn = r))
    const stages = ['a', 'b', 'c', 'd'].map((k) =>
      service.workStage(`pool-${k}`, async () => {
        if (++n === 4) allIn()
        await gate
        return { recovery_point: 'idle' }
      }),
    )
    await inside
    release()
    await Promise.all(stages)
    assert.equal(await sessions(), before + 4)
    // Polled: the sweep runs every idleTimeoutMs / 4.
    let left = Infinity
    for (let i = 0; i < 40 && left > before; i++) {
      await sleep(100)
      left = await sessions()
    }
    assert.equal(left, before, 'every idle connection was closed')
    // And the service still works, on a new connection.
    assert.equal((await service.retrieve('pool-a')).idempotency_key, 'pool-a')
    await service.close()
  })

  test('timeouts that are not non-negative integers are invalid_data', async () => {
    for (const opt of [{ maxLifetimeMs: -1 }, { idleTimeoutMs: 1.5 }, { connectTimeoutMs: 'x' }, { preparedStatements: 'yes' }]) {
      const e = await rejects(fx.connect(opt))
      assertErr(e, 'invalid_data', 'INVALID_ARGUMENT')
    }
  })
})
