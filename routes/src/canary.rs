//! Sticky canaries and the preview override: the color a request goes to
//! when its service has canary weights or a preview secret.
//!
//! - **Sticky**: while weights send traffic to more than one color, a
//!   client is pinned to the color it first got by a cookie the edge sets
//!   (`canary.cookie`, default `duotone_<service>`). A cookie naming a color
//!   that takes traffic (weight > 0) sends the request there; otherwise the
//!   color is chosen by weight and the response sets the cookie. Without
//!   weights (or with one color taking everything) the cookie is neither
//!   set nor read.
//! - **Preview**: a header (`Duotone-Preview`) or cookie (`duotone_preview`)
//!   holding `COLOR.TOKEN`, where TOKEN is the hex HMAC-SHA256 of
//!   `duotone-preview:<service>:<color>` keyed with the service's
//!   `preview.secret`, sends the request to COLOR, live or idle, and sets
//!   no cookie. Anything else (no secret configured, a wrong token, one
//!   for another service or color) is ignored.
//!
//! Both transports hand the upstream exchange an HTTP/1.1 head, so the
//! rule reads the request's fields from it ([`head_fields`]); nothing is
//! scanned for a service with neither rule ([`Canary::is_off`]).

use crate::config::CanarySpec;
use crate::pool::{Pool, Service};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Default `canary.max_age`: one day.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(86_400);
/// Default `preview.header`.
pub const DEFAULT_PREVIEW_HEADER: &str = "Duotone-Preview";
/// Default `preview.cookie`.
pub const DEFAULT_PREVIEW_COOKIE: &str = "duotone_preview";
/// Shortest accepted `preview.secret`, in bytes.
pub const MIN_SECRET: usize = 16;

/// The default sticky cookie of service `service`: `duotone_<service>`,
/// with any byte a cookie name cannot hold replaced by `_`.
pub fn default_cookie(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| {
            if c.is_ascii() && is_token_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("duotone_{name}")
}

/// Whether `b` may appear in a cookie name (an RFC 9110 token).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `name` is a cookie name (a token, at most 64 bytes).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(is_token_byte)
}

