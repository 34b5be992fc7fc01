//! The Node binding: argument conversion, error mapping and the `#[napi]` classes. All logic
//! and SQL live in `idempotency-core`; this crate only moves values across the boundary and
//! bridges the stage callback (a JS async function) into the core's Rust-owned transaction.
//!
//! - `service`: the `IdempotencyKeyService` class;
//! - `transaction`: the `TransactionManager` class and the stage callback bridge;
//! - `options`: the options objects (`#[napi(object)]`, converted to the core's `Options`);
//! - `args`: the methods' other arguments, as types read from JS values;
//! - `reply`: how results, typed errors and panics go back to JS;
//! - `js`: conversions between JS values and the core's types (JSON, parameters, rows, keys);
//! - `raw`: the one module outside safe Rust: N-API calls behind two safe handles (`Cx`, `Val`), and
//!   napi's conversion traits for the typed argument wrappers `Arg` and `Read`;
//! - `executor`: a caller's executor (TypeORM, node-postgres) as the core's `SharedExec`;
//! - `statements`: the `StatementLog` class, the service's own statements for tracing.
//!
//! Methods take typed arguments (`Arg<'env, T>`, `T` read by `raw::FromJs`) that never fail
//! napi's conversion at the boundary: SPEC §6 wants a hostile value (a wrong type, a getter
//! that throws, a Proxy, a BigInt or a cycle) to reject with a typed `INVALID_ARGUMENT`, where
//! napi's own typed parameters would throw a napi status error synchronously instead.

mod args;
mod executor;
mod js;
mod options;
mod raw;
mod reply;
mod service;
mod statements;
mod transaction;

pub use options::{
  ConnectOptions, ListAbandonedOptions, ReapOptions, SslOptions, WorkStageOptions,
};
pub use service::{
  CompleterAttempts, IdempotencyKeyObject, IdempotencyKeyService, KeyAcceptance, KeyInspection,
  QueryExecutor,
};
pub use statements::{
  bookkeeping_statements, completer_list_statements, StatementLog, StatementRecord,
};
pub use transaction::{StageReturnValue, TransactionManager};

/// Panics inside our async work are caught and become typed `INTERNAL_ERROR` rejections; keep
/// the default hook from also printing them to the host server's stderr. Panics elsewhere (the
/// JS thread, other addons' threads) still reach the previous hook.
#[napi_derive::module_init]
fn quiet_caught_panics() {
  let previous = std::panic::take_hook();
  std::panic::set_hook(Box::new(move |info| {
    if std::thread::current().name() != Some("tokio-rt-worker") {
      previous(info);
    }
  }));
}
