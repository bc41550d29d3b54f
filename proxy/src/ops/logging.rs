//! Log set-up: `tracing` to stderr, with Pingora's `log` records bridged in,
//! except that failures one client causes are demoted from ERROR.
//!
//! Pingora logs every failed downstream handshake at ERROR ("Downstream
//! handshake error from …"): scanners, clients that reject a certificate or
//! hang up, and each TLS-ALPN-01 validation (answered by Duotone's pre-TLS
//! hook, which then ends the connection). On an edge those are normal
//! traffic, so they go to DEBUG, and a line at INFO at most once a minute
//! says how many client failures there were (answered validations are not
//! failures). Every other Pingora error stays as it was.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_log::log;
use tracing_log::AsLog;

/// Log levels when `RUST_LOG` is unset. rustls logs only errors: its
/// warnings are about single clients (an IP address sent as SNI, a fatal
/// alert) and cost a formatted stderr line per handshake.
pub const DEFAULT_LOG: &str = "info,rustls=error";

/// How often at most the summary of client handshake failures is logged.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Client handshake failures since the process started.
static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Downstream (client) handshake failures seen so far: TLS handshakes that
/// failed or timed out, HTTP/2 prefaces that failed.
pub fn handshake_failures() -> u64 {
    HANDSHAKE_FAILURES.load(Ordering::Relaxed)
}

/// Whether log lines get ANSI colours: only when stderr is a terminal, and
/// never when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
/// A file, a pipe, journald or `docker logs` gets plain text.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber (levels from `RUST_LOG`, else
/// [`DEFAULT_LOG`]; colours per [`colour`]) and the `log` bridge.
pub fn init() {
    use std::io::IsTerminal;
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .finish();
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return;
    }
    let bridge = Demote {
        inner: tracing_log::LogTracer::new(),
        last_summary: Mutex::new(None),
    };
    if log::set_boxed_logger(Box::new(bridge)).is_ok() {
        // After the subscriber: its most verbose level, so that `log`
        // skips the rest cheaply (as tracing-subscriber's own init does).
        log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    }
}

/// What a Pingora record at ERROR is, when it is not a real error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demoted {
    /// A handshake one client made fail (or let time out).
    ClientFailure,
    /// A TLS-ALPN-01 validation that Duotone's pre-TLS hook answered and
    /// ended, which Pingora reports as a failed handshake.
    AcmeValidation,
}

/// Classifies a Pingora record at ERROR; `None` for real errors. Only
/// formats the message for the targets that log client failures.
pub fn classify(target: &str, message: &std::fmt::Arguments<'_>) -> Option<Demoted> {
    let prefixes: &[&str] = match target {
        "pingora_core::services::listening" => {
            &["Downstream handshake error", "Downstream handshake timeout"]
        }
        "pingora_core::apps" => &["H2 handshake error"],
        _ => return None,
    };
    let text = match message.as_str() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(message.to_string()),
    };
    if !prefixes.iter().any(|p| text.starts_with(p)) {
        None
    } else if text.contains(acme::listener::VALIDATION_ANSWERED) {
        Some(Demoted::AcmeValidation)
    } else {
        Some(Demoted::ClientFailure)
    }
}

/// The `log` → `tracing` bridge with client failures demoted to DEBUG.
struct Demote {
    inner: tracing_log::LogTracer,
    /// When the last summary line was written, and the count then.
    last_summary: Mutex<Option<(Instant, u64)>>,
}

impl Demote {
    fn summarize(&self, record: &log::Record<'_>) {
        let total = HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut last) = self.last_summary.try_lock() else {
            return;
        };
        let now = Instant::now();
        let since = match *last {
            Some((at, _)) if now.duration_since(at) < SUMMARY_EVERY => return,
            Some((_, count)) => total - count,
            None => total,
        };
        *last = Some((now, total));
        drop(last);
        tracing::info!(
            target: "duotone::control::tls",
            failures = since,
            "client handshakes failed: {since} since the last report (e.g. {}); \
             such failures are normal at an edge and logged at DEBUG \
             (RUST_LOG=info,pingora_core=debug shows each)",
            record.args()
        );
    }
}

impl log::Log for Demote {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Client failures are counted even when nothing would print them.
        (metadata.level() == log::Level::Error && metadata.target().starts_with("pingora_core"))
            || self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() != log::Level::Error {
            return self.inner.log(record);
        }
        match classify(record.target(), record.args()) {
            None => return self.inner.log(record),
            Some(Demoted::ClientFailure) => self.summarize(record),
            Some(Demoted::AcmeValidation) => {}
        }
        let demoted = log::Record::builder()
            .args(*record.args())
            .level(log::Level::Debug)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        self.inner.log(&demoted);
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::{classify, colour, Demoted};
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }

    #[test]
    fn tells_client_failures_from_other_errors() {
        let listening = "pingora_core::services::listening";
        let addr = "127.0.0.1:5000";
        let client = Some(Demoted::ClientFailure);
        assert_eq!(
            classify(
                listening,
                &format_args!("Downstream handshake error from {addr}: TLSHandshakeFailure")
            ),
            client
        );
        assert_eq!(
            classify(listening, &format_args!("Downstream handshake timeout")),
            client
        );
        assert_eq!(
            classify(
                "pingora_core::apps",
                &format_args!("H2 handshake error {addr}")
            ),
            client
        );
        let answered = acme::listener::VALIDATION_ANSWERED;
        assert_eq!(
            classify(
                listening,
                &format_args!(
                    "Downstream handshake error from {addr}: acme-tls-alpn-01 context: {answered}"
                )
            ),
            Some(Demoted::AcmeValidation)
        );
        // Real errors stay errors.
        assert_eq!(
            classify(listening, &format_args!("Accept() failed {addr}")),
            None
        );
        assert_eq!(
            classify(
                "pingora_core::server",
                &format_args!("Downstream handshake error from {addr}")
            ),
            None
        );
    }
}
