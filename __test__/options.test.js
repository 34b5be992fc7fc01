'use strict'
// The options interfaces in index.d.ts are generated from the binding's #[napi(object)] structs,
// while the values are read by the binding's own readers (so a hostile value is a typed
// INVALID_ARGUMENT, never a napi status error). This file ties the two together: every field the
// declarations name is read under exactly that name — a wrong-typed value there is refused with
// an error naming the field. A field declared but not read (or read under another name) fails.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { IdempotencyKeyService } = require('..')

const DTS = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8')

/** The fields of `export interface <name> { … }` in index.d.ts: [[field, type], …]. */
function fields(name) {
  const m = DTS.match(new RegExp(`export interface ${name} \\{([\\s\\S]*?)\\n\\}`))
  assert.ok(m, `index.d.ts declares ${name}`)
  const out = [...m[1].matchAll(/^\s+(\w+)\?: (.+)$/gm)].map((f) => [f[1], f[2].trim()])
  assert.ok(out.length > 0, `${name} has fields`)
  return out
}

/** A value of the wrong type for a declared type, and the message the reader must give. */
function wrong(field, type) {
  if (type === 'number') return [{ no: 'number' }, `${field} must be a number`]
  if (type === 'boolean') return ['yes', `${field} must be a boolean`]
  if (type === 'string') return [42, `${field} must be a string`]
  return [42, field] // a union (ssl: boolean | SslOptions): the message names the field
}

async function refused(run, message, what) {
  await assert.rejects(run, (e) => {
    assert.equal(e.code, 'INVALID_ARGUMENT', `${what}: ${e.message}`)
    assert.ok(e.message.includes(message), `${what}: "${e.message}" should say "${message}"`)
    return true
  })
}

const URL = 'sqlite::memory:'

test('every ConnectOptions field in index.d.ts is read under its declared name and type', async () => {
  for (const [field, type] of fields('ConnectOptions')) {
    const [value, message] = wrong(field, type)
    const opts = field === 'url' ? { url: value } : { url: URL, [field]: value }
    await refused(() => IdempotencyKeyService.connect(opts), message, `connect({ ${field} })`)
  }
})

test('every SslOptions field in index.d.ts is read under its declared name and type', async () => {
  for (const [field, type] of fields('SslOptions')) {
    const [value, message] = wrong(field, type)
    await refused(() => IdempotencyKeyService.connect({ url: URL, ssl: { [field]: value } }), message, `ssl.${field}`)
  }
})

test('every field of the reap, listAbandoned and workStage options is read under its declared name', async () => {
  const service = await IdempotencyKeyService.connect(URL)
  await service.migrate()
  try {
    const key = await service.create({})
    const calls = {
      ReapOptions: (o) => service.reap(o),
      ListAbandonedOptions: (o) => service.listAbandoned(o),
      WorkStageOptions: (o) => service.workStage(key.idempotency_key, async () => ({ recovery_point: 'x' }), o),
    }
    for (const [name, call] of Object.entries(calls)) {
      for (const [field, type] of fields(name)) {
        const [value, message] = wrong(field, type)
        await refused(() => call({ [field]: value }), message, `${name}.${field}`)
      }
    }
  } finally {
    await service.close()
  }
})
