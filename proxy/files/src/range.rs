//! `Range: bytes=…` parsing (RFC 9110 §14.1.2) for a single range.
//!
//! Multiple ranges are not served as `multipart/byteranges`: the whole
//! representation is sent with 200 (permitted: a server MAY ignore Range).

/// What to do with a Range header for a representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeDecision {
    /// Ignore the header: serve the full representation (200).
    Full,
    /// Serve `start..=end` (206).
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides on a raw Range header value. Syntax errors, unknown units and
/// multiple ranges yield [`RangeDecision::Full`].
pub(crate) fn decide(value: &str, len: u64) -> RangeDecision {
    let value = value.trim();
    let Some((unit, set)) = value.split_once('=') else {
        return RangeDecision::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeDecision::Full;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [spec] = specs.as_slice() else {
        return RangeDecision::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeDecision::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (num(first), num(last)) {
        // bytes=-n: the last n bytes
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                RangeDecision::Unsatisfiable
            } else {
                RangeDecision::Partial {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        // bytes=a-
        (Some(a), None) if last.is_empty() => open_ended(a, len),
        // bytes=a-b
        (Some(a), Some(b)) if a <= b => {
            if a >= len {
                RangeDecision::Unsatisfiable
            } else {
                RangeDecision::Partial {
                    start: a,
                    end: b.min(len - 1),
                }
            }
        }
        _ => RangeDecision::Full,
    }
}

fn open_ended(a: u64, len: u64) -> RangeDecision {
    if a >= len {
        RangeDecision::Unsatisfiable
    } else {
        RangeDecision::Partial {
            start: a,
            end: len - 1,
        }
    }
}

/// Digits only (no sign, no spaces); overflow counts as invalid.
fn num(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::RangeDecision::*;
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(decide("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(decide("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(decide("bytes=10-", 100), Partial { start: 10, end: 99 });
        assert_eq!(decide("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(decide("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(decide("Bytes = 5-5", 100), Partial { start: 5, end: 5 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(decide("bytes=100-", 100), Unsatisfiable);
        assert_eq!(decide("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(decide("bytes=-0", 100), Unsatisfiable);
        assert_eq!(decide("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for v in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "items=0-1",
            "0-1",
            "bytes=+1-2",
            "bytes=0-1,5-6",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(decide(v, 100), Full, "{v}");
        }
    }
}
