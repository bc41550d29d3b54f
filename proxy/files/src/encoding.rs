//! Accept-Encoding negotiation for precompressed sidecars (`x.br`, `x.zst`, `x.gz`).

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;

/// A content coding the server may answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// Brotli, sidecar `.br`.
    Br,
    /// Zstandard, sidecar `.zst`.
    Zstd,
    /// Gzip, sidecar `.gz`.
    Gzip,
    /// No coding: the file itself.
    Identity,
}

impl Coding {
    /// Server preference on equal q-values.
    const PREFERENCE: [Coding; 4] = [Coding::Br, Coding::Zstd, Coding::Gzip, Coding::Identity];

    /// The sidecar file-name suffix.
    pub fn sidecar_suffix(self) -> Option<&'static str> {
        match self {
            Coding::Br => Some(".br"),
            Coding::Zstd => Some(".zst"),
            Coding::Gzip => Some(".gz"),
            Coding::Identity => None,
        }
    }

    /// The `Content-Encoding` token.
    pub fn token(self) -> Option<&'static str> {
        match self {
            Coding::Br => Some("br"),
            Coding::Zstd => Some("zstd"),
            Coding::Gzip => Some("gzip"),
            Coding::Identity => None,
        }
    }

    /// Suffix appended to the ETag so each representation has its own tag.
    pub fn etag_suffix(self) -> Option<&'static str> {
        match self {
            Coding::Br => Some("br"),
            Coding::Zstd => Some("zst"),
            Coding::Gzip => Some("gz"),
            Coding::Identity => None,
        }
    }

    fn matches(self, token: &str) -> bool {
        match self {
            Coding::Br => token.eq_ignore_ascii_case("br"),
            Coding::Zstd => token.eq_ignore_ascii_case("zstd"),
            Coding::Gzip => {
                token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip")
            }
            Coding::Identity => token.eq_ignore_ascii_case("identity"),
        }
    }
}

/// The codings to try, best first, ending at (and including) identity when
/// identity is acceptable; compressed codings with q=0 are never listed.
///
/// Without an Accept-Encoding header only identity is offered. If identity is
/// refused (`identity;q=0` or `*;q=0`) the file itself is still the last
/// resort (nginx behaviour, rather than 406).
pub(crate) fn candidates(headers: &HeaderMap) -> Vec<Coding> {
    let mut q = [None::<u16>; 4]; // per PREFERENCE index, in thousandths
    let mut star = None::<u16>;
    let mut any = false;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim();
            if token.is_empty() {
                continue;
            }
            any = true;
            let Some(weight) = parts.find_map(qvalue).unwrap_or(Some(1000)) else {
                continue; // malformed q: ignore the element
            };
            if token == "*" {
                star = Some(star.map_or(weight, |s| s.max(weight)));
            }
            for (i, c) in Coding::PREFERENCE.iter().enumerate() {
                if c.matches(token) {
                    q[i] = Some(q[i].map_or(weight, |s| s.max(weight)));
                }
            }
        }
    }
    if !any {
        return vec![Coding::Identity];
    }
    let weight = |i: usize| -> u16 {
        match (q[i], star) {
            (Some(w), _) | (None, Some(w)) => w,
            // identity is acceptable unless excluded explicitly or via `*;q=0`
            (None, None) if Coding::PREFERENCE[i] == Coding::Identity => 1,
            (None, None) => 0,
        }
    };
    let mut order: Vec<(u16, usize)> = (0..4)
        .map(|i| (weight(i), i))
        .filter(|&(w, i)| w > 0 || i == 3)
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out = Vec::with_capacity(4);
    for (_, i) in order {
        out.push(Coding::PREFERENCE[i]);
        if Coding::PREFERENCE[i] == Coding::Identity {
            break;
        }
    }
    out
}

/// Parses one `q=…` parameter: `None` if this parameter is not q,
/// `Some(None)` if it is q but malformed, `Some(Some(thousandths))` otherwise.
fn qvalue(param: &str) -> Option<Option<u16>> {
    let (name, value) = param.split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("q") {
        return None;
    }
    let value = value.trim();
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    let ok = (int == "0" || int == "1")
        && frac.len() <= 3
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(int == "1" && frac.bytes().any(|b| b != b'0'));
    if !ok {
        return Some(None);
    }
    let mut thousandths = if int == "1" { 1000 } else { 0 };
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    Some(Some(thousandths))
}

#[cfg(test)]
mod tests {
    use super::Coding::*;
    use super::*;

    fn cands(ae: &str) -> Vec<Coding> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, ae.parse().expect("header"));
        candidates(&h)
    }

    #[test]
    fn negotiation() {
        assert_eq!(candidates(&HeaderMap::new()), [Identity]);
        assert_eq!(cands("gzip, deflate, br, zstd"), [Br, Zstd, Gzip, Identity]);
        assert_eq!(cands("gzip;q=1.0, br;q=0.8"), [Gzip, Br, Identity]);
        assert_eq!(cands("br;q=0, gzip"), [Gzip, Identity]);
        assert_eq!(cands("*"), [Br, Zstd, Gzip, Identity]);
        assert_eq!(cands("*;q=0.5, gzip;q=0"), [Br, Zstd, Identity]);
        assert_eq!(cands("identity, gzip;q=0.5"), [Identity]);
        assert_eq!(cands("gzip;q=0.5, identity;q=0"), [Gzip, Identity]);
        assert_eq!(cands("X-GZIP"), [Gzip, Identity]);
        assert_eq!(cands("br;q=2, gzip;q=0.001"), [Gzip, Identity]);
        assert_eq!(cands(""), [Identity]);
    }

    #[test]
    fn qvalues() {
        assert_eq!(qvalue("q=0.5"), Some(Some(500)));
        assert_eq!(qvalue(" Q = 1.000"), Some(Some(1000)));
        assert_eq!(qvalue("q=0"), Some(Some(0)));
        assert_eq!(qvalue("q=1.5"), Some(None));
        assert_eq!(qvalue("q=0.1234"), Some(None));
        assert_eq!(qvalue("level=1"), None);
    }
}
