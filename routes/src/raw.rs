//! The config file exactly as written (serde shapes). Values that need checks
//! stay strings here; [`crate::validate`] turns them into a typed [`crate::Config`].

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`: listeners, state directory, admin token.
    #[serde(default)]
    pub server: RawServer,
    /// `[acme]`: certificate authority settings.
    pub acme: Option<RawAcme>,
    /// `[[sites]]`: virtual hosts and their routes.
    #[serde(default)]
    pub sites: Vec<RawSite>,
    /// `[services.NAME]`: upstream services with color pools.
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
    /// `[limits]`: request size and time limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[log]`: access log format.
    #[serde(default)]
    pub log: RawLog,
    /// `[buffering]`: request and response buffering.
    #[serde(default)]
    pub buffering: RawBuffering,
    /// `[maintenance]`: who passes maintenance mode, and its page.
    #[serde(default)]
    pub maintenance: RawMaintenance,
    /// `[cluster]`: several edge nodes sharing state through etcd.
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// etcd client URLs.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Key prefix, default `/duotone/`.
    pub prefix: Option<String>,
    /// This node's name (default: the host name).
    pub node: Option<String>,
    /// etcd user.
    pub user: Option<String>,
    /// etcd password.
    pub password: Option<String>,
    /// CA certificate (PEM) for TLS to etcd.
    pub ca: Option<String>,
    /// Client certificate (PEM) for etcd's client-cert auth.
    pub cert: Option<String>,
    /// Client key (PEM) for etcd's client-cert auth.
    pub key: Option<String>,
    /// 64 hex digits: encrypts private keys stored in etcd.
    pub secret_key: Option<String>,
    /// How long a change waits for every node, e.g. "5s".
    pub apply_timeout: Option<String>,
    /// How long one etcd request may take, e.g. "2s".
    pub request_timeout: Option<String>,
}

/// `[maintenance]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    /// Client addresses or CIDR blocks (after `trusted_proxies`) that reach
    /// the app during maintenance.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Name of the cookie that lets a request through (with `secret`).
    pub cookie: Option<String>,
    /// The cookie's value that lets a request through.
    pub secret: Option<String>,
    /// `Retry-After` of the maintenance answer, e.g. "300s".
    pub retry_after: Option<String>,
    /// The default maintenance page (an HTML file).
    pub page: Option<String>,
}

/// `[buffering]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffering {
    /// Directory for temp files.
    pub dir: Option<String>,
    /// Bytes kept in memory per request and direction, e.g. "64KiB".
    pub memory: Option<String>,
    /// Bytes kept in memory by all requests together, e.g. "256MiB".
    pub total_memory: Option<String>,
    /// Largest response temp file, e.g. "1GiB".
    pub max_file: Option<String>,
}

/// `[server]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Plain HTTP listener address.
    pub http: Option<String>,
    /// HTTPS listener address.
    pub https: Option<String>,
    /// Admin API listener address.
    pub admin: Option<String>,
    /// Where certificates and live colors are kept.
    pub state_dir: Option<String>,
    /// Bearer token for the admin API.
    pub admin_token: Option<String>,
    /// Extra `Host` names (`name` or `name:port`) the admin API answers to.
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    /// Worker threads (default: number of CPUs).
    pub threads: Option<usize>,
    /// How long SIGTERM waits for in-flight requests.
    pub grace_period: Option<String>,
    /// Proxies (addresses or CIDR blocks) whose X-Forwarded-* are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// PROXY protocol on the listeners: `true` (both) or a list of
    /// listener names (`["http", "https"]`).
    pub proxy_protocol: Option<RawProxyProtocol>,
    /// The answer for a host no site serves: `"close"`, 404 or 421.
    pub unknown_host: Option<RawUnknownHost>,
}

/// `unknown_host = "close" | 404 | "404" | 421 | "421"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawUnknownHost {
    /// A status as a number.
    Status(i64),
    /// `"close"` or a status as text.
    Name(String),
}

