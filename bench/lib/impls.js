'use strict'
// The four implementations under test, behind one interface:
//
//   initializeRequest(headerKey) -> key      (a) and the first step of (b)
//   stage(key, stageNo, from, to, onBody?)   one workStage whose callback inserts one side row
//                                            through the handle it is given, moving the key
//                                            from `from` to `to` ('finished' = respond)
//   retrieve(key) -> key                     (c)
//   close()
//
// Each is called the way its users call it:
//   original  Medusa 1.20's IdempotencyKeyService, built as Medusa's loaders build it (models
//             loader, database loader -> TypeORM 0.3 DataSource, repositories loader, the
//             awilix cradle) and called as Medusa 1.20's routes and cart-completion strategy
//             call it: `manager.transaction(tm => service.withTransaction(tm).…)`.
//   bound     our Medusa container class (medusa-idempotency-native/medusa), built from the
//             same cradle and called exactly like the original (bound mode over TypeORM).
//   native    our addon's own pool and transaction (`IdempotencyKeyService.connect`), in the
//             default pooler-safe statement mode.
//   prepared  the same with `preparedStatements: true` (statements kept prepared on the server).
//   pg        the floor: the same cycle's minimal SQL on a bare node-postgres Pool.
const path = require('node:path')
const { randomUUID } = require('node:crypto')

const ROOT = path.join(__dirname, '..', '..')
const REQ_METHOD = 'POST'
const REQ_PATH = '/store/carts/cart_01BENCH/complete'
const REQ_PARAMS = { id: 'cart_01BENCH' }
const RESPONSE = { data: { type: 'order', id: 'order_01BENCH' } }
const INSERT_SIDE = 'INSERT INTO bench_side (idempotency_key, stage) VALUES ($1, $2)'

function stageResult(to) {
  return to === 'finished' ? { response_code: 200, response_body: RESPONSE } : { recovery_point: to }
}

/** Medusa's loaders, in the order Medusa's own loader runs them, against `url`. */
async function buildMedusa(url, poolSize, { migrate = false } = {}) {
  const { createMedusaContainer } = require('@medusajs/utils')
  const { asValue } = require('awilix')
  const container = createMedusaContainer()
  require('@medusajs/medusa/dist/loaders/models').default({ container, rootDirectory: path.join(__dirname, '..') })
  const configModule = {
    projectConfig: {
      database_url: url,
      // node-postgres Pool options (Medusa's `database_extra`): the same pool size as ours;
      // idle connections are kept so a backend's CPU is read across a whole scenario.
      database_extra: { max: poolSize, idleTimeoutMillis: 0 },
    },
  }
  const customOptions = {}
  if (migrate) {
    const { initialSchema1611063162649 } = require('@medusajs/medusa/dist/migrations/1611063162649-initial_schema')
    customOptions.migrations = [initialSchema1611063162649]
  }
  const dataSource = await require('@medusajs/medusa/dist/loaders/database').default({ container, configModule, customOptions })
  if (migrate) await dataSource.runMigrations()
  container.register({ manager: asValue(dataSource.manager) })
  require('@medusajs/medusa/dist/loaders/repositories').default({ container })
  return { container, dataSource, configModule }
}

/** Both TypeORM-backed implementations, sharing one DataSource as they would in one app. */
async function typeormImpls(url, poolSize) {
  const medusa = await buildMedusa(url, poolSize)
  const manager = medusa.dataSource.manager
  const Original = require('@medusajs/medusa/dist/services/idempotency-key').default
  const Ours = require(path.join(ROOT, 'lib', 'medusa.js'))
  const make = (name, service, passRecoveryPoint) => ({
    name,
    initializeRequest: (headerKey) =>
      manager.transaction((tm) => service.withTransaction(tm).initializeRequest(headerKey, REQ_METHOD, REQ_PARAMS, REQ_PATH)),
    stage: (key, n, from, to, onBody) =>
      manager.transaction((tm) =>
        service.withTransaction(tm).workStage(
          key,
          async (m) => {
            onBody?.()
            await m.query(INSERT_SIDE, [key, n])
            return stageResult(to)
          },
          passRecoveryPoint ? { recoveryPoint: from } : undefined,
        ),
      ),
    retrieve: (key) => service.retrieve(key),
    close: async () => {},
  })
  const original = make('original', new Original(medusa.container.cradle, medusa.configModule), false)
  const bound = make('bound', new Ours(medusa.container.cradle, medusa.configModule), true)
  bound.close = async () => {
    if (medusa.dataSource.isInitialized) await medusa.dataSource.destroy()
  }
  return { original, bound }
}

async function nativeImpl(url, poolSize, { name = 'native', preparedStatements = false } = {}) {
  const { IdempotencyKeyService } = require(ROOT)
  const svc = await IdempotencyKeyService.connect({ url, maxConnections: poolSize, preparedStatements })
  return {
    name,
    initializeRequest: (headerKey) => svc.initializeRequest(headerKey, REQ_METHOD, REQ_PARAMS, REQ_PATH),
    stage: (key, n, from, to, onBody) =>
      svc.workStage(
        key,
        async (tx) => {
          onBody?.()
          await tx.query(INSERT_SIDE, [key, n])
          return stageResult(to)
        },
        { recoveryPoint: from },
      ),
    retrieve: (key) => svc.retrieve(key),
    close: () => svc.close(),
  }
}

