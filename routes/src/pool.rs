//! Services, their color pools and members, and the lock-free choice of a
//! member for each request.

use crate::config::{HealthSpec, Timeouts};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A deployment color such as `blue` or `green`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Color(Arc<str>);

impl Color {
    /// Wraps a color name (validated by the caller).
    pub fn new(name: &str) -> Self {
        Color(Arc::from(name))
    }

    /// The color's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a member listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MemberAddr {
    /// An IP address and port.
    Tcp(SocketAddr),
    /// A host name and port, resolved when the table is compiled.
    Named(String, u16),
    /// A unix domain socket.
    Unix(PathBuf),
}

/// The protocol a member speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (members written `host:port` or `unix:/path`).
    #[default]
    Http,
    /// The uwsgi binary protocol (members written `uwsgi://host:port` or
    /// `uwsgi+unix:/path`), as uWSGI's `--socket` speaks it.
    Uwsgi,
}

impl Protocol {
    /// Lowercase name for messages, APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Uwsgi => "uwsgi",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MemberAddr {
    /// Parses a member as written in `colors`: an HTTP member
    /// (`127.0.0.1:8000`, `[::1]:8000`, `app:8000`, `unix:/run/app.sock`)
    /// or a uwsgi member (`uwsgi://127.0.0.1:3031`, `uwsgi://app:3031`,
    /// `uwsgi+unix:/run/app.sock`); returns the address and its protocol.
    pub fn parse_member(s: &str) -> Result<(Self, Protocol), String> {
        if let Some(rest) = s.strip_prefix("uwsgi+unix:") {
            return Self::unix(s, rest).map(|a| (a, Protocol::Uwsgi));
        }
        if let Some(rest) = s.strip_prefix("uwsgi://") {
            if rest.starts_with("unix:") || rest.contains('/') {
                return Err(format!(
                    "{s:?}: write uwsgi members as \"uwsgi://host:port\" or \"uwsgi+unix:/path\""
                ));
            }
            return Self::network(s, rest).map(|a| (a, Protocol::Uwsgi));
        }
        Self::parse(s).map(|a| (a, Protocol::Http))
    }

    /// Parses an HTTP member: `127.0.0.1:8000`, `[::1]:8000`, `app:8000`
    /// or `unix:/run/app.sock` ([`MemberAddr::parse_member`] also takes
    /// uwsgi members).
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Self::unix(s, path);
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?}: write members as \"host:port\" or \"unix:/path\", without a scheme \
                 (uwsgi members: \"uwsgi://host:port\" or \"uwsgi+unix:/path\")"
            ));
        }
        Self::network(s, s)
    }

    /// A unix socket `path` (absolute) of the member written `s`.
    fn unix(s: &str, path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("{s:?}: unix socket path must be absolute"));
        }
        Ok(MemberAddr::Unix(PathBuf::from(path)))
    }

    /// A `host:port` address `s` (of the member written `whole`).
    fn network(whole: &str, s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(MemberAddr::Tcp(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{whole:?}: expected \"host:port\" or \"unix:/path\""))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{whole:?}: invalid port"))?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(format!("{whole:?}: invalid host name"));
        }
        Ok(MemberAddr::Named(host.to_ascii_lowercase(), port))
    }
}

impl fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberAddr::Tcp(a) => write!(f, "{a}"),
            MemberAddr::Named(h, p) => write!(f, "{h}:{p}"),
            MemberAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Member {
    /// The member as written in the config: its address, with the
    /// `uwsgi://` or `uwsgi+unix:` form for uwsgi members.
    pub fn written(&self) -> String {
        match (self.protocol, &self.addr) {
            (Protocol::Http, a) => a.to_string(),
            (Protocol::Uwsgi, MemberAddr::Unix(p)) => format!("uwsgi+unix:{}", p.display()),
            (Protocol::Uwsgi, a) => format!("uwsgi://{a}"),
        }
    }
}

/// What active health checks last said about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Not checked yet (or the service has no active check).
    Unknown,
    /// The last check verdict was healthy.
    Up,
    /// The last check verdict was unhealthy.
    Down,
}

