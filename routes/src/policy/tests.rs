//! The policy's rules, one test per rule, and properties over request
//! spellings: what each transport used to decide on its own.

use super::*;
use crate::request::Proto;
use crate::{load, LiveState, Vitals};
use proptest::prelude::*;
use std::sync::Arc;

const CONFIG: &str = r#"
[server]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
[limits]
max_headers = 10
[[sites]]
hosts = ["example.com"]
tls = "off"
  [[sites.routes]]
  path = "/"
  service = "api"
  [[sites.routes]]
  path = "/static/"
  static = { root = "/srv/static" }
  [[sites.routes]]
  path = "/old/"
  redirect = { to = "https://new.example.com$path" }
  [[sites.routes]]
  path = "/admin/"
  service = "api"
  basic_auth = ["staff:$2y$04$UVxrQ9NeK7JGq3aLPFbTQeZ3bVvK5D5vM2bYy1cQm3mYJ9pS8bQ4S"]
  [[sites.routes]]
  path = "/internal/"
  service = "api"
  allow = ["10.0.0.0/8"]
  [[sites.routes]]
  path = "/upload/"
  service = "api"
  max_body = "100"
[[sites]]
hosts = ["secure.example.com"]
tls = { cert = "/c.pem", key = "/k.pem" }
  [[sites.routes]]
  path = "/"
  service = "api"
  [[sites.routes]]
  path = "/plain/"
  service = "api"
  allow_http = true
[services.api]
live = "blue"
colors.blue = ["127.0.0.1:8001", "127.0.0.1:8002"]
colors.green = ["127.0.0.1:8003"]
retries = 1
"#;

fn table() -> RouteTable {
    table_from(CONFIG)
}

fn table_from(text: &str) -> RouteTable {
    let cfg = load("t.toml", text, |_| None).expect("test config loads");
    RouteTable::compile(
        Arc::new(cfg),
        &LiveState::default(),
        &Vitals::default(),
        &|_, _| None,
    )
    .0
}

fn view<'a>(target: &'a str, host: &'a str) -> View<'a> {
    View {
        head: Head {
            proto: Proto::Http11,
            method: "GET",
            target,
            host: Some(host),
            host_fields: 1,
            authority: None,
        },
        tls: false,
        client: Some("192.0.2.1".parse().expect("an address")),
        content_length: None,
        header_count: 3,
        header_bytes: 100,
        bad_framing: false,
        acme: false,
        unreadable: None,
    }
}

fn decision(t: &RouteTable, v: &View<'_>) -> Decision {
    decide(t, v).decision
}

/// The prefix of the route a decision routed to.
fn prefix<'t>(t: &'t RouteTable, d: &Decision) -> &'t str {
    let r = d.routed().expect("routed");
    &t.sites[r.site].routes[r.route].prefix
}

#[test]
fn routes_proxy_static_and_redirect() {
    let t = table();
    let d = decision(&t, &view("/x", "example.com"));
    assert!(matches!(d, Decision::Proxy(_, 0)) && prefix(&t, &d) == "/");
    let d = decision(&t, &view("/static/a.css", "example.com"));
    assert!(matches!(d, Decision::Static(_)) && prefix(&t, &d) == "/static/");
    let d = decision(&t, &view("/old/p?q=1", "example.com"));
    assert_eq!(prefix(&t, &d), "/old/");
    assert!(
        matches!(d, Decision::Redirect(_, 308, ref l) if l == "https://new.example.com/old/p?q=1"),
        "{d:?}"
    );
}

#[test]
fn unknown_hosts_and_paths_are_404s() {
    let t = table();
    assert_eq!(
        decision(&t, &view("/", "other.org")),
        Decision::Answer(NO_SITE)
    );
    let v = view("/", "secure.example.com");
    let mut v2 = v;
    v2.tls = true;
    assert!(matches!(decision(&t, &v2), Decision::Proxy(..)));
}

