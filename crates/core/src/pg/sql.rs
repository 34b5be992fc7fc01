//! Every operation's PostgreSQL statements, run through an [`Exec`]: a pooled connection of
//! our own (native mode) or the caller's executor (bound mode: a TypeORM `EntityManager`, a
//! node-postgres client). One copy of the SQL serves both, so it casts every parameter: a
//! caller's executor sends untyped text and the server must not have to guess.

use super::exec::Exec;
use crate::error::{Error, Result};
use crate::model::{
  column_cast, Accepted, Claim, CompleterAttempts, Fingerprint, IdempotencyKey, KeyRecords,
  KeyUpdate, StageResult, UpdateValue, COLUMNS,
};
use crate::value::{exact_i64, Cell, Param, QueryResult};
use chrono::{DateTime, Utc};
use serde_json::Value;

fn text(v: &Option<String>) -> Param {
  v.as_ref().map_or(Param::Null, |s| Param::Text(s.clone()))
}

fn json(v: &Option<Value>) -> Param {
  v.as_ref().map_or(Param::Null, |j| Param::Json(j.clone()))
}

fn date(d: &DateTime<Utc>) -> Param {
  Param::Date(d.timestamp_millis() as f64)
}

/// Row `i`'s columns by name, whichever executor produced them (Dates or ISO strings, parsed
/// JSON or JSON text, numbers or numeric strings). `table` names the row in errors.
struct Fields<'r> {
  r: &'r QueryResult,
  i: usize,
  table: &'static str,
}

impl Fields<'_> {
  fn bad(&self, message: String) -> Error {
    Error::Database {
      sqlstate: None,
      message: format!("unexpected {} row: {message}", self.table),
    }
  }

  fn get(&self, name: &str) -> Result<&Cell> {
    self
      .r
      .columns
      .iter()
      .position(|c| c == name)
      .and_then(|p| self.r.rows[self.i].get(p))
      .ok_or_else(|| self.bad(format!("column {name} is missing")))
  }

  fn opt_text(&self, name: &str) -> Result<Option<String>> {
    Ok(match self.get(name)? {
      Cell::Null => None,
      Cell::Text(s) => Some(s.clone()),
      other => return Err(self.bad(format!("column {name} is not text: {other:?}"))),
    })
  }

  fn text(&self, name: &str) -> Result<String> {
    self
      .opt_text(name)?
      .ok_or_else(|| self.bad(format!("column {name} is NULL")))
  }

  fn opt_date(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(match self.get(name)? {
      Cell::Null => None,
      Cell::Date(ms) => exact_i64(ms.trunc()).and_then(DateTime::from_timestamp_millis),
      // ISO 8601 from an executor, or PostgreSQL's text output (simple protocol).
      Cell::Text(s) => Some(
        DateTime::parse_from_rfc3339(s)
          .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
          .map(|d| d.with_timezone(&Utc))
          .map_err(|_| self.bad(format!("column {name} is not a timestamp")))?,
      ),
      other => return Err(self.bad(format!("column {name} is not a timestamp: {other:?}"))),
    })
  }

  fn date(&self, name: &str) -> Result<DateTime<Utc>> {
    self
      .opt_date(name)?
      .ok_or_else(|| self.bad(format!("column {name} is NULL")))
  }

  fn opt_json(&self, name: &str) -> Result<Option<Value>> {
    Ok(match self.get(name)? {
      Cell::Null => None,
      Cell::Json(v) => Some(v.clone()),
      // A string from an executor that does not parse jsonb.
      Cell::Text(s) => Some(serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))),
      Cell::Number(n) => serde_json::Number::from_f64(*n).map(Value::Number),
      Cell::Bool(b) => Some(Value::Bool(*b)),
      other => return Err(self.bad(format!("column {name} is not JSON: {other:?}"))),
    })
  }

  fn opt_i32(&self, name: &str) -> Result<Option<i32>> {
    let bad = || self.bad(format!("column {name} is not a 32-bit integer"));
    Ok(match self.get(name)? {
      Cell::Null => None,
      Cell::Number(n) => Some(
        exact_i64(*n)
          .and_then(|i| i32::try_from(i).ok())
          .ok_or_else(bad)?,
      ),
      Cell::Text(s) => Some(s.parse().map_err(|_| bad())?),
      other => return Err(self.bad(format!("column {name} is not a number: {other:?}"))),
    })
  }
}

