//! The order pipeline of `plugins/order-*` over the real HTTP API: orders submitted by
//! many concurrent clients flow intake -send-> pricing -publish-> fulfilment (which calls
//! pricing for a quote) while the auditor watches the orders; every final document is
//! checked exactly against totals computed here, duplicates start one run, malformed
//! orders are refused with their codes, and the change feed shows each stage wrote once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::api::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::Server;

/// The price table the pricing agent is deployed with, in cents.
const PRICES: [(&str, u64); 5] = [("apple", 125), ("pear", 240), ("plum", 75), ("fig", 1_999), ("kiwi", 40)];
/// A SKU without a price: orders with it end `rejected`.
const UNPRICED: &str = "durian";
/// Distinct orders submitted.
const ORDERS: usize = 100;
/// Orders submitted more than once (same id, same contents), and how many times.
const DUPLICATED: [usize; 3] = [3, 42, 77];
const COPIES: usize = 4;
/// Clients submitting at once.
const CLIENTS: usize = 16;
/// How long the whole pipeline may take to drain.
const DRAIN: Duration = Duration::from_secs(60);

const INTAKE: &str = "order-intake";
const PRICING: &str = "order-pricing";
const FULFILMENT: &str = "order-fulfilment";
const AUDITOR: &str = "order-auditor";
const TOPIC: &str = "orders.priced";

/// One order as the test builds it.
#[derive(Clone, Debug)]
struct Order {
    id: String,
    customer: String,
    items: Vec<(&'static str, u64)>,
}

impl Order {
    /// Order number `i`: 1 to 4 priced items, and every twentieth also an unpriced one.
    fn new(i: usize) -> Order {
        let mut items: Vec<(&'static str, u64)> =
            (0..1 + i % 4).map(|k| (PRICES[(i * 3 + k * 2) % PRICES.len()].0, 1 + ((i + k) % 5) as u64)).collect();
        if i % 20 == 7 {
            items.push((UNPRICED, 1));
        }
        Order { id: format!("o-{i:03}"), customer: format!("customer {}", i % 7), items }
    }

    fn items_json(&self) -> Value {
        self.items.iter().map(|(sku, qty)| json!({ "sku": sku, "qty": qty })).collect()
    }

    fn body(&self) -> String {
        json!({ "id": self.id, "customer": self.customer, "items": self.items_json() }).to_string()
    }

    /// The total at `PRICES`, computed independently of the agents; `None` if a SKU has no price.
    fn total(&self) -> Option<u64> {
        self.items.iter().map(|(sku, qty)| PRICES.iter().find(|(s, _)| s == sku).map(|(_, cents)| cents * qty)).sum()
    }

    fn history(&self) -> Vec<&'static str> {
        match self.total() {
            Some(_) => vec!["received", "priced", "fulfilled"],
            None => vec!["received", "rejected"],
        }
    }

    /// `orders/<id>` once the pipeline is done with it.
    fn final_doc(&self) -> Value {
        let mut doc = json!({
            "id": self.id,
            "customer": self.customer,
            "items": self.items_json(),
            "status": self.history().last().unwrap(),
            "history": self.history(),
        });
        match self.total() {
            Some(total) => doc["total_cents"] = json!(total),
            None => doc["reason"] = json!(format!("unknown sku {UNPRICED:?}")),
        }
        doc
    }

    /// `shipments/<id>`, if it ships.
    fn shipment(&self) -> Option<Value> {
        self.total().map(|total| {
            json!({ "order": self.id, "customer": self.customer, "items": self.items_json(), "total_cents": total })
        })
    }

