//! One PostgreSQL connection, on our own TCP or rustls stream, speaking the protocol through
//! `postgres-protocol`'s message encoders and parser: startup and authentication (cleartext,
//! MD5, SCRAM-SHA-256), flights of extended-protocol statements ended by one Sync, the
//! server's reported settings (`ParameterStatus`), and the CancelRequest a stuck statement
//! gets.
//!
//! A flight is what node-postgres sends for a query with values: Parse (unnamed unless a
//! statement name is given, parameter types left for the server to infer), Bind (parameters
//! as text, a Buffer in binary), Describe (portal), Execute, for each statement, then one
//! Sync, written at once. Every transaction-mode pooler accepts that form and none pins on it.

use super::config::{Config, Host, SslMode};
use crate::error::{Error, Result};
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The byte stream under a connection.
pub(crate) enum Stream {
  Plain(TcpStream),
  Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
  #[cfg(unix)]
  Unix(tokio::net::UnixStream),
}

impl AsyncRead for Stream {
  fn poll_read(
    self: Pin<&mut Self>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
  ) -> Poll<std::io::Result<()>> {
    match self.get_mut() {
      Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
      Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
      #[cfg(unix)]
      Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
    }
  }
}

impl AsyncWrite for Stream {
  fn poll_write(
    self: Pin<&mut Self>,
    cx: &mut Context<'_>,
    buf: &[u8],
  ) -> Poll<std::io::Result<usize>> {
    match self.get_mut() {
      Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
      Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
      #[cfg(unix)]
      Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
    }
  }

  fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
    match self.get_mut() {
      Stream::Plain(s) => Pin::new(s).poll_flush(cx),
      Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
      #[cfg(unix)]
      Stream::Unix(s) => Pin::new(s).poll_flush(cx),
    }
  }

  fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
    match self.get_mut() {
      Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
      Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
      #[cfg(unix)]
      Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
    }
  }
}

fn io_error(e: std::io::Error) -> Error {
  // rustls reports a refused handshake or certificate as InvalidData around its error.
  match e.get_ref() {
    Some(inner) if e.kind() == std::io::ErrorKind::InvalidData => {
      Error::Connection(format!("TLS handshake failed: {inner}"))
    }
    _ => Error::Connection(e.kind().to_string()),
  }
}

/// What answered is not a PostgreSQL server (an HTTP server, a wrong port).
fn not_postgres() -> Error {
  Error::Connection(
    "the server did not answer as a PostgreSQL server (check the URL's host and port)".into(),
  )
}

fn protocol(what: &str) -> Error {
  Error::Connection(format!("protocol: {what}"))
}

/// Result format of a statement's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
  Text,
  Binary,
}

/// A parameter as it goes on the wire.
#[derive(Debug, Clone)]
pub(crate) enum Wired {
  Null,
  Text(String),
}

/// One statement of a flight.
pub(crate) struct Stmt<'a> {
  pub(crate) sql: &'a str,
  pub(crate) params: &'a [Wired],
  pub(crate) result: Format,
  /// A protocol-level statement name (prepared mode); `""` is the unnamed statement.
  pub(crate) name: &'a str,
  /// Send Parse (the unnamed statement always; a named one when not yet on the connection).
  pub(crate) parse: bool,
}

/// A column as RowDescription gave it.
#[derive(Debug, Clone)]
pub(crate) struct Column {
  pub(crate) name: String,
  pub(crate) oid: u32,
  pub(crate) format: Format,
}

/// What a statement returned, undecoded.
#[derive(Debug, Default)]
pub(crate) struct Raw {
  pub(crate) columns: Vec<Column>,
  /// Each row's values (`None` is NULL).
  pub(crate) rows: Vec<Vec<Option<bytes::Bytes>>>,
  pub(crate) tag: String,
}

/// One statement's outcome in a flight.
#[derive(Debug)]
pub(crate) enum Outcome {
  Done(Raw),
  Failed(Error),
  /// An earlier statement of the flight failed, so the server skipped this one.
  Skipped,
}

