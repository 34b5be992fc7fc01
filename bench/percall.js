'use strict'
// Per-call cost of the addon itself, where it shows most: sequential calls on `sqlite::memory:`
// (no network, no other client). Prints one JSON line: `retrieve` calls/s and one-stage
// `cycle`s/s (initializeRequest + workStage). Compare two builds by running it alternately with
// NAPI_RS_NATIVE_LIBRARY_PATH pointing at each (README, Development: "Why dyn").
//   node bench/percall.js            N=40000 by default (retrieves; cycles are N / 4)
const { IdempotencyKeyService } = require('..')

;(async () => {
  const service = await IdempotencyKeyService.connect('sqlite::memory:')
  await service.migrate()
  const key = (await service.create({})).idempotency_key
  const n = Number(process.env.N || 40000)
  const perSecond = async (count, op) => {
    const t = process.hrtime.bigint()
    for (let i = 0; i < count; i++) await op()
    return Math.round(count / (Number(process.hrtime.bigint() - t) / 1e9))
  }
  await perSecond(2000, () => service.retrieve(key)) // warm-up
  const retrieve = await perSecond(n, () => service.retrieve(key))
  const cycle = await perSecond(n / 4, async () => {
    const k = await service.initializeRequest(undefined, 'POST', {}, '/percall')
    await service.workStage(k.idempotency_key, async () => ({ response_code: 200, response_body: {} }))
  })
  console.log(JSON.stringify({ retrieve, cycle }))
  await service.close()
})()
