//! Access log: one line per request (JSON or combined format) written to
//! stdout by a dedicated thread, so the request path never blocks on I/O.

use routes::config::AccessLog as Format;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// What the request said, for its line.
#[derive(Debug)]
pub struct Request<'a> {
    /// Client IP.
    pub client: String,
    /// Host header or :authority.
    pub host: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub uri: &'a str,
    /// Protocol version, e.g. `HTTP/1.1`.
    pub proto: &'static str,
    /// Request id.
    pub request_id: &'a str,
    /// Referer header.
    pub referer: &'a str,
    /// User-Agent header.
    pub user_agent: &'a str,
}

/// One access log line: the request and how it was answered.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The request.
    pub req: Request<'a>,
    /// Response status (0 when none was sent).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// Time spent, seconds.
    pub duration: f64,
    /// Site label.
    pub site: &'a str,
    /// Service, when proxied.
    pub service: &'a str,
    /// Color, when proxied.
    pub color: &'a str,
    /// Upstream member, when proxied.
    pub upstream: &'a str,
}

/// The access log sink.
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Starts the writer thread.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<String>(65_536);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx))?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Formats and queues one line; drops it (and counts) if the writer lags far behind.
    pub fn log(&self, format: Format, e: &Entry<'_>) {
        let line = match format {
            Format::Off => return,
            Format::Json => json_line(e),
            Format::Combined => combined_line(e),
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn writer(rx: Receiver<String>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let _ = out.write_all(line.as_bytes());
                while let Ok(more) = rx.try_recv() {
                    let _ = out.write_all(more.as_bytes());
                }
                let _ = out.flush();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_default()
}

fn json_line(e: &Entry<'_>) -> String {
    let mut line = serde_json::json!({
        "time": now_rfc3339(),
        "client": e.req.client,
        "host": e.req.host,
        "method": e.req.method,
        "uri": e.req.uri,
        "proto": e.req.proto,
        "status": e.status,
        "bytes": e.bytes,
        "duration_ms": (e.duration * 1e6).round() / 1e3,
        "site": e.site,
        "service": e.service,
        "color": e.color,
        "upstream": e.upstream,
        "request_id": e.req.request_id,
        "user_agent": e.req.user_agent,
    })
    .to_string();
    line.push('\n');
    line
}

fn combined_line(e: &Entry<'_>) -> String {
    let now = time::OffsetDateTime::now_utc();
    let t = now
        .format(&time::macros::format_description!(
            "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
        ))
        .unwrap_or_default();
    let q = |s: &str| s.replace('"', "\\\"");
    let dash = |s: &str| if s.is_empty() { "-".to_string() } else { q(s) };
    format!(
        "{} - - [{t}] \"{} {} {}\" {} {} \"{}\" \"{}\"\n",
        e.req.client,
        e.req.method,
        q(e.req.uri),
        e.req.proto,
        e.status,
        e.bytes,
        dash(e.req.referer),
        dash(e.req.user_agent)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            req: Request {
                client: "10.0.0.1".into(),
                host: "example.com",
                method: "GET",
                uri: "/a?b=\"c\"",
                proto: "HTTP/1.1",
                request_id: "abc",
                referer: "",
                user_agent: "curl/8",
            },
            status: 200,
            bytes: 12,
            duration: 0.0015,
            site: "example.com",
            service: "api",
            color: "blue",
            upstream: "127.0.0.1:8000",
        }
    }

    #[test]
    fn json_lines_parse() {
        let line = json_line(&entry());
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["uri"], "/a?b=\"c\"");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["color"], "blue");
    }

    #[test]
    fn combined_lines_escape_quotes() {
        let line = combined_line(&entry());
        assert!(line.starts_with("10.0.0.1 - - ["), "{line}");
        assert!(
            line.contains("\"GET /a?b=\\\"c\\\" HTTP/1.1\" 200 12 \"-\" \"curl/8\""),
            "{line}"
        );
    }
}
