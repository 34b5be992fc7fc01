'use strict'
// A recording TCP proxy in front of PostgreSQL: it parses every frontend message a client
// sends (startup, then typed messages), forwards the bytes unchanged, and records them, so a
// test can say exactly what went on the wire (not a mock: the real server answers).
//
//   const { startRecorder } = require('../test-support/wire-recorder')
//   const rec = await startRecorder({ port: 5432 })     // in front of 127.0.0.1:5432
//   … IdempotencyKeyService.connect(rec.url(database)) …
//   rec.messages()   // [{ conn, type: 'P', name: '', query: 'SELECT …' }, { type: 'S' } …]
//   rec.violations({ prepared })  // what the statement path must never send (see below)
//   await rec.stop()
//
// The proxy answers an SSLRequest itself with 'N' (the client goes on in plain TCP, which it
// accepts under sslmode prefer), so every later message can be read. A CancelRequest is
// recorded and forwarded as it is.
const net = require('node:net')

const SSL_REQUEST = 80877103
const CANCEL_REQUEST = 80877102
const GSSENC_REQUEST = 80877104

function cstr(buf, at) {
  const end = buf.indexOf(0, at)
  return [buf.toString('utf8', at, end), end + 1]
}

/** One frontend message's record. */
function describe(type, body) {
  const m = { type }
  if (type === 'P') {
    const [name, at] = cstr(body, 0)
    const [query] = cstr(body, at)
    m.name = name
    m.query = query
  } else if (type === 'B') {
    const [portal, at] = cstr(body, 0)
    const [statement] = cstr(body, at)
    m.portal = portal
    m.statement = statement
  } else if (type === 'Q') {
    m.query = cstr(body, 0)[0]
  } else if (type === 'C' || type === 'D') {
    m.kind = String.fromCharCode(body[0])
    m.name = cstr(body, 1)[0]
  }
  return m
}

async function startRecorder({ host = '127.0.0.1', port = 5432 } = {}) {
  const records = []
  const sockets = new Set()
  let connCount = 0
  const server = net.createServer((client) => {
    const conn = ++connCount
    sockets.add(client)
    client.setNoDelay(true)
    let service = false
    let upstream = null
    let started = false
    let pending = Buffer.alloc(0)
    const queued = []
    const forward = (chunk) => (upstream ? upstream.write(chunk) : queued.push(chunk))
    const openUpstream = () => {
      upstream = net.connect({ host, port })
      upstream.setNoDelay(true)
      sockets.add(upstream)
      upstream.on('data', (d) => client.write(d))
      upstream.on('close', () => client.destroy())
      upstream.on('error', () => client.destroy())
      for (const q of queued.splice(0)) upstream.write(q)
    }
    client.on('data', (chunk) => {
      pending = Buffer.concat([pending, chunk])
      for (;;) {
        if (!started) {
          if (pending.length < 8) return
          const len = pending.readInt32BE(0)
          if (pending.length < len) return
          const code = pending.readInt32BE(4)
          const msg = pending.subarray(0, len)
          pending = pending.subarray(len)
          if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
            client.write('N')
            continue
          }
          started = true
          if (!upstream) openUpstream()
          if (code === CANCEL_REQUEST) {
            records.push({ conn, type: 'cancel', pid: msg.readInt32BE(8) })
          } else {
            const params = {}
            let at = 8
            while (at < len - 1) {
              const [k, next] = cstr(msg, at)
              if (!k) break
              const [v, after] = cstr(msg, next)
              params[k] = v
              at = after
            }
            service = /^medusa-idempotency-native/.test(params.application_name || '')
            records.push({ conn, type: 'startup', params, service })
          }
          forward(msg)
          continue
        }
        if (pending.length < 5) return
        const len = pending.readInt32BE(1)
        if (pending.length < 1 + len) return
        const type = String.fromCharCode(pending[0])
        const msg = pending.subarray(0, 1 + len)
        pending = pending.subarray(1 + len)
        records.push({ conn, service, ...describe(type, msg.subarray(5)) })
        forward(msg)
      }
    })
    client.on('close', () => upstream?.destroy())
    client.on('error', () => upstream?.destroy())
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const listenPort = server.address().port
  return {
    port: listenPort,
    url: (database, user = 'postgres') => `postgres://${user}@127.0.0.1:${listenPort}/${database}`,
    messages: () => records.slice(),
    clear: () => records.splice(0),
    /**
     * What the statement path must never send, on the service's own connections (its startup
     * says application_name medusa-idempotency-native…; a test's node-postgres client through
     * the same proxy is not judged): SQL-level PREPARE / EXECUTE / DEALLOCATE, any simple
     * Query but the migration script, and (unless `prepared`) a named statement.
     */
    violations({ prepared = false } = {}) {
      const out = []
      for (const r of records) {
        if (!r.service) continue
        if (r.type === 'Q' && !/^BEGIN; SELECT pg_advisory_xact_lock\(/.test(r.query)) out.push(r)
        if (r.type === 'P' && /^\s*(PREPARE|EXECUTE|DEALLOCATE)\b/i.test(r.query)) out.push(r)
        if (!prepared && ((r.type === 'P' && r.name !== '') || (r.type === 'B' && r.statement !== ''))) out.push(r)
      }
      return out
    },
    async stop() {
      for (const s of sockets) s.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

module.exports = { startRecorder }
