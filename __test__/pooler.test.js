// The service behind PgBouncer in transaction mode (issue 11), against a PgBouncer this file
// starts itself (test-support/pgbouncer.js: Debian's pgbouncer, pool_mode transaction,
// default_pool_size 4, on a free port; scripts/ensure-pgbouncer.sh installs it). In transaction
// mode consecutive transactions of one client land on different server connections, and
// prepared statements (SQL PREPARE, named protocol statements) stay on the server connection
// that made them, where the next client of that connection finds them. A client that names
// its statements therefore fails with 42P05 (already exists), 26000 (does not exist) or 08P01
// (a statement of another client with a different parameter count), or, with a matching
// parameter count, runs another client's statement.
//
// Each test runs 320 route-style cycles (initializeRequest + 2 workStage stages, each stage
// inserting one side row (key, stage)), 16 at a time (a typed conflict, a 409, is re-sent as a
// client would), and requires 320/320 and exactly one side row per (key, stage): the service directly (baseline), node-postgres through the pooler (the
// pooler set up right: Medusa's own stack, unnamed statements), the service through the pooler,
// and the service through a pooler whose every server connection already holds prepared
// statements named like ours and sqlx's (what another client of a shared pooler leaves
// behind). PostgreSQL only (skipped on IDEM_BACKEND=sqlite).
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { Client, Pool } = require('pg')
const { IdempotencyKeyService } = require('..')
const { freshDb, isPostgres, sleep } = require('./helpers')
const { startPgBouncer, pgbouncerVersion } = require('../test-support/pgbouncer')

const CYCLES = 320
const CONCURRENCY = 16
const POOL_SIZE = 4 // PgBouncer's default_pool_size: 16 clients share 4 server connections
const skip = isPostgres ? false : 'PostgreSQL only: PgBouncer pools PostgreSQL connections'

let fx // the fresh database (direct URL in fx.directUrl), verified through node-postgres
let db
let bouncer // PgBouncer in front of fx's database

before(async () => {
  if (!isPostgres) return
  fx = await freshDb()
  db = fx.db
  await db.exec('CREATE TABLE side (k text NOT NULL, stage text NOT NULL)')
  bouncer = await startPgBouncer({ database: fx.name, poolSize: POOL_SIZE, poolMode: 'transaction' })
})

after(async () => {
  if (bouncer) await bouncer.stop()
  if (fx) await fx.cleanup()
})

const STAGES = [
  { at: 'started', stage: 'reserve', next: 'stock_reserved' },
  { at: 'stock_reserved', stage: 'charge', next: null },
]
const METHOD = 'POST'
const PATH = '/store/carts/complete'
const paramsFor = (key) => ({ cart_id: `cart_${key}` })
const responseFor = (key) => ({ order_id: `order_${key}` })

const MAX_RESENDS = 5
const conflicts = {} // typed conflicts (409) re-sent by serviceCycle, by code

/**
 * One route-style cycle through the service: initializeRequest, then a stage per recovery
 * point. A typed conflict (a 409: 40001 after the service's own retries, LOCKED) is what a
 * client re-sends: the whole request is re-sent after a short backoff, up to MAX_RESENDS
 * times. Any other error fails the cycle.
 */
async function serviceCycle(service, key) {
  for (let resend = 0; ; resend++) {
    try {
      let k = await service.initializeRequest(key, METHOD, paramsFor(key), PATH)
      while (k.recovery_point !== 'finished') {
        const step = STAGES.find((s) => s.at === k.recovery_point)
        assert.ok(step, `${key}: unexpected recovery point ${k.recovery_point}`)
        k = await service.workStage(
          key,
          async (tx) => {
            await tx.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, step.stage])
            return step.next ? { recovery_point: step.next } : { response_code: 201, response_body: responseFor(key) }
          },
          { recoveryPoint: step.at },
        )
      }
      return k
    } catch (e) {
      if (!(e instanceof Error && e.type === 'conflict') || resend >= MAX_RESENDS) throw e
      conflicts[e.code] = (conflicts[e.code] ?? 0) + 1
      await sleep(5 + Math.random() * 20)
    }
  }
}

/**
 * The same cycle over node-postgres the way Medusa's service runs it through TypeORM (unnamed
 * statements, one transaction per stage, SERIALIZABLE, the row locked NOWAIT): the reference
 * that shows the pooler itself is set up right.
 */
