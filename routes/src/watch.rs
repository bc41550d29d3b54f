//! Automatic rollback, the pure part: the outcome counters every color keeps
//! (responses, 5xx, a latency histogram of atomic log buckets), fed once per
//! finished request, and the rule a watch applies to what they counted since
//! it started ([`judge`]).
//!
//! The request path only does [`OutcomeCounters::record`]: one relaxed
//! atomic add (two for a 5xx), no lock, no allocation. A watch reads the counters
//! every few hundred milliseconds ([`OutcomeCounters::read`]) and judges the
//! difference from the reading taken at its start ([`Outcomes::since`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: a bucket is at most 1/8 (12.5 %) wider
/// than its lower bound.
const SUB: usize = 8;

/// Latency buckets: one per microsecond below 8 µs, then 8 per power of two
/// up to 2^32 µs (≈ 71 minutes); longer requests fall in the last one.
pub const BUCKETS: usize = (32 - 2) * SUB;

/// The histogram bucket of a duration of `us` microseconds.
#[inline]
pub fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize;
    if octave >= 32 {
        return BUCKETS - 1;
    }
    let sub = ((us >> (octave - 3)) & (SUB as u64 - 1)) as usize;
    (octave - 2) * SUB + sub
}

/// The (exclusive) upper bound of bucket `i`, in microseconds.
pub fn bucket_upper_us(i: usize) -> u64 {
    if i < SUB {
        return i as u64 + 1;
    }
    let octave = i / SUB + 2;
    let sub = (i % SUB) as u64;
    (SUB as u64 + sub + 1) << (octave - 3)
}

/// What a color's finished requests did, counted since start (a reading of
/// [`OutcomeCounters`]), or between two readings ([`Outcomes::since`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Outcomes {
    /// Final responses (status 200–599) sent to the client. An upgrade
    /// (101, a WebSocket) is not one: its request ends when the connection
    /// does, maybe hours later, which says nothing about the app's latency.
    pub responses: u64,
    /// Of those, 5xx: the app's own, and the edge's 502/504 for the color.
    pub errors: u64,
    /// Responses per latency bucket ([`bucket`]).
    pub latency: [u64; BUCKETS],
}

impl Default for Outcomes {
    fn default() -> Self {
        Outcomes {
            responses: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl fmt::Debug for Outcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcomes")
            .field("responses", &self.responses)
            .field("errors", &self.errors)
            .field(
                "p99_ms",
                &self.quantile(0.99).map(|d| d.as_secs_f64() * 1e3),
            )
            .finish()
    }
}

impl Outcomes {
    /// What was counted after `earlier` (a reading of the same counters).
    pub fn since(&self, earlier: &Outcomes) -> Outcomes {
        let mut latency = [0; BUCKETS];
        for (i, n) in latency.iter_mut().enumerate() {
            *n = self.latency[i].saturating_sub(earlier.latency[i]);
        }
        Outcomes {
            responses: self.responses.saturating_sub(earlier.responses),
            errors: self.errors.saturating_sub(earlier.errors),
            latency,
        }
    }

    /// Errors per response (0 when there was none).
    pub fn error_rate(&self) -> f64 {
        if self.responses == 0 {
            0.0
        } else {
            self.errors as f64 / self.responses as f64
        }
    }

    /// The `q` quantile (0 < q ≤ 1) of the latencies, as the upper bound of
    /// its bucket (so at most 12.5 % above the true value, never below);
    /// `None` without responses.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the q quantile, 1-based: ceil(q * total), at least 1.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_upper_us(i)));
            }
        }
        Some(Duration::from_micros(bucket_upper_us(BUCKETS - 1)))
    }
}

