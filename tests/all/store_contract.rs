//! One contract every storage backend must pass, one named test per case and backend:
//! `store_contract::embedded::<case>`, `store_contract::fake_arango::<case>` and, when
//! `CORTEX_TEST_ARANGODB_URL` is set, `store_contract::real_arangodb::<case>`, each on a fresh,
//! empty store, so one failing case does not hide the others.
//!
//! A case is a `pub async fn <case>(s: Arc<dyn Store>)` listed in [`contract_cases!`]; a new
//! backend is a module with `async fn backend() -> Option<Backend>`, `async fn twins() ->
//! Option<Twins>` (two store values over one backend, for the cases in [`twin_cases!`]:
//! `pub async fn <case>(a: Arc<dyn Store>, b: Arc<dyn Store>)`) and
//! `contract_tests!(backend, twins);`. Cases use their own tenants and keys, and read the
//! shared registry stream from its head when they start, so [`every_case`] can also run
//! them one after another on one store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_host::agents::logbook::LogBook;
use cortex_host::runtime::{LogLine, LogStream};
use cortex_host::store::{
    ChangeEvent, ChangeOp, Direction, Edge, EmbeddedStore, Fence, Quota, REGISTRY_FEED, RecordKind, RecordOp, Scope,
    Store, StoreError, Usage, WriteOp, edge_size,
};

/// A store under test and what must live as long as it (a folder, a fake server).
pub type Backend = (Arc<dyn Store>, Box<dyn std::any::Any + Send>);

/// Calls `$callback!(($args) case, case, ...)` with every case of the contract, in order.
macro_rules! contract_cases {
    ($callback:ident!($($args:tt)*)) => {
        $crate::store_contract::$callback!(($($args)*)
            revisions_start_at_one_and_cas_checks_them,
            tenants_are_disjoint_for_reads_lists_and_deletes,
            delete_checks_the_expected_revision,
            listing_follows_prefix_order_limit_and_cursor,
            transactions_apply_all_ops_or_none,
            usage_counts_and_a_purge_removes_one_tenant_only,
            records_use_cas_and_kinds_are_separate_key_spaces,
            audit_logs_number_their_events_densely,
            audit_prune_deletes_an_old_prefix_and_never_the_newest,
            concurrent_cas_increments_lose_no_update,
            the_feed_records_each_effective_write_once,
            concurrent_writers_get_a_dense_feed,
            wait_for_wakes_on_a_write_of_its_own_tenant,
            graph_edges_link_list_and_go_with_their_agent,
            quotas_count_every_stored_byte_inside_the_write,
            bounded_reads_stop_at_the_byte_budget,
            agent_logs_are_stored_in_order_trimmed_and_purged,
            replicated_record_writes_append_one_registry_event_each,
            other_record_kinds_append_no_registry_event,
            wait_for_wakes_on_a_registry_record_write,
            record_apply_is_all_or_nothing_and_reports_each_op,
            record_apply_with_a_fence_applies_only_at_the_held_epoch,
            record_apply_meters_metered_kinds_within_the_quota,
            record_apply_writes_a_document_with_the_records_or_neither,
        );
    };
}
pub(crate) use contract_cases;

/// Like [`contract_cases!`], for the cases that take two store values over one backend
/// (two processes sharing it; the embedded backend gives the same store twice).
macro_rules! twin_cases {
    ($callback:ident!($($args:tt)*)) => {
        $crate::store_contract::$callback!(($($args)*)
            registry_writes_of_two_store_values_get_one_dense_stream,
            a_lease_takeover_and_a_fenced_write_never_both_commit,
        );
    };
}
pub(crate) use twin_cases;

/// One `#[tokio::test]` per case on a fresh store from `$backend()`, and per twin case on
/// two fresh store values of one backend from `$twins()` (`None`: skipped).
macro_rules! contract_tests {
    ($backend:path, $twins:path) => {
        $crate::store_contract::contract_cases!(contract_tests_for!($backend));
        $crate::store_contract::twin_cases!(twin_tests_for!($twins));
    };
}

macro_rules! twin_tests_for {
    (($twins:path) $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((a, b, _guard)) = $twins().await else { return };
                $crate::store_contract::$case(a, b).await;
            }
        )*
    };
}
pub(crate) use twin_tests_for;

macro_rules! contract_tests_for {
    (($backend:path) $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, _guard)) = $backend().await else { return };
                $crate::store_contract::$case(store).await;
            }
        )*
    };
}
pub(crate) use contract_tests_for;

macro_rules! every_case_fn {
    (() $($case:ident),* $(,)?) => {
        /// Every case in order on one store (for tests that look at all the calls made),
        /// then every twin case with that store twice.
        pub async fn every_case(s: &Arc<dyn Store>) {
            $( $case(s.clone()).await; )*
            every_twin_case(s).await;
        }
    };
}
pub(crate) use every_case_fn;
contract_cases!(every_case_fn!());

macro_rules! every_twin_case_fn {
    (() $($case:ident),* $(,)?) => {
        async fn every_twin_case(s: &Arc<dyn Store>) {
            $( $case(s.clone(), s.clone()).await; )*
        }
    };
}
pub(crate) use every_twin_case_fn;
twin_cases!(every_twin_case_fn!());

/// Two store values over one backend, and what must live as long as them.
pub type Twins = (Arc<dyn Store>, Arc<dyn Store>, Box<dyn std::any::Any + Send>);

mod embedded {
    use super::*;

    async fn backend() -> Option<Backend> {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        Some((store, Box::new(dir)))
    }

    /// One process opens the data directory once: the same store twice.
    async fn twins() -> Option<Twins> {
        let (store, guard) = backend().await?;
        Some((store.clone(), store, guard))
    }

    contract_tests!(backend, twins);
}

mod fake_arango {
    use super::*;

    async fn backend() -> Option<Backend> {
        let (fake, store, dir) = crate::arangodb::connected().await;
        Some((Arc::new(store), Box::new((fake, dir))))
    }

    /// Two clients of one fake server, as two host processes would be.
    async fn twins() -> Option<Twins> {
        let (fake, a, dir) = crate::arangodb::connected().await;
        let b = crate::arangodb::connect_again(&fake, &dir).await;
        Some((Arc::new(a), Arc::new(b), Box::new((fake, dir))))
    }

    contract_tests!(backend, twins);
}

mod real_arangodb {
    use super::*;

    async fn backend() -> Option<Backend> {
        let Some((store, dir)) = crate::arangodb::real().await else {
            eprintln!(
                "skipped: CORTEX_TEST_ARANGODB_URL is not set (no ArangoDB server can run on this machine; \
                 the README's ArangoDB section says how to start one)"
            );
            return None;
        };
        Some((Arc::new(store), Box::new(dir)))
    }

    /// Two clients of one fresh database of the real server.
    async fn twins() -> Option<Twins> {
        let (a, b, dir) = crate::arangodb::real_twins().await?;
        Some((Arc::new(a), Arc::new(b), Box::new(dir)))
    }

    contract_tests!(backend, twins);
}

fn put_op(c: &str, k: &str, v: &str, expected: Option<u64>) -> WriteOp {
    WriteOp::Put { collection: c.into(), key: k.into(), value: v.into(), expected }
}

/// Revisions start at 1 and bump by one; CAS with 0 means "must not exist".
pub async fn revisions_start_at_one_and_cas_checks_them(s: Arc<dyn Store>) {
    let a = Scope::new("rev-a", "agent");
    assert_eq!(s.put(&a, "c", "k", "1", Some(0)).await.unwrap(), 1);
    assert!(matches!(s.put(&a, "c", "k", "2", Some(0)).await, Err(StoreError::Conflict { current: 1 })));
    assert_eq!(s.put(&a, "c", "k", "2", None).await.unwrap(), 2);
    assert!(matches!(s.put(&a, "c", "k", "3", Some(1)).await, Err(StoreError::Conflict { current: 2 })));
    let d = s.get(&a, "c", "k").await.unwrap().unwrap();
    assert_eq!((d.value.as_str(), d.revision), ("2", 2));
}

