-- Medusa's idempotency_key table for SQLite: same columns and names; timestamps as ISO 8601 UTC text, JSON as text.
CREATE TABLE IF NOT EXISTS "idempotency_key" (
  "id" varchar NOT NULL,
  "idempotency_key" varchar NOT NULL,
  "created_at" text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  "locked_at" text,
  "request_method" varchar,
  "request_params" text,
  "request_path" varchar,
  "response_code" integer,
  "response_body" text,
  "recovery_point" varchar NOT NULL DEFAULT 'started',
  CONSTRAINT "PK_213f125e14469be304f9ff1d452" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX IF NOT EXISTS "IDX_a421bf4588d0004a9b0c0fe84f" ON "idempotency_key" ("idempotency_key");
