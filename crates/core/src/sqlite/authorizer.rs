//! A stage runs with an authorizer armed on its connection, from the callback's first
//! statement until just before the stage's COMMIT or ROLLBACK: SQLite asks it at prepare time
//! about every statement of a string, so
//! transaction control, ATTACH/DETACH and pragmas that set a value are refused however they
//! are spelled (quoted names, comments, a second statement after `;`), which text checks
//! cannot promise. The stage's own statements in between (its SELECT, UPDATE, savepoints of
//! nested stages) are none of those.

use crate::error::{Error, Result};
use libsqlite3_sys as ffi;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Mutex;

/// Connections (their `sqlite3*`) running a callback's statement right now. The authorizer
/// stays installed; a connection not in this list (our own statements: COMMIT, ROLLBACK,
/// the key's UPDATE) is never refused.
static ARMED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Pragmas that take an argument without changing the connection: it names what to inspect.
const INSPECTING: &[&str] = &[
  "table_info",
  "table_xinfo",
  "table_list",
  "index_info",
  "index_xinfo",
  "index_list",
  "foreign_key_list",
  "foreign_key_check",
  "integrity_check",
  "quick_check",
];

unsafe extern "C" fn authorize(
  arg: *mut c_void,
  action: c_int,
  a1: *const c_char,
  a2: *const c_char,
  _db: *const c_char,
  _trigger: *const c_char,
) -> c_int {
  if !ARMED
    .lock()
    .map(|a| a.contains(&(arg as usize)))
    .unwrap_or(false)
  {
    return ffi::SQLITE_OK;
  }
  let deny = match action {
    ffi::SQLITE_TRANSACTION | ffi::SQLITE_ATTACH | ffi::SQLITE_DETACH => true,
    ffi::SQLITE_PRAGMA if !a2.is_null() => {
      let name = if a1.is_null() {
        ""
      } else {
        CStr::from_ptr(a1).to_str().unwrap_or("")
      };
      !INSPECTING.contains(&name.to_ascii_lowercase().as_str())
    }
    _ => false,
  };
  if deny {
    ffi::SQLITE_DENY
  } else {
    ffi::SQLITE_OK
  }
}

/// Armed while alive; disarms on drop, also when the query's future is dropped mid-way.
pub(crate) struct Armed(usize);

impl Drop for Armed {
  fn drop(&mut self) {
    if let Ok(mut a) = ARMED.lock() {
      if let Some(i) = a.iter().position(|h| *h == self.0) {
        a.swap_remove(i);
      }
    }
  }
}

/// Install the authorizer on the connection (idempotent) and arm it.
pub(crate) async fn arm(c: &mut sqlx::SqliteConnection) -> Result<Armed> {
  let mut handle = c.lock_handle().await?;
  let db = handle.as_raw_handle().as_ptr();
  // SAFETY: the locked handle gives exclusive use of the connection; the callback only reads
  // its arguments and the ARMED list, and lives as long as the program.
  unsafe { ffi::sqlite3_set_authorizer(db, Some(authorize), db.cast()) };
  ARMED.lock().unwrap().push(db as usize);
  Ok(Armed(db as usize))
}

/// SQLITE_AUTH from a statement run under the authorizer: one of the refused kinds.
pub(crate) fn refused_by_authorizer(e: Error) -> Error {
  match &e {
    Error::Database {
      sqlstate: Some(s), ..
    } if s == "SQLITE_23" => Error::invalid(
      "transaction control, ATTACH/DETACH and PRAGMAs that set a value are not allowed inside a \
       stage: the stage commits or rolls back itself, and its connection goes back to the pool",
    ),
    _ => e,
  }
}

/// Transaction control by its first words, for spellings SQLite does not parse and so never
/// shows the authorizer (`START TRANSACTION`): refused as the authorizer refuses the rest, so the
/// caller sees the same `INVALID_ARGUMENT` for every spelling. SQLite's comments do not nest.
pub(crate) fn refuse_transaction_words(sql: &str) -> Result<()> {
  let mut rest = sql;
  loop {
    rest = rest.trim_start();
    if let Some(r) = rest.strip_prefix("--") {
      rest = r.split_once('\n').map_or("", |(_, r)| r);
    } else if let Some(r) = rest.strip_prefix("/*") {
      rest = r.split_once("*/").map_or("", |(_, r)| r);
    } else {
      break;
    }
  }
  let words: Vec<String> = rest
    .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
    .filter(|w| !w.is_empty())
    .take(3)
    .map(str::to_ascii_uppercase)
    .collect();
  let first = words.first().map_or("", String::as_str);
  let second = words.get(1).map_or("", String::as_str);
  let control = match first {
    "BEGIN" | "COMMIT" | "END" | "ABORT" => true,
    "START" => second == "TRANSACTION",
    // ROLLBACK [TRANSACTION] TO [SAVEPOINT] name is allowed.
    "ROLLBACK" => {
      !(second == "TO" || (second == "TRANSACTION" && words.get(2).is_some_and(|w| w == "TO")))
    }
    _ => false,
  };
  if control {
    return Err(Error::invalid(
      "transaction control is not allowed inside a stage: the stage commits or rolls back itself",
    ));
  }
  Ok(())
}
