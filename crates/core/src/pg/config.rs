//! Connection settings: the URL as libpq reads it (host, port, user, password, database,
//! `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `connect_timeout`, `application_name`), with
//! TLS given in code (`ssl`) applied over it, and the rustls client configuration they make.

use crate::error::{Error, Result};
use crate::options::Ssl;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
  Disable,
  Allow,
  Prefer,
  Require,
  VerifyCa,
  VerifyFull,
}

/// Where the server is.
#[derive(Debug, Clone)]
pub(crate) enum Host {
  Tcp(String),
  /// A Unix-domain socket directory (`?host=/var/run/postgresql`).
  Socket(String),
}

/// Everything needed to open (and cancel on) a connection.
#[derive(Clone)]
pub(crate) struct Config {
  pub(crate) host: Host,
  pub(crate) port: u16,
  pub(crate) user: String,
  pub(crate) password: Option<String>,
  pub(crate) database: String,
  pub(crate) application_name: Option<String>,
  pub(crate) ssl_mode: SslMode,
  /// The rustls configuration, when TLS may be used.
  pub(crate) tls: Option<Arc<ClientConfig>>,
  pub(crate) connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for Config {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    // Never the password.
    f.debug_struct("Config")
      .field("host", &self.host)
      .field("port", &self.port)
      .field("user", &self.user)
      .field("database", &self.database)
      .field("ssl_mode", &self.ssl_mode)
      .finish_non_exhaustive()
  }
}

fn bad_url() -> Error {
  Error::invalid("invalid PostgreSQL connection URL")
}