/// What a flight's server answer was: each statement's outcome and the transaction status
/// after Sync (`I` idle, `T` in a transaction, `E` in a failed one).
pub(crate) struct Answer {
  pub(crate) outcomes: Vec<Outcome>,
  /// Whether each named statement's Parse completed (prepared mode's cache).
  pub(crate) parsed: Vec<bool>,
  pub(crate) status: u8,
}

/// A connection's identity for a CancelRequest.
#[derive(Clone)]
pub(crate) struct CancelKey {
  pub(crate) config: Config,
  pub(crate) pid: i32,
  pub(crate) secret: i32,
}

pub(crate) struct Wire {
  stream: Stream,
  rbuf: BytesMut,
  wbuf: BytesMut,
  pid: i32,
  secret: i32,
  /// The server's reported settings (`ParameterStatus`), as last reported.
  pub(crate) params: HashMap<String, String>,
  /// Bumped each time a reported setting takes a value it did not have.
  pub(crate) params_changed: u64,
  /// `ReadyForQuery`'s status after the last exchange.
  pub(crate) status: u8,
}

async fn tcp(config: &Config) -> Result<Stream> {
  match &config.host {
    Host::Tcp(h) => {
      let s = TcpStream::connect((h.as_str(), config.port))
        .await
        .map_err(io_error)?;
      let _ = s.set_nodelay(true);
      Ok(Stream::Plain(s))
    }
    #[cfg(unix)]
    Host::Socket(dir) => {
      let path = format!("{dir}/.s.PGSQL.{}", config.port);
      Ok(Stream::Unix(
        tokio::net::UnixStream::connect(path)
          .await
          .map_err(io_error)?,
      ))
    }
    #[cfg(not(unix))]
    Host::Socket(_) => Err(Error::invalid(
      "Unix-domain sockets are not available on this platform",
    )),
  }
}

/// Ask the server for TLS (SSLRequest) and, when it agrees, wrap the stream.
async fn negotiate_tls(config: &Config, stream: Stream) -> Result<Stream> {
  let Some(tls) = &config.tls else {
    return Ok(stream);
  };
  let Stream::Plain(mut tcp) = stream else {
    return Ok(stream);
  };
  let mut buf = BytesMut::new();
  frontend::ssl_request(&mut buf);
  tcp.write_all(&buf).await.map_err(io_error)?;
  let mut answer = [0u8; 1];
  tcp.read_exact(&mut answer).await.map_err(io_error)?;
  match answer[0] {
    b'S' => {
      let connector = tokio_rustls::TlsConnector::from(tls.clone());
      let name = config.server_name()?;
      let s = connector.connect(name, tcp).await.map_err(io_error)?;
      Ok(Stream::Tls(Box::new(s)))
    }
    b'N' if matches!(config.ssl_mode, SslMode::Allow | SslMode::Prefer) => Ok(Stream::Plain(tcp)),
    b'N' => Err(Error::Connection(
      "the server does not support TLS, which sslmode requires".into(),
    )),
    _ => Err(not_postgres()),
  }
}

impl Wire {
  /// Connect, negotiate TLS, start up and authenticate; ready for statements.
  pub(crate) async fn connect(config: &Config) -> Result<Wire> {
    let stream = negotiate_tls(config, tcp(config).await?).await?;
    let mut wire = Wire {
      stream,
      rbuf: BytesMut::with_capacity(8192),
      wbuf: BytesMut::with_capacity(8192),
      pid: 0,
      secret: 0,
      params: HashMap::new(),
      params_changed: 0,
      status: b'I',
    };
    wire.startup(config).await?;
    Ok(wire)
  }