#[test]
fn unknown_hosts_get_the_answer_server_unknown_host_names() {
    let with = |value: &str| {
        let text = CONFIG.replace("[server]\n", &format!("[server]\nunknown_host = {value}\n"));
        table_from(&text)
    };
    for (value, want) in [
        ("404", NO_SITE),
        ("\"404\"", NO_SITE),
        ("421", MISDIRECTED),
        ("\"421\"", MISDIRECTED),
        ("\"close\"", CLOSE),
    ] {
        let t = with(value);
        assert_eq!(
            decision(&t, &view("/", "other.org")),
            Decision::Answer(want),
            "{value}"
        );
        // Only unknown hosts: a known host is routed as before.
        assert!(matches!(
            decision(&t, &view("/x", "example.com")),
            Decision::Proxy(..)
        ));
    }
    let shape = |a: Answer| (a.status, a.close, a.is_silent_close());
    assert_eq!(shape(MISDIRECTED), (421, false, false));
    assert_eq!(shape(NO_SITE), (404, false, false));
    assert_eq!(shape(CLOSE), (CLOSE_STATUS, true, true));
    assert_eq!(no_site(UnknownHost::Status(404)), NO_SITE);
    assert_eq!(no_site(UnknownHost::default()), NO_SITE);
    // The request check still comes first: a bad request is answered.
    let t = with("\"close\"");
    let mut v = view("/", "other.org");
    v.header_count = 11;
    assert_eq!(decision(&t, &v), Decision::Answer(HEADERS_TOO_LARGE));
}

#[test]
fn limits_come_first() {
    let t = table();
    let mut v = view("/", "example.com");
    v.header_count = 11;
    assert_eq!(decision(&t, &v), Decision::Answer(HEADERS_TOO_LARGE));
    let mut v = view("/", "example.com");
    v.bad_framing = true;
    assert_eq!(decision(&t, &v), Decision::Answer(BAD_FRAMING));
}

#[test]
fn refused_requests_close_the_connection() {
    let t = table();
    let verdict = decide(&t, &view("/a/../admin/", "example.com"));
    assert!(verdict.checked.is_none());
    match verdict.decision {
        Decision::Answer(a) => assert!(a.status == 400 && a.close),
        d => panic!("{d:?}"),
    }
}

#[test]
fn allow_lists_use_the_client() {
    let t = table();
    assert_eq!(
        decision(&t, &view("/internal/x", "example.com")),
        Decision::Answer(FORBIDDEN)
    );
    let mut v = view("/internal/x", "example.com");
    v.client = Some("10.1.2.3".parse().expect("an address"));
    assert!(matches!(decision(&t, &v), Decision::Proxy(..)));
    v.client = None;
    assert_eq!(decision(&t, &v), Decision::Answer(FORBIDDEN));
}

#[test]
fn allow_list_entries() {
    let nets = vec![
        crate::config::IpNet::parse("10.0.0.0/8").expect("a net"),
        crate::config::IpNet::parse("::1").expect("an address"),
    ];
    let ip = |s: &str| Some(s.parse().expect("an address"));
    assert!(ip_allowed(&nets, ip("10.1.2.3")));
    assert!(ip_allowed(&nets, ip("::ffff:10.1.2.3")));
    assert!(ip_allowed(&nets, ip("::1")));
    assert!(!ip_allowed(&nets, ip("11.0.0.1")));
    assert!(!ip_allowed(&nets, None));
    assert!(ip_allowed(&[], None));
}

#[test]
fn tls_sites_redirect_plain_http_unless_the_route_allows_it() {
    let t = table();
    assert_eq!(
        decision(&t, &view("/x", "secure.example.com")),
        Decision::ToHttps
    );
    assert!(matches!(
        decision(&t, &view("/plain/x", "secure.example.com")),
        Decision::Proxy(..)
    ));
    assert_eq!(
        https_location("h.example:80", "/a?b", 8443),
        "https://h.example:8443/a?b"
    );
    assert_eq!(https_location("h.example", "/", 443), "https://h.example/");
}

