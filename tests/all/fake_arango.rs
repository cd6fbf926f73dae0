//! A loopback stand-in for ArangoDB's HTTP API, implementing only the endpoints the
//! `arangodb` store calls, with the status codes, error numbers and bodies ArangoDB's HTTP
//! API documentation gives for them:
//! - `GET /` (server check: the `Server: ArangoDB` header), basic auth on everything else;
//! - `GET /_db/{db}/_api/version`, `GET /_db/{db}/_api/database/current`, `POST /_api/database`;
//! - `GET|POST /_db/{db}/_api/collection[/{name}]`, `PUT /_db/{db}/_api/collection/{name}/truncate`,
//!   `POST /_db/{db}/_api/index?collection=`;
//! - documents: `GET|POST|PUT|DELETE /_db/{db}/_api/document/{coll}[/{key}]`, `If-Match`
//!   answered with 412 (error 1200) and the current `_rev`, insert of an existing `_key`
//!   with 409 (error 1210) unless `overwrite=true` (a replace-insert), an edge without
//!   valid `_from`/`_to` handles with 400 (error 1233), a write to a document another running transaction has written
//!   with 409 (error 1200, write-write conflict);
//! - stream transactions: `POST /_db/{db}/_api/transaction/begin`, `PUT` (commit) and
//!   `DELETE` (abort) `/_db/{db}/_api/transaction/{id}`; operations carrying
//!   `x-arango-trx-id` are buffered, read their own writes, and are applied at commit;
//!   a read-only transaction (no `write` collections, as a backup begins) reads the
//!   snapshot of the database taken at its begin, as RocksDB does: documents and AQL
//!   cursors in it never see a write committed after the begin (write transactions keep
//!   the simpler model above: they read committed state plus their own writes);
//!   with [`State::trx_idle_timeout`] set, a transaction no request named for that long is
//!   aborted, as ArangoDB's `--transaction.streaming-idle-timeout` does (its default, 60 s;
//!   unset here: never), so that one a dead client left stops blocking the keys it wrote;
//! - AQL cursors: `POST /_db/{db}/_api/cursor` with `batchSize`, `PUT|POST
//!   /_db/{db}/_api/cursor/{id}` for the next batch (404, error 1600, once exhausted). Only
//!   the queries the store sends are understood (matched on whitespace-normalised text and
//!   evaluated here in Rust); anything else is a 400 parse error (1501).
//!
//! The HTTP/1.1 server is hand-written on tokio (Content-Length bodies, keep-alive) because
//! the test crate has no HTTP server dependency.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type Docs = BTreeMap<String, Value>;

#[derive(Default)]
struct Collection {
    kind: u8,
    docs: Docs,
}

#[derive(Default)]
struct Database {
    collections: BTreeMap<String, Collection>,
}

struct Trx {
    db: String,
    /// When a request last named it.
    touched: std::time::Instant,
    /// Buffered writes: (collection, key) -> new document, or `None` for a removal.
    writes: BTreeMap<(String, String), Option<Value>>,
    /// A read-only transaction's snapshot of the database at its begin.
    snapshot: Option<BTreeMap<String, Docs>>,
}

/// The fake server's whole state; tests may inspect it.
#[derive(Default)]
pub struct State {
    databases: BTreeMap<String, Database>,
    cursors: HashMap<String, VecDeque<Value>>,
    cursor_batch: HashMap<String, usize>,
    trx: HashMap<String, Trx>,
    next_id: u64,
    /// When set, requests are read but never answered.
    pub hang: bool,
    /// When set, a stream transaction idle this long is aborted (see the module docs).
    pub trx_idle_timeout: Option<std::time::Duration>,
    /// `METHOD path` of every request, in arrival order.
    pub log: Vec<String>,
}