/**
 * The floor: what the cycle needs at minimum, by hand. A new key is one INSERT (autocommit); a
 * stage is BEGIN; SELECT … FOR UPDATE NOWAIT (and the recovery-point check); the callback's
 * INSERT; UPDATE … RETURNING; COMMIT. Unnamed statements, as node-postgres is usually used
 * (`--pg-prepared` names them, so each connection parses them once).
 */
async function pgImpl(url, poolSize, { prepared = false } = {}) {
  const { Pool } = require('pg')
  const { ulid } = require('ulid')
  const pool = new Pool({ connectionString: url, max: poolSize, idleTimeoutMillis: 0 })
  // pool.end() resolves before the sockets are closed: an idle client that hears the server
  // end its backend (the bench drops its database WITH (FORCE)) must not crash the process.
  pool.on('error', () => {})
  const q = (client, name, text, values) => client.query(prepared ? { name, text, values } : { text, values })
  const INSERT_KEY =
    'INSERT INTO idempotency_key (id, idempotency_key, locked_at, request_method, request_params, request_path) ' +
    'VALUES ($1, $2, clock_timestamp(), $3, $4, $5) RETURNING *'
  const LOCK = 'SELECT id, recovery_point FROM idempotency_key WHERE idempotency_key = $1 FOR UPDATE NOWAIT'
  const UPDATE =
    'UPDATE idempotency_key SET recovery_point = $2::varchar, response_code = $3, response_body = $4, ' +
    'locked_at = CASE WHEN $2::varchar = \'finished\' THEN NULL ELSE clock_timestamp() END WHERE id = $1 RETURNING *'
  return {
    name: 'pg',
    async initializeRequest(headerKey) {
      const values = ['ikey_' + ulid(), headerKey || randomUUID(), REQ_METHOD, JSON.stringify(REQ_PARAMS), REQ_PATH]
      const r = await q(pool, 'bench_insert_key', INSERT_KEY, values)
      return r.rows[0]
    },
    async stage(key, n, from, to, onBody) {
      const client = await pool.connect()
      let failed = null
      try {
        await client.query('BEGIN')
        const locked = await q(client, 'bench_lock', LOCK, [key])
        if (locked.rows.length === 0) throw Object.assign(new Error('not found'), { code: 'IDEMPOTENCY_KEY_NOT_FOUND' })
        if (locked.rows[0].recovery_point !== from) throw Object.assign(new Error('stale'), { code: 'IDEMPOTENCY_KEY_STALE' })
        onBody?.()
        await q(client, 'bench_side', INSERT_SIDE, [key, n])
        const r = stageResult(to)
        const done = to === 'finished'
        const updated = await q(client, 'bench_update', UPDATE, [
          locked.rows[0].id,
          done ? 'finished' : r.recovery_point,
          done ? r.response_code : null,
          done ? JSON.stringify(r.response_body) : null,
        ])
        await client.query('COMMIT')
        return updated.rows[0]
      } catch (e) {
        failed = e
        await client.query('ROLLBACK').catch(() => {})
        throw e.code === '55P03' ? Object.assign(e, { code: 'IDEMPOTENCY_KEY_LOCKED' }) : e
      } finally {
        client.release(failed && !failed.code ? failed : undefined)
      }
    },
    async retrieve(key) {
      const r = await q(pool, 'bench_retrieve', 'SELECT * FROM idempotency_key WHERE idempotency_key = $1', [key])
      if (!r.rows.length) throw new Error(`Idempotency key ${key} was not found`)
      return r.rows[0]
    },
    close: () => pool.end(),
  }
}

/** All five, each with its own pool of `poolSize` (the two TypeORM ones share Medusa's). */
async function buildAll(url, poolSize, opts = {}) {
  const { original, bound } = await typeormImpls(url, poolSize)
  const native = await nativeImpl(url, poolSize)
  const prepared = await nativeImpl(url, poolSize, { name: 'prepared', preparedStatements: true })
  const pg = await pgImpl(url, poolSize, opts)
  return { original, bound, native, prepared, pg }
}

const STAGES = [
  [1, 'started', 'stage_1'],
  [2, 'stage_1', 'stage_2'],
  [3, 'stage_2', 'finished'],
]

/** (b): initializeRequest with a new client key, then three work stages. */
async function cycle(impl) {
  const k = await impl.initializeRequest(randomUUID())
  for (const [n, from, to] of STAGES) await impl.stage(k.idempotency_key, n, from, to)
}

module.exports = { buildMedusa, buildAll, cycle, STAGES, INSERT_SIDE, REQ_METHOD, REQ_PARAMS, REQ_PATH }
