'use strict'
// Timing helpers shared by the three suites (__test__/, stress/, parity/).

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Reject with a labelled error if `promise` has not settled within `ms` (a hang). */
function withTimeout(promise, ms, label) {
  let t
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`HANG: ${label} did not settle within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t))
}

module.exports = { sleep, withTimeout }
