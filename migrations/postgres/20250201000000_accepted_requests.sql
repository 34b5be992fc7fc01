-- Requests a handler accepted (lib/route.js): one row per key, written with the first stage the handler runs (or by an explicit accept()), naming the route that took the request and its decoded path parameters; the completer drives only keys listed here, selected by route in SQL. A key without a row was never taken by a handler: the middleware releases it when its request ends, and no completer runs it. No foreign key (it would make reap() and TRUNCATE of Medusa's table pay for it); rows of finished or deleted keys are swept by the completer.
CREATE TABLE IF NOT EXISTS "idempotency_key_accepted" (
  "key_id" character varying NOT NULL,
  "idempotency_key" character varying NOT NULL,
  "route" character varying,
  "path_params" character varying NOT NULL,
  "accepted_at" TIMESTAMP WITH TIME ZONE NOT NULL,
  CONSTRAINT "PK_idempotency_key_accepted" PRIMARY KEY ("key_id")
);
CREATE INDEX IF NOT EXISTS "IDX_idempotency_key_accepted_route" ON "idempotency_key_accepted" ("route");
