//! The ArangoDB backend against the loopback fake of ArangoDB's HTTP API (`fake_arango`):
//! the protocol paths the store contract uses, key sanitising, timeouts, and `/readyz` over
//! a stalled server. The contract's cases themselves run per backend in `store_contract`
//! (`fake_arango::<case>`, and `real_arangodb::<case>` when `CORTEX_TEST_ARANGODB_URL` is set).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_host::config::ArangoConfig;
use cortex_host::store::arangodb::keys::{arango_key, hex};
use cortex_host::store::{
    ArangoStore, DocumentStore, FeedStore, Fence, Quota, REGISTRY_FEED, RecordKind, RecordOp, RecordStore, Scope,
    StoreError,
};
use serde_json::{Value, json};

use crate::fake_arango::{FakeArango, PASSWORD, USER};
use crate::store_contract::every_case;

pub(crate) fn config(url: &str, dir: &tempfile::TempDir, password: &str) -> ArangoConfig {
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    ArangoConfig {
        url: url.to_owned(),
        database: "cortex_test".into(),
        username: USER.into(),
        password_file: Some(password_file),
        connect_timeout_ms: 500,
        request_timeout_ms: 2_000,
    }
}

pub(crate) async fn connected() -> (FakeArango, ArangoStore, tempfile::TempDir) {
    let fake = FakeArango::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = ArangoStore::connect(&config(&fake.url, &dir, PASSWORD)).await.unwrap();
    (fake, store, dir)
}

/// A second client of the fake server `fake` (a second host process), on the same database.
pub(crate) async fn connect_again(fake: &FakeArango, dir: &tempfile::TempDir) -> ArangoStore {
    ArangoStore::connect(&config(&fake.url, dir, PASSWORD)).await.unwrap()
}

/// A store on a fresh database of the real server at `CORTEX_TEST_ARANGODB_URL`, if set.
pub(crate) async fn real() -> Option<(ArangoStore, tempfile::TempDir)> {
    let (cfg, dir) = real_config()?;
    Some((ArangoStore::connect(&cfg).await.unwrap(), dir))
}

/// Two clients of one fresh database of the real server at `CORTEX_TEST_ARANGODB_URL`.
pub(crate) async fn real_twins() -> Option<(ArangoStore, ArangoStore, tempfile::TempDir)> {
    let (cfg, dir) = real_config()?;
    let a = ArangoStore::connect(&cfg).await.unwrap();
    Some((a, ArangoStore::connect(&cfg).await.unwrap(), dir))
}

/// The configuration of a fresh database of the real server, if one is given.
pub(crate) fn real_config() -> Option<(ArangoConfig, tempfile::TempDir)> {
    let url = std::env::var("CORTEX_TEST_ARANGODB_URL").ok()?;
    let dir = tempfile::tempdir().unwrap();
    let password = std::env::var("CORTEX_TEST_ARANGODB_PASSWORD").unwrap_or_default();
    let mut cfg = config(&url, &dir, &password);
    cfg.username = std::env::var("CORTEX_TEST_ARANGODB_USER").unwrap_or_else(|_| "root".into());
    // A fresh database per store: each contract case needs an empty one.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    cfg.database = format!("cortex_contract_{nanos}_{n}");
    Some((cfg, dir))
}

/// The contract itself runs per case in `store_contract::fake_arango`; this runs every case
/// on one store and checks the protocol paths they used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_uses_every_protocol_path_of_the_fake_server() {
    let (fake, store, _dir) = connected().await;
    every_case(&(Arc::new(store) as Arc<dyn cortex_host::store::Store>)).await;
    let log = fake.state.lock().unwrap().log.clone();
    // The protocol paths the contract exercised.
    for want in [
        "POST /_api/database",
        "POST /_db/cortex_test/_api/transaction/begin",
        "DELETE /_db/cortex_test/_api/transaction/",
        "PUT /_db/cortex_test/_api/transaction/",
        "POST /_db/cortex_test/_api/cursor",
        "POST /_db/cortex_test/_api/document/cortex_feed",
        "PUT /_db/cortex_test/_api/document/cortex_feed/t_cfeed_ha-head",
        "POST /_db/cortex_test/_api/document/cortex_edges",
        "DELETE /_db/cortex_test/_api/document/cortex_edges/",
        // The registry change stream: the feed of the pseudo-tenant `~registry`.
        "PUT /_db/cortex_test/_api/document/cortex_feed/t_c_x7eregistry-head",
    ] {
        assert!(log.iter().any(|l| l.starts_with(want)), "no request {want:?}");
    }
}