async function pgCycle(pool, key) {
  await pool.query(
    `INSERT INTO idempotency_key (id, idempotency_key, request_method, request_params, request_path, locked_at)
     VALUES ($1, $2, $3, $4, $5, now())`,
    [`ikey_${key}`, key, METHOD, paramsFor(key), PATH],
  )
  for (const step of STAGES) {
    for (let attempt = 1; ; attempt++) {
      const c = await pool.connect()
      try {
        await c.query('BEGIN ISOLATION LEVEL SERIALIZABLE')
        const { rows } = await c.query('SELECT recovery_point FROM idempotency_key WHERE idempotency_key = $1 FOR UPDATE NOWAIT', [key])
        assert.equal(rows[0].recovery_point, step.at)
        await c.query('INSERT INTO side (k, stage) VALUES ($1, $2)', [key, step.stage])
        if (step.next) {
          await c.query('UPDATE idempotency_key SET recovery_point = $2, locked_at = now() WHERE idempotency_key = $1', [key, step.next])
        } else {
          await c.query(
            `UPDATE idempotency_key SET recovery_point = 'finished', response_code = $2, response_body = $3, locked_at = NULL
             WHERE idempotency_key = $1`,
            [key, 201, responseFor(key)],
          )
        }
        await c.query('COMMIT')
        break
      } catch (e) {
        await c.query('ROLLBACK').catch(() => {})
        if (e.code !== '40001' || attempt > MAX_RESENDS) throw e
        conflicts[e.code] = (conflicts[e.code] ?? 0) + 1
        await sleep(5 + Math.random() * 20)
      } finally {
        c.release()
      }
    }
  }
  const { rows } = await pool.query('SELECT recovery_point, response_code, response_body FROM idempotency_key WHERE idempotency_key = $1', [key])
  return rows[0]
}

/**
 * Run `cycle(key)` for CYCLES fresh keys, CONCURRENCY at a time. While it runs, PgBouncer's
 * SHOW POOLS is sampled (if `watch`): the most server and client connections of the database's
 * pool. Resolves { ok, failed: [{ key, code, message }], keys, servers, clients, seconds }.
 */
async function runCycles(label, cycle, { watch = false, concurrency = CONCURRENCY } = {}) {
  const run = Math.random().toString(36).slice(2, 8)
  const keys = Array.from({ length: CYCLES }, (_, i) => `${label}-${run}-${i}`)
  const failed = []
  let ok = 0
  let next = 0
  let servers = 0
  let clients = 0
  let watching = watch
  const watcher = (async () => {
    while (watching) {
      for (const p of await bouncer.admin('SHOW POOLS')) {
        if (p.database !== fx.name) continue
        servers = Math.max(servers, p.sv_active + p.sv_idle + p.sv_used + p.sv_tested + p.sv_login)
        clients = Math.max(clients, p.cl_active + p.cl_waiting)
      }
      await sleep(10)
    }
  })()
  const t0 = Date.now()
  try {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < keys.length) {
          const key = keys[next++]
          try {
            const k = await cycle(key)
            assert.equal(k.recovery_point, 'finished', `${key}: recovery point`)
            assert.equal(k.response_code, 201, `${key}: response_code`)
            assert.deepEqual(k.response_body, responseFor(key), `${key}: response_body`)
            ok++
          } catch (e) {
            failed.push({ key, code: e && e.code, message: String(e && e.message).slice(0, 200) })
          }
        }
      }),
    )
  } finally {
    watching = false
    await watcher
  }
  return { ok, failed, keys, servers, clients, seconds: (Date.now() - t0) / 1000 }
}

/** Failures by code, e.g. { '42P05': 200, '26000': 80 }, and one message per code. */
function summarize(failed) {
  const byCode = {}
  const sample = {}
  for (const f of failed) {
    byCode[f.code] = (byCode[f.code] ?? 0) + 1
    sample[f.code] ??= f.message
  }
  return { byCode, sample }
}

