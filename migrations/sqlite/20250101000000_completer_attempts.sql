-- The completer's attempts per key (completer.js), in a table of its own so Medusa's idempotency_key is unchanged: one row per key a completer has started to drive, written in its own committed step before each attempt, so maxAttempts and the backoff survive restarts; timestamps as ISO 8601 UTC text. Rows of finished or deleted keys are swept by later passes.
CREATE TABLE IF NOT EXISTS "idempotency_key_completer" (
  "key_id" varchar NOT NULL,
  "idempotency_key" varchar NOT NULL,
  "attempts" integer NOT NULL,
  "last_attempt_at" text NOT NULL,
  "next_attempt_at" text,
  "last_error_code" varchar,
  "last_error" varchar,
  "gave_up_at" text,
  CONSTRAINT "PK_idempotency_key_completer" PRIMARY KEY ("key_id")
);