impl Config {
  /// Parse `postgres://user:password@host:port/database?params`, with `ssl` (from code) over
  /// the URL's TLS settings. Missing parts default as libpq's do (`PGUSER`, `PGPASSWORD`,
  /// `PGHOST`, `PGPORT`, `PGDATABASE`, then `localhost:5432` and the user's name).
  pub(crate) fn parse(url: &str, ssl: Option<&Ssl>) -> Result<Config> {
    // An empty host (`postgres://user@/db?host=/socket/dir`, as libpq allows) is parsed as
    // localhost, which `host` then overrides.
    let filled;
    let url = match url.split_once("://") {
      Some((scheme, rest))
        if rest.starts_with('/') || rest.split('/').next().is_some_and(|a| a.ends_with('@')) =>
      {
        let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        filled = format!("{scheme}://{auth}localhost{path}");
        filled.as_str()
      }
      _ => url,
    };
    let u = url::Url::parse(url).map_err(|_| bad_url())?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
      return Err(bad_url());
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let decode = |s: &str| percent_decode(s);
    let mut params = std::collections::HashMap::new();
    for (k, v) in u.query_pairs() {
      params.insert(k.into_owned(), v.into_owned());
    }
    let user = Some(decode(u.username()))
      .filter(|s| !s.is_empty())
      .or_else(|| params.get("user").cloned())
      .or_else(|| env("PGUSER"))
      .or_else(|| env("USER"))
      .unwrap_or_else(|| "postgres".into());
    let password = u
      .password()
      .map(decode)
      .or_else(|| params.get("password").cloned())
      .or_else(|| env("PGPASSWORD"));
    let host = match params.get("host").cloned() {
      Some(h) if h.starts_with('/') => Host::Socket(h),
      Some(h) if !h.is_empty() => Host::Tcp(h),
      _ => match u.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => Host::Tcp(decode(d)),
        Some(url::Host::Ipv4(a)) => Host::Tcp(a.to_string()),
        Some(url::Host::Ipv6(a)) => Host::Tcp(a.to_string()),
        _ => Host::Tcp(env("PGHOST").unwrap_or_else(|| "localhost".into())),
      },
    };
    let port = match params.get("port") {
      Some(p) => p.parse().map_err(|_| bad_url())?,
      None => u
        .port()
        .or_else(|| env("PGPORT").and_then(|p| p.parse().ok()))
        .unwrap_or(5432),
    };
    let path = decode(u.path().trim_start_matches('/'));
    let database = Some(path)
      .filter(|s| !s.is_empty())
      .or_else(|| params.get("dbname").cloned())
      .or_else(|| env("PGDATABASE"))
      .unwrap_or_else(|| user.clone());
    let mut ssl_mode = match params.get("sslmode").map(String::as_str) {
      None | Some("prefer") => SslMode::Prefer,
      Some("disable") => SslMode::Disable,
      Some("allow") => SslMode::Allow,
      Some("require") => SslMode::Require,
      Some("verify-ca") => SslMode::VerifyCa,
      Some("verify-full") => SslMode::VerifyFull,
      Some(_) => return Err(Error::invalid("invalid sslmode in the connection URL")),
    };
    let file = |name: &str| -> Result<Option<Vec<u8>>> {
      let Some(path) = params.get(name) else {
        return Ok(None);
      };
      std::fs::read(path)
        .map(Some)
        .map_err(|_| Error::invalid(format!("{name} file not found: {path}")))
    };
    let mut ca = file("sslrootcert")?;
    let mut cert = file("sslcert")?;
    let mut key = file("sslkey")?;
    // libpq: `require` with a root certificate verifies the chain, as verify-ca does.
    if ssl_mode == SslMode::Require && ca.is_some() {
      ssl_mode = SslMode::VerifyCa;
    }
    if let Some(ssl) = ssl {
      ssl_mode = if ssl.disable {
        SslMode::Disable
      } else if ssl.verify {
        SslMode::VerifyFull
      } else {
        SslMode::Require
      };
      if let Some(c) = &ssl.ca {
        ca = Some(c.as_bytes().to_vec());
      }
      if let Some(c) = &ssl.cert {
        cert = Some(c.as_bytes().to_vec());
      }
      if let Some(k) = &ssl.key {
        key = Some(k.as_bytes().to_vec());
      }
    }
    // verify-ca checks the chain and not the host name: against the public web roots anyone
    // with a certificate for any domain would pass. As libpq, it needs the server's CA
    // (~/.postgresql/root.crt by default).
    if ssl_mode == SslMode::VerifyCa && ca.is_none() {
      let default = std::env::var_os("HOME").map(|h| {
        std::path::PathBuf::from(h)
          .join(".postgresql")
          .join("root.crt")
      });
      ca = default.and_then(|p| std::fs::read(p).ok());
      if ca.is_none() {
        return Err(Error::invalid(
          "sslmode=verify-ca needs the server's CA: give sslrootcert=<file> (or ssl.ca), or use verify-full",
        ));
      }
    }
    let tls = match ssl_mode {
      SslMode::Disable => None,
      mode => Some(Arc::new(tls_config(
        mode,
        ca.as_deref(),
        cert.as_deref(),
        key.as_deref(),
      )?)),
    };
    let connect_timeout = params
      .get("connect_timeout")
      .and_then(|s| s.trim().parse::<u64>().ok())
      .filter(|s| *s > 0)
      // libpq takes 1 as 2.
      .map(|s| Duration::from_secs(s.max(2)));
    Ok(Config {
      host,
      port,
      user,
      password,
      database,
      application_name: params.get("application_name").cloned(),
      ssl_mode,
      tls,
      connect_timeout,
    })
  }

  /// The name TLS verifies the certificate against.
  pub(crate) fn server_name(&self) -> Result<ServerName<'static>> {
    let Host::Tcp(h) = &self.host else {
      return Err(Error::Connection(
        "TLS over a Unix-domain socket is not supported".into(),
      ));
    };
    ServerName::try_from(h.clone())
      .map_err(|_| Error::invalid("the host name is not valid for TLS"))
  }
}

fn tls_config(
  mode: SslMode,
  ca: Option<&[u8]>,
  cert: Option<&[u8]>,
  key: Option<&[u8]>,
) -> Result<ClientConfig> {
  let provider = Arc::new(rustls::crypto::ring::default_provider());
  let builder = ClientConfig::builder_with_provider(provider.clone())
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Connection(format!("TLS: {e}")))?;
  let mut roots = RootCertStore::empty();
  match ca {
    Some(pem) => {
      let mut any = false;
      for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|_| Error::invalid("the root certificate is not valid PEM"))?;
        roots
          .add(c)
          .map_err(|e| Error::invalid(format!("the root certificate cannot be used: {e}")))?;
        any = true;
      }
      if !any {
        return Err(Error::invalid(
          "the root certificate holds no PEM certificate",
        ));
      }
    }
    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
  }
  let roots = Arc::new(roots);
  let verify = match mode {
    SslMode::VerifyFull => Verify::Full,
    SslMode::VerifyCa => Verify::Chain,
    _ => Verify::Nothing,
  };
  let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
    .build()
    .map_err(|e| Error::invalid(format!("TLS roots: {e}")))?;
  let verifier = Arc::new(Verifier {
    webpki,
    verify,
    provider,
  });
  let builder = builder
    .dangerous()
    .with_custom_certificate_verifier(verifier);
  let config = match (cert, key) {
    (Some(cert), Some(key)) => {
      let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| Error::invalid("the client certificate is not valid PEM"))?;
      let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| Error::invalid("the client key is not valid PEM"))?;
      builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::invalid(format!("the client certificate cannot be used: {e}")))?
    }
    (None, None) => builder.with_no_client_auth(),
    _ => {
      return Err(Error::invalid(
        "a client certificate needs both sslcert and sslkey",
      ))
    }
  };
  Ok(config)
}

