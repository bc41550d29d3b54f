//! Checks a [`RawConfig`] and builds the typed [`Config`], collecting every
//! problem (with its key path) instead of stopping at the first.

use crate::config::*;
use crate::diag::KeyPath;
use crate::duration::{parse as parse_duration, parse_size};
use crate::host;
use crate::pool::{Color, MemberAddr, Protocol};
use crate::raw::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A problem found by validation: where, and what.
pub type Problem = (KeyPath, String);

/// Default of `services.*.drain_upgraded`.
pub const DEFAULT_DRAIN_UPGRADED: Duration = Duration::from_secs(30);

/// Let's Encrypt production directory.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt staging directory.
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Default upstream timeouts.
pub fn default_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        read: Duration::from_secs(60),
        write: Duration::from_secs(60),
        idle: Duration::from_secs(60),
    }
}

pub(crate) struct Checker<'a> {
    problems: Vec<Problem>,
    /// Directory relative paths are resolved against.
    base: &'a Path,
}

impl Checker<'_> {
    pub(crate) fn err(&mut self, at: KeyPath, msg: impl Into<String>) {
        self.problems.push((at, msg.into()));
    }

    pub(crate) fn duration(
        &mut self,
        at: KeyPath,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.err(at, e);
                default
            }),
        }
    }

    fn size(&mut self, at: KeyPath, v: &Option<String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(s).unwrap_or_else(|e| {
                self.err(at, e);
                default
            }),
        }
    }

    fn addr(&mut self, at: KeyPath, v: &Option<String>) -> Option<SocketAddr> {
        let s = v.as_deref()?.trim();
        if s.is_empty() || s == "off" {
            return None;
        }
        let full = if s.starts_with(':') {
            format!("0.0.0.0{s}")
        } else {
            s.to_string()
        };
        match full.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    at,
                    format!("{s:?} is not an address like \"0.0.0.0:80\" or \"[::]:443\""),
                );
                None
            }
        }
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Validates `raw`. Relative paths are resolved against `base` (the config
/// file's directory). Returns the typed config or every problem found.
pub fn validate(raw: &RawConfig, base: &Path) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
        base,
    };
    let server = check_server(&mut c, &raw.server);
    let services = check_services(&mut c, &raw.services);
    let known: HashSet<&str> = raw.services.keys().map(String::as_str).collect();
    let sites = check_sites(&mut c, &raw.sites, &known);
    let services = default_health_hosts(services, &sites);
    let acme = check_acme(&mut c, raw.acme.as_ref(), &server, &sites);
    let limits = check_limits(&mut c, &raw.limits);
    let buffering = check_buffering(&mut c, &raw.buffering, &server.state_dir);
    let maintenance = check_maintenance(&mut c, &raw.maintenance);
    let cluster = raw
        .cluster
        .as_ref()
        .map(|r| crate::validate_cluster::check(&mut c, r, acme.is_some()));
    let access_log = match raw.log.access.as_deref() {
        None | Some("json") => AccessLog::Json,
        Some("combined") => AccessLog::Combined,
        Some("off") => AccessLog::Off,
        Some(other) => {
            c.err(
                KeyPath::root("log").key("access"),
                format!(
                    "unknown access log format {other:?}: use \"json\", \"combined\" or \"off\""
                ),
            );
            AccessLog::Json
        }
    };
    let needs_https = sites.iter().any(|s| s.tls != Tls::Off);
    if needs_https && server.https.is_none() {
        c.err(
            KeyPath::root("server").key("https"),
            "a site has TLS enabled but no https listener is set",
        );
    }
    if raw.server.http.is_none() && raw.server.https.is_none() {
        c.err(
            KeyPath::root("server"),
            "no listener: set server.http and/or server.https",
        );
    }
    if c.problems.is_empty() {
        Ok(Config {
            server,
            acme,
            sites,
            services,
            limits,
            access_log,
            buffering,
            maintenance,
            cluster,
        })
    } else {
        Err(c.problems)
    }
}