#[test]
fn auth_comes_before_the_body_limit() {
    let t = table();
    let mut v = view("/admin/x", "example.com");
    v.content_length = Some(1 << 40);
    let Decision::Proxy(r, _) = decision(&t, &v) else {
        panic!("admin routes proxy");
    };
    assert!(r.auth && r.too_large);
    assert_eq!(r.admit(false, false), Err(UNAUTHORIZED));
    assert_eq!(r.admit(true, false), Err(TOO_LARGE));
    let mut v = view("/upload/x", "example.com");
    v.content_length = Some(100);
    let Decision::Proxy(r, _) = decision(&t, &v) else {
        panic!("upload routes proxy");
    };
    assert_eq!(r.admit(false, false), Ok(()));
    v.content_length = Some(101);
    assert!(decide(&t, &v)
        .decision
        .routed()
        .is_some_and(|r| r.admit(true, false) == Err(TOO_LARGE)));
}

#[test]
fn the_full_path_takes_what_needs_more_than_proxying_or_files() {
    let t = table();
    let full = |target: &str, length: Option<u64>| {
        let mut v = view(target, "example.com");
        v.content_length = length;
        decision(&t, &v).needs_full_path(&t)
    };
    assert!(!full("/x", Some(10)));
    assert!(!full("/static/a.css", None));
    assert!(full("/admin/x", None), "basic auth");
    assert!(full("/old/x", None), "redirect");
    assert!(full("/upload/x", Some(101)), "413");
    assert!(full("/internal/x", None), "403");
    assert!(full("/a/../b", None), "400");
    assert!(full("/", None) == full("/y", None));
}

#[test]
fn acme_challenges_only_on_plain_http_where_answered() {
    let t = table();
    let target = "/.well-known/acme-challenge/tok-1";
    assert!(matches!(
        decision(&t, &view(target, "example.com")),
        Decision::Proxy(..)
    ));
    let mut v = view(target, "example.com");
    v.acme = true;
    assert_eq!(decision(&t, &v), Decision::Challenge("tok-1".into()));
    v.tls = true;
    assert!(matches!(decision(&t, &v), Decision::Proxy(..)));
}

#[test]
fn attempts_try_each_member_once_within_retries() {
    let t = table();
    let svc = &t.services[0];
    let mut a = Attempts::new(svc, 0);
    assert_eq!(a.pool(), svc.live);
    let first = a.next(svc, 1).expect("a member");
    assert!(a.connect_failed(svc, 1), "one retry allowed");
    assert!(svc.pools[a.pool()].members[first].health.is_ejected(2));
    let second = a.next(svc, 1).expect("another member");
    assert_ne!(first, second);
    assert!(!a.connect_failed(svc, 1), "retries spent");
    assert_eq!(a.count(), 2);
    assert_eq!(a.next(svc, 1), None, "every member tried");
}

#[test]
fn only_safe_requests_are_sent_twice() {
    assert!(Attempts::may_resend(true, false, b"POST"));
    assert!(Attempts::may_resend(true, true, b"GET"));
    assert!(!Attempts::may_resend(true, true, b"POST"));
    assert!(!Attempts::may_resend(false, false, b"GET"));
}

proptest! {
    /// However a path is spelled, a request for the auth route either is
    /// refused outright or reaches that route with auth required: no
    /// spelling routes around it (the bypass #16 fixed on each transport).
    #[test]
    fn no_spelling_dodges_a_protected_route(
        segs in proptest::collection::vec(
            prop_oneof![
                Just("admin"), Just("%61dmin"), Just("ADMIN"), Just("."), Just(".."),
                Just("%2e"), Just(""), Just("%2F"), Just("x"), Just("%5C"), Just("a%00"),
            ],
            1..5,
        )
    ) {
        let t = table();
        let target = format!("/{}/secret", segs.join("/"));
        let verdict = decide(&t, &view(&target, "example.com"));
        if let Some(c) = &verdict.checked {
            if c.path.starts_with("/admin/") {
                let r = verdict.decision.routed().cloned();
                prop_assert!(r.is_some_and(|r| r.auth), "{target} → {:?}", verdict.decision);
            } else {
                prop_assert!(!verdict.decision.routed().is_some_and(|r| r.auth));
            }
        }
    }

    /// The site reported is the one the decision routed to.
    #[test]
    fn site_matches_the_routed_site(host in "(example\\.com|secure\\.example\\.com|x\\.org)", tls: bool) {
        let t = table();
        let mut v = view("/a", &host);
        v.tls = tls;
        let verdict = decide(&t, &v);
        if let Some(r) = verdict.decision.routed() {
            prop_assert_eq!((verdict.site, verdict.route), (Some(r.site), Some(r.route)));
        }
    }
}

