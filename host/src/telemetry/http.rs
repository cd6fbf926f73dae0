//! The labels of HTTP request metrics: the route as its template (`/v1/agents/{name}`, never
//! the path asked for, whose values are unbounded), a fixed label for paths no route matches,
//! and the method folded to the standard ones.

use std::sync::{Arc, OnceLock};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;

/// The route label of a request no route matched (404s of unknown paths).
pub const UNMATCHED: &str = "unmatched";

/// The route label of the invocation route, which the server's fast path answers without
/// the router.
pub const INVOKE_ROUTE: &str = "/v1/agents/{name}/invoke";

/// Where the router puts the route template it matched a request on, for the server's
/// request metrics (see [`tag_route`]); empty when no route matched. Inserted by the server
/// into each request it routes: the label is known even when the server answers in the
/// route's place (a request cut at its deadline).
#[derive(Clone, Debug, Default)]
pub struct RouteSlot(Arc<OnceLock<MatchedPath>>);

impl RouteSlot {
    /// The route label: the template matched, or [`UNMATCHED`].
    pub fn label(&self) -> &str {
        self.0.get().map_or(UNMATCHED, MatchedPath::as_str)
    }
}

/// A router layer (`axum::middleware::from_fn`) that puts the route template the router
/// matched into the request's [`RouteSlot`], if it has one.
pub async fn tag_route(req: Request, next: axum::middleware::Next) -> Response {
    if let (Some(slot), Some(route)) = (req.extensions().get::<RouteSlot>(), req.extensions().get::<MatchedPath>()) {
        let _ = slot.0.set(route.clone());
    }
    next.run(req).await
}

/// The method label: the standard methods by name, anything else `other`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The status label: the code as three digits (a few dozen values at most).
pub fn status_label(status: u16) -> &'static str {
    status.checked_sub(100).and_then(|i| STATUS_TEXT.get(usize::from(i))).copied().unwrap_or("other")
}

/// "100" to "599", as static strings.
const STATUS_TEXT: [&str; 500] = status_text();

const fn status_text() -> [&'static str; 500] {
    // Built from one static buffer of all codes, three bytes each.
    const DIGITS: &[u8; 1500] = &all_codes();
    let mut out = [""; 500];
    let mut i = 0;
    while i < 500 {
        let (_, rest) = DIGITS.split_at(i * 3);
        let (code, _) = rest.split_at(3);
        out[i] = match std::str::from_utf8(code) {
            Ok(s) => s,
            Err(_) => "other",
        };
        i += 1;
    }
    out
}

const fn all_codes() -> [u8; 1500] {
    let mut b = [0u8; 1500];
    let mut i = 0;
    while i < 500 {
        let code = i + 100;
        b[i * 3] = b'0' + (code / 100) as u8;
        b[i * 3 + 1] = b'0' + (code / 10 % 10) as u8;
        b[i * 3 + 2] = b'0' + (code % 10) as u8;
        i += 1;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_methods_have_bounded_labels() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(404), "404");
        assert_eq!(status_label(599), "599");
        assert_eq!(status_label(100), "100");
        assert_eq!(status_label(600), "other");
        assert_eq!(status_label(42), "other");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
