//! The statements of the two tables the JS side keeps beside Medusa's (`idempotency_key_accepted`,
//! the requests a handler accepted; `idempotency_key_completer`, the completer's attempts),
//! here beside their migrations, and the middleware's release of a key no handler took. The
//! middleware and the completer run them inside a stage's transaction, through `tx.query` or a
//! caller's executor, so they are text: `$n` placeholders, one text for PostgreSQL and SQLite
//! (the stage path turns `$n` into SQLite's `?n`; timestamps are bound as Dates, which SQLite
//! stores as ISO 8601 text, so they compare in order on both).

macro_rules! sweep_accepted {
  ($scope:literal) => {
    concat!(
      "DELETE FROM idempotency_key_accepted WHERE key_id IN (
  SELECT a.key_id FROM idempotency_key_accepted a LEFT JOIN idempotency_key k ON k.id = a.key_id
  WHERE (k.id IS NULL OR k.recovery_point = 'finished')
  ",
      $scope,
      " LIMIT $1)"
    )
  };
}

macro_rules! sweep_attempts {
  ($scope:literal) => {
    concat!(
      "DELETE FROM idempotency_key_completer WHERE key_id IN (
  SELECT c.key_id FROM idempotency_key_completer c LEFT JOIN idempotency_key k ON k.id = c.key_id
  WHERE (k.id IS NULL OR k.recovery_point = 'finished') AND c.last_attempt_at < $1
  ",
      $scope,
      " LIMIT $2)"
    )
  };
}

/// The statements by name, as the binding hands them to `lib/` (`bookkeepingStatements()`).
pub const STATEMENTS: &[(&str, &str)] = &[
  // A handler accepted the key's request: (key id, stored key, route, path params JSON, now).
  (
    "acceptRequest",
    "INSERT INTO idempotency_key_accepted (key_id, idempotency_key, route, path_params, accepted_at)
  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING",
  ),
  // The stage that finishes a key drops its acceptance: (key id).
  (
    "forgetAcceptance",
    "DELETE FROM idempotency_key_accepted WHERE key_id = $1",
  ),
  // Acceptance rows of keys that are finished or gone (reaped), a batch: (batch).
  ("sweepAccepted", sweep_accepted!("")),
  // The same for one tenant: (batch, prefix length, prefix).
  (
    "sweepAcceptedScoped",
    sweep_accepted!("AND substr(a.idempotency_key, 1, $2) = $3"),
  ),
  // The release of a key no handler took: renamed out of every client's reach (a suffix starting
  // with DEL, which no valid key contains), its stored request cleared, so the client's key is
  // free again and neither a retry nor the completer can finish it; left alone if it was
  // accepted meanwhile or moved on: (key id, suffix).
  (
    "releaseUnaccepted",
    "UPDATE idempotency_key SET idempotency_key = idempotency_key || $2,
  request_method = NULL, request_path = NULL, request_params = NULL
  WHERE id = $1 AND recovery_point = 'started'
  AND NOT EXISTS (SELECT 1 FROM idempotency_key_accepted a WHERE a.key_id = $1)
  RETURNING id",
  ),
  // The completer's attempt, counted before it starts. The upsert has no read before it, so two
  // completers counting different keys at once do not conflict under SERIALIZABLE; a key
  // backing off or past maxAttempts returns no row: (key id, stored key, now, maxAttempts).
  (
    "countAttempt",
    "INSERT INTO idempotency_key_completer AS c (key_id, idempotency_key, attempts, last_attempt_at)
  VALUES ($1, $2, 1, $3)
  ON CONFLICT (key_id) DO UPDATE SET attempts = c.attempts + 1, last_attempt_at = excluded.last_attempt_at
  WHERE c.attempts < $4 AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= excluded.last_attempt_at)
  RETURNING attempts",
  ),
  // (key id).
  (
    "readAttempts",
    "SELECT attempts, next_attempt_at, gave_up_at FROM idempotency_key_completer WHERE key_id = $1",
  ),
  // (key id, now).
  (
    "markGaveUp",
    "UPDATE idempotency_key_completer SET gave_up_at = $2 WHERE key_id = $1 AND gave_up_at IS NULL",
  ),
  // A failed attempt's error and backoff: (key id, code, message, next attempt at, gave up at).
  (
    "recordFailure",
    "UPDATE idempotency_key_completer
  SET last_error_code = $2, last_error = $3, next_attempt_at = $4, gave_up_at = $5 WHERE key_id = $1",
  ),
  // Attempt rows of keys that are finished or gone, last tried before a cutoff: (cutoff, batch).
  ("sweepAttempts", sweep_attempts!("")),
  // The same for one tenant: (cutoff, batch, prefix length, prefix).
  (
    "sweepAttemptsScoped",
    sweep_attempts!("AND substr(c.idempotency_key, 1, $3) = $4"),
  ),
];

