'use strict'
// The fuzz child's configuration, from its one argument (see fuzz-worker.js), and what follows
// from it for every module: the backend, the per-case timeout, the inputs to leave out.
const config = JSON.parse(process.argv[2])
const T0 = Date.now()
const isPg = config.backend === 'postgres'
const CASE_TIMEOUT_MS = config.caseTimeoutMs || 15000
/** Inputs a previous child hung or blew up on ('nul-sql', 'huge-pool', 'wide-rows'): left out now. */
const AVOID = new Set(config.avoid || [])

module.exports = { config, T0, isPg, CASE_TIMEOUT_MS, AVOID }
