'use strict'
// A counting TCP proxy in front of PostgreSQL, for the statement probe only (never in a timed
// run). It reads the v3 wire protocol in both directions and counts, per phase:
//   roundTrips  ReadyForQuery ('Z') messages from the server: one per simple Query or per
//               extended-protocol Sync, i.e. one per client wait;
//   statements  CommandComplete ('C') messages: statements the server finished;
//   parses      Parse ('P') messages from the client: statements the server had to parse;
//   simple      simple Query ('Q') messages (each may carry several statements).
// Startup is skipped: SSLRequest / GSSENCRequest get their one-byte answer passed through, and
// counting starts at the first typed message.
const net = require('node:net')

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104

class Counters {
  constructor() {
    this.roundTrips = 0
    this.statements = 0
    this.parses = 0
    this.simple = 0
    this.tls = false
    this.trace = null // set to [] to record message types: '>X' client, '<X' server
  }
  snapshot() {
    return { roundTrips: this.roundTrips, statements: this.statements, parses: this.parses, simple: this.simple }
  }
}

/** Walk a byte stream of typed messages, calling `onMessage(type)` for each complete one. */
function typedStream(onMessage) {
  let buf = Buffer.alloc(0)
  return (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk
    let off = 0
    while (buf.length - off >= 5) {
      const len = buf.readInt32BE(off + 1)
      if (buf.length - off < 1 + len) break
      onMessage(String.fromCharCode(buf[off]))
      off += 1 + len
    }
    buf = buf.subarray(off)
  }
}

/** Start the proxy on 127.0.0.1 (random port) in front of `target` ({ host, port }). */
async function startProxy(target) {
  const counters = new Counters()
  const sockets = new Set()
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host)
    sockets.add(client)
    sockets.add(upstream)
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    let pendingOneByte = 0 // answers owed to SSL/GSS requests
    let clientStartup = true
    let clientBuf = Buffer.alloc(0)
    const fromClientTyped = typedStream((t) => {
      counters.trace?.push('>' + t)
      if (t === 'P') counters.parses++
      else if (t === 'Q') counters.simple++
    })
    const fromServerTyped = typedStream((t) => {
      counters.trace?.push('<' + t)
      if (t === 'Z') counters.roundTrips++
      else if (t === 'C') counters.statements++
    })
    client.on('data', (chunk) => {
      upstream.write(chunk)
      if (!clientStartup) return fromClientTyped(chunk)
      clientBuf = clientBuf.length ? Buffer.concat([clientBuf, chunk]) : chunk
      while (clientStartup && clientBuf.length >= 8) {
        const len = clientBuf.readInt32BE(0)
        if (clientBuf.length < len) return
        const code = clientBuf.readInt32BE(4)
        clientBuf = clientBuf.subarray(len)
        if (code === SSL_REQUEST || code === GSSENC_REQUEST) pendingOneByte++
        else clientStartup = false // StartupMessage (or CancelRequest): typed from here on
      }
      if (!clientStartup && clientBuf.length) {
        const rest = clientBuf
        clientBuf = Buffer.alloc(0)
        fromClientTyped(rest)
      }
    })
    upstream.on('data', (chunk) => {
      client.write(chunk)
      while (pendingOneByte > 0 && chunk.length > 0) {
        if (chunk[0] === 0x53 /* 'S' */) counters.tls = true // encrypted: counts would be wrong
        pendingOneByte--
        chunk = chunk.subarray(1)
      }
      if (chunk.length) fromServerTyped(chunk)
    })
    const close = () => {
      client.destroy()
      upstream.destroy()
      sockets.delete(client)
      sockets.delete(upstream)
    }
    client.on('error', close)
    upstream.on('error', close)
    client.on('close', close)
    upstream.on('close', close)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: server.address().port,
    counters,
    async close() {
      for (const s of sockets) s.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

module.exports = { startProxy }
