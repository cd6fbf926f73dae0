//! Workflows through the API: a 50-step DAG with a fan-out of 20 and its fan-in, retries,
//! failure, compensation in reverse order, cancel, idempotency keys, validation errors,
//! the change feed, and a run that finishes on another node when the node that owned it
//! dies.

use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::store::Scope;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cluster::{Backend, nodes_on, within};
use crate::server::Server;

/// Generous: runs are polled, never timed.
const DEADLINE: Duration = Duration::from_secs(60);

async fn put_workflow(n: &Server, tok: &str, name: &str, def: &Value) -> (StatusCode, Value) {
    let r = n.req(Method::PUT, &format!("/v1/workflows/{name}"), tok).json(def).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn start_run(n: &Server, tok: &str, name: &str, body: Value) -> (StatusCode, Value) {
    let r = n.req(Method::POST, &format!("/v1/workflows/{name}/runs"), tok).json(&body).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn run_of(n: &Server, tok: &str, name: &str, id: &str) -> Value {
    n.get_json(tok, &format!("/v1/workflows/{name}/runs/{id}")).await
}

/// The run once it is in one of `states`.
async fn run_until(n: &Server, tok: &str, name: &str, id: &str, states: &[&str]) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            last = run_of(n, tok, name, id).await;
            if states.iter().any(|s| last["state"] == *s) {
                return last.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match found {
        Ok(v) => v,
        Err(_) => panic!("run {id} not in {states:?} within {DEADLINE:?}: {last}"),
    }
}

/// A node with tenant `acme` and agent `step` (the `workflow-step` plugin); a developer token.
async fn node() -> (Server, String) {
    let n = Server::start().await;
    let tok = n.developer_in("acme").await;
    let digest = n.upload(&tok, art::WORKFLOW_STEP).await;
    n.deploy(&tok, "step", &digest, json!({})).await;
    (n, tok)
}

async fn doc(n: &Server, collection: &str, key: &str) -> Option<Value> {
    let store = n.state.registry.store().clone();
    let d = store.get(&Scope::new("acme", "test"), collection, key).await.unwrap()?;
    Some(serde_json::from_str(&d.value).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_50_step_dag_with_a_fan_out_of_20_aggregates_the_right_result() {
    let (n, tok) = node().await;
    let mut steps = vec![
        json!({"id": "start", "agent": "step", "input": {"op": "echo", "value": "$.input.items"}}),
        json!({"id": "fan", "agent": "step", "depends_on": ["start"], "for_each": "$.steps.start.output",
               "concurrency": 5, "input": {"op": "add", "values": ["$.item"], "plus": 1}}),
    ];
    let mut parts = Vec::new();
    for i in 0..46 {
        steps.push(json!({"id": format!("p{i}"), "agent": "step", "depends_on": ["fan"],
            "input": {"op": "add", "values": "$.steps.fan.output", "plus": i}}));
        parts.push(json!(format!("$.steps.p{i}.output")));
    }
    let deps: Vec<String> = (0..46).map(|i| format!("p{i}")).collect();
    steps.push(json!({"id": "total", "agent": "step", "depends_on": deps, "input": {"op": "add", "values": parts}}));
    steps.push(json!({"id": "check", "agent": "step", "depends_on": ["total"],
        "condition": "$.steps.total.output > 0", "input": {"op": "echo", "value": {"total": "$.steps.total.output"}}}));
    assert_eq!(steps.len(), 50);
    let (s, wf) = put_workflow(&n, &tok, "big", &json!({ "steps": steps })).await;
    assert_eq!(s, StatusCode::CREATED, "{wf}");
    assert_eq!(wf["version"], 1);
    let items: Vec<u64> = (1..=20).collect();
    let (s, run) = start_run(&n, &tok, "big", json!({"input": {"items": items}})).await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let done = run_until(&n, &tok, "big", &id, &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // fan: (1..=20) + 1 each = 230; p_i = 230 + i; total = 46 * 230 + (0 + ... + 45).
    assert_eq!(done["output"], json!({"total": 46 * 230 + 1035}));
    let fan = done["steps"].as_array().unwrap().iter().find(|s| s["id"] == "fan").unwrap();
    assert_eq!(fan["calls"], 20);
    assert_eq!(fan["output"], json!((2..=21).collect::<Vec<u64>>()), "fan-in keeps the order");
    assert!(done["steps"].as_array().unwrap().iter().all(|s| s["state"] == "succeeded"));
    // The whole output of a step has its own route.
    let out = n.get_json(&tok, &format!("/v1/workflows/big/runs/{id}/steps/total/output")).await;
    assert_eq!(out, json!(46 * 230 + 1035));
    // Every transition went to the change feed: the run's summary document says it ended.
    let summary = doc(&n, "workflow-runs", &id).await.expect("the run's summary document");
    assert_eq!(summary["state"], "succeeded");
    assert_eq!(summary["steps"]["check"], "succeeded");
    // And the run's start and end to the audit log (appended just after the run's record
    // and its summary are written: poll).
    let mut text = String::new();
    let audited = tokio::time::timeout(DEADLINE, async {
        loop {
            text = n.get_json(&n.admin(), "/v1/audit?tenant=acme").await.to_string();
            if text.contains("workflow_run_succeeded") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(audited.is_ok() && text.contains("workflow_run_started"), "{text}");
    // Listed, and filtered by state.
    let listed = n.get_json(&tok, "/v1/workflows/big/runs?state=succeeded").await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let listed = n.get_json(&tok, "/v1/workflows/big/runs?state=failed").await;
    assert!(listed.as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_is_retried_and_a_step_out_of_attempts_fails_the_run() {
    let (n, tok) = node().await;
    let def = json!({"steps": [
        {"id": "flaky", "agent": "step", "retry": {"attempts": 3, "backoff_ms": 10},
         "input": {"op": "fail_times", "n": 2, "value": "made it"}}
    ]});
    put_workflow(&n, &tok, "flaky", &def).await;
    let (_, run) = start_run(&n, &tok, "flaky", json!({})).await;
    let done = run_until(&n, &tok, "flaky", run["id"].as_str().unwrap(), &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["output"], "made it");
    assert_eq!(done["steps"][0]["attempts"], 3);

    let def = json!({"steps": [
        {"id": "a", "agent": "step", "input": {"op": "echo", "value": 1}},
        {"id": "doomed", "agent": "step", "depends_on": ["a"], "retry": {"attempts": 2, "backoff_ms": 10},
         "input": {"op": "fail"}},
        {"id": "never", "agent": "step", "depends_on": ["doomed"], "input": {"op": "echo"}}
    ]});
    put_workflow(&n, &tok, "doomed", &def).await;
    let (_, run) = start_run(&n, &tok, "doomed", json!({})).await;
    let done = run_until(&n, &tok, "doomed", run["id"].as_str().unwrap(), &["succeeded", "failed"]).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["steps"][1]["state"], "failed");
    assert_eq!(done["steps"][1]["attempts"], 2);
    assert_eq!(done["steps"][1]["outcome"], "agent_error");
    assert_eq!(done["steps"][2]["state"], "cancelled", "a step after a failed one never runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_compensates_the_completed_steps_in_reverse_order() {
    let (n, tok) = node().await;
    let def = json!({
        "steps": [
            {"id": "reserve", "agent": "step", "input": {"op": "log", "entry": "reserve"}, "compensation": "release"},
            {"id": "charge", "agent": "step", "depends_on": ["reserve"], "input": {"op": "log", "entry": "charge"},
             "compensation": "refund"},
            {"id": "note", "agent": "step", "depends_on": ["charge"], "input": {"op": "log", "entry": "note"}},
            {"id": "ship", "agent": "step", "depends_on": ["note"], "on_failure": "compensate", "input": {"op": "fail"}}
        ],
        "compensations": [
            {"id": "release", "agent": "step", "input": {"op": "log", "entry": "release"}},
            {"id": "refund", "agent": "step", "input": {"op": "log", "entry": {"refund": "$.steps.charge.output"}}}
        ]
    });
    let (s, body) = put_workflow(&n, &tok, "order", &def).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (_, run) = start_run(&n, &tok, "order", json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let done = run_until(&n, &tok, "order", &id, &["compensated", "failed", "succeeded"]).await;
    assert_eq!(done["state"], "compensated", "{done}");
    let log = doc(&n, "log", &id).await.unwrap();
    assert_eq!(log, json!(["reserve", "charge", "note", {"refund": "charge"}, "release"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_run_ends_cancelled_and_cannot_be_cancelled_again() {
    let (n, tok) = node().await;
    let def = json!({"steps": [
        {"id": "slow", "agent": "step", "retry": {"attempts": 100, "backoff_ms": 100, "max_backoff_ms": 100},
         "input": {"op": "fail_times", "n": 1000}},
        {"id": "after", "agent": "step", "depends_on": ["slow"], "input": {"op": "echo"}}
    ]});
    put_workflow(&n, &tok, "slow", &def).await;
    let (_, run) = start_run(&n, &tok, "slow", json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    run_until(&n, &tok, "slow", &id, &["running"]).await;
    let r = n.req(Method::POST, &format!("/v1/workflows/slow/runs/{id}/cancel"), &tok).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let done = run_until(&n, &tok, "slow", &id, &["cancelled", "failed", "succeeded"]).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(done["steps"].as_array().unwrap().iter().all(|s| s["state"] == "cancelled"), "{done}");
    let r = n.req(Method::POST, &format!("/v1/workflows/slow/runs/{id}/cancel"), &tok).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_idempotency_key_returns_the_same_run() {
    let (n, tok) = node().await;
    let def = json!({"steps": [{"id": "e", "agent": "step", "input": {"op": "effect", "value": "$.input"}}]});
    put_workflow(&n, &tok, "once", &def).await;
    let (s1, a) = start_run(&n, &tok, "once", json!({"input": 1, "idempotency_key": "order-7"})).await;
    let (s2, b) = start_run(&n, &tok, "once", json!({"input": 2, "idempotency_key": "order-7"})).await;
    let (s3, c) = start_run(&n, &tok, "once", json!({"input": 3, "idempotency_key": "order-8"})).await;
    assert_eq!((s1, s2, s3), (StatusCode::CREATED, StatusCode::OK, StatusCode::CREATED));
    assert_eq!(a["id"], b["id"]);
    assert_ne!(a["id"], c["id"]);
    let id = a["id"].as_str().unwrap();
    let done = run_until(&n, &tok, "once", id, &["succeeded"]).await;
    assert_eq!(done["output"], 1);
    assert_eq!(doc(&n, "effects", &format!("{id}.e")).await, Some(json!(1)), "the step ran once");
    // A definition that did not change keeps its version; a change makes the next one.
    let (s, v) = put_workflow(&n, &tok, "once", &def).await;
    assert_eq!((s, v["version"].clone()), (StatusCode::OK, json!(1)));
    let def2 = json!({"steps": [{"id": "e", "agent": "step", "input": {"op": "echo", "value": "$.input"}}]});
    let (s, v) = put_workflow(&n, &tok, "once", &def2).await;
    assert_eq!((s, v["version"].clone()), (StatusCode::CREATED, json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_definitions_are_refused_with_stable_codes() {
    let (n, tok) = node().await;
    let cases = [
        (json!({"steps": [{"id": "a", "agent": "ghost"}]}), "unknown_agent"),
        (
            json!({"steps": [{"id": "a", "agent": "step", "depends_on": ["b"]},
                             {"id": "b", "agent": "step", "depends_on": ["a"]}]}),
            "cycle",
        ),
        (
            json!({"steps": [{"id": "a", "agent": "step"},
                             {"id": "b", "agent": "step", "input": "$.steps.a.output"}]}),
            "missing_reference",
        ),
        (json!({"steps": [{"id": "a", "agent": "step", "input": {"x": "$.inptu.x"}}]}), "bad_expression"),
        (json!({"steps": [{"id": "a", "agent": "step", "condition": "$.input.x =="}]}), "bad_expression"),
        (json!({"steps": [{"id": "a", "agent": "step", "for_each": "items"}]}), "bad_for_each"),
        (json!({"steps": [{"id": "a", "agent": "step"}, {"id": "a", "agent": "step"}]}), "duplicate_step"),
        (json!({"steps": [{"id": "a", "agent": "step", "compensation": "undo"}]}), "unknown_compensation"),
        (json!({"steps": [{"id": "a", "agent": "step", "depends_on": ["zz"]}]}), "unknown_dependency"),
        (json!({"steps": "no"}), "invalid_workflow"),
    ];
    for (def, code) in cases {
        let r = n.req(Method::PUT, "/v1/workflows/bad", &tok).json(&def).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{def}");
        assert_eq!(r.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap(), "application/problem+json", "{def}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{def}: {body}");
    }
    let r = n.req(Method::GET, "/v1/workflows/bad", &tok).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing was stored");
    let (s, _) = start_run(&n, &tok, "bad", json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_of_a_node_that_dies_finish_on_another_node() {
    let Some((mut nodes, store, _shared)) = nodes_on(Backend::Embedded, 2).await else { return };
    nodes[0].tenant("acme").await;
    let tok = nodes[0].token(Some("acme"), cortex_host::api::Role::Developer);
    let digest = nodes[0].upload(&tok, art::WORKFLOW_STEP).await;
    nodes[0].deploy(&tok, "step", &digest, json!({})).await;
    // Each step fails twice before it succeeds, so a run takes a while; idempotent steps
    // run again after the crash, the effect step counts its runs.
    let mut steps = Vec::new();
    for i in 0..6 {
        let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] };
        steps.push(json!({"id": format!("s{i}"), "agent": "step", "depends_on": deps, "idempotent": true,
            "retry": {"attempts": 3, "backoff_ms": 150}, "input": {"op": "fail_times", "n": 2, "value": i}}));
    }
    steps.push(json!({"id": "effect", "agent": "step", "depends_on": ["s5"], "idempotent": true,
        "input": {"op": "effect", "value": "done"}}));
    let (s, b) = put_workflow(&nodes[0], &tok, "long", &json!({ "steps": steps })).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (s, run) = start_run(&nodes[1], &tok, "long", json!({})).await;
        assert_eq!(s, StatusCode::CREATED, "{run}");
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    // Which node drives the tenant's runs.
    let owner_of = |nodes: &[Server]| {
        nodes.iter().position(|n| n.state.agents.owned().iter().any(|(k, _)| k == "acme/~workflows"))
    };
    within(Duration::from_secs(10), "a node owns the tenant's workflow engine", || {
        let found = owner_of(&nodes).is_some();
        async move { found }
    })
    .await;
    let owner = owner_of(&nodes).unwrap();
    let survivor = 1 - owner;
    // Wait until the runs are under way, then kill the owner.
    run_until(&nodes[survivor], &tok, "long", &ids[0], &["running"]).await;
    let dead = nodes.remove(owner);
    let _state = dead.crash().await;
    let n = &nodes[0];
    for id in &ids {
        let done = run_until(n, &tok, "long", id, &["succeeded", "failed", "needs_attention", "cancelled"]).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["output"], "done");
        let d = store.get(&Scope::new("acme", "t"), "effects", &format!("{id}.effect")).await.unwrap().unwrap();
        assert!(d.value.parse::<u64>().unwrap() >= 1, "the idempotent effect ran at least once");
    }
    assert!(n.state.agents.owned().iter().any(|(k, _)| k == "acme/~workflows"), "the survivor took the engine over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_tenant_deletes_its_workflows_and_runs() {
    let (n, tok) = node().await;
    let def = json!({"steps": [{"id": "e", "agent": "step", "input": {"op": "echo", "value": 1}}]});
    put_workflow(&n, &tok, "w", &def).await;
    let (_, run) = start_run(&n, &tok, "w", json!({})).await;
    run_until(&n, &tok, "w", run["id"].as_str().unwrap(), &["succeeded"]).await;
    let r = n.req(Method::DELETE, "/v1/tenants/acme", &n.admin()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let store = n.state.registry.store().clone();
    use cortex_host::store::RecordKind;
    for kind in [RecordKind::Workflow, RecordKind::WorkflowRun] {
        assert!(store.record_list(kind, "acme/").await.unwrap().is_empty(), "{kind:?} left behind");
    }
    assert!(store.record_get(RecordKind::Lease, "acme/~workflows").await.unwrap().is_none());
}

/// The step of `run` with id `step`.
fn step_of<'a>(run: &'a Value, step: &str) -> &'a Value {
    run["steps"].as_array().unwrap().iter().find(|s| s["id"] == step).unwrap()
}

/// The workflow version of the order pipeline, `plugins/order-workflow.json` as it is in
/// the repository (so the example cannot drift), over the `order-*` agents: a good order
/// is taken in, priced, charged and shipped; an order that cannot ship fails its step
/// after its retries and its charge is refunded (the compensation), the run ending
/// `compensated`; an order with an unpriced SKU is rejected and neither charged nor
/// shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_workflow_example_ships_an_order_and_refunds_one_that_cannot_ship() {
    let n = Server::start().await;
    let tok = n.developer_in("acme").await;
    // Downstream agents first (intake's `init` links it to pricing).
    for (name, wasm, config) in [
        ("order-payments", art::ORDER_PAYMENTS, json!({})),
        ("order-pricing", art::ORDER_PRICING, json!({"price.apple": "125", "price.fig": "1999"})),
        ("order-fulfilment", art::ORDER_FULFILMENT, json!({"pricing": "order-pricing", "unshippable": "fig"})),
        ("order-intake", art::ORDER_INTAKE, json!({"next": "order-pricing"})),
    ] {
        let digest = n.upload(&tok, wasm).await;
        n.deploy(&tok, name, &digest, config).await;
    }
    let def: Value = serde_json::from_str(include_str!("../../plugins/order-workflow.json")).unwrap();
    let (s, body) = put_workflow(&n, &tok, "orders", &def).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let ended = ["succeeded", "failed", "compensated", "needs_attention", "cancelled"];

    // Shipped: 2 apples at 125.
    let order = json!({"id": "o-1", "customer": "Ada", "items": [{"sku": "apple", "qty": 2}]});
    let (s, run) = start_run(&n, &tok, "orders", json!({"input": order, "idempotency_key": "o-1"})).await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    let done = run_until(&n, &tok, "orders", run["id"].as_str().unwrap(), &ended).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["output"],
        json!({
            "order": "o-1",
            "priced": {"order": "o-1", "status": "priced", "total_cents": 250},
            "payment": {"order": "o-1", "amount_cents": 250, "status": "charged"},
            "shipped": {"order": "o-1", "status": "fulfilled", "total_cents": 250},
        })
    );
    let stored = doc(&n, "orders", "o-1").await.unwrap();
    assert_eq!(stored["history"], json!(["received", "priced", "fulfilled"]));
    assert_eq!(doc(&n, "shipments", "o-1").await.unwrap()["total_cents"], 250);
    // The workflow moved the order on: intake sent pricing no message.
    let pricing = n.get_json(&tok, "/v1/agents/order-pricing").await;
    assert_eq!(
        (pricing["messages"]["delivered"].as_u64(), pricing["messages"]["pending"].as_u64()),
        (Some(0), Some(0))
    );

    // Cannot ship a fig: the charge is refunded, the order stays priced, nothing shipped.
    let order = json!({"id": "o-2", "customer": "Bo", "items": [{"sku": "fig", "qty": 1}]});
    let (_, run) = start_run(&n, &tok, "orders", json!({"input": order})).await;
    let done = run_until(&n, &tok, "orders", run["id"].as_str().unwrap(), &ended).await;
    assert_eq!(done["state"], "compensated", "{done}");
    let fulfil = step_of(&done, "fulfil");
    assert_eq!(fulfil["state"], "failed", "{fulfil}");
    assert_eq!(fulfil["attempts"], 2, "{fulfil}");
    assert_eq!(fulfil["outcome"], "agent_error", "{fulfil}");
    assert!(fulfil["message"].as_str().unwrap().contains("cannot-ship"), "{fulfil}");
    assert_eq!(
        doc(&n, "payments", "o-2").await.unwrap(),
        json!({"order": "o-2", "amount_cents": 1999, "status": "refunded"})
    );
    assert_eq!(doc(&n, "orders", "o-2").await.unwrap()["status"], "priced");
    assert!(doc(&n, "shipments", "o-2").await.is_none());

    // An unpriced SKU: rejected by pricing, so the charge and the shipment are skipped.
    let order = json!({"id": "o-3", "customer": "Cy", "items": [{"sku": "durian", "qty": 1}]});
    let (_, run) = start_run(&n, &tok, "orders", json!({"input": order})).await;
    let done = run_until(&n, &tok, "orders", run["id"].as_str().unwrap(), &ended).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["output"]["priced"]["status"], "rejected", "{done}");
    assert_eq!((done["output"]["payment"].clone(), done["output"]["shipped"].clone()), (Value::Null, Value::Null));
    assert_eq!(step_of(&done, "charge")["state"], "skipped");
    assert_eq!(step_of(&done, "fulfil")["state"], "skipped");
    assert!(doc(&n, "payments", "o-3").await.is_none());
}