impl State {
    fn id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    /// Every `_key` stored in `collection` of `db`.
    pub fn keys(&self, db: &str, collection: &str) -> Vec<String> {
        self.databases
            .get(db)
            .and_then(|d| d.collections.get(collection))
            .map(|c| c.docs.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// A running fake server.
pub struct FakeArango {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeArango {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const USER: &str = "root";
pub const PASSWORD: &str = "fake-secret";

impl FakeArango {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        state.lock().unwrap().databases.insert("_system".into(), Database::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                tokio::spawn(serve(sock, s.clone()));
            }
        });
        Self { url: format!("http://{addr}"), state, task }
    }
}

struct Req {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: String,
}

async fn serve(sock: TcpStream, state: Arc<Mutex<State>>) {
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else { return };
        let (method, target) = (method.to_owned(), target.to_owned());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let (path, q) = target.split_once('?').unwrap_or((&target, ""));
        let query = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let req = Req { method, path: path.to_owned(), query, headers, body: String::from_utf8_lossy(&body).into() };
        if state.lock().unwrap().hang {
            std::future::pending::<()>().await;
        }
        let (status, body) = {
            let mut st = state.lock().unwrap();
            st.log.push(format!("{} {}", req.method, req.path));
            handle(&mut st, &req)
        };
        let body = body.to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\nServer: ArangoDB\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // One write: head and body in two segments would meet Nagle and delayed ACKs (40 ms).
        if w.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
            return;
        }
    }
}

fn err(code: u16, num: u16, msg: &str) -> (u16, Value) {
    (code, json!({ "error": true, "code": code, "errorNum": num, "errorMessage": msg }))
}

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn authorised(req: &Req) -> bool {
    let want = b64(format!("{USER}:{PASSWORD}").as_bytes());
    req.headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|v| v.trim_end_matches('=') == want)
}

