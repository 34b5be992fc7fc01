#!/usr/bin/env node
// The binding's unsafe code stays in one module (src/raw.rs), and no method declares an
// argument that could outlive its call (`Arg<'static, …>`): raw.rs's safety rests on both.
// Run by `npm test`; exits non-zero naming each offending line.
const fs = require('node:fs')
const path = require('node:path')

const dir = path.join(__dirname, '..', 'src')
const problems = []
for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.rs'))) {
  const lines = fs.readFileSync(path.join(dir, file), 'utf8').split('\n')
  lines.forEach((line, i) => {
    const code = line.replace(/\/\/.*$/, '')
    if (file !== 'raw.rs' && /\bunsafe\b/.test(code)) problems.push(`src/${file}:${i + 1}: unsafe outside src/raw.rs: ${line.trim()}`)
    if (/Arg<\s*'static/.test(code)) problems.push(`src/${file}:${i + 1}: an argument must not be Arg<'static, …>: ${line.trim()}`)
  })
}
// Every unsafe block or fn in raw.rs says why it holds.
const raw = fs.readFileSync(path.join(dir, 'raw.rs'), 'utf8').split('\n')
raw.forEach((line, i) => {
  const code = line.replace(/\/\/.*$/, '')
  if (!/\bunsafe\s*(\{|fn\s+\w|impl\b)/.test(code)) return
  const before = raw.slice(Math.max(0, i - 4), i + 1).join('\n')
  if (!/SAFETY:|# Safety/.test(before)) problems.push(`src/raw.rs:${i + 1}: unsafe without a SAFETY line above it: ${line.trim()}`)
})
if (problems.length > 0) {
  console.error(problems.join('\n'))
  process.exit(1)
}
console.log('binding: unsafe only in src/raw.rs, each with its SAFETY line; no Arg<\'static>')