/// The completer's listing of a pass, for `routes` registered routes, of one tenant's keys when
/// `scoped`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompleterList {
  /// The accepted keys a pass may drive: of a registered route, unfinished, idle, not backing
  /// off and not given up on (a key at maxAttempts whose give-up is not yet recorded is listed
  /// once more, to record it). Parameters: each route, idle-before twice, (prefix length,
  /// prefix when scoped), maxAttempts, now, limit.
  pub sql: String,
  /// How many keys of the same routes are left out for backing off or given up on. Parameters:
  /// the same up to now, without the limit.
  pub count_sql: String,
}

pub fn completer_list(routes: usize, scoped: bool) -> CompleterList {
  let mut n = 0;
  let mut p = || {
    n += 1;
    format!("${n}")
  };
  let route_params: Vec<String> = (0..routes).map(|_| p()).collect();
  let (idle_a, idle_b) = (p(), p());
  let scope = if scoped {
    let (len, prefix) = (p(), p());
    format!("AND substr(k.idempotency_key, 1, {len}) = {prefix}")
  } else {
    String::new()
  };
  let accepted = |completer_join: &str| {
    format!(
      "FROM idempotency_key_accepted a JOIN idempotency_key k ON k.id = a.key_id{completer_join}
  WHERE a.route IN ({}) AND k.recovery_point <> 'finished'
  AND COALESCE(k.locked_at, k.created_at) < {idle_a} AND k.created_at < {idle_b}
  {scope}",
      route_params.join(", ")
    )
  };
  let (max_attempts, now, limit) = (p(), p(), p());
  let waiting = |c: &str| {
    format!("({c}.gave_up_at IS NOT NULL OR ({c}.attempts < {max_attempts} AND {c}.next_attempt_at > {now}))")
  };
  let sql = format!(
    "SELECT k.id AS id, k.idempotency_key AS idempotency_key, a.route AS route, a.path_params AS path_params
  {}
  AND NOT EXISTS (SELECT 1 FROM idempotency_key_completer c WHERE c.key_id = a.key_id AND {})
  ORDER BY COALESCE(k.locked_at, k.created_at), k.id LIMIT {limit}",
    accepted(""),
    waiting("c")
  );
  let count_sql = format!(
    "SELECT COALESCE(SUM(CASE WHEN c.gave_up_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS gave_up,
  COALESCE(SUM(CASE WHEN c.gave_up_at IS NULL THEN 1 ELSE 0 END), 0) AS backoff
  {}
  AND {}",
    accepted(" JOIN idempotency_key_completer c ON c.key_id = a.key_id"),
    waiting("c")
  );
  CompleterList { sql, count_sql }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn statements_are_named_once() {
    let mut names: Vec<&str> = STATEMENTS.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), STATEMENTS.len());
  }

  #[test]
  fn scoped_sweeps_take_the_prefix_after_the_batch() {
    let get = |name: &str| STATEMENTS.iter().find(|(n, _)| *n == name).unwrap().1;
    assert!(get("sweepAccepted")
      .ends_with("WHERE (k.id IS NULL OR k.recovery_point = 'finished')\n   LIMIT $1)"));
    assert!(get("sweepAcceptedScoped").contains("substr(a.idempotency_key, 1, $2) = $3 LIMIT $1)"));
    assert!(get("sweepAttemptsScoped").contains("substr(c.idempotency_key, 1, $3) = $4 LIMIT $2)"));
  }

  #[test]
  fn the_listing_numbers_its_parameters_in_order() {
    let l = completer_list(2, true);
    assert!(l.sql.contains("a.route IN ($1, $2)"));
    assert!(l.sql.contains("< $3 AND k.created_at < $4"));
    assert!(l.sql.contains("substr(k.idempotency_key, 1, $5) = $6"));
    assert!(l.sql.contains("c.attempts < $7 AND c.next_attempt_at > $8"));
    assert!(l.sql.ends_with("LIMIT $9"));
    // The count takes the same parameters but the limit.
    assert!(l
      .count_sql
      .contains("c.attempts < $7 AND c.next_attempt_at > $8))"));
    assert!(!l.count_sql.contains("$9"));
    let unscoped = completer_list(1, false);
    assert!(unscoped.sql.contains("a.route IN ($1)"));
    assert!(!unscoped.sql.contains("substr"));
    assert!(unscoped.sql.ends_with("LIMIT $6"));
  }
}