/// Read row `i` as a key, whichever executor produced it.
pub(crate) fn key_at(r: &QueryResult, i: usize) -> Result<IdempotencyKey> {
  let f = Fields {
    r,
    i,
    table: "idempotency_key",
  };
  Ok(IdempotencyKey {
    id: f.text("id")?,
    idempotency_key: f.text("idempotency_key")?,
    created_at: f.date("created_at")?,
    locked_at: f.opt_date("locked_at")?,
    request_method: f.opt_text("request_method")?,
    request_params: f.opt_json("request_params")?,
    request_path: f.opt_text("request_path")?,
    response_code: f.opt_i32("response_code")?,
    response_body: f.opt_json("response_body")?,
    recovery_point: f.text("recovery_point")?,
  })
}

/// Whether a handler accepted key `key_id`'s request and the completer's attempts at it; a
/// schema that predates those tables has neither. Which tables exist is asked first, so a
/// missing one never fails a statement (that would abort a caller's transaction).
pub(crate) async fn records(ex: &mut dyn Exec, key_id: &str) -> Result<KeyRecords> {
  const EXIST: &str = "SELECT to_regclass('idempotency_key_accepted') IS NOT NULL AS accepted, \
     to_regclass('idempotency_key_completer') IS NOT NULL AS completer";
  let exist = ex.query(EXIST, Vec::new()).await?;
  let has = |name: &str| {
    let col = exist.columns.iter().position(|c| c == name);
    matches!(
      col.and_then(|i| exist.rows.first()?.get(i)),
      Some(Cell::Bool(true))
    )
  };
  let (accepted, completer) = (has("accepted"), has("completer"));
  if !accepted && !completer {
    return Ok(KeyRecords::default());
  }
  let accepted_part = if accepted {
    (
      "a.route, a.accepted_at",
      "LEFT JOIN idempotency_key_accepted a ON a.key_id = k.key_id",
    )
  } else {
    (
      "NULL::varchar AS route, NULL::timestamptz AS accepted_at",
      "",
    )
  };
  let completer_part = if completer {
    (
      "c.attempts, c.last_attempt_at, c.next_attempt_at, c.last_error_code, c.last_error, c.gave_up_at",
      "LEFT JOIN idempotency_key_completer c ON c.key_id = k.key_id",
    )
  } else {
    ("NULL::int AS attempts", "")
  };
  let sql = format!(
    "SELECT {}, {} FROM (SELECT $1::varchar AS key_id) k {} {}",
    accepted_part.0, completer_part.0, accepted_part.1, completer_part.1
  );
  let r = ex.query(&sql, vec![Param::Text(key_id.into())]).await?;
  if r.rows.is_empty() {
    return Ok(KeyRecords::default());
  }
  let f = Fields {
    r: &r,
    i: 0,
    table: "idempotency_key_accepted/completer",
  };
  Ok(KeyRecords {
    accepted: match f.opt_date("accepted_at")? {
      Some(accepted_at) => Some(Accepted {
        route: f.opt_text("route")?,
        accepted_at,
      }),
      None => None,
    },
    completer: match f.opt_i32("attempts")? {
      Some(attempts) => Some(CompleterAttempts {
        attempts,
        last_attempt_at: f.date("last_attempt_at")?,
        next_attempt_at: f.opt_date("next_attempt_at")?,
        last_error_code: f.opt_text("last_error_code")?,
        last_error: f.opt_text("last_error")?,
        gave_up_at: f.opt_date("gave_up_at")?,
      }),
      None => None,
    },
  })
}

