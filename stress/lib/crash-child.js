'use strict'
// The process crash.js kills. `node stress/lib/crash-child.js '<json>'` with
// { url, key, crashStage, mode }: walks the route for `key` until the stage `crashStage`, whose
// callback writes its side-effect row, reports `WROTE {"pid": <its backend pid>}` on stdout and
// then stays inside the open transaction: idle (`mode: 'idle'`, awaiting a promise that never
// settles) or in a running statement (`mode: 'statement'`, pg_sleep). The parent SIGKILLs it.
const { IdempotencyKeyService } = require('../..')
const { routeAttempt } = require('./common')

const { url, key, crashStage, mode, sleepSeconds = 2 } = JSON.parse(process.argv[2])

;(async () => {
  const service = await IdempotencyKeyService.connect({ url, maxConnections: 2, stageTimeoutMs: 0, lockTimeoutMs: 1000 })
  setInterval(() => {}, 1000) // stay alive whatever the addon keeps referenced
  await routeAttempt(service, key, {
    async inStage(stage, tx) {
      if (stage !== crashStage) return
      const [{ pid }] = await tx.query('SELECT pg_backend_pid() AS pid')
      process.stdout.write(`WROTE ${JSON.stringify({ pid })}\n`)
      if (mode === 'statement') await tx.query(`SELECT pg_sleep(${Number(sleepSeconds)})`)
      const forever = new Promise(() => {})
      global.__forever = forever // referenced, so no GC can end the stage early
      await forever // never commit: wait for SIGKILL
    },
  })
  process.stdout.write('FINISHED (should have been killed)\n')
  process.exit(3)
})().catch((e) => {
  process.stdout.write(`CHILD ERROR type=${e && e.type} code=${e && e.code}: ${e && e.message}\n`)
  process.exit(4)
})
