//! The CLI side of the admin API: status, flip (with drain), weights,
//! reload, and the blue/green deploy flow.

use crate::ops::views::{ServiceView, SiteView, WatchState, WatchView};
use crate::AdminArgs;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A small admin API client.
struct Api {
    base: String,
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    rt: tokio::runtime::Runtime,
}

impl Api {
    fn new(args: &AdminArgs) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = {
            let _guard = rt.enter();
            Client::builder(TokioExecutor::new()).build_http()
        };
        Ok(Api {
            base: args.admin.trim_end_matches('/').to_string(),
            token: args.token.clone().filter(|t| !t.is_empty()),
            client,
            rt,
        })
    }

    /// Sends a request; returns the status and the parsed JSON body.
    fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{}", self.base, path);
        let mut req = http::Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        // The admin API acts on a change only when it is JSON (a web page
        // cannot send that cross-site without a preflight): always say so,
        // with `{}` when there is nothing to send.
        let changes = !matches!(method, http::Method::GET | http::Method::HEAD);
        let bytes = match &body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None if changes => Bytes::from_static(b"{}"),
            None => Bytes::new(),
        };
        if changes || body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(bytes))
            .with_context(|| format!("bad admin URL {url}"))?;
        self.rt.block_on(async {
            let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
                .await
                .with_context(|| format!("{method} {url}: timed out"))?
                .with_context(|| format!("{method} {url}: cannot reach the admin API"))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
            });
            Ok((status, json))
        })
    }

    /// Like `call` but turns non-2xx into an error carrying the API's reason.
    fn ok(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let (status, json) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            Ok(json)
        } else {
            let reason = json
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string());
            bail!("admin API answered {status}: {reason}")
        }
    }

    /// `GET /v1/cluster`, or `None` when the node is not in a cluster.
    fn cluster(&self) -> Result<Option<serde_json::Value>> {
        let (status, json) = self.call(http::Method::GET, "/v1/cluster", None)?;
        match status {
            200 => Ok(Some(json)),
            404 => Ok(None),
            _ => {
                let reason = json
                    .get("error")
                    .and_then(|e| e.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| json.to_string());
                bail!("admin API answered {status}: {reason}")
            }
        }
    }

    fn service(&self, name: &str) -> Result<ServiceView> {
        let v = self.ok(http::Method::GET, &format!("/v1/services/{name}"), None)?;
        Ok(serde_json::from_value(v)?)
    }
}

fn print_service(s: &ServiceView) {
    let paused = if s.paused {
        format!(", paused ({} held)", s.held)
    } else {
        String::new()
    };
    println!("{}: live {}{paused}", s.name, s.live);
    if s.maintenance {
        println!("  maintenance on: requests get the maintenance page");
    }
    if let Some(w) = &s.weights {
        let parts: Vec<String> = w.iter().map(|(c, w)| format!("{c}={w}")).collect();
        println!("  weights {}", parts.join(" "));
        if let Some(st) = &s.sticky {
            match st.active {
                true => println!(
                    "  sticky: clients pinned by cookie {} (max-age {}s)",
                    st.cookie, st.max_age_s
                ),
                false => println!("  sticky: not in use (one color takes all traffic)"),
            }
        }
    }
    if let Some(p) = &s.preview {
        println!(
            "  preview: header {} or cookie {} (`duotone preview {} COLOR` prints a token)",
            p.header, p.cookie, s.name
        );
    }
    for (color, c) in &s.colors {
        let closing = c
            .upgraded_close_in_ms
            .filter(|_| c.upgraded > 0)
            .map(|ms| format!("  (WebSockets close in {:.0}s)", ms as f64 / 1e3))
            .unwrap_or_default();
        println!(
            "  {:<10} {:<9} in-flight {:<5} upgraded {:<5} requests {}{}{}",
            color,
            if c.healthy { "healthy" } else { "UNHEALTHY" },
            c.in_flight,
            c.upgraded,
            c.requests,
            if c.live { "  (live)" } else { "" },
            closing
        );
        for m in &c.members {
            println!("      {:<32} {}", m.addr, m.describe());
        }
    }
    if let Some(w) = &s.watch {
        let left = match w.state {
            WatchState::Watching => format!(", {:.0}s left", w.remaining_ms as f64 / 1e3),
            _ => String::new(),
        };
        println!(
            "  watch {} (rolls back to {}): {}{left}: {}",
            w.color,
            w.rollback_to,
            w.state.as_str(),
            watch_figures(w)
        );
        if let Some(r) = &w.reason {
            println!("      {r}");
        }
    }
}

/// A watch's figures in words.
fn watch_figures(w: &WatchView) -> String {
    format!(
        "{} responses, {} 5xx ({:.1}%){}",
        w.requests,
        w.errors,
        w.error_rate * 100.0,
        w.p99_ms
            .map(|p| format!(", p99 {p:.0} ms"))
            .unwrap_or_default()
    )
}

