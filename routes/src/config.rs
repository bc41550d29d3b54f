//! The validated, typed configuration. Built only by [`crate::validate`].

use crate::pool::{Color, MemberAddr, Protocol};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A checked configuration: every value parsed, every reference resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners and state.
    pub server: Server,
    /// ACME settings, present when any site uses `tls = "acme"`.
    pub acme: Option<Acme>,
    /// Virtual hosts in file order.
    pub sites: Vec<SiteSpec>,
    /// Upstream services, sorted by name.
    pub services: Vec<ServiceSpec>,
    /// Request limits and client timeouts.
    pub limits: Limits,
    /// Access log format.
    pub access_log: AccessLog,
    /// Request and response buffering (`[buffering]`).
    pub buffering: Buffering,
    /// Maintenance mode (`[maintenance]`).
    pub maintenance: Maintenance,
    /// Several edge nodes sharing state through etcd (`[cluster]`); `None`:
    /// a single node with local state.
    pub cluster: Option<Cluster>,
}

/// `[cluster]`, checked: the etcd cluster that several edge nodes share
/// deploy state, certificates and ACME challenges through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// etcd client URLs, e.g. `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prefix of every key Duotone writes, ending in `/` (default `/duotone/`).
    pub prefix: String,
    /// This node's name; `None`: the host name (resolved by the proxy).
    pub node: Option<String>,
    /// etcd user name and password (etcd's own auth), if any.
    pub auth: Option<ClusterAuth>,
    /// TLS to etcd: CA to trust and an optional client certificate.
    pub tls: Option<ClusterTls>,
    /// Key that encrypts private keys before they go to etcd (32 bytes,
    /// given as 64 hex digits). Required when certificates are shared.
    pub secret_key: Option<SecretKey>,
    /// How long a change waits for every live node to apply it.
    pub apply_timeout: Duration,
    /// How long one etcd request may take before the store counts as
    /// unreachable.
    pub request_timeout: Duration,
}

/// etcd user and password.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterAuth {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// TLS towards etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// PEM file of the CA that signed etcd's certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM files), for etcd's client-cert auth.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A 256-bit symmetric key (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// `[maintenance]`, checked: who passes maintenance mode, and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// Clients (after `trusted_proxies`) that reach the app anyway.
    pub allow: Vec<IpNet>,
    /// The cookie that lets a request through when its value is `secret`.
    pub cookie: String,
    /// The cookie value that lets a request through; `None`: no cookie does.
    pub secret: Option<String>,
    /// `Retry-After` of the maintenance answer.
    pub retry_after: Duration,
    /// The default maintenance page, for sites without their own.
    pub page: Option<PathBuf>,
}

impl Maintenance {
    /// Default of [`Maintenance::cookie`].
    pub const COOKIE: &'static str = "duotone_maintenance";
    /// Default of [`Maintenance::retry_after`].
    pub const RETRY_AFTER: Duration = Duration::from_secs(300);
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            allow: Vec::new(),
            cookie: Self::COOKIE.to_string(),
            secret: None,
            retry_after: Self::RETRY_AFTER,
            page: None,
        }
    }
}

/// What a site's error page stands for: one of the edge's own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageKey {
    /// An answer with this status, written by the edge itself.
    Status(u16),
    /// The maintenance answer (503).
    Maintenance,
}

impl PageKey {
    /// Statuses the edge itself answers once a request's site is known,
    /// which may have a page. (405, 421 and 431 come before the site is
    /// known: no site's page could answer them.)
    pub const STATUSES: [u16; 10] = [400, 401, 403, 404, 408, 413, 500, 502, 503, 504];

    /// Parses an `error_pages` key: one of [`PageKey::STATUSES`] or
    /// `maintenance`.
    pub fn parse(s: &str) -> Option<PageKey> {
        if s == "maintenance" {
            return Some(PageKey::Maintenance);
        }
        let n: u16 = s.parse().ok()?;
        Self::STATUSES.contains(&n).then_some(PageKey::Status(n))
    }
}

