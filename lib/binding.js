'use strict'
// The addon, through napi's generated loader (native.js): a `*.node` beside it (a local build),
// else the platform package (`medusa-idempotency-native-<platform>`, an optional dependency).
// When neither loads, napi's generic "Cannot find native binding" becomes an error that names
// this platform, the package that should have provided its binary and how to build one.
const path = require('node:path')

function libc() {
  try {
    return process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl'
  } catch {
    return 'gnu'
  }
}

/** napi's name for this platform (`linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`…). */
function platformName() {
  const { platform, arch } = process
  if (platform === 'linux') return `linux-${arch}-${arch === 'arm' ? `${libc()}eabihf` : libc()}`
  if (platform === 'win32') return `win32-${arch}-msvc`
  return `${platform}-${arch}`
}

/** What napi's loader tried, in order (its error chain has the last attempt outermost). */
function attempts(error) {
  const seen = []
  for (let e = error; e && seen.length < 20; e = e.cause) seen.unshift(String(e.message ?? e).split('\n')[0])
  return seen.filter((m) => !m.startsWith('Cannot find native binding'))
}

function loadError(cause) {
  const pkg = require('../package.json')
  const name = platformName()
  const expected = `${pkg.name}-${name}`
  const prebuilt = Object.keys(pkg.optionalDependencies ?? {}).map((dep) => dep.slice(pkg.name.length + 1))
  const libcNote = process.platform === 'linux' ? `, ${libc() === 'gnu' ? 'glibc' : 'musl'}` : ''
  const lines = [
    `${pkg.name}: no native binary for ${name} could be loaded (${process.platform} ${process.arch}${libcNote}, Node ${process.version}).`,
    `Expected the package ${expected}@${pkg.version} (installed with ${pkg.name} as an optional dependency)` +
      ` or a local ${pkg.napi.binaryName}.${name}.node beside ${path.join(__dirname, 'native.js')}.`,
    `Prebuilt binaries: ${prebuilt.join(', ')}.`,
  ]
  if (prebuilt.includes(name)) {
    lines.push(
      `A binary for ${name} is published, but its package is not installed: install without --omit=optional / --no-optional,` +
        ` and if a lockfile written on another platform left it out, delete node_modules and the lockfile and install again.`,
    )
  } else {
    lines.push(`There is no prebuilt binary for ${name}.`)
  }
  lines.push(
    `To build one from source: in a clone of the package's source, with a Rust toolchain (rustup) installed, run` +
      ` \`npm ci && npm run build\`; then copy ${pkg.napi.binaryName}.${name}.node beside native.js above,` +
      ` or point NAPI_RS_NATIVE_LIBRARY_PATH at it.`,
    `The loader tried: ${attempts(cause).join(' | ')}`,
  )
  const error = new Error(lines.join('\n'), { cause })
  error.code = 'NATIVE_BINDING_NOT_FOUND'
  error.platform = name
  error.expectedPackage = expected
  return error
}

try {
  module.exports = require('./native.js')
} catch (e) {
  throw loadError(e)
}