/// A color's outcome counters, shared across table generations (inside
/// [`crate::ColorStats`]).
///
/// Responses are not counted apart: they are the sum of the latency buckets.
pub struct OutcomeCounters {
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for OutcomeCounters {
    fn default() -> Self {
        OutcomeCounters {
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl fmt::Debug for OutcomeCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.read().fmt(f)
    }
}

impl OutcomeCounters {
    /// Counts one finished request that sent `status` after `elapsed`
    /// seconds: one relaxed atomic add, two for a 5xx. Not counted: no
    /// status (0), an upgrade (101; see [`Outcomes::responses`]).
    #[inline]
    pub fn record(&self, status: u16, elapsed: f64) {
        if !(200..600).contains(&status) {
            return;
        }
        // `as` saturates: negative or NaN is 0, huge is u64::MAX.
        let us = (elapsed * 1e6) as u64;
        self.latency[bucket(us)].fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far. (Read while requests finish, an error may be
    /// counted before its response: errors never exceed responses here.)
    pub fn read(&self) -> Outcomes {
        let mut latency = [0; BUCKETS];
        for (n, c) in latency.iter_mut().zip(&self.latency) {
            *n = c.load(Ordering::Relaxed);
        }
        let responses = latency.iter().sum();
        Outcomes {
            responses,
            errors: self.errors.load(Ordering::Relaxed).min(responses),
            latency,
        }
    }
}

/// The thresholds of a watch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// How long the watch lasts; passed once it is over without a breach.
    pub window: Duration,
    /// Largest accepted share of 5xx responses (0.02 = 2 %).
    pub max_error_rate: f64,
    /// Largest accepted p99 latency, if any.
    pub max_latency: Option<Duration>,
    /// Responses needed before a threshold is applied.
    pub min_requests: u64,
}

impl Limits {
    /// Why these limits cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.window.is_zero() {
            return Err("the watch window must be longer than 0s".into());
        }
        if self.window > Duration::from_secs(24 * 3600) {
            return Err("the watch window can be at most 24h".into());
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(format!(
                "max_error_rate must be from 0 to 1 (0.02 is 2%), got {}",
                self.max_error_rate
            ));
        }
        if self.max_latency.is_some_and(|d| d.is_zero()) {
            return Err("max_latency must be longer than 0s".into());
        }
        if self.min_requests == 0 {
            return Err("min_requests must be at least 1".into());
        }
        Ok(())
    }
}

/// What a watch does after a look at the counters.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep watching.
    Watching,
    /// The window is over and no threshold was crossed; the reason says
    /// whether there were enough requests to judge.
    Passed(String),
    /// A threshold was crossed: roll back, for this reason.
    Breached(String),
}

