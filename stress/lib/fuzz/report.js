'use strict'
// What the fuzz child tells its parent: `TAG {json}` lines on stdout (stress/lib/tagged-lines.js
// reads them), and the signature that reports one failure once.
const fs = require('node:fs')
const { isFinding, showErr } = require('./oracle')

/** One protocol line, written synchronously so the last one survives an abort. */
const out = (tag, obj) => fs.writeSync(1, `${tag} ${JSON.stringify(obj)}\n`)

/** A failure's signature: its message without values, so one bug is reported once. */
function signature(e) {
  const msg = isFinding(e) ? e.message : `harness error: ${showErr(e)}`
  let t = msg.replace(/"(?:[^"\\]|\\.)*"/g, 'S').replace(/'(?:[^'\\]|\\.)*'/g, 'S').replace(/<[^>]*>/g, 'X')
  for (let prev = null; prev !== t; ) {
    prev = t
    t = t.replace(/\{[^{}]*\}/g, 'O').replace(/\[[^\[\]]*\]/g, 'A')
  }
  // Truncated values leave unbalanced brackets: cut at the first one.
  t = t.replace(/[{\[].*$/, 'O')
  return t.replace(/-?\d+(\.\d+)?(e[+-]?\d+)?n?/gi, 'N').replace(/\s+/g, ' ').slice(0, 90)
}

function safeStack(e) {
  try {
    return String(e && e.stack).split('\n').slice(1, 4).join(' | ')
  } catch {
    return ''
  }
}

module.exports = { out, signature, safeStack }
