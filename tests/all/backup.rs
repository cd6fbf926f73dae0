//! `GET /v1/admin/backup` and `cortex restore`: a backup taken under write load holds every
//! write acknowledged before its snapshot point, restores into a new data directory after
//! its checksum is checked, and a node started there serves the same agents and secrets;
//! on the ArangoDB backend too (against the fake, and a real server when
//! `CORTEX_TEST_ARANGODB_URL` is set), restored into a fresh database.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::cli::client::backup::{restore, restore_arango};
use cortex_host::config::ArangoConfig;
use cortex_host::store::backup::{Frame, FrameReader, verify};
use cortex_host::store::{ArangoStore, DocumentStore, RecordStore, Scope};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::fake_arango::{FakeArango, PASSWORD};
use crate::server::{Server, data_dir};

/// Download a backup from `s` into `to`; returns the `x-cortex-snapshot` header.
async fn download(s: &Server, to: &Path) -> String {
    let mut r = s.req(Method::GET, "/v1/admin/backup", &s.admin()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let point = r.headers()["x-cortex-snapshot"].to_str().unwrap().to_owned();
    let mut bytes = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        bytes.extend_from_slice(&c);
    }
    std::fs::write(to, bytes).unwrap();
    point
}

/// A node with the counter agent `c` of tenant `acme` and a secret, written to under load
/// while a backup is taken; returns the backup, the acknowledged writes before the backup
/// request was sent and all of them, and the snapshot's feed head of `acme`.
struct Taken {
    file: std::path::PathBuf,
    before_max: u64,
    all_max: u64,
    head: u64,
    backend: String,
}

