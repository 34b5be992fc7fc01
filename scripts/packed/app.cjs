// A CommonJS program using the installed package by name, all three entry points.
const assert = require('node:assert/strict')
const { IdempotencyKeyService, TransactionManager, channels } = require('medusa-idempotency-native')
const MedusaService = require('medusa-idempotency-native/medusa')
const { idempotency } = require('medusa-idempotency-native/middleware')
const exercise = require('./exercise.cjs')

assert.equal(MedusaService.default, MedusaService)
assert.equal(MedusaService.IdempotencyKeyService, MedusaService)

exercise({ IdempotencyKeyService, TransactionManager, channels, idempotency, MedusaService }).then(
  async () => {
    // The ES module view of the same package is this very instance.
    const ns = await import('medusa-idempotency-native')
    assert.equal(ns.channels, channels)
    assert.equal(ns.IdempotencyKeyService, IdempotencyKeyService)
    const addons = Object.keys(require.cache).filter((f) => f.endsWith('.node'))
    assert.equal(addons.length, 1, `addons loaded: ${addons.join(', ')}`)
    console.log('app.cjs: ok')
  },
  (e) => {
    console.error(e)
    process.exit(1)
  },
)