/** 320/320 and exactly one side row per (key, stage), with the failures in the message. */
async function assertAllSucceeded(label, r) {
  const { byCode, sample } = summarize(r.failed)
  assert.equal(
    r.ok,
    CYCLES,
    `${label}: ${r.ok}/${CYCLES} cycles succeeded; failures by code ${JSON.stringify(byCode)}; e.g. ${JSON.stringify(sample)}`,
  )
  const rows = await db.query('SELECT k, stage, CAST(count(*) AS integer) AS n FROM side WHERE k = ANY($1) GROUP BY k, stage', [r.keys])
  const got = new Map(rows.map((x) => [`${x.k}/${x.stage}`, x.n]))
  const problems = []
  for (const key of r.keys) {
    for (const { stage } of STAGES) {
      const n = got.get(`${key}/${stage}`) ?? 0
      if (n !== 1) problems.push(`${key}/${stage}: ${n} rows`)
    }
  }
  assert.deepEqual(problems.slice(0, 10), [], `${label}: side rows not exactly one per (key, stage): ${problems.length} problems`)
  const [{ n }] = await db.query(
    "SELECT CAST(count(*) AS integer) AS n FROM idempotency_key WHERE idempotency_key = ANY($1) AND recovery_point = 'finished' AND locked_at IS NULL",
    [r.keys],
  )
  assert.equal(n, CYCLES, `${label}: every key finished, no lease left`)
}

function report(label, r) {
  const { byCode } = summarize(r.failed)
  const pooled = r.servers ? `, at most ${r.servers} server / ${r.clients} client connections` : ''
  const resent = Object.keys(conflicts).length ? `, re-sent after a conflict ${JSON.stringify(conflicts)}` : ''
  console.log(`# ${label}: ${r.ok}/${CYCLES} succeeded in ${r.seconds.toFixed(1)} s${r.failed.length ? `, failed by code ${JSON.stringify(byCode)}` : ''}${resent}${pooled}`)
  for (const k of Object.keys(conflicts)) delete conflicts[k]
}

/** The pooler really shared its server connections: never more than POOL_SIZE, more clients. */
function assertPooled(label, r) {
  assert.ok(r.servers >= 1 && r.servers <= POOL_SIZE, `${label}: PgBouncer used ${r.servers} server connections (default_pool_size ${POOL_SIZE})`)
  assert.ok(r.clients > POOL_SIZE, `${label}: only ${r.clients} client connections: the pooler was not shared`)
}

test(`PgBouncer ${pgbouncerVersion() ?? '(not installed)'} is installed and this file's instance runs in transaction mode`, { skip }, async () => {
  assert.ok(bouncer.running)
  const cfg = await bouncer.admin('SHOW CONFIG')
  const get = (k) => cfg.find((r) => r.key === k)?.value
  assert.equal(get('pool_mode'), 'transaction')
  assert.equal(Number(get('default_pool_size')), POOL_SIZE)
})

test(`the service directly: ${CYCLES} cycles, ${CONCURRENCY} concurrent → all succeed, one side row per (key, stage)`, { skip, timeout: 120000 }, async () => {
  const service = await IdempotencyKeyService.connect({ url: fx.directUrl, maxConnections: CONCURRENCY })
  try {
    const r = await runCycles('direct', (key) => serviceCycle(service, key))
    report('service, direct', r)
    await assertAllSucceeded('service, direct', r)
  } finally {
    await service.close()
  }
})

// node-postgres through PgBouncer (transaction mode, pool ${POOL_SIZE}): ${CYCLES} cycles → all
// succeed (the pooler is set up right)
test(`node-postgres through PgBouncer (transaction mode, pool ${POOL_SIZE}): ${CYCLES} cycles → all succeed`, { skip, timeout: 120000 }, async () => {
  const pool = new Pool({ connectionString: bouncer.url, max: CONCURRENCY })
  pool.on('error', () => {})
  try {
    const r = await runCycles('pg', (key) => pgCycle(pool, key), { watch: true })
    report('node-postgres, through PgBouncer', r)
    await assertAllSucceeded('node-postgres through PgBouncer', r)
    assertPooled('node-postgres through PgBouncer', r)
  } finally {
    await pool.end()
  }
})

