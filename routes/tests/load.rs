//! Loading config text: env expansion, parse errors and validation errors
//! with file, line and key.

use routes::load;

fn env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("0123456789abcdef-token".into()),
        _ => None,
    }
}

const GOOD: &str = r#"
[server]
http = "127.0.0.1:8080"
admin = "0.0.0.0:9090"
admin_token = "${TOKEN}"
state_dir = "state"

[[sites]]
hosts = ["example.com", "*.example.com"]

  [[sites.routes]]
  path = "/static/"
  static = { root = "/srv/static", precompressed = true, immutable_hashed = true }

  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
live = "blue"
health = { path = "/healthz", interval = "2s" }
colors.blue  = ["127.0.0.1:8001"]
colors.green = ["127.0.0.1:8002", "unix:/run/app-green.sock"]
"#;

#[test]
fn loads_a_good_config() {
    let c = load("/etc/duotone/duotone.toml", GOOD, env).unwrap();
    assert_eq!(
        c.server.admin_token.as_deref(),
        Some("0123456789abcdef-token")
    );
    assert_eq!(
        c.server.state_dir,
        std::path::Path::new("/etc/duotone/state")
    );
    assert_eq!(c.sites[0].hosts, vec!["example.com", "*.example.com"]);
    assert_eq!(c.services[0].colors.len(), 2);
    assert_eq!(c.services[0].health.as_ref().unwrap().interval.as_secs(), 2);
}

