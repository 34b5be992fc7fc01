//! How PostgreSQL statements reach the server: through a connection of our pool or through a
//! caller's executor (bound mode: a TypeORM `EntityManager`, a node-postgres client). The
//! statements in `sql` run over either.

use crate::backend::SharedExec;
use crate::error::Result;
use crate::value::{Param, QueryResult};
use futures_util::future::BoxFuture;

/// Runs one statement with `$n` parameters and returns its rows.
pub(crate) trait Exec: Send {
  fn query<'a>(
    &'a mut self,
    sql: &'a str,
    params: Vec<Param>,
  ) -> BoxFuture<'a, Result<QueryResult>>;

  /// A statement without parameters or rows (savepoints).
  fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, Result<()>> {
    let run = self.query(sql, Vec::new());
    Box::pin(async move { run.await.map(|_| ()) })
  }
}

/// [`Exec`] over a shared executor.
pub(crate) struct Shared<'a>(pub &'a dyn SharedExec);

impl Exec for Shared<'_> {
  fn query<'a>(
    &'a mut self,
    sql: &'a str,
    params: Vec<Param>,
  ) -> BoxFuture<'a, Result<QueryResult>> {
    self.0.query(sql.to_owned(), params)
  }
}