fn check_server(c: &mut Checker, s: &RawServer) -> Server {
    let at = KeyPath::root("server");
    let http = c.addr(at.key("http"), &s.http);
    let https = c.addr(at.key("https"), &s.https);
    let admin = match s.admin.as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        Some(_) => c.addr(at.key("admin"), &s.admin),
    };
    // An empty or blank token is a mistake (an empty variable, a stray
    // newline), never a way to turn auth off: leave the key out for that.
    let admin_token = s.admin_token.as_deref().map(str::trim);
    match admin_token {
        Some("") => c.err(
            at.key("admin_token"),
            "admin token is empty or only whitespace: set a token of at least 16 characters \
             (e.g. openssl rand -hex 32), or remove admin_token",
        ),
        Some(t) if t.chars().count() < 16 => c.err(
            at.key("admin_token"),
            "admin token must be at least 16 characters",
        ),
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => c.err(
            at.key("admin_token"),
            "admin token must be printable ASCII (it is sent in an HTTP header)",
        ),
        _ => {}
    }
    let admin_token = admin_token.filter(|t| !t.is_empty()).map(str::to_string);
    let mut admin_hosts = Vec::new();
    for (i, h) in s.admin_hosts.iter().enumerate() {
        match split_authority(h) {
            Some((name, port)) if !h.contains('/') => admin_hosts.push(AdminHost { name, port }),
            _ => c.err(
                at.key("admin_hosts").index(i),
                format!(
                    "{h:?} is not a host name like \"admin.internal\" or \"admin.internal:9090\""
                ),
            ),
        }
    }
    if let Some(a) = admin {
        if !a.ip().is_loopback() && admin_token.is_none() {
            c.err(
                at.key("admin"),
                format!("admin listener {a} is not loopback: set server.admin_token"),
            );
        }
    }
    let mut trusted_proxies = Vec::new();
    for (i, a) in s.trusted_proxies.iter().enumerate() {
        match IpNet::parse(a) {
            Ok(n) => trusted_proxies.push(n),
            Err(e) => c.err(at.key("trusted_proxies").index(i), e),
        }
    }
    let mut proxy_protocol = ProxyProtocol::default();
    match &s.proxy_protocol {
        None => {}
        Some(RawProxyProtocol::All(on)) => {
            proxy_protocol = ProxyProtocol {
                http: *on,
                https: *on,
            }
        }
        Some(RawProxyProtocol::Listeners(names)) => {
            for (i, n) in names.iter().enumerate() {
                match n.as_str() {
                    "http" => proxy_protocol.http = true,
                    "https" => proxy_protocol.https = true,
                    other => c.err(
                        at.key("proxy_protocol").index(i),
                        format!("{other:?}: name a listener, \"http\" or \"https\""),
                    ),
                }
            }
        }
    }
    if (proxy_protocol.http || proxy_protocol.https) && trusted_proxies.is_empty() {
        c.err(
            at.key("proxy_protocol"),
            "the PROXY protocol is accepted only from server.trusted_proxies: list the load balancers there",
        );
    }
    if s.threads == Some(0) {
        c.err(at.key("threads"), "threads must be at least 1");
    }
    let unknown_host = match &s.unknown_host {
        None => UnknownHost::default(),
        Some(RawUnknownHost::Status(n @ (404 | 421))) => UnknownHost::Status(*n as u16),
        Some(RawUnknownHost::Name(n)) if n == "404" || n == "421" => {
            UnknownHost::Status(if n == "404" { 404 } else { 421 })
        }
        Some(RawUnknownHost::Name(n)) if n == "close" => UnknownHost::Close,
        Some(other) => {
            let v = match other {
                RawUnknownHost::Status(n) => n.to_string(),
                RawUnknownHost::Name(n) => format!("{n:?}"),
            };
            c.err(
                at.key("unknown_host"),
                format!("{v}: use 404, 421 or \"close\" (close the connection without a response)"),
            );
            UnknownHost::default()
        }
    };
    Server {
        http,
        https,
        admin,
        state_dir: c.path(s.state_dir.as_deref().unwrap_or("/var/lib/duotone")),
        admin_token,
        admin_hosts,
        threads: s.threads,
        grace_period: c.duration(
            at.key("grace_period"),
            &s.grace_period,
            Duration::from_secs(30),
        ),
        trusted_proxies,
        proxy_protocol,
        unknown_host,
    }
}

fn check_buffering(c: &mut Checker, b: &RawBuffering, state_dir: &Path) -> Buffering {
    let at = KeyPath::root("buffering");
    let d = Buffering::defaults(state_dir);
    let dir = match b.dir.as_deref().map(str::trim) {
        None => d.dir,
        Some("") => {
            c.err(
                at.key("dir"),
                "empty: name a directory for temp files, or remove the key",
            );
            d.dir
        }
        Some(p) => c.path(p),
    };
    let memory_size = |c: &mut Checker, key: &str, v: &Option<String>, default: usize| {
        let n = c.size(at.key(key), v, default as u64);
        usize::try_from(n).unwrap_or_else(|_| {
            c.err(at.key(key), "too large for this machine");
            default
        })
    };
    let memory = memory_size(c, "memory", &b.memory, d.memory);
    let total_memory = memory_size(c, "total_memory", &b.total_memory, d.total_memory);
    if total_memory < memory {
        c.err(
            at.key(if b.total_memory.is_some() {
                "total_memory"
            } else {
                "memory"
            }),
            format!(
                "memory ({memory} bytes, per request and direction) is more than total_memory \
                 ({total_memory} bytes, all requests together)"
            ),
        );
    }
    Buffering {
        dir,
        memory,
        total_memory,
        max_file: c.size(at.key("max_file"), &b.max_file, d.max_file),
    }
}

