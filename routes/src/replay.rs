//! When a request may be sent to the upstream again after an attempt
//! failed: one pure rule for every path (the lane's HTTP/1.1 and HTTP/2
//! clients, and Pingora's path through `Edge::error_while_proxy`).
//!
//! A request that provably never left (the connection could not be made,
//! or not one byte of it was written) may always be tried again. Once any
//! of it may have reached the upstream, a replay can make the application
//! act twice (RFC 9110 §9.2.2: a proxy must not retry non-idempotent
//! requests automatically). The rule is stricter than the RFC's idempotent
//! set and than nginx's `proxy_next_upstream` default (which replays all but
//! POST, LOCK and PATCH): only the safe methods GET, HEAD, OPTIONS and TRACE
//! are replayed. PUT and DELETE are idempotent by definition, but an
//! application's handler often is not (a DELETE reaching it twice answered
//! 404 the second time, or deleted what a concurrent request had created),
//! so they get a 502 like POST, PATCH and unknown methods.

/// True when a request with `method` (its exact, case-sensitive token) may
/// be sent again after it may have reached the upstream.
pub fn may_replay(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// The method of an HTTP/1.1 request head (`METHOD SP target …`).
pub fn method_of(head: &[u8]) -> &[u8] {
    let end = head.iter().position(|b| *b == b' ').unwrap_or(head.len());
    &head[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_methods_are_replayed() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(may_replay(m.as_bytes()), "{m}");
        }
        for m in [
            "POST", "PATCH", "PUT", "DELETE", "LOCK", "CONNECT", "PURGE", "FOO", "get", "", "GETX",
        ] {
            assert!(!may_replay(m.as_bytes()), "{m}");
        }
    }

    #[test]
    fn the_method_is_read_off_the_request_line() {
        assert_eq!(method_of(b"POST /x HTTP/1.1\r\n\r\n"), b"POST");
        assert_eq!(method_of(b"GET / HTTP/1.1\r\n"), b"GET");
        assert!(!may_replay(method_of(b"")));
        assert!(!may_replay(method_of(b"GETX / HTTP/1.1\r\n")));
    }
}
