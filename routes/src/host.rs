//! Host names and host patterns (`example.com`, `*.example.com`, `*`).

/// Checks a lowercased host pattern from the config.
pub fn check_pattern(h: &str) -> Result<(), String> {
    if h == "*" {
        return Ok(());
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{h:?} is not a host name"));
    }
    if h.contains(':') {
        return Err(format!(
            "{h:?}: hosts are matched without a port; remove it"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{h:?} is not a host name (use \"example.com\", \"*.example.com\" or \"*\")"
            ));
        }
    }
    Ok(())
}

/// The host part of a `Host` header or `:authority`: strips the port and a
/// trailing dot. IPv6 literals keep their brackets.
pub fn strip_port(authority: &str) -> &str {
    let h = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rfind(':') {
            Some(i) => &authority[..i],
            None => authority,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for ok in [
            "example.com",
            "*.example.com",
            "*",
            "localhost",
            "a-b.c_d.io",
        ] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "exa mple.com",
            "*.",
            "**.x",
            "x..y",
            "-a.com",
            "a.com:80",
            "ex*ample.com",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com."), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
