'use strict'
// Every property of the fuzz, by name: name → () => fast-check property. The order is the
// order the child runs them in when its config names none.
const connect = require('./connect')
const requests = require('./requests')
const keys = require('./keys')
const stages = require('./stages')
const executors = require('./executors')
const reap = require('./reap')
const tenant = require('./tenant')

module.exports = {
  connect: connect.connect,
  migrate: connect.migrate,
  initializeRequest: requests.initializeRequest,
  create: requests.create,
  retrieve: keys.retrieve,
  lock: keys.lock,
  update: keys.update,
  workStage: stages.workStage,
  txQuery: stages.txQuery,
  txAfterStage: stages.txAfterStage,
  withTransaction: executors.withTransaction,
  bindExecutor: executors.bindExecutor,
  detached: executors.detached,
  reapAndList: reap.reapAndList,
  forTenant: tenant.forTenant,
  wrapExecutor: executors.wrapExecutor,
}
