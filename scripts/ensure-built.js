#!/usr/bin/env node
// Build the addon (debug profile) when it is missing or older than the Rust sources, so
// `npm run demo` and `npm run stress` work on a fresh clone right after `npm ci`.
const { execSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')
const lib = path.join(root, 'lib') // where `npm run build:debug` puts the addon, beside native.js
const addon = fs.readdirSync(lib).find((f) => f.endsWith('.node'))

function newest(dir) {
  let t = 0
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    t = Math.max(t, e.isDirectory() ? newest(p) : fs.statSync(p).mtimeMs)
  }
  return t
}

const sources = Math.max(newest(path.join(root, 'src')), newest(path.join(root, 'crates')), newest(path.join(root, 'migrations')))
if (!addon || fs.statSync(path.join(lib, addon)).mtimeMs < sources) {
  console.log('building the addon (debug profile)…')
  execSync('npm run build:debug', { cwd: root, stdio: 'inherit' })
}