  async fn startup(&mut self, config: &Config) -> Result<()> {
    // Only parameters every transaction-mode pooler passes through (PgBouncer refuses others
    // unless told to ignore them).
    let mut params: Vec<(&str, &str)> = vec![
      ("user", &config.user),
      ("database", &config.database),
      ("client_encoding", "UTF8"),
    ];
    // Named in pg_stat_activity (and to a pooler) as what it is, unless the URL names it.
    params.push((
      "application_name",
      config
        .application_name
        .as_deref()
        .unwrap_or("medusa-idempotency-native"),
    ));
    frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(io_error)?;
    self.flush().await?;
    let mut scram: Option<ScramSha256> = None;
    loop {
      // Anything unreadable before the server is ready: it is not PostgreSQL that answered.
      let message = self.read().await.map_err(|e| match e {
        Error::Connection(m) if m.starts_with("protocol") => not_postgres(),
        e => e,
      })?;
      match message {
        Message::AuthenticationOk => {}
        Message::AuthenticationCleartextPassword => {
          let pw = password(config)?;
          frontend::password_message(pw.as_bytes(), &mut self.wbuf).map_err(io_error)?;
          self.flush().await?;
        }
        Message::AuthenticationMd5Password(body) => {
          let pw = password(config)?;
          let hash = postgres_protocol::authentication::md5_hash(
            config.user.as_bytes(),
            pw.as_bytes(),
            body.salt(),
          );
          frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(io_error)?;
          self.flush().await?;
        }
        Message::AuthenticationSasl(body) => {
          let mut mechanisms = body.mechanisms();
          let mut offered = false;
          while let Some(m) = mechanisms.next().map_err(io_error)? {
            offered |= m == SCRAM_SHA_256;
          }
          if !offered {
            return Err(Error::Connection(
              "the server offers no SASL mechanism this client supports".into(),
            ));
          }
          let pw = password(config)?;
          let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
          frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
            .map_err(io_error)?;
          self.flush().await?;
          scram = Some(s);
        }
        Message::AuthenticationSaslContinue(body) => {
          let s = scram
            .as_mut()
            .ok_or_else(|| protocol("SASL out of order"))?;
          s.update(body.data())
            .map_err(|_| Error::Connection("password authentication failed".into()))?;
          frontend::sasl_response(s.message(), &mut self.wbuf).map_err(io_error)?;
          self.flush().await?;
        }
        Message::AuthenticationSaslFinal(body) => {
          let s = scram
            .as_mut()
            .ok_or_else(|| protocol("SASL out of order"))?;
          s.finish(body.data())
            .map_err(|_| Error::Connection("the server's SCRAM signature is wrong".into()))?;
        }
        Message::BackendKeyData(body) => {
          self.pid = body.process_id();
          self.secret = body.secret_key();
        }
        Message::ParameterStatus(_) | Message::NoticeResponse(_) => {}
        Message::ReadyForQuery(body) => {
          self.status = body.status();
          return Ok(());
        }
        Message::ErrorResponse(body) => return Err(server_error(&body)),
        _ => {
          return Err(Error::Connection(
            "the server asked for an authentication method this client does not support".into(),
          ))
        }
      }
    }
  }

  pub(crate) fn cancel_key(&self, config: &Config) -> CancelKey {
    CancelKey {
      config: config.clone(),
      pid: self.pid,
      secret: self.secret,
    }
  }

  async fn flush(&mut self) -> Result<()> {
    let r = self.stream.write_all(&self.wbuf).await;
    self.wbuf.clear();
    r.map_err(io_error)?;
    self.stream.flush().await.map_err(io_error)
  }

  /// The next message, with ParameterStatus recorded here (and returned too).
  async fn read(&mut self) -> Result<Message> {
    loop {
      if let Some(m) = Message::parse(&mut self.rbuf).map_err(|_| protocol("bad message"))? {
        if let Message::ParameterStatus(body) = &m {
          if let (Ok(k), Ok(v)) = (body.name(), body.value()) {
            if self.params.get(k).is_none_or(|old| old != v) {
              self.params.insert(k.to_owned(), v.to_owned());
              self.params_changed += 1;
            }
          }
        }
        return Ok(m);
      }
      self.rbuf.reserve(8192);
      let n = self
        .stream
        .read_buf(&mut self.rbuf)
        .await
        .map_err(io_error)?;
      if n == 0 {
        return Err(Error::Connection("the server closed the connection".into()));
      }
    }
  }