/// `duotone status [SERVICE]`.
pub fn status(args: &AdminArgs, service: Option<&str>, json: bool) -> Result<()> {
    let api = Api::new(args)?;
    let list: Vec<ServiceView> = match service {
        Some(name) => vec![api.service(name)?],
        None => serde_json::from_value(
            api.ok(http::Method::GET, "/v1/services", None)?
                .get("services")
                .cloned()
                .unwrap_or_default(),
        )?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        list.iter().for_each(print_service);
        if service.is_none() {
            print_sites_in_maintenance(&api)?;
            print_cluster(&api);
        }
    }
    Ok(())
}

/// Lists the cluster's nodes (with `[cluster]`): applied revision, watch
/// up or not, report age, in-flight requests.
fn print_cluster(api: &Api) {
    let v = match api.cluster() {
        Ok(Some(v)) => v,
        Ok(None) => return,
        Err(e) => {
            println!("cluster: {e:#}");
            return;
        }
    };
    println!(
        "cluster: this node {} (applied revision {}, state revision {}, etcd {})",
        v["node"].as_str().unwrap_or("?"),
        v["applied"],
        v["state_revision"],
        if v["connected"].as_bool().unwrap_or(false) {
            "connected"
        } else {
            "UNREACHABLE"
        }
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let in_flight: i64 = n["in_flight"]
            .as_object()
            .into_iter()
            .flat_map(|s| s.values())
            .filter_map(|c| c.as_object())
            .flat_map(|c| c.values())
            .filter_map(|x| x.as_i64())
            .sum();
        println!(
            "  node {:<20} applied {:<8} {:<12} report {:.1}s ago, in-flight {}",
            n["name"].as_str().unwrap_or("?"),
            n["applied"],
            if n["connected"].as_bool().unwrap_or(false) {
                "connected"
            } else {
                "DISCONNECTED"
            },
            n["report_age_ms"].as_u64().unwrap_or(0) as f64 / 1e3,
            in_flight
        );
    }
}

/// Requests in flight on `color` of `service` over every node of the
/// cluster (their reports; this node's own figure is live), or `None`
/// when the node is not in a cluster.
fn cluster_in_flight(api: &Api, service: &str, color: &str) -> Option<i64> {
    let v = api.cluster().ok()??;
    Some(
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["in_flight"][service][color].as_i64())
            .map(|n| n.max(0))
            .sum(),
    )
}

/// Lists the sites in maintenance, if any.
fn print_sites_in_maintenance(api: &Api) -> Result<()> {
    let sites: Vec<SiteView> = serde_json::from_value(
        api.ok(http::Method::GET, "/v1/sites", None)?
            .get("sites")
            .cloned()
            .unwrap_or_default(),
    )?;
    for s in sites.iter().filter(|s| s.maintenance) {
        println!(
            "site {}: maintenance on (hosts {})",
            s.name,
            s.hosts.join(", ")
        );
    }
    Ok(())
}

/// `on` or `off`, for `duotone maintenance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Turn it on.
    On,
    /// Turn it off.
    Off,
}

/// `duotone maintenance on|off SERVICE` or `duotone maintenance on|off --site NAME`.
pub fn maintenance(
    args: &AdminArgs,
    state: OnOff,
    service: Option<&str>,
    site: Option<&str>,
) -> Result<()> {
    let api = Api::new(args)?;
    let body = serde_json::json!({ "on": state == OnOff::On });
    match (service, site) {
        (_, Some(site)) => {
            let path = format!("/v1/sites/{}/maintenance", path_segment(site));
            let v: SiteView =
                serde_json::from_value(api.ok(http::Method::POST, &path, Some(body))?)?;
            let on = if v.maintenance { "on" } else { "off" };
            println!("site {}: maintenance {on}", v.name);
        }
        (Some(service), None) => {
            let path = format!("/v1/services/{service}/maintenance");
            let v: ServiceView =
                serde_json::from_value(api.ok(http::Method::POST, &path, Some(body))?)?;
            if !v.maintenance {
                println!("{}: maintenance off", v.name);
            }
            print_service(&v);
        }
        (None, None) => bail!("name a service, or a site with --site"),
    }
    Ok(())
}

/// `name` as one URL path segment (a site may be named `*`, or a host
/// with characters a path would read otherwise).
fn path_segment(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long the CLI waits for upgraded connections to end once it asked
/// the edge to close them (each takes one read on the edge to notice).
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// No request in flight and no upgraded connection left.
    Done,
    /// Time ran out with these still open.
    TimedOut {
        /// Requests still in flight.
        requests: i64,
        /// Upgraded connections still open after the edge closed them.
        upgraded: i64,
    },
}

