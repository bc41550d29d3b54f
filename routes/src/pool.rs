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

impl MemberAddr {
    /// Parses `127.0.0.1:8000`, `[::1]:8000`, `app:8000` or `unix:/run/app.sock`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: unix socket path must be absolute"));
            }
            return Ok(MemberAddr::Unix(PathBuf::from(path)));
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?}: write members as \"host:port\" or \"unix:/path\", without a scheme"
            ));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(MemberAddr::Tcp(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected \"host:port\" or \"unix:/path\""))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: invalid port"))?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(format!("{s:?}: invalid host name"));
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
#[derive(Debug, Default)]
pub struct ColorStats {
    in_flight: AtomicI64,
    requests: AtomicU64,
}

impl ColorStats {
    /// Requests currently being proxied to this color.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests ever sent to this color.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Marks a request as started; the guard ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
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

/// One upstream server of a pool.
#[derive(Debug)]
pub struct Member {
    /// As written in the config.
    pub addr: MemberAddr,
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
            resolved: None,
            health: Arc::default(),
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
            pools: vec![
                Pool::new(Color::new("blue"), vec![], Arc::default()),
                Pool::new(Color::new("green"), vec![], Arc::default()),
            ],
            live: 0,
            weights: Some(vec![90, 100]),
            health: None,
            timeouts: crate::validate::default_timeouts(),
            retries: 1,
        };
        let green = (0..1000u32).filter(|r| svc.choose_pool(*r) == 1).count();
        assert_eq!(green, 100);
        assert_eq!(
            svc.weight_pairs().unwrap(),
            vec![(Color::new("blue"), 90), (Color::new("green"), 10)]
        );
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
}