/// The preview token of `color` of `service` under `secret`: lower-case hex
/// HMAC-SHA256 of `duotone-preview:<service>:<color>`.
pub fn token(secret: &str, service: &str, color: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let msg = format!("duotone-preview:{service}:{color}");
    let tag = ring::hmac::sign(&key, msg.as_bytes());
    let mut out = String::with_capacity(64);
    for b in tag.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A service's compiled canary rules.
#[derive(Debug, Default)]
pub struct Canary {
    /// The sticky cookie, when `canary.sticky` is on.
    pub sticky: Option<Sticky>,
    /// Weights send traffic to more than one color and `sticky` is set:
    /// the cookie is read and set.
    pub active: bool,
    /// The preview override, when a secret is configured.
    pub preview: Option<Preview>,
    /// `active` or a preview: the request's fields are read.
    reads: bool,
    /// The lower-cased first bytes of the names read ([`Canary::firsts`]).
    firsts: [u8; 2],
}

/// The sticky cookie of a service.
#[derive(Debug)]
pub struct Sticky {
    /// The cookie's name.
    pub cookie: String,
    /// Its `Max-Age`.
    pub max_age: Duration,
    /// `Set-Cookie` values per pool: over plain HTTP, and over TLS (`Secure`).
    set: Vec<[String; 2]>,
}

/// A service's preview override.
#[derive(Debug)]
pub struct Preview {
    /// The request header that carries a token, as configured.
    pub header: String,
    /// The cookie that carries a token.
    pub cookie: String,
    /// The token of each pool (lower-case hex); the secret is not kept.
    tokens: Vec<String>,
}

impl Preview {
    /// The token of pool `i`.
    pub fn token(&self, i: usize) -> Option<&str> {
        self.tokens.get(i).map(String::as_str)
    }

    /// The pool a `COLOR.TOKEN` value names, when its token is right
    /// (compared in constant time).
    pub fn check(&self, pools: &[Pool], value: &[u8]) -> Option<usize> {
        let dot = value.iter().position(|b| *b == b'.')?;
        let (color, token) = (&value[..dot], &value[dot + 1..]);
        let i = pools
            .iter()
            .position(|p| p.color.as_str().as_bytes() == color)?;
        let want = self.tokens.get(i)?.as_bytes();
        bool::from(want.ct_eq(token)).then_some(i)
    }
}

impl Canary {
    /// Compiles `spec` for service `service` with `pools`; `split`: its
    /// weights send traffic to more than one pool.
    pub fn compile(spec: &CanarySpec, service: &str, pools: &[Pool], split: bool) -> Canary {
        let sticky = spec.sticky.then(|| {
            let secs = spec.max_age.as_secs();
            let set = pools
                .iter()
                .map(|p| {
                    let v = format!(
                        "{}={}; Path=/; Max-Age={secs}; HttpOnly; SameSite=Lax",
                        spec.cookie, p.color
                    );
                    let secure = format!("{v}; Secure");
                    [v, secure]
                })
                .collect();
            Sticky {
                cookie: spec.cookie.clone(),
                max_age: spec.max_age,
                set,
            }
        });
        let preview = spec.preview.as_ref().map(|p| Preview {
            header: p.header.clone(),
            cookie: p.cookie.clone(),
            tokens: pools
                .iter()
                .map(|pool| token(&p.secret, service, pool.color.as_str()))
                .collect(),
        });
        let active = split && sticky.is_some();
        let first = preview.as_ref().and_then(|p| p.header.bytes().next());
        Canary {
            active,
            reads: active || preview.is_some(),
            firsts: [b'c', first.map_or(b'c', |b| b.to_ascii_lowercase())],
            sticky,
            preview,
        }
    }

    /// Neither rule applies: the pool is chosen as without them, and no
    /// field needs reading.
    #[inline]
    pub fn is_off(&self) -> bool {
        !self.reads
    }

    /// The lower-cased first bytes of the field names the rules read
    /// (`cookie` and the preview header), for [`HeadFields::starting_with`].
    #[inline]
    pub fn firsts(&self) -> [u8; 2] {
        self.firsts
    }

    /// The `Set-Cookie` value pinning a client to pool `pool` (`Secure`
    /// over TLS), when the sticky cookie is active.
    pub fn set_cookie(&self, pool: usize, tls: bool) -> Option<&str> {
        let s = self.sticky.as_ref().filter(|_| self.active)?;
        s.set.get(pool).map(|v| v[usize::from(tls)].as_str())
    }
}

/// Whether cumulative weights `cum` (as [`Service::weights`]) send traffic
/// to more than one pool.
pub fn splits(cum: &[u32]) -> bool {
    let mut prev = 0;
    let mut taking = 0;
    for c in cum {
        if *c > prev {
            taking += 1;
        }
        prev = *c;
    }
    taking > 1
}

/// How a request's pool was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// By weight or the live color; nothing to tell the client.
    Plain,
    /// By weight while the sticky cookie is active: the response sets it.
    Pin,
    /// By the client's sticky cookie.
    Sticky,
    /// By a valid preview token.
    Preview,
}

/// Chooses the pool of `svc` for a request whose header fields `fields`
/// gives (name, value; called only when a rule applies, so a service with
/// neither pays nothing for them); `roll` is uniform random for the
/// weighted choice.
#[inline]
pub fn choose<'a, I: IntoIterator<Item = (&'a [u8], &'a [u8])>>(
    svc: &Service,
    fields: impl FnOnce() -> I,
    roll: u32,
) -> (usize, Chosen) {
    if svc.canary.is_off() {
        return (svc.choose_pool(roll), Chosen::Plain);
    }
    choose_by_fields(svc, fields().into_iter(), roll)
}