fn bad_row(message: String) -> Error {
  Error::Database {
    sqlstate: None,
    message: format!("unexpected idempotency_key row: {message}"),
  }
}

/// The key in the statement's first row (`None`: no row).
pub(crate) fn first_key(r: QueryResult) -> Result<Option<IdempotencyKey>> {
  if r.rows.is_empty() {
    Ok(None)
  } else {
    key_at(&r, 0).map(Some)
  }
}

const FP: &str = "(request_method IS NULL OR request_method IS NOT DISTINCT FROM $3::varchar) \
  AND (request_path IS NULL OR request_path IS NOT DISTINCT FROM $4::varchar) \
  AND (request_params IS NULL OR request_params IS NOT DISTINCT FROM $5::jsonb)";

/// `initializeRequest`: insert the key leased, or claim an existing one whose lease is free,
/// or report what is there. A claim blocked by a stage's row lock (or a serialization
/// failure) is a held lease. Inside a caller's transaction (`in_tx`) the claim runs under a
/// savepoint, since its failure would otherwise abort the caller's transaction.
pub(crate) async fn initialize(
  ex: &mut dyn Exec,
  id: &str,
  key: &str,
  fp: &Fingerprint,
  lease_ms: f64,
  in_tx: bool,
) -> Result<Claim> {
  let insert = format!(
    "INSERT INTO idempotency_key (id, idempotency_key, locked_at, request_method, request_params, request_path) \
     VALUES ($1::varchar, $2::varchar, clock_timestamp(), $3::varchar, $4::jsonb, $5::varchar) \
     ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLUMNS}"
  );
  let r = ex
    .query(
      &insert,
      vec![
        Param::Text(id.into()),
        Param::Text(key.into()),
        text(&fp.method),
        json(&fp.params),
        text(&fp.path),
      ],
    )
    .await?;
  if let Some(k) = first_key(r)? {
    return Ok(Claim::Got(k));
  }
  let fp_params = || {
    vec![
      Param::Text(key.into()),
      Param::Number(lease_ms),
      text(&fp.method),
      text(&fp.path),
      json(&fp.params),
    ]
  };
  // The row is locked only when it is claimable: a claim refused for a fresh lease, a finished
  // key or another request's fingerprint must not hold the row lock, which the lease holder's
  // next stage (`FOR UPDATE NOWAIT`) would meet as LOCKED — inside a caller's transaction for
  // as long as that transaction lasts.
  let claimable = "recovery_point <> 'finished' \
     AND (locked_at IS NULL OR locked_at <= clock_timestamp() - $2::float8 * interval '1 millisecond')";
  let claim = format!(
    "WITH k AS (SELECT id FROM idempotency_key WHERE idempotency_key = $1::varchar AND {claimable} \
     AND {FP} FOR UPDATE NOWAIT) \
     UPDATE idempotency_key t SET locked_at = clock_timestamp() FROM k WHERE t.id = k.id \
     AND {} AND {} RETURNING {}",
    claimable.replace("recovery_point", "t.recovery_point").replace("locked_at", "t.locked_at"),
    FP.replace("request_", "t.request_"),
    COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
  );
  if in_tx {
    ex.query("SAVEPOINT medusa_idempotency_claim", vec![])
      .await?;
  }
  let claimed = ex.query(&claim, fp_params()).await;
  if in_tx {
    let end = if claimed.is_ok() {
      "RELEASE SAVEPOINT medusa_idempotency_claim"
    } else {
      "ROLLBACK TO SAVEPOINT medusa_idempotency_claim"
    };
    ex.query(end, vec![]).await?;
  }
  match claimed {
    Ok(r) => {
      if let Some(k) = first_key(r)? {
        return Ok(Claim::Got(k));
      }
    }
    Err(e) if matches!(e.sqlstate(), Some("55P03" | "40001" | "40P01")) => {}
    Err(e) => return Err(e),
  }
  let classify = format!(
    "SELECT {COLUMNS}, ({FP}) AS same_request FROM idempotency_key \
     WHERE idempotency_key = $1::varchar AND $2::float8 IS NOT NULL"
  );
  let r = ex.query(&classify, fp_params()).await?;
  if r.rows.is_empty() {
    return Ok(Claim::Vanished);
  }
  let same = r
    .columns
    .iter()
    .position(|c| c == "same_request")
    .and_then(|p| r.rows[0].get(p))
    .is_some_and(|c| {
      matches!(c, Cell::Bool(true)) || matches!(c, Cell::Text(t) if t == "t" || t == "true")
    });
  Ok(Claim::Existing {
    key: key_at(&r, 0)?,
    same_request: same,
  })
}