impl Drain {
    /// Why a drain that timed out is not done, in words.
    fn why(self, color: &str, limit: Duration) -> String {
        match self {
            Drain::Done => format!("{color} is drained"),
            Drain::TimedOut { requests, .. } if requests > 0 => format!(
                "{color} is not drained: {requests} request(s) still in flight after {limit:?} \
                 (raise --drain-timeout)"
            ),
            Drain::TimedOut { upgraded, .. } => format!(
                "{color} is not drained: {upgraded} upgraded connection(s) still open after \
                 the edge closed them"
            ),
        }
    }
}

/// Drains `color` of `service`, with a progress bar: waits up to `limit`
/// for its in-flight requests to end, and for its upgraded connections
/// (WebSockets), which the edge closes `drain_upgraded` after the color
/// stopped taking traffic. If only upgraded connections are left when
/// `limit` has passed, asks the edge to close them now
/// (`POST /v1/services/{service}/drain`) and waits [`CLOSE_GRACE`] more.
fn drain(api: &Api, service: &str, color: &str, limit: Duration) -> Result<Drain> {
    let start = Instant::now();
    let counts = || -> Result<(i64, i64, Option<u64>)> {
        let s = api.service(service)?;
        let c = s
            .colors
            .get(color)
            .with_context(|| format!("service {service} has no color {color:?} any more"))?;
        // With several nodes: the old color's requests on every node.
        let in_flight = cluster_in_flight(api, service, color).unwrap_or(c.in_flight);
        Ok((in_flight.max(0), c.upgraded.max(0), c.upgraded_close_in_ms))
    };
    let (n, u, _) = counts()?;
    let bar = indicatif::ProgressBar::new((n + u) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "draining [{bar:30}] {pos}/{len} done, {elapsed}: {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut asked: Option<Instant> = None;
    loop {
        let (n, u, close_in) = counts()?;
        let left = (n + u) as u64;
        bar.set_length(bar.length().unwrap_or(0).max(left));
        bar.set_position(bar.length().unwrap_or(0).saturating_sub(left));
        let closing = match (u, close_in, asked) {
            (0, _, _) => String::new(),
            (_, _, Some(_)) => " (closing them now)".to_string(),
            (_, Some(ms), None) => format!(" (the edge closes them in {:.0}s)", ms as f64 / 1e3),
            (_, None, None) => " (being closed)".to_string(),
        };
        bar.set_message(format!(
            "{service}/{color}: {n} request(s) in flight, {u} WebSocket(s){closing}"
        ));
        if left == 0 {
            bar.finish_with_message(format!("{service}/{color}: drained"));
            return Ok(Drain::Done);
        }
        if start.elapsed() > limit {
            let timed_out = Drain::TimedOut {
                requests: n,
                upgraded: u,
            };
            if n > 0 {
                bar.abandon_with_message(format!(
                    "{service}/{color}: {n} request(s) still in flight"
                ));
                return Ok(timed_out);
            }
            match asked {
                None => {
                    api.ok(
                        http::Method::POST,
                        &format!("/v1/services/{service}/drain"),
                        Some(serde_json::json!({ "color": color })),
                    )
                    .with_context(|| {
                        format!("asking the edge to close the WebSockets of {color}")
                    })?;
                    asked = Some(Instant::now());
                }
                Some(t) if t.elapsed() > CLOSE_GRACE => {
                    bar.abandon_with_message(format!(
                        "{service}/{color}: {u} upgraded connection(s) still open"
                    ));
                    return Ok(timed_out);
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn parse_duration(s: &str) -> Result<Duration> {
    routes::duration::parse(s).map_err(|e| anyhow::anyhow!(e))
}

/// `duotone flip SERVICE [COLOR] [--force] [--drain]`.
pub fn flip(
    args: &AdminArgs,
    service: &str,
    color: Option<&str>,
    force: bool,
    do_drain: bool,
    drain_timeout: &str,
) -> Result<()> {
    let limit = parse_duration(drain_timeout)?;
    let api = Api::new(args)?;
    let before = api.service(service)?;
    let mut body = serde_json::json!({ "force": force });
    if let Some(c) = color {
        body["to"] = c.into();
    }
    let after: ServiceView = serde_json::from_value(api.ok(
        http::Method::POST,
        &format!("/v1/services/{service}/flip"),
        Some(body),
    )?)?;
    println!("{service}: {} -> {}", before.live, after.live);
    if do_drain && before.live != after.live {
        let (new, old) = (&after.live, &before.live);
        let drained = drain(&api, service, old, limit)
            .with_context(|| format!("{service} flipped to {new}, but draining {old} failed"))?;
        if drained != Drain::Done {
            bail!(
                "{service} flipped to {new}, but {}",
                drained.why(old, limit)
            );
        }
    }
    Ok(())
}

/// `duotone weights SERVICE blue=90 green=10 [--force]`.
pub fn weights(args: &AdminArgs, service: &str, pairs: &[String], force: bool) -> Result<()> {
    let mut map = BTreeMap::new();
    for p in pairs {
        let (c, w) = p
            .split_once('=')
            .with_context(|| format!("{p:?}: expected COLOR=WEIGHT"))?;
        let w: u32 = w
            .parse()
            .with_context(|| format!("{p:?}: weight must be a whole number"))?;
        map.insert(c.to_string(), w);
    }
    let mut body = serde_json::to_value(&map)?;
    if force {
        body["force"] = true.into();
    }
    let api = Api::new(args)?;
    let v: ServiceView = serde_json::from_value(api.ok(
        http::Method::PUT,
        &format!("/v1/services/{service}/weights"),
        Some(body),
    )?)?;
    print_service(&v);
    Ok(())
}

/// `duotone pause SERVICE` (`on`) and `duotone resume SERVICE`.
pub fn pause(args: &AdminArgs, service: &str, on: bool) -> Result<()> {
    let api = Api::new(args)?;
    let action = if on { "pause" } else { "resume" };
    let v: ServiceView = serde_json::from_value(api.ok(
        http::Method::POST,
        &format!("/v1/services/{service}/{action}"),
        None,
    )?)?;
    print_service(&v);
    Ok(())
}

/// `duotone preview SERVICE COLOR`: prints the preview header for the
/// color, a curl example and the cookie for a browser.
pub fn preview(args: &AdminArgs, service: &str, color: &str, json: bool) -> Result<()> {
    let api = Api::new(args)?;
    let v = api.ok(
        http::Method::GET,
        &format!("/v1/services/{service}/preview/{color}"),
        None,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let t: crate::ops::views::PreviewToken = serde_json::from_value(v)?;
    let url = t.url.as_deref().unwrap_or("https://HOST/");
    println!("{}: {}", t.header, t.value);
    println!();
    println!("curl -H '{}: {}' {url}", t.header, t.value);
    println!();
    println!(
        "In a browser (the developer console on the site): document.cookie = \"{}={}; path=/\"",
        t.cookie, t.value
    );
    println!(
        "Requests with it go to {} of {} whatever the weights or the live color; \
         delete the cookie to leave.",
        t.color, t.service
    );
    Ok(())
}

/// `duotone reload`.
pub fn reload(args: &AdminArgs) -> Result<()> {
    let api = Api::new(args)?;
    let v = api.ok(http::Method::POST, "/v1/reload", None)?;
    println!("reloaded");
    for w in v
        .get("warnings")
        .and_then(|w| w.as_array())
        .into_iter()
        .flatten()
    {
        println!("warning: {}", w.as_str().unwrap_or_default());
    }
    Ok(())
}

/// Arguments of `duotone deploy`.
#[derive(clap::Args)]
pub struct DeployArgs {
    /// Service to deploy.
    #[arg(long, short)]
    pub service: String,
    /// Color to deploy to (default: the idle one of two).
    #[arg(long)]
    pub to: Option<String>,
    /// Shell command that starts the new color; `{color}` is replaced, and $DUOTONE_COLOR is set.
    #[arg(long)]
    pub start: String,
    /// Shell command that stops the old color after draining; `{color}` is the old color.
    /// After a failed deploy it also stops the new color again (unless --keep-failed).
    #[arg(long)]
    pub stop: Option<String>,
    /// Longest the start command may run. It must start the color in the
    /// background and return (`docker compose up -d`, `systemctl start`); one
    /// still running after this is stopped and the deploy refused.
    #[arg(long, default_value = "300s")]
    pub start_timeout: String,
    /// After a failed deploy, leave the new color running (for a look at it)
    /// instead of running --stop for it.
    #[arg(long)]
    pub keep_failed: bool,
    /// How long to wait for the new color to become healthy.
    #[arg(long, default_value = "120s")]
    pub health_timeout: String,
    /// How long to wait for the old color's in-flight requests to end. Its
    /// WebSockets are closed by the edge (the service's `drain_upgraded`),
    /// at the latest when this runs out.
    #[arg(long, default_value = "300s")]
    pub drain_timeout: String,
    /// Run --stop for the old color even when its drain timed out with
    /// requests still in flight (they are cut off); the deploy still exits
    /// non-zero.
    #[arg(long)]
    pub force_stop: bool,
    /// Once the new color is healthy: pause the service (new requests are
    /// held at the edge), run this shell command (e.g. `python manage.py
    /// migrate`; `{color}` and `{old}` are replaced, as for --start), flip,
    /// resume. If it fails: resume, the old color stays live, exit non-zero.
    #[arg(long, value_name = "COMMAND")]
    pub pause_during: Option<String>,
    /// Longest the --pause-during command may run before it is stopped and
    /// the deploy refused (default: the service's pause timeout, past which
    /// held requests are answered 503 anyway).
    #[arg(long)]
    pub pause_timeout: Option<String>,
    /// After the flip, watch the new color for this long (e.g. 60s) and flip
    /// back automatically if it crosses --max-error-rate or --max-latency
    /// (then the new color is drained and stopped and the deploy fails). The
    /// old color keeps running until the watch passes.
    #[arg(long, value_name = "DURATION")]
    pub watch: Option<String>,
    /// With --watch: the largest share of 5xx responses of the new color,
    /// as a percentage (2%) or a fraction (0.02).
    #[arg(long, default_value = "2%", value_name = "RATE")]
    pub max_error_rate: String,
    /// With --watch: the largest p99 latency of the new color (e.g. 800ms).
    #[arg(long, value_name = "DURATION")]
    pub max_latency: Option<String>,
    /// With --watch: responses needed before a threshold applies.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub min_requests: u64,
    /// Where the admin API is and its token (`--admin`, `--token`).
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `2%` or `0.02` as a fraction from 0 to 1.
fn parse_rate(s: &str) -> Result<f64> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(p) => (p.trim(), 100.0),
        None => (t, 1.0),
    };
    let rate = num
        .parse::<f64>()
        .ok()
        .map(|n| n / scale)
        .filter(|r| (0.0..=1.0).contains(r))
        .with_context(|| {
            format!("{s:?}: give the error rate as a percentage (2%) or a fraction (0.02)")
        })?;
    Ok(rate)
}

/// The body of the watch `deploy --watch` starts (checked before anything
/// runs), or `None` without `--watch`.
fn watch_body(a: &DeployArgs) -> Result<Option<serde_json::Value>> {
    let Some(window) = &a.watch else {
        return Ok(None);
    };
    let limits = routes::watch::Limits {
        window: parse_duration(window).context("--watch")?,
        max_error_rate: parse_rate(&a.max_error_rate).context("--max-error-rate")?,
        max_latency: a
            .max_latency
            .as_deref()
            .map(parse_duration)
            .transpose()
            .context("--max-latency")?,
        min_requests: a.min_requests,
    };
    limits.check().map_err(|e| anyhow::anyhow!(e))?;
    let mut body = serde_json::json!({
        "for": window,
        "max_error_rate": limits.max_error_rate,
        "min_requests": limits.min_requests,
    });
    if let Some(l) = &a.max_latency {
        body["max_latency"] = l.as_str().into();
    }
    Ok(Some(body))
}

/// `deploy --watch`, right after the flip to `new`: starts the watch and
/// polls it until it ends. Passed: `Ok` (the deploy goes on to drain and
/// stop `old`). Rolled back (the edge flipped back to `old`): drains `new`,
/// runs --stop for it (unless --keep-failed) and fails with the figures.
/// Any other end fails and stops nothing.
fn watch_new(
    api: &Api,
    a: &DeployArgs,
    body: serde_json::Value,
    new: &str,
    old: &str,
    drain_limit: Duration,
) -> Result<()> {
    let service = &a.service;
    let mut body = body;
    body["color"] = new.into();
    body["rollback_to"] = old.into();
    println!(
        "      watching {new} for {} (back to {old} past {} 5xx{})",
        a.watch.as_deref().unwrap_or(""),
        a.max_error_rate,
        a.max_latency
            .as_deref()
            .map(|l| format!(" or a p99 over {l}"))
            .unwrap_or_default()
    );
    let path = format!("/v1/services/{service}/watch");
    api.ok(http::Method::POST, &path, Some(body))
        .with_context(|| format!("the watch was refused; {new} is live, {old} left running"))?;
    let mut said = Instant::now();
    let w = loop {
        std::thread::sleep(Duration::from_millis(250));
        let Some(w) = api.service(service)?.watch else {
            bail!("the watch of {new} is gone (did the proxy restart?); {new} is live, {old} left running");
        };
        if w.state != WatchState::Watching {
            break w;
        }
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            println!(
                "      {:.0}s left: {}",
                w.remaining_ms as f64 / 1e3,
                watch_figures(&w)
            );
        }
    };
    let figures = watch_figures(&w);
    let reason = w.reason.clone().unwrap_or_default();
    match w.state {
        WatchState::Passed => {
            println!("      watch passed: {reason}");
            Ok(())
        }
        WatchState::RolledBack => {
            println!("==> ROLLED BACK to {old}: {reason}");
            println!("      draining {new}");
            let drained = drain(api, service, new, drain_limit).with_context(|| {
                format!("rolled back to {old}: {reason}; draining {new} failed")
            })?;
            let done = match (&a.stop, a.keep_failed, drained) {
                (_, true, _) => format!("{new} left running (--keep-failed)"),
                (None, false, _) => format!("{new} left running: no --stop command"),
                (Some(_), false, d @ Drain::TimedOut { .. }) => {
                    format!("{new} left running: {}", d.why(new, drain_limit))
                }
                (Some(stop), false, Drain::Done) => {
                    println!("      stopping {new}");
                    match shell(stop, new, old) {
                        Ok(()) => format!("{new} stopped"),
                        Err(e) => format!("stopping {new} failed: {e:#}"),
                    }
                }
            };
            bail!("deploy rolled back: {reason}; {old} is live again, {done} [{figures}]")
        }
        WatchState::Failed => {
            bail!("watch failed: {reason}; {new} is still live, {old} left running [{figures}]")
        }
        state => bail!(
            "the watch of {new} ended {}: {reason}; nothing was stopped ({new} and {old} both \
             running) [{figures}]",
            state.as_str()
        ),
    }
}

/// `cmd` with `{color}` and `{old}` replaced.
fn fill(cmd: &str, color: &str, old: &str) -> String {
    cmd.replace("{color}", color).replace("{old}", old)
}

fn shell(cmd: &str, color: &str, old: &str) -> Result<()> {
    let cmd = fill(cmd, color, old);
    println!("  $ {cmd}");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .env("DUOTONE_COLOR", color)
        .env("DUOTONE_OLD_COLOR", old)
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("command failed ({status}): {cmd}");
    }
    Ok(())
}

/// Runs the start command, which must return within `limit`. It runs in a
/// process group of its own so that one still running then (a server left
/// in the foreground, `docker compose up` without `-d`) is stopped with
/// everything it started, and the deploy refused.
fn start_within(cmd: &str, color: &str, old: &str, limit: Duration) -> Result<()> {
    if run_within(cmd, color, old, limit, &|| false)? {
        return Ok(());
    }
    let cmd = fill(cmd, color, old);
    bail!(
        "the start command was still running after {limit:?}, so it was stopped: it must start \
         {color} in the background and return (e.g. `docker compose up -d`, `systemctl start`, \
         `gunicorn --daemon`); raise --start-timeout if starting really takes longer: {cmd}"
    )
}

/// Runs `cmd` in a process group of its own; one still running after
/// `limit`, or once `stop()` says so, is stopped with everything it
/// started (SIGTERM, then SIGKILL) and `Ok(false)` returned. Err: it could
/// not run or failed.
fn run_within(
    cmd: &str,
    color: &str,
    old: &str,
    limit: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<bool> {
    use std::os::unix::process::CommandExt;
    let cmd = fill(cmd, color, old);
    println!("  $ {cmd}");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .env("DUOTONE_COLOR", color)
        .env("DUOTONE_OLD_COLOR", old)
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {cmd:?}"))?
        {
            if !status.success() {
                bail!("command failed ({status}): {cmd}");
            }
            return Ok(true);
        }
        if start.elapsed() >= limit || stop() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM to the group, then SIGKILL to what is left of it.
    let group = -(child.id() as i32);
    // SAFETY: kill(2) on the process group of our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(group, libc::SIGTERM)
    };
    let grace = Instant::now();
    while grace.elapsed() < Duration::from_secs(5) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; the group id stays ours until the child is reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(group, libc::SIGKILL)
    };
    let _ = child.wait();
    Ok(false)
}

/// Step 3 of a deploy: flips the service to `new`. With --pause-during,
/// pauses it first, runs the command, flips, and resumes on every path
/// once paused. Err: not flipped (resumed, `old` stays live). Ok(true):
/// flipped, but the resume failed (the service is still paused).
fn flip_step(api: &Api, a: &DeployArgs, new: &str, old: &str) -> Result<bool> {
    let service = &a.service;
    let flip = || {
        api.ok(
            http::Method::POST,
            &format!("/v1/services/{service}/flip"),
            Some(serde_json::json!({ "to": new })),
        )
        .map(drop)
        .with_context(|| format!("flip refused; {old} stays live"))
    };
    let Some(cmd) = &a.pause_during else {
        println!("[3/5] flipping {service} to {new}");
        flip()?;
        return Ok(false);
    };
    let hold = Duration::from_millis(api.service(service)?.pause.timeout_ms);
    let limit = match &a.pause_timeout {
        Some(t) => parse_duration(t)?,
        None => hold,
    };
    if limit > hold {
        eprintln!(
            "warning: requests held longer than {hold:?} (the service's pause timeout) get 503; \
             --pause-timeout is {limit:?}"
        );
    }
    println!("[3/5] pausing {service}, running the --pause-during command (up to {limit:?}), flipping to {new}");
    let path = |action: &str| format!("/v1/services/{service}/{action}");
    // From here until the resume, Ctrl-C and SIGTERM stop the command and
    // end the deploy with the service resumed, never paused.
    let interrupts = Interrupts::watch()?;
    api.ok(http::Method::POST, &path("pause"), None)
        .with_context(|| format!("pause refused; {old} stays live"))?;
    let paused = Instant::now();
    let stop = || interrupts.seen();
    let ran = run_within(cmd, new, old, limit, &stop).and_then(|done| {
        if interrupts.seen() {
            bail!(
                "interrupted: the --pause-during command was stopped: {}",
                fill(cmd, new, old)
            );
        }
        if !done {
            bail!(
                "the --pause-during command was still running after {limit:?}, so it was \
                 stopped (raise --pause-timeout and the service's pause timeout): {}",
                fill(cmd, new, old)
            );
        }
        flip()
    });
    let held = api.service(service).map(|v| v.held).unwrap_or(0);
    let resumed = resume(api, service);
    // A signal from now on ends the deploy as it would have before.
    interrupts.release();
    match (&ran, &resumed) {
        (_, Ok(())) => println!(
            "    resumed {service} after {:.1}s ({held} request(s) were held)",
            paused.elapsed().as_secs_f64()
        ),
        (Ok(()), Err(e)) => {
            eprintln!("error: {service} is live on {new} but still PAUSED: {e:#}; run `duotone resume {service}`");
            return Ok(true);
        }
        (Err(_), Err(e)) => {
            eprintln!("error: {service} is still PAUSED: {e:#}; run `duotone resume {service}`")
        }
    }
    ran.map(|()| false)
}

/// SIGINT (Ctrl-C) and SIGTERM caught while a deploy has its service
/// paused: noted for the deploy to stop its command and resume; outside
/// that ([`Interrupts::release`]) they end the process (exit 130).
struct Interrupts {
    seen: Arc<AtomicBool>,
    guarding: Arc<AtomicBool>,
}

impl Interrupts {
    /// Starts catching them (returns once the handlers are in place).
    fn watch() -> Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        let seen = Arc::new(AtomicBool::new(false));
        let guarding = Arc::new(AtomicBool::new(true));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, g) = (seen.clone(), guarding.clone());
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return drop(tx.send(Err(anyhow::Error::from(e)))),
            };
            rt.block_on(async move {
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => return drop(tx.send(Err(e.into()))),
                };
                let _ = tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if !g.load(Ordering::SeqCst) {
                        std::process::exit(130);
                    }
                    eprintln!("interrupted: stopping the --pause-during command and resuming");
                    s.store(true, Ordering::SeqCst);
                }
            });
        });
        rx.recv()
            .context("signal watcher")?
            .context("catching SIGINT and SIGTERM")?;
        Ok(Interrupts { seen, guarding })
    }

    /// Whether one arrived.
    fn seen(&self) -> bool {
        self.seen.load(Ordering::SeqCst)
    }

    /// Signals end the process again.
    fn release(&self) {
        self.guarding.store(false, Ordering::SeqCst);
    }
}