fn errors(text: &str) -> Vec<String> {
    match load("d.toml", text, env) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn unset_variable_names_its_line() {
    let e = errors("[server]\nhttp = \":80\"\nadmin_token = \"${NOPE}\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("d.toml:3: "), "{e:?}");
    assert!(e[0].contains("NOPE"), "{e:?}");
}

#[test]
fn syntax_error_names_its_line() {
    let e = errors("[server]\nhttp = \":80\"\nbroken = = 1\n");
    assert!(e[0].starts_with("d.toml:3"), "{e:?}");
}

#[test]
fn unknown_key_names_line_and_key() {
    let e = errors("[server]\nhttp = \":80\"\n\n[[sites]]\nhosts = [\"a.com\"]\nhostz = 1\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("d.toml:6: sites[0].hostz: unknown field"),
        "{e:?}"
    );
}

#[test]
fn lists_every_validation_error_with_line_and_key() {
    let text = r#"[server]
http = "not-an-address"
admin = "0.0.0.0:9090"

[[sites]]
hosts = ["a.com"]
  [[sites.routes]]
  path = "/"
  service = "missing"
  [[sites.routes]]
  path = "static/"
  static = { root = "/x" }

[[sites]]
hosts = ["a.com", "bad host"]

[services.api]
live = "purple"
colors.blue = ["127.0.0.1:8001", "http://nope:80"]
"#;
    let e = errors(text);
    let expect = [
        "d.toml:2: server.http: ",
        "d.toml:3: server.admin: admin listener 0.0.0.0:9090 is not loopback",
        "d.toml:9: sites[0].routes[0].service: unknown service \"missing\"",
        "d.toml:11: sites[0].routes[1].path: ",
        "d.toml:15: sites[1].hosts[0]: host \"a.com\" is already used by sites[0]",
        "d.toml:15: sites[1].hosts[1]: ",
        "d.toml:18: services.api.live: live color \"purple\"",
        "d.toml:19: services.api.colors.blue[1]: ",
    ];
    for want in expect {
        assert!(
            e.iter().any(|l| l.starts_with(want)),
            "missing {want:?} in\n{}",
            e.join("\n")
        );
    }
    assert_eq!(e.len(), expect.len(), "{}", e.join("\n"));
}

#[test]
fn acme_site_needs_acme_section_and_https() {
    let e = errors("[server]\nhttp = \":80\"\n[[sites]]\nhosts = [\"a.com\"]\ntls = \"acme\"\n");
    assert!(
        e.iter().any(
            |l| l.starts_with("d.toml:5: sites[0].tls: tls = \"acme\" needs an [acme] section")
        ),
        "{e:?}"
    );
    assert!(e.iter().any(|l| l.contains("server.https")), "{e:?}");
}

#[test]
fn weights_must_name_colors() {
    let text = "[server]\nhttp = \":80\"\n[services.api]\nlive = \"blue\"\nweights = { blue = 90, teal = 10 }\ncolors.blue = [\"127.0.0.1:1\"]\n";
    let e = errors(text);
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:5: services.api.weights.teal")),
        "{e:?}"
    );
}

#[test]
fn limits_out_of_range_are_named() {
    let text =
        format!("{GOOD}\n[limits]\nmax_headers = 300\nmax_connections = 0\nmax_open_files = 0\n");
    let errs = errors(&text);
    for key in ["max_headers", "max_connections", "max_open_files"] {
        assert!(
            errs.iter().any(|e| e.contains(&format!("limits.{key}"))),
            "{key} not named in {errs:#?}"
        );
    }
    let ok = format!("{GOOD}\n[limits]\nmax_headers = 256\nmax_open_files = 64\n");
    let c = load("d.toml", &ok, env).unwrap();
    assert_eq!((c.limits.max_headers, c.limits.max_open_files), (256, 64));
}

#[test]
fn blank_admin_tokens_are_refused_with_their_line() {
    for (token, why) in [
        ("", "empty"),
        ("   ", "empty"),
        ("                    ", "empty"),
        ("\\t \\n", "empty"),
        ("  short  ", "at least 16"),
    ] {
        let text = format!("[server]\nhttp = \":80\"\nadmin_token = \"{token}\"\n");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{token:?}: {e:?}");
        assert!(
            e[0].starts_with("d.toml:3: server.admin_token: ") && e[0].contains(why),
            "{token:?}: {e:?}"
        );
    }
    // An empty variable is the usual way to end up there.
    let text = "[server]\nhttp = \":80\"\nadmin_token = \"${EMPTY:-}\"\n";
    let e = errors(text);
    assert!(e[0].starts_with("d.toml:3: server.admin_token: "), "{e:?}");
    // Surrounding whitespace is not part of the token.
    let text = "[server]\nhttp = \":80\"\nadmin_token = \" 0123456789abcdef \"\n";
    let c = load("d.toml", text, env).unwrap();
    assert_eq!(c.server.admin_token.as_deref(), Some("0123456789abcdef"));
}

#[test]
fn admin_hosts_are_parsed_and_checked() {
    let text = GOOD.replace(
        "state_dir = \"state\"",
        "state_dir = \"state\"\nadmin_hosts = [\"Admin.Internal\", \"edge:9091\", \"[fd00::1]:9090\"]",
    );
    let c = load("d.toml", &text, env).unwrap();
    let hosts: Vec<(String, Option<u16>)> = c
        .server
        .admin_hosts
        .iter()
        .map(|h| (h.name.clone(), h.port))
        .collect();
    assert_eq!(
        hosts,
        vec![
            ("admin.internal".to_string(), None),
            ("edge".to_string(), Some(9091)),
            ("[fd00::1]".to_string(), Some(9090)),
        ]
    );
    let bad =
        "[server]\nhttp = \":80\"\nadmin_hosts = [\"ok\", \"http://x\", \"a:b\", \"\", \"::1\"]\n";
    let e = errors(bad);
    assert_eq!(e.len(), 4, "{e:?}");
    for (i, l) in e.iter().enumerate() {
        assert!(
            l.starts_with(&format!("d.toml:3: server.admin_hosts[{}]", i + 1)),
            "{e:?}"
        );
    }
}

#[test]
fn static_routes_do_not_follow_symlinks_by_default() {
    let c = load("d.toml", GOOD, env).unwrap();
    let statics: Vec<bool> = c.sites[0]
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            routes::config::ActionSpec::Static(s) => Some(s.follow_symlinks),
            _ => None,
        })
        .collect();
    assert_eq!(statics, vec![false]);
}

const HEALTH_HOSTS: &str = r#"
[server]
http = "127.0.0.1:8080"

[[sites]]
hosts = ["*.wild.example"]
  [[sites.routes]]
  path = "/"
  service = "api"

[[sites]]
hosts = ["*", "app.example.com", "www.example.com"]
  [[sites.routes]]
  path = "/api/"
  service = "api"
  [[sites.routes]]
  path = "/"
  service = "web"

[services.api]
health = { path = "/healthz/" }
colors.blue = ["unix:/run/api.sock"]

[services.web]
health = { path = "/healthz/", host = "web.internal:8000" }
colors.blue = ["127.0.0.1:8001"]

