//! Request-path hygiene applied before routing.

/// True if `path` has a `.` or `..` segment, written plainly or with
/// percent-encoded dots (`%2e`, `.%2E`, …).
///
/// Routing matches path prefixes, so `/public/../admin/` would match a
/// `/public/` route while an upstream that resolves dot segments serves
/// `/admin/`, past that route's basic auth or allow list. Browsers and HTTP
/// libraries remove dot segments before sending, so such paths are refused.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(is_dot_segment)
}

fn is_dot_segment(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() || b.len() > 6 {
        return false;
    }
    let mut dots = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%'
            && b.get(i + 1) == Some(&b'2')
            && matches!(b.get(i + 2), Some(b'e' | b'E'))
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots <= 2
}

#[cfg(test)]
mod tests {
    use super::has_dot_segment;

    #[test]
    fn dot_segments_in_any_spelling_are_found() {
        for p in [
            "/public/../admin/",
            "/..",
            "/a/./b",
            "/a/.",
            "/%2e%2e/admin",
            "/a/.%2E/b",
            "/a/%2E./b",
            "/a/%2e/b",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/",
            "/static/app.3f2a9c81b7d4.css",
            "/a/.well-known/x",
            "/.well-known/acme-challenge/tok",
            "/a/...",
            "/a/..b",
            "/a/b..",
            "/%2e%2e%2e",
            "/a//b",
            "",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }
}