impl std::fmt::Display for PageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageKey::Status(n) => write!(f, "{n}"),
            PageKey::Maintenance => f.write_str("maintenance"),
        }
    }
}

/// `[buffering]`, checked: where and how much request and response bodies
/// are buffered (applied by the proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffering {
    /// Directory for temp files (opened unnamed, nothing left on disk);
    /// default `<state_dir>/buffers`.
    pub dir: PathBuf,
    /// Bytes kept in memory per request and direction before a temp file
    /// is used; default 1 MiB (as kamal-proxy's buffer memory).
    pub memory: usize,
    /// Bytes kept in memory by all requests together; past it, bodies go
    /// to temp files at once. Default 64 MiB.
    pub total_memory: usize,
    /// Largest response temp file; past it the upstream waits for the
    /// client. Default 1 GiB.
    pub max_file: u64,
}

impl Buffering {
    /// Default of [`Buffering::memory`].
    pub const MEMORY: usize = 1 << 20;
    /// Default of [`Buffering::total_memory`].
    pub const TOTAL_MEMORY: usize = 64 << 20;
    /// Default of [`Buffering::max_file`].
    pub const MAX_FILE: u64 = 1 << 30;

    /// The defaults, with temp files under `<state_dir>/buffers`.
    pub fn defaults(state_dir: &std::path::Path) -> Buffering {
        Buffering {
            dir: state_dir.join("buffers"),
            memory: Self::MEMORY,
            total_memory: Self::TOTAL_MEMORY,
            max_file: Self::MAX_FILE,
        }
    }
}

/// `server.unknown_host`: the answer to a request for a host that no site
/// serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownHost {
    /// Close the connection without a response (nginx's `return 444`).
    Close,
    /// Answer with this status (404 or 421) and a short text body.
    Status(u16),
}

impl Default for UnknownHost {
    fn default() -> Self {
        UnknownHost::Status(404)
    }
}

/// `[server]`, checked.
#[derive(Debug, Clone)]
pub struct Server {
    /// Plain HTTP listener.
    pub http: Option<SocketAddr>,
    /// HTTPS listener.
    pub https: Option<SocketAddr>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Extra names the admin API accepts in `Host` and `Origin`, besides
    /// `localhost`, `127.0.0.1`, `[::1]` and the listener's own address.
    pub admin_hosts: Vec<AdminHost>,
    /// Worker threads.
    pub threads: Option<usize>,
    /// SIGTERM drain deadline.
    pub grace_period: Duration,
    /// Proxies whose X-Forwarded-For/-Proto/-Host are believed
    /// ([`crate::client::resolve`]).
    pub trusted_proxies: Vec<IpNet>,
    /// Listeners whose connections start with a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
    /// The answer for a host that no site serves.
    pub unknown_host: UnknownHost,
}

/// Which listeners expect a PROXY protocol header (v1 or v2) before
/// anything else, accepted only from `trusted_proxies`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// On the plain HTTP listener.
    pub http: bool,
    /// On the HTTPS listener (read before the TLS handshake).
    pub https: bool,
}

/// One `server.admin_hosts` entry: a host name (lowercase, IPv6 literals in
/// brackets) and the port it must come with (any port when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminHost {
    /// Lowercase name, e.g. `admin.internal` or `[fd00::1]`.
    pub name: String,
    /// Required port, if the entry named one.
    pub port: Option<u16>,
}