[services.lonely]
health = { path = "/healthz/" }
colors.blue = ["127.0.0.1:8002"]

[services.unchecked]
colors.blue = ["127.0.0.1:8003"]
"#;

#[test]
fn health_checks_send_the_first_exact_host_of_a_site_routing_to_the_service() {
    let c = load("d.toml", HEALTH_HOSTS, env).unwrap();
    let host = |name: &str| {
        let i = c.service_index(name).unwrap();
        c.services[i].health.as_ref().map(|h| h.host.clone())
    };
    // Wildcards and the catch-all are skipped, across sites in file order.
    assert_eq!(host("api"), Some(Some("app.example.com".into())));
    // An explicit host wins.
    assert_eq!(host("web"), Some(Some("web.internal:8000".into())));
    // No site routes to it: the check falls back to the member address.
    assert_eq!(host("lonely"), Some(None));
    assert_eq!(host("unchecked"), None);
}

#[test]
fn a_health_host_that_is_no_host_is_refused() {
    let text = HEALTH_HOSTS.replace("web.internal:8000", "web internal/x");
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("services.web.health.host") && e.contains("not a Host")),
        "{errs:?}"
    );
}

#[test]
fn response_headers_are_checked_with_line_and_key() {
    let text = r#"
[server]
http = "127.0.0.1:8080"

[[sites]]
hosts = ["a.example"]
headers = { "X-Frame-Options" = "DENY", "X-Bad Name" = "1" }
  [[sites.routes]]
  path = "/"
  service = "api"
  headers = { "Connection" = "close", "X-Ok" = "a\r\nX-Evil: 1" }

[services.api]
colors.blue = ["127.0.0.1:8001"]
"#;
    let e = errors(text);
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:7: sites[0].headers.X-Bad Name:")),
        "{e:?}"
    );
    assert!(
        e.iter().any(
            |l| l.starts_with("d.toml:11: sites[0].routes[0].headers.Connection:")
                && l.contains("hop-by-hop")
        ),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:11: sites[0].routes[0].headers.X-Ok:")),
        "{e:?}"
    );
    assert_eq!(e.len(), 3, "{e:?}");

    let good = text.replace(", \"X-Bad Name\" = \"1\"", "").replace(
        "\"Connection\" = \"close\", \"X-Ok\" = \"a\\r\\nX-Evil: 1\"",
        "\"x-frame-options\" = \"SAMEORIGIN\"",
    );
    let c = load("d.toml", &good, env).unwrap();
    assert_eq!(
        c.sites[0].headers,
        [("x-frame-options".to_string(), "DENY".to_string())]
    );
    assert_eq!(
        c.sites[0].routes[0].headers,
        [("x-frame-options".to_string(), "SAMEORIGIN".to_string())]
    );
}

#[test]
fn immutable_patterns_must_compile() {
    let text = r#"
[server]
http = "127.0.0.1:8080"

[[sites]]
hosts = ["a.example"]
  [[sites.routes]]
  path = "/assets/"
  static = { root = "/srv/assets", immutable_pattern = '-[A-Za-z0-9_-]{8}\.(js|css$' }
"#;
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("d.toml:9: sites[0].routes[0].static.immutable_pattern:")
            && e[0].contains("not a valid regular expression"),
        "{e:?}"
    );
    let good = text.replace("(js|css$", "(js|css)$");
    let c = load("d.toml", &good, env).unwrap();
    let routes::config::ActionSpec::Static(s) = &c.sites[0].routes[0].action else {
        panic!("static route expected");
    };
    assert_eq!(
        s.immutable_pattern.as_deref(),
        Some(r"-[A-Za-z0-9_-]{8}\.(js|css)$")
    );
}