/// The test table with maintenance on for `sites` (by name) and `services`,
/// and `allow` as `[maintenance] allow`.
fn maintenance_table(sites: &[&str], services: &[&str], allow: &str) -> RouteTable {
    let text = format!("{CONFIG}\n[maintenance]\nallow = [{allow}]\n");
    let cfg = load("t.toml", &text, |_| None).expect("test config loads");
    let mut live = LiveState::default();
    for s in sites {
        live.sites
            .insert(s.to_string(), crate::state::SiteState { maintenance: true });
    }
    for s in services {
        let mut st = crate::state::ServiceState::live("blue");
        st.maintenance = true;
        live.services.insert(s.to_string(), st);
    }
    let (t, warnings) = RouteTable::compile(Arc::new(cfg), &live, &Vitals::default(), &|_, _| None);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(t.live_state().sites, live.sites);
    t
}

#[test]
fn maintenance_marks_requests_of_a_site_or_a_service() {
    // Service-level: proxied routes to it are marked; files are not.
    let t = maintenance_table(&[], &["api"], "");
    let d = decision(&t, &view("/x", "example.com"));
    let r = d.routed().expect("routed");
    assert!(r.maintenance);
    assert!(
        d.needs_full_path(&t),
        "the lane leaves maintenance to the full path"
    );
    assert_eq!(r.admit(true, false), Err(MAINTENANCE));
    assert_eq!(
        r.admit(true, true),
        Ok(()),
        "the secret cookie lets through"
    );
    let d = decision(&t, &view("/static/a.css", "example.com"));
    assert!(!d.routed().expect("routed").maintenance);

    // Site-level: every route of that site, and only that site.
    let t = maintenance_table(&["example.com"], &[], "");
    for target in ["/x", "/static/a.css", "/old/p"] {
        let d = decision(&t, &view(target, "example.com"));
        assert!(d.routed().expect("routed").maintenance, "{target}");
    }
    let mut v = view("/plain/x", "secure.example.com");
    v.tls = true;
    assert!(!decision(&t, &v).routed().expect("routed").maintenance);

    // Maintenance comes before basic auth and the body limit.
    let mut v = view("/admin/x", "example.com");
    v.content_length = Some(1 << 40);
    let d = decision(&t, &v);
    assert_eq!(
        d.routed().expect("routed").admit(false, false),
        Err(MAINTENANCE)
    );
    // …and after the allow list and HTTPS.
    assert_eq!(
        decision(&t, &view("/internal/x", "example.com")),
        Decision::Answer(FORBIDDEN)
    );

    // Nothing in maintenance: nothing marked.
    let t = maintenance_table(&[], &[], "");
    assert!(
        !decision(&t, &view("/x", "example.com"))
            .routed()
            .expect("routed")
            .maintenance
    );
}

#[test]
fn the_maintenance_allow_list_reaches_the_app() {
    let t = maintenance_table(&["example.com"], &["api"], "\"10.0.0.0/8\", \"::1\"");
    let mut v = view("/x", "example.com");
    assert!(decision(&t, &v).routed().expect("routed").maintenance);
    v.client = Some("10.9.8.7".parse().expect("an address"));
    let d = decision(&t, &v);
    assert!(!d.routed().expect("routed").maintenance);
    assert!(!d.needs_full_path(&t));
    v.client = Some("::1".parse().expect("an address"));
    assert!(!decision(&t, &v).routed().expect("routed").maintenance);
    v.client = None;
    assert!(decision(&t, &v).routed().expect("routed").maintenance);
}
