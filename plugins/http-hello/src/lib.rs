//! A wasi:http proxy component, not an agent: answers every request with 200 and
//! `Hello, world!`. The `http_load` bench serves it with bare hyper + wasmtime-wasi-http
//! (and with `wasmtime serve`) as the peers of Cortex's HTTP invoke of `hello`.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct HttpHello;

impl Guest for HttpHello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("body taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let out = body.write().expect("stream taken once");
        out.blocking_write_and_flush(b"Hello, world!").expect("write body");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

wasi::http::proxy::export!(HttpHello);