fn check_acme(
    c: &mut Checker,
    raw: Option<&RawAcme>,
    server: &Server,
    sites: &[SiteSpec],
) -> Option<Acme> {
    let wanted = sites.iter().position(|s| s.tls == Tls::Acme);
    let Some(a) = raw else {
        if let Some(i) = wanted {
            c.err(
                KeyPath::root("sites").index(i).key("tls"),
                "tls = \"acme\" needs an [acme] section (at least: directory = \"letsencrypt\")",
            );
        }
        return None;
    };
    let at = KeyPath::root("acme");
    let directory = match a.directory.as_deref().unwrap_or("letsencrypt") {
        "letsencrypt" => LETSENCRYPT.to_string(),
        "letsencrypt-staging" => LETSENCRYPT_STAGING.to_string(),
        url if url.starts_with("https://") => url.to_string(),
        other => {
            c.err(
                at.key("directory"),
                format!(
                    "{other:?}: use \"letsencrypt\", \"letsencrypt-staging\" or an https:// URL"
                ),
            );
            String::new()
        }
    };
    let challenge = match a.challenge.as_deref().unwrap_or("http-01") {
        "http-01" => Challenge::Http01,
        "tls-alpn-01" => Challenge::TlsAlpn01,
        other => {
            c.err(
                at.key("challenge"),
                format!("{other:?}: use \"http-01\" or \"tls-alpn-01\""),
            );
            Challenge::Http01
        }
    };
    if challenge == Challenge::Http01 && server.http.is_none() && wanted.is_some() {
        c.err(
            at.key("challenge"),
            "http-01 needs server.http (the CA dials port 80)",
        );
    }
    if let Some(e) = &a.email {
        if !e.contains('@') {
            c.err(at.key("email"), format!("{e:?} is not an email address"));
        }
    }
    Some(Acme {
        email: a.email.clone(),
        directory,
        challenge,
        ca_roots: a.ca_roots.as_deref().map(|p| c.path(p)),
    })
}

fn check_sites(c: &mut Checker, sites: &[RawSite], services: &HashSet<&str>) -> Vec<SiteSpec> {
    let mut seen_hosts: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, s) in sites.iter().enumerate() {
        let at = KeyPath::root("sites").index(i);
        if s.hosts.is_empty() {
            c.err(
                at.key("hosts"),
                "a site needs at least one host (use [\"*\"] for a default site)",
            );
        }
        let mut hosts = Vec::new();
        for (j, h) in s.hosts.iter().enumerate() {
            let h = h.trim().to_ascii_lowercase();
            if let Err(e) = host::check_pattern(&h) {
                c.err(at.key("hosts").index(j), e);
                continue;
            }
            if let Some(prev) = seen_hosts.insert(h.clone(), i) {
                c.err(
                    at.key("hosts").index(j),
                    format!("host {h:?} is already used by sites[{prev}]"),
                );
            }
            hosts.push(h);
        }
        let tls = match &s.tls {
            None => Tls::Off,
            Some(RawTls::Mode(m)) => match m.as_str() {
                "off" => Tls::Off,
                "acme" => Tls::Acme,
                "self-signed" => Tls::SelfSigned,
                other => {
                    c.err(
                        at.key("tls"),
                        format!("{other:?}: use \"acme\", \"off\", \"self-signed\" or {{ cert = \"…\", key = \"…\" }}"),
                    );
                    Tls::Off
                }
            },
            Some(RawTls::Files { cert, key }) => Tls::Files {
                cert: c.path(cert),
                key: c.path(key),
            },
        };
        if tls == Tls::Acme {
            for h in hosts.iter().filter(|h| h.starts_with('*')) {
                c.err(
                    at.key("tls"),
                    format!("ACME cannot issue for {h:?} with http-01/tls-alpn-01: list exact hosts or use a static certificate"),
                );
            }
        }
        let hsts = check_hsts(c, at.key("hsts"), s.hsts.as_ref());
        let headers = check_headers(c, at.key("headers"), s.headers.as_ref());
        let routes = check_routes(c, &at, &s.routes, services);
        let error_pages = check_error_pages(c, at.key("error_pages"), s.error_pages.as_ref());
        out.push(SiteSpec {
            hosts,
            tls,
            hsts,
            headers,
            error_pages,
            routes,
        });
    }
    out
}

