-- Requests a handler accepted (lib/route.js): one row per key, written with the first stage the handler runs (or by an explicit accept()), naming the route that took the request and its decoded path parameters (JSON text); the completer drives only keys listed here, selected by route in SQL. Timestamps as ISO 8601 UTC text. Rows of finished or deleted keys are swept by the completer.
CREATE TABLE IF NOT EXISTS "idempotency_key_accepted" (
  "key_id" varchar NOT NULL,
  "idempotency_key" varchar NOT NULL,
  "route" varchar,
  "path_params" text NOT NULL,
  "accepted_at" text NOT NULL,
  CONSTRAINT "PK_idempotency_key_accepted" PRIMARY KEY ("key_id")
);
CREATE INDEX IF NOT EXISTS "IDX_idempotency_key_accepted_route" ON "idempotency_key_accepted" ("route");