#[derive(Debug, Clone, Copy)]
enum Verify {
  /// `require`: encrypted, not authenticated (libpq's meaning).
  Nothing,
  /// `verify-ca`: the chain, not the host name.
  Chain,
  /// `verify-full`.
  Full,
}

/// libpq's three levels of checking over rustls' WebPKI verifier.
#[derive(Debug)]
struct Verifier {
  webpki: Arc<rustls::client::WebPkiServerVerifier>,
  verify: Verify,
  provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
  fn verify_server_cert(
    &self,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    ocsp: &[u8],
    now: UnixTime,
  ) -> std::result::Result<ServerCertVerified, rustls::Error> {
    match self.verify {
      Verify::Nothing => Ok(ServerCertVerified::assertion()),
      Verify::Full => {
        self
          .webpki
          .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
      }
      Verify::Chain => {
        match self
          .webpki
          .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
          Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
          | Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForNameContext { .. },
          )) => Ok(ServerCertVerified::assertion()),
          other => other,
        }
      }
    }
  }

  fn verify_tls12_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
      message,
      cert,
      dss,
      &self.provider.signature_verification_algorithms,
    )
  }

  fn verify_tls13_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
      message,
      cert,
      dss,
      &self.provider.signature_verification_algorithms,
    )
  }

  fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
    self
      .provider
      .signature_verification_algorithms
      .supported_schemes()
  }
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
      (c, _) => {
        out.push(c);
        i += 1;
      }
    }
  }
  String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
  use super::{Config, Host, SslMode};

  fn parse(url: &str) -> Config {
    Config::parse(url, None).unwrap()
  }

  #[test]
  fn urls_as_libpq_reads_them() {
    let c =
      parse("postgres://u%40x:p%2Fw@db.example.com:6543/shop?sslmode=require&application_name=api");
    assert!(matches!(&c.host, Host::Tcp(h) if h == "db.example.com"));
    assert_eq!(
      (c.port, c.user.as_str(), c.database.as_str()),
      (6543, "u@x", "shop")
    );
    assert_eq!(c.password.as_deref(), Some("p/w"));
    assert_eq!(c.ssl_mode, SslMode::Require);
    assert_eq!(c.application_name.as_deref(), Some("api"));
    let v6 = parse("postgresql://postgres@[::1]/x?sslmode=disable");
    assert!(matches!(&v6.host, Host::Tcp(h) if h == "::1"));
    assert!(v6.tls.is_none());
    let sock = parse("postgres://postgres@/x?host=/var/run/postgresql&port=5433");
    assert!(matches!(&sock.host, Host::Socket(d) if d == "/var/run/postgresql"));
    assert_eq!(sock.port, 5433);
    assert_eq!(parse("postgres://u@h/d").ssl_mode, SslMode::Prefer);
    assert_eq!(
      parse("postgres://u@h/d?connect_timeout=1").connect_timeout,
      Some(std::time::Duration::from_secs(2))
    );
  }

  #[test]
  fn bad_urls_are_invalid_and_never_echo_the_password() {
    for url in [
      "mysql://u@h/d",
      "postgres://u@h/d?sslmode=sometimes",
      "not a url",
    ] {
      let e = Config::parse(url, None).unwrap_err();
      assert_eq!(e.code(), "INVALID_ARGUMENT", "{url}");
    }
    let e = Config::parse("postgres://u:s3cret@h/d?sslrootcert=/nope.pem", None).unwrap_err();
    assert!(!e.to_string().contains("s3cret"));
    assert!(format!("{:?}", parse("postgres://u:s3cret@h/d"))
      .find("s3cret")
      .is_none());
  }
}