/// `error_pages = { 404 = "…", maintenance = "…" }`: known keys, a path
/// for each (read when the snapshot is built).
fn check_error_pages(
    c: &mut Checker,
    at: KeyPath,
    pages: Option<&BTreeMap<String, String>>,
) -> Vec<(PageKey, PathBuf)> {
    let mut out = Vec::new();
    for (key, file) in pages.into_iter().flatten() {
        let Some(k) = PageKey::parse(key.trim()) else {
            let statuses: Vec<String> = PageKey::STATUSES.iter().map(u16::to_string).collect();
            c.err(
                at.key(key),
                format!(
                    "unknown error page {key:?}: use a status the edge answers itself ({}) \
                     or \"maintenance\"",
                    statuses.join(", ")
                ),
            );
            continue;
        };
        if file.trim().is_empty() {
            c.err(
                at.key(key),
                "empty: name the page's file, or remove the key",
            );
            continue;
        }
        out.push((k, c.path(file.trim())));
    }
    out
}

/// Whether `s` is a cookie name (an RFC 9110 token).
fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_maintenance(c: &mut Checker, m: &RawMaintenance) -> Maintenance {
    let at = KeyPath::root("maintenance");
    let d = Maintenance::default();
    let mut allow = Vec::new();
    for (i, a) in m.allow.iter().enumerate() {
        match IpNet::parse(a) {
            Ok(n) => allow.push(n),
            Err(e) => c.err(at.key("allow").index(i), e),
        }
    }
    let cookie = match m.cookie.as_deref().map(str::trim) {
        None => d.cookie,
        Some(n) if is_cookie_name(n) => n.to_string(),
        Some(n) => {
            c.err(
                at.key("cookie"),
                format!("{n:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
            );
            d.cookie
        }
    };
    let secret = match m.secret.as_deref().map(str::trim) {
        None => {
            if m.cookie.is_some() {
                c.err(
                    at.key("cookie"),
                    "a maintenance cookie needs a secret (its value that lets a request through)",
                );
            }
            None
        }
        Some(s) if s.chars().count() < 16 => {
            c.err(
                at.key("secret"),
                "the maintenance secret must be at least 16 characters (e.g. openssl rand -hex 16)",
            );
            None
        }
        Some(s)
            if !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\";,\\".contains(&b)) =>
        {
            c.err(
                at.key("secret"),
                "the maintenance secret must be printable ASCII without spaces, '\"', ';', ',' or \
                 '\\' (it is a cookie value)",
            );
            None
        }
        Some(s) => Some(s.to_string()),
    };
    let page = match m.page.as_deref().map(str::trim) {
        None => None,
        Some("") => {
            c.err(
                at.key("page"),
                "empty: name the page's file, or remove the key",
            );
            None
        }
        Some(p) => Some(c.path(p)),
    };
    Maintenance {
        allow,
        cookie,
        secret,
        retry_after: c.duration(at.key("retry_after"), &m.retry_after, d.retry_after),
        page,
    }
}

fn check_hsts(c: &mut Checker, at: KeyPath, h: Option<&RawHsts>) -> Option<Hsts> {
    match h? {
        RawHsts::Enabled(false) => None,
        RawHsts::Enabled(true) => Some(Hsts {
            value: "max-age=31536000".into(),
        }),
        RawHsts::Settings {
            max_age,
            include_subdomains,
            preload,
        } => {
            let age = c.duration(at.key("max_age"), max_age, Duration::from_secs(31_536_000));
            let mut value = format!("max-age={}", age.as_secs());
            if *include_subdomains {
                value.push_str("; includeSubDomains");
            }
            if *preload {
                value.push_str("; preload");
            }
            Some(Hsts { value })
        }
    }
}

