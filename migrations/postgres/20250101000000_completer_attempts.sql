-- The completer's attempts per key (completer.js), in a table of its own so Medusa's idempotency_key is unchanged: one row per key a completer has started to drive, written in its own committed step before each attempt, so maxAttempts and the backoff survive restarts. No foreign key (it would make reap() and TRUNCATE of Medusa's table pay for it); rows of finished or deleted keys are swept by later passes.
CREATE TABLE IF NOT EXISTS "idempotency_key_completer" (
  "key_id" character varying NOT NULL,
  "idempotency_key" character varying NOT NULL,
  "attempts" integer NOT NULL,
  "last_attempt_at" TIMESTAMP WITH TIME ZONE NOT NULL,
  "next_attempt_at" TIMESTAMP WITH TIME ZONE,
  "last_error_code" character varying,
  "last_error" character varying,
  "gave_up_at" TIMESTAMP WITH TIME ZONE,
  CONSTRAINT "PK_idempotency_key_completer" PRIMARY KEY ("key_id")
);
