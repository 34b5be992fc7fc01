#!/usr/bin/env node
// The package as a user installs it. Packs the root package (`npm pack`) and this platform's
// binary package (npm/<platform>/, filled by `napi artifacts` from the addon built here, as the
// release workflow does), installs both tarballs into a new project (real directories: no
// links, no workspace), and there runs an ES module and a CommonJS program that use all three
// entry points, and tsc --strict (module nodenext) on a typed program that is then run too.
// Then the clear load error: the root package alone (its platform package cannot be fetched:
// not published), and a platform nothing is built for (process.arch faked in a child).
//
// Only the platform packages of unpublished versions are missing from the registry; npm skips
// an optional dependency it cannot fetch, so the root package's seven optionalDependencies do
// not break the install, and the one for this platform is satisfied by the tarball.
const assert = require('node:assert/strict')
const { execFileSync, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { parseTriple } = require('@napi-rs/cli')

const root = path.join(__dirname, '..')
const pkg = require('../package.json')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'

function sh(cmd, args, cwd, env = {}) {
  console.log(`  $ ${[cmd, ...args].join(' ')}${cwd === root ? '' : `   (in ${path.relative(tmp, cwd) || '.'})`}`)
  // npm is npm.cmd on Windows, which only runs through a shell.
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'], shell: cmd === 'npm.cmd' })
}

/** napi's platform-arch-abi for this machine (the same rule as binding.js). */
function hostPlatform(arch = process.arch) {
  const { platform } = process
  if (platform === 'linux') return `linux-${arch}-${process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl'}`
  if (platform === 'win32') return `win32-${arch}-msvc`
  return `${platform}-${arch}`
}

function pack(dir, dest) {
  const [info] = JSON.parse(sh(npm, ['pack', '--json', '--pack-destination', dest], dir))
  console.log(`    ${info.filename}: ${info.files.length} files, ${(info.size / 1e6).toFixed(1)} MB packed, ${(info.unpackedSize / 1e6).toFixed(1)} MB unpacked`)
  return { file: path.join(dest, info.filename), files: info.files.map((f) => f.path) }
}

const platform = hostPlatform()
const target = pkg.napi.targets.find((t) => parseTriple(t).platformArchABI === platform)
const platformPackage = `${pkg.name}-${platform}`
const addonFile = `${pkg.napi.binaryName}.${platform}.node`
if (!target) throw new Error(`no napi target for this platform (${platform}) in package.json`)
// A local build puts the addon in lib/, beside the generated loader (native.js).
const addonPath = path.join(root, 'lib', addonFile)
if (!fs.existsSync(addonPath)) throw new Error(`lib/${addonFile} is not built: npm run build:debug`)

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idem-packed-'))
try {
  console.log(`packing ${pkg.name} and ${platformPackage} in ${tmp}`)
  const rootTarball = pack(root, tmp)
  assert.ok(!rootTarball.files.some((f) => f.endsWith('.node')), 'the root package ships no binary')
  const lib = ['index.js', 'binding.js', 'native.js', 'medusa.js', 'middleware.js', 'completer.js', 'tracing.js', 'otel.js', 'cli.js', 'types.d.ts', 'medusa.d.ts', 'middleware.d.ts', 'completer.d.ts', 'otel.d.ts']
  for (const f of ['index.d.ts', ...lib.map((f) => `lib/${f}`)]) {
    assert.ok(rootTarball.files.includes(f), `the root package ships ${f}`)
  }

  // The platform package as `napi artifacts` fills it in the release workflow, for the one
  // target built here: a staged copy of the package's napi config and npm/<platform>/.
  const stage = path.join(tmp, 'stage')
  const staged = { ...pkg, napi: { ...pkg.napi, targets: [target] } }
  fs.mkdirSync(path.join(stage, 'artifacts', `bindings-${target}`), { recursive: true })
  fs.writeFileSync(path.join(stage, 'package.json'), JSON.stringify(staged, null, 2))
  fs.cpSync(path.join(root, 'npm', platform), path.join(stage, 'npm', platform), { recursive: true })
  fs.copyFileSync(addonPath, path.join(stage, 'artifacts', `bindings-${target}`, addonFile))
  sh(process.execPath, [require.resolve('@napi-rs/cli/package.json').replace('package.json', 'dist/cli.js'), 'artifacts', '--cwd', stage], root)
  const platformTarball = pack(path.join(stage, 'npm', platform), tmp)
  assert.deepEqual(platformTarball.files.sort(), [addonFile, 'README.md', 'package.json'].sort())

  // A new project: both tarballs, and TypeScript at this repository's versions.
  const app = path.join(tmp, 'app')
  fs.mkdirSync(app)
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'packed-app', version: '1.0.0', private: true }, null, 2))
  for (const f of ['exercise.cjs', 'app.mjs', 'app.cjs', 'typed.mts', 'service.cts', 'tsconfig.json']) {
    fs.copyFileSync(path.join(__dirname, 'packed', f), path.join(app, f))
  }
  const ts = require('typescript/package.json').version
  const typesNode = require('@types/node/package.json').version
  sh(npm, ['install', '--no-audit', '--no-fund', '--prefer-offline', rootTarball.file, platformTarball.file, `typescript@${ts}`, `@types/node@${typesNode}`], app)
  for (const name of [pkg.name, platformPackage]) {
    const dir = path.join(app, 'node_modules', name)
    assert.ok(fs.lstatSync(dir).isDirectory() && !fs.lstatSync(dir).isSymbolicLink(), `${name} is installed as a directory`)
  }
  assert.ok(!fs.existsSync(path.join(app, 'node_modules', pkg.name, 'node_modules')), 'nothing nested under the package')
  assert.ok(fs.existsSync(path.join(app, 'node_modules', platformPackage, addonFile)))

  const env = { EXPECT_PLATFORM_PACKAGE: platformPackage, DATABASE_URL: '' }
  process.stdout.write(sh(process.execPath, ['app.mjs'], app, env))
  process.stdout.write(sh(process.execPath, ['app.cjs'], app, env))
  sh(process.execPath, [path.join(app, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], app)
  process.stdout.write(sh(process.execPath, ['dist/typed.mjs'], app, env))
  const check = "const s = require('./dist/service.cjs'); if (!s.same || s.default !== require('medusa-idempotency-native/medusa')) process.exit(1); console.log('service.cts: ok')"
  process.stdout.write(sh(process.execPath, ['-e', check], app, env))
  // The command line as npx runs it (the package's bin, linked by npm), on a throwaway SQLite file.
  const bin = path.join(app, 'node_modules', '.bin', process.platform === 'win32' ? `${pkg.name}.cmd` : pkg.name)
  assert.match(sh(bin, ['--help'], app, env), /^Usage: medusa-idempotency-native <command>/)
  const migrated = sh(bin, ['migrate', '--json'], app, { ...env, DATABASE_URL: `sqlite://${path.join(app, 'cli.db')}` })
  assert.deepEqual(JSON.parse(migrated), { migrated: true })
  console.log('bin: ok')
  // The otel subpath without its optional peer dependency: a clear error, only when used.
  const otel = "try { require('medusa-idempotency-native/otel').instrument(); process.exit(1) } catch (e) { if (e.code !== 'OTEL_API_MISSING') throw e; console.log('otel without @opentelemetry/api: ok') }"
  process.stdout.write(sh(process.execPath, ['-e', otel], app, env))

  // No binary for this platform: the root package alone. Its platform package is not
  // published, so npm skips it, and loading must say what is missing and what to do.
  const bare = path.join(tmp, 'bare')
  fs.mkdirSync(bare)
  fs.writeFileSync(path.join(bare, 'package.json'), JSON.stringify({ name: 'bare-app', version: '1.0.0', private: true }))
  sh(npm, ['install', '--no-audit', '--no-fund', '--prefer-offline', rootTarball.file], bare)
  assert.ok(!fs.existsSync(path.join(bare, 'node_modules', platformPackage)), `${platformPackage} is not published, so not installed`)
  const loadFails = (cwd, args, what) => {
    const r = spawnSync(process.execPath, args, { cwd, encoding: 'utf8', env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: '' } })
    assert.notEqual(r.status, 0, `${what}: loading should fail`)
    return r.stderr
  }
  for (const [args, kind] of [
    [['-e', `require('${pkg.name}')`], 'require'],
    [['--input-type=module', '-e', `import '${pkg.name}/medusa'`], 'import'],
  ]) {
    const stderr = loadFails(bare, args, `root package alone, ${kind}`)
    assert.match(stderr, new RegExp(`no native binary for ${platform} could be loaded`))
    assert.match(stderr, new RegExp(`Expected the package ${platformPackage}@${pkg.version}`))
    assert.match(stderr, new RegExp(`A binary for ${platform} is published, but its package is not installed`))
    assert.match(stderr, /npm ci && npm run build/)
    assert.match(stderr, /code: 'NATIVE_BINDING_NOT_FOUND'/)
  }
  // A platform without a prebuilt binary (riscv64), in the full install.
  fs.writeFileSync(path.join(app, 'riscv64.cjs'), "Object.defineProperty(process, 'arch', { value: 'riscv64' })\n")
  const stderr = loadFails(app, ['--require', './riscv64.cjs', '-e', `require('${pkg.name}')`], 'riscv64')
  const riscv = hostPlatform('riscv64')
  assert.match(stderr, new RegExp(`no native binary for ${riscv} could be loaded`))
  assert.match(stderr, new RegExp(`There is no prebuilt binary for ${riscv}`))
  assert.match(stderr, /npm ci && npm run build/)
  console.log('load errors: ok')
  console.log('packed install: ok')
} finally {
  fs.rmSync(tmp, { recursive: true, force: true })
}
