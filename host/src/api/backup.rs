//! `GET /v1/admin/backup` (platform-admin): the whole store as a backup file (see
//! [`crate::store::backup`]), streamed from one consistent snapshot taken when the request
//! arrives, while the node goes on serving. `x-cortex-snapshot` gives the snapshot point;
//! the file's header has it too, with every tenant's change-feed head.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::{ApiError, ApiResult};
use super::{AppState, Caller};

/// The header carrying the snapshot point.
pub const SNAPSHOT_HEADER: &str = "x-cortex-snapshot";

/// Bytes sent per chunk of the stream.
const CHUNK: usize = 256 << 10;

/// A `Write` that sends full chunks down a channel (from a blocking thread).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

pub async fn backup(State(st): State<Arc<AppState>>, p: Caller) -> ApiResult<Response> {
    let Some(snap) = st.registry.store().snapshot().await? else {
        return Err(ApiError::Conflict {
            code: "backup_unsupported",
            message: "this store backend has no snapshot (see README \"Backups\")".into(),
        });
    };
    let info = snap.info().clone();
    // A read of every tenant's data: in the platform's audit log, as writes are.
    let event = crate::registry::AuditEvent {
        seq: 0,
        time_ms: crate::registry::now_ms(),
        actor: p.subject.to_string(),
        tenant: String::new(),
        tenant_id: String::new(),
        action: "GET /v1/admin/backup".into(),
        target: "/v1/admin/backup".into(),
        outcome: 200,
        detail: info.header_value(),
    };
    st.registry.audit(&event).await?;
    tracing::info!(registry_seq = info.registry_seq, tenants = info.feed_heads.len(), "backup started");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        match snap.write_to(&mut w).and_then(|n| w.send().map(|()| n).map_err(Into::into)) {
            Ok(n) => tracing::info!(bytes = n, "backup written"),
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                // The stream ends with an error: the client sees a cut-off file.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&info.header_value()) {
        h.insert(SNAPSHOT_HEADER, v);
    }
    Ok(resp)
}