/// Tenants are disjoint, also for listing and deletes.
pub async fn tenants_are_disjoint_for_reads_lists_and_deletes(s: Arc<dyn Store>) {
    let a = Scope::new("disjoint-a", "agent");
    let b = Scope::new("disjoint-b", "agent");
    s.put(&a, "c", "k", "1", None).await.unwrap();
    assert_eq!(s.get(&b, "c", "k").await.unwrap(), None);
    assert!(!s.delete(&b, "c", "k", None).await.unwrap());
    assert!(s.list(&b, "c", "", 100, None).await.unwrap().documents.is_empty());
    assert_eq!(s.get(&a, "c", "k").await.unwrap().unwrap().revision, 1, "b's delete left a's document");
}

/// Delete with CAS.
pub async fn delete_checks_the_expected_revision(s: Arc<dyn Store>) {
    let a = Scope::new("del-a", "agent");
    s.put(&a, "c", "k", "1", None).await.unwrap();
    s.put(&a, "c", "k", "2", None).await.unwrap();
    assert!(matches!(s.delete(&a, "c", "k", Some(1)).await, Err(StoreError::Conflict { current: 2 })));
    assert!(s.delete(&a, "c", "k", Some(2)).await.unwrap());
    assert_eq!(s.get(&a, "c", "k").await.unwrap(), None);
}

/// Listing: prefix, order, limit, cursor; other collections excluded.
pub async fn listing_follows_prefix_order_limit_and_cursor(s: Arc<dyn Store>) {
    let a = Scope::new("list-a", "agent");
    for k in ["p/3", "p/1", "p/2", "q/1"] {
        s.put(&a, "list", k, "0", None).await.unwrap();
    }
    s.put(&a, "other", "p/9", "0", None).await.unwrap();
    let p1 = s.list(&a, "list", "p/", 2, None).await.unwrap();
    assert_eq!(p1.documents.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["p/1", "p/2"]);
    let p2 = s.list(&a, "list", "p/", 2, p1.next.as_deref()).await.unwrap();
    assert_eq!(p2.documents.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["p/3"]);
    assert_eq!(p2.next, None);
}

/// Transactions: all or nothing, revisions per op.
pub async fn transactions_apply_all_ops_or_none(s: Arc<dyn Store>) {
    let a = Scope::new("tx-a", "agent");
    s.put(&a, "list", "q/1", "0", None).await.unwrap();
    let bad = [put_op("tx", "x", "1", Some(0)), put_op("tx", "y", "1", Some(5))];
    assert!(matches!(s.transact(&a, &bad).await, Err(StoreError::Conflict { current: 0 })));
    assert_eq!(s.get(&a, "tx", "x").await.unwrap(), None);
    let good = [
        put_op("tx", "x", "1", Some(0)),
        put_op("tx", "x", "2", Some(1)),
        WriteOp::Delete { collection: "list".into(), key: "q/1".into(), expected: Some(1) },
    ];
    assert_eq!(s.transact(&a, &good).await.unwrap(), vec![1, 2, 0]);
    assert_eq!(s.get(&a, "list", "q/1").await.unwrap(), None);
}

/// Usage accounting and purge of one tenant.
pub async fn usage_counts_and_a_purge_removes_one_tenant_only(s: Arc<dyn Store>) {
    let a = Scope::new("usage-a", "agent");
    let b = Scope::new("usage-b", "agent");
    for k in ["p/1", "p/2", "p/3"] {
        s.put(&a, "list", k, "0", None).await.unwrap();
    }
    s.put(&a, "tx", "x", "2", None).await.unwrap();
    s.put(&b, "c", "k", "12345", None).await.unwrap();
    assert_eq!(s.stored_bytes("usage-b").await.unwrap(), 5);
    assert!(s.purge_tenant_documents("usage-a").await.unwrap() >= 4);
    assert!(s.list(&a, "list", "", 100, None).await.unwrap().documents.is_empty());
    assert_eq!(s.get(&b, "c", "k").await.unwrap().unwrap().value, "12345");
}

/// Registry records, and mailbox records listed by prefix and deleted several at once.
pub async fn records_use_cas_and_kinds_are_separate_key_spaces(s: Arc<dyn Store>) {
    assert_eq!(s.record_put(RecordKind::Tenant, "t1", b"{}".to_vec(), Some(0)).await.unwrap(), 1);
    assert!(matches!(
        s.record_put(RecordKind::Tenant, "t1", b"{}".to_vec(), Some(0)).await,
        Err(StoreError::Conflict { current: 1 })
    ));
    assert_eq!(s.record_get(RecordKind::Agent, "t1").await.unwrap(), None, "kinds are separate key spaces");
    for k in ["t1/rx/1", "t1/rx/2", "t1/rx/3", "t1/rxx/1"] {
        s.record_put(RecordKind::Message, k, b"{}".to_vec(), Some(0)).await.unwrap();
    }
    let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys(s.record_list(RecordKind::Message, "t1/rx/").await.unwrap()), ["t1/rx/1", "t1/rx/2", "t1/rx/3"]);
    let gone = vec!["t1/rx/1".to_owned(), "t1/rx/3".to_owned(), "t1/rx/9".to_owned()];
    assert_eq!(s.record_delete_many(RecordKind::Message, &gone).await.unwrap(), 2, "only existing ones count");
    assert_eq!(keys(s.record_list(RecordKind::Message, "t1/rx").await.unwrap()), ["t1/rx/2", "t1/rxx/1"]);
    // Listed with revisions (restore reads every agent this way): the same as one read each.
    s.record_put(RecordKind::Message, "t1/rx/2", b"{\"v\":2}".to_vec(), Some(1)).await.unwrap();
    let listed = s.record_list_revisions(RecordKind::Message, "t1/rx").await.unwrap();
    assert_eq!(listed, [("t1/rx/2".to_owned(), b"{\"v\":2}".to_vec(), 2), ("t1/rxx/1".to_owned(), b"{}".to_vec(), 1)]);
}

fn log_line(seq: u64, message: &str) -> LogLine {
    let mut fields = cortex_host::runtime::Fields::new();
    fields.insert("n".into(), seq.into());
    LogLine {
        seq,
        time_ms: 1_000 + seq,
        invocation: format!("inv-{seq}"),
        stream: LogStream::Stdout,
        level: Some("info".into()),
        message: message.into(),
        fields,
    }
}

/// The logbook keeps agents' logs as records of their own kind: in order, without the
/// chunks that left the ring, per agent, gone with a purge, outside the tenant's usage.
pub async fn agent_logs_are_stored_in_order_trimmed_and_purged(s: Arc<dyn Store>) {
    let book = LogBook::new(s.clone());
    book.append("lt", "a", (1..=3).map(|i| log_line(i, "first")).collect(), 1);
    book.append("lt", "ab", vec![log_line(1, "other agent")], 1);
    book.flush().await.unwrap();
    book.append("lt", "a", (4..=6).map(|i| log_line(i, "second")).collect(), 2);
    book.flush().await.unwrap();
    // Lines 2 and 3 are still in the ring: the first chunk stays.
    let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let a = keys(s.record_list(RecordKind::AgentLog, "lt/a/").await.unwrap());
    assert_eq!(a, ["lt/a/00000000000000000001", "lt/a/00000000000000000004"]);
    book.append("lt", "a", (7..=8).map(|i| log_line(i, "third")).collect(), 5);
    book.flush().await.unwrap();
    let a = keys(s.record_list(RecordKind::AgentLog, "lt/a/").await.unwrap());
    assert_eq!(a, ["lt/a/00000000000000000004", "lt/a/00000000000000000007"], "the chunk that left the ring goes");
    assert_eq!(s.record_get(RecordKind::Message, "lt/a/00000000000000000004").await.unwrap(), None);

    // Read back by another logbook (a restart): every kept line, as written.
    let loaded = LogBook::new(s.clone()).load_all().await.unwrap();
    let a: Vec<LogLine> = loaded["lt/a"].clone();
    assert_eq!(a, (4..=8).map(|i| log_line(i, ["second", "third"][usize::from(i > 6)])).collect::<Vec<_>>());
    assert_eq!(loaded["lt/ab"], [log_line(1, "other agent")]);
    assert_eq!(s.usage("lt").await.unwrap(), Usage::default(), "logs do not count in the tenant's storage");

    assert_eq!(book.purge("lt", "a").await.unwrap(), 2);
    let loaded = LogBook::new(s.clone()).load_all().await.unwrap();
    assert!(!loaded.contains_key("lt/a") && loaded.contains_key("lt/ab"), "{:?}", loaded.keys());
}