#[tokio::test]
async fn connecting_twice_reuses_the_database_and_collections() {
    let (fake, store, dir) = connected().await;
    let a = Scope::new("t", "agent");
    store.put(&a, "c", "k", "1", None).await.unwrap();
    let again = ArangoStore::connect(&config(&fake.url, &dir, PASSWORD)).await.unwrap();
    assert_eq!(again.get(&a, "c", "k").await.unwrap().unwrap().revision, 1);
}

#[tokio::test]
async fn wrong_password_is_refused_and_not_transient() {
    let fake = FakeArango::start().await;
    let dir = tempfile::tempdir().unwrap();
    let e = ArangoStore::connect(&config(&fake.url, &dir, "wrong")).await.unwrap_err();
    assert!(matches!(e, StoreError::Backend { transient: false, .. }), "{e}");
}

#[tokio::test]
async fn keys_with_colons_slashes_and_dots_round_trip_and_never_collide_across_tenants() {
    let (fake, store, _dir) = connected().await;
    let keys = ["a:b", "a/b", "a.b", "a_b", "a-b", "a__b", "a_cb", "orders/2024:01.x", "_", "-", &"k:".repeat(300)];
    for tenant in ["t", "t-c", "t_"] {
        let s = Scope::new(tenant, "agent");
        for (i, k) in keys.iter().enumerate() {
            store.put(&s, "c", k, &format!("\"{tenant}{i}\""), Some(0)).await.unwrap();
        }
    }
    // A tenant `t` with collection `c-x` must not meet tenant `t-c` with collection `x`.
    store.put(&Scope::new("t", "agent"), "c-x", "k", "1", Some(0)).await.unwrap();
    assert_eq!(store.get(&Scope::new("t-c", "agent"), "x", "k").await.unwrap(), None);
    for tenant in ["t", "t-c", "t_"] {
        let s = Scope::new(tenant, "agent");
        for (i, k) in keys.iter().enumerate() {
            let d = store.get(&s, "c", k).await.unwrap().unwrap();
            assert_eq!((d.key.as_str(), d.value.as_str(), d.revision), (*k, format!("\"{tenant}{i}\"").as_str(), 1));
        }
        let mut want: Vec<&str> = keys.to_vec();
        want.sort();
        let page = store.list(&s, "c", "", 100, None).await.unwrap();
        assert_eq!(page.documents.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), want, "byte order");
        let page = store.list(&s, "c", "a/", 100, None).await.unwrap();
        assert_eq!(page.documents.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["a/b"]);
    }
    let stored = fake.state.lock().unwrap().keys("cortex_test", "cortex_documents");
    assert_eq!(stored.len(), 3 * keys.len() + 1, "one ArangoDB document per (tenant, collection, key)");
    for k in &stored {
        assert!(k.len() <= 254 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{k}");
    }
}

#[tokio::test]
async fn record_lists_follow_cursor_batches() {
    let (fake, store, _dir) = connected().await;
    for i in 0..250 {
        store
            .record_put(RecordKind::Agent, &format!("t/{i:03}"), vec![u8::try_from(i % 256).unwrap()], Some(0))
            .await
            .unwrap();
    }
    let all = store.record_list(RecordKind::Agent, "t/").await.unwrap();
    assert_eq!(all.len(), 250);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(all[7], ("t/007".to_owned(), vec![7]));
    let log = fake.state.lock().unwrap().log.clone();
    let next = log.iter().filter(|l| l.starts_with("PUT /_db/cortex_test/_api/cursor/")).count();
    assert_eq!(next, 2, "250 rows in batches of 100: one POST and two PUTs");
}

