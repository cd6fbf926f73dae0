//! One contract every storage backend must pass. Runs on the embedded store always; new
//! backends add one `#[tokio::test]` calling [`contract`] with their constructor.

use std::sync::Arc;

use cortex_host::store::{EmbeddedStore, RecordKind, Scope, Store, StoreError, WriteOp};

fn put_op(c: &str, k: &str, v: &str, expected: Option<u64>) -> WriteOp {
    WriteOp::Put { collection: c.into(), key: k.into(), value: v.into(), expected }
}

/// The whole contract, against a fresh, empty store.
pub async fn contract(s: Arc<dyn Store>) {
    let a = Scope::new("tenant-a", "agent");
    let b = Scope::new("tenant-b", "agent");

    // Revisions start at 1 and bump by one; CAS with 0 means "must not exist".
    assert_eq!(s.put(&a, "c", "k", "1", Some(0)).await.unwrap(), 1);
    assert!(matches!(s.put(&a, "c", "k", "2", Some(0)).await, Err(StoreError::Conflict { current: 1 })));
    assert_eq!(s.put(&a, "c", "k", "2", None).await.unwrap(), 2);
    assert!(matches!(s.put(&a, "c", "k", "3", Some(1)).await, Err(StoreError::Conflict { current: 2 })));
    let d = s.get(&a, "c", "k").await.unwrap().unwrap();
    assert_eq!((d.value.as_str(), d.revision), ("2", 2));

    // Tenants are disjoint, also for listing and deletes.
    assert_eq!(s.get(&b, "c", "k").await.unwrap(), None);
    assert!(!s.delete(&b, "c", "k", None).await.unwrap());
    assert!(s.list(&b, "c", "", 100, None).await.unwrap().documents.is_empty());

    // Delete with CAS.
    assert!(matches!(s.delete(&a, "c", "k", Some(1)).await, Err(StoreError::Conflict { current: 2 })));
    assert!(s.delete(&a, "c", "k", Some(2)).await.unwrap());
    assert_eq!(s.get(&a, "c", "k").await.unwrap(), None);

    // Listing: prefix, order, limit, cursor; other collections excluded.
    for k in ["p/3", "p/1", "p/2", "q/1"] {
        s.put(&a, "list", k, "0", None).await.unwrap();
    }
    s.put(&a, "other", "p/9", "0", None).await.unwrap();
    let p1 = s.list(&a, "list", "p/", 2, None).await.unwrap();
    assert_eq!(p1.documents.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["p/1", "p/2"]);
    let p2 = s.list(&a, "list", "p/", 2, p1.next.as_deref()).await.unwrap();
    assert_eq!(p2.documents.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["p/3"]);
    assert_eq!(p2.next, None);

    // Transactions: all or nothing, revisions per op.
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

    // Usage accounting and purge of one tenant.
    s.put(&b, "c", "k", "12345", None).await.unwrap();
    assert_eq!(s.stored_bytes("tenant-b").await.unwrap(), 5);
    assert!(s.purge_tenant_documents("tenant-a").await.unwrap() >= 4);
    assert!(s.list(&a, "list", "", 100, None).await.unwrap().documents.is_empty());
    assert_eq!(s.get(&b, "c", "k").await.unwrap().unwrap().value, "12345");

    // Registry records and the audit log.
    assert_eq!(s.record_put(RecordKind::Tenant, "t1", b"{}".to_vec(), Some(0)).await.unwrap(), 1);
    assert!(matches!(
        s.record_put(RecordKind::Tenant, "t1", b"{}".to_vec(), Some(0)).await,
        Err(StoreError::Conflict { current: 1 })
    ));
    assert_eq!(s.record_get(RecordKind::Agent, "t1").await.unwrap(), None, "kinds are separate key spaces");
    let first = s.audit_append(b"a".to_vec()).await.unwrap();
    let second = s.audit_append(b"b".to_vec()).await.unwrap();
    assert_eq!(second, first + 1);
    assert_eq!(s.audit_list(first, 10).await.unwrap(), vec![(second, b"b".to_vec())]);

    // Concurrent CAS increments: the final value equals the number of successful swaps.
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
}
