//! The model every other module shares: the idempotency key row as Medusa's entity has it, what
//! a stage returned, the request fingerprint, updates and claims, and the checks on what callers
//! pass in. It imports no module of this crate but `error`.

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Column list in entity order; every statement that returns a key selects exactly this.
pub(crate) const COLUMNS: &str = "id, idempotency_key, created_at, locked_at, request_method, \
   request_params, request_path, response_code, response_body, recovery_point";

/// The PostgreSQL type of each selectable column: its parameter cast, and what a selector
/// value for it must be.
pub(crate) fn column_cast(col: &str) -> Option<&'static str> {
  Some(match col {
    "id" | "idempotency_key" | "request_method" | "request_path" | "recovery_point" => "varchar",
    "response_code" => "int4",
    "created_at" | "locked_at" => "timestamptz",
    "request_params" | "response_body" => "jsonb",
    _ => return None,
  })
}

/// One row of `idempotency_key`, every field present.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyKey {
  pub id: String,
  pub idempotency_key: String,
  pub created_at: DateTime<Utc>,
  pub locked_at: Option<DateTime<Utc>>,
  pub request_method: Option<String>,
  pub request_params: Option<Value>,
  pub request_path: Option<String>,
  pub response_code: Option<i32>,
  pub response_body: Option<Value>,
  pub recovery_point: String,
}

pub const FINISHED: &str = "finished";

/// What the database holds about a key beside its row (`Service::inspect`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyRecords {
  /// Whether a handler accepted the key's request (`idempotency_key_accepted`).
  pub accepted: Option<Accepted>,
  /// The completer's attempts at the key (`idempotency_key_completer`).
  pub completer: Option<CompleterAttempts>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
  /// The route that took the request (`METHOD /path`), when it was named.
  pub route: Option<String>,
  pub accepted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompleterAttempts {
  pub attempts: i32,
  pub last_attempt_at: DateTime<Utc>,
  /// When a failed attempt may be retried (its backoff).
  pub next_attempt_at: Option<DateTime<Utc>>,
  pub last_error_code: Option<String>,
  pub last_error: Option<String>,
  /// Set when the completer gave up (maxAttempts reached).
  pub gave_up_at: Option<DateTime<Utc>>,
}

impl IdempotencyKey {
  pub fn is_finished(&self) -> bool {
    self.recovery_point == FINISHED
  }
}

/// `ikey_` + a ULID, as Medusa's `generateEntityId(id, "ikey")` makes it.
pub(crate) fn new_id() -> String {
  format!("ikey_{}", ulid::Ulid::new())
}

/// A client key: 1–255 printable ASCII characters (the IETF draft's sf-string is narrower).
pub(crate) fn validate_key(key: &str) -> Result<()> {
  if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
    return Err(Error::invalid(
      "idempotency key must be 1-255 printable ASCII characters",
    ));
  }
  Ok(())
}

/// The request a key was created for; compared when a key is reused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fingerprint {
  pub method: Option<String>,
  pub params: Option<Value>,
  pub path: Option<String>,
}

/// A partial update: `None` leaves a column alone, `Some(None)` writes NULL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyUpdate {
  pub locked_at: Option<Option<DateTime<Utc>>>,
  pub request_method: Option<Option<String>>,
  pub request_params: Option<Option<Value>>,
  pub request_path: Option<Option<String>>,
  pub response_code: Option<Option<i32>>,
  pub response_body: Option<Option<Value>>,
  pub recovery_point: Option<String>,
}

impl KeyUpdate {
  /// Build an update from a JS object's entries (already converted to JSON).
  /// Unknown fields and wrong types are `invalid_data`; the JSON `null` writes NULL.
  pub fn from_fields(fields: Vec<(String, UpdateValue)>) -> Result<Self> {
    let mut u = KeyUpdate::default();
    for (name, value) in fields {
      let bad = || Error::invalid(format!("field '{name}' has the wrong type"));
      match name.as_str() {
        "locked_at" => {
          u.locked_at = Some(match value {
            UpdateValue::Null => None,
            UpdateValue::Date(d) => Some(d),
            UpdateValue::Json(Value::String(s)) => Some(
              DateTime::parse_from_rfc3339(&s)
                .map_err(|_| bad())?
                .with_timezone(&Utc),
            ),
            _ => return Err(bad()),
          });
          // Both backends store and read back years 1–9999 in ISO form.
          if let Some(Some(d)) = u.locked_at {
            if !(1..=9999).contains(&chrono::Datelike::year(&d)) {
              return Err(Error::invalid("locked_at must be between years 1 and 9999"));
            }
          }
        }
        "request_method" | "request_path" => {
          let v = match value {
            UpdateValue::Null => None,
            UpdateValue::Json(Value::String(s)) => Some(s),
            _ => return Err(bad()),
          };
          if name == "request_method" {
            u.request_method = Some(v)
          } else {
            u.request_path = Some(v)
          }
        }
        "request_params" | "response_body" => {
          let v = match value {
            UpdateValue::Null => None,
            UpdateValue::Json(j) => Some(j),
            // As JSON.stringify prints a Date (toISOString).
            UpdateValue::Date(d) => Some(Value::String(
              d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            )),
          };
          if name == "request_params" {
            u.request_params = Some(v)
          } else {
            u.response_body = Some(v)
          }
        }
        "response_code" => {
          u.response_code = Some(match value {
            UpdateValue::Null => None,
            UpdateValue::Json(Value::Number(n)) => Some(
              n.as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(bad)?,
            ),
            _ => return Err(bad()),
          })
        }
        "recovery_point" => match value {
          UpdateValue::Json(Value::String(s)) if !s.is_empty() => u.recovery_point = Some(s),
          _ => return Err(Error::invalid("recovery_point must be a non-empty string")),
        },
        _ => {
          return Err(Error::invalid(format!(
            "'{name}' is not a field that update() can set"
          )))
        }
      }
    }
    Ok(u)
  }
}

/// A value of an update or selector field as it came from JS.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateValue {
  Null,
  Date(DateTime<Utc>),
  Json(Value),
}

/// What `initializeRequest` found: the key claimed for this request, or a key it must judge.
pub(crate) enum Claim {
  Got(IdempotencyKey),
  Existing {
    key: IdempotencyKey,
    same_request: bool,
  },
  /// Deleted between the claim and the look at it (a reap): the caller may simply retry.
  Vanished,
}

/// What a stage callback returned, as Medusa applies it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageResult {
  /// Truthy: only the recovery point moves.
  pub recovery_point: Option<String>,
  /// Otherwise the key is finished with these (`None` leaves the column alone).
  pub response_code: Option<Option<i32>>,
  pub response_body: Option<Option<Value>>,
}

impl StageResult {
  /// As Medusa applies it: with a recovery point the response fields are ignored (and never
  /// sent to the database).
  pub(crate) fn normalized(self) -> Self {
    if self.recovery_point.is_some() {
      StageResult {
        recovery_point: self.recovery_point,
        response_code: None,
        response_body: None,
      }
    } else {
      self
    }
  }
}