  /// Write one flight: each statement's Parse (when asked), Bind, Describe, Execute, and one
  /// Sync; read every answer up to ReadyForQuery. `close` names statements to Close first
  /// (prepared mode's evictions).
  pub(crate) async fn flight(&mut self, close: &[String], stmts: &[Stmt<'_>]) -> Result<Answer> {
    for name in close {
      frontend::close(b'S', name, &mut self.wbuf).map_err(io_error)?;
    }
    for s in stmts {
      if s.parse {
        frontend::parse(s.name, s.sql, std::iter::empty(), &mut self.wbuf).map_err(|_| {
          self.wbuf.clear();
          Error::invalid("SQL cannot contain NUL characters")
        })?;
      }
      // Every parameter as text (a Buffer as bytea's hex text).
      let formats = s.params.iter().map(|_| 0i16);
      let result = [match s.result {
        Format::Text => 0i16,
        Format::Binary => 1,
      }];
      let bound = frontend::bind(
        "",
        s.name,
        formats,
        s.params.iter(),
        |p, buf| {
          Ok(match p {
            Wired::Null => IsNull::Yes,
            Wired::Text(t) => {
              buf.extend_from_slice(t.as_bytes());
              IsNull::No
            }
          })
        },
        result,
        &mut self.wbuf,
      );
      if bound.is_err() {
        self.wbuf.clear();
        return Err(Error::invalid("too many parameters or a value too large"));
      }
      frontend::describe(b'P', "", &mut self.wbuf).map_err(io_error)?;
      frontend::execute("", 0, &mut self.wbuf).map_err(io_error)?;
    }
    frontend::sync(&mut self.wbuf);
    self.flush().await?;
    self.answer(close.len(), stmts).await
  }

  async fn answer(&mut self, closes: usize, stmts: &[Stmt<'_>]) -> Result<Answer> {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(stmts.len());
    let mut parsed = vec![false; stmts.len()];
    let mut current = Raw::default();
    let mut closes_left = closes;
    let mut failed = false;
    loop {
      match self.read().await? {
        Message::CloseComplete if closes_left > 0 => closes_left -= 1,
        Message::ParseComplete => {
          if let Some(p) = parsed.get_mut(outcomes.len()) {
            *p = true;
          }
        }
        Message::BindComplete | Message::NoData => {}
        Message::RowDescription(body) => {
          let mut fields = body.fields();
          while let Some(f) = fields.next().map_err(|_| protocol("bad RowDescription"))? {
            current.columns.push(Column {
              name: f.name().to_owned(),
              oid: f.type_oid(),
              format: if f.format() == 1 {
                Format::Binary
              } else {
                Format::Text
              },
            });
          }
        }
        Message::DataRow(body) => {
          let buf = body.buffer_bytes().clone();
          let mut ranges = body.ranges();
          let mut row = Vec::with_capacity(current.columns.len());
          while let Some(r) = ranges.next().map_err(|_| protocol("bad DataRow"))? {
            row.push(r.map(|r| buf.slice(r)));
          }
          current.rows.push(row);
        }
        Message::CommandComplete(body) => {
          current.tag = body.tag().unwrap_or("").to_owned();
          outcomes.push(Outcome::Done(std::mem::take(&mut current)));
        }
        Message::EmptyQueryResponse => outcomes.push(Outcome::Done(std::mem::take(&mut current))),
        Message::PortalSuspended => return Err(protocol("portal suspended")),
        Message::ErrorResponse(body) => {
          failed = true;
          // A failed Close (never expected) fails nothing of ours.
          if closes_left > 0 {
            closes_left = 0;
          }
          current = Raw::default();
          if outcomes.len() == stmts.len() && !stmts.is_empty() {
            // Raised at Sync (the implicit transaction's commit): the last statement failed.
            outcomes.pop();
          }
          outcomes.push(Outcome::Failed(server_error(&body)));
        }
        Message::CopyInResponse(_) => {
          // Never asked for (COPY FROM STDIN is refused before it is sent): end it. The Sync
          // already sent was consumed by the copy: CopyFail, then a new Sync.
          frontend::copy_fail(
            "COPY FROM STDIN is not supported in a stage",
            &mut self.wbuf,
          )
          .map_err(io_error)?;
          frontend::sync(&mut self.wbuf);
          self.flush().await?;
        }
        Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {}
        Message::ReadyForQuery(body) => {
          self.status = body.status();
          while outcomes.len() < stmts.len() {
            outcomes.push(if failed {
              Outcome::Skipped
            } else {
              Outcome::Failed(protocol("a statement had no answer"))
            });
          }
          return Ok(Answer {
            outcomes,
            parsed,
            status: self.status,
          });
        }
        Message::ParameterStatus(_)
        | Message::NoticeResponse(_)
        | Message::NotificationResponse(_) => {}
        _ => return Err(protocol("unexpected message")),
      }
    }
  }

  /// Ask the server for one statement's parameter types (Parse unnamed, Describe statement,
  /// Sync): what a JS value is bound to when its text form alone is ambiguous.
  pub(crate) async fn describe(&mut self, sql: &str) -> Result<Vec<u32>> {
    frontend::parse("", sql, std::iter::empty(), &mut self.wbuf).map_err(|_| {
      self.wbuf.clear();
      Error::invalid("SQL cannot contain NUL characters")
    })?;
    frontend::describe(b'S', "", &mut self.wbuf).map_err(io_error)?;
    frontend::sync(&mut self.wbuf);
    self.flush().await?;
    let mut types = None;
    let mut error = None;
    loop {
      match self.read().await? {
        Message::ParameterDescription(body) => {
          types = Some(
            body
              .parameters()
              .collect::<Vec<u32>>()
              .map_err(|_| protocol("bad ParameterDescription"))?,
          );
        }
        Message::ErrorResponse(body) => error = Some(server_error(&body)),
        Message::ReadyForQuery(body) => {
          self.status = body.status();
          return match (error, types) {
            (Some(e), _) => Err(e),
            (None, Some(t)) => Ok(t),
            (None, None) => Err(protocol("no ParameterDescription")),
          };
        }
        _ => {}
      }
    }
  }

  /// A simple-protocol Query (the migration script: several statements in one string).
  pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<()> {
    frontend::query(sql, &mut self.wbuf).map_err(|_| {
      self.wbuf.clear();
      Error::invalid("SQL cannot contain NUL characters")
    })?;
    self.flush().await?;
    let mut error = None;
    loop {
      match self.read().await? {
        Message::ErrorResponse(body) => error = error.or(Some(server_error(&body))),
        Message::ReadyForQuery(body) => {
          self.status = body.status();
          return error.map_or(Ok(()), Err);
        }
        _ => {}
      }
    }
  }

  /// Say goodbye (Terminate) and close.
  pub(crate) async fn close(mut self) {
    frontend::terminate(&mut self.wbuf);
    let _ = self.flush().await;
    let _ = self.stream.shutdown().await;
  }
}

fn password(config: &Config) -> Result<String> {
  config
    .password
    .clone()
    .ok_or_else(|| Error::Connection("the server asks for a password and none was given".into()))
}

/// An ErrorResponse as our error: its SQLSTATE and message.
fn server_error(body: &postgres_protocol::message::backend::ErrorResponseBody) -> Error {
  let mut code = None;
  let mut message = String::new();
  let mut fields = body.fields();
  while let Ok(Some(f)) = fields.next() {
    match f.type_() {
      b'C' => code = Some(String::from_utf8_lossy(f.value_bytes()).into_owned()),
      b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
      _ => {}
    }
  }
  Error::Database {
    sqlstate: code,
    message,
  }
}

impl CancelKey {
  /// libpq's `PQcancel`: a CancelRequest on a new connection (plain TCP, as the server reads
  /// it before any TLS or authentication), bounded by `limit`. Best effort.
  pub(crate) async fn cancel(&self, limit: std::time::Duration) {
    let send = async {
      let mut stream = tcp(&self.config).await?;
      let mut buf = BytesMut::new();
      frontend::cancel_request(self.pid, self.secret, &mut buf);
      stream.write_all(&buf).await.map_err(io_error)?;
      stream.flush().await.map_err(io_error)?;
      // The server closes the connection once it has read the request.
      let mut sink = [0u8; 1];
      let _ = stream.read(&mut sink).await;
      Ok::<(), Error>(())
    };
    let _ = tokio::time::timeout(limit, send).await;
  }
}
