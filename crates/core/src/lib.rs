//! The core of medusa-idempotency-native: Medusa v1's `IdempotencyKeyService` semantics,
//! made safe under concurrency, as plain Rust: PostgreSQL over the core's own connection
//! (postgres-protocol's messages, `pg/`), SQLite over sqlx (`sqlite/`). No napi here, so
//! `cargo test` links and runs; the Node binding only converts values and maps errors.

// The layers, each importing only those above it: `error` and `model` (the shared types),
// `value` (values as JS sees them), `options`, `backend` (the traits), `stage` (the callback's
// handle), then `pg` and `sqlite` (each implements `backend`), and `service`, which
// orchestrates over `dyn Backend`.
mod backend;
pub mod bookkeeping;
pub mod error;
mod migrations;
pub mod model;
pub mod observe;
mod options;
mod pg;
pub mod service;
mod sqlite;
pub mod stage;
pub mod value;

pub use backend::SharedExec;
pub use error::{Error, Kind, Result};
pub use migrations::{MIGRATIONS_POSTGRES, MIGRATIONS_SQLITE};
pub use model::{
  Accepted, CompleterAttempts, Fingerprint, IdempotencyKey, KeyRecords, KeyUpdate, StageResult,
  UpdateValue, FINISHED,
};
pub use options::{Isolation, Options, Ssl};
pub use service::{Service, StageError, Target};
pub use stage::StageTx;
pub use value::{iso_string, Cell, Param, QueryResult};
