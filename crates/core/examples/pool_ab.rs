//! Issue 11: our pool (`src/pgpool.rs`, "A") against sqlx's `PgPool` ("B") on the native full
//! cycle, the same SQL through both.
//!
//! `cargo run --release -p idempotency-core --example pool_ab`
//!
//! A cycle is what a request costs the service in native, pooler-safe mode: the key's INSERT
//! in autocommit, then 3 stages, each on its own pooled connection and 3 simple-protocol
//! messages (`BEGIN ISOLATION LEVEL SERIALIZABLE; <lock the row>`, the callback's INSERT into a
//! side table, `<apply>; COMMIT`), with the service's own statements and literal escaping
//! (`idempotency_core::ab`). A and B differ only in the pool: ours returns a connection on
//! drop; sqlx's pings it (one more round trip) in a spawned task before it is free again.
//!
//! Both pools hold 10 connections and stay open for the whole run. Per run, for c = 16 and
//! c = 64, A and B alternate in slices (A B A B …, the next run starting with B), so what else
//! loads the machine hits both alike; a run's B÷A is measured within the run. Round trips per
//! cycle are counted separately by a small TCP proxy that parses the protocol (ReadyForQuery
//! from the server: one per round trip).
//!
//! Environment: `AB_URL` (server, default `postgres://postgres@127.0.0.1:5432`, trust auth),
//! `AB_RUNS` (5), `AB_SLICES` (slices per pool per concurrency per run, 4), `AB_SLICE_MS`
//! (2000). The example creates its own database and drops it at the end.

use idempotency_core::{ab, Error, Param, StageResult};
use serde_json::json;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, Postgres};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SIZE: u32 = 10;
const CONCURRENCY: [usize; 2] = [16, 64];
const SEED_KEYS: u32 = 20_000;
const RAMP: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
  A,
  B,
}

impl Which {
  fn name(self) -> &'static str {
    match self {
      Which::A => "A",
      Which::B => "B",
    }
  }
}

enum Pools {
  A(ab::Pool),
  B(PgPool),
}

enum Conn {
  A(ab::Lease),
  B(PoolConnection<Postgres>),
}

impl Pools {
  async fn acquire(&self) -> Result<Conn, Error> {
    match self {
      Pools::A(p) => p.acquire().await.map(Conn::A),
      Pools::B(p) => p.acquire().await.map(Conn::B).map_err(Error::from),
    }
  }

  async fn close(&self) {
    match self {
      Pools::A(p) => p.close().await,
      Pools::B(p) => p.close().await,
    }
  }
}

impl Conn {
  fn raw(&mut self) -> &mut PgConnection {
    match self {
      Conn::A(l) => l.raw(),
      Conn::B(c) => c,
    }
  }

  /// An operation starts: until `done()`, dropping an A lease closes its connection.
  fn busy(&mut self) {
    if let Conn::A(l) = self {
      l.busy()
    }
  }

  /// The connection is idle and in a known state: it may go back to the pool.
  fn done(&mut self) {
    if let Conn::A(l) = self {
      l.done()
    }
  }

  /// The connection's state is unknown: close it instead of returning it.
  fn broken(&mut self) {
    if let Conn::B(c) = self {
      c.close_on_drop()
    }
  }
}

const COLUMNS: &str = "id, idempotency_key, created_at, locked_at, request_method, \
   request_params, request_path, response_code, response_body, recovery_point";

fn insert_sql() -> String {
  format!(
    "INSERT INTO idempotency_key (id, idempotency_key, locked_at, request_method, request_params, request_path) \
     VALUES ($1::varchar, $2::varchar, clock_timestamp(), $3::varchar, $4::jsonb, $5::varchar) \
     ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLUMNS}"
  )
}

const SIDE_SQL: &str =
  "INSERT INTO side (ikey, stage, payload) VALUES ($1::varchar, $2::int4, $3::jsonb)";

fn unexpected(what: &str) -> Error {
  Error::Internal(format!("unexpected result: {what}"))
}