fn choose_by_fields<'a>(
    svc: &Service,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    roll: u32,
) -> (usize, Chosen) {
    let c = &svc.canary;
    let sticky = c.sticky.as_ref().filter(|_| c.active);
    let preview = c.preview.as_ref();
    let mut pinned = None;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"cookie") {
            for (k, v) in cookies(value) {
                if let Some(p) = preview.filter(|p| k == p.cookie.as_bytes()) {
                    if let Some(i) = p.check(&svc.pools, v) {
                        return (i, Chosen::Preview);
                    }
                }
                if pinned.is_none() && sticky.is_some_and(|s| k == s.cookie.as_bytes()) {
                    pinned = svc
                        .pools
                        .iter()
                        .position(|p| p.color.as_str().as_bytes() == v)
                        .filter(|i| svc.takes_traffic(*i));
                }
            }
        } else if let Some(p) = preview.filter(|p| name.eq_ignore_ascii_case(p.header.as_bytes())) {
            if let Some(i) = p.check(&svc.pools, value) {
                return (i, Chosen::Preview);
            }
        }
    }
    match (sticky, pinned) {
        (Some(_), Some(i)) => (i, Chosen::Sticky),
        (Some(_), None) => (svc.choose_pool(roll), Chosen::Pin),
        (None, _) => (svc.choose_pool(roll), Chosen::Plain),
    }
}

/// The header fields of an HTTP/1.1 request head (`name: value` lines
/// after the request line, up to the blank line), values trimmed. Nothing
/// is read until the first field is asked for.
#[inline]
pub fn head_fields(head: &[u8]) -> HeadFields<'_> {
    HeadFields {
        head,
        ends: memchr::memchr_iter(b'\n', head),
        start: 0,
        started: false,
        firsts: None,
    }
}

/// Iterator of [`head_fields`].
#[derive(Debug, Clone)]
pub struct HeadFields<'a> {
    head: &'a [u8],
    /// Where the lines end (`\n`).
    ends: memchr::Memchr<'a>,
    /// Where the next line starts (past the head: done).
    start: usize,
    /// The request line has been skipped.
    started: bool,
    /// Only fields whose name starts with one of these (lower case).
    firsts: Option<[u8; 2]>,
}

impl HeadFields<'_> {
    /// Only the fields whose name starts with one of `firsts` (lower-case
    /// letters; any case matches): the others are skipped without looking
    /// for their colon ([`Canary::firsts`]).
    #[inline]
    pub fn starting_with(mut self, firsts: [u8; 2]) -> Self {
        self.firsts = Some(firsts);
        self
    }
}

impl<'a> Iterator for HeadFields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let len = self.head.len();
            if self.start >= len {
                return None;
            }
            let end = self.ends.next().unwrap_or(len);
            let line = self.head.get(self.start..end).unwrap_or_default();
            self.start = end + 1;
            if !self.started {
                self.started = true;
                continue;
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(first) = line.first() else {
                // The blank line: the body follows.
                self.start = len;
                return None;
            };
            if let Some([a, b]) = self.firsts {
                let first = first.to_ascii_lowercase();
                if first != a && first != b {
                    continue;
                }
            }
            // Names are short: a plain loop.
            if let Some(colon) = line.iter().position(|b| *b == b':') {
                return Some((&line[..colon], line[colon + 1..].trim_ascii()));
            }
        }
    }
}

