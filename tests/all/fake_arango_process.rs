//! The `fake-arangodb` binary (the loopback fake of ArangoDB's HTTP API as a process of its
//! own, for cluster tests): it announces its address, an `ArangoStore` works against it, and
//! it says it is a stand-in for tests only.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use cortex_host::config::ArangoConfig;
use cortex_host::store::{ArangoStore, DocumentStore, RecordKind, RecordStore, Scope};

use crate::fake_arango::{PASSWORD, USER};

const BIN: &str = env!("CARGO_BIN_EXE_fake-arangodb");

/// The running binary and the address of its first stdout line; killed on drop.
struct Process {
    child: Child,
    addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Process {
    let mut child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("first line {line:?}")).to_owned();
    Process { child, addr }
}

fn config(url: &str, dir: &tempfile::TempDir) -> ArangoConfig {
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    ArangoConfig {
        url: url.to_owned(),
        database: "cortex_process".into(),
        username: USER.into(),
        password_file: Some(password_file),
        connect_timeout_ms: 500,
        request_timeout_ms: 2_000,
    }
}

async fn round_trip(addr: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = ArangoStore::connect(&config(&format!("http://{addr}"), &dir)).await.unwrap();
    let rev = store.record_put(RecordKind::Tenant, "acme", b"{\"name\":\"acme\"}".to_vec(), Some(0)).await.unwrap();
    assert_eq!(
        store.record_get(RecordKind::Tenant, "acme").await.unwrap(),
        Some((b"{\"name\":\"acme\"}".to_vec(), rev))
    );
    let scope = Scope::new("acme", "agent");
    store.put(&scope, "notes", "a", "{\"n\":1}", None).await.unwrap();
    let doc = store.get(&scope, "notes", "a").await.unwrap().unwrap();
    assert_eq!((doc.value.as_str(), doc.revision), ("{\"n\":1}", 1));
    // A second client (another node, in a cluster test) sees the same data.
    let other = ArangoStore::connect(&config(&format!("http://{addr}"), &dir)).await.unwrap();
    assert_eq!(other.get(&scope, "notes", "a").await.unwrap().unwrap().revision, 1);
}

#[tokio::test]
async fn the_fake_arangodb_process_serves_an_arango_store() {
    let mut fake = start(&[]);
    round_trip(&fake.addr).await;
    fake.child.kill().unwrap();
    fake.child.wait().unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(ArangoStore::connect(&config(&format!("http://{}", fake.addr), &dir)).await.is_err(), "gone once killed");
}

#[tokio::test]
async fn the_fake_arangodb_process_listens_on_a_chosen_port() {
    let fake = start(&["--port", "0"]);
    assert!(fake.addr.starts_with("127.0.0.1:") && !fake.addr.ends_with(":0"), "{}", fake.addr);
    round_trip(&fake.addr).await;
}

#[test]
fn the_fake_arangodb_says_it_is_for_tests_only() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("FOR TESTS ONLY") && help.contains("stand-in for ArangoDB"), "{help}");
    assert_eq!(Command::new(BIN).arg("--bogus").status().unwrap().code(), Some(2));
}