/// Splits a `Host` header value (or an origin's authority) into a lowercase
/// name and an optional port: `example.com:9090`, `[::1]:9090`, `localhost`.
/// `None` when it is not a plausible authority (empty, user info, a path,
/// a bad port, an unbracketed IPv6 address).
pub fn split_authority(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{inside}]"), port)
    } else {
        match s.split_once(':') {
            Some((n, p)) => (n.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b);
    if name.is_empty() || name == "[]" || !name.bytes().all(ok) {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((name.to_ascii_lowercase(), port))
}

/// ACME challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// Answered on the plain HTTP listener.
    Http01,
    /// Answered in the TLS handshake on the HTTPS listener.
    TlsAlpn01,
}

/// `[acme]`, checked.
#[derive(Debug, Clone)]
pub struct Acme {
    /// Account contact.
    pub email: Option<String>,
    /// Directory URL.
    pub directory: String,
    /// Challenge type.
    pub challenge: Challenge,
    /// Extra roots to trust the directory with.
    pub ca_roots: Option<PathBuf>,
}

/// Where a site's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP only.
    Off,
    /// Obtained and renewed via ACME.
    Acme,
    /// Generated at start (for tests and internal hosts).
    SelfSigned,
    /// Read from files.
    Files {
        /// PEM chain.
        cert: PathBuf,
        /// PEM key.
        key: PathBuf,
    },
}

/// HSTS header settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// The header value to send, precomputed.
    pub value: String,
}

/// A virtual host.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    /// Host patterns, lowercased.
    pub hosts: Vec<String>,
    /// Certificate source.
    pub tls: Tls,
    /// HSTS, if enabled.
    pub hsts: Option<Hsts>,
    /// Response header fields (lowercase name, value) for 2xx/3xx responses.
    pub headers: Vec<(String, String)>,
    /// Pages for the edge's own answers (`error_pages`), files read when
    /// the snapshot is built.
    pub error_pages: Vec<(PageKey, PathBuf)>,
    /// Routes in file order.
    pub routes: Vec<RouteSpec>,
}

impl SiteSpec {
    /// A stable label for metrics and logs: the first host.
    pub fn name(&self) -> &str {
        self.hosts.first().map(String::as_str).unwrap_or("*")
    }
}

/// What a route does.
#[derive(Debug, Clone)]
pub enum ActionSpec {
    /// Proxy to a service (index into [`Config::services`]).
    Proxy(String),
    /// Serve files.
    Static(StaticSpec),
    /// Redirect.
    Redirect {
        /// Target; `$path` expands to the request path and query.
        to: String,
        /// Status code.
        status: u16,
    },
}

/// A static files route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSpec {
    /// Directory served.
    pub root: PathBuf,
    /// Serve compressed sidecars.
    pub precompressed: bool,
    /// Immutable caching for hashed names.
    pub immutable_hashed: bool,
    /// Regular expression for hashed file names (matched against the file
    /// name), replacing the built-in rule; checked to compile.
    pub immutable_pattern: Option<String>,
    /// Index file for directories.
    pub index: Option<String>,
    /// Follow symlinks whose target stays inside the root (default `false`:
    /// any symlink is 404).
    pub follow_symlinks: bool,
    /// max-age for names without a hash.
    pub max_age: Duration,
    /// max-age for hashed names when `immutable_hashed` is set.
    pub immutable_max_age: Duration,
}

/// One route of a site.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Path prefix.
    pub path: String,
    /// What to do.
    pub action: ActionSpec,
    /// Served on plain HTTP even when the site has TLS.
    pub allow_http: bool,
    /// Remove the prefix before proxying.
    pub strip_prefix: bool,
    /// Body limit override.
    pub max_body: Option<u64>,
    /// Basic auth credentials (`user`, password hash).
    pub basic_auth: Vec<(String, String)>,
    /// Allowed client networks; empty means everyone.
    pub allow: Vec<IpNet>,
    /// On-the-fly compression of upstream text responses.
    pub compress: bool,
    /// Response header fields (lowercase name, value) for 2xx/3xx
    /// responses, over the site's.
    pub headers: Vec<(String, String)>,
    /// Upstream timeouts that override the service's for this route.
    pub timeouts: RouteTimeouts,
    /// Read the whole request body before the upstream is used (service
    /// routes; default `true`).
    pub buffer_requests: bool,
    /// Read the upstream response as fast as it comes, whatever the
    /// client's pace (service routes; default `true`).
    pub buffer_responses: bool,
}

