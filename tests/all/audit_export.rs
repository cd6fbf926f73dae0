//! The audit log as JSON lines (`GET /v1/audit/export`), and its retention.

use std::time::Duration;

use cortex_host::api::Role;
use cortex_host::registry::{AuditEvent, now_ms};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::Server;

/// The export's lines, after checking the media type.
async fn export(s: &Server, token: &str, query: &str) -> Vec<Value> {
    let r = s.req(Method::GET, &format!("/v1/audit/export{query}"), token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn seqs(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect()
}

fn event(tenant: &str, tenant_id: &str, time_ms: u64, i: usize) -> AuditEvent {
    AuditEvent {
        seq: 0,
        time_ms,
        actor: format!("actor-{i}"),
        tenant: tenant.into(),
        tenant_id: tenant_id.into(),
        action: "POST /v1/keys".into(),
        target: "/v1/keys".into(),
        outcome: 201,
        detail: String::new(),
    }
}

async fn tenant_id(s: &Server, name: &str) -> String {
    let t: Value =
        s.req(Method::GET, &format!("/v1/tenants/{name}"), &s.admin()).send().await.unwrap().json().await.unwrap();
    t["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_streams_every_event_as_json_lines_within_the_callers_scope() {
    let s = Server::start().await;
    s.tenant("acme").await;
    s.tenant("beta").await;
    let (acme, beta) = (s.token(Some("acme"), Role::TenantAdmin), s.token(Some("beta"), Role::TenantAdmin));
    for (token, n) in [(&acme, 2), (&beta, 1)] {
        for _ in 0..n {
            let r = s.req(Method::POST, "/v1/keys", token).json(&json!({"role": "observer"})).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    }
    // Many events: the export reads them in batches and streams them all.
    let acme_id = tenant_id(&s, "acme").await;
    for i in 0..1200 {
        s.state.registry.audit(&event("acme", &acme_id, now_ms(), i)).await.unwrap();
    }
    let all = export(&s, &s.admin(), "").await;
    assert_eq!(seqs(&all), (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(all.len(), 2 + 3 + 1200, "two tenants created, three keys, the events appended");
    // The same events the list gives.
    let listed: Vec<Value> =
        s.req(Method::GET, "/v1/audit?limit=5", &s.admin()).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed[..], all[..5]);
    // Resume after `since`; a platform-admin may narrow to one tenant.
    assert_eq!(seqs(&export(&s, &s.admin(), "?since=1200").await), (1201..=1205).collect::<Vec<_>>());
    let only_beta = export(&s, &s.admin(), "?tenant=beta").await;
    assert_eq!(only_beta.len(), 1);
    assert!(only_beta.iter().all(|e| e["tenant"] == "beta"));

    // A tenant-admin exports its tenant's own log, numbered for it.
    let own = export(&s, &acme, "").await;
    assert_eq!(own.len(), 2 + 1200);
    assert!(own.iter().all(|e| e["tenant"] == "acme"), "another tenant's event in acme's export");
    assert_eq!(seqs(&own), (1..=own.len() as u64).collect::<Vec<_>>());
    // Even when it names another tenant.
    assert!(export(&s, &acme, "?tenant=beta").await.iter().all(|e| e["tenant"] == "acme"));
    // Roles below tenant-admin may not.
    let dev = s.token(Some("acme"), Role::Developer);
    let r = s.req(Method::GET, "/v1/audit/export", &dev).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_the_oldest_events_and_leaves_no_gap() {
    let s = Server::start_with(|c| {
        c.audit.retention_days = 30;
        c.audit.prune_interval_ms = 50;
    })
    .await;
    let old = now_ms() - 100 * 86_400_000;
    // The platform's log: five old events, then the creation of acme (now).
    for i in 0..5 {
        s.state.registry.audit(&event("", "", old + i as u64, i)).await.unwrap();
    }
    s.tenant("acme").await;
    let acme_id = tenant_id(&s, "acme").await;
    // Acme's own log: three old events, then two of now. The old ones are also in the
    // platform's log after the creation (a recent event): they stay there, since only a
    // prefix is pruned.
    for i in 0..3 {
        s.state.registry.audit(&event("acme", &acme_id, old + i as u64, i)).await.unwrap();
    }
    for i in 3..5 {
        s.state.registry.audit(&event("acme", &acme_id, now_ms(), i)).await.unwrap();
    }
    let admin = s.admin();
    let acme = s.token(Some("acme"), Role::TenantAdmin);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (platform, own) = loop {
        let (platform, own) = (export(&s, &admin, "").await, export(&s, &acme, "").await);
        if seqs(&platform).first() == Some(&6) && seqs(&own).first() == Some(&4) {
            break (platform, own);
        }
        assert!(tokio::time::Instant::now() < deadline, "not pruned: {:?} {:?}", seqs(&platform), seqs(&own));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // What is kept: everything from the first recent event on, numbered without a gap.
    assert_eq!(seqs(&platform), (6..=11).collect::<Vec<_>>());
    assert_eq!(platform[0]["action"], "POST /v1/tenants");
    assert_eq!(seqs(&own), vec![4, 5]);
    // Numbering goes on after the pruned prefix.
    s.state.registry.audit(&event("acme", &acme_id, now_ms(), 9)).await.unwrap();
    assert_eq!(seqs(&export(&s, &acme, "").await), vec![4, 5, 6]);
}