#[test]
fn route_timeouts_override_the_services() {
    let text = r#"
[server]
http = "127.0.0.1:8080"

[[sites]]
hosts = ["a.example"]
  [[sites.routes]]
  path = "/"
  service = "api"
  [[sites.routes]]
  path = "/reports/"
  service = "api"
  read_timeout = "5m"
  connect_timeout = "1s"
  [[sites.routes]]
  path = "/static/"
  static = { root = "/srv" }
  read_timeout = "1s"
  [[sites.routes]]
  path = "/x/"
  service = "api"
  write_timeout = "0s"

[services.api]
colors.blue = ["127.0.0.1:8001"]
read_timeout = "30s"
"#;
    let e = errors(text);
    assert!(
        e.iter().any(
            |l| l.starts_with("d.toml:18: sites[0].routes[2].read_timeout:")
                && l.contains("service only")
        ),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:22: sites[0].routes[3].write_timeout:")),
        "{e:?}"
    );
    assert_eq!(e.len(), 2, "{e:?}");
    let good = text
        .replace("  read_timeout = \"1s\"\n", "")
        .replace("write_timeout = \"0s\"", "write_timeout = \"2s\"");
    let c = std::sync::Arc::new(load("d.toml", &good, env).unwrap());
    let (table, _) = routes::RouteTable::compile(
        c,
        &routes::LiveState::default(),
        &routes::Vitals::default(),
        &|_, _| None,
    );
    let svc = &table.services[0];
    let (_, _, reports) = table.find("a.example", "/reports/x").unwrap();
    let t = reports.upstream_timeouts(svc);
    assert_eq!(t.read.as_secs(), 300);
    assert_eq!(t.connect.as_secs(), 1);
    assert_eq!(t.write, svc.timeouts.write);
    let (_, _, x) = table.find("a.example", "/x/y").unwrap();
    assert_eq!(x.upstream_timeouts(svc).write.as_secs(), 2);
    assert_eq!(x.upstream_timeouts(svc).read.as_secs(), 30);
    let (_, _, root) = table.find("a.example", "/y").unwrap();
    assert!(root.timeouts.is_none());
    assert_eq!(root.upstream_timeouts(svc).read.as_secs(), 30);
}

#[test]
fn trusted_proxies_and_proxy_protocol_are_checked() {
    let text = r#"
[server]
http = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8", "10.0.0.0/33", "fd00::/8"]
proxy_protocol = ["http", "ftp"]
"#;
    let e = errors(text);
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:4: server.trusted_proxies[1]:")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:5: server.proxy_protocol[1]:") && l.contains("\"ftp\"")),
        "{e:?}"
    );
    let e = errors("[server]\nhttp = \"127.0.0.1:8080\"\nproxy_protocol = true\n");
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:3: server.proxy_protocol:")
                && l.contains("trusted_proxies")),
        "{e:?}"
    );
    let c = load(
        "d.toml",
        "[server]\nhttp = \"127.0.0.1:8080\"\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = [\"https\"]\n",
        env,
    )
    .unwrap();
    assert_eq!(c.server.trusted_proxies.len(), 1);
    assert!(c.server.proxy_protocol.https && !c.server.proxy_protocol.http);
}

#[test]
fn every_kind_of_tls_site_needs_an_https_listener() {
    for tls in [
        "\"acme\"",
        "\"self-signed\"",
        "{ cert = \"/c.pem\", key = \"/k.pem\" }",
    ] {
        let e = errors(&format!(
            "[server]\nhttp = \":80\"\n[acme]\nemail = \"a@b.c\"\n[[sites]]\nhosts = [\"a.com\"]\ntls = {tls}\n"
        ));
        assert!(
            e.iter().any(|l| l
                .ends_with("server.https: a site has TLS enabled but no https listener is set")),
            "{tls}: {e:?}"
        );
    }
    let ok = "[server]\nhttp = \":80\"\nhttps = \":443\"\n[[sites]]\nhosts = [\"a.com\"]\ntls = \"self-signed\"\n";
    assert!(load("d.toml", ok, env).is_ok());
}

#[test]
fn drain_upgraded_defaults_to_30s_and_is_checked() {
    let svc = |extra: &str| {
        format!(
            "[server]\nhttp = \":80\"\n[services.api]\ncolors.blue = [\"127.0.0.1:1\"]\n{extra}"
        )
    };
    let c = load("d.toml", &svc(""), env).unwrap();
    assert_eq!(c.services[0].drain_upgraded.as_secs(), 30);
    let c = load("d.toml", &svc("drain_upgraded = \"0s\"\n"), env).unwrap();
    assert!(c.services[0].drain_upgraded.is_zero());
    let e = errors(&svc("drain_upgraded = \"soon\"\n"));
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:5: services.api.drain_upgraded")),
        "{e:?}"
    );
}

