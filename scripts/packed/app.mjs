// An ES module using the installed package by name: named imports from all three entry points,
// the default import of the Medusa class, and one module instance whichever way it is loaded.
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import pkg, * as ns from 'medusa-idempotency-native'
import { IdempotencyKeyService, TransactionManager, channels, wrapExecutor } from 'medusa-idempotency-native'
import MedusaService, { IdempotencyKeyService as MedusaNamed } from 'medusa-idempotency-native/medusa'
import { idempotency, parseIdempotencyKey, sendStoredResponse } from 'medusa-idempotency-native/middleware'

const require = createRequire(import.meta.url)
const exercise = require('./exercise.cjs')

// One instance: what require() returns is what the ES module namespace reflects.
const cjs = require('medusa-idempotency-native')
assert.equal(cjs.channels, channels)
assert.equal(pkg, cjs)
assert.equal(ns.channels, channels)
assert.equal(cjs.IdempotencyKeyService, IdempotencyKeyService)
assert.equal(require('medusa-idempotency-native/medusa'), MedusaService)
assert.equal(MedusaNamed, MedusaService)
assert.equal(require('medusa-idempotency-native/middleware').idempotency, idempotency)
assert.equal(typeof wrapExecutor, 'function')
assert.equal(typeof sendStoredResponse, 'function')
assert.equal(parseIdempotencyKey('"abc"'), 'abc')

await exercise({ IdempotencyKeyService, TransactionManager, channels, idempotency, MedusaService })

// One native addon, from the platform package.
const addons = Object.keys(require.cache).filter((f) => f.endsWith('.node'))
assert.equal(addons.length, 1, `addons loaded: ${addons.join(', ')}`)
assert.match(addons[0], new RegExp(`node_modules[\\\\/]${process.env.EXPECT_PLATFORM_PACKAGE}[\\\\/]`))
console.log(`app.mjs: ok (addon ${addons[0]})`)
