//! A statement's rows as node-postgres returns them: text columns parsed by type OID as
//! `pg-types` parses them, binary columns (the service's own statements, exact whatever the
//! session's settings) decoded; both by `types`.

use super::types::{decode_binary, decode_text};
use super::wire::{Format, Raw};
use crate::error::{Error, Result};
use crate::value::{Cell, QueryResult};

pub(crate) fn decode(raw: Raw) -> Result<QueryResult> {
  let mut out = QueryResult {
    columns: raw.columns.iter().map(|c| c.name.clone()).collect(),
    rows: Vec::with_capacity(raw.rows.len()),
    rows_affected: affected(&raw.tag),
  };
  for row in raw.rows {
    let mut cells = Vec::with_capacity(row.len());
    for (value, col) in row.iter().zip(&raw.columns) {
      cells.push(match value {
        None => Cell::Null,
        Some(b) => match col.format {
          Format::Binary => decode_binary(b, col.oid)?,
          Format::Text => {
            let s = std::str::from_utf8(b).map_err(|_| Error::Database {
              sqlstate: None,
              message: "a text-format value is not UTF-8".into(),
            })?;
            decode_text(s, col.oid)?
          }
        },
      });
    }
    out.rows.push(cells);
  }
  Ok(out)
}

/// The row count in a command tag (`INSERT 0 3`, `UPDATE 2`, `SELECT 5`); 0 for a tag without
/// one (`CREATE TABLE`).
fn affected(tag: &str) -> u64 {
  tag
    .rsplit(' ')
    .next()
    .and_then(|n| n.parse().ok())
    .unwrap_or(0)
}