/// Judges `seen` (the outcomes since the watch started) `elapsed` into the
/// watch: a threshold crossed with at least `min_requests` responses is a
/// breach (checked first, so a breach at the last look still counts);
/// otherwise the watch passes once the window is over.
pub fn judge(limits: &Limits, seen: &Outcomes, elapsed: Duration) -> Verdict {
    let n = seen.responses;
    if n >= limits.min_requests {
        let rate = seen.error_rate();
        if rate > limits.max_error_rate {
            return Verdict::Breached(format!(
                "error rate {:.1}% ({} of {n} responses were 5xx) is over {:.1}%",
                rate * 100.0,
                seen.errors,
                limits.max_error_rate * 100.0
            ));
        }
        if let (Some(max), Some(p99)) = (limits.max_latency, seen.quantile(0.99)) {
            if p99 > max {
                return Verdict::Breached(format!(
                    "p99 latency {} ms (of {n} responses) is over {} ms",
                    p99.as_millis(),
                    max.as_millis()
                ));
            }
        }
    }
    if elapsed < limits.window {
        return Verdict::Watching;
    }
    Verdict::Passed(if n >= limits.min_requests {
        format!(
            "{n} responses in {:?}: error rate {:.1}%{} within the limits",
            limits.window,
            seen.error_rate() * 100.0,
            seen.quantile(0.99)
                .map(|p| format!(", p99 {} ms", p.as_millis()))
                .unwrap_or_default()
        )
    } else {
        format!(
            "only {n} responses in {:?} (fewer than min_requests {}): not enough to judge, \
             nothing crossed",
            limits.window, limits.min_requests
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            window: Duration::from_secs(60),
            max_error_rate: 0.02,
            max_latency: Some(Duration::from_millis(800)),
            min_requests: 20,
        }
    }

    /// `ok` fast 200s and `bad` 500s, each taking `ms` milliseconds.
    fn seen(ok: u64, bad: u64, ms: f64) -> Outcomes {
        let c = OutcomeCounters::default();
        for _ in 0..ok {
            c.record(200, ms / 1e3);
        }
        for _ in 0..bad {
            c.record(500, ms / 1e3);
        }
        c.read()
    }

    #[test]
    fn buckets_cover_every_duration_in_order() {
        let mut last = 0;
        for us in (0..100_000u64).chain([1 << 31, (1 << 32) - 1, 1 << 32, u64::MAX]) {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(b < BUCKETS);
            last = b;
            if us < 1 << 32 {
                assert!(us < bucket_upper_us(b), "{us} in {b}");
                assert!(b == 0 || us >= bucket_upper_us(b - 1), "{us} in {b}");
            }
        }
        // Exact below 8 µs; at most 1/8 wide above.
        assert_eq!((bucket(0), bucket(7), bucket(8), bucket(15)), (0, 7, 8, 15));
        for b in SUB..BUCKETS {
            let (lo, hi) = (bucket_upper_us(b - 1), bucket_upper_us(b));
            assert!((hi - lo) * 8 <= lo, "bucket {b}: {lo}..{hi}");
        }
    }

    #[test]
    fn quantile_is_the_upper_bound_of_its_bucket() {
        assert_eq!(Outcomes::default().quantile(0.99), None);
        let c = OutcomeCounters::default();
        for _ in 0..99 {
            c.record(200, 0.010);
        }
        c.record(200, 2.0);
        let o = c.read();
        let p99 = o.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_millis(10) && p99 <= Duration::from_micros(11_250));
        let max = o.quantile(1.0).unwrap();
        assert!(max >= Duration::from_secs(2) && max <= Duration::from_millis(2_250));
    }

    #[test]
    fn counts_responses_and_5xx_but_not_unanswered_requests_or_upgrades() {
        let c = OutcomeCounters::default();
        for s in [200, 204, 301, 404, 499, 500, 502, 504, 599] {
            c.record(s, 0.001);
        }
        c.record(0, 0.001);
        // A WebSocket that stayed open an hour.
        c.record(101, 3600.0);
        c.record(444_u16.saturating_add(1000), 0.001);
        c.record(200, -1.0);
        c.record(200, f64::NAN);
        let o = c.read();
        assert_eq!((o.responses, o.errors), (11, 4));
        assert_eq!(o.latency.iter().sum::<u64>(), 11);
    }

    #[test]
    fn since_is_the_difference() {
        let c = OutcomeCounters::default();
        c.record(500, 0.5);
        let start = c.read();
        c.record(200, 0.001);
        c.record(502, 0.001);
        let d = c.read().since(&start);
        assert_eq!((d.responses, d.errors), (2, 1));
        assert_eq!(d.latency.iter().sum::<u64>(), 2);
        assert!(d.quantile(1.0).unwrap() < Duration::from_millis(2));
    }

    #[test]
    fn too_few_requests_are_not_judged() {
        // All 19 failed, but 20 are needed.
        let v = judge(&limits(), &seen(0, 19, 1.0), Duration::from_secs(5));
        assert_eq!(v, Verdict::Watching);
        let Verdict::Passed(why) = judge(&limits(), &seen(0, 19, 1.0), Duration::from_secs(60))
        else {
            panic!("should pass")
        };
        assert!(why.contains("only 19 responses"), "{why}");
    }

    #[test]
    fn error_rate_over_the_limit_is_a_breach() {
        let Verdict::Breached(why) = judge(&limits(), &seen(97, 3, 1.0), Duration::from_secs(1))
        else {
            panic!("3% > 2%")
        };
        assert_eq!(
            why,
            "error rate 3.0% (3 of 100 responses were 5xx) is over 2.0%"
        );
        // At the limit is fine.
        assert_eq!(
            judge(&limits(), &seen(98, 2, 1.0), Duration::from_secs(1)),
            Verdict::Watching
        );
        // Zero tolerance: one error is enough.
        let strict = Limits {
            max_error_rate: 0.0,
            ..limits()
        };
        assert!(matches!(
            judge(&strict, &seen(99, 1, 1.0), Duration::from_secs(1)),
            Verdict::Breached(_)
        ));
    }

    #[test]
    fn slow_p99_is_a_breach_and_no_latency_limit_ignores_it() {
        let slow = seen(50, 0, 900.0);
        let Verdict::Breached(why) = judge(&limits(), &slow, Duration::from_secs(1)) else {
            panic!("900 ms > 800 ms")
        };
        assert!(
            why.starts_with("p99 latency 9") && why.ends_with("over 800 ms"),
            "{why}"
        );
        let no_latency = Limits {
            max_latency: None,
            ..limits()
        };
        assert_eq!(
            judge(&no_latency, &slow, Duration::from_secs(1)),
            Verdict::Watching
        );
        assert_eq!(
            judge(&limits(), &seen(50, 0, 500.0), Duration::from_secs(1)),
            Verdict::Watching
        );
    }

    #[test]
    fn window_over_without_breach_passes_and_a_last_breach_still_counts() {
        let Verdict::Passed(why) = judge(&limits(), &seen(100, 1, 5.0), Duration::from_secs(61))
        else {
            panic!("1% passes")
        };
        assert!(
            why.starts_with("101 responses in 60s: error rate 1.0%"),
            "{why}"
        );
        assert!(matches!(
            judge(&limits(), &seen(10, 90, 5.0), Duration::from_secs(61)),
            Verdict::Breached(_)
        ));
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(limits().check(), Ok(()));
        let bad = [
            Limits {
                window: Duration::ZERO,
                ..limits()
            },
            Limits {
                window: Duration::from_secs(25 * 3600),
                ..limits()
            },
            Limits {
                max_error_rate: 2.0,
                ..limits()
            },
            Limits {
                max_error_rate: f64::NAN,
                ..limits()
            },
            Limits {
                max_latency: Some(Duration::ZERO),
                ..limits()
            },
            Limits {
                min_requests: 0,
                ..limits()
            },
        ];
        for l in bad {
            assert!(l.check().is_err(), "{l:?}");
        }
    }
}