pub(crate) async fn create(
  ex: &mut dyn Exec,
  id: &str,
  key: &str,
  fp: &Fingerprint,
  recovery_point: Option<String>,
) -> Result<IdempotencyKey> {
  let sql = format!(
    "INSERT INTO idempotency_key (id, idempotency_key, request_method, request_params, request_path, recovery_point) \
     VALUES ($1::varchar, $2::varchar, $3::varchar, $4::jsonb, $5::varchar, COALESCE($6::varchar, 'started')) \
     RETURNING {COLUMNS}"
  );
  let r = ex
    .query(
      &sql,
      vec![
        Param::Text(id.into()),
        Param::Text(key.into()),
        text(&fp.method),
        json(&fp.params),
        text(&fp.path),
        text(&recovery_point),
      ],
    )
    .await?;
  first_key(r)?.ok_or_else(|| bad_row("INSERT returned no row".into()))
}

pub(crate) async fn select_by(
  ex: &mut dyn Exec,
  selector: &[(&'static str, UpdateValue)],
  prefix: Option<&str>,
) -> Result<Vec<IdempotencyKey>> {
  let mut sql = format!("SELECT {COLUMNS} FROM idempotency_key WHERE TRUE");
  let mut params = Vec::new();
  if let Some(p) = prefix {
    params.push(Param::Text(p.to_owned()));
    sql += " AND starts_with(idempotency_key, $1::text)";
  }
  for (col, value) in selector {
    let cast = column_cast(col).expect("columns are checked by the caller");
    match value {
      UpdateValue::Null => sql += &format!(" AND {col} IS NULL"),
      UpdateValue::Json(Value::Array(items)) if cast != "jsonb" => {
        params.push(Param::Array(items.iter().map(json_scalar).collect()));
        sql += &format!(" AND {col} = ANY(${}::{cast}[])", params.len());
      }
      UpdateValue::Json(v) if cast == "jsonb" => {
        params.push(Param::Json(v.clone()));
        sql += &format!(" AND {col} = ${}::jsonb", params.len());
      }
      UpdateValue::Json(v) => {
        params.push(json_scalar(v));
        sql += &format!(" AND {col} = ${}::{cast}", params.len());
      }
      UpdateValue::Date(d) => {
        params.push(date(d));
        sql += &format!(" AND {col} = ${}::{cast}", params.len());
      }
    }
  }
  sql += " LIMIT 2";
  let r = ex.query(&sql, params).await?;
  (0..r.rows.len()).map(|i| key_at(&r, i)).collect()
}

fn json_scalar(v: &Value) -> Param {
  match v {
    Value::Null => Param::Null,
    Value::Bool(b) => Param::Bool(*b),
    Value::Number(n) => Param::Number(n.as_f64().unwrap_or(f64::NAN)),
    Value::String(s) => Param::Text(s.clone()),
    other => Param::Json(other.clone()),
  }
}

pub(crate) async fn lock(
  ex: &mut dyn Exec,
  key: &str,
  lease_ms: f64,
) -> Result<Option<IdempotencyKey>> {
  let sql = format!(
    "UPDATE idempotency_key SET locked_at = clock_timestamp() WHERE idempotency_key = $1::varchar \
     AND (locked_at IS NULL OR locked_at <= clock_timestamp() - $2::float8 * interval '1 millisecond') \
     RETURNING {COLUMNS}"
  );
  first_key(
    ex.query(&sql, vec![Param::Text(key.into()), Param::Number(lease_ms)])
      .await?,
  )
}

pub(crate) async fn select_key(ex: &mut dyn Exec, key: &str) -> Result<Option<IdempotencyKey>> {
  let sql = format!("SELECT {COLUMNS} FROM idempotency_key WHERE idempotency_key = $1::varchar");
  first_key(ex.query(&sql, vec![Param::Text(key.into())]).await?)
}

pub(crate) async fn update(
  ex: &mut dyn Exec,
  key: &str,
  u: KeyUpdate,
) -> Result<Option<IdempotencyKey>> {
  let mut sets = Vec::new();
  let mut params = vec![Param::Text(key.into())];
  let mut set = |col: &str, cast: &str, p: Param| {
    params.push(p);
    sets.push(format!("{col} = ${}::{cast}", params.len()));
  };
  if let Some(v) = &u.locked_at {
    set(
      "locked_at",
      "timestamptz",
      v.as_ref().map_or(Param::Null, date),
    );
  }
  if let Some(v) = &u.request_method {
    set("request_method", "varchar", text(v));
  }
  if let Some(v) = &u.request_params {
    set("request_params", "jsonb", json(v));
  }
  if let Some(v) = &u.request_path {
    set("request_path", "varchar", text(v));
  }
  if let Some(v) = &u.response_code {
    set(
      "response_code",
      "int4",
      v.map_or(Param::Null, |n| Param::Number(n as f64)),
    );
  }
  if let Some(v) = &u.response_body {
    set("response_body", "jsonb", json(v));
  }
  if let Some(v) = &u.recovery_point {
    set("recovery_point", "varchar", Param::Text(v.clone()));
  }
  let sql = if sets.is_empty() {
    format!("SELECT {COLUMNS} FROM idempotency_key WHERE idempotency_key = $1::varchar")
  } else {
    format!(
      "UPDATE idempotency_key SET {} WHERE idempotency_key = $1::varchar RETURNING {COLUMNS}",
      sets.join(", ")
    )
  };
  first_key(ex.query(&sql, params).await?)
}

/// The stage's row, locked without waiting: a row another stage holds fails with 55P03.
pub(crate) async fn lock_row(ex: &mut dyn Exec, key: &str) -> Result<Option<IdempotencyKey>> {
  first_key(
    ex.query(&lock_row_sql(), vec![Param::Text(key.into())])
      .await?,
  )
}

pub(crate) fn lock_row_sql() -> String {
  format!(
    "SELECT {COLUMNS} FROM idempotency_key WHERE idempotency_key = $1::varchar FOR UPDATE NOWAIT"
  )
}

/// Apply a stage result. A NULL recovery point finishes the key: the lease is cleared and the
/// response columns are written only when flagged. Otherwise the lease is refreshed with the
/// commit-time clock, so a competing claim that waited on the row lock sees it fresh.
pub(crate) async fn apply(ex: &mut dyn Exec, id: &str, r: StageResult) -> Result<IdempotencyKey> {
  first_key(ex.query(&apply_sql(), apply_params(id, r)).await?)?
    .ok_or_else(|| bad_row("stage UPDATE returned no row".into()))
}

pub(crate) fn apply_sql() -> String {
  format!(
    "UPDATE idempotency_key SET \
     recovery_point = COALESCE($2::varchar, 'finished'), \
     locked_at = CASE WHEN $2::varchar IS NULL THEN NULL ELSE clock_timestamp() END, \
     response_code = CASE WHEN $2::varchar IS NULL AND $3::boolean THEN $4::int4 ELSE response_code END, \
     response_body = CASE WHEN $2::varchar IS NULL AND $5::boolean THEN $6::jsonb ELSE response_body END \
     WHERE id = $1::varchar RETURNING {COLUMNS}"
  )
}

/// The parameters of [`apply_sql`].
pub(crate) fn apply_params(id: &str, r: StageResult) -> Vec<Param> {
  let (set_code, code) = r.response_code.map_or((false, None), |v| (true, v));
  let (set_body, body) = r.response_body.map_or((false, None), |v| (true, v));
  vec![
    Param::Text(id.into()),
    text(&r.recovery_point),
    Param::Bool(set_code),
    code.map_or(Param::Null, |n| Param::Number(f64::from(n))),
    Param::Bool(set_body),
    json(&body),
  ]
}

pub(crate) const RELEASE_SQL: &str = "UPDATE idempotency_key SET locked_at = NULL \
  WHERE idempotency_key = $1::varchar AND recovery_point <> 'finished'";

pub(crate) async fn release(ex: &mut dyn Exec, key: &str) -> Result<()> {
  ex.query(RELEASE_SQL, vec![Param::Text(key.into())])
    .await
    .map(|_| ())
}

/// Delete up to `batch` keys created before `older_than_ms` ago, oldest first, skipping rows
/// a stage holds (`SKIP LOCKED`) and keys whose request lease is fresh. Returns how many.
pub(crate) async fn reap_batch(
  ex: &mut dyn Exec,
  older_than_ms: f64,
  batch: i32,
  lease_ms: f64,
  prefix: Option<&str>,
) -> Result<u64> {
  const SQL: &str = "WITH doomed AS (SELECT id FROM idempotency_key \
    WHERE created_at < clock_timestamp() - $1::float8 * interval '1 millisecond' \
    AND ($4::text IS NULL OR starts_with(idempotency_key, $4::text)) \
    AND (locked_at IS NULL OR locked_at <= clock_timestamp() - $3::float8 * interval '1 millisecond') \
    ORDER BY created_at LIMIT $2::int4 FOR UPDATE SKIP LOCKED) \
    DELETE FROM idempotency_key k USING doomed WHERE k.id = doomed.id RETURNING k.id";
  let r = ex
    .query(
      SQL,
      vec![
        Param::Number(older_than_ms),
        Param::Number(batch as f64),
        Param::Number(lease_ms),
        prefix.map_or(Param::Null, |p| Param::Text(p.to_owned())),
      ],
    )
    .await?;
  Ok(r.rows.len() as u64)
}

/// Unfinished keys whose last progress (a stage commit refreshes `locked_at`; else creation)
/// is older than `idle_ms`, least recent first. `created_at` is implied (progress comes after
/// creation) and stated so the created_at index can prune; no index covers `locked_at` or
/// `recovery_point`, which every stage writes (it would make every stage's UPDATE non-HOT).
pub(crate) async fn abandoned(
  ex: &mut dyn Exec,
  idle_ms: f64,
  limit: i32,
  prefix: Option<&str>,
) -> Result<Vec<IdempotencyKey>> {
  let sql = format!(
    "SELECT {COLUMNS} FROM idempotency_key WHERE recovery_point <> 'finished' \
     AND COALESCE(locked_at, created_at) < clock_timestamp() - $1::float8 * interval '1 millisecond' \
     AND created_at < clock_timestamp() - $1::float8 * interval '1 millisecond' \
     AND ($3::text IS NULL OR starts_with(idempotency_key, $3::text)) \
     ORDER BY COALESCE(locked_at, created_at) LIMIT $2::int4"
  );
  let r = ex
    .query(
      &sql,
      vec![
        Param::Number(idle_ms),
        Param::Number(limit as f64),
        prefix.map_or(Param::Null, |p| Param::Text(p.to_owned())),
      ],
    )
    .await?;
  (0..r.rows.len()).map(|i| key_at(&r, i)).collect()
}