impl HealthState {
    /// Lowercase name for APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

/// Health of one member, shared across table generations so that a flip or
/// reload keeps what health checks learned.
#[derive(Debug)]
pub struct MemberHealth {
    /// Active check verdict: 0 unknown, 1 up, 2 down.
    state: AtomicU8,
    /// Passive ejection: unix milliseconds until which the member is skipped.
    ejected_until_ms: AtomicU64,
    /// Consecutive connect failures seen on the request path.
    failures: AtomicU64,
    /// Active checks completed so far.
    checks: AtomicU64,
    /// Whether the last completed active check passed.
    last_check_ok: AtomicBool,
    /// Why the last completed active check failed (`None` after a pass).
    /// Read by the admin API only, never on the request path.
    last_error: Mutex<Option<Arc<str>>>,
}

impl Default for MemberHealth {
    fn default() -> Self {
        MemberHealth {
            state: AtomicU8::new(0),
            ejected_until_ms: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            last_check_ok: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }
}

impl MemberHealth {
    /// The active check verdict.
    pub fn state(&self) -> HealthState {
        match self.state.load(Ordering::Relaxed) {
            1 => HealthState::Up,
            2 => HealthState::Down,
            _ => HealthState::Unknown,
        }
    }

    /// Whether active checks have not marked the member down.
    pub fn is_up(&self) -> bool {
        self.state() != HealthState::Down
    }

    /// Whether the member is ejected by passive checks at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Records an active check verdict.
    pub fn set_up(&self, up: bool) {
        self.state.store(if up { 1 } else { 2 }, Ordering::Relaxed);
        if up {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records the outcome of one active check (`Err` with why it failed,
    /// e.g. "connection refused" or "status 503"), after any verdict it led
    /// to was set with [`MemberHealth::set_up`]. Lets callers tell a fresh
    /// check from a verdict learned earlier (e.g. before a redeploy).
    pub fn record_check(&self, outcome: Result<(), &str>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = outcome.err().map(Arc::from);
        self.last_check_ok.store(outcome.is_ok(), Ordering::Release);
        self.checks.fetch_add(1, Ordering::AcqRel);
    }

    /// Why the last active check failed; `None` before the first check and
    /// after one that passed.
    pub fn last_error(&self) -> Option<Arc<str>> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Active checks completed so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Acquire)
    }

    /// Whether the last active check passed (`None` before the first one).
    pub fn last_check_ok(&self) -> Option<bool> {
        (self.checks() > 0).then(|| self.last_check_ok.load(Ordering::Acquire))
    }

    /// True if requests may go to this member at `now_ms`.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_up() && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Records a connect failure; ejects the member until `now_ms + for_ms`.
    pub fn eject(&self, now_ms: u64, for_ms: u64) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.ejected_until_ms
            .store(now_ms.saturating_add(for_ms), Ordering::Relaxed);
    }

    /// Records a successful response: clears the failure streak.
    pub fn succeed(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Connect failures since the last success.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Per-color counters, shared across table generations.
///
/// Requests and upgraded connections (WebSockets and other `101 Switching
/// Protocols` tunnels) are counted apart: a request ends by itself, an
/// upgraded connection may stay open for hours, so a drain waits for the
/// first and closes the second (see [`ColorStats::close_upgraded`]).
#[derive(Debug, Default)]
pub struct ColorStats {
    in_flight: AtomicI64,
    requests: AtomicU64,
    upgraded: AtomicI64,
    /// Bumped whenever the color starts or stops taking new traffic, so a
    /// close scheduled for an earlier change does not run after a newer one.
    drain_epoch: AtomicU64,
    /// When the scheduled close of the upgraded connections is due (unix
    /// milliseconds; 0 when none is scheduled).
    close_at_ms: AtomicU64,
    /// The open upgraded connections. Locked once when a connection upgrades
    /// and once when it ends, and by drains: never per request.
    tunnels: Mutex<Tunnels>,
    /// Responses, 5xx and latencies of finished requests (for watches).
    outcomes: crate::watch::OutcomeCounters,
}

/// Ends an upgraded connection from outside the task that relays it. The
/// proxy registers one per upgraded connection ([`ColorStats::upgrade`]).
pub trait Closer: Send + Sync {
    /// Asks the connection to end. It must not block; the connection
    /// deregisters itself (drops its [`Upgraded`]) once it has ended.
    fn close(&self);
}

/// The registry of a color's open upgraded connections.
#[derive(Default)]
struct Tunnels {
    next: u64,
    open: std::collections::BTreeMap<u64, Arc<dyn Closer>>,
    /// Set by a drain: a connection that upgrades on this color afterwards
    /// (its handshake was under way during the drain) is closed at once.
    closing: bool,
}

impl fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnels")
            .field("open", &self.open.len())
            .field("closing", &self.closing)
            .finish()
    }
}

impl ColorStats {
    /// Requests currently being proxied to this color (upgraded connections
    /// not included).
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests ever sent to this color.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a finished request of this color that sent `status` (0: none)
    /// after `elapsed` seconds: one relaxed atomic add (two for a 5xx).
    #[inline]
    pub fn finished(&self, status: u16, elapsed: f64) {
        self.outcomes.record(status, elapsed);
    }

