// What the PostgreSQL statement path sends, watched on the wire through a recording proxy
// (test-support/wire-recorder.js, in front of the real server), and how a stage's connection
// is left: round trips per operation, no SQL-level PREPARE, no named statement in the default
// mode, a timed-out stage's statement cancelled on the server, and no session state reaching
// the next user of a connection.
const { test, describe, before, after } = require('node:test')
const assert = require('node:assert/strict')
const helpers = require('./helpers')
const { freshDb, rejects, isPostgres } = helpers
const { startRecorder } = require('../test-support/wire-recorder')

const skip = isPostgres ? false : "PostgreSQL only: SQLite has no wire"

/** The frontend messages split into flights (each ends with its Sync). */
function flights(records) {
  const out = []
  let cur = []
  for (const r of records) {
    if (r.type === 'S') {
      out.push(cur)
      cur = []
    } else if (r.type !== 'startup') cur.push(r)
  }
  return out
}

const parses = (flight) => flight.filter((r) => r.type === 'P').map((r) => r.query)

describe('the wire', { skip }, () => {
  let fx
  let rec
  let service
  before(async () => {
    fx = await freshDb()
    await fx.db.exec('CREATE TABLE side (k text, n int)')
    const target = new URL(fx.directUrl)
    rec = await startRecorder({ host: target.hostname, port: Number(target.port || 5432) })
    service = await fx.connect({ url: rec.url(fx.name), maxConnections: 1 })
  })
  after(async () => {
    await service?.close()
    await rec?.stop()
    if (fx) await fx.cleanup()
  })

  const cycle = async (key) => {
    const k = await service.initializeRequest(key, 'POST', { a: 1 }, '/wire')
    return service.workStage(k.idempotency_key, async (tx) => {
      await tx.query('INSERT INTO side (k, n) VALUES ($1, $2)', [key, 1])
      return { response_code: 201, response_body: { ok: true } }
    })
  }

  for (const prepared of [false, true]) {
    // ${prepared ? 'prepared' : 'default'} mode: initializeRequest is one flight, a one-statement
    // stage three (BEGIN + lock, the statement, UPDATE + COMMIT)
    test(`${prepared ? 'prepared' : 'default'} mode: initializeRequest is one flight, a one-statement stage three`, async () => {
      const s = await fx.connect({ url: rec.url(fx.name), maxConnections: 1, preparedStatements: prepared })
      await cyclesWith(s, `warm-${prepared}`) // a connection, its settings check, the statement's parameter types
      rec.clear()
      await s.initializeRequest(`rt-${prepared}`, 'POST', { a: 1 }, '/wire')
      assert.equal(flights(rec.messages()).length, 1, JSON.stringify(rec.messages()))
      rec.clear()
      await s.workStage(`rt-${prepared}`, async (tx) => {
        await tx.query('INSERT INTO side (k, n) VALUES ($1, $2)', [`rt-${prepared}`, 1])
        return { response_code: 201, response_body: { ok: true } }
      })
      const f = flights(rec.messages())
      assert.equal(f.length, 3, JSON.stringify(f))
      if (!prepared) {
        assert.match(parses(f[0])[0], /^BEGIN ISOLATION LEVEL SERIALIZABLE$/)
        assert.match(parses(f[0])[1], /FOR UPDATE NOWAIT$/)
        assert.deepStrictEqual(parses(f[1]), ['INSERT INTO side (k, n) VALUES ($1, $2)'])
        assert.match(parses(f[2])[0], /^UPDATE idempotency_key SET/)
        assert.equal(parses(f[2])[1], 'COMMIT')
      }
      for (const flight of f) {
        // Parse (when sent), Bind, Describe, Execute per statement; nothing else.
        assert.ok(flight.every((r) => 'PBDEC'.includes(r.type)), JSON.stringify(flight))
        if (!prepared) assert.ok(flight.every((r) => (r.type !== 'P' || r.name === '') && (r.type !== 'B' || r.statement === '')))
      }
      if (prepared) {
        // Warm: each statement is bound by its protocol-level name, never parsed again.
        assert.ok(f.flat().every((r) => r.type !== 'P'), JSON.stringify(f))
        assert.ok(f.flat().filter((r) => r.type === 'B').every((r) => r.statement.startsWith('medusa_ikey_')))
      }
      assert.deepStrictEqual(rec.violations({ prepared }), [])
      await s.close()
    })
  }

  async function cyclesWith(s, key) {
    const k = await s.initializeRequest(key, 'POST', { a: 1 }, '/wire')
    await s.workStage(k.idempotency_key, async (tx) => {
      await tx.query('INSERT INTO side (k, n) VALUES ($1, $2)', [key, 1])
      return { response_code: 201, response_body: { ok: true } }
    })
  }

  test('the recorder itself flags what the statement path must not send (so the suites run through it can fail)', async () => {
    const { Client } = require('pg')
    const c = new Client({ connectionString: rec.url(fx.name), application_name: 'medusa-idempotency-native-selftest' })
    await c.connect()
    rec.clear()
    await c.query('PREPARE p1 AS SELECT 1; EXECUTE p1; DEALLOCATE p1')
    await c.query({ name: 'named', text: 'SELECT $1::int AS n', values: [1] })
    await c.end()
    const bad = rec.violations()
    assert.ok(bad.some((r) => r.type === 'Q' && /PREPARE p1/.test(r.query)), JSON.stringify(bad))
    assert.ok(bad.some((r) => r.type === 'P' && r.name === 'named'), JSON.stringify(bad))
    assert.ok(!rec.violations({ prepared: true }).some((r) => r.type === 'P'), 'named statements are allowed in the prepared mode')
    rec.clear()
  })

  test('no simple Query and no SQL-level PREPARE / EXECUTE / DEALLOCATE anywhere in a full cycle', async () => {
    rec.clear()
    await cycle('full-1')
    await cycle('full-1') // the replay
    await service.retrieve('full-1')
    await service.lock('full-1')
    await service.update('full-1', { locked_at: null })
    assert.deepStrictEqual(rec.violations(), [])
    assert.ok(rec.messages().every((r) => r.type !== 'Q'))
  })
})

