//! The graph import from a real guest, through the HTTP API (both ends must be deployed agents).

use cortex_artifacts as art;
use cortex_host::api::Role;
use serde_json::json;

use crate::server::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_link_query_traverse_and_unlink() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let g = s.upload(&dev, art::GRAPH).await;
    let hello = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "g", &g, json!({})).await;
    for a in ["a", "b", "c", "d"] {
        s.deploy(&dev, a, &hello, json!({})).await;
    }
    for edge in [r#"a>b:knows={"since":2024}"#, "b>c:knows", "c>d:knows", "a>c:owns"] {
        assert_eq!(s.invoke_ok(&dev, "g", &format!("link:{edge}")).await, "linked");
    }
    assert_eq!(s.invoke_ok(&dev, "g", "out:a").await, r#"["a>b:knows","a>c:owns"]"#);
    assert_eq!(s.invoke_ok(&dev, "g", "out:a:knows").await, r#"["a>b:knows"]"#);
    assert_eq!(s.invoke_ok(&dev, "g", "in:c").await, r#"["b>c:knows","a>c:owns"]"#);
    assert_eq!(s.invoke_ok(&dev, "g", "traverse:a:1").await, r#"["b","c"]"#);
    assert_eq!(s.invoke_ok(&dev, "g", "traverse:a:3").await, r#"["b","c","d"]"#);

    // Unknown agents and bad attributes are typed errors the guest sees.
    let r = s.invoke_ok(&dev, "g", "link:a>ghost:knows").await;
    assert!(r.starts_with("error:graph-unknown-agent:"), "{r}");
    let r = s.invoke_ok(&dev, "g", "link:a>b:knows={not json").await;
    assert!(r.starts_with("error:graph-invalid-argument:"), "{r}");
    // An end that is no agent name (the API's rule: no such agent can be deployed) is an
    // invalid argument naming the rule, on every call that takes one; a kind keeps its own
    // rule (`_` allowed).
    for cmd in ["link:a>B:knows", "link:_a>b:knows", "unlink:a>9b:knows", "out:a_b", "traverse:A:2"] {
        let r = s.invoke_ok(&dev, "g", cmd).await;
        assert!(r.starts_with("error:graph-invalid-argument:"), "{cmd}: {r}");
        assert!(r.contains("agent name") && r.contains("[a-z][a-z0-9-]{0,62}"), "{cmd}: {r}");
    }
    assert_eq!(s.invoke_ok(&dev, "g", "link:a>d:works_with").await, "linked");
    assert_eq!(s.invoke_ok(&dev, "g", "unlink:a>d:works_with").await, "true");

    assert_eq!(s.invoke_ok(&dev, "g", "unlink:a>c:owns").await, "true");
    assert_eq!(s.invoke_ok(&dev, "g", "unlink:a>c:owns").await, "false");
    assert_eq!(s.invoke_ok(&dev, "g", "out:a").await, r#"["a>b:knows"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_link_or_see_another_tenants_agents() {
    let s = Server::start().await;
    s.tenant("alpha").await;
    s.tenant("beta").await;
    let a = s.token(Some("alpha"), Role::Developer);
    let b = s.token(Some("beta"), Role::Developer);
    let (ga, gb) = (s.upload(&a, art::GRAPH).await, s.upload(&b, art::GRAPH).await);
    let (ha, hb) = (s.upload(&a, art::HELLO).await, s.upload(&b, art::HELLO).await);
    s.deploy(&a, "g", &ga, json!({})).await;
    s.deploy(&b, "g", &gb, json!({})).await;
    s.deploy(&a, "x", &ha, json!({})).await;
    s.deploy(&a, "y", &ha, json!({})).await;
    s.deploy(&b, "z", &hb, json!({})).await;
    assert_eq!(s.invoke_ok(&a, "g", "link:x>y:knows").await, "linked");
    // Beta's agent names alpha's agents: they do not exist in beta.
    let r = s.invoke_ok(&b, "g", "link:z>x:knows").await;
    assert!(r.starts_with("error:graph-unknown-agent:"), "{r}");
    assert_eq!(s.invoke_ok(&b, "g", "out:x").await, "[]");
    assert_eq!(s.invoke_ok(&b, "g", "in:y").await, "[]");
    assert_eq!(s.invoke_ok(&a, "g", "out:x").await, r#"["x>y:knows"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_removes_its_edges() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let g = s.upload(&dev, art::GRAPH).await;
    let hello = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "g", &g, json!({})).await;
    s.deploy(&dev, "a", &hello, json!({})).await;
    s.deploy(&dev, "b", &hello, json!({})).await;
    assert_eq!(s.invoke_ok(&dev, "g", "link:a>b:knows").await, "linked");
    assert_eq!(s.invoke_ok(&dev, "g", "link:b>a:knows").await, "linked");
    let r = s.req(reqwest::Method::DELETE, "/v1/agents/b", &dev).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.invoke_ok(&dev, "g", "both:a").await, "[]");
    // A new agent of the same name starts without edges.
    s.deploy(&dev, "b", &hello, json!({})).await;
    assert_eq!(s.invoke_ok(&dev, "g", "in:b").await, "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_links_the_new_agent_and_a_failed_deploy_leaves_no_edge() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let g = s.upload(&dev, art::GRAPH).await;
    let hello = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "x", &hello, json!({})).await;
    // On its first deploy the agent is not registered yet when `init` runs, and can still
    // link itself.
    s.deploy(&dev, "g", &g, json!({ "link_on_init": "x:feeds" })).await;
    assert_eq!(s.invoke_ok(&dev, "g", "in:x").await, r#"["g>x:feeds"]"#);
    // What `init` logged is in the agent's log ring.
    let logs = s.get_json(&dev, "/v1/agents/g/logs").await;
    assert!(logs.as_array().unwrap().iter().any(|l| l["message"] == "init linked x:feeds"), "{logs}");
    // A deploy whose `init` fails after linking is not deployed, and neither is its edge.
    let r = s
        .req(reqwest::Method::POST, "/v1/agents", &dev)
        .json(&json!({ "name": "g2", "module": g, "config": { "link_on_init": "x:feeds", "fail_after_link": "yes" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{}", r.text().await.unwrap());
    assert_eq!(s.invoke_ok(&dev, "g", "in:x").await, r#"["g>x:feeds"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_count_against_the_storage_quota_and_the_edge_cap() {
    let s = Server::start().await;
    let quotas = cortex_host::registry::Quotas { stored_bytes: 4_000, edges: 2, ..Default::default() };
    s.tenant_with("acme", Some(quotas)).await;
    let dev = s.token(Some("acme"), Role::Developer);
    let g = s.upload(&dev, art::GRAPH).await;
    let hello = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "g", &g, json!({})).await;
    for a in ["a", "b", "c"] {
        s.deploy(&dev, a, &hello, json!({})).await;
    }
    // Attributes past the storage quota are refused, and nothing is linked.
    let big = format!(r#"link:a>b:knows={{"pad":"{}"}}"#, "x".repeat(5_000));
    let r = s.invoke_ok(&dev, "g", &big).await;
    assert!(r.starts_with("error:graph-too-large:") && r.contains("quota"), "{r}");
    assert_eq!(s.invoke_ok(&dev, "g", "out:a").await, "[]");
    // The edge cap: two edges, not three; replacing one is not a new edge.
    assert_eq!(s.invoke_ok(&dev, "g", "link:a>b:knows").await, "linked");
    assert_eq!(s.invoke_ok(&dev, "g", "link:a>c:knows").await, "linked");
    let r = s.invoke_ok(&dev, "g", "link:b>c:knows").await;
    assert!(r.starts_with("error:graph-too-large:"), "{r}");
    assert_eq!(s.invoke_ok(&dev, "g", r#"link:a>c:knows={"w":1}"#).await, "linked");
    let used = s.state.registry.store().usage("acme").await.unwrap();
    assert_eq!(used.edges, 2);
    // Unlinking frees the place.
    assert_eq!(s.invoke_ok(&dev, "g", "unlink:a>b:knows").await, "true");
    assert_eq!(s.invoke_ok(&dev, "g", "link:b>c:knows").await, "linked");
}