#[test]
fn pause_settings_default_and_are_checked() {
    use routes::pause::PauseSpec;
    use std::time::Duration;
    let svc = |extra: &str| {
        format!(
            "[server]\nhttp = \":80\"\n[services.api]\ncolors.blue = [\"127.0.0.1:1\"]\n{extra}"
        )
    };
    let c = load("d.toml", &svc(""), env).unwrap();
    assert_eq!(c.services[0].pause, PauseSpec::default());
    assert_eq!(
        c.services[0].pause,
        PauseSpec {
            timeout: Duration::from_secs(30),
            queue: 1000,
            retry_after: Duration::from_secs(5),
        }
    );
    let c = load("d.toml", &svc("pause = { timeout = \"2m\" }\n"), env).unwrap();
    assert_eq!(
        c.services[0].pause,
        PauseSpec {
            timeout: Duration::from_secs(120),
            ..PauseSpec::default()
        }
    );
    let c = load(
        "d.toml",
        &svc("pause = { timeout = \"5s\", queue = 10, retry_after = \"1s\" }\n"),
        env,
    )
    .unwrap();
    assert_eq!(
        c.services[0].pause,
        PauseSpec {
            timeout: Duration::from_secs(5),
            queue: 10,
            retry_after: Duration::from_secs(1),
        }
    );
    let e = errors(&svc("pause = { timeout = \"soon\" }\n"));
    assert!(
        e.iter()
            .any(|l| l.starts_with("d.toml:5: services.api.pause.timeout")),
        "{e:?}"
    );
    let e = errors(&svc("pause = { queue = -1 }\n"));
    assert!(e.iter().any(|l| l.contains("services.api")), "{e:?}");
    let e = errors(&svc("pause = { hold = \"1s\" }\n"));
    assert!(e.iter().any(|l| l.contains("hold")), "{e:?}");
}

#[test]
fn unknown_host_takes_404_421_or_close() {
    use routes::config::UnknownHost;
    let with = |value: &str| format!("[server]\nhttp = \":80\"\nunknown_host = {value}\n");
    let c = load("d.toml", "[server]\nhttp = \":80\"\n", env).unwrap();
    assert_eq!(c.server.unknown_host, UnknownHost::Status(404));
    for (value, want) in [
        ("404", UnknownHost::Status(404)),
        ("\"404\"", UnknownHost::Status(404)),
        ("421", UnknownHost::Status(421)),
        ("\"421\"", UnknownHost::Status(421)),
        ("\"close\"", UnknownHost::Close),
    ] {
        let c = load("d.toml", &with(value), env).unwrap();
        assert_eq!(c.server.unknown_host, want, "{value}");
    }
    for value in ["444", "\"444\"", "200", "\"Close\"", "-1", "true"] {
        let e = errors(&with(value));
        assert_eq!(e.len(), 1, "{value}: {e:?}");
        assert!(
            e[0].starts_with("d.toml:3: server.unknown_host: "),
            "{value}: {e:?}"
        );
    }
    assert!(errors(&with("444"))[0].contains("use 404, 421 or \"close\""));
}

const BUFFERED: &str = r#"
[server]
http = "127.0.0.1:8080"
state_dir = "/var/lib/dt"

[[sites]]
hosts = ["a.example"]
  [[sites.routes]]
  path = "/"
  service = "api"
  [[sites.routes]]
  path = "/uploads/"
  service = "api"
  buffer_requests = false
  [[sites.routes]]
  path = "/events/"
  service = "api"
  buffer_responses = false

[services.api]
colors.blue = ["127.0.0.1:8001"]
"#;

#[test]
fn buffering_defaults_and_route_switches() {
    let c = std::sync::Arc::new(load("/etc/d.toml", BUFFERED, env).unwrap());
    let b = &c.buffering;
    assert_eq!(b.dir, std::path::Path::new("/var/lib/dt/buffers"));
    assert_eq!(b.memory, 1024 * 1024);
    assert_eq!(b.total_memory, 64 * 1024 * 1024);
    assert_eq!(b.max_file, 1 << 30);
    let (table, _) = routes::RouteTable::compile(
        c,
        &routes::LiveState::default(),
        &routes::Vitals::default(),
        &|_, _| None,
    );
    let route = |path| table.find("a.example", path).unwrap().2;
    assert!(route("/").buffer_requests && route("/").buffer_responses);
    assert!(!route("/uploads/a").buffer_requests && route("/uploads/a").buffer_responses);
    assert!(route("/events/a").buffer_requests && !route("/events/a").buffer_responses);

    let text = format!(
        "{BUFFERED}\n[buffering]\ndir = \"buffers\"\nmemory = \"1MiB\"\n\
         total_memory = \"512MiB\"\nmax_file = \"512KB\"\n"
    );
    let c = load("/etc/duotone/d.toml", &text, env).unwrap();
    assert_eq!(
        c.buffering.dir,
        std::path::Path::new("/etc/duotone/buffers")
    );
    assert_eq!(c.buffering.memory, 1 << 20);
    assert_eq!(c.buffering.total_memory, 512 << 20);
    assert_eq!(c.buffering.max_file, 512 << 10);
}