/// `proxy_protocol = true | ["http", "https"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawProxyProtocol {
    /// On every listener, or off.
    All(bool),
    /// On the listeners named.
    Listeners(Vec<String>),
}

/// `[acme]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// Contact email for the ACME account.
    pub email: Option<String>,
    /// `letsencrypt`, `letsencrypt-staging` or a directory URL.
    pub directory: Option<String>,
    /// `http-01` or `tls-alpn-01`.
    pub challenge: Option<String>,
    /// Extra PEM roots to trust the directory with (test CAs).
    pub ca_roots: Option<String>,
}

/// `tls = "acme" | "off" | "self-signed" | { cert, key }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawTls {
    /// A named mode.
    Mode(String),
    /// Certificate and key files.
    Files {
        /// PEM certificate chain.
        cert: String,
        /// PEM private key.
        key: String,
    },
}

/// `hsts = true | { max_age, include_subdomains, preload }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawHsts {
    /// On with defaults, or off.
    Enabled(bool),
    /// Explicit settings.
    Settings {
        /// max-age, e.g. "365d" is not accepted; use seconds or "8760h".
        max_age: Option<String>,
        /// Adds `includeSubDomains`.
        #[serde(default)]
        include_subdomains: bool,
        /// Adds `preload`.
        #[serde(default)]
        preload: bool,
    },
}

/// `[[sites]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    /// Host names: exact, `*.example.com` or `*`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS mode.
    pub tls: Option<RawTls>,
    /// HSTS header on HTTPS responses.
    pub hsts: Option<RawHsts>,
    /// Response header fields added to this site's 2xx/3xx responses.
    pub headers: Option<BTreeMap<String, String>>,
    /// Pages for the edge's own answers: a status (`"404"`, `"502"`, …)
    /// or `"maintenance"` → a file.
    pub error_pages: Option<BTreeMap<String, String>>,
    /// Routes, longest path prefix wins.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[[sites.routes]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Path prefix, starting with `/`.
    pub path: Option<String>,
    /// Proxy to this service.
    pub service: Option<String>,
    /// Serve files.
    #[serde(rename = "static")]
    pub static_files: Option<RawStatic>,
    /// Answer with a redirect.
    pub redirect: Option<RawRedirect>,
    /// Serve this route on plain HTTP too, instead of redirecting to HTTPS.
    #[serde(default)]
    pub allow_http: bool,
    /// Remove the route prefix before proxying.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Largest accepted request body, e.g. "10m".
    pub max_body: Option<String>,
    /// Basic auth users as `"user:$argon2…"` or `"user:{SHA256}base64"`.
    pub basic_auth: Option<Vec<String>>,
    /// Client addresses or CIDR blocks allowed on this route.
    pub allow: Option<Vec<String>>,
    /// Compress text responses from upstreams when clients accept it.
    pub compress: Option<bool>,
    /// Response header fields added to this route's 2xx/3xx responses
    /// (over the site's for the same name).
    pub headers: Option<BTreeMap<String, String>>,
    /// Upstream connect timeout for this route (over the service's).
    pub connect_timeout: Option<String>,
    /// Upstream read timeout for this route (over the service's).
    pub read_timeout: Option<String>,
    /// Upstream write timeout for this route (over the service's).
    pub write_timeout: Option<String>,
    /// Read the whole request body before using the upstream (default true).
    pub buffer_requests: Option<bool>,
    /// Read the upstream response whatever the client's pace (default true).
    pub buffer_responses: Option<bool>,
}

/// `static = { … }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatic {
    /// Directory to serve.
    pub root: Option<String>,
    /// Serve `.br`/`.zst`/`.gz` sidecars.
    #[serde(default)]
    pub precompressed: bool,
    /// Far-future caching for hashed names.
    #[serde(default)]
    pub immutable_hashed: bool,
    /// A regular expression for hashed file names, instead of the built-in rule.
    pub immutable_pattern: Option<String>,
    /// Index file for directories (`true` means `index.html`).
    pub index: Option<RawIndex>,
    /// Follow symlinks that stay inside the root (default: no).
    pub follow_symlinks: Option<bool>,
    /// Cache max-age for names without a hash.
    pub max_age: Option<String>,
    /// Cache max-age for hashed names (with `immutable_hashed`).
    pub immutable_max_age: Option<String>,
}

