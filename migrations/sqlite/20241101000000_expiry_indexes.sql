-- An index for reap() (keys past retention, oldest first); additive, Medusa's code is unaffected.
CREATE INDEX IF NOT EXISTS "IDX_idempotency_key_created_at" ON "idempotency_key" ("created_at");
