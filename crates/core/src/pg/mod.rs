//! PostgreSQL, for production, laid out as a driver: connection settings and TLS (`config`),
//! one connection on the wire (`wire`), the pool and its leases (`pool`), the guard on what a
//! stage may send (`guard`), values both ways (`types`, one file per type family: parameters as
//! text, text rows as node-postgres parses them, binary rows; `rows`: a statement's rows), the
//! statements of every operation (`sql`) over our connections or a caller's executor
//! (`exec`, `conn`), and the stage transaction (`transaction`).

mod config;
mod conn;
pub(crate) mod exec;
pub(crate) mod guard;
pub(crate) mod pool;
mod rows;
pub(crate) mod sql;
pub(crate) mod statement;
mod transaction;
pub(crate) mod types;
pub(crate) mod wire;

use conn::PgConn;
use exec::Shared;

use crate::backend::{Backend, Begun, Conn, SharedExec, Transaction};
use crate::error::{Error, Result};
use crate::options::{Isolation, Options};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pool::{PgPool, PoolConfig};
use std::sync::Arc;

fn begin_sql(isolation: Isolation) -> &'static str {
  match isolation {
    Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
    Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
    Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
  }
}

/// A service's PostgreSQL database, through our pool.
pub(crate) struct PgBackend(PgPool);

impl PgBackend {
  pub(crate) async fn connect(opts: &Options) -> Result<Self> {
    let config = config::Config::parse(opts.url.as_str(), opts.ssl.as_ref())?;
    let cfg = PoolConfig {
      size: opts.max_connections,
      acquire_timeout: opts.acquire_timeout,
      connect_timeout: opts
        .connect_timeout
        .or(config.connect_timeout)
        .unwrap_or(opts.acquire_timeout),
      max_lifetime: opts.max_lifetime,
      idle_timeout: opts.idle_timeout,
      prepared: opts.prepared_statements,
    };
    Ok(PgBackend(PgPool::connect(config, cfg).await?))
  }
}

impl Backend for PgBackend {
  fn system(&self) -> &'static str {
    "postgresql"
  }

  fn acquire(&self) -> BoxFuture<'_, Result<Box<dyn Conn + '_>>> {
    async move {
      let mut lease = self.0.acquire().await?;
      lease.done();
      Ok(Box::new(PgConn(lease)) as Box<dyn Conn>)
    }
    .boxed()
  }

  fn bind<'a>(&'a self, ex: &'a dyn SharedExec) -> Result<Box<dyn Conn + 'a>> {
    Ok(Box::new(PgConn(Shared(ex))))
  }

  fn begin_stage<'a>(&'a self, isolation: Isolation, key: &'a str) -> BoxFuture<'a, Result<Begun>> {
    async move {
      let mut lease = self.0.acquire().await?;
      // Rolls back by itself when the lock or the row's decoding fails.
      let rows = lease
        .begin_and_lock(begin_sql(isolation), &sql::lock_row_sql(), key)
        .await?;
      match sql::first_key(rows) {
        Ok(found) => Ok((Box::new(PgConn(lease)) as Box<dyn Transaction>, found)),
        Err(e) => {
          lease.rollback().await;
          Err(e)
        }
      }
    }
    .boxed()
  }

  fn release(&self, key: String) -> BoxFuture<'static, ()> {
    let pool = self.0.clone();
    async move {
      if let Ok(mut lease) = pool.acquire().await {
        let _ = sql::release(&mut lease, &key).await;
      }
    }
    .boxed()
  }

  fn migrate(&self) -> BoxFuture<'_, Result<()>> {
    async move {
      let mut lease = self.0.acquire().await?;
      // Serialise concurrent migrations (two processes starting at once would otherwise
      // race on CREATE TABLE IF NOT EXISTS and fail with 23505 on pg_type).
      let mut script = String::from("BEGIN; SELECT pg_advisory_xact_lock(8245017791);\n");
      for (_, sql) in crate::migrations::MIGRATIONS_POSTGRES {
        script += sql;
        script += "\n";
      }
      // Simple protocol: a migration file may hold several statements.
      script += "COMMIT;";
      lease.script(&script).await
    }
    .boxed()
  }

  fn close(&self) -> BoxFuture<'_, ()> {
    self.0.close().boxed()
  }
}

/// No pool of our own: everything runs through callers' executors (bound mode); the lease
/// release after a failed stage through this one, in autocommit (Medusa's container uses
/// `cradle.manager`).
pub(crate) struct Detached(pub(crate) Arc<dyn SharedExec>);

impl Backend for Detached {
  /// The callers' executors it binds to run PostgreSQL's SQL.
  fn system(&self) -> &'static str {
    "postgresql"
  }

  fn acquire(&self) -> BoxFuture<'_, Result<Box<dyn Conn + '_>>> {
    let conn: Box<dyn Conn + '_> = Box::new(PgConn(Shared(self.0.as_ref())));
    async move { Ok(conn) }.boxed()
  }

  fn bind<'a>(&'a self, ex: &'a dyn SharedExec) -> Result<Box<dyn Conn + 'a>> {
    Ok(Box::new(PgConn(Shared(ex))))
  }

  fn begin_stage<'a>(
    &'a self,
    _isolation: Isolation,
    _key: &'a str,
  ) -> BoxFuture<'a, Result<Begun>> {
    async move {
      Err(Error::invalid(
        "this service has no connection of its own: call withTransaction(manager) first",
      ))
    }
    .boxed()
  }

  fn release(&self, key: String) -> BoxFuture<'static, ()> {
    let ex = self.0.clone();
    async move {
      let _ = sql::release(&mut Shared(ex.as_ref()), &key).await;
    }
    .boxed()
  }

  fn migrate(&self) -> BoxFuture<'_, Result<()>> {
    async move {
      Err(Error::invalid(
        "run migrate() on a connected service, or Medusa's migrations",
      ))
    }
    .boxed()
  }

  fn close(&self) -> BoxFuture<'_, ()> {
    async {}.boxed()
  }
}
