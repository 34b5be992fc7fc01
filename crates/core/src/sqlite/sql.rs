//! Every operation's statements in SQLite's dialect. Timestamps are stored as ISO 8601 text in
//! UTC with milliseconds (sortable, readable), JSON columns as text.

use crate::error::{Error, Result};
use crate::model::{
  Accepted, Claim, CompleterAttempts, Fingerprint, IdempotencyKey, KeyRecords, KeyUpdate,
  StageResult, UpdateValue, COLUMNS,
};
use crate::observe;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqliteQueryResult, SqliteRow};
use sqlx::{Row, Sqlite};

type LiteQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// The statement runners, each recorded in the operation's statement log when one is in scope
/// (`observe`).
trait Recorded {
  async fn optional(self, c: &mut SqliteConnection) -> Result<Option<SqliteRow>>;
  async fn one(self, c: &mut SqliteConnection) -> Result<SqliteRow>;
  async fn all(self, c: &mut SqliteConnection) -> Result<Vec<SqliteRow>>;
  async fn run(self, c: &mut SqliteConnection) -> Result<SqliteQueryResult>;
}

impl Recorded for LiteQuery<'_> {
  async fn optional(self, c: &mut SqliteConnection) -> Result<Option<SqliteRow>> {
    let sql = sqlx::Execute::sql(&self);
    let rows = |r: &Option<SqliteRow>| u64::from(r.is_some());
    observe::timed(sql, rows, async { Ok(self.fetch_optional(c).await?) }).await
  }

  async fn one(self, c: &mut SqliteConnection) -> Result<SqliteRow> {
    let sql = sqlx::Execute::sql(&self);
    observe::timed(sql, |_| 1, async { Ok(self.fetch_one(c).await?) }).await
  }

  async fn all(self, c: &mut SqliteConnection) -> Result<Vec<SqliteRow>> {
    let sql = sqlx::Execute::sql(&self);
    let rows = |r: &Vec<SqliteRow>| r.len() as u64;
    observe::timed(sql, rows, async { Ok(self.fetch_all(c).await?) }).await
  }

  async fn run(self, c: &mut SqliteConnection) -> Result<SqliteQueryResult> {
    let sql = sqlx::Execute::sql(&self);
    let rows = |r: &SqliteQueryResult| r.rows_affected();
    observe::timed(sql, rows, async { Ok(self.execute(c).await?) }).await
  }
}

/// The current time as stored: `2024-01-02T03:04:05.678Z`.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub(crate) fn iso(d: &DateTime<Utc>) -> String {
  d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
  DateTime::parse_from_rfc3339(s)
    .map(|d| d.with_timezone(&Utc))
    .or_else(|_| {
      chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
    })
    .map_err(|_| Error::Database {
      sqlstate: None,
      message: format!("stored timestamp '{s}' is not ISO 8601"),
    })
}

fn parse_json(s: Option<String>) -> Result<Option<Value>> {
  s.map(|t| {
    serde_json::from_str(&t).map_err(|_| Error::Database {
      sqlstate: None,
      message: "stored JSON column is not valid JSON".into(),
    })
  })
  .transpose()
}

fn json_text(v: &Option<Value>) -> Option<String> {
  v.as_ref().map(|j| j.to_string())
}

pub(crate) fn key_from_row(row: &SqliteRow) -> Result<IdempotencyKey> {
  Ok(IdempotencyKey {
    id: row.try_get("id")?,
    idempotency_key: row.try_get("idempotency_key")?,
    created_at: parse_time(&row.try_get::<String, _>("created_at")?)?,
    locked_at: row
      .try_get::<Option<String>, _>("locked_at")?
      .map(|s| parse_time(&s))
      .transpose()?,
    request_method: row.try_get("request_method")?,
    request_params: parse_json(row.try_get("request_params")?)?,
    request_path: row.try_get("request_path")?,
    response_code: row.try_get("response_code")?,
    response_body: parse_json(row.try_get("response_body")?)?,
    recovery_point: row.try_get("recovery_point")?,
  })
}

/// SQLite's date modifier for "lease_ms ago".
fn ago(lease_ms: f64) -> String {
  format!("-{:.3} seconds", lease_ms / 1000.0)
}

