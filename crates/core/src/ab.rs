//! Thin handles on the native pool for `examples/pool_ab.rs`, issue 11's A/B measurement of
//! this pool against sqlx's `PgPool`. Not an API: nothing here changes how the pool behaves.

use crate::error::Result;
use crate::value::{Cell, Param, QueryResult};
use crate::StageResult;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Column, Executor, Row};

/// Our pool, configured as `Service::connect` configures it by default (pooler-safe mode,
/// `Options::new`'s timeouts and lifetimes).
pub struct Pool(crate::pgpool::PgPool);

/// A connection on loan from [`Pool`]: returned on drop only after [`Lease::done`].
pub struct Lease(crate::pgpool::Lease);

pub async fn connect(options: PgConnectOptions, size: u32) -> Result<Pool> {
  let d = crate::service::Options::new("");
  let cfg = crate::pgpool::PoolConfig {
    size,
    acquire_timeout: d.acquire_timeout,
    connect_timeout: d.acquire_timeout,
    max_lifetime: d.max_lifetime,
    idle_timeout: d.idle_timeout,
    prepared: false,
  };
  crate::pgpool::PgPool::connect(options, cfg).await.map(Pool)
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
  crate::value::text::inline(sql, params)
}

/// A stage's row lock (`SELECT … FOR UPDATE NOWAIT`, parameter `$1` the key).
pub fn lock_row_sql() -> String {
  crate::pgsql::lock_row_sql()
}

/// A stage's `UPDATE … RETURNING …` and its parameters.
pub fn apply_sql() -> String {
  crate::pgsql::apply_sql()
}

pub fn apply_params(id: &str, r: StageResult) -> Vec<Param> {
  crate::pgsql::apply_params(id, r)
}

/// A simple-protocol message on a connection, its rows decoded as the pool decodes them.
pub async fn simple(conn: &mut PgConnection, sql: &str) -> Result<QueryResult> {
  let mut out = QueryResult::default();
  let mut stream = conn.fetch_many(sql);
  while let Some(item) = stream.try_next().await? {
    match item {
      sqlx::Either::Left(done) => out.rows_affected += done.rows_affected(),
      sqlx::Either::Right(row) => {
        if out.columns.is_empty() {
          out.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
        }
        let mut cells: Vec<Cell> = Vec::with_capacity(row.len());
        for i in 0..row.len() {
          cells.push(crate::value::decode(row.try_get_raw(i)?)?);
        }
        out.rows.push(cells);
      }
    }
  }
  Ok(out)
}