    /// The responses, 5xx and latencies counted so far.
    pub fn outcomes(&self) -> crate::watch::Outcomes {
        self.outcomes.read()
    }

    /// Upgraded connections (WebSockets) open to this color now.
    pub fn upgraded(&self) -> i64 {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// Marks a request as started; the guard ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Registers an upgraded connection that `closer` can end; the guard
    /// deregisters it when dropped. Take it before dropping the request's
    /// [`InFlight`], so the color never looks idle in between. If the color
    /// is being drained, the connection is closed at once.
    pub fn upgrade(self: &Arc<Self>, closer: Arc<dyn Closer>) -> Upgraded {
        self.upgraded.fetch_add(1, Ordering::Relaxed);
        let (id, closing) = {
            let mut t = self.tunnels();
            let id = t.next;
            t.next += 1;
            t.open.insert(id, closer.clone());
            (id, t.closing)
        };
        if closing {
            closer.close();
        }
        Upgraded {
            stats: self.clone(),
            id,
        }
    }

    /// Closes every upgraded connection open to this color now; returns how
    /// many were asked to close. With `drain`, connections that upgrade later
    /// are closed too, until [`ColorStats::cancel_drain`] (the color takes
    /// traffic again).
    pub fn close_upgraded(&self, drain: bool) -> usize {
        let closers: Vec<Arc<dyn Closer>> = {
            let mut t = self.tunnels();
            t.closing |= drain;
            t.open.values().cloned().collect()
        };
        self.close_at_ms.store(0, Ordering::Relaxed);
        for c in &closers {
            c.close();
        }
        closers.len()
    }

    /// The color stopped taking new traffic: starts a drain whose close of
    /// the upgraded connections is due at `close_at_ms`. Returns the drain's
    /// epoch for [`ColorStats::close_if_current`].
    pub fn begin_drain(&self, close_at_ms: u64) -> u64 {
        self.close_at_ms
            .store(close_at_ms.max(1), Ordering::Relaxed);
        self.drain_epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The color takes traffic again: a scheduled close is called off and
    /// new upgraded connections stay open.
    pub fn cancel_drain(&self) {
        self.drain_epoch.fetch_add(1, Ordering::AcqRel);
        self.close_at_ms.store(0, Ordering::Relaxed);
        self.tunnels().closing = false;
    }

    /// Runs the close scheduled by the drain of `epoch`, unless a later
    /// change superseded it. Returns the connections asked to close, or
    /// `None` when it was called off.
    pub fn close_if_current(&self, epoch: u64) -> Option<usize> {
        (self.drain_epoch.load(Ordering::Acquire) == epoch).then(|| self.close_upgraded(true))
    }

    /// When the scheduled close of the upgraded connections is due (unix
    /// milliseconds), if one is.
    pub fn close_due_ms(&self) -> Option<u64> {
        Some(self.close_at_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    fn tunnels(&self) -> std::sync::MutexGuard<'_, Tunnels> {
        self.tunnels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request in flight on a color; decrements the count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<ColorStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upgraded connection open on a color; deregisters it when dropped.
#[derive(Debug)]
pub struct Upgraded {
    stats: Arc<ColorStats>,
    id: u64,
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        self.stats.tunnels().open.remove(&self.id);
        self.stats.upgraded.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One upstream server of a pool.
#[derive(Debug)]
pub struct Member {
    /// As written in the config.
    pub addr: MemberAddr,
    /// The protocol it speaks (the same for every member of a service).
    pub protocol: Protocol,
    /// Resolved socket address (None for unix sockets or unresolvable names).
    pub resolved: Option<SocketAddr>,
    /// Shared health state.
    pub health: Arc<MemberHealth>,
}

/// The members of one color of a service.
#[derive(Debug)]
pub struct Pool {
    /// The color.
    pub color: Color,
    /// Members in config order.
    pub members: Vec<Member>,
    /// Shared counters.
    pub stats: Arc<ColorStats>,
    next: AtomicUsize,
}

impl Pool {
    /// Builds a pool.
    pub fn new(color: Color, members: Vec<Member>, stats: Arc<ColorStats>) -> Self {
        Pool {
            color,
            members,
            stats,
            next: AtomicUsize::new(0),
        }
    }

    /// True if at least one member can take traffic now. With `checked`
    /// (the service has active checks) a member must have passed a check.
    pub fn is_healthy(&self, now_ms: u64, checked: bool) -> bool {
        self.members.iter().any(|m| {
            m.health.is_available(now_ms) && (!checked || m.health.state() == HealthState::Up)
        })
    }

    /// Round robin over available members, skipping those in `tried` (a bit
    /// set of member indexes). If every untried member is unavailable, the
    /// next untried one is returned anyway (fail open, as nginx does).
    pub fn pick(&self, now_ms: u64, tried: u64) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for k in 0..n {
            let i = (start + k) % n;
            if i < 64 && tried & (1 << i) != 0 {
                continue;
            }
            if self.members[i].health.is_available(now_ms) {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }
}

/// A compiled service: its pools and which one is live.
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: String,
    /// The protocol every member speaks.
    pub protocol: Protocol,
    /// Pools, sorted by color name.
    pub pools: Vec<Pool>,
    /// Index of the live pool.
    pub live: usize,
    /// Cumulative weights per pool when canary weights are set.
    pub weights: Option<Vec<u32>>,
    /// Active health checking.
    pub health: Option<HealthSpec>,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Extra attempts on connect failure.
    pub retries: u32,
    /// How long upgraded connections (WebSockets) of a color that stopped
    /// taking new traffic stay open before the edge closes them.
    pub drain_upgraded: std::time::Duration,
    /// New requests are held at the edge (a pause) until a resume.
    pub paused: bool,
    /// Requests get the maintenance page.
    pub maintenance: bool,
    /// How requests are held while paused.
    pub pause: crate::pause::PauseSpec,
    /// Requests held now (shared across table generations).
    pub holds: Arc<crate::pause::Holds>,
    /// Sticky canaries and the preview override ([`crate::canary`]).
    pub canary: crate::canary::Canary,
}

impl Service {
    /// Index of the pool named `color`.
    pub fn pool_index(&self, color: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.color.as_str() == color)
    }

    /// The pool a new request goes to: weighted when weights are set
    /// (`roll` is a uniform random number), else the live pool.
    pub fn choose_pool(&self, roll: u32) -> usize {
        match &self.weights {
            Some(cum) => {
                let total = cum.last().copied().unwrap_or(0);
                if total == 0 {
                    return self.live;
                }
                let r = roll % total;
                cum.iter().position(|c| r < *c).unwrap_or(self.live)
            }
            None => self.live,
        }
    }

    /// Whether pool `i` gets new requests: a weight above zero when weights
    /// are set, else being the live pool. A pool that does not is drained.
    pub fn takes_traffic(&self, i: usize) -> bool {
        match &self.weights {
            Some(cum) if cum.last().is_some_and(|t| *t > 0) => {
                let prev = if i == 0 {
                    Some(0)
                } else {
                    cum.get(i - 1).copied()
                };
                matches!((prev, cum.get(i)), (Some(p), Some(c)) if c > &p)
            }
            _ => i == self.live,
        }
    }

    /// The weights as (color, weight) pairs, if set.
    pub fn weight_pairs(&self) -> Option<Vec<(Color, u32)>> {
        let cum = self.weights.as_ref()?;
        let mut prev = 0;
        Some(
            self.pools
                .iter()
                .zip(cum)
                .map(|(p, c)| {
                    let w = c - prev;
                    prev = *c;
                    (p.color.clone(), w)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(s: &str) -> Member {
        Member {
            addr: MemberAddr::parse(s).unwrap(),
            protocol: Protocol::Http,
            resolved: None,
            health: Arc::default(),
        }
    }

    #[test]
    fn members_are_shown_as_written() {
        for s in [
            "127.0.0.1:8000",
            "app:8000",
            "unix:/run/app.sock",
            "uwsgi://127.0.0.1:3031",
            "uwsgi://app:3031",
            "uwsgi+unix:/run/app.sock",
        ] {
            let (addr, protocol) = MemberAddr::parse_member(s).unwrap();
            let m = Member {
                addr,
                protocol,
                resolved: None,
                health: Arc::default(),
            };
            assert_eq!(m.written(), s);
        }
    }

    #[test]
    fn parses_member_addresses() {
        assert!(matches!(
            MemberAddr::parse("127.0.0.1:80"),
            Ok(MemberAddr::Tcp(_))
        ));
        assert!(matches!(
            MemberAddr::parse("[::1]:80"),
            Ok(MemberAddr::Tcp(_))
        ));
        assert_eq!(
            MemberAddr::parse("API-blue:8000"),
            Ok(MemberAddr::Named("api-blue".into(), 8000))
        );
        assert_eq!(
            MemberAddr::parse("unix:/run/a.sock"),
            Ok(MemberAddr::Unix("/run/a.sock".into()))
        );
        assert!(MemberAddr::parse("unix:relative.sock").is_err());
        assert!(MemberAddr::parse("http://x:80").is_err());
        assert!(MemberAddr::parse("x:0").is_err());
        assert!(MemberAddr::parse("x").is_err());
        assert!(MemberAddr::parse("bad host:80").is_err());
        assert!(MemberAddr::parse("uwsgi://x:80").is_err());
    }

    #[test]
    fn parses_uwsgi_members_with_their_protocol() {
        assert_eq!(
            MemberAddr::parse_member("uwsgi://127.0.0.1:3031"),
            Ok((
                MemberAddr::Tcp("127.0.0.1:3031".parse().unwrap()),
                Protocol::Uwsgi
            ))
        );
        assert_eq!(
            MemberAddr::parse_member("uwsgi://App:3031"),
            Ok((MemberAddr::Named("app".into(), 3031), Protocol::Uwsgi))
        );
        assert_eq!(
            MemberAddr::parse_member("uwsgi://[::1]:3031").map(|(_, p)| p),
            Ok(Protocol::Uwsgi)
        );
        assert_eq!(
            MemberAddr::parse_member("uwsgi+unix:/run/app.sock"),
            Ok((MemberAddr::Unix("/run/app.sock".into()), Protocol::Uwsgi))
        );
        assert_eq!(
            MemberAddr::parse_member("unix:/run/app.sock"),
            Ok((MemberAddr::Unix("/run/app.sock".into()), Protocol::Http))
        );
        assert_eq!(
            MemberAddr::parse_member("127.0.0.1:8000").map(|(_, p)| p),
            Ok(Protocol::Http)
        );
        for bad in [
            "uwsgi+unix:run/app.sock",
            "uwsgi://unix:/run/app.sock",
            "uwsgi://127.0.0.1:3031/",
            "uwsgi://127.0.0.1",
            "uwsgi://x:0",
            "uwsgi://",
            "uwsgi:127.0.0.1:3031",
            "http://127.0.0.1:80",
        ] {
            let e = MemberAddr::parse_member(bad).unwrap_err();
            assert!(e.starts_with(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn round_robin_skips_ejected_and_tried() {
        let pool = Pool::new(
            Color::new("blue"),
            vec![member("a:1"), member("b:1"), member("c:1")],
            Arc::default(),
        );
        let picks: Vec<_> = (0..6).map(|_| pool.pick(0, 0).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        pool.members[1].health.eject(100, 1000);
        for _ in 0..6 {
            assert_ne!(pool.pick(500, 0), Some(1));
        }
        // Ejection ends.
        assert!(pool.members[1].health.is_available(1100));
        // Tried members are skipped; when only unavailable ones remain we fail open.
        assert_eq!(pool.pick(500, 0b101), Some(1));
        assert_eq!(pool.pick(500, 0b111), None);
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let svc = Service {
            name: "api".into(),
            protocol: Protocol::Http,
            pools: vec![
                Pool::new(Color::new("blue"), vec![], Arc::default()),
                Pool::new(Color::new("green"), vec![], Arc::default()),
            ],
            live: 0,
            weights: Some(vec![90, 100]),
            health: None,
            timeouts: crate::validate::default_timeouts(),
            retries: 1,
            drain_upgraded: std::time::Duration::from_secs(30),
            paused: false,
            maintenance: false,
            pause: Default::default(),
            holds: Arc::default(),
            canary: Default::default(),
        };
        let green = (0..1000u32).filter(|r| svc.choose_pool(*r) == 1).count();
        assert_eq!(green, 100);
        assert_eq!(
            svc.weight_pairs().unwrap(),
            vec![(Color::new("blue"), 90), (Color::new("green"), 10)]
        );
        assert!(svc.takes_traffic(0) && svc.takes_traffic(1));
        let svc = Service {
            weights: Some(vec![0, 100]),
            ..svc
        };
        assert!(!svc.takes_traffic(0) && svc.takes_traffic(1));
        let svc = Service {
            weights: None,
            ..svc
        };
        assert!(svc.takes_traffic(0) && !svc.takes_traffic(1));
    }

    #[test]
    fn counts_active_checks() {
        let h = MemberHealth::default();
        assert_eq!((h.checks(), h.last_check_ok()), (0, None));
        h.record_check(Ok(()));
        assert_eq!(h.last_error(), None);
        h.record_check(Err("status 503"));
        assert_eq!((h.checks(), h.last_check_ok()), (2, Some(false)));
        assert_eq!(h.last_error().as_deref(), Some("status 503"));
        h.record_check(Ok(()));
        assert_eq!(h.last_error(), None);
    }

    #[test]
    fn in_flight_guard_counts() {
        let stats = Arc::new(ColorStats::default());
        let a = stats.begin();
        let b = stats.begin();
        assert_eq!(stats.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(stats.in_flight(), 0);
        assert_eq!(stats.requests(), 2);
    }

    /// Counts its `close` calls.
    #[derive(Default)]
    struct Counting(AtomicU64);

    impl Closer for Counting {
        fn close(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn closes(c: &Arc<Counting>) -> u64 {
        c.0.load(Ordering::Relaxed)
    }

    #[test]
    fn upgraded_connections_are_counted_apart_and_closed_by_drains() {
        let stats = Arc::new(ColorStats::default());
        let request = stats.begin();
        let a = Arc::new(Counting::default());
        let tunnel = stats.upgrade(a.clone());
        drop(request);
        assert_eq!((stats.in_flight(), stats.upgraded()), (0, 1));
        assert_eq!(stats.close_due_ms(), None);

        // A drain superseded by a later change does nothing.
        let old = stats.begin_drain(1_000);
        assert_eq!(stats.close_due_ms(), Some(1_000));
        stats.cancel_drain();
        assert_eq!(stats.close_due_ms(), None);
        assert_eq!(stats.close_if_current(old), None);
        assert_eq!(closes(&a), 0);

        let epoch = stats.begin_drain(2_000);
        assert_eq!(stats.close_if_current(epoch), Some(1));
        assert_eq!(closes(&a), 1);
        assert_eq!(stats.close_due_ms(), None);
        // Still counted until the connection has really ended.
        assert_eq!(stats.upgraded(), 1);
        drop(tunnel);
        assert_eq!(stats.upgraded(), 0);

        // Upgrading on a drained color: closed at once.
        let b = Arc::new(Counting::default());
        let late = stats.upgrade(b.clone());
        assert_eq!(closes(&b), 1);
        drop(late);
        // Taking traffic again: new connections stay open.
        stats.cancel_drain();
        let c = Arc::new(Counting::default());
        let kept = stats.upgrade(c.clone());
        assert_eq!(closes(&c), 0);
        // A forced close (not a drain) leaves later connections alone.
        assert_eq!(stats.close_upgraded(false), 1);
        let d = Arc::new(Counting::default());
        let _d = stats.upgrade(d.clone());
        assert_eq!(closes(&d), 0);
        drop(kept);
        assert_eq!(stats.upgraded(), 1);
    }
}