describe('stage timeouts cancel their statement on the server', { skip }, () => {
  let fx
  before(async () => {
    fx = await freshDb()
  })
  after(async () => {
    if (fx) await fx.cleanup()
  })

  // three stages stuck in pg_sleep(10) with a pool of 3: cancelled at once, and other keys are
  // served within the acquire timeout
  test('three stages stuck in pg_sleep(10), pool of 3: cancelled at once, other keys still served', async () => {
    const s = await fx.connect({ maxConnections: 3, stageTimeoutMs: 300, acquireTimeoutMs: 2000 })
    const keys = ['sleep-1', 'sleep-2', 'sleep-3']
    for (const k of keys) await s.create({ idempotency_key: k })
    const started = Date.now()
    const errs = await Promise.all(
      keys.map((k) => rejects(s.workStage(k, async (tx) => {
        await tx.query('SELECT pg_sleep(10)')
        return { recovery_point: 'never' }
      }))),
    )
    for (const e of errs) assert.equal(e.code, 'STAGE_TIMEOUT')
    // Unrelated keys get connections well within acquireTimeoutMs.
    for (let i = 0; i < 3; i++) {
      await s.create({ idempotency_key: `other-${i}` })
      await s.workStage(`other-${i}`, async (tx) => {
        await tx.query('SELECT 1')
        return { response_code: 200, response_body: {} }
      })
    }
    assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`)
    // No pg_sleep is left running on the server.
    let running
    for (let i = 0; i < 20; i++) {
      ;[{ running }] = await fx.db.query("SELECT count(*)::int AS running FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'")
      if (running === 0) break
      await new Promise((r) => setTimeout(r, 100))
    }
    assert.equal(running, 0)
    // The keys' leases were released: a new stage on each runs.
    for (const k of keys) {
      let done
      for (let i = 0; i < 20 && !done; i++) {
        done = await s
          .workStage(k, async () => ({ response_code: 200, response_body: {} }))
          .catch((e) => (e.code === 'IDEMPOTENCY_KEY_LOCKED' ? null : Promise.reject(e)))
        if (!done) await new Promise((r) => setTimeout(r, 100))
      }
      assert.equal(done.recovery_point, 'finished')
    }
    await s.close()
  })
})

describe('session state never outlives a stage', { skip }, () => {
  let fx
  let one
  before(async () => {
    fx = await freshDb()
    await fx.db.exec(`CREATE FUNCTION sneaky() RETURNS text LANGUAGE sql AS $$ SELECT set_config('DateStyle', 'SQL, DMY', false) $$`)
    one = await fx.connect({ maxConnections: 1 })
    await one.create({ idempotency_key: 'sess' })
  })
  after(async () => {
    if (fx) await fx.cleanup()
  })

  const probe = async () => {
    const [row] = await helpers.inStage(one, 'sess', (tx) =>
      tx.query("SELECT current_setting('statement_timeout') AS st, current_setting('transaction_read_only') AS ro, current_setting('DateStyle') AS ds, '2024-01-02 03:04:05+00'::timestamptz AS ts, pg_sleep(0.01)::text AS z"),
      'sess',
    )
    assert.deepStrictEqual(row, { st: '0', ro: 'off', ds: 'ISO, MDY', ts: new Date('2024-01-02T03:04:05Z'), z: '' })
  }

  for (const sql of [
    'SET statement_timeout = 1',
    'SET default_transaction_read_only = on',
    "SET DateStyle = 'SQL, DMY'",
    "SELECT set_config('statement_timeout', '1', false)",
    'RESET ALL',
    'DISCARD ALL',
    'LISTEN sess_channel',
    'CREATE TEMP TABLE leftover (a int)',
    'PREPARE leftover AS SELECT 1',
    'DECLARE held CURSOR WITH HOLD FOR SELECT 1',
    'SELECT pg_advisory_lock(42)',
    '/* a /* nested */ comment */ SET statement_timeout = 1',
    'SET LOCAL search_path = pg_catalog',
    'CREATE TEMP TABLE idempotency_key (LIKE public.idempotency_key) ON COMMIT DROP',
    'CREATE TABLE pg_temp.leftover2 (a int)',
    'SELECT 1 AS a INTO LOCAL TEMP leftover3',
  ]) {
    test(`${JSON.stringify(sql)} is refused, typed, and the next stage on the connection is unaffected`, async () => {
      const e = await rejects(helpers.inStage(one, 'sess', (tx) => tx.query(sql), 'sess'))
      assert.equal(e.code, 'INVALID_ARGUMENT', e.message)
      await probe()
    })
  }

  test('SET LOCAL and set_config(…, true) are allowed and end with the stage', async () => {
    const [row] = await helpers.inStage(one, 'sess', async (tx) => {
      await tx.query('SET LOCAL statement_timeout = 5000')
      await tx.query("SELECT set_config('application_name', 'in-stage', true)")
      return tx.query("SELECT current_setting('statement_timeout') AS st, current_setting('application_name') AS app")
    }, 'sess')
    assert.deepStrictEqual(row, { st: '5s', app: 'in-stage' })
    await probe()
  })

  test('a function that changes a reported setting for the session: the stage commits, and its connection is not reused', async () => {
    const [row] = await helpers.inStage(one, 'sess', (tx) => tx.query('SELECT sneaky() AS ds'), 'sess')
    assert.deepStrictEqual(row, { ds: 'SQL, DMY' })
    await probe()
  })
})