/// Concurrent CAS increments: the final value equals the number of successful swaps.
pub async fn concurrent_cas_increments_lose_no_update(s: Arc<dyn Store>) {
    let a = Scope::new("cas-a", "agent");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = 0u64;
            for _ in 0..10 {
                loop {
                    let cur = s.get(&a, "n", "n").await.unwrap();
                    let (v, rev) = cur.map_or((0, 0), |d| (d.value.parse::<u64>().unwrap(), d.revision));
                    match s.put(&a, "n", "n", &(v + 1).to_string(), Some(rev)).await {
                        Ok(_) => {
                            won += 1;
                            break;
                        }
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            won
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap();
    }
    assert_eq!(won, 80);
    assert_eq!(s.get(&a, "n", "n").await.unwrap().unwrap().value, "80");
    // The 80 swaps of the one key are 80 events in revision order.
    let revs: Vec<u64> = all_events(&s, "cas-a").await.iter().filter(|e| e.key == "n").map(|e| e.revision).collect();
    assert_eq!(revs, (1..=80).collect::<Vec<u64>>());
}

/// Every stored byte counts: documents, edges and metered records, checked in the write.
pub async fn quotas_count_every_stored_byte_inside_the_write(s: Arc<dyn Store>) {
    let s = &s;
    let t = "quota-t";
    let a = Scope::new(t, "agent");
    let usage = || async { s.usage(t).await.unwrap() };
    assert_eq!(usage().await, Usage::default());
    let bytes = |n| Quota { bytes: Some(n), edges: None };

    // Documents: refused inside the write, whole transactions included.
    s.put_within(&a, "c", "k", "1234567890", None, bytes(15)).await.unwrap();
    assert!(matches!(s.put_within(&a, "c", "j", "123456", None, bytes(15)).await, Err(StoreError::QuotaExceeded(_))));
    assert_eq!(s.get(&a, "c", "j").await.unwrap(), None);
    let ops = [put_op("c", "x", "1", None), put_op("c", "y", "123456789", None)];
    assert!(matches!(s.transact_within(&a, &ops, bytes(15)).await, Err(StoreError::QuotaExceeded(_))));
    assert_eq!(s.get(&a, "c", "x").await.unwrap(), None, "the refused transaction wrote nothing");
    // A write that shrinks is allowed even over the quota.
    s.put_within(&a, "c", "k", "12", None, bytes(1)).await.unwrap();
    assert_eq!(usage().await.bytes, 2);

    // Edges: names and attributes count, and one edge each.
    let attrs = r#"{"w":"0123456789"}"#;
    let size = edge_size("a", "b", "calls", attrs);
    s.link_within(t, "a", "b", "calls", attrs, Quota::NONE).await.unwrap();
    assert_eq!(usage().await, Usage { bytes: 2 + size, edges: 1 });
    assert_eq!(s.edge(t, "a", "b", "calls").await.unwrap(), Some(edge("a", "b", "calls", attrs)));
    assert_eq!(s.edge(t, "b", "a", "calls").await.unwrap(), None);
    // Replacing the attributes does not add an edge.
    s.link_within(t, "a", "b", "calls", "{}", Quota::NONE).await.unwrap();
    assert_eq!(usage().await, Usage { bytes: 2 + edge_size("a", "b", "calls", "{}"), edges: 1 });
    let big = format!(r#"{{"w":"{}"}}"#, "x".repeat(1000));
    assert!(matches!(s.link_within(t, "a", "c", "calls", &big, bytes(500)).await, Err(StoreError::QuotaExceeded(_))));
    assert_eq!(s.neighbours(t, "a", None, Direction::Outgoing, 10).await.unwrap().len(), 1, "nothing linked");
    // The edge cap.
    let cap = Quota { bytes: None, edges: Some(2) };
    s.link_within(t, "a", "c", "calls", "{}", cap).await.unwrap();
    assert!(matches!(s.link_within(t, "a", "d", "calls", "{}", cap).await, Err(StoreError::QuotaExceeded(_))));
    assert_eq!(usage().await.edges, 2);
    s.link_within(t, "a", "c", "calls", "[1]", cap).await.unwrap(); // a replace passes the cap
    // Unlinking and removing an agent's edges free what they held.
    assert!(s.unlink(t, "a", "c", "calls").await.unwrap());
    assert_eq!(usage().await, Usage { bytes: 2 + edge_size("a", "b", "calls", "{}"), edges: 1 });
    s.link(t, "b", "a", "back", attrs).await.unwrap();
    assert_eq!(s.remove_agent_edges(t, "a").await.unwrap(), 2);
    assert_eq!(usage().await, Usage { bytes: 2, edges: 0 });

    // Messages and dead letters count until deleted; registry records do not.
    let m = vec![b'm'; 100];
    s.record_put_within(RecordKind::Message, &format!("{t}/a/1"), m.clone(), Some(0), bytes(150)).await.unwrap();
    assert_eq!(usage().await.bytes, 102);
    assert!(matches!(
        s.record_put_within(RecordKind::Message, &format!("{t}/a/2"), m.clone(), Some(0), bytes(150)).await,
        Err(StoreError::QuotaExceeded(_))
    ));
    assert_eq!(s.record_get(RecordKind::Message, &format!("{t}/a/2")).await.unwrap(), None);
    s.record_put(RecordKind::DeadLetter, &format!("{t}/a/d1"), vec![b'd'; 10], None).await.unwrap();
    s.record_put(RecordKind::Agent, &format!("{t}/a"), vec![b'r'; 50], None).await.unwrap();
    assert_eq!(usage().await.bytes, 112);
    assert!(s.record_delete(RecordKind::Message, &format!("{t}/a/1")).await.unwrap());
    assert_eq!(s.record_delete_many(RecordKind::DeadLetter, &[format!("{t}/a/d1")]).await.unwrap(), 1);
    assert_eq!(usage().await.bytes, 2);
    s.purge_tenant_documents(t).await.unwrap();
    assert_eq!(usage().await, Usage::default());
}

/// Reads for a guest stop at a byte budget, with a cursor to continue.
pub async fn bounded_reads_stop_at_the_byte_budget(s: Arc<dyn Store>) {
    let s = &s;
    let a = Scope::new("budget-t", "agent");
    let value = format!("\"{}\"", "v".repeat(998)); // 1000 bytes
    for i in 0..10 {
        s.put(&a, "big", &format!("k{i}"), &value, None).await.unwrap();
    }
    // 3500 bytes: three documents of 1002 bytes (key and value) per page.
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let p = s.list_bounded(&a, "big", "", 1000, cursor.as_deref(), 3500).await.unwrap();
        assert!(!p.documents.is_empty() && p.documents.len() <= 3, "{}", p.documents.len());
        seen.extend(p.documents.iter().map(|d| d.key.clone()));
        pages += 1;
        match p.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (0..10).map(|i| format!("k{i}")).collect::<Vec<_>>(), "every document once, in order");
    assert_eq!(pages, 4);
    // A budget below one value still returns one (and a cursor), so a listing always moves.
    let p = s.list_bounded(&a, "big", "", 1000, None, 10).await.unwrap();
    assert_eq!((p.documents.len(), p.next.as_deref()), (1, Some("k0")));

    let t = "budget-t";
    let attrs = format!("\"{}\"", "a".repeat(500));
    for to in ["x1", "x2", "x3", "x4"] {
        s.link(t, "hub", to, "k", &attrs).await.unwrap();
    }
    s.link(t, "in1", "hub", "k", &attrs).await.unwrap();
    let n = |max| async move { s.neighbours_bounded(t, "hub", None, Direction::Both, 100, max).await.unwrap() };
    assert_eq!(n(usize::MAX).await.len(), 5);
    assert_eq!(n(1100).await.iter().map(|e| e.to.as_str()).collect::<Vec<_>>(), ["x1", "x2"]);
    assert_eq!(n(1).await.len(), 1, "the first edge always comes back");
}

/// Pruning an audit log deletes its oldest events up to a number, never the newest: what
/// stays is numbered on without gaps, and appends go on from the newest.
pub async fn audit_prune_deletes_an_old_prefix_and_never_the_newest(s: Arc<dyn Store>) {
    let s = &s;
    // A log of its own: the contract may run more than once on one store.
    let t = format!("prune-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let t = t.as_str();
    for e in [b"a", b"b", b"c"] {
        s.audit_append(e.to_vec(), Some(t)).await.unwrap();
    }
    let head = s.audit_list(None, 0, 100).await.unwrap().last().unwrap().0;
    assert_eq!(s.audit_prune(Some(t), 1).await.unwrap(), 1);
    assert_eq!(s.audit_list(Some(t), 0, 10).await.unwrap(), vec![(2, b"b".to_vec()), (3, b"c".to_vec())]);
    // Up to past the end: all but the newest.
    assert_eq!(s.audit_prune(Some(t), 99).await.unwrap(), 1);
    assert_eq!(s.audit_list(Some(t), 0, 10).await.unwrap(), vec![(3, b"c".to_vec())]);
    assert_eq!(s.audit_append(b"d".to_vec(), Some(t)).await.unwrap().1, Some(4));
    // The platform's log the same way, and the tenant's log is untouched by it.
    s.audit_prune(None, u64::MAX).await.unwrap();
    assert_eq!(s.audit_list(None, 0, 10).await.unwrap(), vec![(head + 1, b"d".to_vec())]);
    assert_eq!(s.audit_append(b"e".to_vec(), None).await.unwrap().0, head + 2);
    assert_eq!(s.audit_list(Some(t), 0, 10).await.unwrap().len(), 2);
    assert_eq!(s.audit_prune(Some("id-2"), 5).await.unwrap(), 0, "no such log");
}

/// The platform's audit log numbers every event; each tenant's own log numbers only its
/// events, from 1 and without gaps, so its numbers tell nothing of other tenants.
pub async fn audit_logs_number_their_events_densely(s: Arc<dyn Store>) {
    let s = &s;
    let (first, none) = s.audit_append(b"a".to_vec(), None).await.unwrap();
    assert_eq!(none, None);
    assert_eq!(s.audit_append(b"b".to_vec(), Some("id-1")).await.unwrap(), (first + 1, Some(1)));
    assert_eq!(s.audit_append(b"c".to_vec(), Some("id-2")).await.unwrap(), (first + 2, Some(1)));
    assert_eq!(s.audit_append(b"d".to_vec(), Some("id-1")).await.unwrap(), (first + 3, Some(2)));
    assert_eq!(
        s.audit_list(None, first, 10).await.unwrap(),
        vec![(first + 1, b"b".to_vec()), (first + 2, b"c".to_vec()), (first + 3, b"d".to_vec())]
    );
    assert_eq!(s.audit_list(Some("id-1"), 0, 10).await.unwrap(), vec![(1, b"b".to_vec()), (2, b"d".to_vec())]);
    assert_eq!(s.audit_list(Some("id-1"), 1, 10).await.unwrap(), vec![(2, b"d".to_vec())]);
    assert_eq!(s.audit_list(Some("id-1"), 0, 1).await.unwrap(), vec![(1, b"b".to_vec())]);
    assert_eq!(s.audit_list(Some("id-2"), 0, 10).await.unwrap(), vec![(1, b"c".to_vec())]);
    assert!(s.audit_list(Some("id-3"), 0, 10).await.unwrap().is_empty());
    assert!(s.audit_list(Some("id"), 0, 10).await.unwrap().is_empty(), "an id is not a prefix of another");
}

/// Every event of a tenant, checked to be numbered exactly 1..=N.
async fn all_events(s: &Arc<dyn Store>, tenant: &str) -> Vec<ChangeEvent> {
    let mut all: Vec<ChangeEvent> = Vec::new();
    loop {
        let since = all.last().map_or(0, |e| e.seq);
        let page = s.feed_since(tenant, since, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(s.feed_head(tenant).await.unwrap(), all.len() as u64);
    all
}

fn ev(seq: u64, collection: &str, key: &str, op: ChangeOp, revision: u64, agent: &str) -> ChangeEvent {
    ChangeEvent { seq, collection: collection.into(), key: key.into(), op, revision, agent: agent.into(), trace: None }
}

/// The change feed: one event per effective write, in the write's own atomic step.
pub async fn the_feed_records_each_effective_write_once(s: Arc<dyn Store>) {
    let s = &s;
    let a = Scope::new("feed-a", "writer");
    let b = Scope::new("feed-b", "other");
    assert_eq!(s.feed_head("feed-a").await.unwrap(), 0);
    assert!(s.feed_since("feed-a", 0, 10).await.unwrap().is_empty());

    assert_eq!(s.put(&a, "c", "k1", "1", Some(0)).await.unwrap(), 1);
    assert_eq!(s.put(&a, "c", "k1", "2", None).await.unwrap(), 2);
    // Refused or empty writes append nothing.
    assert!(matches!(s.put(&a, "c", "k1", "x", Some(1)).await, Err(StoreError::Conflict { current: 2 })));
    assert!(matches!(s.delete(&a, "c", "k1", Some(9)).await, Err(StoreError::Conflict { current: 2 })));
    assert!(!s.delete(&a, "c", "absent", None).await.unwrap());
    let rolled_back = [put_op("c", "k2", "1", Some(0)), put_op("c", "k1", "3", Some(7))];
    assert!(matches!(s.transact(&a, &rolled_back).await, Err(StoreError::Conflict { current: 2 })));
    assert_eq!(s.feed_head("feed-a").await.unwrap(), 2, "a failed CAS or a rolled-back transact appends nothing");
    // Each op of a transaction is one event, in op order.
    let ops = [
        put_op("c", "k2", "1", Some(0)),
        WriteOp::Delete { collection: "c".into(), key: "k1".into(), expected: Some(2) },
        WriteOp::Delete { collection: "c".into(), key: "absent".into(), expected: None },
        put_op("d", "k3", "{}", None),
    ];
    assert_eq!(s.transact(&a, &ops).await.unwrap(), vec![1, 0, 0, 1]);
    assert!(s.delete(&a, "c", "k2", Some(1)).await.unwrap());
    s.put(&b, "c", "k1", "\"b\"", None).await.unwrap();

    let want = vec![
        ev(1, "c", "k1", ChangeOp::Put, 1, "writer"),
        ev(2, "c", "k1", ChangeOp::Put, 2, "writer"),
        ev(3, "c", "k2", ChangeOp::Put, 1, "writer"),
        ev(4, "c", "k1", ChangeOp::Delete, 2, "writer"),
        ev(5, "d", "k3", ChangeOp::Put, 1, "writer"),
        ev(6, "c", "k2", ChangeOp::Delete, 1, "writer"),
    ];
    assert_eq!(s.feed_since("feed-a", 0, 100).await.unwrap(), want);
    assert_eq!(s.feed_head("feed-a").await.unwrap(), 6);
    // Paging.
    assert_eq!(s.feed_since("feed-a", 0, 4).await.unwrap(), want[..4]);
    assert_eq!(s.feed_since("feed-a", 4, 4).await.unwrap(), want[4..]);
    assert!(s.feed_since("feed-a", 6, 4).await.unwrap().is_empty());
    assert!(s.feed_since("feed-a", 60, 4).await.unwrap().is_empty());
    assert!(s.feed_since("feed-a", 0, 0).await.unwrap().is_empty());
    // Tenants have separate feeds, each numbered from 1.
    assert_eq!(s.feed_since("feed-b", 0, 100).await.unwrap(), vec![ev(1, "c", "k1", ChangeOp::Put, 1, "other")]);
    assert!(s.feed_since("feed-none", 0, 100).await.unwrap().is_empty());

    // Purging a tenant removes its feed; numbering starts again.
    s.purge_tenant_documents("feed-a").await.unwrap();
    assert_eq!(s.feed_head("feed-a").await.unwrap(), 0);
    assert!(s.feed_since("feed-a", 0, 100).await.unwrap().is_empty());
    assert_eq!(s.feed_head("feed-b").await.unwrap(), 1);
    s.put(&a, "c", "k1", "1", None).await.unwrap();
    assert_eq!(s.feed_since("feed-a", 0, 100).await.unwrap(), vec![ev(1, "c", "k1", ChangeOp::Put, 1, "writer")]);
}

/// Concurrent writers of one tenant: numbers 1..=N without gaps, each key's revisions in order.
pub async fn concurrent_writers_get_a_dense_feed(s: Arc<dyn Store>) {
    let s = &s;
    let mut tasks = Vec::new();
    for task in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let scope = Scope::new("feed-c", format!("w{task}"));
            for i in 0..10 {
                if i % 3 == 0 {
                    let ops = [put_op("c", "shared", "1", None), put_op("c", &format!("own{task}"), "1", None)];
                    s.transact(&scope, &ops).await.unwrap();
                } else {
                    s.put(&scope, "c", "shared", "1", None).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = all_events(s, "feed-c").await;
    assert_eq!(events.len(), 4 * (4 * 2 + 6));
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e.op, ChangeOp::Put);
        by_key.entry(&e.key).or_default().push(e.revision);
    }
    assert_eq!(by_key["shared"], (1..=40).collect::<Vec<u64>>(), "a key's events follow its revisions");
    for task in 0..4 {
        assert_eq!(by_key[format!("own{task}").as_str()], [1, 2, 3, 4]);
    }
    // A transaction's two events are adjacent and by the same writer.
    for pair in events.windows(2).filter(|w| w[1].key.starts_with("own")) {
        assert_eq!((pair[0].key.as_str(), &pair[0].agent), ("shared", &pair[1].agent));
    }
}

/// `wait_for` returns because of a write, and only a write of its own tenant.
pub async fn wait_for_wakes_on_a_write_of_its_own_tenant(s: Arc<dyn Store>) {
    let s = &s;
    let w = Scope::new("feed-w", "agent");
    assert_eq!(s.wait_for("feed-w", 0, Duration::from_millis(30)).await.unwrap(), 0, "times out with no write");
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for("feed-w", 0, Duration::from_secs(60)).await.unwrap() })
    };
    tokio::task::yield_now().await;
    let started = Instant::now();
    s.put(&w, "c", "k", "1", None).await.unwrap();
    // The 60 s timeout would return 0: 1 means the write ended the wait.
    assert_eq!(waiter.await.unwrap(), 1);
    assert!(started.elapsed() < Duration::from_secs(10), "woke after {:?}", started.elapsed());
    // An earlier write is seen at once.
    assert_eq!(s.wait_for("feed-w", 0, Duration::from_secs(60)).await.unwrap(), 1);
    // Another tenant's write does not end the wait: it times out with the head unchanged.
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for("feed-w", 1, Duration::from_millis(300)).await.unwrap() })
    };
    s.put(&Scope::new("feed-x", "agent"), "c", "k", "1", None).await.unwrap();
    assert_eq!(waiter.await.unwrap(), 1);
}