/// The key's INSERT in autocommit: one round trip.
async fn insert_key(pools: &Pools, id: &str, key: &str) -> Result<(), Error> {
  let sql = ab::inline(
    &insert_sql(),
    &[
      Param::Text(id.into()),
      Param::Text(key.into()),
      Param::Text("POST".into()),
      Param::Json(json!({ "cart_id": key, "items": [1, 2, 3] })),
      Param::Text("/store/carts/complete".into()),
    ],
  )?;
  let mut c = pools.acquire().await?;
  c.busy();
  match ab::simple(c.raw(), &sql).await {
    Ok(r) if r.rows.len() == 1 => {
      c.done();
      Ok(())
    }
    Ok(_) => {
      c.done();
      Err(unexpected("the key's INSERT returned no row"))
    }
    Err(e) => {
      if e.sqlstate().is_some() {
        c.done()
      } else {
        c.broken()
      }
      Err(e)
    }
  }
}

/// The three messages of stage `n` (1–3; the third finishes the key).
async fn stage_on(conn: &mut PgConnection, id: &str, key: &str, n: u32) -> Result<(), Error> {
  let lock = format!(
    "BEGIN ISOLATION LEVEL SERIALIZABLE; {}",
    ab::inline(&ab::lock_row_sql(), &[Param::Text(key.into())])?
  );
  let r = ab::simple(conn, &lock).await?;
  if r.rows.len() != 1 {
    return Err(unexpected("the stage's row lock found no row"));
  }
  let side = ab::inline(
    SIDE_SQL,
    &[
      Param::Text(key.into()),
      Param::Number(f64::from(n)),
      Param::Json(json!({ "stage": n, "note": "it's a side effect" })),
    ],
  )?;
  ab::simple(conn, &side).await?;
  let result = if n < 3 {
    StageResult {
      recovery_point: Some(format!("stage_{n}")),
      ..Default::default()
    }
  } else {
    StageResult {
      recovery_point: None,
      response_code: Some(Some(200)),
      response_body: Some(Some(json!({ "order": key, "ok": true }))),
    }
  };
  let apply = format!(
    "{}; COMMIT",
    ab::inline(&ab::apply_sql(), &ab::apply_params(id, result))?
  );
  let r = ab::simple(conn, &apply).await?;
  if r.rows.len() != 1 {
    return Err(unexpected("the stage's UPDATE returned no row"));
  }
  Ok(())
}

/// One stage on a connection of its own; rolled back on failure (and the connection closed if
/// even that fails).
async fn stage(pools: &Pools, id: &str, key: &str, n: u32) -> Result<(), Error> {
  let mut c = pools.acquire().await?;
  c.busy();
  let r = stage_on(c.raw(), id, key, n).await;
  match &r {
    Ok(()) => c.done(),
    Err(_) => match c.raw().execute("ROLLBACK").await {
      Ok(_) => c.done(),
      Err(_) => c.broken(),
    },
  }
  r
}

/// What the service retries a stage on (40001, 40P01, 53200: SSI's shared memory for
/// conflicts ran out under load), and a lock conflict.
fn retryable(e: &Error) -> bool {
  matches!(e.sqlstate(), Some("40001" | "40P01" | "53200" | "55P03"))
}

/// The service's wait before a stage runs again (5 ms doubling to 160 ms, half of it jitter).
async fn backoff(attempt: u32) {
  let base = 5u64 * (1 << attempt.min(5));
  let jitter = rand::random::<u64>() % (base + 1);
  tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
}

/// A full cycle: the key's INSERT, then stages 1–3; a stage that fails retryably runs again
/// on a fresh lease after the service's backoff (the service gives up after 3 re-runs; here a
/// cycle must finish, so up to 50).
async fn cycle(pools: &Pools, key: &str, retries: &AtomicU64) -> Result<(), Error> {
  let id = format!("ikey_{}", ulid::Ulid::new());
  insert_key(pools, &id, key).await?;
  for n in 1..=3 {
    let mut attempt = 0;
    loop {
      match stage(pools, &id, key, n).await {
        Ok(()) => break,
        Err(e) if retryable(&e) && attempt < 50 => {
          retries.fetch_add(1, Ordering::Relaxed);
          backoff(attempt).await;
          attempt += 1;
        }
        Err(e) => return Err(e),
      }
    }
  }
  Ok(())
}