/// Resumes `service`, trying again for a few seconds if the admin API
/// cannot be reached: a deploy must not leave it paused.
fn resume(api: &Api, service: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        match api.ok(
            http::Method::POST,
            &format!("/v1/services/{service}/resume"),
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// After a failed deploy: stops the color it started (unless `--keep-failed`
/// or there is no `--stop`), then returns the failure with what was done.
fn clean_up(a: &DeployArgs, new: &str, old: &str, failure: anyhow::Error) -> anyhow::Error {
    let done = match (&a.stop, a.keep_failed) {
        (_, true) => format!("{new} left running (--keep-failed)"),
        (None, false) => format!("{new} may still be running: no --stop command to stop it"),
        (Some(stop), false) => {
            println!("==> deploy failed: stopping {new} again");
            match shell(stop, new, old) {
                Ok(()) => format!("{new} stopped again"),
                Err(e) => format!("stopping {new} failed too: {e:#}"),
            }
        }
    };
    failure.context(format!("deploy failed; {old} stays live, {done}"))
}

/// Waits until `color` of `service` is healthy by checks made after now.
///
/// A verdict learned before the start command ran (say, from the instance
/// that a previous deploy stopped a moment ago) says nothing about the new
/// one, so with active checks a member counts only once its last check
/// passed and that check began after this call: the check count has moved
/// by two (checks of a member run one after another).
fn wait_healthy(api: &Api, service: &str, color: &str, old: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let checks = |s: &ServiceView| -> BTreeMap<String, u64> {
        s.colors
            .get(color)
            .map(|c| {
                c.members
                    .iter()
                    .map(|m| (m.addr.clone(), m.checks))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = api.service(service)?;
    if !first.active_checks {
        eprintln!(
            "warning: service {service} has no active health check (health = {{ path = \"/healthz\" }}), \
             so {color} counts as healthy as soon as its start command returns"
        );
    }
    let baseline = checks(&first);
    // Each new reason a member's checks fail for, printed once as it appears.
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let s = api.service(service)?;
        let c = s
            .colors
            .get(color)
            .with_context(|| format!("service {service} has no color {color:?} any more"))?;
        for m in &c.members {
            let before = baseline.get(&m.addr).copied().unwrap_or(0);
            if let (Some(e), true) = (&m.last_check_error, m.checks > before) {
                if said.get(&m.addr) != Some(e) {
                    println!("      {} check failed: {e}", m.addr);
                    said.insert(m.addr.clone(), e.clone());
                }
            }
        }
        let fresh = |m: &crate::ops::views::MemberView| {
            let before = baseline.get(&m.addr).copied().unwrap_or(0);
            m.healthy && m.last_check_ok == Some(true) && m.checks >= before + 2
        };
        if c.healthy && (!s.active_checks || c.members.iter().any(fresh)) {
            return Ok(());
        }
        if start.elapsed() > limit {
            let why = c
                .members
                .iter()
                .map(|m| {
                    let last = match (m.last_check_ok, &m.last_check_error) {
                        (Some(true), _) => "last check passed".to_string(),
                        (Some(false), Some(e)) => format!("last check failed: {e}"),
                        (Some(false), None) => "last check failed".to_string(),
                        (None, _) => "not checked yet".to_string(),
                    };
                    format!("{} {} ({last})", m.addr, m.health)
                })
                .collect::<Vec<_>>()
                .join(", ");
            bail!("{color} did not become healthy within {limit:?} [{why}]; {old} stays live");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `duotone deploy`: start idle color, wait healthy, flip, (with --watch:
/// watch the new color, rolling back on a breach), drain, stop old.
/// Any failure before the flip leaves the old color live and stops the new
/// one again (unless `--keep-failed`).
pub fn deploy(a: &DeployArgs) -> Result<()> {
    let health_limit = parse_duration(&a.health_timeout)?;
    let drain_limit = parse_duration(&a.drain_timeout)?;
    let start_limit = parse_duration(&a.start_timeout)?;
    let watch = watch_body(a)?;
    let api = Api::new(&a.admin)?;
    let svc = api.service(&a.service)?;
    let old = svc.live.clone();
    let new = match &a.to {
        Some(c) if svc.colors.contains_key(c) => c.clone(),
        Some(c) => bail!("service {} has no color {c:?}", a.service),
        None => {
            let others: Vec<&String> = svc.colors.keys().filter(|c| **c != old).collect();
            match others.as_slice() {
                [one] => (*one).clone(),
                _ => bail!(
                    "service {} has {} colors: pass --to",
                    a.service,
                    svc.colors.len()
                ),
            }
        }
    };
    if new == old {
        bail!("{new} is already live");
    }
    println!("==> deploying {} to {new} (live: {old})", a.service);
    let until_flip = || -> Result<bool> {
        println!("[1/5] starting {new} (the command may take up to {start_limit:?})");
        start_within(&a.start, &new, &old, start_limit)?;
        println!("[2/5] waiting for {new} to be healthy (up to {health_limit:?})");
        wait_healthy(&api, &a.service, &new, &old, health_limit)?;
        flip_step(&api, a, &new, &old)
    };
    let still_paused = until_flip().map_err(|e| clean_up(a, &new, &old, e))?;
    if let Some(body) = watch {
        watch_new(&api, a, body, &new, &old, drain_limit)?;
    }
    println!("[4/5] draining {old}");
    let live = format!("{} is live on {new}", a.service);
    let drained = drain(&api, &a.service, &old, drain_limit)
        .with_context(|| format!("{live}, but draining {old} failed; --stop was not run"))?;
    match (drained, &a.stop) {
        (Drain::Done, Some(cmd)) => {
            println!("[5/5] stopping {old}");
            shell(cmd, &old, &old).with_context(|| format!("{live}, but stopping {old} failed"))?;
        }
        (Drain::Done, None) => println!("[5/5] no --stop command: leaving {old} running"),
        (timed_out, Some(cmd)) if a.force_stop => {
            println!(
                "[5/5] {}: stopping it anyway (--force-stop)",
                timed_out.why(&old, drain_limit)
            );
            shell(cmd, &old, &old).with_context(|| format!("{live}, but stopping {old} failed"))?;
            bail!(
                "{live}, but {}; {old} was stopped anyway (--force-stop)",
                timed_out.why(&old, drain_limit)
            );
        }
        (timed_out, stop) => bail!(
            "{live}, but {}; {old} was left running{}",
            timed_out.why(&old, drain_limit),
            if stop.is_some() {
                " (--stop not run; --force-stop runs it anyway)"
            } else {
                ""
            }
        ),
    }
    if still_paused {
        bail!(
            "{live}, but it is still paused: run `duotone resume {}`",
            a.service
        );
    }
    println!("==> {live}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rates_are_percentages_or_fractions() {
        for (s, want) in [
            ("2%", 0.02),
            ("0.5 %", 0.005),
            ("0.02", 0.02),
            ("0", 0.0),
            ("100%", 1.0),
        ] {
            let got = parse_rate(s).unwrap();
            assert!((got - want).abs() < 1e-12, "{s}: {got}");
        }
        for bad in ["2", "101%", "-1%", "two", "", "%"] {
            let e = parse_rate(bad).unwrap_err().to_string();
            assert!(
                e.contains("percentage (2%) or a fraction (0.02)"),
                "{bad}: {e}"
            );
        }
    }
}