pub(crate) async fn insert_or_claim(
  c: &mut SqliteConnection,
  id: &str,
  key: &str,
  fp: &Fingerprint,
  lease_ms: f64,
  may_claim: bool,
) -> Result<Claim> {
  let params = json_text(&fp.params);
  let sql = format!(
    "INSERT INTO idempotency_key (id, idempotency_key, locked_at, request_method, request_params, request_path) \
     VALUES (?1, ?2, {NOW}, ?3, ?4, ?5) ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLUMNS}"
  );
  let inserted = sqlx::query(&sql)
    .bind(id)
    .bind(key)
    .bind(&fp.method)
    .bind(&params)
    .bind(&fp.path)
    .optional(c)
    .await?;
  if let Some(row) = inserted {
    return Ok(Claim::Got(key_from_row(&row)?));
  }
  const SAME: &str = "(request_method IS NULL OR request_method IS ?3) AND (request_path IS NULL OR request_path IS ?4) \
     AND (request_params IS NULL OR request_params IS ?5)";
  if may_claim {
    let sql = format!(
      "UPDATE idempotency_key SET locked_at = {NOW} WHERE idempotency_key = ?1 AND recovery_point <> 'finished' \
       AND (locked_at IS NULL OR locked_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2)) AND {SAME} RETURNING {COLUMNS}"
    );
    let claimed = sqlx::query(&sql)
      .bind(key)
      .bind(ago(lease_ms))
      .bind(&fp.method)
      .bind(&fp.path)
      .bind(&params)
      .optional(c)
      .await?;
    if let Some(row) = claimed {
      return Ok(Claim::Got(key_from_row(&row)?));
    }
  }
  let sql = format!(
    "SELECT {COLUMNS}, ({SAME}) AS same_request FROM idempotency_key WHERE idempotency_key = ?1"
  );
  let Some(row) = sqlx::query(&sql)
    .bind(key)
    .bind(ago(lease_ms))
    .bind(&fp.method)
    .bind(&fp.path)
    .bind(&params)
    .optional(c)
    .await?
  else {
    return Ok(Claim::Vanished);
  };
  Ok(Claim::Existing {
    key: key_from_row(&row)?,
    same_request: row.try_get::<bool, _>("same_request")?,
  })
}

pub(crate) async fn create(
  c: &mut SqliteConnection,
  id: &str,
  key: &str,
  fp: &Fingerprint,
  recovery_point: Option<String>,
) -> Result<IdempotencyKey> {
  let sql = format!(
    "INSERT INTO idempotency_key (id, idempotency_key, request_method, request_params, request_path, recovery_point) \
     VALUES (?1, ?2, ?3, ?4, ?5, COALESCE(?6, 'started')) RETURNING {COLUMNS}"
  );
  let row = sqlx::query(&sql)
    .bind(id)
    .bind(key)
    .bind(&fp.method)
    .bind(json_text(&fp.params))
    .bind(&fp.path)
    .bind(recovery_point)
    .one(c)
    .await?;
  key_from_row(&row)
}