#[tokio::test]
async fn concurrent_audit_appends_get_dense_sequence_numbers() {
    let (_fake, store, _dir) = connected().await;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for t in 0..4u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..10u8 {
                // Tenants 0 and 1 share one own log, tenants 2 and 3 have none.
                let own = (t < 2).then_some("shared");
                got.push(s.audit_append(vec![t, i], own).await.unwrap());
            }
            got
        }));
    }
    let mut all = Vec::new();
    let mut own = Vec::new();
    for t in tasks {
        for (seq, own_seq) in t.await.unwrap() {
            all.push(seq);
            own.extend(own_seq);
        }
    }
    all.sort_unstable();
    own.sort_unstable();
    assert_eq!(all, (1..=40).collect::<Vec<u64>>());
    assert_eq!(own, (1..=20).collect::<Vec<u64>>());
    let listed = store.audit_list(None, 0, 100).await.unwrap();
    assert_eq!(listed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), all);
    let listed = store.audit_list(Some("shared"), 0, 100).await.unwrap();
    assert_eq!(listed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), own);
    assert!(listed.iter().all(|(_, v)| v[0] < 2), "only the events given to the tenant's own log");
}

#[tokio::test]
async fn a_server_that_never_answers_fails_fast_and_transient() {
    // Accepted by the kernel's backlog, never read: the request timeout must fire.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&format!("http://{}", silent.local_addr().unwrap()), &dir, PASSWORD);
    cfg.request_timeout_ms = 300;
    let started = Instant::now();
    let e = ArangoStore::connect(&cfg).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    // A connected store whose server stops answering.
    let fake = FakeArango::start().await;
    let mut cfg = config(&fake.url, &dir, PASSWORD);
    cfg.request_timeout_ms = 300;
    let store = ArangoStore::connect(&cfg).await.unwrap();
    fake.state.lock().unwrap().hang = true;
    let started = Instant::now();
    let e = store.get(&Scope::new("t", "a"), "c", "k").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    drop(silent);
}