/// `index = true | "index.htm"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawIndex {
    /// `index.html` or none.
    Enabled(bool),
    /// A file name.
    Name(String),
}

/// `redirect = { to, status }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    /// Target URL; `$path` is replaced by the request path and query.
    pub to: Option<String>,
    /// 301, 302, 303, 307 or 308 (default).
    pub status: Option<u16>,
}

/// `[services.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// The live color.
    pub live: Option<String>,
    /// Weights per color for canaries; overrides `live` when set.
    pub weights: Option<BTreeMap<String, u32>>,
    /// Active health check.
    pub health: Option<RawHealth>,
    /// Members per color: `"host:port"`, `"unix:/path"`,
    /// `"uwsgi://host:port"` or `"uwsgi+unix:/path"`.
    #[serde(default)]
    pub colors: BTreeMap<String, Vec<String>>,
    /// Upstream connect timeout.
    pub connect_timeout: Option<String>,
    /// Upstream read timeout (time between bytes of the response).
    pub read_timeout: Option<String>,
    /// Upstream write timeout.
    pub write_timeout: Option<String>,
    /// How long idle upstream connections are kept.
    pub idle_timeout: Option<String>,
    /// Extra attempts on other members after a connect failure.
    pub retries: Option<u32>,
    /// How long WebSockets of a color that stopped taking traffic stay open.
    pub drain_upgraded: Option<String>,
    /// How requests are held while the service is paused.
    pub pause: Option<RawPause>,
    /// Sticky canaries: `canary = { sticky, cookie, max_age }`.
    pub canary: Option<RawCanary>,
    /// The preview override: `preview = { secret, header, cookie }`.
    pub preview: Option<RawPreview>,
}

/// `pause = { timeout, queue, retry_after }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPause {
    /// Longest a request is held (default 30s).
    pub timeout: Option<String>,
    /// Most requests held at once (default 1000).
    pub queue: Option<u64>,
    /// `Retry-After` of a refusal (default 5s).
    pub retry_after: Option<String>,
}

/// `canary = { sticky = true, cookie = "duotone_api", max_age = "1d" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    /// Pin each client to the color it first got while weights split traffic.
    pub sticky: Option<bool>,
    /// The pinning cookie's name.
    pub cookie: Option<String>,
    /// The pinning cookie's lifetime.
    pub max_age: Option<String>,
}

/// `preview = { secret = "${DUOTONE_PREVIEW_SECRET}", header = "Duotone-Preview", cookie = "duotone_preview" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreview {
    /// The key of the preview tokens; absent or empty: no preview.
    pub secret: Option<String>,
    /// The request header that carries a token.
    pub header: Option<String>,
    /// The cookie that carries a token.
    pub cookie: Option<String>,
}

/// `health = { … }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Path to GET.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Option<String>,
    /// Timeout of one check.
    pub timeout: Option<String>,
    /// Consecutive successes to be marked healthy.
    pub rise: Option<u32>,
    /// Consecutive failures to be marked unhealthy.
    pub fall: Option<u32>,
    /// Host header to send.
    pub host: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request header block.
    pub max_header_bytes: Option<String>,
    /// Most request headers.
    pub max_headers: Option<usize>,
    /// Default largest request body.
    pub max_body: Option<String>,
    /// Time a client has to send the request head.
    pub header_timeout: Option<String>,
    /// Time a client may pause while sending a body.
    pub body_timeout: Option<String>,
    /// Idle time of a client keep-alive connection.
    pub keepalive_timeout: Option<String>,
    /// Most concurrent client connections.
    pub max_connections: Option<usize>,
    /// Most files held open at once by static routes.
    pub max_open_files: Option<usize>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `json` (default), `combined` or `off`.
    pub access: Option<String>,
}