fn edge(from: &str, to: &str, kind: &str, attrs: &str) -> Edge {
    Edge { from: from.into(), to: to.into(), kind: kind.into(), attrs: attrs.into() }
}

/// Graph edges: link/unlink, neighbours by kind and direction, removal with an agent.
pub async fn graph_edges_link_list_and_go_with_their_agent(s: Arc<dyn Store>) {
    let s = &s;
    let t = "graph-a";
    let n = |agent: &'static str, kind: Option<&'static str>, dir: Direction, limit: usize| {
        let s = s.clone();
        async move { s.neighbours(t, agent, kind, dir, limit).await.unwrap() }
    };
    s.link(t, "a", "b", "calls", r#"{"w":1}"#).await.unwrap();
    s.link(t, "a", "c", "calls", "{}").await.unwrap();
    s.link(t, "a", "b", "feeds", "{}").await.unwrap();
    s.link(t, "c", "a", "calls", "{}").await.unwrap();
    s.link(t, "a", "a", "self", "{}").await.unwrap();
    s.link(t, "a", "b", "calls", r#"{"w":2}"#).await.unwrap(); // replaces
    s.link("graph-b", "a", "b", "calls", "{}").await.unwrap();

    let out = vec![
        edge("a", "b", "calls", r#"{"w":2}"#),
        edge("a", "c", "calls", "{}"),
        edge("a", "b", "feeds", "{}"),
        edge("a", "a", "self", "{}"),
    ];
    assert_eq!(n("a", None, Direction::Outgoing, 100).await, out, "sorted by kind, then the other agent");
    assert_eq!(n("a", Some("calls"), Direction::Outgoing, 100).await, out[..2]);
    assert_eq!(n("a", Some("call"), Direction::Outgoing, 100).await, []);
    assert_eq!(n("a", None, Direction::Outgoing, 3).await, out[..3]);
    assert_eq!(
        n("a", None, Direction::Incoming, 100).await,
        [edge("c", "a", "calls", "{}"), edge("a", "a", "self", "{}")]
    );
    let mut both = out.clone();
    both.push(edge("c", "a", "calls", "{}"));
    assert_eq!(n("a", None, Direction::Both, 100).await, both, "a self-loop is listed once");
    assert_eq!(n("a", None, Direction::Both, 5).await, both);
    assert_eq!(n("a", None, Direction::Both, 2).await, both[..2]);
    assert_eq!(n("a", Some("calls"), Direction::Both, 100).await, [out[0].clone(), out[1].clone(), both[4].clone()]);
    assert_eq!(n("b", None, Direction::Incoming, 100).await, [out[0].clone(), out[2].clone()]);
    assert_eq!(n("b", None, Direction::Outgoing, 100).await, []);
    assert_eq!(n("a", None, Direction::Both, 0).await, []);
    // Tenants never see each other's edges.
    assert_eq!(
        s.neighbours("graph-b", "a", None, Direction::Both, 100).await.unwrap(),
        [edge("a", "b", "calls", "{}")]
    );
    assert_eq!(s.neighbours("graph-c", "a", None, Direction::Both, 100).await.unwrap(), []);
    assert!(!s.unlink("graph-b", "a", "c", "calls").await.unwrap());

    assert!(s.unlink(t, "a", "b", "feeds").await.unwrap());
    assert!(!s.unlink(t, "a", "b", "feeds").await.unwrap());
    assert_eq!(n("b", None, Direction::Incoming, 100).await, [out[0].clone()]);

    // Removing an agent's edges takes both directions and the self-loop, once each.
    s.link(t, "b", "c", "calls", "{}").await.unwrap();
    assert_eq!(s.remove_agent_edges(t, "a").await.unwrap(), 4);
    assert_eq!(n("a", None, Direction::Both, 100).await, []);
    assert_eq!(n("c", None, Direction::Both, 100).await, [edge("b", "c", "calls", "{}")]);
    assert_eq!(s.remove_agent_edges(t, "a").await.unwrap(), 0);
    assert_eq!(s.neighbours("graph-b", "a", None, Direction::Outgoing, 100).await.unwrap().len(), 1);

    // Purging a tenant removes its edges.
    s.purge_tenant_documents("graph-b").await.unwrap();
    assert_eq!(s.neighbours("graph-b", "a", None, Direction::Both, 100).await.unwrap(), []);
    assert_eq!(n("b", None, Direction::Outgoing, 100).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_feed_and_edges_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let a = Scope::new("t", "agent");
    {
        let s: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        s.put(&a, "c", "k", "1", None).await.unwrap();
        s.transact(&a, &[put_op("c", "k", "2", Some(1)), put_op("c", "j", "1", None)]).await.unwrap();
        s.link("t", "x", "y", "calls", "{}").await.unwrap();
    }
    let s: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let events = all_events(&s, "t").await;
    assert_eq!(
        events,
        [
            ev(1, "c", "k", ChangeOp::Put, 1, "agent"),
            ev(2, "c", "k", ChangeOp::Put, 2, "agent"),
            ev(3, "c", "j", ChangeOp::Put, 1, "agent"),
        ]
    );
    // A reader resumes after its cursor, and numbering continues.
    s.delete(&a, "c", "j", None).await.unwrap();
    assert_eq!(s.feed_since("t", 3, 10).await.unwrap(), [ev(4, "c", "j", ChangeOp::Delete, 1, "agent")]);
    assert_eq!(s.neighbours("t", "y", None, Direction::Incoming, 10).await.unwrap(), [edge("x", "y", "calls", "{}")]);
}

/// The registry stream's events after `since`, checked to be numbered `since + 1..` without
/// gaps up to its head.
async fn registry_since(s: &Arc<dyn Store>, since: u64) -> Vec<ChangeEvent> {
    let mut all: Vec<ChangeEvent> = Vec::new();
    loop {
        let from = all.last().map_or(since, |e| e.seq);
        let page = s.feed_since(REGISTRY_FEED, from, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let n = all.len() as u64;
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (since + 1..=since + n).collect::<Vec<_>>());
    assert_eq!(s.feed_head(REGISTRY_FEED).await.unwrap(), since + n);
    all
}

/// A registry event without its number: (kind, key, op, revision), agent always empty.
fn reg(kind: RecordKind, key: &str, op: ChangeOp, revision: u64) -> (String, String, ChangeOp, u64) {
    (kind.as_str().to_owned(), key.to_owned(), op, revision)
}

fn unnumbered(events: &[ChangeEvent]) -> Vec<(String, String, ChangeOp, u64)> {
    for e in events {
        assert_eq!(e.agent, "", "registry events carry no agent: {e:?}");
    }
    events.iter().map(|e| (e.collection.clone(), e.key.clone(), e.op, e.revision)).collect()
}

fn rput(kind: RecordKind, key: &str, value: &[u8], expected: Option<u64>) -> RecordOp {
    RecordOp::Put { kind, key: key.into(), value: value.to_vec(), expected }
}

fn rdel(kind: RecordKind, key: &str, expected: Option<u64>) -> RecordOp {
    RecordOp::Delete { kind, key: key.into(), expected }
}

fn lease(epoch: u64) -> Vec<u8> {
    format!(r#"{{"epoch":{epoch},"holder":"node-{epoch}"}}"#).into_bytes()
}

/// Every write of a replicated kind (put, delete, delete_many, record_apply) appends one
/// event to the registry stream, in the write's atomic step: kind, key, op and revision
/// (the new one for a put, the removed one for a delete), numbered densely.
pub async fn replicated_record_writes_append_one_registry_event_each(s: Arc<dyn Store>) {
    use ChangeOp::{Delete, Put};
    use RecordKind::{Agent, ApiKey, Message, Module, Profile, Tenant};
    let s = &s;
    let h = s.feed_head(REGISTRY_FEED).await.unwrap();
    let mut want = Vec::new();

    assert_eq!(s.record_put(Tenant, "reg-one", b"{}".to_vec(), Some(0)).await.unwrap(), 1);
    assert_eq!(s.record_put(Tenant, "reg-one", b"{\"v\":2}".to_vec(), Some(1)).await.unwrap(), 2);
    want.extend([reg(Tenant, "reg-one", Put, 1), reg(Tenant, "reg-one", Put, 2)]);
    // A failed compare-and-swap and a delete of nothing append nothing.
    assert!(matches!(
        s.record_put(Tenant, "reg-one", b"{}".to_vec(), Some(1)).await,
        Err(StoreError::Conflict { current: 2 })
    ));
    assert!(!s.record_delete(Agent, "reg-one/absent").await.unwrap());
    assert_eq!(s.feed_head(REGISTRY_FEED).await.unwrap(), h + 2, "a refused write appended an event");

    // Every replicated kind, each under its own name.
    for kind in RecordKind::ALL.into_iter().filter(|k| k.is_replicated()) {
        s.record_put(kind, "reg-one/k", b"{}".to_vec(), Some(0)).await.unwrap();
        want.push(reg(kind, "reg-one/k", Put, 1));
    }
    assert!(s.record_delete(Agent, "reg-one/k").await.unwrap());
    want.push(reg(Agent, "reg-one/k", Delete, 1));
    s.record_put(Module, "reg-one/m1", b"{}".to_vec(), None).await.unwrap();
    s.record_put(Module, "reg-one/m1", b"{}".to_vec(), None).await.unwrap();
    s.record_put(Module, "reg-one/m2", b"{}".to_vec(), None).await.unwrap();
    want.extend([
        reg(Module, "reg-one/m1", Put, 1),
        reg(Module, "reg-one/m1", Put, 2),
        reg(Module, "reg-one/m2", Put, 1),
    ]);
    let keys = ["reg-one/m1", "reg-one/m9", "reg-one/m2"].map(String::from);
    assert_eq!(s.record_delete_many(Module, &keys).await.unwrap(), 2);
    want.extend([reg(Module, "reg-one/m1", Delete, 2), reg(Module, "reg-one/m2", Delete, 1)]);

    // record_apply: one event per effective op of a replicated kind, in op order.
    let ops = [
        rput(Profile, "reg-one/k", b"{}", Some(1)),
        rput(Message, "reg-one/a/1", b"{}", None),
        rdel(ApiKey, "reg-one/k", Some(1)),
        rdel(ApiKey, "reg-one/none", None),
        rput(Agent, "reg-one/k", b"{}", Some(0)),
    ];
    assert_eq!(s.record_apply(None, &ops, Quota::NONE).await.unwrap(), vec![2, 1, 1, 0, 1]);
    want.extend([
        reg(Profile, "reg-one/k", Put, 2),
        reg(ApiKey, "reg-one/k", Delete, 1),
        reg(Agent, "reg-one/k", Put, 1),
    ]);

    assert_eq!(unnumbered(&registry_since(s, h).await), want);
    // The stream pages like any feed, and is no tenant's feed.
    let page = s.feed_since(REGISTRY_FEED, h + 2, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [h + 3, h + 4, h + 5]);
    assert_eq!(s.feed_head("reg-one").await.unwrap(), 0);
}

/// Records of the other kinds (messages, cursors, leases, nodes, chunks, counters, logs...)
/// append nothing to the registry stream, however they are written.
pub async fn other_record_kinds_append_no_registry_event(s: Arc<dyn Store>) {
    let s = &s;
    let h = s.feed_head(REGISTRY_FEED).await.unwrap();
    let kinds: Vec<RecordKind> = RecordKind::ALL.into_iter().filter(|k| !k.is_replicated()).collect();
    assert!(kinds.contains(&RecordKind::Lease) && kinds.contains(&RecordKind::Message));
    for &kind in &kinds {
        let (k1, k2) = ("reg-none/a/1", "reg-none/a/2");
        assert_eq!(s.record_put(kind, k1, lease(1), Some(0)).await.unwrap(), 1);
        assert_eq!(s.record_put(kind, k1, lease(2), None).await.unwrap(), 2);
        s.record_put(kind, k2, b"{}".to_vec(), None).await.unwrap();
        assert!(s.record_delete(kind, k1).await.unwrap());
        assert_eq!(s.record_delete_many(kind, &[k2.to_owned()]).await.unwrap(), 1);
        let ops = [rput(kind, k1, b"{}", Some(0)), rdel(kind, k1, Some(1))];
        assert_eq!(s.record_apply(None, &ops, Quota::NONE).await.unwrap(), vec![1, 1]);
    }
    assert_eq!(s.feed_head(REGISTRY_FEED).await.unwrap(), h, "a non-replicated kind appended to the registry");
    assert!(s.feed_since(REGISTRY_FEED, h, 10).await.unwrap().is_empty());
    assert_eq!(s.usage("reg-none").await.unwrap(), Usage::default(), "metered records came and went");
}

/// `wait_for` on the registry stream returns because of a registry record write, and not
/// because of a write of another kind.
pub async fn wait_for_wakes_on_a_registry_record_write(s: Arc<dyn Store>) {
    let s = &s;
    let h = s.feed_head(REGISTRY_FEED).await.unwrap();
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for(REGISTRY_FEED, h, Duration::from_secs(60)).await.unwrap() })
    };
    tokio::task::yield_now().await;
    s.record_put(RecordKind::Agent, "reg-wait/a", b"{}".to_vec(), None).await.unwrap();
    // The 60 s timeout would return h: h + 1 means the write ended the wait.
    assert_eq!(waiter.await.unwrap(), h + 1);
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for(REGISTRY_FEED, h + 1, Duration::from_millis(300)).await.unwrap() })
    };
    s.record_put(RecordKind::Cursor, "reg-wait/a", b"{}".to_vec(), None).await.unwrap();
    assert_eq!(waiter.await.unwrap(), h + 1, "a cursor write is not a registry change");
}

