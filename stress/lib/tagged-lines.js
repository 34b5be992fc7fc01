'use strict'
// The orchestrators' side of the worker protocol: a worker prints `TAG {json}` lines on stdout;
// anything else on stdout (a stray log line) is not one of ours and is skipped.

/** Call `onLine(tag, obj)` for every `TAG {json}` line `stream` carries. */
function onTaggedLines(stream, onLine) {
  let buf = ''
  stream.on('data', (d) => {
    buf += d
    let nl
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      const sp = line.indexOf(' ')
      let obj
      try {
        obj = JSON.parse(line.slice(sp + 1))
      } catch {
        continue
      }
      onLine(line.slice(0, sp), obj)
    }
  })
}

module.exports = { onTaggedLines }