fn check_routes(
    c: &mut Checker,
    site: &KeyPath,
    routes: &[RawRoute],
    services: &HashSet<&str>,
) -> Vec<RouteSpec> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let at = site.key("routes").index(i);
        let path = match r.path.as_deref() {
            Some(p) if p.starts_with('/') && !p.contains(['?', '#', ' ']) => p.to_string(),
            Some(p) => {
                c.err(
                    at.key("path"),
                    format!("{p:?}: a route path is a prefix starting with '/'"),
                );
                continue;
            }
            None => {
                c.err(
                    at.key("path"),
                    "missing: every route needs a path prefix such as \"/\"",
                );
                continue;
            }
        };
        if !seen.insert(path.clone()) {
            c.err(
                at.key("path"),
                format!("{path:?} appears twice in this site"),
            );
        }
        let kinds = [
            r.service.is_some(),
            r.static_files.is_some(),
            r.redirect.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            c.err(
                at.clone(),
                "a route needs exactly one of service, static or redirect",
            );
            continue;
        }
        let action = if let Some(name) = &r.service {
            if !services.contains(name.as_str()) {
                c.err(at.key("service"), format!("unknown service {name:?}"));
            }
            ActionSpec::Proxy(name.clone())
        } else if let Some(s) = &r.static_files {
            ActionSpec::Static(check_static(c, at.key("static"), s))
        } else if let Some(rd) = &r.redirect {
            let to = rd.to.clone().unwrap_or_default();
            if to.is_empty() {
                c.err(at.key("redirect").key("to"), "missing redirect target");
            }
            let status = rd.status.unwrap_or(308);
            if ![301, 302, 303, 307, 308].contains(&status) {
                c.err(
                    at.key("redirect").key("status"),
                    format!("{status} is not a redirect status"),
                );
            }
            ActionSpec::Redirect { to, status }
        } else {
            continue;
        };
        let max_body = r
            .max_body
            .as_ref()
            .map(|_| c.size(at.key("max_body"), &r.max_body, 0));
        let mut basic_auth = Vec::new();
        for (j, entry) in r.basic_auth.iter().flatten().enumerate() {
            match entry.split_once(':') {
                Some((u, h)) if !u.is_empty() && is_supported_hash(h) => {
                    basic_auth.push((u.to_string(), h.to_string()))
                }
                _ => c.err(
                    at.key("basic_auth").index(j),
                    "expected \"user:$2y$…\" (a bcrypt hash, as `htpasswd -nbB user pass` prints)",
                ),
            }
        }
        let mut allow = Vec::new();
        for (j, a) in r.allow.iter().flatten().enumerate() {
            match IpNet::parse(a) {
                Ok(n) => allow.push(n),
                Err(e) => c.err(at.key("allow").index(j), e),
            }
        }
        if r.allow.as_ref().is_some_and(Vec::is_empty) {
            c.err(
                at.key("allow"),
                "an empty allow list would refuse everyone; remove it instead",
            );
        }
        let timeouts = RouteTimeouts {
            connect: opt_duration(c, at.key("connect_timeout"), &r.connect_timeout),
            read: opt_duration(c, at.key("read_timeout"), &r.read_timeout),
            write: opt_duration(c, at.key("write_timeout"), &r.write_timeout),
        };
        if !timeouts.is_empty() && !matches!(action, ActionSpec::Proxy(_)) {
            let key = [
                ("connect_timeout", &r.connect_timeout),
                ("read_timeout", &r.read_timeout),
                ("write_timeout", &r.write_timeout),
            ]
            .into_iter()
            .find(|(_, v)| v.is_some())
            .map_or("read_timeout", |(k, _)| k);
            c.err(
                at.key(key),
                "upstream timeouts apply to routes with a service only",
            );
        }
        let is_proxy = matches!(action, ActionSpec::Proxy(_));
        for (key, v) in [
            ("buffer_requests", r.buffer_requests),
            ("buffer_responses", r.buffer_responses),
        ] {
            if v.is_some() && !is_proxy {
                c.err(
                    at.key(key),
                    "buffering applies to routes with a service only",
                );
            }
        }
        out.push(RouteSpec {
            buffer_requests: r.buffer_requests.unwrap_or(true),
            buffer_responses: r.buffer_responses.unwrap_or(true),
            timeouts,
            path,
            action,
            allow_http: r.allow_http,
            strip_prefix: r.strip_prefix,
            max_body,
            basic_auth,
            allow,
            compress: r.compress.unwrap_or(false),
            headers: check_headers(c, at.key("headers"), r.headers.as_ref()),
        });
    }
    out
}

/// `headers = { "Name" = "value" }`: valid names and values, no hop-by-hop
/// or framing fields, one value per name in any case.
fn check_headers(
    c: &mut Checker,
    at: KeyPath,
    h: Option<&BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in h.into_iter().flatten() {
        let key = at.key(name);
        match crate::headers::check_name(name) {
            Ok(lower) if out.iter().any(|(n, _)| *n == lower) => {
                c.err(key, format!("{name:?} is given twice (names ignore case)"))
            }
            Ok(lower) => match crate::headers::check_value(value) {
                Ok(()) => out.push((lower, value.clone())),
                Err(e) => c.err(key, e),
            },
            Err(e) => c.err(key, e),
        }
    }
    out
}

