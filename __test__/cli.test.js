// The operator's command line (lib/cli.js, the package's `bin`), spawned as a user runs it
// against a real database on the backend IDEM_BACKEND selects: each command, `--json` parsed,
// `--tenant`, bad input (unknown key, bad duration, no database, unknown command) with a clear
// message and its exit code, and `release` refused while a live stage holds the key.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { execFile } = require('node:child_process')
const { freshDb, useFreshDb, holdStage, isPostgres, sleep } = require('./helpers')
const { uniq } = require('../test-support/keys')

const pkg = require('../package.json')
const BIN = path.join(__dirname, '..', pkg.bin['medusa-idempotency-native'])

let fx
useFreshDb((f) => {
  fx = f
})

/** Run the CLI; resolves to { code, stdout, stderr } (never rejects on a non-zero exit). */
function cli(args, { env = {}, url = fx.url } = {}) {
  const fullEnv = { ...process.env, ...env }
  delete fullEnv.DATABASE_URL
  if (url !== null) fullEnv.DATABASE_URL = url
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: fullEnv, timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? error.code : 0, stdout, stderr })
    })
  })
}

test('the bin is the CLI, and --help prints the usage with exit 0', async () => {
  assert.equal(pkg.bin['medusa-idempotency-native'], 'lib/cli.js')
  const r = await cli(['--help'])
  assert.equal(r.code, 0)
  assert.match(r.stdout, /^Usage: medusa-idempotency-native <command>/)
  for (const c of ['inspect', 'list', 'release', 'reap', 'migrate']) assert.match(r.stdout, new RegExp(`\\n  ${c}`))
})

test('migrate on a fresh database, twice', async () => {
  const other = await freshDb()
  try {
    for (let i = 0; i < 2; i++) {
      const r = await cli(['migrate', '--json'], { url: other.url })
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(JSON.parse(r.stdout), { migrated: true })
    }
  } finally {
    await other.cleanup()
  }
})

test('inspect: the row and its lease in words, as a table and as JSON', async () => {
  const key = uniq('inspect')
  await fx.service.initializeRequest(key, 'POST', { cart: 1 }, '/store/carts/1/complete')
  const text = await cli(['inspect', key])
  assert.equal(text.code, 0, text.stderr)
  assert.match(text.stdout, new RegExp(`key\\s+${key}`))
  assert.match(text.stdout, /request\s+POST \/store\/carts\/1\/complete/)
  assert.match(text.stdout, /lease\s+(leased|lease expired)/)
  const json = await cli(['inspect', key, '--json', '--lock-timeout', '1h'])
  assert.equal(json.code, 0, json.stderr)
  const row = JSON.parse(json.stdout)
  assert.equal(row.idempotency_key, key)
  assert.equal(row.recovery_point, 'started')
  assert.equal(row.lease, 'leased')
  assert.deepEqual(row.request_params, { cart: 1 })
  assert.ok(!Number.isNaN(Date.parse(row.locked_at)))

  assert.equal(row.accepted, null)
  assert.equal(row.completer, null)
  assert.match(text.stdout, /accepted\s+no: no handler took the request/)
  assert.match(text.stdout, /completer\s+no attempts/)

  await fx.service.workStage(key, async () => ({ response_code: 201, response_body: { ok: true } }))
  const done = JSON.parse((await cli(['inspect', key, '--json'])).stdout)
  assert.equal(done.lease, 'finished')
  assert.equal(done.response_code, 201)
  assert.match((await cli(['inspect', key])).stdout, /accepted\s+no record \(none is kept once a key is finished\)/)
})

// A Medusa database where only Medusa's migration ran has neither bookkeeping table: inspect
// through a caller's transaction reads none and leaves that transaction usable (a failed
// statement would have aborted it).
test('inspect in a caller\'s transaction without the bookkeeping tables: no records, the transaction still usable', { skip: !isPostgres && 'a caller\'s executor is PostgreSQL' }, async () => {
  const { Client } = require('pg')
  const key = uniq('bare')
  await fx.service.create({ idempotency_key: key })
  const client = new Client({ connectionString: fx.directUrl })
  await client.connect()
  try {
    await client.query('BEGIN')
    await client.query('DROP TABLE idempotency_key_accepted, idempotency_key_completer')
    const inspected = await fx.service.withTransaction(client).inspect(key)
    assert.equal(inspected.key.idempotency_key, key)
    assert.equal(inspected.accepted, null)
    assert.equal(inspected.completer, null)
    assert.deepEqual((await client.query('SELECT 1 AS one')).rows, [{ one: 1 }])
  } finally {
    await client.query('ROLLBACK')
    await client.end()
  }
})