// the service through PgBouncer (transaction mode, pool ${POOL_SIZE}): ${CYCLES} cycles,
// ${CONCURRENCY} concurrent → all succeed, one side row per (key, stage)
test(`the service through PgBouncer (transaction mode, pool ${POOL_SIZE}): ${CYCLES} cycles → all succeed`, { skip, timeout: 120000 }, async () => {
  const service = await IdempotencyKeyService.connect({ url: bouncer.url, maxConnections: CONCURRENCY })
  try {
    await service.migrate() // a no-op here, but it runs through the pooler too
    const r = await runCycles('pooled', (key) => serviceCycle(service, key), { watch: true })
    report('service, through PgBouncer', r)
    await assertAllSucceeded('service through PgBouncer', r)
    assertPooled('service through PgBouncer', r)
  } finally {
    await service.close()
  }
})

// the service through PgBouncer whose server connections hold prepared statements another client
// left (named like ours and sqlx's) → all succeed
test("the service through PgBouncer holding other clients' prepared statements → all succeed", { skip, timeout: 120000 }, async () => {
  // Take every server connection of the pool at once (POOL_SIZE clients, each in a
  // transaction), leave SQL-level prepared statements on each, and release them to the pool.
  const poisoners = Array.from({ length: POOL_SIZE }, () => new Client({ connectionString: bouncer.url }))
  const names = ['medusa_ikey_lock', 'medusa_ikey_apply', ...Array.from({ length: 64 }, (_, i) => `sqlx_s_${i + 1}`)]
  try {
    for (const c of poisoners) {
      c.on('error', () => {})
      await c.connect()
      await c.query('BEGIN')
    }
    const backends = new Set()
    for (const c of poisoners) {
      backends.add((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
      await c.query(['DEALLOCATE ALL', ...names.map((n) => `PREPARE ${n} AS SELECT 1`)].join('; '))
    }
    assert.equal(backends.size, POOL_SIZE, 'every server connection of the pool was taken')
    for (const c of poisoners) await c.query('COMMIT')
  } finally {
    for (const c of poisoners) await c.end().catch(() => {})
  }
  const servers = (await bouncer.admin('SHOW SERVERS')).filter((sv) => sv.database === fx.name)
  assert.equal(servers.length, POOL_SIZE, 'the poisoned server connections stay in the pool')

  const service = await IdempotencyKeyService.connect({ url: bouncer.url, maxConnections: CONCURRENCY })
  try {
    const r = await runCycles('poisoned', (key) => serviceCycle(service, key), { watch: true })
    report('service, through PgBouncer with foreign prepared statements', r)
    await assertAllSucceeded('service through PgBouncer with foreign prepared statements', r)
  } finally {
    await service.close()
  }
})

// The prepared mode through a current PgBouncer (1.25, built by scripts/ensure-pgbouncer.sh) that
// tracks protocol-level named statements (max_prepared_statements): the issue's own repro, 8
// workers on a pool of 2 server connections. SQL-level PREPAREs (what the prepared mode sent
// before) are not tracked by any pooler: 266 of 320 cycles failed with 42P05 here.
// the service in the prepared mode through PgBouncer 1.25 (transaction mode, pool 2,
// max_prepared_statements 100): ${CYCLES} cycles, 8 concurrent → all succeed
test(`the prepared mode through PgBouncer 1.25 (max_prepared_statements 100): ${CYCLES} cycles → all succeed`, { skip, timeout: 120000 }, async () => {
  const { pgbouncer125Bin } = require('../test-support/pgbouncer')
  const bin = pgbouncer125Bin()
  assert.ok(bin, 'PgBouncer 1.25 is not built: run `bash scripts/ensure-pgbouncer.sh`')
  const current = await startPgBouncer({
    database: fx.name,
    poolSize: 2,
    bin,
    settings: { max_prepared_statements: 100, server_tls_sslmode: 'disable' },
  })
  const service = await IdempotencyKeyService.connect({ url: current.url, maxConnections: 8, preparedStatements: true })
  try {
    const r = await runCycles('prepared-1.25', (key) => serviceCycle(service, key), { concurrency: 8 })
    report('service, prepared mode, through PgBouncer 1.25', r)
    await assertAllSucceeded('service (prepared) through PgBouncer 1.25', r)
    const servers = (await current.admin('SHOW SERVERS')).filter((sv) => sv.database === fx.name)
    assert.ok(servers.length <= 2, `PgBouncer used ${servers.length} server connections`)
  } finally {
    await service.close()
    await current.stop()
  }
})
