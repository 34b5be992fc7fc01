//! PostgreSQL connection settings: the URL as libpq reads it (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`, `connect_timeout`), with TLS given in code applied over it.

use crate::error::{Error, Result};
use crate::options::Ssl;
use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;
use std::time::Duration;

/// sqlx's options from the URL (which reads libpq's `sslmode`, `sslrootcert`, `sslcert`,
/// `sslkey`), with TLS given in code applied over them. No startup parameter beyond the ones
/// a transaction-mode pooler passes through (PgBouncer refuses `options` and
/// `extra_float_digits` unless told to ignore them).
pub(crate) fn pg_connect_options(url: &str, ssl: Option<&Ssl>) -> Result<PgConnectOptions> {
  use sqlx::postgres::PgSslMode;
  let mut o = PgConnectOptions::from_str(url)
    .map_err(|_| Error::invalid("invalid PostgreSQL connection URL"))?
    .extra_float_digits(None);
  // sqlx reads these files at connect time and reports a missing one as a bare "entity not
  // found"; name it here (a path, never a credential).
  for name in ["sslrootcert", "sslcert", "sslkey"] {
    if let Some(path) = url_param(url, name) {
      let path = percent_decode(path);
      if !std::path::Path::new(&path).is_file() {
        return Err(Error::invalid(format!("{name} file not found: {path}")));
      }
    }
  }
  if let Some(ssl) = ssl {
    o = if ssl.disable {
      o.ssl_mode(PgSslMode::Disable)
    } else {
      o.ssl_mode(if ssl.verify {
        PgSslMode::VerifyFull
      } else {
        PgSslMode::Require
      })
    };
    if let Some(ca) = &ssl.ca {
      o = o.ssl_root_cert_from_pem(ca.as_bytes().to_vec());
    }
    if let Some(cert) = &ssl.cert {
      o = o.ssl_client_cert_from_pem(cert.as_bytes());
    }
    if let Some(key) = &ssl.key {
      o = o.ssl_client_key_from_pem(key.as_bytes());
    }
  }
  Ok(o)
}

/// libpq's `connect_timeout` (whole seconds; 0 or less waits forever, which we leave to the
/// other bounds; 1 is taken as 2, as libpq does).
pub(crate) fn url_connect_timeout(url: &str) -> Option<Duration> {
  let secs: u64 = url_param(url, "connect_timeout")?
    .trim()
    .parse()
    .ok()
    .filter(|s| *s > 0)?;
  Some(Duration::from_secs(secs.max(2)))
}

/// `%2F` → `/` and the like (an invalid escape stays as it is).
fn percent_decode(s: &str) -> String {
  let b = s.as_bytes();
  let mut out = Vec::with_capacity(b.len());
  let mut i = 0;
  while i < b.len() {
    let hex = b
      .get(i + 1..i + 3)
      .and_then(|h| std::str::from_utf8(h).ok())
      .and_then(|h| u8::from_str_radix(h, 16).ok());
    match (b[i], hex) {
      (b'%', Some(x)) => {
        out.push(x);
        i += 3;
      }
      (b'+', _) => {
        out.push(b' ');
        i += 1;
      }
      (c, _) => {
        out.push(c);
        i += 1;
      }
    }
  }
  String::from_utf8_lossy(&out).into_owned()
}

/// A query parameter of a connection URL, as given (not percent-decoded).
fn url_param<'u>(url: &'u str, name: &str) -> Option<&'u str> {
  url
    .split_once('?')?
    .1
    .split('&')
    .filter_map(|kv| kv.split_once('='))
    .find(|(k, _)| *k == name)
    .map(|(_, v)| v)
}
