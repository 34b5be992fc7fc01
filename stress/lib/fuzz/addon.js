'use strict'
// The addon under test (the package root), for the fuzz child's modules: one place for the path.
module.exports = require('../../..')