/// `record_apply` applies every op or none (a compare-and-swap that fails aborts all,
/// appending nothing), and reports each op: a put's new revision, a delete's 1 or 0.
pub async fn record_apply_is_all_or_nothing_and_reports_each_op(s: Arc<dyn Store>) {
    use RecordKind::{Agent, Cursor};
    let s = &s;
    assert_eq!(s.record_put(Agent, "apply-t/a", b"1".to_vec(), Some(0)).await.unwrap(), 1);
    let h = s.feed_head(REGISTRY_FEED).await.unwrap();
    let bad = [
        rput(Agent, "apply-t/b", b"1", Some(0)),
        rput(Cursor, "apply-t/b", b"1", None),
        rdel(Agent, "apply-t/a", Some(1)),
        rput(Agent, "apply-t/a", b"2", Some(5)),
    ];
    assert!(matches!(s.record_apply(None, &bad, Quota::NONE).await, Err(StoreError::Conflict { current: 0 })));
    let bad = [rput(Agent, "apply-t/b", b"1", Some(0)), rdel(Agent, "apply-t/none", Some(3))];
    assert!(matches!(s.record_apply(None, &bad, Quota::NONE).await, Err(StoreError::Conflict { current: 0 })));
    assert_eq!(s.record_get(Agent, "apply-t/b").await.unwrap(), None, "nothing of a refused apply is written");
    assert_eq!(s.record_get(Cursor, "apply-t/b").await.unwrap(), None);
    assert_eq!(s.record_get(Agent, "apply-t/a").await.unwrap(), Some((b"1".to_vec(), 1)));
    assert_eq!(s.feed_head(REGISTRY_FEED).await.unwrap(), h, "a refused apply appended an event");

    let good = [
        rput(Agent, "apply-t/b", b"1", Some(0)),
        rput(Agent, "apply-t/b", b"2", Some(1)),
        rdel(Agent, "apply-t/a", Some(1)),
        rdel(Agent, "apply-t/none", None),
        rdel(Agent, "apply-t/none", Some(0)),
        rput(Cursor, "apply-t/b", b"c", None),
    ];
    assert_eq!(s.record_apply(None, &good, Quota::NONE).await.unwrap(), vec![1, 2, 1, 0, 0, 1]);
    assert_eq!(s.record_get(Agent, "apply-t/b").await.unwrap(), Some((b"2".to_vec(), 2)));
    assert_eq!(s.record_get(Agent, "apply-t/a").await.unwrap(), None);
    assert_eq!(s.record_get(Cursor, "apply-t/b").await.unwrap(), Some((b"c".to_vec(), 1)));
    assert_eq!(
        unnumbered(&registry_since(s, h).await),
        [
            reg(Agent, "apply-t/b", ChangeOp::Put, 1),
            reg(Agent, "apply-t/b", ChangeOp::Put, 2),
            reg(Agent, "apply-t/a", ChangeOp::Delete, 1),
        ]
    );
    assert_eq!(s.record_apply(None, &[], Quota::NONE).await.unwrap(), Vec::<u64>::new());
}