fn handle(st: &mut State, req: &Req) -> (u16, Value) {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let m = req.method.as_str();
    if req.path == "/" && m == "GET" {
        return (200, json!({}));
    }
    if !authorised(req) {
        return err(401, 11, "not authorized to execute this request");
    }
    if let Some(idle) = st.trx_idle_timeout {
        st.trx.retain(|_, t| t.touched.elapsed() < idle);
    }
    if let Some(t) = req.headers.get("x-arango-trx-id").and_then(|id| st.trx.get_mut(id)) {
        t.touched = std::time::Instant::now();
    }
    // `/_api/...` is `/_db/_system/_api/...`.
    let (db, rest): (String, Vec<&str>) = match segs.as_slice() {
        ["_db", db, rest @ ..] => ((*db).to_owned(), rest.to_vec()),
        rest => ("_system".to_owned(), rest.to_vec()),
    };
    if !st.databases.contains_key(&db) {
        return err(404, 1228, "database not found");
    }
    let body: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
    match (m, rest.as_slice()) {
        ("GET", ["_api", "version"]) => {
            (200, json!({ "server": "arango", "version": "3.12.0", "license": "community" }))
        }
        ("GET", ["_api", "database", "current"]) => (
            200,
            json!({ "error": false, "code": 200, "result": { "name": db, "id": "1", "path": "/fake", "isSystem": db == "_system" } }),
        ),
        ("POST", ["_api", "database"]) => {
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            if st.databases.contains_key(&name) {
                return err(409, 1207, "duplicate database name");
            }
            st.databases.insert(name, Database::default());
            (201, json!({ "error": false, "code": 201, "result": true }))
        }
        ("GET", ["_api", "collection", name]) => match st.databases[&db].collections.get(*name) {
            Some(c) => (200, collection_info(name, c.kind)),
            None => err(404, 1203, "collection or view not found"),
        },
        ("POST", ["_api", "collection"]) => {
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            let kind = body["type"].as_u64().map_or(2, |t| t as u8);
            let colls = &mut st.databases.get_mut(&db).unwrap().collections;
            if colls.contains_key(&name) {
                return err(409, 1207, "duplicate name");
            }
            colls.insert(name.clone(), Collection { kind, docs: Docs::new() });
            let mut info = collection_info(&name, kind);
            let extra = json!({
                "statusString": "loaded", "keyOptions": { "allowUserKeys": true, "type": "traditional", "lastValue": 0 },
                "waitForSync": false, "writeConcern": 1, "cacheEnabled": false, "objectId": "1"
            });
            info.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            (200, info)
        }
        ("POST", ["_api", "index"]) => {
            let Some(coll) = req.query.get("collection") else { return err(400, 10, "collection missing") };
            if !st.databases[&db].collections.contains_key(coll) {
                return err(404, 1203, "collection or view not found");
            }
            let mut index = body.clone();
            let id = st.id();
            index["id"] = json!(format!("{coll}/{id}"));
            index["isNewlyCreated"] = json!(true);
            index["error"] = json!(false);
            index["code"] = json!(201);
            (201, index)
        }
        ("POST", ["_api", "transaction", "begin"]) => {
            let id = st.id();
            let cs = &body["collections"];
            let writes = ["write", "exclusive"].iter().any(|k| cs[*k].as_array().is_some_and(|a| !a.is_empty()));
            let snapshot = (!writes).then(|| {
                st.databases[&db].collections.iter().map(|(name, c)| (name.clone(), c.docs.clone())).collect()
            });
            let trx = Trx { db, touched: std::time::Instant::now(), writes: BTreeMap::new(), snapshot };
            st.trx.insert(id.clone(), trx);
            (201, json!({ "error": false, "code": 201, "result": { "id": id, "status": "running" } }))
        }
        ("PUT" | "DELETE", ["_api", "transaction", id]) => {
            let Some(trx) = st.trx.remove(*id) else { return err(404, 1655, "transaction not found") };
            let status = if m == "PUT" {
                let colls = &mut st.databases.get_mut(&trx.db).unwrap().collections;
                for ((c, k), doc) in trx.writes {
                    let docs = &mut colls.get_mut(&c).unwrap().docs;
                    match doc {
                        Some(d) => docs.insert(k, d),
                        None => docs.remove(&k),
                    };
                }
                "committed"
            } else {
                "aborted"
            };
            (200, json!({ "error": false, "code": 200, "result": { "id": id, "status": status } }))
        }
        ("PUT", ["_api", "collection", name, "truncate"]) => {
            match st.databases.get_mut(&db).unwrap().collections.get_mut(*name) {
                Some(c) => {
                    c.docs.clear();
                    (200, collection_info(name, c.kind))
                }
                None => err(404, 1203, "collection or view not found"),
            }
        }
        (_, ["_api", "document", coll, key @ ..]) => document(st, req, &db, coll, key.first().copied(), &body),
        ("POST", ["_api", "cursor"]) => {
            let query = body["query"].as_str().unwrap_or_default();
            let norm = query.split_whitespace().collect::<Vec<_>>().join(" ");
            let batch = body["batchSize"].as_u64().map_or(1000, |b| b as usize).max(1);
            if norm == "FOR d IN @docs INSERT d INTO @@collection"
                && let Err(e) = insert_all(st, &db, &body["bindVars"])
            {
                return e;
            }
            // In a read-only transaction the query runs on its snapshot.
            let trx = req.headers.get("x-arango-trx-id").cloned();
            if let Some(t) = &trx
                && !st.trx.contains_key(t)
            {
                return err(404, 1655, "transaction not found");
            }
            let snap = trx.as_ref().and_then(|t| st.trx.get_mut(t)).and_then(|t| t.snapshot.take());
            let live = snap.map(|snap| swap_in(st, &db, snap));
            let rows = run_query(st, &db, &norm, &body["bindVars"]);
            if let (Some(live), Some(t)) = (live, &trx) {
                let snap = swap_in(st, &db, live);
                if let Some(t) = st.trx.get_mut(t) {
                    t.snapshot = Some(snap);
                }
            }
            let Some(rows) = rows else {
                return err(400, 1501, &format!("syntax error: the fake does not know the query {norm:?}"));
            };
            let id = st.id();
            st.cursors.insert(id.clone(), rows.into());
            st.cursor_batch.insert(id.clone(), batch);
            next_batch(st, &id, 201)
        }
        ("PUT" | "POST", ["_api", "cursor", id]) => {
            if !st.cursors.contains_key(*id) {
                return err(404, 1600, "cursor not found");
            }
            next_batch(st, id, 200)
        }
        _ => err(404, 404, &format!("unknown path {m} {}", req.path)),
    }
}

