//! Properties of request-path normalisation: whatever a client sends, the
//! path that routes match is canonical, and matching on it cannot be
//! bypassed by another spelling of the same path.

use proptest::prelude::*;
use routes::path::normalize;

/// Paths built from the pieces that spell the same path in several ways.
fn spelled() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just("a".to_string()),
        Just("dmin".to_string()),
        Just("%61".to_string()),
        Just("%2e".to_string()),
        Just(".".to_string()),
        Just("%2F".to_string()),
        Just("%25".to_string()),
        Just("%c3%A9".to_string()),
        Just("%zz".to_string()),
        Just("%00".to_string()),
        Just("~".to_string()),
        Just("%7e".to_string()),
        "[a-z0-9_.-]{1,4}",
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #[test]
    fn normalized_paths_are_canonical(raw in spelled()) {
        if let Ok(n) = normalize(&raw) {
            // Idempotent: the forwarded path normalises to itself.
            let again = normalize(&n);
            prop_assert_eq!(again.as_deref(), Ok(&*n));
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"));
            // No escape of an unreserved character survives, no encoded slash.
            let lower = n.to_ascii_lowercase();
            for esc in ["%61", "%2e", "%7e", "%2f", "%5c", "%00"] {
                prop_assert!(!lower.contains(esc), "{} in {}", esc, n);
            }
            prop_assert!(!routes::path::has_dot_segment(&n));
        }
    }

    #[test]
    fn a_prefix_cannot_be_dodged_by_spelling(raw in spelled()) {
        // If the app would decode the path to something under /admin/,
        // the normalised path is under /admin/ too (or is refused).
        let decoded = percent_decode(&raw);
        if let (Some(d), Ok(n)) = (decoded, normalize(&raw)) {
            let merged = merge_slashes(&d);
            prop_assert_eq!(merged.starts_with("/admin/"), n.starts_with("/admin/"), "{} -> {}", raw, n);
        }
    }
}

/// What an app does with a path: decode every escape.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn merge_slashes(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}