/// A fenced `record_apply` writes only while the lease holds the fence's epoch: an older
/// or newer epoch, a missing lease or epoch 0 is `Fenced` with nothing written; once the
/// lease moves on, the old epoch is refused. The lease's own revision is not moved by the
/// writes it fences, and a fenced apply may write the lease itself (a release).
pub async fn record_apply_with_a_fence_applies_only_at_the_held_epoch(s: Arc<dyn Store>) {
    use RecordKind::{Agent, Cursor, Lease};
    let s = &s;
    let key = "watch/fence-t/a";
    let fence = |epoch| Fence { key: key.into(), epoch };
    assert_eq!(s.record_put(Lease, key, lease(3), Some(0)).await.unwrap(), 1);
    let ops = |v: &[u8]| [rput(Cursor, "fence-t/a", v, None), rput(Agent, "fence-t/a", v, None)];
    assert_eq!(s.record_apply(Some(&fence(3)), &ops(b"1"), Quota::NONE).await.unwrap(), vec![1, 1]);
    let h = s.feed_head(REGISTRY_FEED).await.unwrap();

    let fenced = |r: Result<Vec<u64>, StoreError>| match r {
        Err(StoreError::Fenced { key, held, carried }) => (key, held, carried),
        other => panic!("not fenced: {other:?}"),
    };
    for epoch in [2, 4] {
        let r = s.record_apply(Some(&fence(epoch)), &ops(b"x"), Quota::NONE).await;
        assert_eq!(fenced(r), (key.to_owned(), 3, epoch));
    }
    let absent = Fence { key: "watch/fence-t/none".into(), epoch: 1 };
    let r = s.record_apply(Some(&absent), &ops(b"x"), Quota::NONE).await;
    assert_eq!(fenced(r), ("watch/fence-t/none".to_owned(), 0, 1));
    // A lease without an epoch (or unreadable) holds epoch 0, which fences everything.
    s.record_put(Lease, "watch/fence-t/zero", b"{}".to_vec(), Some(0)).await.unwrap();
    let zero = Fence { key: "watch/fence-t/zero".into(), epoch: 0 };
    assert_eq!(fenced(s.record_apply(Some(&zero), &ops(b"x"), Quota::NONE).await).1, 0);
    assert_eq!(s.record_get(Cursor, "fence-t/a").await.unwrap(), Some((b"1".to_vec(), 1)), "fenced writes wrote");
    assert_eq!(s.feed_head(REGISTRY_FEED).await.unwrap(), h, "fenced writes appended");

    // The lease passes to epoch 4 (its revision is still 1: fenced writes do not move it).
    assert_eq!(s.record_get(Lease, key).await.unwrap(), Some((lease(3), 1)));
    assert_eq!(s.record_put(Lease, key, lease(4), Some(1)).await.unwrap(), 2);
    assert_eq!(fenced(s.record_apply(Some(&fence(3)), &ops(b"x"), Quota::NONE).await), (key.to_owned(), 4, 3));
    assert_eq!(s.record_apply(Some(&fence(4)), &ops(b"2"), Quota::NONE).await.unwrap(), vec![2, 2]);
    assert_eq!(s.record_get(Cursor, "fence-t/a").await.unwrap(), Some((b"2".to_vec(), 2)));
    assert_eq!(unnumbered(&registry_since(s, h).await), [reg(Agent, "fence-t/a", ChangeOp::Put, 2)]);

    // The holder releases the lease under its own fence; then nothing passes the fence.
    let release = [rdel(Lease, key, Some(2)), rput(Cursor, "fence-t/a", b"3", Some(2))];
    assert_eq!(s.record_apply(Some(&fence(4)), &release, Quota::NONE).await.unwrap(), vec![1, 3]);
    assert_eq!(fenced(s.record_apply(Some(&fence(4)), &ops(b"x"), Quota::NONE).await), (key.to_owned(), 0, 4));
}