/// CPU time of a process (utime + stime) in seconds, from `/proc/<pid>/stat`.
fn cpu_secs(pid: &str) -> f64 {
  let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
    return 0.0;
  };
  let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
    return 0.0;
  };
  let f: Vec<&str> = rest.split_whitespace().collect();
  // After the command: state is field 3, utime 14, stime 15 (1-based over the whole line).
  let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
    + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
  ticks as f64 / 100.0
}

struct Slice {
  cycles: u64,
  secs: f64,
  lats_us: Vec<u32>,
  retries: u64,
  client_cpu: f64,
  server_cpu: f64,
}

/// Backend pids of the benchmark database (both pools' connections).
async fn backends(monitor: &mut PgConnection) -> Res<Vec<String>> {
  let pids: Vec<(i32,)> = sqlx::query_as(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
  )
  .fetch_all(&mut *monitor)
  .await?;
  Ok(pids.into_iter().map(|(p,)| p.to_string()).collect())
}

/// `c` callers run cycles on one pool; cycles that end inside the window after the ramp count.
async fn slice(
  pools: &Arc<Pools>,
  monitor: &mut PgConnection,
  c: usize,
  window: Duration,
  tag: &str,
) -> Res<Slice> {
  let retries = Arc::new(AtomicU64::new(0));
  let start = Instant::now();
  let (w0, w1) = (start + RAMP, start + RAMP + window);
  let mut tasks = Vec::new();
  for i in 0..c {
    let pools = pools.clone();
    let retries = retries.clone();
    let tag = format!("{tag}-{i}");
    tasks.push(tokio::spawn(async move {
      let mut lats = Vec::new();
      let mut n = 0u64;
      loop {
        let t0 = Instant::now();
        if t0 >= w1 {
          break;
        }
        n += 1;
        cycle(&pools, &format!("{tag}-{n}"), &retries).await?;
        let t1 = Instant::now();
        if t1 >= w0 && t1 < w1 {
          lats.push(u32::try_from(t1.duration_since(t0).as_micros()).unwrap_or(u32::MAX));
        }
      }
      Ok::<_, Error>(lats)
    }));
  }
  tokio::time::sleep_until(w0.into()).await;
  let pids = backends(monitor).await?;
  let (c0, s0) = (
    cpu_secs("self"),
    pids.iter().map(|p| cpu_secs(p)).sum::<f64>(),
  );
  let t0 = Instant::now();
  tokio::time::sleep_until(w1.into()).await;
  let (c1, s1) = (
    cpu_secs("self"),
    pids.iter().map(|p| cpu_secs(p)).sum::<f64>(),
  );
  let secs = t0.elapsed().as_secs_f64();
  let mut lats_us = Vec::new();
  for t in tasks {
    lats_us.extend(t.await??);
  }
  Ok(Slice {
    cycles: lats_us.len() as u64,
    secs,
    lats_us,
    retries: retries.load(Ordering::Relaxed),
    client_cpu: c1 - c0,
    server_cpu: s1 - s0,
  })
}

/// Run exactly `total` cycles with `c` callers (the counting pass and the warm-up).
async fn fixed(pools: &Arc<Pools>, c: usize, total: u64, tag: &str) -> Res<()> {
  let left = Arc::new(AtomicU64::new(total));
  let retries = Arc::new(AtomicU64::new(0));
  let mut tasks = Vec::new();
  for i in 0..c {
    let (pools, left, retries) = (pools.clone(), left.clone(), retries.clone());
    let tag = format!("{tag}-{i}");
    tasks.push(tokio::spawn(async move {
      let mut n = 0;
      while left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
        .is_ok()
      {
        n += 1;
        cycle(&pools, &format!("{tag}-{n}"), &retries).await?;
      }
      Ok::<_, Error>(())
    }));
  }
  for t in tasks {
    t.await??;
  }
  Ok(())
}

