//! `model-caller` (world `agent` + `wasi:http/outgoing-handler`): the example of calling a
//! model API through an egress grant. Its input is a prompt; it POSTs an OpenAI-compatible
//! chat completion to `<base_url>/chat/completions` and answers the reply's text.
//!
//! It sends no credentials: the grant names the tenant's secret and the host puts it in
//! the `authorization` header on the way out. Deploy it with
//!
//! ```json
//! { "name": "ask", "module": "model-caller",
//!   "config": { "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini" },
//!   "egress": [{ "url": "https://api.openai.com/v1/chat/completions", "methods": ["POST"],
//!                "secret": "openai", "header": "authorization", "format": "Bearer {}",
//!                "meter": "openai" }] }
//! ```
//!
//! Config: `base_url` (default `https://api.openai.com/v1`), `model` (default
//! `gpt-4o-mini`). Errors: `egress-denied` and the other wasi:http error codes as
//! `http-<code>`, `http-status` for a non-2xx answer (its body in the message),
//! `bad-reply` for an answer without a message.

use cortex_agent::{Agent, AgentError, config};
use serde_json::{Value, json};
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

fn http_error(e: &ErrorCode) -> AgentError {
    match e {
        ErrorCode::HttpRequestDenied => AgentError::new("egress-denied", "no egress grant allows this request"),
        other => AgentError::new("http-error", format!("{other:?}")),
    }
}

/// POST `body` as JSON to `url`; the status and the answer's body.
fn post_json(url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), AgentError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| AgentError::bad_input("base_url has no scheme"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let headers = Fields::from_list(&[("content-type".into(), b"application/json".to_vec())])
        .map_err(|e| AgentError::internal(format!("{e:?}")))?;
    let req = OutgoingRequest::new(headers);
    let scheme = if scheme == "http" { Scheme::Http } else { Scheme::Https };
    let bad = |_| AgentError::bad_input("base_url is not a URL");
    req.set_method(&Method::Post).map_err(bad)?;
    req.set_scheme(Some(&scheme)).map_err(bad)?;
    req.set_authority(Some(authority)).map_err(bad)?;
    req.set_path_with_query(Some(path)).map_err(bad)?;
    let out = req.body().map_err(|()| AgentError::internal("request body taken twice"))?;
    let future = outgoing_handler::handle(req, None).map_err(|e| http_error(&e))?;
    {
        let stream = out.write().map_err(|()| AgentError::internal("body stream taken twice"))?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| AgentError::internal(format!("{e:?}")))?;
        }
    }
    OutgoingBody::finish(out, None).map_err(|e| http_error(&e))?;
    future.subscribe().block();
    let resp = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(http_error(&e)),
        _ => return Err(AgentError::internal("no response")),
    };
    let status = resp.status();
    let incoming = resp.consume().map_err(|()| AgentError::internal("body taken twice"))?;
    let stream = incoming.stream().map_err(|()| AgentError::internal("body stream taken twice"))?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(65536) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(match wasi::http::types::http_error_code(&e) {
                    Some(code) => http_error(&code),
                    None => AgentError::new(
                        "http-error",
                        e.to_debug_string().lines().next().unwrap_or_default().to_owned(),
                    ),
                });
            }
        }
    }
    Ok((status, data))
}

struct ModelCaller;

impl Agent for ModelCaller {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let prompt = String::from_utf8(input)?;
        let base = config("base_url").unwrap_or_else(|| "https://api.openai.com/v1".into());
        let model = config("model").unwrap_or_else(|| "gpt-4o-mini".into());
        let body = json!({ "model": model, "messages": [{ "role": "user", "content": prompt }] });
        let (status, reply) = post_json(&format!("{}/chat/completions", base.trim_end_matches('/')), body.to_string().as_bytes())?;
        if !(200..300).contains(&status) {
            return Err(AgentError::new("http-status", format!("{status}: {}", String::from_utf8_lossy(&reply))));
        }
        let v: Value = serde_json::from_slice(&reply)?;
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| AgentError::new("bad-reply", "the answer has no choices[0].message.content"))?;
        Ok(Some(text.as_bytes().to_vec()))
    }
}

cortex_agent::export_agent!(ModelCaller);