/// A duration given only when set; zero is refused (it would fail every request).
fn opt_duration(c: &mut Checker, at: KeyPath, v: &Option<String>) -> Option<Duration> {
    v.as_ref()?;
    let d = c.duration(at.clone(), v, Duration::ZERO);
    if d.is_zero() {
        if c.problems.last().is_none_or(|(k, _)| *k != at) {
            c.err(at, "must be more than 0");
        }
        return None;
    }
    Some(d)
}

fn is_supported_hash(h: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) && h.len() == 60
}

fn check_static(c: &mut Checker, at: KeyPath, s: &RawStatic) -> StaticSpec {
    let root = match s.root.as_deref() {
        Some(r) if !r.is_empty() => c.path(r),
        _ => {
            c.err(at.key("root"), "missing: the directory to serve");
            PathBuf::new()
        }
    };
    let index = match &s.index {
        None | Some(RawIndex::Enabled(false)) => None,
        Some(RawIndex::Enabled(true)) => Some("index.html".to_string()),
        Some(RawIndex::Name(n)) if !n.contains('/') && !n.is_empty() => Some(n.clone()),
        Some(RawIndex::Name(n)) => {
            c.err(at.key("index"), format!("{n:?} must be a plain file name"));
            None
        }
    };
    let immutable_pattern = s.immutable_pattern.as_ref().and_then(|p| {
        // The files crate compiles it with the same limit.
        match regex::RegexBuilder::new(p).size_limit(1 << 16).build() {
            Ok(_) => Some(p.clone()),
            Err(e) => {
                let e = e.to_string();
                let last = e.lines().rfind(|l| !l.trim().is_empty());
                c.err(
                    at.key("immutable_pattern"),
                    format!(
                        "{p:?} is not a valid regular expression: {}",
                        last.unwrap_or("").trim()
                    ),
                );
                None
            }
        }
    });
    StaticSpec {
        root,
        precompressed: s.precompressed,
        immutable_hashed: s.immutable_hashed,
        immutable_pattern,
        index,
        // Off unless asked for, as documented: a symlink inside the root can
        // still be planted by whoever writes there (uploads, deploys).
        follow_symlinks: s.follow_symlinks.unwrap_or(false),
        max_age: c.duration(at.key("max_age"), &s.max_age, Duration::from_secs(60)),
        immutable_max_age: c.duration(
            at.key("immutable_max_age"),
            &s.immutable_max_age,
            Duration::from_secs(31_536_000),
        ),
    }
}