// ---- the counting proxy ----------------------------------------------------------------

#[derive(Default)]
struct Counts {
  conns: AtomicU64,
  /// ReadyForQuery from the server: one per round trip (and one per connection start).
  ready: AtomicU64,
  /// Query (simple protocol) and Sync (an extended-protocol exchange, or sqlx's ping).
  query: AtomicU64,
  sync: AtomicU64,
}

impl Counts {
  fn snapshot(&self) -> [u64; 4] {
    [
      self.conns.load(Ordering::SeqCst),
      self.ready.load(Ordering::SeqCst),
      self.query.load(Ordering::SeqCst),
      self.sync.load(Ordering::SeqCst),
    ]
  }
}

/// Splits a protocol stream into messages: a 1-byte type and a 4-byte length (which counts
/// itself), after an untyped startup message on the client side.
struct Scan {
  startup: bool,
  hdr: [u8; 5],
  have: usize,
  skip: usize,
}

impl Scan {
  fn new(startup: bool) -> Self {
    Scan {
      startup,
      hdr: [0; 5],
      have: 0,
      skip: 0,
    }
  }

  fn feed(&mut self, mut b: &[u8], mut on: impl FnMut(u8)) {
    while !b.is_empty() {
      if self.skip > 0 {
        let n = self.skip.min(b.len());
        self.skip -= n;
        b = &b[n..];
        continue;
      }
      let need = if self.startup { 4 } else { 5 };
      let n = (need - self.have).min(b.len());
      self.hdr[self.have..self.have + n].copy_from_slice(&b[..n]);
      self.have += n;
      b = &b[n..];
      if self.have == need {
        let len_at = need - 4;
        let len = u32::from_be_bytes(self.hdr[len_at..need].try_into().unwrap()) as usize;
        if self.startup {
          self.startup = false;
        } else {
          on(self.hdr[0]);
        }
        self.skip = len.saturating_sub(4);
        self.have = 0;
      }
    }
  }
}

async fn pump(
  mut from: tokio::net::tcp::OwnedReadHalf,
  mut to: tokio::net::tcp::OwnedWriteHalf,
  client: bool,
  counts: Arc<Counts>,
) {
  let mut scan = Scan::new(client);
  let mut buf = vec![0u8; 64 * 1024];
  loop {
    let n = match from.read(&mut buf).await {
      Ok(0) | Err(_) => break,
      Ok(n) => n,
    };
    scan.feed(&buf[..n], |t| match (client, t) {
      (true, b'Q') => {
        counts.query.fetch_add(1, Ordering::SeqCst);
      }
      (true, b'S') => {
        counts.sync.fetch_add(1, Ordering::SeqCst);
      }
      (false, b'Z') => {
        counts.ready.fetch_add(1, Ordering::SeqCst);
      }
      _ => {}
    });
    if to.write_all(&buf[..n]).await.is_err() {
      break;
    }
  }
  let _ = to.shutdown().await;
}

async fn proxy(listener: tokio::net::TcpListener, upstream: String, counts: Arc<Counts>) {
  while let Ok((client, _)) = listener.accept().await {
    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
      continue;
    };
    counts.conns.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::spawn(pump(cr, sw, true, counts.clone()));
    tokio::spawn(pump(sr, cw, false, counts.clone()));
  }
}

// ---- setup -------------------------------------------------------------------------------

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
  std::env::var(name)
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(default)
}

/// As `Service::connect` reads a URL (no TLS here: the proxy must read the protocol, and
/// both pools pay the same either way).
fn options(url: &str) -> Res<PgConnectOptions> {
  Ok(PgConnectOptions::from_str(url)?.extra_float_digits(None))
}

async fn open(which: Which, opts: PgConnectOptions) -> Res<Arc<Pools>> {
  Ok(Arc::new(match which {
    Which::A => Pools::A(ab::connect(opts, SIZE).await?),
    // Pooler-safe mode sets nothing up per connection, so no after_connect.
    Which::B => Pools::B(
      PgPoolOptions::new()
        .max_connections(SIZE)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        .max_lifetime(Duration::from_secs(30 * 60))
        .idle_timeout(Duration::from_secs(10 * 60))
        .test_before_acquire(false)
        .connect_with(opts)
        .await?,
    ),
  }))
}

