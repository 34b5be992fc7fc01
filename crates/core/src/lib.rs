//! The core of medusa-idempotency-native: Medusa v1's `IdempotencyKeyService` semantics,
//! made safe under concurrency, as plain Rust over sqlx. No napi here, so `cargo test` links
//! and runs; the Node binding only converts values and maps errors.

// The layers, each importing only those above it: `error` and `model` (the shared types),
// `value` (values as JS sees them), `options`, `backend` (the traits), `stage` (the callback's
// handle), then `pg` and `sqlite` (each implements `backend`), and `service`, which
// orchestrates over `dyn Backend`.
#[doc(hidden)]
pub mod ab;
mod backend;
pub mod error;
pub mod model;
mod options;
mod pg;
pub mod service;
mod sqlite;
pub mod stage;
pub mod value;

pub use error::{Error, Kind, Result};
pub use model::{Fingerprint, IdempotencyKey, KeyUpdate, StageResult, UpdateValue, FINISHED};
pub use options::{Isolation, Options, Ssl};
pub use pg::SharedExec;
pub use service::{Service, StageError, Target};
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