/// Records of a metered kind written by `record_apply` count in their tenant's usage, and
/// an apply that would take a tenant past its quota is refused with nothing written.
pub async fn record_apply_meters_metered_kinds_within_the_quota(s: Arc<dyn Store>) {
    use RecordKind::{Agent, DeadLetter, Message};
    let s = &s;
    let t = "apply-quota";
    let bytes = |n| Quota { bytes: Some(n), edges: None };
    let ops = [
        rput(Message, &format!("{t}/a/1"), &[b'm'; 100], Some(0)),
        rput(DeadLetter, &format!("{t}/a/d"), &[b'd'; 10], None),
        rput(Agent, &format!("{t}/a"), &[b'r'; 50], None),
    ];
    assert_eq!(s.record_apply(None, &ops, bytes(150)).await.unwrap(), vec![1, 1, 1]);
    assert_eq!(s.usage(t).await.unwrap().bytes, 110, "messages and dead letters count, agents do not");
    let h = s.feed_head(REGISTRY_FEED).await.unwrap();

    let over = [rput(Agent, &format!("{t}/b"), b"{}", None), rput(Message, &format!("{t}/a/2"), &[b'm'; 50], None)];
    assert!(matches!(s.record_apply(None, &over, bytes(150)).await, Err(StoreError::QuotaExceeded(_))));
    assert_eq!(s.record_get(Message, &format!("{t}/a/2")).await.unwrap(), None);
    assert_eq!(s.record_get(Agent, &format!("{t}/b")).await.unwrap(), None, "the refused apply wrote nothing");
    assert_eq!(s.usage(t).await.unwrap().bytes, 110);
    assert_eq!(s.feed_head(REGISTRY_FEED).await.unwrap(), h);

    // Freeing room first in the same apply lets it through.
    let swap = [rdel(Message, &format!("{t}/a/1"), Some(1)), rput(Message, &format!("{t}/a/2"), &[b'm'; 50], None)];
    assert_eq!(s.record_apply(None, &swap, bytes(100)).await.unwrap(), vec![1, 1]);
    assert_eq!(s.usage(t).await.unwrap().bytes, 60);
    // Another tenant's records count for that tenant.
    let other = [rput(Message, "apply-quota-2/a/1", &[b'm'; 7], None)];
    s.record_apply(None, &other, bytes(100)).await.unwrap();
    assert_eq!((s.usage(t).await.unwrap().bytes, s.usage("apply-quota-2").await.unwrap().bytes), (60, 7));
}

