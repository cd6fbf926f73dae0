//! `GET /v1/admin/backup` and `cortex restore`: a backup taken under write load holds every
//! write acknowledged before its snapshot point, restores into a new data directory after
//! its checksum is checked, and a node started there serves the same agents and secrets.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::Role;
use cortex_host::cli::client::backup::restore;
use cortex_host::store::backup::verify;
use reqwest::{Method, StatusCode};
use serde_json::json;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_write_load_restores_every_acknowledged_write_and_the_same_agents() {
    let keep = tempfile::tempdir().unwrap();
    let jwt = keep.path().join("jwt.secret");
    let key = keep.path().join("secrets.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let (jwt2, key2) = (jwt.clone(), key.clone());
    let s = Server::start_with(move |c| {
        c.auth.secret_file = Some(jwt2);
        c.secrets.key_file = Some(key2);
    })
    .await;
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < 20 {
        assert!(Instant::now() < deadline, "the writer made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    let file = keep.path().join("node.backup");
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

    // A damaged copy is refused, and leaves no store behind.
    let mut bad = std::fs::read(&file).unwrap();
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
    restore(&file, dir.path(), false).unwrap();
    let err = restore(&file, dir.path(), false).unwrap_err();
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    restore(&file, dir.path(), true).unwrap();

    // A node on it serves the same agent, from where the snapshot stood.
    let b = Server::start_in(dir, move |c| {
        c.auth.secret_file = Some(jwt);
        c.secrets.key_file = Some(key);
    })
    .await;
    let agents = b.get_json(&dev, "/v1/agents").await;
    assert!(agents.to_string().contains("\"c\""), "{agents}");
    let next: u64 = b.invoke_ok(&dev, "c", "hits").await.parse().unwrap();
    let restored = next - 1;
    assert!(restored >= before_max, "restored {restored}, but {before_max} was acknowledged before the backup");
    assert!(restored <= all_max);
    assert_eq!(restored, head, "the restored counter is the snapshot's");
    assert_eq!(b.state.vault.reveal("acme", "api").await.unwrap().unwrap().as_str(), "kept");
}
