//! The core's SQL paths against a real PostgreSQL: each test gets its own database.

use idempotency_core::{
  Cell, Error, Fingerprint, Options, Param, Service, StageError, StageResult, Target,
};
use sqlx::{Connection, Executor, PgConnection};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn admin_url() -> String {
  std::env::var("TEST_PG_ADMIN_URL")
    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, migrated database for one test.
async fn fresh(opts: impl FnOnce(&mut Options)) -> (Service, String) {
  // scripts/test.js passes a per-run prefix and drops these databases afterwards.
  let prefix = std::env::var("TEST_DB_PREFIX")
    .unwrap_or_else(|_| format!("idem_core_{}_", std::process::id()));
  let name = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
  let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
  admin
    .execute(format!("CREATE DATABASE {name}").as_str())
    .await
    .unwrap();
  let url = url_for(&name);
  let mut o = Options::new(url.clone());
  opts(&mut o);
  let service = Service::connect(o).await.unwrap();
  service.migrate().await.unwrap();
  service.migrate().await.unwrap(); // twice is a no-op
  (service, url)
}

fn url_for(name: &str) -> String {
  let admin = admin_url();
  let base = &admin[..admin.rfind('/').unwrap()];
  format!("{base}/{name}")
}

fn fp(path: &str) -> Fingerprint {
  Fingerprint {
    method: Some("POST".into()),
    params: Some(serde_json::json!({ "cart": 1 })),
    path: Some(path.into()),
  }
}

fn moved(rp: &str) -> StageResult {
  StageResult {
    recovery_point: Some(rp.into()),
    ..Default::default()
  }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_honours_client_key_and_leases_it() {
  let (s, _) = fresh(|_| {}).await;
  let k = s
    .initialize_request(Target::Pool, Some("client-1"), fp("/a"))
    .await
    .unwrap();
  assert_eq!(k.idempotency_key, "client-1");
  assert!(k.id.starts_with("ikey_") && k.id.len() == 31);
  assert!(k.locked_at.is_some());
  let again = s
    .initialize_request(Target::Pool, Some("client-1"), fp("/a"))
    .await;
  assert_eq!(again.unwrap_err().code(), "IDEMPOTENCY_KEY_LOCKED");
  let other = s
    .initialize_request(Target::Pool, Some("client-1"), fp("/b"))
    .await;
  assert_eq!(other.unwrap_err().code(), "IDEMPOTENCY_KEY_REUSED");
  let bad = s
    .initialize_request(Target::Pool, Some("é"), fp("/a"))
    .await;
  assert_eq!(bad.unwrap_err().code(), "INVALID_ARGUMENT");
  let fresh_key = s
    .initialize_request(Target::Pool, Some(""), fp("/a"))
    .await
    .unwrap();
  assert_eq!(
    uuid::Uuid::parse_str(&fresh_key.idempotency_key)
      .unwrap()
      .get_version_num(),
    4
  );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_race_has_exactly_one_winner() {
  let (s, _) = fresh(|o| o.lock_timeout = Duration::from_millis(300)).await;
  let s = Arc::new(s);
  s.create(Target::Pool, Some("race"), Fingerprint::default(), None)
    .await
    .unwrap();
  let tasks: Vec<_> = (0..16)
    .map(|_| {
      let s = s.clone();
      tokio::spawn(async move { s.lock(Target::Pool, "race").await })
    })
    .collect();
  let mut won = 0;
  for t in tasks {
    match t.await.unwrap() {
      Ok(_) => won += 1,
      Err(e) => assert_eq!(e.code(), "IDEMPOTENCY_KEY_LOCKED"),
    }
  }
  assert_eq!(won, 1);
  tokio::time::sleep(Duration::from_millis(400)).await;
  s.lock(Target::Pool, "race")
    .await
    .expect("lock lapses after lock_timeout");
  assert_eq!(
    s.lock(Target::Pool, "missing").await.unwrap_err().code(),
    "IDEMPOTENCY_KEY_NOT_FOUND"
  );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_race_creates_one_row() {
  let (s, _) = fresh(|_| {}).await;
  let s = Arc::new(s);
  let tasks: Vec<_> = (0..16)
    .map(|_| {
      let s = s.clone();
      tokio::spawn(async move {
        s.initialize_request(Target::Pool, Some("one"), fp("/a"))
          .await
      })
    })
    .collect();
  let mut won = 0;
  for t in tasks {
    match t.await.unwrap() {
      Ok(_) => won += 1,
      Err(e) => assert_eq!(e.code(), "IDEMPOTENCY_KEY_LOCKED"),
    }
  }
  assert_eq!(won, 1);
}

async fn side_count(s: &Service) -> i64 {
  let k = s
    .create(Target::Pool, None, Fingerprint::default(), None)
    .await
    .unwrap();
  let count = Arc::new(std::sync::Mutex::new(0i64));
  let c = count.clone();
  s.work_stage::<(), _, _>(Target::Pool, &k.idempotency_key, None, move |tx| {
    let c = c.clone();
    async move {
      let r = tx
        .query(tx.start_query(), "SELECT count(*) AS n FROM side", &[])
        .await?;
      if let Cell::Text(n) = &r.rows[0][0] {
        *c.lock().unwrap() = n.parse().unwrap();
      }
      Ok(moved("counted"))
    }
  })
  .await
  .unwrap();
  let n = *count.lock().unwrap();
  n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_commits_with_callback_writes_or_rolls_back_with_them() {
  let (s, url) = fresh(|_| {}).await;
  let mut pg = PgConnection::connect(&url).await.unwrap();
  pg.execute("CREATE TABLE side (id serial PRIMARY KEY, k text, n int, at timestamptz)")
    .await
    .unwrap();
  s.initialize_request(Target::Pool, Some("stage"), fp("/a"))
    .await
    .unwrap();

  let k = s
    .work_stage::<(), _, _>(Target::Pool, "stage", Some("started"), |tx| async move {
      // Strings bind to int and timestamptz columns, as node-postgres allows.
      let params = [
        Param::Text("stage".into()),
        Param::Text("42".into()),
        Param::Text("2024-01-02T03:04:05Z".into()),
      ];
      tx.query(
        tx.start_query(),
        "INSERT INTO side (k, n, at) VALUES ($1, $2, $3)",
        &params,
      )
      .await?;
      Ok(moved("tax_lines_created"))
    })
    .await
    .unwrap();
  assert_eq!(k.recovery_point, "tax_lines_created");
  assert_eq!(side_count(&s).await, 1);

  let failed = s
    .work_stage::<&str, _, _>(Target::Pool, "stage", None, |tx| async move {
      tx.query(tx.start_query(), "INSERT INTO side (k) VALUES ('x')", &[])
        .await
        .map_err(StageError::Core)?;
      Err(StageError::Callback("boom"))
    })
    .await;
  assert!(matches!(failed, Err(StageError::Callback("boom"))));
  assert_eq!(side_count(&s).await, 1);
  assert_eq!(
    s.retrieve(Target::Pool, "stage")
      .await
      .unwrap()
      .recovery_point,
    "tax_lines_created"
  );

  // A failed statement the callback swallowed still fails the stage.
  let caught = s
    .work_stage::<(), _, _>(Target::Pool, "stage", None, |tx| async move {
      let _ = tx
        .query(tx.start_query(), "SELECT * FROM no_such_table", &[])
        .await;
      Ok(moved("payment_authorized"))
    })
    .await;
  match caught {
    Err(StageError::Core(e)) => assert_eq!(e.code(), "42P01"),
    other => panic!("expected 42P01, got {other:?}"),
  }

  let done = s
    .work_stage::<(), _, _>(Target::Pool, "stage", None, |_| async move {
      Ok(StageResult {
        recovery_point: None,
        response_code: Some(Some(201)),
        response_body: Some(Some(serde_json::json!({ "order": 1 }))),
      })
    })
    .await
    .unwrap();
  assert_eq!(done.recovery_point, "finished");
  assert_eq!(done.response_code, Some(201));
  assert!(done.locked_at.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_locked_stages_never_run_their_callback() {
  let (s, _) = fresh(|_| {}).await;
  let s = Arc::new(s);
  s.create(
    Target::Pool,
    Some("k"),
    Fingerprint::default(),
    Some("payment_authorized".into()),
  )
  .await
  .unwrap();
  let ran = Arc::new(AtomicUsize::new(0));
  let r = ran.clone();
  let stale = s
    .work_stage::<(), _, _>(Target::Pool, "k", Some("tax_lines_created"), move |_| {
      r.fetch_add(1, Ordering::SeqCst);
      async { Ok(moved("x")) }
    })
    .await;
  match stale {
    Err(StageError::Core(e @ Error::Stale { .. })) => assert_eq!(e.code(), "IDEMPOTENCY_KEY_STALE"),
    other => panic!("expected stale, got {other:?}"),
  }

  // Hold the row in one stage while another tries it.
  let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
  let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
  let holder = {
    let s = s.clone();
    let mut entered = Some(entered_tx);
    let mut release = Some(release_rx);
    tokio::spawn(async move {
      s.work_stage::<(), _, _>(Target::Pool, "k", None, move |_| {
        let e = entered.take().unwrap();
        let rel = release.take().unwrap();
        async move {
          e.send(()).unwrap();
          rel.await.unwrap();
          Ok(moved("order_created"))
        }
      })
      .await
    })
  };
  entered_rx.await.unwrap();
  let r = ran.clone();
  let locked = s
    .work_stage::<(), _, _>(Target::Pool, "k", None, move |_| {
      r.fetch_add(1, Ordering::SeqCst);
      async { Ok(moved("y")) }
    })
    .await;
  match locked {
    Err(StageError::Core(e)) => assert_eq!(e.code(), "IDEMPOTENCY_KEY_LOCKED"),
    other => panic!("expected locked, got {other:?}"),
  }
  release_tx.send(()).unwrap();
  assert_eq!(
    holder.await.unwrap().unwrap().recovery_point,
    "order_created"
  );
  assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_rerun_the_callback_then_propagate() {
  let (s, _) = fresh(|o| o.max_retries = 2).await;
  s.create(Target::Pool, Some("ser"), Fingerprint::default(), None)
    .await
    .unwrap();
  let runs = Arc::new(AtomicUsize::new(0));
  let r = runs.clone();
  let out = s
    .work_stage::<(), _, _>(Target::Pool, "ser", None, move |tx| {
      r.fetch_add(1, Ordering::SeqCst);
      async move {
        tx.query(
          tx.start_query(),
          "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure'; END $$",
          &[],
        )
        .await?;
        Ok(moved("never"))
      }
    })
    .await;
  match out {
    Err(StageError::Core(e)) => {
      assert_eq!(e.code(), "40001");
      assert_eq!(e.kind().as_str(), "conflict");
    }
    other => panic!("expected 40001, got {other:?}"),
  }
  assert_eq!(runs.load(Ordering::SeqCst), 3);
  assert_eq!(
    s.retrieve(Target::Pool, "ser")
      .await
      .unwrap()
      .recovery_point,
    "started"
  );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieve_by_selector_and_update() {
  let (s, _) = fresh(|_| {}).await;
  s.initialize_request(Target::Pool, Some("sel-1"), fp("/carts/1/complete"))
    .await
    .unwrap();
  s.initialize_request(Target::Pool, Some("sel-2"), fp("/carts/1/complete"))
    .await
    .unwrap();
  use idempotency_core::UpdateValue as V;
  let one = s
    .retrieve_by(
      Target::Pool,
      vec![
        ("request_path".into(), V::Json("/carts/1/complete".into())),
        ("idempotency_key".into(), V::Json("sel-2".into())),
      ],
      "sel",
    )
    .await
    .unwrap();
  assert_eq!(one.idempotency_key, "sel-2");
  let both = s
    .retrieve_by(
      Target::Pool,
      vec![("request_path".into(), V::Json("/carts/1/complete".into()))],
      "sel",
    )
    .await;
  assert_eq!(both.unwrap_err().code(), "IDEMPOTENCY_KEY_AMBIGUOUS");
  let unknown = s
    .retrieve_by(
      Target::Pool,
      vec![("nope; DROP TABLE x".into(), V::Null)],
      "x",
    )
    .await;
  assert_eq!(unknown.unwrap_err().code(), "INVALID_ARGUMENT");

  let u = idempotency_core::KeyUpdate::from_fields(vec![
    ("recovery_point".into(), V::Json("finished".into())),
    ("response_code".into(), V::Json(200.into())),
  ])
  .unwrap();
  let k = s.update(Target::Pool, "sel-1", u).await.unwrap();
  assert_eq!(
    (k.recovery_point.as_str(), k.response_code, k.locked_at),
    ("finished", Some(200), None)
  );
  let bad = idempotency_core::KeyUpdate::from_fields(vec![("id".into(), V::Json("x".into()))]);
  assert_eq!(bad.unwrap_err().code(), "INVALID_ARGUMENT");
}