#[tokio::test]
async fn an_unreachable_port_is_a_transient_error() {
    // Bind then drop: nothing listens there any more, the connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let e = ArangoStore::connect(&config(&format!("http://127.0.0.1:{port}"), &dir, PASSWORD)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    // The client's error is kept as the source, with the whole chain of the transport
    // failure (the refused connect, not only "error sending request").
    let source = std::error::Error::source(&e).expect("the client's error is kept");
    let text = source.to_string().to_lowercase();
    assert!(text.contains("connect") && text.contains("refused"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_ends_requests_by_the_request_timeout_on_both_lanes() {
    let fake = FakeArango::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut arango = config(&fake.url, &dir, PASSWORD);
    // The store would wait far longer than the API lets a request take.
    arango.request_timeout_ms = 30_000;
    // Set up under the default request timeout (an upload compiles, which a loaded machine
    // may not finish in 400 ms), then restart on the same data with the short one: the
    // agent comes back from the artifact cache.
    let s = crate::server::Server::start_with(|c| c.store = cortex_host::config::StoreConfig::Arangodb(arango.clone()))
        .await;
    s.tenant("t").await;
    let dev = s.token(Some("t"), cortex_host::api::Role::TenantAdmin);
    let hello = s.upload(&dev, cortex_artifacts::HELLO).await;
    s.deploy(&dev, "hello", &hello, serde_json::json!({})).await;
    let s = crate::server::Server::start_in(s.stop().await, |c| {
        c.store = cortex_host::config::StoreConfig::Arangodb(arango);
        c.http.request_timeout_ms = 400;
    })
    .await;
    let new_key = || async {
        let r = s.req(reqwest::Method::POST, "/v1/keys", &dev).json(&serde_json::json!({ "role": "developer" }));
        let key: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
        key["key"].as_str().unwrap_or_else(|| panic!("no key in {key}")).to_owned()
    };
    assert_eq!(s.invoke_ok(&new_key().await, "hello", "key").await, "Hello, key!");

    // A key not used yet is looked up in the store: with the store stalled, the invocation
    // (direct lane) and a routed call both end by the request timeout.
    let keys = [new_key().await, new_key().await];
    fake.state.lock().unwrap().hang = true;
    for ((lane, path), key) in
        [("invoke", "/v1/agents/hello/invoke"), ("routed", "/v1/agents/hello")].into_iter().zip(&keys)
    {
        let method = if lane == "invoke" { reqwest::Method::POST } else { reqwest::Method::GET };
        let started = Instant::now();
        let r = s.req(method, path, key).body("late").send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 408, "{lane}: {}", r.text().await.unwrap());
        assert!(took < Duration::from_secs(5), "{lane} took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_pings_the_store_and_answers_503_while_it_stalls() {
    let fake = FakeArango::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut arango = config(&fake.url, &dir, PASSWORD);
    // The ping ends by the store client's own timeout, well within the API's.
    arango.request_timeout_ms = 300;
    let s = crate::server::Server::start_with(|c| {
        c.store = cortex_host::config::StoreConfig::Arangodb(arango);
        c.http.request_timeout_ms = 30_000;
    })
    .await;
    let ready = || async { crate::server::answer(s.client.get(s.url("/readyz")).send().await.unwrap()).await };
    let r = ready().await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (200, "ready"));
    assert!(
        fake.state.lock().unwrap().log.iter().any(|l| l == "GET /_db/cortex_test/_api/version"),
        "asked the server"
    );

    fake.state.lock().unwrap().hang = true;
    let r = ready().await;
    assert_eq!((r.status.as_u16(), r.code.as_str()), (503, "store_unavailable"), "{}", r.text);
    assert_eq!(r.content_type, "application/problem+json");
    assert!(!r.text.contains("arangodb"), "the store's error stays in the log: {}", r.text);

    // Ready again once the server answers.
    fake.state.lock().unwrap().hang = false;
    let r = ready().await;
    assert_eq!((r.status.as_u16(), r.text.as_str()), (200, "ready"));
}

/// A fenced write takes part in the server's write-write conflict detection on its lease:
/// while another client holds an uncommitted write of the lease (a takeover in flight), the
/// fenced write cannot commit (it retries, then gives up with a transient error, nothing
/// written); once the takeover commits, the write is fenced. Were the lease only read, the
/// fenced write would commit before the takeover does, and both would stand.
#[tokio::test]
async fn a_fenced_write_conflicts_with_an_uncommitted_takeover_of_its_lease() {
    let (fake, store, _dir) = connected().await;
    let lease = "watch/t/a";
    store.record_put(RecordKind::Lease, lease, br#"{"epoch":1}"#.to_vec(), Some(0)).await.unwrap();
    let ops = [RecordOp::Put { kind: RecordKind::Agent, key: "t/a".into(), value: b"{}".to_vec(), expected: None }];
    let fence = Fence { key: lease.into(), epoch: 1 };
    assert_eq!(store.record_apply(Some(&fence), &ops, Quota::NONE).await.unwrap(), [1]);

    // Another node writes the lease at epoch 2 in a stream transaction, not committed yet.
    let http = reqwest::Client::new();
    let api = format!("{}/_db/cortex_test/_api", fake.url);
    let begin = json!({ "collections": { "write": ["cortex_records"] } });
    let r = http.post(format!("{api}/transaction/begin")).basic_auth(USER, Some(PASSWORD)).json(&begin).send();
    let trx: Value = r.await.unwrap().json().await.unwrap();
    let trx = trx["result"]["id"].as_str().unwrap().to_owned();
    let doc = json!({
        "kind": "lease", "key": lease, "khex": hex(lease.as_bytes()), "value": hex(br#"{"epoch":2}"#), "rev": 2
    });
    let url = format!("{api}/document/cortex_records/{}", arango_key(&["lease", lease]));
    let r = http.put(url).basic_auth(USER, Some(PASSWORD)).header("x-arango-trx-id", &trx).json(&doc).send();
    assert!(r.await.unwrap().status().is_success());

    let head = store.feed_head(REGISTRY_FEED).await.unwrap();
    let e = store.record_apply(Some(&fence), &ops, Quota::NONE).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(store.record_get(RecordKind::Agent, "t/a").await.unwrap().map(|(_, rev)| rev), Some(1));
    assert_eq!(store.feed_head(REGISTRY_FEED).await.unwrap(), head);

    let r = http.put(format!("{api}/transaction/{trx}")).basic_auth(USER, Some(PASSWORD)).send();
    assert!(r.await.unwrap().status().is_success());
    let e = store.record_apply(Some(&fence), &ops, Quota::NONE).await.unwrap_err();
    assert!(matches!(e, StoreError::Fenced { held: 2, carried: 1, .. }), "{e}");
}