fn collection_info(name: &str, kind: u8) -> Value {
    json!({
        "error": false, "code": 200, "id": "1", "name": name, "globallyUniqueId": format!("g{name}"),
        "isSystem": false, "status": 3, "type": kind
    })
}

fn next_batch(st: &mut State, id: &str, code: u16) -> (u16, Value) {
    let batch = st.cursor_batch[id];
    let rows = st.cursors.get_mut(id).unwrap();
    let take: Vec<Value> = rows.drain(..batch.min(rows.len())).collect();
    let more = !rows.is_empty();
    if !more {
        st.cursors.remove(id);
        st.cursor_batch.remove(id);
    }
    let mut v = json!({ "error": false, "code": code, "result": take, "hasMore": more, "cached": false, "extra": { "warnings": [] } });
    if more {
        v["id"] = json!(id);
    }
    (code, v)
}

/// Put `docs` in place of the collections of `db` (those it names); returns what was there.
fn swap_in(st: &mut State, db: &str, mut docs: BTreeMap<String, Docs>) -> BTreeMap<String, Docs> {
    let colls = &mut st.databases.get_mut(db).unwrap().collections;
    for (name, c) in colls.iter_mut() {
        if let Some(d) = docs.get_mut(name) {
            std::mem::swap(&mut c.docs, d);
        }
    }
    docs
}

/// `FOR d IN @docs INSERT d INTO @@collection`: every document or none (one AQL query is
/// one transaction), refused with 409 (1210) when a `_key` exists.
fn insert_all(st: &mut State, db: &str, vars: &Value) -> Result<(), (u16, Value)> {
    let coll = vars["@collection"].as_str().unwrap_or_default().to_owned();
    let docs = vars["docs"].as_array().cloned().unwrap_or_default();
    let Some(c) = st.databases[db].collections.get(&coll) else {
        return Err(err(404, 1203, "collection or view not found"));
    };
    let is_edge = c.kind == 3;
    for d in &docs {
        let Some(k) = d["_key"].as_str() else { return Err(err(400, 1221, "illegal document key")) };
        if c.docs.contains_key(k) {
            return Err(err(409, 1210, "unique constraint violated - in index primary of type primary over '_key'"));
        }
        if is_edge && !(d["_from"].is_string() && d["_to"].is_string()) {
            return Err(err(400, 1233, "edge attribute missing or invalid"));
        }
    }
    let mut new = Vec::with_capacity(docs.len());
    for mut d in docs {
        let key = d["_key"].as_str().unwrap_or_default().to_owned();
        d["_id"] = json!(format!("{coll}/{key}"));
        d["_rev"] = json!(format!("_r{}", st.id()));
        new.push((key, d));
    }
    let c = st.databases.get_mut(db).unwrap().collections.get_mut(&coll).unwrap();
    c.docs.extend(new);
    Ok(())
}

/// The document as `trx` (if any) sees it.
fn visible(st: &State, db: &str, trx: Option<&str>, coll: &str, key: &str) -> Option<Value> {
    if let Some(t) = trx.and_then(|t| st.trx.get(t)) {
        if let Some(w) = t.writes.get(&(coll.to_owned(), key.to_owned())) {
            return w.clone();
        }
        if let Some(snap) = &t.snapshot {
            return snap.get(coll).and_then(|d| d.get(key)).cloned();
        }
    }
    st.databases[db].collections[coll].docs.get(key).cloned()
}

/// Whether a running transaction other than `me` has written `coll/key`.
fn locked_by_other(st: &State, me: Option<&str>, coll: &str, key: &str) -> bool {
    let k = (coll.to_owned(), key.to_owned());
    st.trx.iter().any(|(id, t)| Some(id.as_str()) != me && t.writes.contains_key(&k))
}

