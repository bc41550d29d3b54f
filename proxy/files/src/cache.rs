//! `Cache-Control` policy: immutable for content-hashed names, short max-age
//! with ETag revalidation for everything else (Whitenoise semantics).

use std::time::Duration;

/// The `Cache-Control` value for a file named `file_name`.
pub(crate) fn cache_control(
    file_name: &str,
    immutable_hashed: bool,
    max_age: Duration,
    immutable_max_age: Duration,
) -> String {
    if immutable_hashed && is_hashed(file_name) {
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
pub(crate) fn is_hashed(file_name: &str) -> bool {
    let parts: Vec<&str> = file_name.split('.').collect();
    let Some((_ext, rest)) = parts.split_last() else {
        return false;
    };
    rest.iter().any(|seg| {
        (8..=32).contains(&seg.len())
            && seg.bytes().all(|b| b.is_ascii_hexdigit())
            && seg.bytes().any(|b| b.is_ascii_alphabetic())
    })
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
        ] {
            assert!(!is_hashed(no), "{no}");
        }
    }

    #[test]
    fn header_values() {
        let (s60, y) = (Duration::from_secs(60), Duration::from_secs(31_536_000));
        assert_eq!(
            cache_control("a.3f2a9c81b7d4.css", true, s60, y),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            cache_control("a.3f2a9c81b7d4.css", false, s60, y),
            "public, max-age=60, must-revalidate"
        );
        assert_eq!(
            cache_control("a.css", true, s60, y),
            "public, max-age=60, must-revalidate"
        );
    }
}
