//! Active health checks: an HTTP GET per member on each service's interval
//! (sent as a uwsgi packet to uwsgi members, which answer in HTTP), with
//! rise/fall thresholds. Verdicts go into the shared `MemberHealth`.

use crate::control::Control;
use routes::config::HealthSpec;
use routes::{HealthState, MemberAddr, MemberHealth, Protocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

/// One member to probe.
struct Target {
    key: String,
    addr: MemberAddr,
    protocol: Protocol,
    resolved: Option<SocketAddr>,
    health: Arc<MemberHealth>,
    spec: HealthSpec,
}

/// Runs health checks forever.
pub async fn run(control: Arc<Control>) {
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut streaks: HashMap<String, i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let snap = control.load();
        let mut targets = Vec::new();
        for svc in &snap.table.services {
            let Some(spec) = &svc.health else { continue };
            let next = due.entry(svc.name.clone()).or_insert(now);
            if *next > now {
                continue;
            }
            *next = now + spec.interval;
            for pool in &svc.pools {
                for m in &pool.members {
                    targets.push(Target {
                        key: format!("{}/{}/{}", svc.name, pool.color, m.written()),
                        addr: m.addr.clone(),
                        protocol: m.protocol,
                        resolved: m.resolved,
                        health: m.health.clone(),
                        spec: spec.clone(),
                    });
                }
            }
        }
        drop(snap);
        if targets.is_empty() {
            continue;
        }
        let mut set = tokio::task::JoinSet::new();
        for t in targets {
            set.spawn(async move {
                let ok = probe(&t).await;
                (t, ok)
            });
        }
        // Keep going past a failed probe task: stopping here would drop
        // (abort) the other probes of this round unrecorded.
        while let Some(done) = set.join_next().await {
            match done {
                Ok((t, ok)) => record(&t, &ok, &mut streaks),
                Err(e) => tracing::error!("health probe task failed: {e}"),
            }
        }
    }
}

fn record(t: &Target, ok: &Result<(), String>, streaks: &mut HashMap<String, i64>) {
    let streak = streaks.entry(t.key.clone()).or_insert(0);
    *streak = match (ok.is_ok(), *streak) {
        (true, s) if s > 0 => s + 1,
        (true, _) => 1,
        (false, s) if s < 0 => s - 1,
        (false, _) => -1,
    };
    let state = t.health.state();
    let verdict = match state {
        HealthState::Unknown => Some(ok.is_ok()),
        HealthState::Up if *streak <= -i64::from(t.spec.fall) => Some(false),
        HealthState::Down if *streak >= i64::from(t.spec.rise) => Some(true),
        _ => None,
    };
    if let Some(up) = verdict {
        let new = if up {
            HealthState::Up
        } else {
            HealthState::Down
        };
        if new != state {
            match ok {
                Ok(()) => tracing::info!(member = %t.key, "health: up"),
                Err(e) => tracing::warn!(member = %t.key, "health: down ({e})"),
            }
        }
        t.health.set_up(up);
    }
    t.health
        .record_check(ok.as_ref().map(|_| ()).map_err(String::as_str));
}

/// Says in a few words why a connection to `addr` failed, as `duotone
/// status` shows it: "connection refused", "no such socket /run/x.sock", …
fn connect_error(addr: &MemberAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match (addr, e.kind()) {
        (_, ConnectionRefused) => "connection refused".to_string(),
        (MemberAddr::Unix(p), NotFound) => format!("no such socket {}", p.display()),
        (MemberAddr::Unix(p), PermissionDenied) => {
            format!("permission denied on socket {}", p.display())
        }
        (_, ConnectionReset) => "connection reset".to_string(),
        (_, TimedOut) => "connect timed out".to_string(),
        _ => format!("cannot connect: {e}"),
    }
}

/// The bytes of one check: the GET as an HTTP/1.1 head, or for a uwsgi
/// member that head as a uwsgi packet ([`crate::net::uwsgi::encode`]).
fn request(t: &Target) -> Result<Vec<u8>, String> {
    let spec = &t.spec;
    let host = spec.host.clone().unwrap_or_else(|| match &t.addr {
        MemberAddr::Named(h, p) => format!("{h}:{p}"),
        MemberAddr::Tcp(a) => a.to_string(),
        MemberAddr::Unix(_) => "localhost".to_string(),
    });
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: duotone-health\r\nConnection: close\r\n\r\n",
        spec.path
    );
    match t.protocol {
        Protocol::Http => Ok(head.into_bytes()),
        Protocol::Uwsgi => {
            let facts = crate::net::uwsgi::Facts {
                tls: false,
                remote_addr: None,
                remote_port: 0,
                server_port: 0,
            };
            crate::net::uwsgi::encode(head.as_bytes(), &facts)
                .map_err(|e| format!("cannot make the uwsgi check: {e}"))
        }
    }
}