test("inspect: the route that accepted the request and the completer's attempts, its last error and backoff", async () => {
  const key = uniq('attempts')
  // A short request lease, so the abandoned key is the completer's after 150 ms.
  const service = await fx.connect({ lockTimeoutMs: 100 })
  await service.initializeRequest(key, 'POST', {}, '/store/carts/2/complete')
  await service.accept(key, { route: 'POST /store/carts/:id/complete', pathParams: { id: '2' } })
  await sleep(150)
  const declined = () => Object.assign(new Error('card declined'), { code: 'CARD_DECLINED' })
  const completer = service.completer({
    routes: { 'POST /store/carts/:id/complete': () => ({ started: async () => { throw declined() } }) },
    idleMs: 50,
    backoffMs: 60_000,
  })
  const pass = await completer.runOnce()
  assert.equal(pass.failed, 1, JSON.stringify(pass))

  const text = await cli(['inspect', key])
  assert.equal(text.code, 0, text.stderr)
  assert.match(text.stdout, /accepted\s+POST \/store\/carts\/:id\/complete at \d{4}-/)
  assert.match(text.stdout, /completer\s+1 attempt, the last at \d{4}-.*last error: CARD_DECLINED: card declined; next attempt after \d{4}-/)
  const row = JSON.parse((await cli(['inspect', key, '--json'])).stdout)
  assert.equal(row.accepted.route, 'POST /store/carts/:id/complete')
  assert.ok(!Number.isNaN(Date.parse(row.accepted.accepted_at)))
  assert.equal(row.completer.attempts, 1)
  assert.equal(row.completer.last_error_code, 'CARD_DECLINED')
  assert.equal(row.completer.last_error, 'card declined')
  assert.ok(Date.parse(row.completer.next_attempt_at) > Date.now() + 30_000, 'backed off')
  assert.equal(row.completer.gave_up_at, null)

  // The service method the command uses, with Dates.
  const inspected = await fx.service.inspect(key)
  assert.equal(inspected.key.idempotency_key, key)
  assert.ok(inspected.completer.last_attempt_at instanceof Date)
  assert.ok(inspected.accepted.accepted_at instanceof Date)
  await assert.rejects(fx.service.inspect(uniq('nope')), { code: 'IDEMPOTENCY_KEY_NOT_FOUND' })
  await assert.rejects(fx.service.inspect(42), { code: 'INVALID_ARGUMENT' })
})

test('list --in-flight and --abandoned [--idle]', async () => {
  const live = uniq('live')
  const dead = uniq('dead')
  await fx.service.initializeRequest(dead, 'POST', {}, '/x')
  await sleep(2_500)
  await fx.service.initializeRequest(live, 'POST', {}, '/x')
  const inFlight = await cli(['list', '--in-flight', '--json', '--lock-timeout', '2s'])
  assert.equal(inFlight.code, 0, inFlight.stderr)
  const flying = JSON.parse(inFlight.stdout).map((k) => k.idempotency_key)
  assert.ok(flying.includes(live) && !flying.includes(dead), inFlight.stdout)

  const abandoned = JSON.parse((await cli(['list', '--abandoned', '--idle', '2s', '--lock-timeout', '2s', '--json'])).stdout)
  const names = abandoned.map((k) => k.idempotency_key)
  assert.ok(names.includes(dead) && !names.includes(live), names.join(', '))
  assert.equal(abandoned.find((k) => k.idempotency_key === dead).lease, 'expired')
  // Idle for less than an hour: not abandoned yet by that measure.
  const strict = JSON.parse((await cli(['list', '--abandoned', '--idle', '1h', '--json'])).stdout)
  assert.ok(!strict.some((k) => k.idempotency_key === dead))
  // The table form names its columns.
  const table = await cli(['list', '--abandoned', '--idle', '2s', '--lock-timeout', '2s'])
  assert.match(table.stdout, /^key\s+request\s+recovery point\s+created\s+locked at\s+lease/)
  assert.ok(table.stdout.includes(dead))
})