#[test]
fn buffering_problems_are_named_with_line_and_key() {
    let text =
        format!("{BUFFERED}\n[buffering]\nmemory = \"lots\"\nmax_file = \"1x\"\ndir = \"\"\n");
    let e = errors(&text);
    let base = BUFFERED.lines().count();
    let expect = [
        format!("d.toml:{}: buffering.memory: invalid size", base + 3),
        format!("d.toml:{}: buffering.max_file: invalid size unit", base + 4),
        format!("d.toml:{}: buffering.dir: empty", base + 5),
    ];
    for want in &expect {
        assert!(e.iter().any(|l| l.starts_with(want)), "{want}: {e:?}");
    }
    assert_eq!(e.len(), expect.len(), "{e:?}");

    let text = format!("{BUFFERED}\n[buffering]\nmemory = \"1m\"\ntotal_memory = \"64k\"\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!(
            "d.toml:{}: buffering.total_memory: memory (",
            base + 4
        )),
        "{e:?}"
    );
    let e = errors(&format!("{BUFFERED}\n[buffering]\nmemry = \"1m\"\n"));
    assert!(e[0].contains("buffering.memry: unknown field"), "{e:?}");

    // Only service routes buffer.
    let text = BUFFERED.replace(
        "[services.api]",
        "  [[sites.routes]]\n  path = \"/s/\"\n  static = { root = \"/srv\" }\n  \
         buffer_responses = false\n\n[services.api]",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(
            "sites[0].routes[3].buffer_responses: buffering applies to routes with a service only"
        ),
        "{e:?}"
    );
}

#[test]
fn uwsgi_members_and_one_protocol_per_service() {
    use routes::Protocol;
    let text = r#"[server]
http = "127.0.0.1:8080"

[services.app]
live = "blue"
colors.blue = ["uwsgi://127.0.0.1:3031"]
colors.green = ["uwsgi+unix:/run/app-green.sock"]

[services.web]
colors.blue = ["127.0.0.1:8000", "unix:/run/web.sock"]
"#;
    let c = std::sync::Arc::new(load("d.toml", text, env).unwrap());
    assert_eq!(c.services[0].protocol, Protocol::Uwsgi);
    assert_eq!(c.services[1].protocol, Protocol::Http);
    let (table, _) = routes::RouteTable::compile(
        c,
        &routes::LiveState::default(),
        &routes::Vitals::default(),
        &|_, _| None,
    );
    let app = table.service("app").unwrap();
    assert_eq!(app.protocol, Protocol::Uwsgi);
    for pool in &app.pools {
        assert!(pool.members.iter().all(|m| m.protocol == Protocol::Uwsgi));
    }
    assert_eq!(
        app.pools[1].members[0].addr,
        routes::MemberAddr::Unix("/run/app-green.sock".into())
    );
    assert_eq!(
        app.pools[0].members[0].resolved,
        Some("127.0.0.1:3031".parse().unwrap())
    );
    assert_eq!(table.service("web").unwrap().protocol, Protocol::Http);

    let mixed = r#"[server]
http = "127.0.0.1:8080"

[services.app]
live = "blue"
colors.blue = ["uwsgi://127.0.0.1:3031"]
colors.green = ["127.0.0.1:8002",
  "uwsgi+unix:run/relative.sock"]
"#;
    let e = errors(mixed);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("d.toml:7: services.app.colors.green[0]: \"127.0.0.1:8002\" speaks http but services.app.colors.blue[0] speaks uwsgi"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("d.toml:8: services.app.colors.green[1]: \"uwsgi+unix:run/relative.sock\": unix socket path must be absolute"),
        "{e:?}"
    );
}

