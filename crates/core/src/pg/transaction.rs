//! A stage transaction on PostgreSQL: a connection of our pool with the transaction open on
//! it. BEGIN travels with the row lock and COMMIT with the result's write (`pool`), so a stage
//! is three round trips.

use super::conn::PgConn;
use super::pool::Lease;
use super::sql;
use crate::backend::{Conn, Transaction};
use crate::error::{Error, Result};
use crate::model::{IdempotencyKey, StageResult};
use crate::value::{Param, QueryResult};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

impl Transaction for PgConn<Lease> {
  fn conn(&mut self) -> &mut dyn Conn {
    self
  }

  fn query<'a>(
    &'a mut self,
    sql: &'a str,
    params: &'a [Param],
  ) -> BoxFuture<'a, Result<QueryResult>> {
    self.0.user_query(sql, params).boxed()
  }

  fn apply_and_commit(
    self: Box<Self>,
    id: String,
    r: StageResult,
  ) -> BoxFuture<'static, Result<IdempotencyKey>> {
    let PgConn(mut lease) = *self;
    async move {
      let rows = lease
        .apply_and_commit(&sql::apply_sql(), &sql::apply_params(&id, r))
        .await?;
      sql::first_key(rows)?.ok_or_else(|| Error::not_found(&id))
    }
    .boxed()
  }

  fn rollback(self: Box<Self>) -> BoxFuture<'static, ()> {
    let PgConn(mut lease) = *self;
    async move { lease.rollback().await }.boxed()
  }
}
