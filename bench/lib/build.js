'use strict'
// The addon the bench measures. Real runs use a release build of their own in bench/.addon/
// (built here when missing or older than the Rust sources), loaded through the generated
// loader's NAPI_RS_NATIVE_LIBRARY_PATH override, so a debug build in lib/ (what `npm test`
// makes, beside the loader) never ends up in the numbers. `--smoke` measures whatever lib/ has.
const fs = require('node:fs')
const path = require('node:path')
const { execSync } = require('node:child_process')

const ROOT = path.join(__dirname, '..', '..')
const OUT = path.join(ROOT, 'bench', '.addon')
const LIB = path.join(ROOT, 'lib')

function newest(p) {
  let st
  try {
    st = fs.statSync(p)
  } catch {
    return 0
  }
  if (!st.isDirectory()) return st.mtimeMs
  let t = 0
  for (const e of fs.readdirSync(p)) t = Math.max(t, newest(path.join(p, e)))
  return t
}

function sourcesMtime() {
  return Math.max(
    ...['src', 'crates/core/src', 'migrations', 'Cargo.toml', 'Cargo.lock', 'crates/core/Cargo.toml', 'build.rs'].map((p) =>
      newest(path.join(ROOT, p)),
    ),
  )
}

function findNode(dir) {
  try {
    const f = fs.readdirSync(dir).find((n) => n.endsWith('.node'))
    return f ? path.join(dir, f) : null
  } catch {
    return null
  }
}

/** 'debug' when the ELF file has a .debug_info section (the release profile strips it). */
function profileOf(file) {
  const b = fs.readFileSync(file)
  if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return 'unknown'
  const shoff = Number(b.readBigUInt64LE(0x28))
  const shentsize = b.readUInt16LE(0x3a)
  const shnum = b.readUInt16LE(0x3c)
  const strtab = shoff + b.readUInt16LE(0x3e) * shentsize
  const namesAt = Number(b.readBigUInt64LE(strtab + 0x18))
  for (let i = 0; i < shnum; i++) {
    const nameOff = b.readUInt32LE(shoff + i * shentsize)
    const end = b.indexOf(0, namesAt + nameOff)
    if (b.toString('latin1', namesAt + nameOff, end) === '.debug_info') return 'debug'
  }
  return 'release'
}

function run(cmd, cwd) {
  console.error(`$ ${cmd}`)
  execSync(cmd, { cwd, stdio: ['ignore', 'inherit', 'inherit'] })
}

/** Make sure bench/.addon has a current release build; point the loader at it. */
function useReleaseBuild({ build = true } = {}) {
  let file = findNode(OUT)
  const stale = !file || fs.statSync(file).mtimeMs < sourcesMtime()
  if (stale && build) {
    if (!fs.existsSync(path.join(ROOT, 'node_modules', '.bin', 'napi'))) run('npm ci --no-audit --no-fund', ROOT)
    console.error('building the addon (release profile) into bench/.addon …')
    const t = Date.now()
    run('npx napi build --platform --release --output-dir bench/.addon --no-js', ROOT)
    console.error(`built in ${((Date.now() - t) / 1000).toFixed(0)} s`)
    file = findNode(OUT)
  }
  if (!file) throw new Error('no release build in bench/.addon (run without --no-build)')
  process.env.NAPI_RS_NATIVE_LIBRARY_PATH = file
  return { file, profile: profileOf(file), stale: stale && !build, bytes: fs.statSync(file).size }
}

/** Smoke runs: the local build in lib/, whatever profile; built (debug) only when missing. */
function useLocalBuild() {
  let file = findNode(LIB)
  if (!file) {
    run('node scripts/ensure-built.js', ROOT)
    file = findNode(LIB)
  }
  delete process.env.NAPI_RS_NATIVE_LIBRARY_PATH
  return { file, profile: profileOf(file), stale: false, bytes: fs.statSync(file).size }
}

module.exports = { useReleaseBuild, useLocalBuild, ROOT }