pub(crate) async fn select_by(
  c: &mut SqliteConnection,
  selector: &[(&'static str, UpdateValue)],
  prefix: Option<&str>,
) -> Result<Vec<IdempotencyKey>> {
  let mut sql = format!("SELECT {COLUMNS} FROM idempotency_key WHERE TRUE");
  let mut n = 0;
  if prefix.is_some() {
    n += 1;
    sql += " AND substr(idempotency_key, 1, length(?1)) = ?1";
  }
  for (col, value) in selector {
    match value {
      UpdateValue::Null => sql += &format!(" AND {col} IS NULL"),
      // SQLite has no array parameters: IN over the elements of a bound JSON array.
      UpdateValue::Json(Value::Array(_)) if !matches!(*col, "request_params" | "response_body") => {
        n += 1;
        sql += &format!(" AND {col} IN (SELECT value FROM json_each(?{n}))");
      }
      _ => {
        n += 1;
        sql += &format!(" AND {col} = ?{n}");
      }
    }
  }
  sql += " LIMIT 2";
  let mut q = sqlx::query(&sql);
  if let Some(p) = prefix {
    q = q.bind(p);
  }
  for (col, v) in selector {
    if !matches!(v, UpdateValue::Null) {
      q = bind_column(q, col, v)?;
    }
  }
  q.all(c).await?.iter().map(key_from_row).collect()
}

fn bind_column<'q>(q: LiteQuery<'q>, col: &str, v: &'q UpdateValue) -> Result<LiteQuery<'q>> {
  let bad = || Error::invalid(format!("selector value for '{col}' has the wrong type"));
  Ok(match (col, v) {
    ("request_params" | "response_body", UpdateValue::Json(j)) => q.bind(j.to_string()),
    (_, UpdateValue::Json(Value::Array(items))) => q.bind(Value::Array(items.clone()).to_string()),
    ("response_code", UpdateValue::Json(Value::Number(n))) => q.bind(n.as_i64().ok_or_else(bad)?),
    ("created_at" | "locked_at", UpdateValue::Date(d)) => q.bind(iso(d)),
    ("created_at" | "locked_at", _) => return Err(bad()),
    (_, UpdateValue::Json(Value::String(s))) => q.bind(s.as_str()),
    _ => return Err(bad()),
  })
}

pub(crate) async fn lock(
  c: &mut SqliteConnection,
  key: &str,
  lease_ms: f64,
) -> Result<Option<IdempotencyKey>> {
  let sql = format!(
    "UPDATE idempotency_key SET locked_at = {NOW} WHERE idempotency_key = ?1 \
     AND (locked_at IS NULL OR locked_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2)) RETURNING {COLUMNS}"
  );
  sqlx::query(&sql)
    .bind(key)
    .bind(ago(lease_ms))
    .optional(c)
    .await?
    .map(|r| key_from_row(&r))
    .transpose()
}

pub(crate) async fn update(
  c: &mut SqliteConnection,
  key: &str,
  u: KeyUpdate,
) -> Result<Option<IdempotencyKey>> {
  let mut sets = Vec::new();
  let mut q_binds: Vec<Option<String>> = Vec::new();
  let mut code: Option<Option<i32>> = None;
  if let Some(v) = u.locked_at {
    q_binds.push(v.as_ref().map(iso));
    sets.push(format!("locked_at = ?{}", q_binds.len() + 1));
  }
  for (col, v) in [
    ("request_method", u.request_method),
    ("request_path", u.request_path),
    ("recovery_point", u.recovery_point.map(Some)),
  ] {
    if let Some(v) = v {
      q_binds.push(v);
      sets.push(format!("{col} = ?{}", q_binds.len() + 1));
    }
  }
  for (col, v) in [
    ("request_params", u.request_params),
    ("response_body", u.response_body),
  ] {
    if let Some(v) = v {
      q_binds.push(json_text(&v));
      sets.push(format!("{col} = ?{}", q_binds.len() + 1));
    }
  }
  if let Some(v) = u.response_code {
    code = Some(v);
    sets.push(format!("response_code = ?{}", q_binds.len() + 2));
  }
  let sql = if sets.is_empty() {
    format!("SELECT {COLUMNS} FROM idempotency_key WHERE idempotency_key = ?1")
  } else {
    format!(
      "UPDATE idempotency_key SET {} WHERE idempotency_key = ?1 RETURNING {COLUMNS}",
      sets.join(", ")
    )
  };
  let mut q = sqlx::query(&sql).bind(key);
  for b in q_binds {
    q = q.bind(b);
  }
  if let Some(v) = code {
    q = q.bind(v);
  }
  q.optional(c).await?.map(|r| key_from_row(&r)).transpose()
}

pub(crate) async fn select_key(
  c: &mut SqliteConnection,
  key: &str,
) -> Result<Option<IdempotencyKey>> {
  let sql = format!("SELECT {COLUMNS} FROM idempotency_key WHERE idempotency_key = ?1");
  sqlx::query(&sql)
    .bind(key)
    .optional(c)
    .await?
    .map(|r| key_from_row(&r))
    .transpose()
}

pub(crate) async fn apply(
  c: &mut SqliteConnection,
  id: &str,
  r: StageResult,
) -> Result<IdempotencyKey> {
  let sql = format!(
    "UPDATE idempotency_key SET recovery_point = COALESCE(?2, 'finished'), \
     locked_at = CASE WHEN ?2 IS NULL THEN NULL ELSE {NOW} END, \
     response_code = CASE WHEN ?2 IS NULL AND ?3 THEN ?4 ELSE response_code END, \
     response_body = CASE WHEN ?2 IS NULL AND ?5 THEN ?6 ELSE response_body END \
     WHERE id = ?1 RETURNING {COLUMNS}"
  );
  let (set_code, code) = r.response_code.map_or((false, None), |v| (true, v));
  let (set_body, body) = r.response_body.map_or((false, None), |v| (true, v));
  let row = sqlx::query(&sql)
    .bind(id)
    .bind(r.recovery_point)
    .bind(set_code)
    .bind(code)
    .bind(set_body)
    .bind(json_text(&body))
    .one(c)
    .await?;
  key_from_row(&row)
}

/// See `pg::sql::reap_batch`; keys a stage of this process is working (`working`) are skipped.
pub(crate) async fn reap_batch(
  c: &mut SqliteConnection,
  older_than_ms: f64,
  batch: i32,
  lease_ms: f64,
  working: &[String],
  prefix: Option<&str>,
) -> Result<u64> {
  let r = sqlx::query(
    "DELETE FROM idempotency_key WHERE id IN (SELECT id FROM idempotency_key \
     WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
     AND (locked_at IS NULL OR locked_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3)) \
     AND idempotency_key NOT IN (SELECT value FROM json_each(?4)) \
     AND (?5 IS NULL OR substr(idempotency_key, 1, length(?5)) = ?5) \
     ORDER BY created_at LIMIT ?2)",
  )
  .bind(ago(older_than_ms))
  .bind(batch)
  .bind(ago(lease_ms))
  .bind(serde_json::to_string(working).unwrap_or_else(|_| "[]".into()))
  .bind(prefix)
  .run(c)
  .await?;
  Ok(r.rows_affected())
}

