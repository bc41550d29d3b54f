//! The canary rule's hand-written parsers and choice (`routes::canary`).
//! None may panic, and each must agree with a plain reference:
//! - `head_fields` gives the `name: value` lines after the request line up
//!   to the first empty one (a line ends at `\n`, a `\r` before it is
//!   dropped; a line without `:` is skipped; values trimmed), the same
//!   ones as a naive split, and `starting_with` keeps exactly those whose
//!   first byte is one of the letters given, in any case;
//! - `cookies` gives the `;`-separated pieces that hold `=` and a
//!   non-empty trimmed name, the value trimmed and unquoted;
//! - `choose` on a service with weights 50/50, the sticky cookie and a
//!   preview secret: a preview choice means the input holds that color's
//!   exact `COLOR.TOKEN`; a sticky choice, that it holds the sticky
//!   cookie's name and that color's; any other choice pins (sets the
//!   cookie).
//!
//! Input: one byte for the weighted roll, then a request head.

#![no_main]

use libfuzzer_sys::fuzz_target;
use routes::canary::{choose, cookies, head_fields, token, Chosen};
use std::sync::{Arc, OnceLock};

const SECRET: &str = "fuzz-preview-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    let Some((&roll, head)) = data.split_first() else {
        return;
    };
    fields(head);
    for (_, v) in head_fields(head) {
        cookie_pieces(v);
    }
    cookie_pieces(head);
    choice(head, u32::from(roll));
});

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

fn fields(head: &[u8]) {
    let got: Vec<_> = head_fields(head).collect();
    let want = naive(head);
    assert_eq!(got, want);
    for (name, value) in &got {
        assert!(!name.contains(&b':') && !name.contains(&b'\n'));
        assert!(!value.contains(&b'\n'));
        assert_eq!(value.trim_ascii(), *value);
    }
    let firsts = [b'c', b'd'];
    let some: Vec<_> = head_fields(head).starting_with(firsts).collect();
    let want: Vec<_> = want
        .into_iter()
        .filter(|(n, _)| {
            n.first()
                .is_some_and(|b| firsts.contains(&b.to_ascii_lowercase()))
        })
        .collect();
    assert_eq!(some, want);
}

fn cookie_pieces(value: &[u8]) {
    let got: Vec<_> = cookies(value).collect();
    let want: Vec<_> = value
        .split(|b| *b == b';')
        .filter_map(|p| {
            let eq = p.iter().position(|b| *b == b'=')?;
            let name = p[..eq].trim_ascii();
            let v = p[eq + 1..].trim_ascii();
            let v = if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                &v[1..v.len() - 1]
            } else {
                v
            };
            (!name.is_empty()).then_some((name, v))
        })
        .collect();
    assert_eq!(got, want);
    for (name, _) in &got {
        assert!(!name.contains(&b';') && !name.contains(&b'='));
    }
}

fn table() -> &'static routes::RouteTable {
    static TABLE: OnceLock<routes::RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let text = format!(
            "[server]\nhttp = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9090\"\n\
             [[sites]]\nhosts = [\"*\"]\n  [[sites.routes]]\n  path = \"/\"\n  service = \"api\"\n\
             [services.api]\nlive = \"blue\"\ncolors.blue = [\"127.0.0.1:1\"]\n\
             colors.green = [\"127.0.0.1:2\"]\nweights = {{ blue = 50, green = 50 }}\n\
             preview = {{ secret = \"{SECRET}\" }}\n"
        );
        let config = routes::load("fuzz.toml", &text, |_| None).expect("config");
        routes::RouteTable::compile(
            Arc::new(config),
            &routes::LiveState::default(),
            &routes::Vitals::default(),
            &|_, _| None,
        )
        .0
    })
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn choice(head: &[u8], roll: u32) {
    let svc = &table().services[0];
    let all = choose(svc, || head_fields(head), roll);
    let some = choose(
        svc,
        || head_fields(head).starting_with(svc.canary.firsts()),
        roll,
    );
    assert_eq!(all, some);
    let (pool, chosen) = all;
    let color = svc.pools[pool].color.as_str();
    match chosen {
        Chosen::Preview => {
            let value = format!("{color}.{}", token(SECRET, "api", color));
            assert!(holds(head, value.as_bytes()), "preview without the token");
        }
        Chosen::Sticky => assert!(
            holds(head, b"duotone_api") && holds(head, color.as_bytes()),
            "sticky without the cookie"
        ),
        Chosen::Pin => assert!(svc.canary.set_cookie(pool, false).is_some()),
        Chosen::Plain => {
            panic!("weights split traffic: every choice is sticky, pinned or a preview")
        }
    }
}
