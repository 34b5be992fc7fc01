//! A stage transaction on SQLite: an sqlx transaction begun `IMMEDIATE` (the write lock up
//! front), the key's place in the working set, and once the callback has run a statement the
//! authorizer armed on its connection; and how a callback's statement runs there.

use super::authorizer::{arm, refused_by_authorizer, Armed};
use super::conn::LiteConn;
use super::file::Working;
use super::sql;
use crate::backend::{Conn, Transaction};
use crate::error::{Error, Result};
use crate::model::{IdempotencyKey, StageResult};
use crate::observe;
use crate::value::{iso_string, safe_integer, to_json, Cell, Param, QueryResult};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryStreamExt};
use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{Column, Executor, Row, Sqlite, TypeInfo, ValueRef};

pub(crate) type LiteTx = sqlx::Transaction<'static, Sqlite>;

type LiteQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// Fields drop in order: the authorizer is disarmed before a dropped transaction's rollback,
/// and the key leaves the working set only after it.
pub(crate) struct LiteStage {
  armed: Option<Armed>,
  conn: LiteConn<LiteTx>,
  _working: Working,
}

impl LiteStage {
  pub(crate) fn new(conn: LiteConn<LiteTx>, working: Working) -> Self {
    LiteStage {
      armed: None,
      conn,
      _working: working,
    }
  }
}

impl Transaction for LiteStage {
  fn conn(&mut self) -> &mut dyn Conn {
    &mut self.conn
  }

  fn query<'a>(
    &'a mut self,
    sql: &'a str,
    params: &'a [Param],
  ) -> BoxFuture<'a, Result<QueryResult>> {
    async move {
      super::authorizer::refuse_transaction_words(sql)?;
      // Armed at the callback's first statement (a worker round trip), not at BEGIN: stages
      // that run no statement of their own never pay for it.
      if self.armed.is_none() {
        self.armed = Some(arm(&mut self.conn.c).await?);
      }
      run_query(&mut self.conn.c, sql, params).await
    }
    .boxed()
  }

  fn apply_and_commit(
    self: Box<Self>,
    id: String,
    r: StageResult,
  ) -> BoxFuture<'static, Result<IdempotencyKey>> {
    let LiteStage {
      armed,
      mut conn,
      _working,
    } = *self;
    async move {
      let applied = sql::apply(&mut conn.c, &id, r).await;
      drop(armed); // COMMIT is transaction control: ours, not the callback's
      match applied {
        Ok(k) => {
          let commit = async { Ok(conn.c.commit().await?) };
          observe::timed("COMMIT", |_| 0, commit).await?;
          Ok(k)
        }
        Err(e) => {
          let _ = rollback(conn.c).await;
          Err(e)
        }
      }
    }
    .boxed()
  }

  fn rollback(self: Box<Self>) -> BoxFuture<'static, ()> {
    let LiteStage {
      armed,
      conn,
      _working,
    } = *self;
    drop(armed);
    async move {
      let _ = rollback(conn.c).await;
    }
    .boxed()
  }
}

/// Roll a stage transaction back, recorded in the operation's statement log.
pub(crate) async fn rollback(tx: LiteTx) -> Result<()> {
  observe::timed("ROLLBACK", |_| 0, async { Ok(tx.rollback().await?) }).await
}

/// `$1` → `?1`, so callers can write the same placeholders for both backends. Quoted strings,
/// quoted identifiers and comments are left alone.
pub(crate) fn placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
  if !sql.contains('$') {
    return sql.into();
  }
  let b = sql.as_bytes();
  let mut out = String::with_capacity(sql.len());
  let mut i = 0;
  while i < b.len() {
    let ch = b[i];
    match ch {
      b'\'' | b'"' | b'`' => {
        let end = b[i + 1..]
          .iter()
          .position(|&x| x == ch)
          .map_or(b.len(), |p| i + 1 + p + 1);
        out.push_str(&sql[i..end]);
        i = end;
      }
      b'-' if b.get(i + 1) == Some(&b'-') => {
        let end = b[i..]
          .iter()
          .position(|&x| x == b'\n')
          .map_or(b.len(), |p| i + p);
        out.push_str(&sql[i..end]);
        i = end;
      }
      b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
        out.push('?');
        i += 1;
      }
      _ => {
        let next = sql[i..].chars().next().unwrap();
        out.push(next);
        i += next.len_utf8();
      }
    }
  }
  out.into()
}

