//! Differential test of the two HTTP/1.1 transports: the lane and Pingora's
//! path (`DUOTONE_LANE=off`) must treat every request alike. One recording
//! upstream, two proxies with the same config in front of it, and a list of
//! hostile requests sent as raw bytes, one connection each. For every case
//! both must answer with the same statuses and deliver the same bytes to
//! the upstream (compared as the request line, the sorted header lines
//! without X-Request-Id, and the body). An auth bypass on either shows as a
//! 200 beside a 401; a rewrite on one only shows at the upstream.

use e2e::proxy::Proxy;
use e2e::recorder::{find, Recorder};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(up: SocketAddr) -> String {
    let hash = bcrypt::hash("secret", 4).expect("bcrypt");
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[limits]
max_header_bytes = "8k"
header_timeout = "2s"

[[sites]]
hosts = ["app.test"]
  [[sites.routes]]
  path = "/admin/"
  service = "app"
  basic_auth = ["staff:{hash}"]
  [[sites.routes]]
  path = "/"
  service = "app"

[[sites]]
hosts = ["other.test"]
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{up}"]
read_timeout = "3s"
"#
    )
}

/// The hostile requests: a name and the exact bytes sent.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    fn get(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").into_bytes()
    }
    fn with(fields: &str) -> Vec<u8> {
        format!("GET /x HTTP/1.1\r\nHost: app.test\r\n{fields}\r\n").into_bytes()
    }
    let long = format!("X-Long: {}\r\n", "a".repeat(9000));
    let smuggled = "GET /admin/ HTTP/1.1\r\nHost: app.test\r\n\r\n";
    vec![
        ("plain GET /", get("/")),
        ("GET /admin/ without auth", get("/admin/")),
        ("GET /admin without slash", get("/admin")),
        ("GET /ADMIN/ upper case", get("/ADMIN/")),
        ("%61dmin", get("/%61dmin/")),
        ("%41DMIN (upper)", get("/%41DMIN/")),
        ("%2561dmin (double)", get("/%2561dmin/")),
        ("%2e%2e/admin", get("/%2e%2e/admin/")),
        ("public/../admin", get("/public/../admin/")),
        ("./admin", get("/./admin/")),
        ("a%2fb", get("/a%2fb")),
        ("admin%2f", get("/admin%2fx")),
        ("%zz", get("/%zz")),
        ("%00", get("/%00")),
        ("%0d%0a in path", get("/a%0d%0aX-Injected:%201")),
        ("//admin/", get("//admin/")),
        ("/x//y", get("/x//y")),
        ("dot-dot in query", get("/q?a=../admin/&b=%2e%2e")),
        ("%7e and %41 escapes", get("/%7euser/%41")),
        (
            "absolute-form",
            b"GET http://app.test/x HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form /admin/, Host other",
            b"GET http://app.test/admin/ HTTP/1.1\r\nHost: other.test\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form other, Host app",
            b"GET http://other.test/admin/ HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form upper scheme",
            b"GET HTTP://app.test/admin/ HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        (
            "authority-form CONNECT",
            b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        (
            "asterisk OPTIONS",
            b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        ("raw control byte in target", get("/a\x01b")),
        ("raw tab in target", get("/a\tb")),
        ("space in target", get("/a b")),
        ("raw 0x7f in target", get("/a\x7fb")),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n".to_vec()),
        (
            "duplicate Host, same",
            b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        (
            "duplicate Host, other",
            b"GET /admin/ HTTP/1.1\r\nHost: other.test\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        ("Host upper case", b"GET /admin/ HTTP/1.1\r\nHost: APP.TEST\r\n\r\n".to_vec()),
        ("Host with port", b"GET /admin/ HTTP/1.1\r\nHost: app.test:80\r\n\r\n".to_vec()),
        ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@app.test\r\n\r\n".to_vec()),
        ("X_Forwarded_For underscore", with("X_Forwarded_For: 1.2.3.4\r\n")),
        ("X-Real_IP mixed", with("X-Real_IP: 1.2.3.4\r\n")),
        ("X-Forwarded-For forged", with("X-Forwarded-For: 1.2.3.4\r\n")),
        ("Forwarded forged", with("Forwarded: for=1.2.3.4\r\n")),
        ("Upgrade without Connection", with("Upgrade: websocket\r\n")),
        ("Connection naming a field", with("Connection: close, X-Secret\r\nX-Secret: s\r\n")),
        ("bad X-Request-Id", with("X-Request-Id: a b\"c\r\n")),
        ("client X-Request-Id", with("X-Request-Id: abc-123\r\n")),
        ("Host trailing dot", b"GET /admin/ HTTP/1.1\r\nHost: app.test.\r\n\r\n".to_vec()),
        (
            "pipelined, then /admin/",
            b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\nGET /admin/ HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        (
            "pipelined, then chunked",
            b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\nPOST /y HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "pipelined, then %61dmin",
            b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\nGET /%61dmin/ HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        (
            "GET with a body",
            b"GET /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        ("HEAD", b"HEAD /x HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec()),
        (
            "CL + TE smuggling",
            format!(
                "POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )
            .into_bytes(),
        ),
        (
            "double CL, different",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
        ),
        (
            "double CL, same",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        ),
        (
            "CL list 3, 3",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3, 3\r\n\r\nabc".to_vec(),
        ),
        (
            "CL +3",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: +3\r\n\r\nabc".to_vec(),
        ),
        (
            "TE chunked, identity",
            format!("POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}").into_bytes(),
        ),
        (
            "TE xchunked",
            format!("POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}").into_bytes(),
        ),
        (
            "TE with space before colon",
            format!("POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}").into_bytes(),
        ),
        (
            "TE obs-folded",
            format!("POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}").into_bytes(),
        ),
        (
            "TE tab, upper case",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\tCHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunked body",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
        ),
        (
            "chunk size overflow",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "small CL body",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "Expect: 100-continue",
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "bare LF line endings",
            b"GET /admin/ HTTP/1.1\nHost: app.test\n\n".to_vec(),
        ),
        (
            "bare LF inside a field",
            b"GET /x HTTP/1.1\r\nHost: app.test\nX-A: 1\r\n\r\n".to_vec(),
        ),
        (
            "leading blank lines",
            b"\r\n\r\nGET /x HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
        ),
        ("obs-fold", with("X-Folded: a\r\n b\r\n")),
        (
            "obs-fold on Host",
            b"GET /admin/ HTTP/1.1\r\nHost: other.test\r\n app.test\r\n\r\n".to_vec(),
        ),
        ("very long header", with(&long)),
        ("HTTP/1.0 without Host", b"GET /x HTTP/1.0\r\n\r\n".to_vec()),
        ("HTTP/1.0 with Host", b"GET /admin/ HTTP/1.0\r\nHost: app.test\r\n\r\n".to_vec()),
        ("HTTP/1.2", b"GET /x HTTP/1.2\r\nHost: app.test\r\n\r\n".to_vec()),
        ("lower-case method", b"get /x HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec()),
        ("NUL in a field value", with("X-A: a\0b\r\n")),
    ]
}

/// What one proxy did with one case.
#[derive(Debug, PartialEq)]
struct Seen {
    /// Statuses of the responses read (interim ones included).
    statuses: Vec<u16>,
    /// Requests that reached the upstream, normalised.
    upstream: Vec<String>,
}

/// Sends `bytes` on a new connection and reads what comes back: until the
/// connection closes; or, once as many final responses are complete as
/// the case has request lines, until nothing more arrives for a moment (a
/// smuggled extra response would); with fewer, until a longer pause.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        return out;
    };
    if s.write_all(bytes).await.is_err() {
        return out;
    }
    let expected = request_lines(bytes);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut chunk = [0u8; 16384];
    loop {
        let (_, finals) = responses(&out, bytes.starts_with(b"HEAD "));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = if finals >= expected {
            Duration::from_millis(200)
        } else if finals > 0 {
            Duration::from_secs(2)
        } else {
            left
        }
        .min(left);
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => return out,
        }
    }
}

/// How many lines of `bytes` look like an HTTP/1 request line.
fn request_lines(bytes: &[u8]) -> usize {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            l.ends_with(b" HTTP/1.1") || l.ends_with(b" HTTP/1.0")
        })
        .count()
        .max(1)
}

/// The statuses of the responses in `buf`, and how many final responses
/// are complete (`head_request`: responses to HEAD, no bodies).
fn responses(buf: &[u8], head_request: bool) -> (Vec<u16>, usize) {
    let mut statuses = Vec::new();
    let mut at = 0;
    let mut finals = 0;
    while at < buf.len() {
        let Some(end) = find(&buf[at..], b"\r\n\r\n").map(|e| at + e + 4) else {
            return (statuses, finals);
        };
        let head = String::from_utf8_lossy(&buf[at..end]).into_owned();
        let Some(status) = head.get(9..12).and_then(|s| s.parse::<u16>().ok()) else {
            return (statuses, finals);
        };
        statuses.push(status);
        at = end;
        if status < 200 {
            continue;
        }
        if head_request {
            finals += 1;
            continue;
        }
        let field = |name: &str| {
            head.split("\r\n").skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        if field("transfer-encoding").is_some() {
            // Skip chunks up to the terminating empty line.
            loop {
                let Some(i) = find(&buf[at..], b"\r\n") else {
                    return (statuses, finals);
                };
                let size = String::from_utf8_lossy(&buf[at..at + i]).into_owned();
                let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or(""), 16)
                else {
                    return (statuses, finals);
                };
                at += i + 2;
                if size == 0 {
                    let Some(t) = find(&buf[at - 2..], b"\r\n\r\n") else {
                        return (statuses, finals);
                    };
                    at = at - 2 + t + 4;
                    break;
                }
                at += size + 2;
                if at > buf.len() {
                    return (statuses, finals);
                }
            }
        } else if let Some(n) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if at + n > buf.len() {
                return (statuses, finals);
            }
            at += n;
        } else {
            // Delimited by close: complete only at the end.
            return (statuses, finals);
        }
        finals += 1;
    }
    (statuses, finals)
}

/// A request as the upstream received it: the request line, the header
/// lines sorted, and the body, printable. A fresh X-Request-Id (24 hex
/// digits, each proxy its own) reads `<fresh>`; a client's is kept. An
/// X-Forwarded-Port naming the proxy's `listener` port (each proxy its
/// own) reads `<listener>`.
fn normalise(request: &[u8], listener: u16) -> String {
    let (head, body) = match find(request, b"\r\n\r\n") {
        Some(e) => (&request[..e], &request[e + 4..]),
        None => (request, &b""[..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("").to_string();
    let mut fields: Vec<String> = lines
        .map(|l| match l.split_once(':') {
            Some((k, v))
                if k.eq_ignore_ascii_case("x-request-id")
                    && v.trim().len() == 24
                    && v.trim().bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                format!("{k}: <fresh>")
            }
            Some((k, v))
                if k.eq_ignore_ascii_case("x-forwarded-port")
                    && v.trim() == listener.to_string() =>
            {
                format!("{k}: <listener>")
            }
            _ => l.to_string(),
        })
        .collect();
    fields.sort_unstable();
    let mut out = format!("{line:?}");
    for f in fields {
        out.push_str(&format!(" | {f:?}"));
    }
    if !body.is_empty() {
        out.push_str(&format!(" | body {:?}", String::from_utf8_lossy(body)));
    }
    out
}

async fn run(proxy: &Proxy, up: &Recorder, bytes: &[u8]) -> Seen {
    up.take().await;
    let got = exchange(proxy.ports.http, bytes).await;
    let listener = proxy.ports.http.port();
    let upstream = up
        .take()
        .await
        .iter()
        .map(|r| normalise(r, listener))
        .collect();
    Seen {
        statuses: responses(&got, bytes.starts_with(b"HEAD ")).0,
        upstream,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lane_and_pingora_path_agree_on_hostile_requests() {
    let up = Recorder::start().await;
    let template = config(up.addr);
    let lane = Proxy::start(&template).await;
    let pingora = Proxy::start_with_env(&template, &[("DUOTONE_LANE", "off")]).await;

    let mut table = Vec::new();
    let cases = cases();
    for (name, bytes) in &cases {
        let on = run(&lane, &up, bytes).await;
        let off = run(&pingora, &up, bytes).await;
        println!(
            "{name:<36} lane {:<14} pingora {:<14} upstream {}",
            format!("{:?}", on.statuses),
            format!("{:?}", off.statuses),
            if on.upstream == off.upstream {
                format!("same ({})", on.upstream.len())
            } else {
                "DIFFERENT".to_string()
            }
        );
        if std::env::var_os("DIFFERENTIAL_VERBOSE").is_some() {
            for r in on.upstream.iter().chain(&off.upstream) {
                println!("    {r}");
            }
        }
        if on != off {
            table.push((name, on, off));
        }
    }
    if !table.is_empty() {
        let mut report = format!(
            "{} of {} cases disagree between the lane and Pingora's path:\n",
            table.len(),
            cases.len()
        );
        report.push_str(
            "| case | lane statuses | Pingora statuses | upstream |\n|---|---|---|---|\n",
        );
        for (name, on, off) in &table {
            let same = on.upstream == off.upstream;
            report.push_str(&format!(
                "| {name} | {:?} | {:?} | {} |\n",
                on.statuses,
                off.statuses,
                if same { "same" } else { "differs" }
            ));
        }
        for (name, on, off) in table
            .iter()
            .filter(|(_, on, off)| on.upstream != off.upstream)
        {
            report.push_str(&format!("\n{name}:\n  lane sent upstream:\n"));
            for r in &on.upstream {
                report.push_str(&format!("    {r}\n"));
            }
            report.push_str("  Pingora's path sent upstream:\n");
            for r in &off.upstream {
                report.push_str(&format!("    {r}\n"));
            }
        }
        panic!("{report}");
    }
}