/// A route's own upstream timeouts; `None` keeps the service's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// TCP/unix connect.
    pub connect: Option<Duration>,
    /// Between response bytes.
    pub read: Option<Duration>,
    /// Between request bytes.
    pub write: Option<Duration>,
}

impl RouteTimeouts {
    /// True when the route sets none.
    pub fn is_empty(&self) -> bool {
        *self == RouteTimeouts::default()
    }

    /// The service's timeouts with this route's on top.
    pub fn over(&self, service: &Timeouts) -> Timeouts {
        Timeouts {
            connect: self.connect.unwrap_or(service.connect),
            read: self.read.unwrap_or(service.read),
            write: self.write.unwrap_or(service.write),
            idle: service.idle,
        }
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    /// True when `ip` is inside this network (IPv4-mapped IPv6 is treated as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// Path to GET.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
    /// Successes to become healthy.
    pub rise: u32,
    /// Failures to become unhealthy.
    pub fall: u32,
    /// Host header, if any.
    pub host: Option<String>,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP/unix connect.
    pub connect: Duration,
    /// Between response bytes.
    pub read: Duration,
    /// Between request bytes.
    pub write: Duration,
    /// Idle pooled connection lifetime.
    pub idle: Duration,
}

/// An upstream service with color pools.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Live color from the config file.
    pub live: Color,
    /// Canary weights from the config file, if any.
    pub weights: Option<Vec<(Color, u32)>>,
    /// Members per color, colors sorted by name.
    pub colors: Vec<(Color, Vec<MemberAddr>)>,
    /// The protocol every member speaks.
    pub protocol: Protocol,
    /// Active health check.
    pub health: Option<HealthSpec>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Extra attempts after connect failures.
    pub retries: u32,
    /// How long a color's upgraded connections (WebSockets) stay open once
    /// it stops taking new traffic, before the edge closes them.
    pub drain_upgraded: Duration,
    /// How requests are held while the service is paused.
    pub pause: crate::pause::PauseSpec,
    /// Sticky canaries and the preview override.
    pub canary: CanarySpec,
}

/// `[services.X] canary = { … }` and `preview = { … }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanarySpec {
    /// Pin clients to a color while weights split traffic.
    pub sticky: bool,
    /// The pinning cookie's name (default `duotone_<service>`).
    pub cookie: String,
    /// The pinning cookie's `Max-Age`.
    pub max_age: Duration,
    /// The preview override, when a secret is configured.
    pub preview: Option<PreviewSpec>,
}

/// `[services.X] preview = { … }` with a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviewSpec {
    /// The key of the preview tokens (never shown, never sent).
    pub secret: String,
    /// The request header that carries a token (`Duotone-Preview`).
    pub header: String,
    /// The cookie that carries a token (`duotone_preview`).
    pub cookie: String,
}

impl std::fmt::Debug for PreviewSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviewSpec")
            .field("secret", &"<hidden>")
            .field("header", &self.header)
            .field("cookie", &self.cookie)
            .finish()
    }
}

/// Client-side limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request head size.
    pub max_header_bytes: usize,
    /// Request header count.
    pub max_headers: usize,
    /// Default body limit.
    pub max_body: u64,
    /// Time to receive the request head.
    pub header_timeout: Duration,
    /// Max pause while reading a body.
    pub body_timeout: Duration,
    /// Keep-alive idle time.
    pub keepalive_timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Files held open at once by all static routes together (lookups and
    /// streamed bodies); requests beyond it wait for a handle.
    pub max_open_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body: 100 * 1024 * 1024,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            max_open_files: 1024,
        }
    }
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// One JSON object per line.
    Json,
    /// Apache/nginx combined format.
    Combined,
    /// No access log.
    Off,
}

impl Config {
    /// Index of a service by name.
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }
}
