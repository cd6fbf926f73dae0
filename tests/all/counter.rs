//! The counter agent stays exact under concurrent invocations (compare-and-swap with retry).

use std::collections::BTreeSet;
use std::sync::Arc;

use cortex_artifacts as art;

use crate::common::{Sandbox, limits, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_200_invocations_from_8_tasks_end_at_200() {
    let sb = Arc::new(Sandbox::new());
    let m = sb.load(art::COUNTER).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (sb, m) = (sb.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..25 {
                let r = sb.invoke(&m, "hits", &limits()).await;
                seen.push(text(&r).parse::<u64>().unwrap());
            }
            seen
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for v in t.await.unwrap() {
            assert!(all.insert(v), "value {v} was returned twice: a lost update");
        }
    }
    // Every invocation saw a distinct value, and together they are exactly 1..=200.
    assert_eq!(all, (1..=200).collect::<BTreeSet<u64>>());
    let r = sb.invoke(&m, "hits", &limits()).await;
    assert_eq!(text(&r), "201");
}
