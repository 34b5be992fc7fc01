#!/usr/bin/env node
// Keeps the root package's `optionalDependencies` on the platform packages (npm/<platform>/,
// written by `napi create-npm-dirs`) at the package's version, and their entries in
// package-lock.json. Run by `npm version` (the "version" script, after `napi version`);
// `--check` (npm test) only reports what is out of step.
//
// Why the lockfile needs this: until a version's platform packages are published, npm cannot
// fetch them, so `npm install` leaves them out of package-lock.json, and `npm ci` then refuses
// to run ("Missing: … from lock file"). An entry with their os/cpu/libc and `optional: true` is
// what npm itself writes for an optional package; with it `npm ci` skips the ones for other
// platforms and tolerates the 404 for this one.
const fs = require('node:fs')
const path = require('node:path')
const { parseTriple } = require('@napi-rs/cli')

const root = path.join(__dirname, '..')
const read = (file) => JSON.parse(fs.readFileSync(path.join(root, file), 'utf8'))
const write = (file, value) => fs.writeFileSync(path.join(root, file), `${JSON.stringify(value, null, 2)}\n`)

const pkg = read('package.json')
const lock = read('package-lock.json')
const problems = []
// In napi.targets' order, the order `napi prepublish` writes them in.
const platforms = []
for (const target of pkg.napi.targets) {
  const dir = parseTriple(target).platformArchABI
  if (fs.existsSync(path.join(root, 'npm', dir, 'package.json'))) platforms.push({ dir, manifest: read(`npm/${dir}/package.json`) })
  else problems.push(`npm/${dir}/package.json is missing for ${target} (npx napi create-npm-dirs)`)
}

const wanted = {}
for (const { manifest } of platforms) wanted[manifest.name] = pkg.version
const byName = (o) => Object.fromEntries(Object.entries(o ?? {}).sort(([a], [b]) => a.localeCompare(b, 'en')))
const same = (a, b) => JSON.stringify(byName(a)) === JSON.stringify(byName(b))
for (const { dir, manifest } of platforms) {
  if (manifest.version !== pkg.version) problems.push(`npm/${dir} is at ${manifest.version}, the package at ${pkg.version} (npx napi version)`)
}
if (!same(pkg.optionalDependencies, wanted)) {
  problems.push(`package.json optionalDependencies should be ${JSON.stringify(wanted)}`)
}
const lockEntry = ({ manifest }) => {
  const entry = { version: manifest.version, cpu: manifest.cpu }
  if (manifest.libc) entry.libc = manifest.libc
  return Object.assign(entry, { optional: true, os: manifest.os })
}
if (!same(lock.packages[''].optionalDependencies, wanted)) {
  problems.push('package-lock.json: the root entry\'s optionalDependencies differ from package.json')
}
for (const p of platforms) {
  const have = lock.packages[`node_modules/${p.manifest.name}`]
  if (!have || have.version !== pkg.version) problems.push(`package-lock.json: no entry for ${p.manifest.name}@${pkg.version}`)
}

if (process.argv.includes('--check')) {
  if (problems.length) {
    console.error(`platform packages out of step:\n  ${problems.join('\n  ')}\nrun: node scripts/platform-packages.js`)
    process.exit(1)
  }
  console.log(`platform packages: ${platforms.length} at ${pkg.version}, in package.json and package-lock.json`)
  process.exit(0)
}

for (const { dir, manifest } of platforms) {
  if (manifest.version !== pkg.version) write(`npm/${dir}/package.json`, { ...manifest, version: pkg.version })
  manifest.version = pkg.version
}
pkg.optionalDependencies = wanted
write('package.json', pkg)
lock.packages[''].optionalDependencies = byName(wanted) // npm keeps them sorted there
for (const p of platforms) {
  const key = `node_modules/${p.manifest.name}`
  // A published version's entry (resolved, integrity) is npm's own; keep it.
  if (lock.packages[key]?.version !== pkg.version) lock.packages[key] = lockEntry(p)
}
// In npm's order, so the next `npm install` leaves the file as it is.
const sorted = Object.keys(lock.packages).sort((a, b) => (a === '' ? -1 : b === '' ? 1 : a.localeCompare(b, 'en')))
lock.packages = Object.fromEntries(sorted.map((k) => [k, lock.packages[k]]))
write('package-lock.json', lock)
console.log(`platform packages: ${platforms.length} at ${pkg.version}`)
