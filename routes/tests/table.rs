//! Matching hosts and paths in the compiled table, colors and live state.

use proptest::prelude::*;
use routes::state::ServiceState;
use routes::{load, Action, LiveState, RouteTable, Vitals};
use std::sync::Arc;

fn table(text: &str, live: &LiveState) -> (RouteTable, Vec<String>) {
    let cfg = load("t.toml", text, |_| None).unwrap();
    RouteTable::compile(Arc::new(cfg), live, &Vitals::default(), &|_, _| None)
}

const SITES: &str = r#"
[server]
http = "127.0.0.1:8080"
[[sites]]
hosts = ["example.com"]
  [[sites.routes]]
  path = "/"
  service = "api"
  [[sites.routes]]
  path = "/static/"
  static = { root = "/srv/static" }
  [[sites.routes]]
  path = "/static/admin/"
  redirect = { to = "https://cdn.example.com$path" }
[[sites]]
hosts = ["*.example.com"]
  [[sites.routes]]
  path = "/"
  service = "api"
[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/media/"
  static = { root = "/srv/media" }
[services.api]
live = "blue"
colors.blue = ["127.0.0.1:8001"]
colors.green = ["127.0.0.1:8002"]
"#;

#[test]
fn host_matching_exact_then_wildcard_then_default() {
    let (t, _) = table(SITES, &LiveState::default());
    assert_eq!(t.site("example.com").unwrap().0, 0);
    assert_eq!(t.site("EXAMPLE.com:8443").unwrap().0, 0);
    assert_eq!(t.site("example.com.").unwrap().0, 0);
    assert_eq!(t.site("www.example.com").unwrap().0, 1);
    assert_eq!(t.site("a.b.example.com").unwrap().0, 1);
    assert_eq!(t.site("other.org").unwrap().0, 2);
    assert_eq!(t.site("").unwrap().0, 2);
}

#[test]
fn longest_prefix_wins() {
    let (t, _) = table(SITES, &LiveState::default());
    let action = |p: &str| t.find("example.com", p).map(|(_, _, r)| r.prefix.clone());
    assert_eq!(action("/").as_deref(), Some("/"));
    assert_eq!(action("/api/x").as_deref(), Some("/"));
    assert_eq!(action("/static/app.css").as_deref(), Some("/static/"));
    assert_eq!(
        action("/static/admin/x.js").as_deref(),
        Some("/static/admin/")
    );
    assert_eq!(action("/static").as_deref(), Some("/"));
    // The default site has no "/" route.
    assert!(t.find("other.org", "/x").is_none());
    assert!(matches!(
        t.find("other.org", "/media/a.png").unwrap().2.action,
        Action::Static(_)
    ));
}

#[test]
fn live_state_overrides_config_and_stale_state_warns() {
    let mut live = LiveState::default();
    live.services
        .insert("api".into(), ServiceState::live("green"));
    let (t, w) = table(SITES, &live);
    let api = t.service("api").unwrap();
    assert_eq!(api.pools[api.live].color.as_str(), "green");
    assert!(w.is_empty());
    assert_eq!(t.live_state(), live);

    live.services
        .insert("api".into(), ServiceState::live("teal"));
    let (t, w) = table(SITES, &live);
    let api = t.service("api").unwrap();
    assert_eq!(api.pools[api.live].color.as_str(), "blue");
    assert_eq!(w.len(), 1);
}

#[test]
fn vitals_survive_recompiles() {
    let cfg = Arc::new(load("t.toml", SITES, |_| None).unwrap());
    let vitals = Vitals::default();
    let (a, _) = RouteTable::compile(cfg.clone(), &LiveState::default(), &vitals, &|_, _| None);
    let _guard = a.service("api").unwrap().pools[0].stats.begin();
    a.service("api").unwrap().pools[1].members[0]
        .health
        .set_up(false);
    let (b, _) = RouteTable::compile(cfg, &LiveState::default(), &vitals, &|_, _| None);
    let api = b.service("api").unwrap();
    assert_eq!(api.pools[0].stats.in_flight(), 1);
    assert!(!api.pools[1].members[0].health.is_up());
}

/// Reference matcher: the longest configured prefix of `path`.
fn reference<'a>(prefixes: &'a [String], path: &str) -> Option<&'a str> {
    prefixes
        .iter()
        .filter(|p| path.starts_with(p.as_str()))
        .max_by_key(|p| p.len())
        .map(String::as_str)
}

proptest! {
    #[test]
    fn matcher_agrees_with_reference(
        segs in proptest::collection::btree_set("[a-c]{1,2}(/[a-c]{1,2}){0,2}/?", 1..12),
        paths in proptest::collection::vec("/[a-c/]{0,8}", 1..40),
    ) {
        let mut prefixes: Vec<String> = vec!["/".to_string()];
        prefixes.extend(segs.iter().map(|s| format!("/{s}")));
        prefixes.sort();
        prefixes.dedup();
        let mut text = String::from("[server]\nhttp = \"127.0.0.1:1\"\n[[sites]]\nhosts = [\"*\"]\n");
        for p in &prefixes {
            text.push_str(&format!("[[sites.routes]]\npath = \"{p}\"\nstatic = {{ root = \"/r\" }}\n"));
        }
        let (t, _) = table(&text, &LiveState::default());
        for path in &paths {
            let got = t.find("h", path).map(|(_, _, r)| r.prefix.as_str());
            prop_assert_eq!(got, reference(&prefixes, path));
        }
    }

    #[test]
    fn host_lookup_is_case_and_port_insensitive(name in "[a-z]{1,10}", port in 1u16..65535, upper in any::<bool>()) {
        let text = format!("[server]\nhttp = \"127.0.0.1:1\"\n[[sites]]\nhosts = [\"{name}.test\"]\n[[sites]]\nhosts = [\"*\"]\n");
        let (t, _) = table(&text, &LiveState::default());
        let host = if upper { format!("{}.TEST:{port}", name.to_uppercase()) } else { format!("{name}.test:{port}") };
        prop_assert_eq!(t.site(&host).map(|s| s.0), Some(0));
        prop_assert_eq!(t.site(&format!("x{name}.test")).map(|s| s.0), Some(1));
    }
}