async fn prepare(url: &str) -> Res<()> {
  let mut conn = PgConnection::connect_with(&options(url)?).await?;
  for (_, sql) in idempotency_core::MIGRATIONS_POSTGRES {
    conn.execute(*sql).await?;
  }
  conn
    .execute(
      "CREATE TABLE side (id bigserial PRIMARY KEY, ikey varchar NOT NULL, stage int4 NOT NULL, \
       payload jsonb, created_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
  conn
    .execute(&*format!(
      "INSERT INTO idempotency_key (id, idempotency_key, request_method, request_path, \
       response_code, response_body, recovery_point) \
       SELECT 'ikey_seed' || g, 'seed-' || g, 'POST', '/store/carts/complete', 200, \
       '{{\"ok\":true}}', 'finished' FROM generate_series(1, {SEED_KEYS}) g; \
       ANALYZE idempotency_key; ANALYZE side"
    ))
    .await?;
  conn.close().await?;
  Ok(())
}

// ---- statistics --------------------------------------------------------------------------

fn median(v: &[f64]) -> f64 {
  let mut s = v.to_vec();
  s.sort_by(|a, b| a.total_cmp(b));
  let n = s.len();
  if n == 0 {
    f64::NAN
  } else if n % 2 == 1 {
    s[n / 2]
  } else {
    (s[n / 2 - 1] + s[n / 2]) / 2.0
  }
}

fn range(v: &[f64]) -> (f64, f64) {
  v.iter()
    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
      (lo.min(*x), hi.max(*x))
    })
}

/// The `p`th percentile (nearest rank, rounded) of sorted values, in ms.
fn pct(sorted: &[u32], p: usize) -> f64 {
  if sorted.is_empty() {
    return f64::NAN;
  }
  let i = ((sorted.len() - 1) * p + 50) / 100;
  f64::from(sorted[i]) / 1000.0
}

/// Everything measured for one pool at one concurrency.
#[derive(Default)]
struct Acc {
  /// Per run: cycles, seconds.
  per_run: Vec<(u64, f64)>,
  /// Per run: the pool's even-numbered slices ÷ its odd-numbered ones (the noise floor).
  self_ratio: Vec<f64>,
  lats_us: Vec<u32>,
  retries: u64,
  client_cpu: f64,
  server_cpu: f64,
}

fn rate(c: u64, s: f64) -> f64 {
  c as f64 / s
}

