//! The schema, embedded: Medusa's `idempotency_key` table and what this package adds to it.

/// PostgreSQL migrations, in order: (file name, SQL). Each is safe to run again.
pub const MIGRATIONS_POSTGRES: &[(&str, &str)] = &[
  (
    "20240101000000_idempotency_key.sql",
    include_str!("../../../migrations/postgres/20240101000000_idempotency_key.sql"),
  ),
  (
    "20241101000000_expiry_indexes.sql",
    include_str!("../../../migrations/postgres/20241101000000_expiry_indexes.sql"),
  ),
  (
    "20241201000000_no_progress_index.sql",
    include_str!("../../../migrations/postgres/20241201000000_no_progress_index.sql"),
  ),
  (
    "20250101000000_completer_attempts.sql",
    include_str!("../../../migrations/postgres/20250101000000_completer_attempts.sql"),
  ),
  (
    "20250201000000_accepted_requests.sql",
    include_str!("../../../migrations/postgres/20250201000000_accepted_requests.sql"),
  ),
];

/// SQLite migrations, in order: (file name, SQL). Each is safe to run again.
pub const MIGRATIONS_SQLITE: &[(&str, &str)] = &[
  (
    "20240101000000_idempotency_key.sql",
    include_str!("../../../migrations/sqlite/20240101000000_idempotency_key.sql"),
  ),
  (
    "20241101000000_expiry_indexes.sql",
    include_str!("../../../migrations/sqlite/20241101000000_expiry_indexes.sql"),
  ),
  (
    "20241201000000_no_progress_index.sql",
    include_str!("../../../migrations/sqlite/20241201000000_no_progress_index.sql"),
  ),
  (
    "20250101000000_completer_attempts.sql",
    include_str!("../../../migrations/sqlite/20250101000000_completer_attempts.sql"),
  ),
  (
    "20250201000000_accepted_requests.sql",
    include_str!("../../../migrations/sqlite/20250201000000_accepted_requests.sql"),
  ),
];
