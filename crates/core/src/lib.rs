//! The core of medusa-idempotency-native: Medusa v1's `IdempotencyKeyService` semantics,
//! made safe under concurrency, as plain Rust over sqlx. No napi here, so `cargo test` links
//! and runs; the Node binding only converts values and maps errors.

#[doc(hidden)]
pub mod ab;
pub mod error;
pub mod key;
mod lite;
mod pgpool;
pub mod pgsql;
pub mod service;
pub mod stage;
pub mod value;

pub use error::{Error, Kind, Result};
pub use key::{Fingerprint, IdempotencyKey, KeyUpdate, UpdateValue, FINISHED};
pub use pgsql::SharedExec;
pub use service::{Isolation, Options, Service, Ssl, StageError, StageResult, Target};
pub use stage::StageTx;
pub use value::{iso_string, Cell, Param, QueryResult};

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
];