/// A document put in a `record_apply` (a workflow run and its summary) commits with the
/// records or not at all: a refused apply writes neither the document nor its change
/// event nor its usage; an applied one writes the document (its revision in the answer),
/// appends its event to the tenant's feed (waking a waiter there), counts its bytes, and
/// appends nothing to the registry stream for a kind that is not replicated.
pub async fn record_apply_writes_a_document_with_the_records_or_neither(s: Arc<dyn Store>) {
    use RecordKind::WorkflowRun;
    let s = &s;
    let t = "apply-doc";
    let scope = Scope::new(t, "~w");
    let doc = |value: &str| RecordOp::PutDocument {
        scope: scope.clone(),
        collection: "runs".into(),
        key: "r1".into(),
        value: value.into(),
    };
    let (h, reg) = (s.feed_head(t).await.unwrap(), s.feed_head(REGISTRY_FEED).await.unwrap());
    let bad = [rput(WorkflowRun, &format!("{t}/run/r1"), b"{}", Some(7)), doc("1")];
    assert!(matches!(s.record_apply(None, &bad, Quota::NONE).await, Err(StoreError::Conflict { current: 0 })));
    assert_eq!(s.get(&scope, "runs", "r1").await.unwrap(), None, "a refused apply wrote the document");
    assert_eq!((s.feed_head(t).await.unwrap(), s.usage(t).await.unwrap().bytes), (h, 0));

    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for(t, h, Duration::from_secs(60)).await.unwrap() })
    };
    tokio::task::yield_now().await;
    let good = [rput(WorkflowRun, &format!("{t}/run/r1"), b"{}", Some(0)), doc("1"), doc("[2]")];
    assert_eq!(s.record_apply(None, &good, Quota::NONE).await.unwrap(), vec![1, 1, 2]);
    // The 60 s timeout would return h: more means the apply ended the wait.
    assert!(waiter.await.unwrap() > h);
    let d = s.get(&scope, "runs", "r1").await.unwrap().unwrap();
    assert_eq!((d.value.as_str(), d.revision), ("[2]", 2));
    let events: Vec<_> = s.feed_since(t, h, 10).await.unwrap();
    let got: Vec<_> = events.iter().map(|e| (e.collection.as_str(), e.key.as_str(), e.op, e.revision)).collect();
    assert_eq!(got, [("runs", "r1", ChangeOp::Put, 1), ("runs", "r1", ChangeOp::Put, 2)]);
    assert!(events.iter().all(|e| e.agent == "~w"), "{events:?}");
    assert_eq!(s.usage(t).await.unwrap().bytes, 3, "the document's bytes count");
    assert_eq!(s.feed_head(REGISTRY_FEED).await.unwrap(), reg, "a run record is not replicated");
}

/// Registry writes from two store values over one backend (two processes) at once: one
/// stream, numbered densely in commit order, each key's events in revision order, read
/// the same through either value.
pub async fn registry_writes_of_two_store_values_get_one_dense_stream(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    use RecordKind::{Agent, Profile};
    let h = a.feed_head(REGISTRY_FEED).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..4 {
        let s = if task % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let own = format!("reg-twin/own{task}");
            for i in 0..6 {
                match i % 3 {
                    0 => {
                        let ops = [rput(Agent, "reg-twin/shared", b"{}", None), rput(Profile, &own, b"{}", None)];
                        s.record_apply(None, &ops, Quota::NONE).await.unwrap();
                    }
                    1 => {
                        s.record_put(Agent, "reg-twin/shared", b"{}".to_vec(), None).await.unwrap();
                    }
                    _ => {
                        s.record_put(Profile, &own, b"{}".to_vec(), None).await.unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = registry_since(&a, h).await;
    assert_eq!(events.len(), 4 * 8);
    assert_eq!(b.feed_since(REGISTRY_FEED, h, 100).await.unwrap(), events, "both values read one stream");
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e.op, ChangeOp::Put);
        by_key.entry(&e.key).or_default().push(e.revision);
    }
    assert_eq!(by_key["reg-twin/shared"], (1..=16).collect::<Vec<u64>>(), "a key's events follow its revisions");
    for task in 0..4 {
        assert_eq!(by_key[format!("reg-twin/own{task}").as_str()], [1, 2, 3, 4]);
    }
    // An apply's two events are adjacent: each task's own revisions 1 and 3 came with a
    // write of the shared key.
    for pair in events.windows(2).filter(|w| w[1].collection == "profile" && w[1].revision % 2 == 1) {
        assert_eq!(pair[0].key, "reg-twin/shared", "{:?} before {:?}", pair[0], pair[1]);
    }
}

/// A node writing under a fence (`a`) while another node takes the lease over (`b`, the
/// epoch after, with a marker in the same apply): every fenced write that committed comes
/// before the takeover in the registry stream, and after it the writer is fenced.
pub async fn a_lease_takeover_and_a_fenced_write_never_both_commit(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    use RecordKind::{Lease, Profile};
    let key = "watch/race-t/a";
    assert_eq!(a.record_put(Lease, key, lease(1), Some(0)).await.unwrap(), 1);
    let h = a.feed_head(REGISTRY_FEED).await.unwrap();
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            let fence = Fence { key: key.into(), epoch: 1 };
            let mut wrote = 0u64;
            loop {
                match a.record_apply(Some(&fence), &[rput(Profile, "race-t/w", b"{}", None)], Quota::NONE).await {
                    Ok(_) => wrote += 1,
                    Err(StoreError::Fenced { held: 2, carried: 1, .. }) => return wrote,
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    // Take over once the writer is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.record_get(Profile, "race-t/w").await.unwrap().is_none_or(|(_, rev)| rev < 3) {
        assert!(Instant::now() < deadline, "the fenced writer never wrote");
        tokio::task::yield_now().await;
    }
    let takeover = [rput(Lease, key, &lease(2), Some(1)), rput(Profile, "race-t/marker", b"{}", Some(0))];
    assert_eq!(b.record_apply(None, &takeover, Quota::NONE).await.unwrap(), vec![2, 1]);
    let wrote = writer.await.unwrap();

    let events = registry_since(&a, h).await;
    let marker = events.iter().position(|e| e.key == "race-t/marker").unwrap();
    let writes: Vec<usize> = (0..events.len()).filter(|&i| events[i].key == "race-t/w").collect();
    assert_eq!(writes.len() as u64, wrote, "one event per fenced write that committed");
    assert!(writes.iter().all(|&i| i < marker), "a fenced write committed after the takeover: {events:?}");
    assert_eq!(a.record_get(Profile, "race-t/w").await.unwrap().map(|(_, rev)| rev), Some(wrote));
}
