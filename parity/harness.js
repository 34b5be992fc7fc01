'use strict'
// Builds both implementations the way a Medusa 1.20 backend does, over one fresh database:
//
// - the database: CREATE DATABASE parity_<pid>_<rand> on the admin URL, dropped WITH (FORCE)
//   at the end;
// - the DataSource: Medusa's own database loader (dist/loaders/database), which assigns the
//   exported `dataSource` that Medusa's repositories are built from, with Medusa's
//   IdempotencyKey entity as `db_entities`;
// - the table: Medusa's own initial migration (the only one that touches idempotency_key),
//   run by TypeORM as `medusa migrations run` does;
// - the services: an awilix container per service, registered as Medusa's services loader
//   does (`asFunction((cradle) => new Cls(cradle, configModule)).singleton()`), with `manager`
//   = dataSource.manager and `idempotencyKeyRepository` = Medusa's repository. The original
//   class is dist/services/idempotency-key; ours is medusa-idempotency-native/medusa, the
//   one-line override a Medusa project would ship.
const path = require('node:path')
const { createDatabase } = require('../test-support/db')
const { uniq } = require('../test-support/keys')

// Requiring Medusa's modules must not phone home from a test run.
if (process.env.MEDUSA_DISABLE_TELEMETRY === undefined) process.env.MEDUSA_DISABLE_TELEMETRY = 'true'

const ADMIN_URL = process.env.PARITY_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres'

const MEDUSA_DIR = path.dirname(require.resolve('@medusajs/medusa/package.json'))
const medusaDist = (p) => path.join(MEDUSA_DIR, 'dist', p)
// awilix is Medusa's container library; resolve Medusa's own copy rather than declaring it.
const awilix = require(require.resolve('awilix', { paths: [MEDUSA_DIR] }))

/**
 * Create the run's database, build Medusa's DataSource over it with Medusa's loader, run
 * Medusa's initial migration, and return `{ name, url, dataSource, manager, make: { medusa,
 * native }, teardown }`.
 */
async function setup() {
  const { name, url, drop } = await createDatabase('parity', { adminUrl: ADMIN_URL })
  let dataSource
  try {
    const databaseLoader = require(medusaDist('loaders/database')).default
    const { IdempotencyKey } = require(medusaDist('models/idempotency-key'))
    const { initialSchema1611063162649 } = require(medusaDist('migrations/1611063162649-initial_schema'))

    const configModule = { projectConfig: { database_url: url } }
    const loaderContainer = awilix.createContainer()
    loaderContainer.register({ db_entities: awilix.asValue([IdempotencyKey]) })
    // With migrations given, the loader skips its "select * from migrations" readiness check,
    // as it does for `medusa migrations run`.
    dataSource = await databaseLoader({
      container: loaderContainer,
      configModule,
      customOptions: { migrations: [initialSchema1611063162649], logging: false },
    })
    await dataSource.runMigrations()

    // Medusa's repositories are `dataSource.getRepository(...)` evaluated at require time, so
    // require it only now that the loader has assigned the exported dataSource.
    const { IdempotencyKeyRepository } = require(medusaDist('repositories/idempotency-key'))
    const MedusaIdempotencyKeyService = require(medusaDist('services/idempotency-key')).default
    const NativeIdempotencyKeyService = require('medusa-idempotency-native/medusa')

    const manager = dataSource.manager
    const containerFor = (Cls) => {
      const container = awilix.createContainer()
      container.register({
        manager: awilix.asValue(manager),
        idempotencyKeyRepository: awilix.asValue(IdempotencyKeyRepository),
        idempotencyKeyService: awilix.asFunction((cradle) => new Cls(cradle, configModule)).singleton(),
      })
      return container
    }
    // A fresh container, hence a fresh singleton service, per call.
    const make = {
      medusa: () => containerFor(MedusaIdempotencyKeyService).resolve('idempotencyKeyService'),
      native: () => containerFor(NativeIdempotencyKeyService).resolve('idempotencyKeyService'),
    }

    const teardown = async () => {
      try {
        if (dataSource?.isInitialized) await dataSource.destroy()
      } finally {
        await drop()
      }
    }
    return { name, url, dataSource, manager, make, teardown }
  } catch (e) {
    if (dataSource?.isInitialized) await dataSource.destroy().catch(() => {})
    await drop().catch(() => {})
    throw e
  }
}

/** Settle all, then split into values and errors. */
async function settle(promises) {
  const results = await Promise.allSettled(promises)
  return {
    values: results.filter((r) => r.status === 'fulfilled').map((r) => r.value),
    errors: results.filter((r) => r.status === 'rejected').map((r) => r.reason),
  }
}

/** `{ "type/code": n }` for a list of errors, for assertions and the report. */
function tally(errors) {
  const out = {}
  for (const e of errors) {
    const k = `${e?.type ?? e?.name}/${e?.code ?? '-'}`
    out[k] = (out[k] ?? 0) + 1
  }
  return out
}

module.exports = { setup, settle, tally, uniq, ADMIN_URL }
