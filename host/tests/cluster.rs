//! Several `cortex serve` processes sharing one store (the `fake-arangodb` stand-in for
//! ArangoDB): what a platform sees through any node, and nodes killed and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_created_through_one_node_is_read_through_another_and_survives_a_kill() {
    let cluster = Cluster::start();
    let n1 = cluster.node("n1").await;
    let mut n2 = cluster.node("n2").await;
    let admin = cluster.token(None, "platform-admin");
    let client = reqwest::Client::new();

    let r = client.post(n1.url("/v1/tenants")).bearer_auth(&admin).json(&json!({"name": "acme"})).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let get = |node: &cluster::Node| client.get(node.url("/v1/tenants/acme")).bearer_auth(&admin).send();
    let r = get(&n2).await.unwrap();
    assert_eq!(r.status(), 200, "one token and one store on every node");
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "acme");

    let before = n2.pid();
    n2.kill9();
    assert!(get(&n2).await.is_err(), "a killed node answers nothing");
    n2.restart().await;
    assert_ne!(n2.pid(), before);
    let r = get(&n2).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "acme");
    assert_eq!(get(&n1).await.unwrap().status(), 200, "the other node was not disturbed");
}