fn bind_param<'q>(q: LiteQuery<'q>, p: &'q Param) -> Result<LiteQuery<'q>> {
  Ok(match p {
    Param::Null => q.bind(None::<i64>),
    Param::Bool(b) => q.bind(i64::from(*b)),
    Param::Number(n) => match safe_integer(*n) {
      Some(i) => q.bind(i),
      None => q.bind(*n),
    },
    Param::BigInt(s) => match s.parse::<i64>() {
      Ok(i) => q.bind(i),
      Err(_) => q.bind(s.as_str()),
    },
    Param::Text(s) => q.bind(s.as_str()),
    Param::Bytes(b) => q.bind(b.as_slice()),
    // As toISOString prints it (JSON.stringify, node-postgres), over the whole JS range.
    Param::Date(ms) => {
      q.bind(iso_string(*ms).ok_or_else(|| Error::invalid("invalid Date parameter"))?)
    }
    other => q.bind(to_json(other).to_string()),
  })
}

/// One statement of a stage callback on the stage's connection, under the armed authorizer:
/// values bound by SQLite storage class, integers beyond 2^53 returned as strings.
pub(crate) async fn run_query(
  c: &mut SqliteConnection,
  sql: &str,
  params: &[Param],
) -> Result<QueryResult> {
  run_armed(c, sql, params)
    .await
    .map_err(refused_by_authorizer)
}

async fn run_armed(c: &mut SqliteConnection, sql: &str, params: &[Param]) -> Result<QueryResult> {
  let sql = placeholders(sql);
  let stmt = (&mut *c).prepare_with(&sql, &[]).await?;
  let expected = match sqlx::Statement::parameters(&stmt) {
    Some(sqlx::Either::Right(n)) => n,
    Some(sqlx::Either::Left(types)) => types.len(),
    None => params.len(),
  };
  if expected != params.len() {
    return Err(Error::invalid(format!(
      "the statement expects {expected} parameter(s), {} given",
      params.len()
    )));
  }
  let mut q = sqlx::query::<Sqlite>(&sql);
  for p in params {
    q = bind_param(q, p)?;
  }
  let mut out = QueryResult::default();
  let mut stream = c.fetch_many(q);
  while let Some(item) = stream.try_next().await? {
    match item {
      sqlx::Either::Left(done) => out.rows_affected += done.rows_affected(),
      sqlx::Either::Right(row) => {
        if out.columns.is_empty() {
          out.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
        }
        let mut cells = Vec::with_capacity(row.len());
        for i in 0..row.len() {
          let raw = row.try_get_raw(i)?;
          let class = if raw.is_null() {
            "NULL".to_owned()
          } else {
            raw.type_info().name().to_owned()
          };
          cells.push(match class.as_str() {
            "NULL" => Cell::Null,
            "INTEGER" | "BOOLEAN" | "INT8" => {
              let n: i64 = row.try_get_unchecked(i)?;
              if n.unsigned_abs() <= 1 << 53 {
                Cell::Number(n as f64)
              } else {
                Cell::Text(n.to_string())
              }
            }
            "REAL" => Cell::Number(row.try_get_unchecked(i)?),
            "BLOB" => Cell::Bytes(row.try_get_unchecked(i)?),
            _ => Cell::Text(row.try_get_unchecked(i)?),
          });
        }
        out.rows.push(cells);
      }
    }
  }
  Ok(out)
}

#[cfg(test)]
mod tests {
  use super::placeholders;

  #[test]
  fn placeholders_skip_strings_and_comments() {
    assert_eq!(
      placeholders("SELECT $1, '$2', \"$3\" -- $4\n, $10"),
      "SELECT ?1, '$2', \"$3\" -- $4\n, ?10"
    );
    assert_eq!(placeholders("SELECT 'é' || $1"), "SELECT 'é' || ?1");
  }
}