#[test]
fn error_pages_and_maintenance_are_checked_with_line_and_key() {
    let text = r#"
[server]
http = "127.0.0.1:8080"

[maintenance]
allow = ["10.0.0.0/8", "nope"]
cookie = "bad cookie"
secret = "short"
retry_after = "soon"

[[sites]]
hosts = ["a.example"]
error_pages = { 404 = "/srv/404.html", 418 = "/srv/teapot.html", maintenance = "m.html", oops = "x" }
  [[sites.routes]]
  path = "/"
  service = "api"

[services.api]
colors.blue = ["127.0.0.1:8001"]
"#;
    let e = errors(text);
    for (line, key) in [
        (6, "maintenance.allow[1]:"),
        (7, "maintenance.cookie:"),
        (8, "maintenance.secret:"),
        (9, "maintenance.retry_after:"),
        (13, "sites[0].error_pages.418: unknown error page"),
        (13, "sites[0].error_pages.oops: unknown error page"),
    ] {
        let want = format!("d.toml:{line}: {key}");
        assert!(e.iter().any(|l| l.starts_with(&want)), "{want} in {e:?}");
    }
    assert_eq!(e.len(), 6, "{e:?}");

    let good = text
        .replace(", \"nope\"", "")
        .replace("bad cookie", "staff_pass")
        .replace("\"short\"", "\"0123456789abcdef0123\"")
        .replace("\"soon\"", "\"120s\"")
        .replace(", 418 = \"/srv/teapot.html\"", "")
        .replace(", oops = \"x\"", "");
    let c = load("/etc/duotone/d.toml", &good, env).unwrap();
    let m = &c.maintenance;
    assert_eq!(m.allow.len(), 1);
    assert_eq!(m.cookie, "staff_pass");
    assert_eq!(m.secret.as_deref(), Some("0123456789abcdef0123"));
    assert_eq!(m.retry_after.as_secs(), 120);
    assert_eq!(m.page, None);
    use routes::config::PageKey;
    assert_eq!(
        c.sites[0].error_pages,
        [
            (PageKey::Status(404), "/srv/404.html".into()),
            (PageKey::Maintenance, "/etc/duotone/m.html".into()),
        ]
    );

    // Defaults: no secret (no cookie lets through), 300 s, the cookie name.
    let c = load("d.toml", &good.replace("[maintenance]", "[unused]"), env);
    assert!(c.is_err(), "unknown tables are refused");
    let plain = text.split("[maintenance]").next().unwrap().to_string()
        + &text[text.find("[[sites]]").unwrap()..].replace(
            "error_pages = { 404 = \"/srv/404.html\", 418 = \"/srv/teapot.html\", maintenance = \"m.html\", oops = \"x\" }\n",
            "",
        );
    let c = load("d.toml", &plain, env).unwrap();
    assert_eq!(c.maintenance, routes::config::Maintenance::default());
    assert_eq!(c.maintenance.cookie, "duotone_maintenance");
    assert!(c.sites[0].error_pages.is_empty());

    // A cookie without a secret is a mistake.
    let e = errors(&good.replace("secret = \"0123456789abcdef0123\"\n", ""));
    assert!(
        e.iter().any(
            |l| l.starts_with("/etc/duotone/d.toml:7: maintenance.cookie:")
                || l.starts_with("d.toml:7: maintenance.cookie:")
        ),
        "{e:?}"
    );
}

const CANARY_BASE: &str = r#"[server]
http = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
[[sites]]
hosts = ["a.com"]
  [[sites.routes]]
  path = "/"
  service = "api"
[services.api]
live = "blue"
colors.blue = ["127.0.0.1:8001"]
colors.green = ["127.0.0.1:8002"]
"#;