fn check_services(c: &mut Checker, services: &BTreeMap<String, RawService>) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    for (name, s) in services {
        let at = KeyPath::root("services").key(name);
        if !is_name(name) {
            c.err(
                at.clone(),
                format!("service name {name:?}: use lowercase letters, digits, '-' or '_'"),
            );
        }
        if s.colors.is_empty() {
            c.err(
                at.key("colors"),
                "a service needs at least one color, e.g. colors.blue = [\"127.0.0.1:8000\"]",
            );
        }
        let mut colors = Vec::new();
        // The protocol of the first member, and where it is written.
        let mut protocol: Option<(Protocol, KeyPath)> = None;
        for (color, members) in &s.colors {
            let cat = at.key("colors").key(color);
            if !is_name(color) {
                c.err(
                    cat.clone(),
                    format!("color name {color:?}: use lowercase letters, digits, '-' or '_'"),
                );
            }
            if members.len() > 64 {
                c.err(cat.clone(), "at most 64 members per color");
            }
            let mut addrs = Vec::new();
            for (j, m) in members.iter().enumerate() {
                match MemberAddr::parse_member(m.trim()) {
                    Ok((a, p)) => {
                        match &protocol {
                            None => protocol = Some((p, cat.index(j))),
                            Some((first, at_first)) if *first != p => c.err(
                                cat.index(j),
                                format!(
                                    "{m:?} speaks {p} but {at_first} speaks {first}: all members \
                                     of a service (every color) speak one protocol"
                                ),
                            ),
                            Some(_) => {}
                        }
                        addrs.push(a)
                    }
                    Err(e) => c.err(cat.index(j), e),
                }
            }
            colors.push((Color::new(color), addrs));
        }
        let live = match (&s.live, s.colors.len()) {
            (Some(l), _) if s.colors.contains_key(l) => Color::new(l),
            (Some(l), _) => {
                c.err(
                    at.key("live"),
                    format!("live color {l:?} is not one of this service's colors"),
                );
                Color::new(l)
            }
            (None, 1) => colors[0].0.clone(),
            (None, _) => {
                c.err(
                    at.key("live"),
                    "missing: with several colors, say which is live",
                );
                Color::new("")
            }
        };
        if let Some((_, m)) = colors.iter().find(|(c, _)| *c == live) {
            if m.is_empty() && s.colors.get(live.as_str()).is_some_and(Vec::is_empty) {
                c.err(
                    at.key("colors").key(live.as_str()),
                    "the live color has no members",
                );
            }
        }
        let weights = s.weights.as_ref().map(|w| {
            for k in w.keys().filter(|k| !s.colors.contains_key(*k)) {
                c.err(
                    at.key("weights").key(k),
                    format!("{k:?} is not one of this service's colors"),
                );
            }
            if w.values().map(|v| u64::from(*v)).sum::<u64>() == 0 {
                c.err(at.key("weights"), "weights must not all be zero");
            }
            colors
                .iter()
                .map(|(col, _)| (col.clone(), w.get(col.as_str()).copied().unwrap_or(0)))
                .collect()
        });
        let health = s.health.as_ref().map(|h| {
            let hat = at.key("health");
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                c.err(hat.key("path"), format!("{path:?} must start with '/'"));
            }
            let rise = h.rise.unwrap_or(2);
            let fall = h.fall.unwrap_or(3);
            if rise == 0 || fall == 0 {
                c.err(hat.clone(), "rise and fall must be at least 1");
            }
            HealthSpec {
                path,
                interval: c.duration(hat.key("interval"), &h.interval, Duration::from_secs(2)),
                timeout: c.duration(hat.key("timeout"), &h.timeout, Duration::from_secs(1)),
                rise,
                fall,
                host: h.host.as_deref().map(str::trim).map(|host| {
                    if split_authority(host).is_none() || host.contains('/') {
                        c.err(
                            hat.key("host"),
                            format!("{host:?} is not a Host header value like \"app.example.com\""),
                        );
                    }
                    host.to_string()
                }),
            }
        });
        let d = default_timeouts();
        let timeouts = Timeouts {
            connect: c.duration(at.key("connect_timeout"), &s.connect_timeout, d.connect),
            read: c.duration(at.key("read_timeout"), &s.read_timeout, d.read),
            write: c.duration(at.key("write_timeout"), &s.write_timeout, d.write),
            idle: c.duration(at.key("idle_timeout"), &s.idle_timeout, d.idle),
        };
        out.push(ServiceSpec {
            name: name.clone(),
            live,
            weights,
            colors,
            protocol: protocol.map_or(Protocol::Http, |(p, _)| p),
            health,
            timeouts,
            retries: s.retries.unwrap_or(1).min(8),
            drain_upgraded: c.duration(
                at.key("drain_upgraded"),
                &s.drain_upgraded,
                DEFAULT_DRAIN_UPGRADED,
            ),
            pause: pause_spec(c, at.key("pause"), s.pause.as_ref()),
            canary: check_canary(c, &at, name, s),
        });
    }
    out
}

/// `services.X.pause`, defaults where a key is left out.
fn pause_spec(c: &mut Checker<'_>, at: KeyPath, raw: Option<&RawPause>) -> crate::pause::PauseSpec {
    let d = crate::pause::PauseSpec::default();
    let Some(raw) = raw else {
        return d;
    };
    crate::pause::PauseSpec {
        timeout: c.duration(at.key("timeout"), &raw.timeout, d.timeout),
        queue: raw.queue.unwrap_or(d.queue),
        retry_after: c.duration(at.key("retry_after"), &raw.retry_after, d.retry_after),
    }
}

