//! Thin handles on the native pool for `examples/pool_ab.rs`, issue 11's A/B measurement of
//! this pool against sqlx's `PgPool`. Not an API: nothing here changes how the pool behaves.

use crate::error::Result;
use crate::model::StageResult;
use crate::value::{Param, QueryResult};
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// Our pool, configured as `Service::connect` configures it by default (pooler-safe mode,
/// `Options::new`'s timeouts and lifetimes).
pub struct Pool(crate::pg::pool::PgPool);

/// A connection on loan from [`Pool`]: returned on drop only after [`Lease::done`].
pub struct Lease(crate::pg::pool::Lease);

pub async fn connect(options: PgConnectOptions, size: u32) -> Result<Pool> {
  let d = crate::options::Options::new("");
  let cfg = crate::pg::pool::PoolConfig {
    size,
    acquire_timeout: d.acquire_timeout,
    connect_timeout: d.acquire_timeout,
    max_lifetime: d.max_lifetime,
    idle_timeout: d.idle_timeout,
    prepared: false,
  };
  crate::pg::pool::PgPool::connect(options, cfg)
    .await
    .map(Pool)
}

impl Pool {
  pub async fn acquire(&self) -> Result<Lease> {
    self.0.acquire().await.map(Lease)
  }

  pub async fn close(&self) {
    self.0.close().await
  }
}

impl Lease {
  pub fn raw(&mut self) -> &mut PgConnection {
    self.0.raw()
  }

  pub fn busy(&mut self) {
    self.0.busy()
  }

  pub fn done(&mut self) {
    self.0.done()
  }
}

/// `sql` with each `$n` replaced by its escaped literal, as pooler-safe mode sends it.
pub fn inline(sql: &str, params: &[Param]) -> Result<String> {
  crate::pg::text::inline(sql, params)
}

/// A stage's row lock (`SELECT … FOR UPDATE NOWAIT`, parameter `$1` the key).
pub fn lock_row_sql() -> String {
  crate::pg::sql::lock_row_sql()
}

/// A stage's `UPDATE … RETURNING …` and its parameters.
pub fn apply_sql() -> String {
  crate::pg::sql::apply_sql()
}

pub fn apply_params(id: &str, r: StageResult) -> Vec<Param> {
  crate::pg::sql::apply_params(id, r)
}

/// A simple-protocol message on a connection, its rows decoded as the pool decodes them.
pub async fn simple(conn: &mut PgConnection, sql: &str) -> Result<QueryResult> {
  crate::pg::pool::simple(conn, sql).await.0
}