fn document(st: &mut State, req: &Req, db: &str, coll: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    if !st.databases[db].collections.contains_key(coll) {
        return err(404, 1203, "collection or view not found");
    }
    let trx = req.headers.get("x-arango-trx-id").cloned();
    if let Some(t) = &trx
        && !st.trx.contains_key(t)
    {
        return err(404, 1655, "transaction not found");
    }
    let trx = trx.as_deref();
    let m = req.method.as_str();
    let key = match (m, key) {
        ("POST", None) => match body["_key"].as_str() {
            Some(k) => k.to_owned(),
            None => st.id(),
        },
        (_, Some(k)) => k.to_owned(),
        _ => return err(405, 405, "method not supported"),
    };
    let current = visible(st, db, trx, coll, &key);
    let id = format!("{coll}/{key}");
    if m == "GET" {
        return match current {
            Some(d) => (200, d),
            None => err(404, 1202, "document not found"),
        };
    }
    if m == "POST" {
        if let Some(mode) = req.query.get("overwriteMode").filter(|m| m.as_str() != "conflict") {
            return err(400, 10, &format!("the fake does not implement overwriteMode={mode}"));
        }
        let overwrite = req.query.get("overwrite").is_some_and(|v| v == "true");
        if current.is_some() && !overwrite {
            return (
                409,
                json!({ "error": true, "code": 409, "errorNum": 1210, "errorMessage": "unique constraint violated - in index primary of type primary over '_key'", "_key": key }),
            );
        }
    } else {
        let Some(cur) = &current else { return err(404, 1202, "document not found") };
        if let Some(want) = req.headers.get("if-match")
            && cur["_rev"].as_str() != Some(want.trim_matches('"'))
        {
            return (
                412,
                json!({ "error": true, "code": 412, "errorNum": 1200, "errorMessage": "conflict, _rev values do not match", "_id": id, "_key": key, "_rev": cur["_rev"] }),
            );
        }
    }
    let is_edge = st.databases[db].collections[coll].kind == 3;
    let handle =
        |v: &Value| v.as_str().is_some_and(|h| h.split_once('/').is_some_and(|(c, k)| !c.is_empty() && !k.is_empty()));
    if m != "DELETE" && is_edge && !(handle(&body["_from"]) && handle(&body["_to"])) {
        return err(400, 1233, "edge attribute missing or invalid");
    }
    if locked_by_other(st, trx, coll, &key) {
        return err(409, 1200, "write-write conflict");
    }
    let new_doc = if m == "DELETE" {
        None
    } else {
        let mut d = body.clone();
        let rev = format!("_r{}", st.id());
        d["_key"] = json!(key);
        d["_id"] = json!(id);
        d["_rev"] = json!(rev);
        Some(d)
    };
    let old_rev = current.as_ref().map(|c| c["_rev"].clone());
    let new_rev = new_doc.as_ref().map(|d| d["_rev"].clone());
    match trx {
        Some(t) => {
            st.trx.get_mut(t).unwrap().writes.insert((coll.to_owned(), key.clone()), new_doc);
        }
        None => {
            let docs = &mut st.databases.get_mut(db).unwrap().collections.get_mut(coll).unwrap().docs;
            match new_doc {
                Some(d) => docs.insert(key.clone(), d),
                None => docs.remove(&key),
            };
        }
    }
    let mut out = json!({ "_id": id, "_key": key, "_rev": new_rev.clone().or(old_rev.clone()) });
    if m == "PUT" || (m == "POST" && old_rev.is_some()) {
        out["_oldRev"] = old_rev.unwrap_or(Value::Null);
    }
    (if m == "DELETE" { 200 } else { 201 }, out)
}