async fn bench(base: &str, db: &str) -> Res<()> {
  let runs: usize = env_num("AB_RUNS", 5);
  let slices: usize = env_num("AB_SLICES", 4);
  let window = Duration::from_millis(env_num("AB_SLICE_MS", 2000));
  let url = format!("{base}/{db}?sslmode=disable");
  prepare(&url).await?;
  let opts = options(&url)?;

  // Round trips per cycle, as the server saw them, through the counting proxy.
  let upstream = {
    let o = PgConnectOptions::from_str(&url)?;
    format!("{}:{}", o.get_host(), o.get_port())
  };
  let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
  let port = listener.local_addr()?.port();
  let counts = Arc::new(Counts::default());
  let proxy_task = tokio::spawn(proxy(listener, upstream, counts.clone()));
  let proxied = opts.clone().host("127.0.0.1").port(port);
  let counted: u64 = 400;
  let mut trips = Vec::new();
  for which in [Which::A, Which::B] {
    let pools = open(which, proxied.clone()).await?;
    fixed(&pools, 16, 100, &format!("warm-proxy-{}", which.name())).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = counts.snapshot();
    fixed(&pools, 16, counted, &format!("count-{}", which.name())).await?;
    // sqlx pings a returned connection in a spawned task: let the last ones land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = counts.snapshot();
    pools.close().await;
    let d: Vec<u64> = (0..4).map(|i| after[i] - before[i]).collect();
    // A new connection's startup ends with one ReadyForQuery of its own.
    let rt = (d[1] - d[0]) as f64 / counted as f64;
    eprintln!(
      "{}: {counted} cycles through the proxy: {rt:.2} round trips/cycle ({} Query, {} Sync, {} new connections)",
      which.name(),
      d[2],
      d[3],
      d[0]
    );
    trips.push((
      which,
      rt,
      d[2] as f64 / counted as f64,
      d[3] as f64 / counted as f64,
      d[0],
    ));
  }
  proxy_task.abort();

  // The timed runs, directly.
  let a = open(Which::A, opts.clone()).await?;
  let b = open(Which::B, opts.clone()).await?;
  let mut monitor = PgConnection::connect_with(&opts).await?;
  for (which, p) in [(Which::A, &a), (Which::B, &b)] {
    fixed(p, 16, 300, &format!("warm-{}", which.name())).await?;
  }
  let mut acc: Vec<[Acc; 2]> = CONCURRENCY.iter().map(|_| Default::default()).collect();
  let mut ratios: Vec<Vec<f64>> = CONCURRENCY.iter().map(|_| Vec::new()).collect();
  let started = Instant::now();
  for run in 0..runs {
    for (ci, &c) in CONCURRENCY.iter().enumerate() {
      let order = if run % 2 == 0 {
        [Which::A, Which::B]
      } else {
        [Which::B, Which::A]
      };
      let mut got: [Vec<(u64, f64)>; 2] = Default::default();
      for s in 0..slices {
        for which in order {
          let (i, p) = match which {
            Which::A => (0, &a),
            Which::B => (1, &b),
          };
          let tag = format!("r{run}c{c}s{s}{}", which.name());
          let sl = slice(p, &mut monitor, c, window, &tag).await?;
          got[i].push((sl.cycles, sl.secs));
          let x = &mut acc[ci][i];
          x.lats_us.extend(sl.lats_us);
          x.retries += sl.retries;
          x.client_cpu += sl.client_cpu;
          x.server_cpu += sl.server_cpu;
        }
      }
      let mut line = format!("run {} c={c}:", run + 1);
      let mut r = [0.0; 2];
      for i in 0..2 {
        let (cy, secs) = got[i]
          .iter()
          .fold((0, 0.0), |(c, s), (a, b)| (c + a, s + b));
        r[i] = rate(cy, secs);
        let half = |odd: usize| {
          let (c, s) = got[i]
            .iter()
            .skip(odd)
            .step_by(2)
            .fold((0, 0.0), |(c, s), (a, b)| (c + a, s + b));
          rate(c, s)
        };
        acc[ci][i].per_run.push((cy, secs));
        acc[ci][i].self_ratio.push(half(0) / half(1));
        line += &format!(
          " {} {:.0}/s (slices {})",
          ["A", "B"][i],
          r[i],
          got[i]
            .iter()
            .map(|(c, s)| format!("{:.0}", rate(*c, *s)))
            .collect::<Vec<_>>()
            .join(" ")
        );
      }
      ratios[ci].push(r[1] / r[0]);
      eprintln!("{line}  B÷A {:.3}", r[1] / r[0]);
    }
  }
  let elapsed = started.elapsed();
  a.close().await;
  b.close().await;

  // Every counted cycle finished its key, and each stage wrote its side row once.
  let (unfinished, keys, sides): (i64, i64, i64) = sqlx::query_as(
    "SELECT (SELECT count(*) FROM idempotency_key WHERE recovery_point <> 'finished'), \
     (SELECT count(*) FROM idempotency_key WHERE id NOT LIKE 'ikey_seed%'), \
     (SELECT count(*) FROM side)",
  )
  .fetch_one(&mut monitor)
  .await?;
  monitor.close().await?;
  if unfinished != 0 || sides != 3 * keys {
    return Err(
      format!("inconsistent: {unfinished} unfinished keys, {keys} keys, {sides} side rows").into(),
    );
  }

  println!(
    "\npool_ab: pool size {SIZE} each, {runs} runs × {slices} slices × {} ms per pool per concurrency \
     (interleaved A B A B …, alternate runs start with B), {SEED_KEYS} seeded keys; {keys} cycles \
     in {:.0} s, every key finished, {sides} side rows. A = crates/core/src/pgpool.rs, \
     B = sqlx::PgPool (test_before_acquire(false), ping on return).\n",
    window.as_millis(),
    elapsed.as_secs_f64()
  );
  println!(
    "| c | A cycles/s | B cycles/s | B÷A median (range over runs) | A÷A, B÷B noise (range) | A p50 / p99 ms | B p50 / p99 ms | client CPU ms/cycle A / B | PG CPU ms/cycle A / B | stage retries A / B |"
  );
  println!("|---|---|---|---|---|---|---|---|---|---|");
  for (ci, &c) in CONCURRENCY.iter().enumerate() {
    let [xa, xb] = &mut acc[ci];
    xa.lats_us.sort_unstable();
    xb.lats_us.sort_unstable();
    let med = |x: &Acc| {
      median(
        &x.per_run
          .iter()
          .map(|(c, s)| rate(*c, *s))
          .collect::<Vec<_>>(),
      )
    };
    let cycles = |x: &Acc| x.per_run.iter().map(|(c, _)| c).sum::<u64>() as f64;
    let (lo, hi) = range(&ratios[ci]);
    let noise: Vec<f64> = xa
      .self_ratio
      .iter()
      .chain(&xb.self_ratio)
      .copied()
      .collect();
    let (nlo, nhi) = range(&noise);
    println!(
      "| {c} | {:.0} | {:.0} | **{:.3}** ({lo:.3}–{hi:.3}) | {nlo:.3}–{nhi:.3} | {:.1} / {:.1} | {:.1} / {:.1} | {:.3} / {:.3} | {:.3} / {:.3} | {} / {} |",
      med(xa),
      med(xb),
      median(&ratios[ci]),
      pct(&xa.lats_us, 50),
      pct(&xa.lats_us, 99),
      pct(&xb.lats_us, 50),
      pct(&xb.lats_us, 99),
      1000.0 * xa.client_cpu / cycles(xa),
      1000.0 * xb.client_cpu / cycles(xb),
      1000.0 * xa.server_cpu / cycles(xa),
      1000.0 * xb.server_cpu / cycles(xb),
      xa.retries,
      xb.retries
    );
  }
  println!(
    "\nRound trips per cycle as the server saw them ({counted} cycles at c=16 through a counting proxy):\n"
  );
  println!("| pool | round trips (ReadyForQuery) | Query messages | Sync messages (pings) | new connections |");
  println!("|---|---|---|---|---|");
  for (which, rt, q, s, conns) in trips {
    println!("| {} | {rt:.2} | {q:.2} | {s:.2} | {conns} |", which.name());
  }
  Ok(())
}

#[tokio::main]
async fn main() {
  let base =
    std::env::var("AB_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
  let base = base.trim_end_matches('/').to_owned();
  let db = format!(
    "pool_ab_{}_{:08x}",
    std::process::id(),
    rand::random::<u32>()
  );
  let admin = async {
    let o = options(&format!("{base}/postgres?sslmode=disable"))?;
    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(PgConnection::connect_with(&o).await?)
  };
  let mut admin = match admin.await {
    Ok(c) => c,
    Err(e) => {
      eprintln!("pool_ab: cannot connect to {base}: {e}");
      std::process::exit(1);
    }
  };
  if let Err(e) = admin.execute(&*format!("CREATE DATABASE {db}")).await {
    eprintln!("pool_ab: CREATE DATABASE failed: {e}");
    std::process::exit(1);
  }
  let outcome = bench(&base, &db).await;
  let dropped = admin
    .execute(&*format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
    .await;
  let _ = admin.close().await;
  if let Err(e) = dropped {
    eprintln!("pool_ab: could not drop database {db}: {e}");
  }
  if let Err(e) = outcome {
    eprintln!("pool_ab: {e}");
    std::process::exit(1);
  }
}