async fn probe(t: &Target) -> Result<(), String> {
    let spec = &t.spec;
    let request = request(t)?;
    let work = async {
        match (&t.addr, t.resolved) {
            (MemberAddr::Unix(p), _) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| connect_error(&t.addr, &e))?;
                exchange(s, &request).await
            }
            (_, Some(a)) => {
                let s = tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(|e| connect_error(&t.addr, &e))?;
                exchange(s, &request).await
            }
            (a, None) => Err(format!("cannot resolve {a}")),
        }
    };
    timeout(spec.timeout, work)
        .await
        .map_err(|_| format!("timed out after {:?}", spec.timeout))?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> Result<(), String> {
    s.write_all(request)
        .await
        .map_err(|e| format!("sending the check failed: {e}"))?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s
            .read(&mut buf[n..])
            .await
            .map_err(|e| format!("reading the reply failed: {e}"))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            if n == 0 {
                "closed without a reply".to_string()
            } else {
                "no HTTP status in reply".to_string()
            }
        })?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(rise: u32, fall: u32) -> Target {
        Target {
            key: "blue/127.0.0.1:1".into(),
            addr: MemberAddr::Named("127.0.0.1".into(), 1),
            protocol: Protocol::Http,
            resolved: None,
            health: Arc::new(MemberHealth::default()),
            spec: HealthSpec {
                path: "/healthz".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                rise,
                fall,
                host: None,
            },
        }
    }

    fn run(t: &Target, streaks: &mut HashMap<String, i64>, results: &[bool]) -> Vec<HealthState> {
        results
            .iter()
            .map(|ok| {
                let r = if *ok { Ok(()) } else { Err("boom".to_string()) };
                record(t, &r, streaks);
                t.health.state()
            })
            .collect()
    }

    #[test]
    fn fall_and_rise_thresholds_are_honoured() {
        use HealthState::{Down, Up};
        let t = target(2, 3);
        let mut s = HashMap::new();
        // The first verdict is immediate; then it takes `fall` failures in a
        // row to go down and `rise` successes in a row to come back.
        assert_eq!(
            run(&t, &mut s, &[true, false, false, true, false, false, false]),
            [Up, Up, Up, Up, Up, Up, Down]
        );
        assert_eq!(
            run(&t, &mut s, &[true, false, true, true]),
            [Down, Down, Down, Up]
        );
    }

    /// A one-connection uwsgi member: reads a packet, sends the variables
    /// it got back through `seen`, answers `reply`.
    async fn uwsgi_member(
        reply: &'static str,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Receiver<Vec<(String, String)>>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            let size = u16::from_le_bytes([buf[1], buf[2]]) as usize;
            buf.resize(4 + size, 0);
            s.read_exact(&mut buf[4..]).await.unwrap();
            let vars = crate::net::uwsgi::decode(&buf)
                .unwrap()
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            let _ = tx.send(vars);
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn uwsgi_members_are_checked_with_a_uwsgi_packet() {
        let (addr, seen) = uwsgi_member("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let mut t = target(1, 1);
        t.protocol = Protocol::Uwsgi;
        t.addr = MemberAddr::Tcp(addr);
        t.resolved = Some(addr);
        t.spec.host = Some("app.example".into());
        assert_eq!(probe(&t).await, Ok(()));
        let vars = seen.await.unwrap();
        let var = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(var("REQUEST_METHOD"), Some("GET"));
        assert_eq!(var("PATH_INFO"), Some("/healthz"));
        assert_eq!(var("HTTP_HOST"), Some("app.example"));
        assert_eq!(var("SERVER_NAME"), Some("app.example"));

        let (addr, _) = uwsgi_member("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        t.addr = MemberAddr::Tcp(addr);
        t.resolved = Some(addr);
        assert_eq!(probe(&t).await, Err("status 503".to_string()));
    }

    #[test]
    fn first_failure_marks_a_new_member_down() {
        let t = target(2, 3);
        let mut s = HashMap::new();
        assert_eq!(run(&t, &mut s, &[false]), [HealthState::Down]);
    }
}
