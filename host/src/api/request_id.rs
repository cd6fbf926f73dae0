//! The request id: every response carries it as `x-request-id`, every problem+json body as
//! `request_id`, and the request's log span as `request_id`. A client may choose it by
//! sending a sane `x-request-id` (1 to [`MAX_LEN`] visible ASCII characters); any other
//! value is ignored and the server makes one (`<pid hex>-<sequence hex>`).

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::ids::RequestId;

/// The header carrying a request's id, in both directions.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id a client may choose.
pub const MAX_LEN: usize = 128;

tokio::task_local! {
    /// The id of the request this task answers (set by [`scope`]).
    static CURRENT: HeaderValue;
}

/// Is `v` an id a client may choose: 1 to [`MAX_LEN`] visible ASCII characters (no space, no
/// control character)?
pub fn sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// The id of a request with `headers`: the client's own if [`sane`], else a new one.
pub fn of_request(headers: &HeaderMap) -> HeaderValue {
    match headers.get(REQUEST_ID) {
        Some(v) if sane(v) => v.clone(),
        _ => RequestId::next().header_value(),
    }
}

/// Run `fut` as the answer to the request with id `id`: the problems it makes carry it.
pub async fn scope<F: Future>(id: HeaderValue, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// The id of the request the current task answers, if it runs within [`scope`].
pub fn current() -> Option<String> {
    CURRENT.try_with(|v| v.to_str().ok().map(str::to_owned)).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_visible_ascii_ids_are_accepted() {
        let ok = |s: &str| sane(&HeaderValue::from_str(s).unwrap());
        assert!(ok("abc-123_X.y:z/="));
        assert!(ok(&"a".repeat(MAX_LEN)));
        assert!(!ok(&"a".repeat(MAX_LEN + 1)));
        assert!(!ok(""));
        assert!(!ok("a b"));
        assert!(!sane(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()));
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("mine-1"));
        assert_eq!(of_request(&h), "mine-1");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(of_request(&h), "has space");
        assert!(sane(&of_request(&HeaderMap::new())));
    }

    #[tokio::test]
    async fn problems_made_within_a_scope_carry_its_id() {
        assert_eq!(current(), None);
        let id = scope(HeaderValue::from_static("req-7"), async { current() }).await;
        assert_eq!(id.as_deref(), Some("req-7"));
    }
}
