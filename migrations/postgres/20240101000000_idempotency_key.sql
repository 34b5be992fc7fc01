-- Medusa v1's idempotency_key table exactly as its initial migration creates it (same constraint and index names); a no-op where it already exists.
CREATE TABLE IF NOT EXISTS "idempotency_key" (
  "id" character varying NOT NULL,
  "idempotency_key" character varying NOT NULL,
  "created_at" TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
  "locked_at" TIMESTAMP WITH TIME ZONE,
  "request_method" character varying,
  "request_params" jsonb,
  "request_path" character varying,
  "response_code" integer,
  "response_body" jsonb,
  "recovery_point" character varying NOT NULL DEFAULT 'started',
  CONSTRAINT "PK_213f125e14469be304f9ff1d452" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX IF NOT EXISTS "IDX_a421bf4588d0004a9b0c0fe84f" ON "idempotency_key" ("idempotency_key");
