// A Medusa v1 project's src/services/idempotency-key.ts, compiled to CommonJS as Medusa builds
// it, next to the other ways a CommonJS TypeScript file loads the package.
import native = require('medusa-idempotency-native')
import Medusa = require('medusa-idempotency-native/medusa')
import { IdempotencyKeyService } from 'medusa-idempotency-native/medusa'

export { default } from 'medusa-idempotency-native/medusa'
export const same: boolean = Medusa === IdempotencyKeyService && Medusa.default === Medusa
export const Native: typeof native.IdempotencyKeyService = native.IdempotencyKeyService