    /// `audit/<id>`: the statuses in order, one revision per status, nothing wrong.
    fn audit(&self) -> Value {
        json!({ "statuses": self.history(), "revision": self.history().len(), "anomalies": [] })
    }
}

/// What one submission should get back.
#[derive(Clone, Debug)]
enum Expect {
    /// `accepted` the first time the id is seen, `duplicate` after.
    Accepted(String),
    /// 422 with this agent error code.
    Refused(&'static str),
}

/// Invoke, and while the host answers "not now" (429 over a quota, 503 pool full) try
/// again, as a client would; bounded.
async fn invoke_patiently(s: &Server, token: &str, agent: &str, input: &str) -> (StatusCode, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = s.invoke(token, agent, input).await;
        let busy = status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
        if !busy || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn invoke_ok_patiently(s: &Server, token: &str, agent: &str, input: &str) -> String {
    let (status, body) = invoke_patiently(s, token, agent, input).await;
    assert_eq!(status, StatusCode::OK, "invoke {agent} {input:?}: {body}");
    body
}

/// Uploads and deploys the four pipeline agents, downstream first (each `init` links
/// itself to the agents it feeds, which must exist).
async fn deploy_pipeline(s: &Server, dev: &str) {
    let auditor = s.upload(dev, art::ORDER_AUDITOR).await;
    let fulfilment = s.upload(dev, art::ORDER_FULFILMENT).await;
    let pricing = s.upload(dev, art::ORDER_PRICING).await;
    let intake = s.upload(dev, art::ORDER_INTAKE).await;
    s.deploy_with(dev, AUDITOR, &auditor, json!({ "watches": [{ "collection": "orders", "prefix": "" }] })).await;
    s.deploy_with(dev, FULFILMENT, &fulfilment, json!({ "config": { "pricing": PRICING }, "subscriptions": [TOPIC] }))
        .await;
    let mut config: BTreeMap<String, String> =
        PRICES.iter().map(|(sku, cents)| (format!("price.{sku}"), cents.to_string())).collect();
    config.insert("topic".into(), TOPIC.into());
    config.insert("next".into(), FULFILMENT.into());
    s.deploy(dev, PRICING, &pricing, json!(config)).await;
    s.deploy(dev, INTAKE, &intake, json!({ "next": PRICING })).await;
}

/// POST /v1/agents: the status and the body.
async fn try_deploy(s: &Server, token: &str, name: &str, module: &str, config: Value) -> (StatusCode, Value) {
    let body = json!({ "name": name, "module": module, "config": config });
    let r = s.req(Method::POST, "/v1/agents", token).json(&body).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

/// PUT /v1/agents/NAME/config (which runs `init` again): `Err(problem)` unless 200.
async fn put_config(s: &Server, token: &str, name: &str, config: &Value) -> Result<(), Value> {
    let path = format!("/v1/agents/{name}/config");
    let r = s.req(Method::PUT, &path, token).json(&json!({ "config": config })).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    if status == StatusCode::OK { Ok(()) } else { Err(body) }
}

/// The auditor's records, order id -> record.
async fn audit_report(s: &Server, dev: &str) -> BTreeMap<String, Value> {
    serde_json::from_str(&invoke_ok_patiently(s, dev, AUDITOR, "report").await).unwrap()
}

/// Polls the auditor (every 50 ms, at most `DRAIN`) until every order has reached its final
/// status; returns the report.
async fn wait_for_pipeline(s: &Server, dev: &str, orders: &[Order]) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + DRAIN;
    loop {
        let report = audit_report(s, dev).await;
        let pending: Vec<String> = orders
            .iter()
            .filter(|o| {
                let last =
                    report.get(&o.id).and_then(|r| r["statuses"].as_array()?.last()?.as_str().map(str::to_owned));
                last.as_deref() != o.history().last().copied()
            })
            .map(|o| format!("{} (audit so far: {})", o.id, report.get(&o.id).map_or("none".into(), Value::to_string)))
            .collect();
        if pending.is_empty() {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "after {DRAIN:?}, {} of {} orders have not reached their final status: {:?}",
            pending.len(),
            orders.len(),
            &pending[..pending.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `coll/key` through the kv agent: its JSON, or `None`.
async fn read_doc(s: &Server, dev: &str, coll: &str, key: &str) -> Option<Value> {
    let text = invoke_ok_patiently(s, dev, "kv", &format!("get:{coll}/{key}")).await;
    (text != "none").then(|| serde_json::from_str(&text).unwrap())
}

/// Keys of `coll` through the kv agent.
async fn keys(s: &Server, dev: &str, coll: &str) -> BTreeSet<String> {
    let text = invoke_ok_patiently(s, dev, "kv", &format!("list:{coll}/?limit=1000")).await;
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["next"], Value::Null, "more than one page of {coll}");
    page["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect()
}

/// The whole change feed: `collection/key` -> its writes as `(op, revision, agent)`.
async fn writes(s: &Server, dev: &str) -> BTreeMap<String, Vec<(String, u64, String)>> {
    let mut all: BTreeMap<String, Vec<(String, u64, String)>> = BTreeMap::new();
    let mut since = 0;
    loop {
        let page = s.get_json(dev, &format!("/v1/events?since={since}&limit=1000")).await;
        let page = page.as_array().unwrap();
        let Some(last) = page.last() else { return all };
        since = last["seq"].as_u64().unwrap();
        for e in page {
            let doc = format!("{}/{}", e["collection"].as_str().unwrap(), e["key"].as_str().unwrap());
            let write = (
                e["op"].as_str().unwrap().to_owned(),
                e["revision"].as_u64().unwrap(),
                e["agent"].as_str().unwrap().into(),
            );
            all.entry(doc).or_default().push(write);
        }
    }
}

fn put(revision: u64, agent: &str) -> (String, u64, String) {
    ("put".to_owned(), revision, agent.to_owned())
}

/// A deterministic shuffle (so a failure can be replayed), spreading the duplicates out.
fn shuffle<T>(v: &mut [T]) {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..v.len()).rev() {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        v.swap(i, (state >> 33) as usize % (i + 1));
    }
}

/// The submissions of the concurrent wave: every order, the copies, and malformed orders.
fn submissions(orders: &[Order]) -> Vec<(String, Expect)> {
    let mut subs: Vec<(String, Expect)> = orders.iter().map(|o| (o.body(), Expect::Accepted(o.id.clone()))).collect();
    for &i in &DUPLICATED {
        for _ in 1..COPIES {
            subs.push((orders[i].body(), Expect::Accepted(orders[i].id.clone())));
        }
    }
    let item = r#"[{"sku":"apple","qty":1}]"#;
    let malformed = [
        ("this is not JSON".to_owned(), "invalid-json"),
        (format!(r#"{{"id":"bad-0","customer":"c","items":{item},"coupon":"FREE"}}"#), "invalid-json"),
        (r#"{"id":"bad-1","customer":"c","items":[{"sku":"apple","qty":-1}]}"#.to_owned(), "invalid-json"),
        (format!(r#"{{"id":"o/1","customer":"c","items":{item}}}"#), "invalid-id"),
        (format!(r#"{{"id":"","customer":"c","items":{item}}}"#), "invalid-id"),
        (format!(r#"{{"id":"bad-2","customer":"","items":{item}}}"#), "invalid-customer"),
        (r#"{"id":"bad-3","customer":"c","items":[]}"#.to_owned(), "invalid-items"),
        (r#"{"id":"bad-4","customer":"c","items":[{"sku":"apple","qty":0}]}"#.to_owned(), "invalid-qty"),
        (r#"{"id":"bad-5","customer":"c","items":[{"sku":"apple","qty":10001}]}"#.to_owned(), "invalid-qty"),
        (r#"{"id":"bad-6","customer":"c","items":[{"sku":"app le","qty":1}]}"#.to_owned(), "invalid-sku"),
    ];
    subs.extend(malformed.into_iter().map(|(body, code)| (body, Expect::Refused(code))));
    shuffle(&mut subs);
    subs
}

/// Checks one intake answer; returns the id of an accepted order (`accepted` or `duplicate`).
fn check_answer(body_in: &str, expect: &Expect, status: StatusCode, text: &str) -> Option<(String, String)> {
    match expect {
        Expect::Accepted(id) => {
            assert_eq!(status, StatusCode::OK, "submitting {body_in}: {text}");
            assert!(text == "accepted" || text == "duplicate", "submitting {body_in}: {text}");
            Some((id.clone(), text.to_owned()))
        }
        Expect::Refused(code) => {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "submitting {body_in}: {text}");
            let problem: Value = serde_json::from_str(text).unwrap();
            assert_eq!(problem["code"], "agent_error", "{text}");
            // The agent's own code and message are fields too, for clients to act on.
            assert_eq!(problem["agent_code"], *code, "{text}");
            let message = problem["agent_message"].as_str().unwrap();
            let detail = problem["detail"].as_str().unwrap();
            assert_eq!(detail, format!("agent_error: {code}: {message}"), "{text}");
            assert!(
                detail.starts_with(&format!("agent_error: {code}: ")),
                "submitting {body_in}: want {code}, got {text}"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_flow_through_the_pipeline_exactly_once() {
    let s = Arc::new(Server::start().await);
    // Every delivery and call is an invocation of the tenant, counted against its rate
    // quota: a pipeline under load needs more than the default 200/s (burst 400).
    let busy = cortex_host::registry::Quotas { invocations_per_second: 5_000, burst: 5_000, ..Default::default() };
    s.tenant_with("acme", Some(busy)).await;
    let dev = s.token(Some("acme"), Role::Developer);
    deploy_pipeline(&s, &dev).await;
    let kv = s.upload(&dev, art::KV).await;
    s.deploy(&dev, "kv", &kv, json!({})).await;
    let graph = s.upload(&dev, art::GRAPH).await;
    s.deploy(&dev, "graph", &graph, json!({})).await;

    // The dependency graph the agents drew at init.
    assert_eq!(s.invoke_ok(&dev, "graph", &format!("out:{INTAKE}")).await, format!(r#"["{INTAKE}>{PRICING}:feeds"]"#));
    assert_eq!(
        s.invoke_ok(&dev, "graph", &format!("out:{PRICING}")).await,
        format!(r#"["{PRICING}>{FULFILMENT}:feeds"]"#)
    );
    assert_eq!(s.invoke_ok(&dev, "graph", &format!("out:{FULFILMENT}")).await, "[]");
    assert_eq!(s.invoke_ok(&dev, "graph", &format!("both:{AUDITOR}")).await, "[]");
    assert_eq!(
        s.invoke_ok(&dev, "graph", &format!("traverse:{INTAKE}:8")).await,
        format!(r#"["{PRICING}","{FULFILMENT}"]"#)
    );

    // The wave: CLIENTS clients take submissions from one queue.
    let orders: Vec<Order> = (0..ORDERS).map(Order::new).collect();
    let queue = Arc::new(Mutex::new(submissions(&orders)));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (s, dev, queue) = (s.clone(), dev.clone(), queue.clone());
        clients.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let Some((body, expect)) = queue.lock().unwrap().pop() else { return answers };
                let (status, text) = invoke_patiently(&s, &dev, INTAKE, &body).await;
                answers.extend(check_answer(&body, &expect, status, &text));
            }
        });
    }
    let mut answers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(done) = clients.join_next().await {
        for (id, text) in done.unwrap() {
            answers.entry(id).or_default().push(text);
        }
    }
    // One run per id: exactly one `accepted`, the copies are `duplicate`.
    assert_eq!(answers.len(), ORDERS);
    for (i, order) in orders.iter().enumerate() {
        let mut got = answers[&order.id].clone();
        got.sort();
        let copies = if DUPLICATED.contains(&i) { COPIES } else { 1 };
        let mut want = vec!["accepted".to_owned()];
        want.extend(std::iter::repeat_n("duplicate".to_owned(), copies - 1));
        assert_eq!(got, want, "answers for {}", order.id);
    }
    // An id reused for a different order is refused and changes nothing.
    let mut reused = orders[1].clone();
    reused.items = vec![("fig", 9)];
    let (status, text) = s.invoke(&dev, INTAKE, &reused.body()).await;
    check_answer(&reused.body(), &Expect::Refused("id-reused"), status, &text);

    let report = wait_for_pipeline(&s, &dev, &orders).await;

    // Every final document, exactly.
    let ids: BTreeSet<String> = orders.iter().map(|o| o.id.clone()).collect();
    let shipped: BTreeSet<String> = orders.iter().filter(|o| o.total().is_some()).map(|o| o.id.clone()).collect();
    assert_eq!(shipped.len(), ORDERS - 5, "the test's own orders: five have an unpriced SKU");
    assert_eq!(keys(&s, &dev, "orders").await, ids, "no document for a refused order");
    assert_eq!(keys(&s, &dev, "shipments").await, shipped);
    for order in &orders {
        assert_eq!(read_doc(&s, &dev, "orders", &order.id).await, Some(order.final_doc()), "orders/{}", order.id);
        assert_eq!(read_doc(&s, &dev, "shipments", &order.id).await, order.shipment(), "shipments/{}", order.id);
        assert_eq!(read_doc(&s, &dev, "audit", &order.id).await, Some(order.audit()), "audit/{}", order.id);
    }
    let want_report: BTreeMap<String, Value> = orders.iter().map(|o| (o.id.clone(), o.audit())).collect();
    assert_eq!(report, want_report, "the auditor's report");

    // Redelivered messages (at least once) and a late copy of an order change nothing: each
    // stage answers with the final status and writes nothing (the feed below shows it).
    assert_eq!(orders[7].total(), None, "o-007 is rejected");
    for order in [&orders[0], &orders[7], &orders[DUPLICATED[0]]] {
        let last = *order.history().last().unwrap();
        assert_eq!(s.invoke_ok(&dev, INTAKE, &order.body()).await, "duplicate");
        assert_eq!(s.invoke_ok(&dev, PRICING, &format!("price:{}", order.id)).await, last);
        assert_eq!(s.invoke_ok(&dev, FULFILMENT, &order.id).await, last);
        let (status, text) = s.invoke(&dev, PRICING, &format!("quote:{}", order.id)).await;
        match order.total() {
            Some(total) => assert_eq!(
                (status, serde_json::from_str::<Value>(&text).unwrap()),
                (StatusCode::OK, json!({ "order": order.id, "total_cents": total }))
            ),
            None => assert_eq!(check_answer("quote", &Expect::Refused("unknown-sku"), status, &text), None),
        }
    }

    // The change feed: each stage wrote each order once (duplicates and redeliveries wrote
    // nothing), the auditor wrote only to add something, nobody else wrote.
    let feed = writes(&s, &dev).await;
    for order in &orders {
        let stages = [put(1, INTAKE), put(2, PRICING), put(3, FULFILMENT)];
        let n = order.history().len();
        assert_eq!(feed[&format!("orders/{}", order.id)], stages[..n], "writes of orders/{}", order.id);
        if order.total().is_some() {
            assert_eq!(feed[&format!("shipments/{}", order.id)], [put(1, FULFILMENT)], "shipments/{}", order.id);
        }
        let audits = &feed[&format!("audit/{}", order.id)];
        assert!((1..=n).contains(&audits.len()), "audit/{} written {} times: {audits:?}", order.id, audits.len());
        let audit_writes: Vec<_> = (1..=audits.len() as u64).map(|rev| put(rev, AUDITOR)).collect();
        assert_eq!(audits, &audit_writes, "writes of audit/{}", order.id);
    }
    let collections: BTreeSet<&str> = feed.keys().filter_map(|doc| doc.split_once('/')).map(|(c, _)| c).collect();
    assert_eq!(collections, BTreeSet::from(["audit", "orders", "shipments"]));
    assert_eq!(feed.len(), ORDERS * 2 + shipped.len(), "documents written: {:?}", feed.keys().collect::<Vec<_>>());

    // Nothing failed for good. Mailboxes: pricing got one message per order, fulfilment one
    // per priced order, nobody else any. Delivery is at least once, but without a crash
    // each message is taken exactly once (repeated sends share an idempotency key).
    for (agent, messages) in [(INTAKE, 0), (PRICING, ORDERS), (FULFILMENT, shipped.len()), (AUDITOR, 0)] {
        let letters = s.get_json(&dev, &format!("/v1/agents/{agent}/deadletters")).await;
        assert_eq!(letters, json!([]), "dead letters of {agent}");
        // A mailbox counts a delivery once it has removed the message, which may come a
        // moment after the order's final write is visible: wait for it, bounded.
        let mut counters = Value::Null;
        for _ in 0..500 {
            counters = s.get_json(&dev, &format!("/v1/agents/{agent}")).await["messages"].clone();
            if counters["delivered"].as_u64() >= Some(messages as u64) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(counters["dead_lettered"], 0, "{agent}: {counters}");
        assert_eq!(counters["delivered"].as_u64(), Some(messages as u64), "{agent}: {counters}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_a_downstream_agent_that_does_not_exist() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let hello = s.upload(&dev, art::HELLO).await;
    let graph = s.upload(&dev, art::GRAPH).await;
    s.deploy(&dev, "graph", &graph, json!({})).await;
    let intake = s.upload(&dev, art::ORDER_INTAKE).await;
    let deploy = |config: Value| try_deploy(&s, &dev, INTAKE, &intake, config);

    // Deployed before the agent it feeds, or without one: refused, and nothing is left.
    let (status, problem) = deploy(json!({ "next": "sink" })).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("init_agent_error")));
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("unknown-downstream") && detail.contains("sink"), "{problem}");
    let (status, problem) = deploy(json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("bad-config"), "{problem}");
    assert_eq!(s.invoke_ok(&dev, "graph", &format!("both:{INTAKE}")).await, "[]");

    s.deploy(&dev, "sink", &hello, json!({})).await;
    let (status, problem) = deploy(json!({ "next": "sink" })).await;
    assert_eq!(status, StatusCode::CREATED, "{problem}");
    assert_eq!(s.invoke_ok(&dev, "graph", &format!("out:{INTAKE}")).await, format!(r#"["{INTAKE}>sink:feeds"]"#));

    // A config naming an agent that does not exist, or none: refused, and the config and
    // the edges in force stay.
    let problem = put_config(&s, &dev, INTAKE, &json!({ "next": "ghost" })).await.unwrap_err();
    assert_eq!(problem["code"], "init_agent_error", "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("unknown-downstream") && detail.contains("ghost"), "{problem}");
    let problem = put_config(&s, &dev, INTAKE, &json!({})).await.unwrap_err();
    assert!(problem["detail"].as_str().unwrap().contains("bad-config"), "{problem}");
    assert_eq!(s.get_json(&dev, &format!("/v1/agents/{INTAKE}")).await["config"], json!({ "next": "sink" }));
    assert_eq!(s.invoke_ok(&dev, "graph", &format!("out:{INTAKE}")).await, format!(r#"["{INTAKE}>sink:feeds"]"#));

    // Moved to another downstream agent: the old edge goes.
    s.deploy(&dev, "sink2", &hello, json!({})).await;
    put_config(&s, &dev, INTAKE, &json!({ "next": "sink2" })).await.unwrap();
    assert_eq!(s.invoke_ok(&dev, "graph", &format!("out:{INTAKE}")).await, format!(r#"["{INTAKE}>sink2:feeds"]"#));
}