fn run_query(st: &mut State, db: &str, q: &str, vars: &Value) -> Option<Vec<Value>> {
    let s = |k: &str| vars[k].as_str().unwrap_or_default().to_owned();
    let n = |k: &str| vars[k].as_u64().unwrap_or(0);
    let docs = |st: &State, c: &str| -> Vec<Value> {
        st.databases[db].collections.get(c).map(|c| c.docs.values().cloned().collect()).unwrap_or_default()
    };
    let by = |a: &Value, b: &Value, f: &str| a[f].as_str().cmp(&b[f].as_str());
    match q {
        "FOR d IN cortex_documents FILTER d.tenant == @tenant AND d.collection == @collection AND STARTS_WITH(d.khex, @prefix) AND d.khex > @after SORT d.khex LIMIT @limit WINDOW { preceding: \"unbounded\", following: 0 } AGGREGATE used = SUM(d.size + LENGTH(d.khex) / 2) RETURN { key: d.key, rev: d.rev, value: used <= @budget OR used == d.size + LENGTH(d.khex) / 2 ? d.value : null }" =>
        {
            let (tenant, collection, prefix, after) = (s("tenant"), s("collection"), s("prefix"), s("after"));
            let mut rows: Vec<Value> = docs(st, "cortex_documents")
                .into_iter()
                .filter(|d| d["tenant"] == tenant.as_str() && d["collection"] == collection.as_str())
                .filter(|d| d["khex"].as_str().is_some_and(|k| k.starts_with(&prefix) && *k > *after.as_str()))
                .collect();
            rows.sort_by(|a, b| by(a, b, "khex"));
            // WINDOW { preceding: "unbounded", following: 0 }: a running sum over the rows.
            let size =
                |d: &Value| d["size"].as_u64().unwrap_or(0) + d["khex"].as_str().map_or(0, |k| k.len() as u64 / 2);
            let mut used = 0;
            Some(
                rows.into_iter()
                    .take(n("limit") as usize)
                    .map(|d| {
                        used += size(&d);
                        let value =
                            if used <= n("budget") || used == size(&d) { d["value"].clone() } else { Value::Null };
                        json!({ "key": d["key"], "rev": d["rev"], "value": value })
                    })
                    .collect(),
            )
        }
        "FOR r IN cortex_records FILTER r.kind == @kind AND STARTS_WITH(r.khex, @prefix) SORT r.khex RETURN { key: r.key, value: r.value, rev: r.rev }" =>
        {
            let (kind, prefix) = (s("kind"), s("prefix"));
            let mut rows: Vec<Value> = docs(st, "cortex_records")
                .into_iter()
                .filter(|r| r["kind"] == kind.as_str() && r["khex"].as_str().is_some_and(|k| k.starts_with(&prefix)))
                .collect();
            rows.sort_by(|a, b| by(a, b, "khex"));
            Some(rows.into_iter().map(|r| json!({ "key": r["key"], "value": r["value"], "rev": r["rev"] })).collect())
        }
        "FOR e IN cortex_feed FILTER e.stream == @stream SORT e.seq DESC LIMIT 1 RETURN e.seq" => {
            let stream = s("stream");
            let max = docs(st, "cortex_feed")
                .into_iter()
                .filter(|e| e["stream"] == stream.as_str())
                .filter_map(|e| e["seq"].as_u64())
                .max();
            Some(max.map(|m| json!(m)).into_iter().collect())
        }
        "FOR e IN cortex_feed FILTER e.stream == @stream AND e.seq > @since SORT e.seq LIMIT @limit RETURN { seq: e.seq, value: e.value }" =>
        {
            let (stream, since) = (s("stream"), n("since"));
            let mut rows: Vec<Value> = docs(st, "cortex_feed")
                .into_iter()
                .filter(|e| e["stream"] == stream.as_str() && e["seq"].as_u64().is_some_and(|q| q > since))
                .collect();
            rows.sort_by_key(|e| e["seq"].as_u64());
            Some(
                rows.into_iter()
                    .take(n("limit") as usize)
                    .map(|e| json!({ "seq": e["seq"], "value": e["value"] }))
                    .collect(),
            )
        }
        "LET removed = (FOR d IN cortex_documents FILTER d.tenant == @tenant REMOVE d IN cortex_documents RETURN 1) RETURN LENGTH(removed)" =>
        {
            let tenant = s("tenant");
            Some(vec![json!(remove_where(st, db, "cortex_documents", |d| d["tenant"] == tenant.as_str())?)])
        }
        "LET removed = (FOR e IN cortex_feed FILTER e.stream == @stream REMOVE e IN cortex_feed RETURN 1) RETURN LENGTH(removed)" =>
        {
            let stream = s("stream");
            Some(vec![json!(remove_where(st, db, "cortex_feed", |e| e["stream"] == stream.as_str())?)])
        }
        "LET removed = (FOR e IN cortex_feed FILTER e.stream == @stream AND e.seq <= @through REMOVE e IN cortex_feed RETURN 1) RETURN LENGTH(removed)" =>
        {
            let (stream, through) = (s("stream"), n("through"));
            let old = |e: &Value| e["stream"] == stream.as_str() && e["seq"].as_u64().is_some_and(|q| q <= through);
            Some(vec![json!(remove_where(st, db, "cortex_feed", old)?)])
        }
        "LET removed = (FOR e IN cortex_edges FILTER e.tenant == @tenant REMOVE e IN cortex_edges RETURN 1) RETURN LENGTH(removed)" =>
        {
            let tenant = s("tenant");
            Some(vec![json!(remove_where(st, db, "cortex_edges", |e| e["tenant"] == tenant.as_str())?)])
        }
        "LET removed = (FOR e IN cortex_edges FILTER e.tenant == @tenant AND (e._from == @vertex OR e._to == @vertex) REMOVE e IN cortex_edges RETURN OLD.size) RETURN { n: LENGTH(removed), bytes: SUM(removed) }" =>
        {
            let (tenant, vertex) = (s("tenant"), s("vertex"));
            let matches = |e: &Value| {
                e["tenant"] == tenant.as_str() && (e["_from"] == vertex.as_str() || e["_to"] == vertex.as_str())
            };
            let bytes: u64 =
                docs(st, "cortex_edges").iter().filter(|e| matches(e)).filter_map(|e| e["size"].as_u64()).sum();
            let n = remove_where(st, db, "cortex_edges", matches)?;
            Some(vec![json!({ "n": n, "bytes": bytes })])
        }
        "FOR e IN cortex_feed FILTER e.stream == @stream AND e.seq > @since SORT e.seq LIMIT @limit RETURN { seq: e.seq, collection: e.collection, key: e.key, op: e.op, rev: e.rev, agent: e.agent, trace: e.trace }" =>
        {
            let (stream, since) = (s("stream"), n("since"));
            let mut rows: Vec<Value> = docs(st, "cortex_feed")
                .into_iter()
                .filter(|e| e["stream"] == stream.as_str() && e["seq"].as_u64().is_some_and(|q| q > since))
                .collect();
            rows.sort_by_key(|e| e["seq"].as_u64());
            let pick = |e: Value| json!({ "seq": e["seq"], "collection": e["collection"], "key": e["key"], "op": e["op"], "rev": e["rev"], "agent": e["agent"], "trace": e["trace"] });
            Some(rows.into_iter().take(n("limit") as usize).map(pick).collect())
        }
        "FOR e IN cortex_edges FILTER e._from == @vertex AND e.tenant == @tenant AND (@kind == null OR e.kind == @kind) SORT e.kh, e.th LIMIT @limit WINDOW { preceding: \"unbounded\", following: 0 } AGGREGATE used = SUM(e.size) RETURN { from: e.from, to: e.to, kind: e.kind, attrs: used <= @budget OR used == e.size ? e.attrs : null }" => {
            Some(edges(docs(st, "cortex_edges"), vars, "_from", "th", None))
        }
        "FOR e IN cortex_edges FILTER e._to == @vertex AND e.tenant == @tenant AND (@kind == null OR e.kind == @kind) AND e._from != @skip SORT e.kh, e.fh LIMIT @limit WINDOW { preceding: \"unbounded\", following: 0 } AGGREGATE used = SUM(e.size) RETURN { from: e.from, to: e.to, kind: e.kind, attrs: used <= @budget OR used == e.size ? e.attrs : null }" => {
            Some(edges(docs(st, "cortex_edges"), vars, "_to", "fh", Some(s("skip"))))
        }
        "FOR d IN @@collection FILTER d._key > @after SORT d._key LIMIT @limit RETURN d" => {
            let (coll, after) = (s("@collection"), s("after"));
            let c = st.databases[db].collections.get(&coll)?;
            let after = std::ops::Bound::Excluded(after);
            Some(
                c.docs
                    .range((after, std::ops::Bound::Unbounded))
                    .take(n("limit") as usize)
                    .map(|(_, d)| d.clone())
                    .collect(),
            )
        }
        "FOR h IN cortex_feed FILTER h.head != null RETURN { head: h.head, seq: h.seq }" => Some(
            docs(st, "cortex_feed")
                .into_iter()
                .filter(|h| !h["head"].is_null())
                .map(|h| json!({ "head": h["head"], "seq": h["seq"] }))
                .collect(),
        ),
        "FOR d IN @@collection LIMIT 1 RETURN d._key" => {
            Some(docs(st, &s("@collection")).into_iter().take(1).map(|d| d["_key"].clone()).collect())
        }
        // Inserted by `insert_all` before: returns nothing.
        "FOR d IN @docs INSERT d INTO @@collection" => Some(Vec::new()),
        "RETURN SUM(FOR d IN cortex_documents FILTER d.tenant == @tenant RETURN d.size)" => {
            let tenant = s("tenant");
            let sum: u64 = docs(st, "cortex_documents")
                .iter()
                .filter(|d| d["tenant"] == tenant.as_str())
                .filter_map(|d| d["size"].as_u64())
                .sum();
            Some(vec![json!(sum)])
        }
        _ => None,
    }
}

