-- Indexes for reap() (keys past retention, oldest first) and listAbandoned() (unfinished keys by last progress); additive, Medusa's code is unaffected.
CREATE INDEX IF NOT EXISTS "IDX_idempotency_key_created_at" ON "idempotency_key" ("created_at");
CREATE INDEX IF NOT EXISTS "IDX_idempotency_key_unfinished_progress" ON "idempotency_key" ((COALESCE("locked_at", "created_at"))) WHERE "recovery_point" <> 'finished';