#[test]
fn canary_and_preview_defaults() {
    let c = load("d.toml", CANARY_BASE, env).unwrap();
    let canary = &c.services[0].canary;
    assert!(canary.sticky);
    assert_eq!(canary.cookie, "duotone_api");
    assert_eq!(canary.max_age.as_secs(), 86_400);
    assert!(canary.preview.is_none());

    let text = format!(
        "{CANARY_BASE}canary = {{ sticky = false, cookie = \"v\", max_age = \"2h\" }}\n\
         preview = {{ secret = \"${{TOKEN}}\" }}\n"
    );
    let c = load("d.toml", &text, env).unwrap();
    let canary = &c.services[0].canary;
    assert!(!canary.sticky);
    assert_eq!(canary.cookie, "v");
    assert_eq!(canary.max_age.as_secs(), 7_200);
    let p = canary.preview.as_ref().unwrap();
    assert_eq!(p.secret, "0123456789abcdef-token");
    assert_eq!(
        (p.header.as_str(), p.cookie.as_str()),
        ("Duotone-Preview", "duotone_preview")
    );
    // The secret is never printed.
    assert!(!format!("{p:?}").contains("0123456789abcdef"));

    // No secret (an unset variable with an empty default): no preview.
    let text =
        format!("{CANARY_BASE}preview = {{ secret = \"${{NOPE:-}}\", header = \"X-Peek\" }}\n");
    let c = load("d.toml", &text, env).unwrap();
    assert!(c.services[0].canary.preview.is_none());
}

#[test]
fn canary_and_preview_errors_name_their_keys() {
    let text = format!(
        "{CANARY_BASE}canary = {{ cookie = \"a b\", max_age = \"0s\" }}\n\
         preview = {{ secret = \"short\", header = \"x_peek\", cookie = \"a;b\" }}\n"
    );
    let e = errors(&text);
    let expect = [
        "d.toml:13: services.api.canary.cookie: \"a b\" is not a cookie name",
        "d.toml:13: services.api.canary.max_age: must be at least 1s",
        "d.toml:14: services.api.preview.header: \"x_peek\"",
        "d.toml:14: services.api.preview.cookie: \"a;b\" is not a cookie name",
        "d.toml:14: services.api.preview.secret: too short",
    ];
    for want in expect {
        assert!(
            e.iter().any(|l| l.starts_with(want)),
            "missing {want:?} in\n{}",
            e.join("\n")
        );
    }
    assert_eq!(e.len(), expect.len(), "{}", e.join("\n"));

    let text = format!(
        "{CANARY_BASE}preview = {{ secret = \"${{TOKEN}}\", cookie = \"duotone_api\", header = \"Cookie\" }}\n\
         canary = {{ stiky = true }}\n"
    );
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|l| l.contains("services.api.canary: unknown field `stiky`")),
        "{e:?}"
    );
    let text =
        format!("{CANARY_BASE}preview = {{ secret = \"${{TOKEN}}\", cookie = \"duotone_api\", header = \"Cookie\" }}\n");
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|l| l.contains("preview.cookie: \"duotone_api\" is the sticky cookie")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.contains("preview.header: \"Cookie\"")),
        "{e:?}"
    );
    for header in ["Upgrade", "X-Forwarded-For", "te", "Duotone Preview", ""] {
        let text = format!(
            "{CANARY_BASE}preview = {{ secret = \"${{TOKEN}}\", header = \"{header}\" }}\n"
        );
        let e = errors(&text);
        assert!(
            e.len() == 1 && e[0].contains(&format!("preview.header: {header:?}")),
            "{header}: {e:?}"
        );
    }
}

/// What `duotone check` uses: the same file with no variables set loads,
/// with one warning per unset variable at its line, and the stand-in for a
/// token is a valid token.
#[test]
fn stand_ins_make_unset_variables_warnings() {
    let none = |_: &str| None;
    let (c, warnings) =
        routes::load_with_stand_ins("duotone.toml", GOOD, none, &|_| Vec::new(), &|_| Vec::new())
            .unwrap();
    assert_eq!(
        c.server.admin_token.as_deref(),
        Some(routes::stand_in("TOKEN").as_str())
    );
    let w: Vec<String> = warnings.0.iter().map(|d| d.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("duotone.toml:5: environment variable TOKEN is not set here"),
        "{w:?}"
    );
    // `load` (what `duotone run` and reloads use) still refuses the file.
    assert!(load("duotone.toml", GOOD, none).is_err());
    // A stand-in in an address explains the error it causes.
    let text = GOOD.replace("\"127.0.0.1:8080\"", "\"${HTTP_ADDR}\"");
    let err =
        routes::load_with_stand_ins("duotone.toml", &text, env, &|_| Vec::new(), &|_| Vec::new())
            .unwrap_err()
            .to_string();
    assert!(err.contains("HTTP_ADDR is not set here"), "{err}");
    assert!(
        err.contains("\"(HTTP_ADDR is not set)\" is not an address"),
        "{err}"
    );
}
