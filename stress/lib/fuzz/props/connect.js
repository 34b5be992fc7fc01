'use strict'
// Properties: connect(urlOrOptions) and migrate().
const { types } = require('node:util')
const { IdempotencyKeyService } = require('../addon')
const { config, AVOID } = require('../config')
const { fc, V, describe, wrap, special, specials, odd, anyString, GETTER_THROWS, throwingGetter, throwingProxy } = require('../values')
const { fail, judge, showOut } = require('../oracle')
const { hang, call, fresh } = require('../cases')
const { ctx } = require('../context')
const { nullish, optNumArb, isolationArb, optionsInvalid } = require('../slots')

const P = {}

/**
 * Pool sizes. Once a run has shown that a huge maxConnections aborts or exhausts memory
 * ('huge-pool'), later child processes keep it under 10^6 so the rest is still explored.
 */
const poolSizeArb = optNumArb.filter((x) => !(AVOID.has('huge-pool') && typeof x.v === 'number' && x.v > 1e6))

/** connect(urlOrOptions): URLs and option objects with bad fields. */
P.connect = () => {
  const BAD_URLS = [
    'postgres://postgres@127.0.0.1:1/fz',
    'postgres://postgres@127.0.0.1:5432/fz_no_such_database',
    'postgres://fz_no_such_role@127.0.0.1:5432/postgres',
    'postgres://',
    'postgres://:@/',
    'postgresql://[::1',
    'postgres://postgres@127.0.0.1:99999/fz',
    'postgres://postgres@127.0.0.1:5432/fz?sslmode=require',
    'postgres://postgres@127.0.0.1:5432/fz?sslmode=bogus',
    `postgres://postgres@127.0.0.1:5432/${'d'.repeat(4096)}`,
    'postgres://postgres@127.0.0.1:5432/a\u0000b',
    'postgres://postgres@127.0.0.1:5432/postgres?application_name=%FF%FE',
    'postgres://postgres@127.0.0.1:5432/postgres?options=-c%20statement_timeout%3D1',
    'postgres://u:p%ZZ@127.0.0.1:5432/x',
    'sqlite:',
    'sqlite://',
    'sqlite::memory:',
    'sqlite://:memory:',
    'sqlite:///nonexistent_dir_fz/sub/x.db',
    'sqlite://./fz_ro.db?mode=ro',
    'sqlite://./fz.db?mode=bogus',
    'sqlite://./fz_a\u0000b.db',
    `sqlite://./${'p'.repeat(5000)}.db`,
    'sqlite://./fz_dir_does_not_exist/x.db',
    'sqlite://./fz_shared.db?mode=memory&cache=shared',
    'sqlite://./fz_rel.db',
    'mysql://root@127.0.0.1/x',
    'http://127.0.0.1/',
    'not a url',
    '',
    '\uD800',
  ]
  const urlArb = fc.oneof(
    { weight: 3, arbitrary: fc.constant(new V('<the run database URL>', config.url)) },
    { weight: 4, arbitrary: wrap(fc.constantFrom(...BAD_URLS)) },
    { weight: 1, arbitrary: anyString },
    { weight: 2, arbitrary: odd },
  )
  const optionsArb = fc
    .record({ url: urlArb, maxConnections: poolSizeArb, isolationLevel: isolationArb, lockTimeoutMs: optNumArb, maxRetries: optNumArb, stageTimeoutMs: optNumArb, acquireTimeoutMs: optNumArb, busyTimeoutMs: optNumArb }, { requiredKeys: [] })
    .map((m) => {
      const o = {}
      for (const [k, x] of Object.entries(m)) o[k] = x.v
      return new V(`{ ${Object.entries(m).map(([k, x]) => `${k}: ${x.d}`).join(', ')} }`, o)
    })
  const argArb = fc.oneof(
    { weight: 5, arbitrary: optionsArb },
    { weight: 2, arbitrary: urlArb },
    { weight: 1, arbitrary: odd.filter((x) => typeof x.v !== 'string') },
    {
      weight: 1,
      arbitrary: specials([
        special('{ url: <run url>, getter maxConnections throws }', () => Object.defineProperty({ url: config.url }, 'maxConnections', { get: () => { throw GETTER_THROWS } })),
        special('{ getter url throws }', () => throwingGetter('url')),
        special('Proxy whose traps throw', () => throwingProxy()),
        special('options inheriting url from the prototype', () => Object.create({ url: config.url })),
        special('[url]', () => [config.url]),
      ]),
    },
    { weight: 1, arbitrary: fc.constant(new V('no argument', undefined)) },
  )
  const followArb = fc.constantFrom('retrieve', 'workStage', 'close-then-retrieve', 'migrate-fresh-sqlite')
  return fc.asyncProperty(argArb, followArb, async (arg, follow) => {
    const a = arg.v
    let exp = {}
    try {
      if (['number', 'boolean', 'bigint', 'symbol', 'function'].includes(typeof a)) exp = { invalid: true }
      else if (a !== null && typeof a === 'object' && !types.isProxy(a) && !Array.isArray(a)) {
        if (optionsInvalid(a)) exp = { invalid: true }
        else if (a.url === config.url && (nullish(a.acquireTimeoutMs) || a.acquireTimeoutMs >= 2000) && (nullish(a.isolationLevel) || ['SERIALIZABLE', 'REPEATABLE READ', 'READ COMMITTED'].includes(a.isolationLevel))) exp = { mustSucceed: true }
      } else if (a === config.url) exp = { mustSucceed: true }
    } catch {
      exp = {} // a getter of the options threw: any typed outcome
    }
    const o = await call(() => (a === undefined && arg.d === 'no argument' ? IdempotencyKeyService.connect() : IdempotencyKeyService.connect(a)), 'connect')
    const rss = process.memoryUsage().rss / 1048576
    // A pool sized up front by maxConnections: report it, and let the parent start a lean child.
    if (rss > 1024) hang(`connect() left the process at ${Math.round(rss)} MB RSS (${showOut(o)}): memory sized by maxConnections up front`, 'huge-pool', 'memory')
    judge(o, exp)
    if (o.k !== 'ok') return
    const svc = o.v
    if (!(svc instanceof IdempotencyKeyService)) fail(`connect resolved to ${describe(svc)}`)
    try {
      if (follow === 'retrieve') judge(await call(() => svc.retrieve(fresh('absent')), 'retrieve on a new service'), { errors: [['not_found', 'IDEMPOTENCY_KEY_NOT_FOUND'], ['database_error', null], ['unexpected_state', null]] })
      if (follow === 'workStage') {
        let called = false
        const s = await call(() => svc.workStage(fresh('absent'), () => ((called = true), { recovery_point: 'x' })), 'workStage on a new service')
        judge(s, {})
        if (s.k === 'ok') fail('a stage on an absent key succeeded')
        if (called) fail('the callback ran for an absent key')
      }
      if (follow === 'close-then-retrieve') {
        judge(await call(() => svc.close(), 'close'), {})
        judge(await call(() => svc.retrieve('x'), 'retrieve after close'), { allowSuccess: false, errors: [['database_error', null], ['unexpected_state', null]] })
      }
      if (follow === 'migrate-fresh-sqlite' && typeof a === 'string' && a.startsWith('sqlite:')) {
        judge(await call(() => svc.migrate(), 'migrate'), {})
      }
    } finally {
      await call(() => svc.close(), 'close')
    }
  })
}

/** migrate(...junk): a no-op on a migrated database, whatever it is passed. */
P.migrate = () =>
  fc.asyncProperty(fc.array(odd, { maxLength: 2 }), async (args) => {
    const o = await call(() => ctx.service.migrate(...args.map((x) => x.v)), 'migrate')
    judge(o, { mustSucceed: true, onSuccess: (v) => v === undefined || fail(`migrate resolved ${describe(v)}`) })
  })

module.exports = P
