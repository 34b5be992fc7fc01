#!/usr/bin/env node
'use strict'
// The operator's command line: `npx medusa-idempotency-native <command>`. See usage() and the
// README's "Operator command line". Exit codes: 0 done, 1 database or service failure,
// 2 bad usage (unknown command or option, bad duration, no database named), 3 no such key,
// 4 refused (release of a key a live stage holds).

const { IdempotencyKeyService } = require('./index.js')

const EXIT = { ok: 0, failure: 1, usage: 2, notFound: 3, refused: 4 }

function usage() {
  return `Usage: medusa-idempotency-native <command> [options]

Commands:
  inspect <key>                      the key's row, its lease state in words, whether a
                                     handler accepted it, the completer's attempts
  list --in-flight                   unfinished keys a request holds right now
  list --abandoned [--idle 5m]       unfinished keys with no progress for --idle (default 5m)
  release <key>                      end the lease of a request known to be dead
                                     (refused while a stage holds the key's row)
  reap --older-than <duration>       delete keys created before then (e.g. 24h, 7d)
  migrate                            create the table(s) if missing

Options:
  --url <url>            postgres://… or sqlite://…  (default: DATABASE_URL)
  --tenant <id>          the keys of one tenant (forTenant)
  --lock-timeout <dur>   the application's lockTimeoutMs (default 1s), to judge leases
  --limit <n>            list: at most n keys (default 100)
  --json                 machine-readable output on stdout
  -h, --help             this text

Durations: 500ms, 30s, 5m, 24h, 7d.
Exit codes: 0 done, 1 database/service failure, 2 bad usage, 3 no such key, 4 refused.`
}

class UsageError extends Error {
  constructor(message) {
    super(message)
    this.code = 'USAGE'
  }
}

const UNITS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** `5m` → 300000. */
function parseDuration(text, option) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(String(text ?? '').trim())
  if (!m) throw new UsageError(`${option}: bad duration ${JSON.stringify(text ?? '')} (use e.g. 500ms, 30s, 5m, 24h, 7d)`)
  const ms = Math.round(Number(m[1]) * UNITS[m[2]])
  if (!Number.isSafeInteger(ms) || ms > 2 ** 31 * 1000) throw new UsageError(`${option}: duration ${text} is too long`)
  return ms
}

function parseArgs(argv) {
  const out = { positional: [], json: false, inFlight: false, abandoned: false }
  const valued = { '--url': 'url', '--tenant': 'tenant', '--lock-timeout': 'lockTimeout', '--limit': 'limit', '--idle': 'idle', '--older-than': 'olderThan' }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '-h' || a === '--help') out.help = true
    else if (a === '--json') out.json = true
    else if (a === '--in-flight') out.inFlight = true
    else if (a === '--abandoned') out.abandoned = true
    else if (a.startsWith('--')) {
      const [name, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined]
      if (!(name in valued)) throw new UsageError(`unknown option ${name}`)
      const value = inline ?? argv[++i]
      if (value === undefined) throw new UsageError(`${name} needs a value`)
      out[valued[name]] = value
    } else out.positional.push(a)
  }
  return out
}

