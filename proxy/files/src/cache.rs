//! `Cache-Control` policy: immutable for content-hashed names, short max-age
//! with ETag revalidation for everything else (Whitenoise semantics).

use std::time::Duration;

/// Which file names carry a content hash (and so are cached as immutable):
/// a regular expression matched against the file name (the last path
/// component, e.g. `index-BdX3k9aQ.js`), anywhere unless anchored.
#[derive(Debug, Clone)]
pub struct HashPattern(regex::Regex);

impl HashPattern {
    /// Compiles `pattern` (the `regex` crate's syntax; at most 64 KiB
    /// compiled, so a config cannot make matching slow or large).
    pub fn new(pattern: &str) -> Result<HashPattern, String> {
        regex::RegexBuilder::new(pattern)
            .size_limit(1 << 16)
            .build()
            .map(HashPattern)
            .map_err(|e| match e {
                regex::Error::Syntax(s) => {
                    format!("invalid pattern: {}", s.lines().last().unwrap_or(&s))
                }
                other => format!("invalid pattern: {other}"),
            })
    }

    /// True when `file_name` matches.
    pub fn matches(&self, file_name: &str) -> bool {
        self.0.is_match(file_name)
    }
}

/// The `Cache-Control` value for a file named `file_name`. `pattern`
/// replaces the built-in recognition of hashed names ([`is_hashed`]).
pub(crate) fn cache_control(
    file_name: &str,
    immutable_hashed: bool,
    pattern: Option<&HashPattern>,
    max_age: Duration,
    immutable_max_age: Duration,
) -> String {
    let hashed = match pattern {
        Some(p) => p.matches(file_name),
        None => immutable_hashed && is_hashed(file_name),
    };
    if hashed {
        format!("public, max-age={}, immutable", immutable_max_age.as_secs())
    } else {
        format!("public, max-age={}, must-revalidate", max_age.as_secs())
    }
}

/// Whether a file name carries a content hash: some dot-separated segment
/// other than the last (the extension) is 8–32 hex digits including at least
/// one letter. Covers Django's ManifestStaticFilesStorage (`app.3f2a9c81b7d4.css`,
/// also `app.3f2a9c81b7d4.css.map`), webpack `name.[contenthash].js` and
/// `[hash][ext]` assets. Requiring a letter keeps dates and version numbers
/// (`report.20240101.pdf`) out; an all-digit hash (rare) just gets the short
/// max-age.
///
/// Also Vite/Rollup's `[name]-[hash].[ext]` (`index-BdX3k9aQ.js`): a
/// segment other than the last ending in `-` and 8 characters of
/// `[A-Za-z0-9_-]`, with an upper-case letter or a digit after the first
/// of them, so words (`my-document.pdf`, `site-Overview.css`) stay out.
pub(crate) fn is_hashed(file_name: &str) -> bool {
    let mut parts = file_name.split('.');
    let Some(first) = parts.next() else {
        return false;
    };
    // Every segment but the last (the extension).
    let mut prev = first;
    for seg in parts {
        if is_hex_hash(prev) || is_dash_hash(prev) {
            return true;
        }
        prev = seg;
    }
    false
}

/// 8–32 hex digits, at least one a letter (Django, webpack).
fn is_hex_hash(seg: &str) -> bool {
    (8..=32).contains(&seg.len())
        && seg.bytes().all(|b| b.is_ascii_hexdigit())
        && seg.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `name-XXXXXXXX` with a base64url-ish 8-character hash (Vite, Rollup).
fn is_dash_hash(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.len() < 10 || b[b.len() - 9] != b'-' {
        return false;
    }
    let hash = &b[b.len() - 8..];
    hash.iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        && hash[1..]
            .iter()
            .any(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names() {
        for yes in [
            "app.3f2a9c81b7d4.css",
            "app.3f2a9c81b7d4.css.map",
            "main.8e0d2f6b.js",
            "vendor.0123456789abcdef0123456789abcdef.js",
            "a3f5c9d2e1b4c6d7e8f9.woff2",
            "1234.abcdef0123.chunk.js",
            "chunk.5f3a2b1c.js",
            "index-BdX3k9aQ.js",
            "vendor-D4tB8sFz.css",
            "index-BdX3k9aQ.js.map",
            "logo-a1b2c3d4.svg",
            "my-app-C_x-9kLm.js",
        ] {
            assert!(is_hashed(yes), "{yes}");
        }
        for no in [
            "app.css",
            "3f2a9c81b7d4",
            "app.css.3f2a9c81b7d4",
            "report.20240101.pdf",
            "app.3f2a9c8.css",
            "app.0123456789abcdef0123456789abcdef0.js",
            "app.3f2a9c81b7dz.css",
            ".3f2a9c81b7d4",
            "",
            "my-document.pdf",
            "site-Overview.css",
            "index-BdX3k9aQ",
            "-BdX3k9aQ.js",
            "index-BdX3k9a.js",
            "index-BdX3k9aQ!.js",
        ] {
            assert!(!is_hashed(no), "{no}");
        }
    }

    #[test]
    fn header_values() {
        let (s60, y) = (Duration::from_secs(60), Duration::from_secs(31_536_000));
        assert_eq!(
            cache_control("a.3f2a9c81b7d4.css", true, None, s60, y),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            cache_control("a.3f2a9c81b7d4.css", false, None, s60, y),
            "public, max-age=60, must-revalidate"
        );
        assert_eq!(
            cache_control("a.css", true, None, s60, y),
            "public, max-age=60, must-revalidate"
        );
    }

    #[test]
    fn a_pattern_replaces_the_built_in_rule() {
        let (s60, y) = (Duration::from_secs(60), Duration::from_secs(31_536_000));
        let p = HashPattern::new(r"^[a-z]+_v[0-9]+\.(js|css)$").unwrap();
        assert!(p.matches("app_v12.js"));
        assert!(!p.matches("app_v12.js.map"));
        assert_eq!(
            cache_control("app_v12.css", false, Some(&p), s60, y),
            "public, max-age=31536000, immutable"
        );
        // Django's names are no longer recognised with a pattern that does not say so.
        assert_eq!(
            cache_control("a.3f2a9c81b7d4.css", true, Some(&p), s60, y),
            "public, max-age=60, must-revalidate"
        );
        for bad in ["(", "a{99999}{99999}", "[z-a]"] {
            let e = HashPattern::new(bad).unwrap_err();
            assert!(e.starts_with("invalid pattern"), "{bad}: {e}");
        }
    }
}
