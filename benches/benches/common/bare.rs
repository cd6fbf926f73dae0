//! The bare peer of the HTTP benches: hyper's HTTP/1.1 server and wasmtime-wasi-http serving a
//! wasi:http component, tuned, with nothing else (no auth, no metrics, no logs).

use hyper::server::conn::http1;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use cortex_host::runtime::EngineConfig;

/// The bare peer: hyper's HTTP/1.1 server and wasmtime-wasi-http serving the wasi:http
/// component at `wasm` on 127.0.0.1, with Cortex's wasmtime configuration (fuel and epochs
/// on: each store gets fuel and a deadline it never reaches) and nothing else.
#[allow(dead_code)] // http_profile serves a cached component instead
pub async fn bare_server(wasm: &str) -> std::net::SocketAddr {
    let engine = bare_engine(&EngineConfig::default());
    let component = Component::from_file(&engine, wasm).unwrap();
    serve_component(&engine, &component).await
}

/// An engine with Cortex's wasmtime configuration for `cfg`.
pub fn bare_engine(cfg: &EngineConfig) -> Engine {
    Engine::new(&cortex_host::runtime::wasmtime_config(cfg)).unwrap()
}

/// Serve `component` on 127.0.0.1 (an ephemeral port) until the process ends.
pub async fn serve_component(engine: &Engine, component: &Component) -> std::net::SocketAddr {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    let pre = ProxyPre::new(linker.instantiate_pre(component).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { continue };
            let _ = conn.set_nodelay(true);
            let pre = pre.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| bare_handle(pre.clone(), req));
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(conn), service).await;
            });
        }
    });
    addr
}

async fn bare_handle(
    pre: ProxyPre<BareState>,
    req: hyper::Request<hyper::body::Incoming>,
) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
    let state = BareState {
        table: ResourceTable::new(),
        wasi: WasiCtx::builder().build(),
        http: WasiHttpCtx::new(),
        hooks: NoOutgoing,
    };
    let mut store = Store::new(pre.engine(), state);
    store.set_fuel(u64::MAX)?;
    store.set_epoch_deadline(u64::from(u32::MAX));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    // The guest may go on writing the body after it has sent the head: run it beside.
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
    });
    match receiver.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(wasmtime::Error::msg("guest never set the response")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        },
    }
}

struct BareState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoOutgoing,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for BareState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Hooks without outgoing requests (wasmtime-wasi-http's `default-send-request` feature
/// would pull in rustls); the hello component never sends any.
struct NoOutgoing;

impl WasiHttpHooks for NoOutgoing {
    fn send_request(
        &mut self,
        _request: hyper::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        hyper::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}
