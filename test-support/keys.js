'use strict'
// Client keys for the three suites (__test__/, stress/, parity/).

let seq = 0

/**
 * A client key no other call returns, in this process or another (pid, counter, random tail):
 * `<prefix>-<pid>-<n>-<random>`, printable ASCII, under 40 characters past the prefix.
 */
const uniq = (prefix = 'k') => `${prefix}-${process.pid}-${++seq}-${Math.random().toString(36).slice(2, 8)}`

module.exports = { uniq }