/// Remove the documents of `coll` matching `f`; how many went.
fn remove_where(st: &mut State, db: &str, coll: &str, f: impl Fn(&Value) -> bool) -> Option<usize> {
    let coll = st.databases.get_mut(db)?.collections.get_mut(coll)?;
    let before = coll.docs.len();
    coll.docs.retain(|_, d| !f(d));
    Some(before - coll.docs.len())
}

/// The two neighbour queries: edges whose `end` (`_from` or `_to`) is `@vertex`, of
/// `@tenant`, of `@kind` unless it is null, whose `_from` is not `skip`, sorted by
/// `kh` then `other`, at most `@limit`; `attrs` only while the running sum of `size`
/// stays within `@budget` (or for the first row), `null` after.
fn edges(all: Vec<Value>, vars: &Value, end: &str, other: &str, skip: Option<String>) -> Vec<Value> {
    let mut rows: Vec<Value> = all
        .into_iter()
        .filter(|e| e[end] == vars["vertex"] && e["tenant"] == vars["tenant"])
        .filter(|e| vars["kind"].is_null() || e["kind"] == vars["kind"])
        .filter(|e| skip.as_deref().is_none_or(|s| e["_from"] != s))
        .collect();
    rows.sort_by(|a, b| (a["kh"].as_str(), a[other].as_str()).cmp(&(b["kh"].as_str(), b[other].as_str())));
    let limit = vars["limit"].as_u64().unwrap_or(0) as usize;
    let budget = vars["budget"].as_u64().unwrap_or(0);
    let mut used = 0;
    rows.into_iter()
        .take(limit)
        .map(|e| {
            let size = e["size"].as_u64().unwrap_or(0);
            used += size;
            let attrs = if used <= budget || used == size { e["attrs"].clone() } else { Value::Null };
            json!({ "from": e["from"], "to": e["to"], "kind": e["kind"], "attrs": attrs })
        })
        .collect()
}