test('release: ends a dead request\'s lease; refused (exit 4) while a live stage holds the row', async () => {
  const s = await fx.connect({ lockTimeoutMs: 60_000 })
  const key = uniq('release')
  await s.initializeRequest(key, 'POST', {}, '/x')
  // A second request is refused for a minute: its holder is dead, the operator releases it.
  await assert.rejects(s.initializeRequest(key, 'POST', {}, '/x'), { code: 'IDEMPOTENCY_KEY_LOCKED' })
  const r = await cli(['release', key, '--json'])
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout), { key, released: true, recovery_point: 'started' })
  const claimed = await s.initializeRequest(key, 'POST', {}, '/x')
  assert.equal(claimed.recovery_point, 'started')

  const holder = holdStage(s, key)
  await holder.inside
  let refused
  try {
    refused = await cli(['release', key])
  } finally {
    holder.release()
    await holder.done
  }
  assert.equal(refused.code, 4, refused.stderr)
  assert.match(refused.stderr, /refused: a live stage holds/)
  assert.match(refused.stderr, isPostgres ? /IDEMPOTENCY_KEY_LOCKED/ : /IDEMPOTENCY_KEY_LOCKED|DATABASE_BUSY/)
})

test('reap --older-than, with its count', async () => {
  const key = uniq('old')
  await fx.service.create({ idempotency_key: key })
  const keep = await cli(['reap', '--older-than', '24h', '--json'])
  assert.equal(keep.code, 0, keep.stderr)
  assert.equal(JSON.parse(keep.stdout).olderThanMs, 86_400_000)
  assert.equal((await fx.service.retrieve(key)).idempotency_key, key)
  await sleep(20)
  const r = await cli(['reap', '--older-than', '10ms'])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /^reaped: \d+ keys? created more than/)
  await assert.rejects(fx.service.retrieve(key), { code: 'IDEMPOTENCY_KEY_NOT_FOUND' })
})

test('--tenant addresses one tenant\'s keys', async () => {
  const tenant = uniq('acme')
  const key = uniq('tk')
  await fx.service.forTenant(tenant).create({ idempotency_key: key })
  const scoped = await cli(['inspect', key, '--tenant', tenant, '--json'])
  assert.equal(scoped.code, 0, scoped.stderr)
  assert.equal(JSON.parse(scoped.stdout).idempotency_key, key)
  const unscoped = await cli(['inspect', key])
  assert.equal(unscoped.code, 3)
})

test('bad input: a clear message and a non-zero exit code', async () => {
  const unknownKey = await cli(['inspect', uniq('nope')])
  assert.equal(unknownKey.code, 3)
  assert.match(unknownKey.stderr, /was not found \(IDEMPOTENCY_KEY_NOT_FOUND\)/)
  const json = await cli(['inspect', uniq('nope'), '--json'])
  assert.equal(json.code, 3)
  assert.equal(JSON.parse(json.stderr).error.code, 'IDEMPOTENCY_KEY_NOT_FOUND')

  const duration = await cli(['reap', '--older-than', '24 hours'])
  assert.equal(duration.code, 2)
  assert.match(duration.stderr, /--older-than: bad duration "24 hours"/)
  const idle = await cli(['list', '--abandoned', '--idle', 'soon'])
  assert.equal(idle.code, 2)
  assert.match(idle.stderr, /--idle: bad duration/)

  const noDb = await cli(['list', '--in-flight'], { url: null })
  assert.equal(noDb.code, 2)
  assert.match(noDb.stderr, /no database: pass --url <url> or set DATABASE_URL/)
  const unreachable = await cli(['inspect', 'k', '--url', 'postgres://postgres@127.0.0.1:1/none'], { url: null })
  assert.equal(unreachable.code, 1)
  assert.match(unreachable.stderr, /CONNECTION_FAILED/)

  const command = await cli(['explode'])
  assert.equal(command.code, 2)
  assert.match(command.stderr, /unknown command "explode"/)
  const option = await cli(['list', '--in-flight', '--colour'])
  assert.equal(option.code, 2)
  assert.match(option.stderr, /unknown option --colour/)
  const list = await cli(['list'])
  assert.equal(list.code, 2)
  assert.match(list.stderr, /list needs --in-flight or --abandoned/)
  const limit = await cli(['list', '--abandoned', '--limit', '0'])
  assert.equal(limit.code, 2)
  assert.match(limit.stderr, /--limit: 0 is not a whole number from 1 to 10000/)
})