/// See `pg::sql::abandoned`.
pub(crate) async fn abandoned(
  c: &mut SqliteConnection,
  idle_ms: f64,
  limit: i32,
  prefix: Option<&str>,
) -> Result<Vec<IdempotencyKey>> {
  let sql = format!(
    "SELECT {COLUMNS} FROM idempotency_key WHERE recovery_point <> 'finished' \
     AND COALESCE(locked_at, created_at) < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
     AND created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
     AND (?3 IS NULL OR substr(idempotency_key, 1, length(?3)) = ?3) \
     ORDER BY COALESCE(locked_at, created_at) LIMIT ?2"
  );
  let rows = sqlx::query(&sql)
    .bind(ago(idle_ms))
    .bind(limit)
    .bind(prefix)
    .all(c)
    .await?;
  rows.iter().map(key_from_row).collect()
}

/// See `pg::sql::records`.
pub(crate) async fn records(c: &mut SqliteConnection, key_id: &str) -> Result<KeyRecords> {
  const SQL: &str =
    "SELECT a.route, a.accepted_at, c.attempts, c.last_attempt_at, c.next_attempt_at, \
     c.last_error_code, c.last_error, c.gave_up_at FROM (SELECT ?1 AS key_id) k \
     LEFT JOIN idempotency_key_accepted a ON a.key_id = k.key_id \
     LEFT JOIN idempotency_key_completer c ON c.key_id = k.key_id";
  let row = match sqlx::query(SQL).bind(key_id).optional(c).await {
    Ok(Some(row)) => row,
    Ok(None) => return Ok(KeyRecords::default()),
    Err(e) if e.to_string().contains("no such table") => return Ok(KeyRecords::default()),
    Err(e) => return Err(e),
  };
  let time = |name: &str| -> Result<Option<DateTime<Utc>>> {
    row
      .try_get::<Option<String>, _>(name)?
      .map(|s| parse_time(&s))
      .transpose()
  };
  let missing = |name: &str| Error::Database {
    sqlstate: None,
    message: format!("column {name} is NULL"),
  };
  Ok(KeyRecords {
    accepted: match time("accepted_at")? {
      Some(accepted_at) => Some(Accepted {
        route: row.try_get("route")?,
        accepted_at,
      }),
      None => None,
    },
    completer: match row.try_get::<Option<i32>, _>("attempts")? {
      Some(attempts) => Some(CompleterAttempts {
        attempts,
        last_attempt_at: time("last_attempt_at")?.ok_or_else(|| missing("last_attempt_at"))?,
        next_attempt_at: time("next_attempt_at")?,
        last_error_code: row.try_get("last_error_code")?,
        last_error: row.try_get("last_error")?,
        gave_up_at: time("gave_up_at")?,
      }),
      None => None,
    },
  })
}

pub(crate) const RELEASE_SQL: &str =
  "UPDATE idempotency_key SET locked_at = NULL WHERE idempotency_key = ?1 AND recovery_point <> 'finished'";
