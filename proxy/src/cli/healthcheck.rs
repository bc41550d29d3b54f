//! `duotone healthcheck`: is the proxy of this config serving? For a
//! container's `HEALTHCHECK` (no curl in the image, and no assumption about
//! where the admin API listens).
//!
//! The config file is read leniently (only `[server]`'s listener addresses,
//! unset variables replaced by a stand-in): a config being edited, or a
//! secret missing from the health check's environment, must not make a
//! serving proxy unhealthy. Then, in this order:
//! - the admin API (`server.admin`, 127.0.0.1:9090 when not set) answers
//!   `GET /healthz` with 200;
//! - with `admin = "off"`: the plain HTTP listener answers a request with
//!   any HTTP status;
//! - with neither: the HTTPS listener reacts to a connection (a TLS alert
//!   or a close proves that the process, not only the kernel, handled it).
//!
//! A wildcard listen address (`0.0.0.0`, `[::]`) is reached on loopback.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// The listeners of a config that the health check can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// `server.admin` (None: `"off"`).
    pub admin: Option<SocketAddr>,
    /// `server.http`.
    pub http: Option<SocketAddr>,
    /// `server.https`.
    pub https: Option<SocketAddr>,
}

/// Which listener answered, for the one-line report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// `GET /healthz` on the admin API.
    Admin(SocketAddr),
    /// A request on the plain HTTP listener.
    Http(SocketAddr),
    /// A connection to the HTTPS listener.
    Https(SocketAddr),
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checked::Admin(a) => write!(f, "admin API http://{a}/healthz answered 200"),
            Checked::Http(a) => write!(f, "http listener {a} answered"),
            Checked::Https(a) => write!(f, "https listener {a} answered"),
        }
    }
}

/// Reads the listener addresses of the config file at `path`.
pub fn targets_of_file(path: &Path) -> Result<Targets> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    targets_of(&text, |v| std::env::var(v).ok())
        .with_context(|| format!("config {}", path.display()))
}

/// Reads the listener addresses of config `text`, with `env` for `${VAR}`s.
pub fn targets_of(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Targets> {
    let (text, _) = routes::env::expand_with_stand_ins(text, env, routes::stand_in);
    let doc: toml::Table = toml::from_str(&text).context("not valid TOML")?;
    let server = match doc.get("server") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("[server] is not a table"),
    };
    let addr = |key: &str| -> Result<Option<SocketAddr>> {
        match server.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => parse_addr(s).with_context(|| format!("server.{key}")),
            Some(v) => bail!("server.{key} = {v} is not a string"),
        }
    };
    Ok(Targets {
        // Not set: the admin API's default address (see the config docs).
        admin: match server.get("admin") {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            Some(_) => addr("admin")?,
        },
        http: addr("http")?,
        https: addr("https")?,
    })
}

/// A listen address as the config writes it: `"off"` or empty is none,
/// `":80"` is every IPv4 address.
fn parse_addr(s: &str) -> Result<Option<SocketAddr>> {
    let s = s.trim();
    if s.is_empty() || s == "off" {
        return Ok(None);
    }
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map(Some)
        .map_err(|_| anyhow!("{s:?} is not an address like \"0.0.0.0:80\""))
}

/// Where to connect for a listener bound to `a`: loopback for a wildcard.
fn reachable(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}

fn connect(a: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&a, timeout).with_context(|| format!("connect to {a}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Sends `request` and returns what came back until the peer closed, up to
/// 4 KiB (a timeout before any byte or close is an error).
fn exchange(a: SocketAddr, request: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut s = connect(a, timeout)?;
    s.write_all(request)
        .with_context(|| format!("send to {a}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() >= 4096 || got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            // A reset after the peer wrote something (TLS alert) still
            // shows that the process handled the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                return Err(e).with_context(|| format!("no answer from {a} within {timeout:?}"))
            }
        }
    }
    Ok(got)
}

/// The status code of an HTTP/1.x response head.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Checks the listeners of `t` as described in the module docs.
pub fn probe(t: &Targets, timeout: Duration) -> Result<Checked> {
    if let Some(a) = t.admin {
        let a = reachable(a);
        let req = format!(
            "GET /healthz HTTP/1.1\r\nHost: {a}\r\nUser-Agent: duotone-healthcheck\r\nConnection: close\r\n\r\n"
        );
        let got = exchange(a, req.as_bytes(), timeout)?;
        return match status_of(&got) {
            Some(200) => Ok(Checked::Admin(a)),
            Some(code) => bail!("admin API http://{a}/healthz answered {code}"),
            None => bail!("admin API {a} did not answer HTTP"),
        };
    }
    if let Some(a) = t.http {
        let a = reachable(a);
        let req = b"HEAD / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: duotone-healthcheck\r\nConnection: close\r\n\r\n";
        let got = exchange(a, req, timeout)?;
        return match status_of(&got) {
            Some(_) => Ok(Checked::Http(a)),
            None => bail!("http listener {a} did not answer HTTP"),
        };
    }
    if let Some(a) = t.https {
        let a = reachable(a);
        // Not a TLS record: the proxy answers with an alert or closes.
        exchange(a, b"HEAD / HTTP/1.1\r\n\r\n", timeout)?;
        return Ok(Checked::Https(a));
    }
    bail!("the config has no admin, http or https listener to check")
}

/// `duotone healthcheck -c FILE`: prints what answered; an error if nothing did.
pub fn run(config: &Path, timeout: Duration) -> Result<()> {
    let targets = targets_of_file(config)?;
    let checked = probe(&targets, timeout)?;
    println!("healthy: {checked}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "ADMIN").then(|| "0.0.0.0:9191".to_string())
    }

    #[test]
    fn reads_listeners_with_defaults_and_variables() {
        let t = targets_of("[server]\nhttp = \":80\"\n", env).unwrap();
        assert_eq!(t.admin, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(t.http, Some("0.0.0.0:80".parse().unwrap()));
        assert_eq!(t.https, None);
        let t = targets_of(
            "[server]\nadmin = \"${ADMIN}\"\nadmin_token = \"${UNSET_TOKEN}\"\nhttps = \"[::]:443\"\n",
            env,
        )
        .unwrap();
        assert_eq!(t.admin, Some("0.0.0.0:9191".parse().unwrap()));
        assert_eq!(
            reachable(t.admin.unwrap()),
            "127.0.0.1:9191".parse().unwrap()
        );
        assert_eq!(reachable(t.https.unwrap()), "[::1]:443".parse().unwrap());
        let t = targets_of(
            "[server]\nadmin = \"off\"\nhttp = \"127.0.0.1:8080\"\n",
            env,
        )
        .unwrap();
        assert_eq!(t.admin, None);
        assert!(targets_of("[server]\nadmin = \"nine\"\n", env).is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(status_of(b"\x15\x03\x03\x00\x02"), None);
        assert_eq!(status_of(b""), None);
    }

    #[test]
    fn nothing_listening_is_unhealthy() {
        // A port just released: nothing listens there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        let t = Targets {
            admin: Some(a),
            http: None,
            https: None,
        };
        assert!(probe(&t, Duration::from_millis(500)).is_err());
    }
}