function ago(ms) {
  const s = Math.abs(ms) / 1000
  if (s < 1) return `${Math.round(Math.abs(ms))} ms`
  if (s < 120) return `${s.toFixed(1)} s`
  if (s < 7200) return `${(s / 60).toFixed(1)} min`
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`
  return `${(s / 86400).toFixed(1)} d`
}

/** The lease state of a row, in words and as a tag. */
function leaseState(key, leaseMs, now = Date.now()) {
  if (key.recovery_point === 'finished') return { lease: 'finished', words: `finished (response ${key.response_code ?? 'none'}); replayed to every retry, never leased` }
  if (!key.locked_at) return { lease: 'free', words: `free: no request holds it; next request resumes at "${key.recovery_point}"` }
  const held = now - key.locked_at.getTime()
  if (held < leaseMs) return { lease: 'leased', words: `leased: a request took or refreshed it ${ago(held)} ago; it expires in ${ago(leaseMs - held)} unless a stage commits` }
  return { lease: 'expired', words: `lease expired ${ago(held - leaseMs)} ago: no request has made progress for ${ago(held)}; the next request resumes at "${key.recovery_point}"` }
}

function table(rows, columns) {
  if (rows.length === 0) return '(none)'
  const cells = rows.map((r) => columns.map(([, get]) => String(get(r) ?? '')))
  const widths = columns.map(([title], i) => Math.max(title.length, ...cells.map((c) => c[i].length)))
  const line = (values) => values.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd()
  return [line(columns.map(([t]) => t)), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n')
}

const iso = (d) => (d instanceof Date ? d.toISOString() : d ?? '')

function keyJson(k, leaseMs) {
  const { lease } = leaseState(k, leaseMs)
  return { ...k, created_at: iso(k.created_at), locked_at: k.locked_at ? iso(k.locked_at) : null, lease }
}

/** `inspect`'s records with their Dates as ISO strings, for --json. */
function datesAsIso(record) {
  if (record == null) return null
  return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, v instanceof Date ? iso(v) : v]))
}

function acceptedWords(accepted, key) {
  // The stage that finishes a key drops its acceptance record: nothing is left to say then.
  if (accepted == null && key.recovery_point === 'finished') return 'no record (none is kept once a key is finished)'
  if (accepted == null) return 'no: no handler took the request (no completer runs it)'
  return `${accepted.route ?? '(no route named)'} at ${iso(accepted.accepted_at)}`
}

function completerWords(c) {
  if (c == null) return 'no attempts'
  const parts = [`${c.attempts} attempt${c.attempts === 1 ? '' : 's'}, the last at ${iso(c.last_attempt_at)}`]
  if (c.last_error_code != null || c.last_error != null) parts.push(`last error: ${[c.last_error_code, c.last_error].filter((x) => x != null).join(': ')}`)
  if (c.gave_up_at != null) parts.push(`gave up at ${iso(c.gave_up_at)}`)
  else if (c.next_attempt_at != null) parts.push(`next attempt after ${iso(c.next_attempt_at)}`)
  return parts.join('; ')
}

/** A spinner on stderr while `promise` runs, when stderr is a terminal. */
async function withProgress(label, promise, json) {
  if (json || !process.stderr.isTTY) return promise
  const frames = ['|', '/', '-', '\\']
  const started = Date.now()
  let i = 0
  const timer = setInterval(() => process.stderr.write(`\r${frames[i++ % 4]} ${label} ${ago(Date.now() - started)}`), 100)
  try {
    return await promise
  } finally {
    clearInterval(timer)
    process.stderr.write('\r\x1b[K')
  }
}

async function main(argv, out) {
  const args = parseArgs(argv)
  if (args.help || args.positional.length === 0) {
    out.log(usage())
    return args.help ? EXIT.ok : EXIT.usage
  }
  const [command, ...rest] = args.positional
  const commands = ['inspect', 'list', 'release', 'reap', 'migrate']
  if (!commands.includes(command)) throw new UsageError(`unknown command ${JSON.stringify(command)} (one of ${commands.join(', ')})`)
  const needsKey = command === 'inspect' || command === 'release'
  if (needsKey && rest.length !== 1) throw new UsageError(`${command} takes one key`)
  if (!needsKey && rest.length > 0) throw new UsageError(`${command} takes no argument (got ${rest.join(' ')})`)
  if (command === 'list' && args.inFlight === args.abandoned) throw new UsageError('list needs --in-flight or --abandoned')
  if (command === 'reap' && args.olderThan === undefined) throw new UsageError('reap needs --older-than <duration> (e.g. 24h)')
  const leaseMs = args.lockTimeout === undefined ? 1000 : parseDuration(args.lockTimeout, '--lock-timeout')
  const idleMs = args.idle === undefined ? 5 * 60_000 : parseDuration(args.idle, '--idle')
  const olderThanMs = args.olderThan === undefined ? undefined : parseDuration(args.olderThan, '--older-than')
  let limit = 100
  if (args.limit !== undefined) {
    limit = Number(args.limit)
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError(`--limit: ${args.limit} is not a whole number from 1 to 10000`)
  }
  const url = args.url ?? process.env.DATABASE_URL
  if (!url) throw new UsageError('no database: pass --url <url> or set DATABASE_URL')

  const root = await IdempotencyKeyService.connect({ url, maxConnections: 2, lockTimeoutMs: Math.max(1, leaseMs), acquireTimeoutMs: 5000, busyTimeoutMs: 2000 })
  try {
    const service = args.tenant === undefined ? root : root.forTenant(args.tenant)
    return await run(command, service, { key: rest[0], args, leaseMs, idleMs, olderThanMs, limit }, out)
  } finally {
    await root.close()
  }
}

async function run(command, service, { key, args, leaseMs, idleMs, olderThanMs, limit }, out) {
  const print = (json, text) => out.log(args.json ? JSON.stringify(json, null, 2) : text)
  if (command === 'migrate') {
    await service.migrate()
    print({ migrated: true }, 'migrated: the idempotency tables are in place')
    return EXIT.ok
  }
  if (command === 'inspect') {
    const { key: k, accepted, completer } = await service.inspect(key)
    const { words } = leaseState(k, leaseMs)
    print({ ...keyJson(k, leaseMs), accepted: datesAsIso(accepted), completer: datesAsIso(completer) }, [
      table(
        [
          ['key', k.idempotency_key],
          ['id', k.id],
          ['request', `${k.request_method ?? ''} ${k.request_path ?? ''}`.trim()],
          ['recovery point', k.recovery_point],
          ['created', `${iso(k.created_at)} (${ago(Date.now() - k.created_at.getTime())} ago)`],
          ['locked at', k.locked_at ? iso(k.locked_at) : 'never / released'],
          ['lease', words],
          ['response', k.response_code == null ? '' : `${k.response_code} ${JSON.stringify(k.response_body)}`],
          ['request params', JSON.stringify(k.request_params)],
          ['accepted', acceptedWords(accepted, k)],
          ['completer', completerWords(completer)],
        ],
        [['field', (r) => r[0]], ['value', (r) => r[1]]],
      ),
    ].join('\n'))
    return EXIT.ok
  }
  if (command === 'list') {
    // Unfinished keys, least recent progress first (listAbandoned), sorted by lease state here.
    const now = Date.now()
    const unfinished = await service.listAbandoned({ idleMs: args.abandoned ? idleMs : 1, limit: args.abandoned ? limit : 10_000 })
    const rows = args.abandoned
      ? unfinished.filter((k) => leaseState(k, leaseMs, now).lease !== 'leased')
      : unfinished.filter((k) => leaseState(k, leaseMs, now).lease === 'leased').slice(-limit)
    print(
      rows.map((k) => keyJson(k, leaseMs)),
      table(rows, [
        ['key', (k) => k.idempotency_key],
        ['request', (k) => `${k.request_method ?? ''} ${k.request_path ?? ''}`.trim()],
        ['recovery point', (k) => k.recovery_point],
        ['created', (k) => iso(k.created_at)],
        ['locked at', (k) => (k.locked_at ? iso(k.locked_at) : '')],
        ['lease', (k) => leaseState(k, leaseMs, now).lease],
      ]),
    )
    return EXIT.ok
  }
  if (command === 'release') {
    const k = await service.retrieve(key)
    if (k.recovery_point === 'finished' || !k.locked_at) {
      print({ key: k.idempotency_key, released: false, lease: leaseState(k, leaseMs).lease }, `nothing to release: ${leaseState(k, leaseMs).words}`)
      return EXIT.ok
    }
    // A stage that claims the row without waiting (refused at once while a live stage holds it)
    // and fails on purpose: rolled back, it releases the request lease as a failed stage does.
    const probe = new Error('released by the operator')
    try {
      await service.workStage(key, async () => {
        throw probe
      }, { recoveryPoint: k.recovery_point })
    } catch (e) {
      if (e !== probe) {
        if (e?.code === 'IDEMPOTENCY_KEY_LOCKED' || e?.code === 'DATABASE_BUSY' || e?.code === 'IDEMPOTENCY_KEY_STALE') {
          const refused = Object.assign(new Error(`refused: a live stage holds ${key} (${e.code}: ${e.message}); its request is not dead`), { code: e.code, type: e.type, exit: EXIT.refused })
          throw refused
        }
        throw e
      }
    }
    const after = await service.retrieve(key)
    print({ key: after.idempotency_key, released: true, recovery_point: after.recovery_point }, `released: ${after.idempotency_key}; the next request resumes at "${after.recovery_point}"`)
    return EXIT.ok
  }
  // reap
  const removed = await withProgress('reaping', service.reap({ olderThanMs }), args.json)
  print({ removed, olderThanMs }, `reaped: ${removed} key${removed === 1 ? '' : 's'} created more than ${ago(olderThanMs)} ago`)
  return EXIT.ok
}

function exitFor(e) {
  if (e instanceof UsageError) return EXIT.usage
  if (typeof e?.exit === 'number') return e.exit
  if (e?.code === 'IDEMPOTENCY_KEY_NOT_FOUND') return EXIT.notFound
  if (e?.code === 'INVALID_ARGUMENT') return EXIT.usage
  return EXIT.failure
}

if (require.main === module) {
  const json = process.argv.includes('--json')
  main(process.argv.slice(2), console).then(
    (code) => {
      process.exitCode = code
    },
    (e) => {
      const error = { code: e?.code ?? null, type: e?.type ?? null, message: String(e?.message ?? e) }
      if (json) console.error(JSON.stringify({ error }))
      else console.error(`medusa-idempotency-native: ${error.message}${error.code && error.code !== 'USAGE' ? ` (${error.code})` : ''}${e instanceof UsageError ? '\nRun with --help for usage.' : ''}`)
      process.exitCode = exitFor(e)
    },
  )
}

module.exports = { main, parseDuration, leaseState, EXIT }