/// `canary = { … }` and `preview = { … }` of service `name` at `at`.
fn check_canary(c: &mut Checker, at: &KeyPath, name: &str, s: &RawService) -> CanarySpec {
    let raw = s.canary.clone().unwrap_or_default();
    let cat = at.key("canary");
    let cookie = raw
        .cookie
        .unwrap_or_else(|| crate::canary::default_cookie(name));
    if !crate::canary::is_cookie_name(&cookie) {
        c.err(cat.key("cookie"), bad_cookie_name(&cookie));
    }
    let max_age = c.duration(
        cat.key("max_age"),
        &raw.max_age,
        crate::canary::DEFAULT_MAX_AGE,
    );
    if max_age.as_secs() == 0 {
        c.err(cat.key("max_age"), "must be at least 1s");
    }
    let preview = s.preview.as_ref().and_then(|p| {
        let pat = at.key("preview");
        let header = p
            .header
            .clone()
            .unwrap_or_else(|| crate::canary::DEFAULT_PREVIEW_HEADER.into());
        let valid = !header.is_empty()
            && header.len() <= 64
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // Fields the edge reads, replaces or does not forward as received.
        let taken = [
            "cookie",
            "host",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "expect",
            "content-length",
            "x-real-ip",
            "x-request-id",
        ]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&header));
        if !valid || taken || header.to_ascii_lowercase().starts_with("x-forwarded-") {
            c.err(
                pat.key("header"),
                format!(
                    "{header:?}: use a header name of letters, digits and '-' that is not a \
                     standard field, e.g. \"Duotone-Preview\""
                ),
            );
        }
        let pcookie = p
            .cookie
            .clone()
            .unwrap_or_else(|| crate::canary::DEFAULT_PREVIEW_COOKIE.into());
        if !crate::canary::is_cookie_name(&pcookie) {
            c.err(pat.key("cookie"), bad_cookie_name(&pcookie));
        } else if pcookie == cookie {
            c.err(
                pat.key("cookie"),
                format!("{pcookie:?} is the sticky cookie (canary.cookie) too: use another name"),
            );
        }
        let secret = p.secret.clone().unwrap_or_default();
        if secret.is_empty() {
            // No secret, no preview (e.g. `${DUOTONE_PREVIEW_SECRET:-}` unset).
            return None;
        }
        if secret.len() < crate::canary::MIN_SECRET {
            c.err(
                pat.key("secret"),
                format!(
                    "too short: use at least {} characters (e.g. `openssl rand -hex 32`)",
                    crate::canary::MIN_SECRET
                ),
            );
        }
        Some(PreviewSpec {
            secret,
            header,
            cookie: pcookie,
        })
    });
    CanarySpec {
        sticky: raw.sticky.unwrap_or(true),
        cookie,
        max_age,
        preview,
    }
}

fn bad_cookie_name(name: &str) -> String {
    format!("{name:?} is not a cookie name: use letters, digits and !#$%&'*+-.^_`|~ (at most 64)")
}

/// Gives every health check without an explicit `host` the first exact
/// host of the first site that routes to its service, so that an app which
/// checks `Host` (Django's `ALLOWED_HOSTS`) accepts the check. Wildcard and
/// catch-all patterns are skipped (they are not host names); a service no
/// site names keeps `None` (the check then sends the member's address).
fn default_health_hosts(mut services: Vec<ServiceSpec>, sites: &[SiteSpec]) -> Vec<ServiceSpec> {
    for svc in &mut services {
        let Some(health) = svc.health.as_mut() else {
            continue;
        };
        if health.host.is_some() {
            continue;
        }
        health.host = sites
            .iter()
            .filter(|site| {
                site.routes
                    .iter()
                    .any(|r| matches!(&r.action, ActionSpec::Proxy(n) if *n == svc.name))
            })
            .flat_map(|site| site.hosts.iter())
            .find(|h| !h.starts_with('*'))
            .cloned();
    }
    services
}

fn check_limits(c: &mut Checker, l: &RawLimits) -> Limits {
    let at = KeyPath::root("limits");
    let d = Limits::default();
    let max_header_bytes = c.size(
        at.key("max_header_bytes"),
        &l.max_header_bytes,
        d.max_header_bytes as u64,
    );
    if !(1024..=1 << 20).contains(&max_header_bytes) {
        c.err(at.key("max_header_bytes"), "must be between 1k and 1m");
    }
    // Pingora refuses more than 256 header lines (with a 400) before we see them.
    if l.max_headers.is_some_and(|n| !(1..=256).contains(&n)) {
        c.err(at.key("max_headers"), "must be between 1 and 256");
    }
    if l.max_connections == Some(0) {
        c.err(at.key("max_connections"), "must be at least 1");
    }
    if l.max_open_files == Some(0) {
        c.err(at.key("max_open_files"), "must be at least 1");
    }
    Limits {
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(d.max_header_bytes),
        max_headers: l.max_headers.unwrap_or(d.max_headers),
        max_body: c.size(at.key("max_body"), &l.max_body, d.max_body),
        header_timeout: c.duration(
            at.key("header_timeout"),
            &l.header_timeout,
            d.header_timeout,
        ),
        body_timeout: c.duration(at.key("body_timeout"), &l.body_timeout, d.body_timeout),
        keepalive_timeout: c.duration(
            at.key("keepalive_timeout"),
            &l.keepalive_timeout,
            d.keepalive_timeout,
        ),
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        max_open_files: l.max_open_files.unwrap_or(d.max_open_files),
    }
}