/// Start a node with `start` (given the token secret and secrets key files), load it, back
/// it up into `keep`, stop writing.
async fn take_under_load<F, Fut>(keep: &Path, start: F) -> (Arc<Server>, Taken)
where
    F: FnOnce(std::path::PathBuf, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = Server>,
{
    let jwt = keep.join("jwt.secret");
    let key = keep.join("secrets.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let s = start(jwt, key).await;
    s.tenant("acme").await;
    let dev = s.token(Some("acme"), Role::Developer);
    let admin = s.token(Some("acme"), Role::TenantAdmin);
    let digest = s.upload(&dev, art::COUNTER).await;
    s.deploy(&dev, "c", &digest, json!({})).await;
    let r = s.req(Method::PUT, "/v1/secrets/api", &admin).json(&json!({"value": "kept"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A writer: each acknowledged invocation is one document write, its value the revision.
    let s = Arc::new(s);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<std::sync::Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let writer = {
        let (s, stop, acked, dev) = (s.clone(), stop.clone(), acked.clone(), dev.clone());
        tokio::spawn(async move {
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (status, body) = s.invoke(&dev, "c", "hits").await;
                assert_eq!(status, StatusCode::OK, "{body}");
                acked.lock().unwrap().push((Instant::now(), body.parse().unwrap()));
            }
        })
    };
    let count = || acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count() < 20 {
        assert!(Instant::now() < deadline, "the writer made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    let file = keep.join("node.backup");
    let point = download(&s, &file).await;
    assert!(point.starts_with("created_ms="), "{point}");
    // The writer goes on after the snapshot too.
    let after = count() + 10;
    while count() < after {
        assert!(Instant::now() < deadline, "the writer stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let before_max = acked.iter().filter(|(t, _)| *t < sent).map(|(_, v)| *v).max().unwrap();
    let all_max = acked.iter().map(|(_, v)| *v).max().unwrap();

    let (info, entries) = verify(std::fs::File::open(&file).unwrap()).unwrap();
    assert!(entries > 0);
    let head = info.feed_heads["acme"];
    assert!(head >= before_max, "the snapshot's feed head {head} misses acknowledged write {before_max}");
    (s, Taken { file, before_max, all_max, head, backend: info.backend })
}

/// A node `b` started on the restored store serves the same agent, from where the
/// snapshot stood, and the same secret.
async fn serves_the_snapshot(b: &Server, t: &Taken) {
    let dev = b.token(Some("acme"), Role::Developer);
    let agents = b.get_json(&dev, "/v1/agents").await;
    assert!(agents.to_string().contains("\"c\""), "{agents}");
    let next: u64 = b.invoke_ok(&dev, "c", "hits").await.parse().unwrap();
    let restored = next - 1;
    assert!(restored >= t.before_max, "restored {restored}, but {} was acknowledged before the backup", t.before_max);
    assert!(restored <= t.all_max);
    assert_eq!(restored, t.head, "the restored counter is the snapshot's");
    assert_eq!(b.state.vault.reveal("acme", "api").await.unwrap().unwrap().as_str(), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_write_load_restores_every_acknowledged_write_and_the_same_agents() {
    let keep = tempfile::tempdir().unwrap();
    let (s, t) = take_under_load(keep.path(), |jwt, key| {
        Server::start_with(move |c| {
            c.auth.secret_file = Some(jwt);
            c.secrets.key_file = Some(key);
        })
    })
    .await;
    drop(s);
    assert_eq!(t.backend, "embedded");
    let file = &t.file;

    // A damaged copy is refused, and leaves no store behind.
    let mut bad = std::fs::read(file).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let bad_file = keep.path().join("bad.backup");
    std::fs::write(&bad_file, bad).unwrap();
    let bad_dir = data_dir();
    let err = restore(&bad_file, &bad_dir.path().join("node"), false).unwrap_err();
    assert!(format!("{err:#}").contains("checksum") || format!("{err:#}").contains("not a valid"), "{err:#}");
    assert!(!bad_dir.path().join("node/store/documents.redb").exists());

    // Restored into a new directory; a non-empty one is refused unless forced.
    let dir = data_dir();
    restore(file, dir.path(), false).unwrap();
    let err = restore(file, dir.path(), false).unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    restore(file, dir.path(), true).unwrap();

    // A node on it serves the same agent, from where the snapshot stood.
    let (jwt, key) = (keep.path().join("jwt.secret"), keep.path().join("secrets.key"));
    let b = Server::start_in(dir, move |c| {
        c.auth.secret_file = Some(jwt);
        c.secrets.key_file = Some(key);
    })
    .await;
    serves_the_snapshot(&b, &t).await;
}

/// A node on the ArangoDB database of `cfg`.
async fn node_on(cfg: &ArangoConfig, jwt: std::path::PathBuf, key: std::path::PathBuf) -> Server {
    let store = ArangoStore::connect(cfg).await.unwrap();
    let dir = data_dir();
    let mut c = crate::server::config(dir.path());
    c.auth.secret_file = Some(jwt);
    c.secrets.key_file = Some(key);
    Server::start_on(dir, c, Some(Arc::new(store))).await
}

/// The ArangoDB backup: taken under write load on the database of `from` (read in one
/// stream transaction), restored into the empty database of `to`, which then serves the
/// same agents from the snapshot; a non-empty database is refused unless forced, and an
/// embedded data directory refuses the file.
async fn arango_round_trip(from: ArangoConfig, to: ArangoConfig) {
    let keep = tempfile::tempdir().unwrap();
    let a = from.clone();
    let (s, t) = take_under_load(keep.path(), |jwt, key| async move { node_on(&a, jwt, key).await }).await;
    assert_eq!(t.backend, "arangodb");

    // The live database is not empty: refused without --force.
    let err = restore_arango(&t.file, &from, false).await.unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    drop(s);
    // Not into a data directory.
    let err = restore(&t.file, data_dir().path(), false).unwrap_err();
    assert!(format!("{err:#}").contains("--arango"), "{err:#}");

    restore_arango(&t.file, &to, false).await.unwrap();
    let err = restore_arango(&t.file, &to, false).await.unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    restore_arango(&t.file, &to, true).await.unwrap();

    let b = node_on(&to, keep.path().join("jwt.secret"), keep.path().join("secrets.key")).await;
    serves_the_snapshot(&b, &t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_arangodb_backup_under_write_load_restores_into_a_fresh_database_with_the_same_agents() {
    let (live, fresh) = (FakeArango::start().await, FakeArango::start().await);
    let dir = tempfile::tempdir().unwrap();
    let from = crate::arangodb::config(&live.url, &dir, PASSWORD);
    let to = crate::arangodb::config(&fresh.url, &dir, PASSWORD);
    arango_round_trip(from, to).await;
    // The backup read in one read-only stream transaction, aborted at the end.
    let log = live.state.lock().unwrap().log.clone();
    assert!(log.iter().any(|l| l.ends_with("/_api/transaction/begin")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_arangodb_backup_restores_into_a_fresh_database() {
    let (Some((from, _d1)), Some((to, _d2))) = (crate::arangodb::real_config(), crate::arangodb::real_config()) else {
        eprintln!("skipped: CORTEX_TEST_ARANGODB_URL is not set (see README \"ArangoDB\")");
        return;
    };
    arango_round_trip(from, to).await;
}

/// The documents of `cortex_documents` in an ArangoDB backup: `(key, value)`.
fn backed_up_documents(file: &[u8]) -> Vec<(String, String)> {
    let mut r = FrameReader::new(file).unwrap();
    let (mut table, mut out) = (String::new(), Vec::new());
    loop {
        match r.next_frame().unwrap() {
            Frame::Table(t) => table = t,
            Frame::Entry(_, v) if table == "cortex_documents" => {
                let d: serde_json::Value = serde_json::from_slice(&v).unwrap();
                out.push((d["key"].as_str().unwrap().to_owned(), d["value"].as_str().unwrap().to_owned()));
            }
            Frame::Entry(..) => {}
            Frame::End => return out,
        }
    }
}

/// What a backup taken on `store` holds: every write committed before its transaction
/// began, and none committed after, although it reads the collections only later.
async fn reads_its_begin(store: ArangoStore) {
    let scope = Scope::new("acme", "a");
    store.put(&scope, "c", "before", "1", None).await.unwrap();
    let snap = store.snapshot().await.unwrap().expect("ArangoDB has snapshots");
    assert_eq!(snap.info().backend, "arangodb");
    assert_eq!(snap.info().feed_heads["acme"], 1);
    store.put(&scope, "c", "before", "2", Some(1)).await.unwrap();
    store.put(&scope, "c", "after", "3", None).await.unwrap();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        snap.write_to(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert_eq!(backed_up_documents(&bytes), vec![("before".to_owned(), "1".to_owned())]);
    // The writes after it are there, for the next backup.
    let again = store.snapshot().await.unwrap().unwrap();
    assert_eq!(again.info().feed_heads["acme"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arangodb_backup_holds_what_was_committed_at_its_begin_and_nothing_later() {
    let (_fake, store, _dir) = crate::arangodb::connected().await;
    reads_its_begin(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_arangodb_backup_holds_what_was_committed_at_its_begin_and_nothing_later() {
    let Some((store, _dir)) = crate::arangodb::real().await else {
        eprintln!("skipped: CORTEX_TEST_ARANGODB_URL is not set (see README \"ArangoDB\")");
        return;
    };
    reads_its_begin(store).await;
}
