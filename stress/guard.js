'use strict'
// The transaction-control guard, fuzzed differentially against PostgreSQL itself.
//
// Generated statements (transaction control and harmless statements, wrapped in every spelling
// the server's lexer accepts: nested comments, `--` comments ended by CR or LF, leading `;`s,
// vertical tabs, mixed case, E'' / U&'' / $$ strings, quoted identifiers) go two ways:
//
// - the oracle: node-postgres sends the statement in the extended protocol (as the service
//   does) inside `BEGIN; set_config(marker, true); SAVEPOINT s`, then asks for the marker: the
//   server ENDED the transaction if the marker is gone, else it is still IN the transaction
//   (possibly failed);
// - the service: a stage inserts a row, runs the statement through tx.query, then throws.
//
// Properties: whenever the server ends the transaction, the guard refused the statement
// (INVALID_ARGUMENT), and in every case the thrown stage left no row behind. The verdicts
// that disagree the other way (refused, yet the server would have stayed in the transaction:
// BEGIN's warning, a syntax error…) are counted, not failures.
const assert = require('node:assert/strict')
const { Client } = require('pg')
const { freshDatabase, figures, log } = require('./lib/common')

/** A small deterministic PRNG (mulberry32), seeded by FUZZ_SEED. */
function rng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const CORES = [
  'COMMIT', 'COMMIT WORK', 'COMMIT AND CHAIN', 'END', 'END TRANSACTION', 'ABORT', 'ROLLBACK', 'ROLLBACK WORK',
  'ROLLBACK AND NO CHAIN', 'BEGIN', 'START TRANSACTION', 'PREPARE TRANSACTION \'fz\'',
  'ROLLBACK TO SAVEPOINT s', 'ROLLBACK TO s', 'ROLLBACK WORK TO SAVEPOINT s', 'ROLLBACK TRANSACTION TO s',
  'RELEASE SAVEPOINT s', 'SAVEPOINT s2', 'SELECT 1', "SELECT 'COMMIT'", 'SELECT $$ COMMIT $$', "SELECT E'\\' COMMIT'",
  "SELECT U&'\\0041' AS \"COMMIT\"", 'SELECT /* COMMIT */ 1', 'VALUES (1)', '"COMMIT"', 'COMMIT_', 'ROLLBACKX',
]

const NOISE = [' ', '\t', '\n', '\r', '\f', '\v', '-- c\n', '-- c\r', '/* c */', '/* a /* b */ c */', '/**/', '/* * / */', ';', ' ; ', '/* -- */', '--\n']

function spell(word, r) {
  return [...word].map((c) => (r() < 0.5 ? c.toLowerCase() : c.toUpperCase())).join('')
}

function generate(r) {
  const pick = (xs) => xs[Math.floor(r() * xs.length)]
  let core = pick(CORES)
  if (r() < 0.5) core = core.replace(/[A-Z]{3,}/g, (w) => spell(w, r))
  // Noise between the first two words.
  if (r() < 0.3) core = core.replace(' ', pick(NOISE.filter((n) => n !== ';' && n !== ' ; ')) || ' ')
  let pre = ''
  for (let i = Math.floor(r() * 4); i > 0; i--) pre += pick(NOISE)
  let post = ''
  for (let i = Math.floor(r() * 3); i > 0; i--) post += pick(NOISE)
  if (r() < 0.1) post += '; COMMIT'
  return pre + core + post
}

async function oracle(url, sql) {
  const c = new Client({ connectionString: url })
  c.on('error', () => {})
  await c.connect()
  try {
    await c.query('BEGIN')
    await c.query("SELECT set_config('application_name', 'fuzz_marker', true)")
    await c.query('SAVEPOINT s')
    let error = null
    await c.query({ text: sql, values: [], queryMode: 'extended' }).catch((e) => (error = e.code))
    const state = await c.query("SELECT current_setting('application_name') AS a").then(
      ({ rows }) => (rows[0].a === 'fuzz_marker' ? 'in' : 'ended'),
      (e) => (e.code === '25P02' ? 'in' : 'ended'),
    )
    await c.query('ROLLBACK').catch(() => {})
    await c.query("ROLLBACK PREPARED 'fz'").catch(() => {})
    return { state, error }
  } finally {
    await c.end().catch(() => {})
  }
}

async function main({ short = false } = {}) {
  const N = short ? 150 : 1500
  const seed = Number(process.env.FUZZ_SEED || Date.now() % 1e9)
  const r = rng(seed)
  const fx = await freshDatabase({ setupSql: ['CREATE TABLE fz (sql text)'] })
  const service = await fx.connect({ maxConnections: 2 })
  const counts = { statements: N, seed, ended: 0, refused: 0, refusedButStayed: 0, allowedAndStayed: 0 }
  const failures = []
  try {
    for (let i = 0; i < N; i++) {
      const sql = generate(r)
      const key = `fz-${i}`
      await service.create({ idempotency_key: key })
      const server = await oracle(fx.url, sql)
      let refused = false
      const boom = new Error('boom')
      const e = await service
        .workStage(key, async (tx) => {
          await tx.query('INSERT INTO fz (sql) VALUES ($1)', [sql])
          await tx.query(sql).catch((err) => {
            if (err.code === 'INVALID_ARGUMENT') refused = true
          })
          throw boom
        })
        .then(() => null, (err) => err)
      const [{ n }] = (await fx.pg.query('SELECT count(*)::int AS n FROM fz WHERE sql = $1', [sql])).rows
      if (server.state === 'ended') counts.ended++
      if (refused) counts.refused++
      if (refused && server.state === 'in') counts.refusedButStayed++
      if (!refused && server.state === 'in') counts.allowedAndStayed++
      if (server.state === 'ended' && !refused) failures.push({ sql, why: 'the server ended the transaction and the guard allowed it' })
      if (n !== 0) failures.push({ sql, why: `a thrown stage left ${n} row(s) committed` })
      if (e !== boom && e?.code !== 'INVALID_ARGUMENT' && !refused) {
        // The stage failed for another reason (the statement's own error): fine, it rolled back.
      }
      await fx.pg.query('DELETE FROM fz')
    }
    log(`guard fuzz: ${JSON.stringify(counts)}`)
    figures(counts)
    assert.deepStrictEqual(failures.slice(0, 10), [], `seed ${seed}`)
    assert.ok(counts.ended > 0 && counts.allowedAndStayed > 0, 'the generator reaches both verdicts')
    return counts
  } finally {
    await fx.drop()
  }
}

module.exports = { main }
if (require.main === module) require('./lib/child').runScenario(__filename)