/// The `name=value` pairs of a `Cookie` field value, trimmed, a value's
/// surrounding double quotes removed; pieces without `=` are skipped.
pub fn cookies(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b';', value);
    std::iter::from_fn(move || {
        while start <= value.len() {
            let end = ends.next().unwrap_or(value.len());
            let pair = value.get(start..end).unwrap_or_default();
            start = end + 1;
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let name = pair[..eq].trim_ascii();
            let v = match pair[eq + 1..].trim_ascii() {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            };
            if !name.is_empty() {
                return Some((name, v));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PreviewSpec;
    use crate::pool::{Color, Protocol};
    use std::sync::Arc;

    const SECRET: &str = "0123456789abcdef-secret";

    fn service(name: &str, weights: Option<Vec<u32>>, sticky: bool, secret: bool) -> Service {
        let pools = vec![
            Pool::new(Color::new("blue"), vec![], Arc::default()),
            Pool::new(Color::new("green"), vec![], Arc::default()),
        ];
        let spec = CanarySpec {
            sticky,
            cookie: default_cookie(name),
            max_age: DEFAULT_MAX_AGE,
            preview: secret.then(|| PreviewSpec {
                secret: SECRET.into(),
                header: DEFAULT_PREVIEW_HEADER.into(),
                cookie: DEFAULT_PREVIEW_COOKIE.into(),
            }),
        };
        let split = weights.as_deref().is_some_and(splits);
        let canary = Canary::compile(&spec, name, &pools, split);
        Service {
            name: name.into(),
            protocol: Protocol::Http,
            pools,
            live: 0,
            weights,
            health: None,
            timeouts: crate::validate::default_timeouts(),
            retries: 1,
            drain_upgraded: Duration::from_secs(30),
            paused: false,
            maintenance: false,
            pause: Default::default(),
            holds: Default::default(),
            canary,
        }
    }

    fn head(fields: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nhost: a\r\n{fields}\r\nbody: not a field").into_bytes()
    }

    fn pick(svc: &Service, fields: &str, roll: u32) -> (usize, Chosen) {
        let h = head(fields);
        let all = choose(svc, || head_fields(&h), roll);
        let some = choose(
            svc,
            || head_fields(&h).starting_with(svc.canary.firsts()),
            roll,
        );
        assert_eq!(all, some, "{fields}");
        all
    }

    #[test]
    fn the_token_is_hmac_sha256_of_service_and_color() {
        // RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            tag.as_ref()[..4],
            [0x5b, 0xdc, 0xc1, 0x46],
            "ring's HMAC-SHA256"
        );
        let t = token(SECRET, "api", "green");
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| HEX.contains(&b)));
        let expected = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes()),
            b"duotone-preview:api:green",
        );
        let hex: String = expected
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(t, hex);
        assert_ne!(t, token(SECRET, "api", "blue"));
        assert_ne!(t, token(SECRET, "web", "green"));
        assert_ne!(t, token("another-secret-0123", "api", "green"));
    }

    #[test]
    fn cookie_names() {
        assert_eq!(default_cookie("api"), "duotone_api");
        assert_eq!(default_cookie("my-app_2"), "duotone_my-app_2");
        assert_eq!(default_cookie("a b;é"), "duotone_a_b__");
        assert!(is_cookie_name("duotone_api"));
        for bad in [
            "",
            "a b",
            "a;b",
            "a=b",
            "a,b",
            "\"a\"",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!is_cookie_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn parses_cookie_values() {
        let got: Vec<_> = cookies(b"a=1; duotone_api=green;b=\"q\" ; flag; =x; c = 3 ;").collect();
        assert_eq!(
            got,
            vec![
                (&b"a"[..], &b"1"[..]),
                (b"duotone_api", b"green"),
                (b"b", b"q"),
                (b"c", b"3"),
            ]
        );
        assert_eq!(cookies(b"").count(), 0);
        assert_eq!(cookies(b";;;").count(), 0);
        // A value may hold '='.
        assert_eq!(
            cookies(b"t=a=b").collect::<Vec<_>>(),
            vec![(&b"t"[..], &b"a=b"[..])]
        );
    }

    #[test]
    fn reads_the_fields_of_a_head() {
        let h =
            b"POST /x HTTP/1.1\r\nHost: a\r\nCookie:  k=v \r\nbad line\r\nX-Y:\r\n\r\nCookie: body";
        let got: Vec<_> = head_fields(h).collect();
        assert_eq!(
            got,
            vec![
                (&b"Host"[..], &b"a"[..]),
                (b"Cookie", b"k=v"),
                (b"X-Y", b""),
            ]
        );
        // Only the names that start with the letters asked for, any case.
        let only: Vec<_> = head_fields(h).starting_with([b'c', b'x']).collect();
        assert_eq!(only, vec![(&b"Cookie"[..], &b"k=v"[..]), (b"X-Y", b"")]);
        assert_eq!(head_fields(b"GET / HTTP/1.1").count(), 0);
        assert_eq!(head_fields(b"").count(), 0);
        // Bare LF line ends, and no blank line at the end.
        assert_eq!(head_fields(b"GET / HTTP/1.1\nA: 1\nB: 2").count(), 2);
    }

    #[test]
    fn without_weights_or_secret_nothing_is_read() {
        let svc = service("api", None, true, false);
        assert!(svc.canary.is_off());
        assert_eq!(
            pick(&svc, "cookie: duotone_api=green", 7),
            (0, Chosen::Plain)
        );
        assert_eq!(svc.canary.set_cookie(0, false), None);
        // One color takes everything: not split, no cookie.
        let svc = service("api", Some(vec![100, 100]), true, false);
        assert!(svc.canary.is_off());
        assert_eq!(
            pick(&svc, "cookie: duotone_api=green", 7),
            (0, Chosen::Plain)
        );
        // Sticky off.
        let svc = service("api", Some(vec![50, 100]), false, false);
        assert!(svc.canary.is_off());
    }

    #[test]
    fn a_valid_sticky_cookie_pins_and_others_are_chosen_by_weight() {
        let svc = service("api", Some(vec![50, 100]), true, false);
        assert!(!svc.canary.is_off());
        for roll in 0..100 {
            assert_eq!(
                pick(&svc, "cookie: a=1; duotone_api=green; b=2", roll),
                (1, Chosen::Sticky)
            );
            assert_eq!(
                pick(&svc, "cookie: duotone_api=\"blue\"", roll),
                (0, Chosen::Sticky)
            );
        }
        // No cookie, another service's, an unknown color: by weight, pinned.
        for fields in [
            "",
            "cookie: duotone_web=green",
            "cookie: duotone_api=red",
            "cookie: DUOTONE_API=green",
            "x-duotone-api: green",
        ] {
            let picks: Vec<_> = (0..100).map(|r| pick(&svc, fields, r)).collect();
            assert!(picks.iter().all(|(_, c)| *c == Chosen::Pin), "{fields}");
            let green = picks.iter().filter(|(p, _)| *p == 1).count();
            assert_eq!(green, 50, "{fields}");
        }
        // Several Cookie fields (HTTP/2 may split them): any one pins.
        assert_eq!(
            pick(&svc, "cookie: a=1\r\nCookie: duotone_api=green", 0),
            (1, Chosen::Sticky)
        );
        assert_eq!(
            svc.canary.set_cookie(1, false),
            Some("duotone_api=green; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax")
        );
        assert_eq!(
            svc.canary.set_cookie(0, true),
            Some("duotone_api=blue; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax; Secure")
        );
    }

    #[test]
    fn a_cookie_naming_a_color_without_traffic_is_not_honoured() {
        // Three colors, red at weight 0.
        let mut svc = service("api", None, true, false);
        svc.pools
            .push(Pool::new(Color::new("red"), vec![], Arc::default()));
        svc.weights = Some(vec![50, 100, 100]);
        svc.canary = Canary::compile(
            &CanarySpec {
                sticky: true,
                cookie: "duotone_api".into(),
                max_age: DEFAULT_MAX_AGE,
                preview: None,
            },
            "api",
            &svc.pools,
            true,
        );
        let (pool, chosen) = pick(&svc, "cookie: duotone_api=red", 3);
        assert_eq!(chosen, Chosen::Pin);
        assert_ne!(pool, 2);
    }

    #[test]
    fn a_valid_preview_token_reaches_any_color() {
        let svc = service("api", None, true, true);
        assert!(!svc.canary.is_off());
        let green = format!("green.{}", token(SECRET, "api", "green"));
        let blue = format!("blue.{}", token(SECRET, "api", "blue"));
        for fields in [
            format!("duotone-preview: {green}"),
            format!("DUOTONE-PREVIEW: {green}"),
            format!("cookie: x=1; duotone_preview={green}"),
            format!("duotone-preview: wrong\r\ncookie: duotone_preview={green}"),
        ] {
            assert_eq!(pick(&svc, &fields, 0), (1, Chosen::Preview), "{fields}");
        }
        assert_eq!(
            pick(&svc, &format!("duotone-preview: {blue}"), 0),
            (0, Chosen::Preview)
        );
        // Wrong token, another color's, another service's, another secret's,
        // cut short, upper case, in another header: ignored.
        let web = format!("green.{}", token(SECRET, "web", "green"));
        let other = format!("green.{}", token("another-secret-0123", "api", "green"));
        let crossed = format!("green.{}", token(SECRET, "api", "blue"));
        for value in [
            web.as_str(),
            other.as_str(),
            crossed.as_str(),
            &green[..green.len() - 1],
            &green.to_ascii_uppercase(),
            "green.",
            "green",
            ".",
            "",
            &format!("red.{}", token(SECRET, "api", "red")),
        ] {
            for fields in [
                format!("duotone-preview: {value}"),
                format!("cookie: duotone_preview={value}"),
            ] {
                assert_eq!(pick(&svc, &fields, 0), (0, Chosen::Plain), "{fields}");
            }
        }
        assert_eq!(
            pick(&svc, &format!("x-preview: {green}"), 0),
            (0, Chosen::Plain)
        );
        assert_eq!(
            svc.canary.preview.as_ref().and_then(|p| p.token(1)),
            Some(&green[6..])
        );
    }

    #[test]
    fn preview_wins_over_the_sticky_cookie_and_sets_none() {
        let svc = service("api", Some(vec![100, 100]), true, true);
        // Not split: only the preview applies.
        let green = format!("green.{}", token(SECRET, "api", "green"));
        assert_eq!(
            pick(&svc, &format!("duotone-preview: {green}"), 0),
            (1, Chosen::Preview)
        );
        let svc = service("api", Some(vec![50, 100]), true, true);
        let blue = format!("blue.{}", token(SECRET, "api", "blue"));
        assert_eq!(
            pick(
                &svc,
                &format!("cookie: duotone_api=green; duotone_preview={blue}"),
                99
            ),
            (0, Chosen::Preview)
        );
    }

    /// The fields as a naive split finds them.
    fn naive(head: &[u8]) -> Vec<(&[u8], &[u8])> {
        let mut out = Vec::new();
        for line in head.split(|b| *b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            if let Some(c) = line.iter().position(|b| *b == b':') {
                out.push((&line[..c], line[c + 1..].trim_ascii()));
            }
        }
        out
    }

    fn bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let byte = prop_oneof![
            Just(b'\n'),
            Just(b'\r'),
            Just(b':'),
            Just(b';'),
            Just(b'='),
            Just(b'"'),
            Just(b' '),
            b'a'..=b'e',
            b'C'..=b'D',
            any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..120)
    }

    proptest::proptest! {
        #[test]
        fn fields_and_cookies_match_naive_splits(head in bytes()) {
            let want = naive(&head);
            proptest::prop_assert_eq!(head_fields(&head).collect::<Vec<_>>(), want.clone());
            let some: Vec<_> = head_fields(&head).starting_with([b'c', b'd']).collect();
            let filtered: Vec<_> = want
                .into_iter()
                .filter(|(n, _)| n.first().is_some_and(|b| matches!(b.to_ascii_lowercase(), b'c' | b'd')))
                .collect();
            proptest::prop_assert_eq!(some, filtered);
            let pieces: Vec<_> = head
                .split(|b| *b == b';')
                .filter_map(|p| {
                    let eq = p.iter().position(|b| *b == b'=')?;
                    let name = p[..eq].trim_ascii();
                    let v = p[eq + 1..].trim_ascii();
                    let v = match v {
                        [b'"', inner @ .., b'"'] => inner,
                        v => v,
                    };
                    (!name.is_empty()).then_some((name, v))
                })
                .collect();
            proptest::prop_assert_eq!(cookies(&head).collect::<Vec<_>>(), pieces);
        }
    }

    #[test]
    fn weights_split_when_two_colors_take_traffic() {
        assert!(splits(&[50, 100]));
        assert!(splits(&[1, 1, 2]));
        assert!(!splits(&[100, 100]));
        assert!(!splits(&[0, 100]));
        assert!(!splits(&[0, 0, 5]));
        assert!(!splits(&[]));
    }
}
