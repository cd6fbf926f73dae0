//! `egress-client` (world `agent` + `wasi:http/outgoing-handler`): makes the HTTP requests
//! its input describes and answers what came back, for the egress tests.
//!
//! Input: `{"method": "POST", "url": "http://host:port/path", "headers": [["k", "v"]],
//! "body": "text", "body_bytes": 0, "parallel": 1, "repeat": 1}`. Output: one JSON object per request
//! (an array when `parallel` > 1): `{"status": 200, "headers": [["k", "v"]], "body": "..."}`,
//! or `{"error": "<the wasi:http error-code>"}`, or a status with `"body_error"` when the
//! body failed midway.

use cortex_agent::{Agent, AgentError};
use serde::Deserialize;
use serde_json::{Value, json};
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasi::io::streams::StreamError;

#[derive(Deserialize)]
struct Req {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_bytes: usize,
    #[serde(default = "one")]
    parallel: usize,
    /// Make the request this many times one after the other (the bench); the answer is
    /// the last one's.
    #[serde(default = "one")]
    repeat: usize,
}

fn get() -> String {
    "GET".into()
}

fn one() -> usize {
    1
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.into()),
    }
}

fn start(r: &Req) -> Result<FutureIncomingResponse, String> {
    let (scheme, rest) = r.url.split_once("://").ok_or("no scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let list: Vec<(String, Vec<u8>)> = r.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    let headers = Fields::from_list(&list).map_err(|e| format!("header: {e:?}"))?;
    let req = OutgoingRequest::new(headers);
    req.set_method(&method(&r.method)).map_err(|()| "method")?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.into()),
    };
    req.set_scheme(Some(&scheme)).map_err(|()| "scheme")?;
    req.set_authority(Some(authority)).map_err(|()| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let body = req.body().map_err(|()| "body")?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    let mut payload = r.body.clone().unwrap_or_default().into_bytes();
    payload.extend(std::iter::repeat_n(b'x', r.body_bytes));
    {
        let out = body.write().map_err(|()| "write")?;
        for chunk in payload.chunks(4096) {
            if let Err(e) = out.blocking_write_and_flush(chunk) {
                // The host stopped taking the body (a limit): the response tells why.
                let _ = e;
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
    Ok(future)
}

/// The error code as its variant's name (`HttpRequestDenied`, `HttpResponseBodySize(..)`).
fn code(e: &ErrorCode) -> String {
    format!("{e:?}").trim_start_matches("ErrorCode::").to_owned()
}

fn finish(f: FutureIncomingResponse) -> Value {
    f.subscribe().block();
    let resp = match f.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return json!({ "error": code(&e) }),
        Some(Err(())) | None => return json!({ "error": "no response" }),
    };
    let status = resp.status();
    let headers: Vec<(String, String)> = resp
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let Ok(body) = resp.consume() else { return json!({ "status": status, "headers": headers }) };
    let Ok(stream) = body.stream() else { return json!({ "status": status, "headers": headers }) };
    let mut data = Vec::new();
    let mut body_error = None;
    loop {
        match stream.blocking_read(65536) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                // wasmtime-wasi-http 48 hands body errors to the guest as untyped I/O
                // errors: their first line says which.
                body_error = Some(wasi::http::types::http_error_code(&e).map_or_else(
                    || e.to_debug_string().lines().next().unwrap_or_default().to_owned(),
                    |c| code(&c),
                ));
                break;
            }
        }
    }
    let mut v = json!({ "status": status, "headers": headers, "body": String::from_utf8_lossy(&data) });
    if let Some(e) = body_error {
        v["body_error"] = json!(e);
    }
    v
}

struct Client;

impl Agent for Client {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let r: Req = serde_json::from_slice(&input)?;
        for _ in 1..r.repeat.max(1) {
            match start(&r) {
                Ok(f) => drop(finish(f)),
                Err(e) => return Err(AgentError::internal(e)),
            }
        }
        let mut started = Vec::new();
        for _ in 0..r.parallel.max(1) {
            started.push(start(&r));
        }
        let results: Vec<Value> = started
            .into_iter()
            .map(|s| match s {
                Ok(f) => finish(f),
                Err(e) => json!({ "error": e }),
            })
            .collect();
        let out = if results.len() == 1 { results[0].clone() } else { Value::Array(results) };
        Ok(Some(serde_json::to_vec(&out).map_err(|e| AgentError::internal(e.to_string()))?))
    }
}

cortex_agent::export_agent!(Client);
