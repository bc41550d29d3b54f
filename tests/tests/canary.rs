//! Sticky canaries and the preview override, end to end: the real binary,
//! two real upstreams (blue and green, each answering its own name), on
//! every transport a request can take: the lane's HTTP/1.1 and HTTP/2,
//! Pingora's path (`DUOTONE_LANE=off`), a large POST the lane hands over
//! to Pingora's path, and WebSocket upgrades (Pingora's own proxy).

use e2e::admin::set_weights;
use e2e::client::{admin, Http, Resp};
use e2e::proxy::{server_config, Proxy};
use e2e::transport::Transport;
use e2e::upstream::Upstream;
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "canary-test-token-0123";
const SECRET: &str = "canary-test-preview-secret-0123";
const WEIGHTS: &str = "weights = { blue = 50, green = 50 }";
const PREVIEW: &str = r#"preview = { secret = "${DUOTONE_PREVIEW_SECRET}" }"#;
/// Large enough that the lane hands the request to Pingora's path.
const BIG: usize = 100 * 1024;

/// Services `api` (with `extra` lines) and `web`, both blue/green over the
/// same two upstreams, blue live; `/web/` routes to `web`.
fn config(blue: &Upstream, green: &Upstream, extra: &str) -> String {
    let (b, g) = (blue.member(), green.member());
    format!(
        r#"{server}
[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "api"
  [[sites.routes]]
  path = "/web/"
  service = "web"

[services.api]
live = "blue"
colors.blue = ["{b}"]
colors.green = ["{g}"]
{extra}

[services.web]
live = "blue"
colors.blue = ["{b}"]
colors.green = ["{g}"]
{PREVIEW}
"#,
        server = server_config(TOKEN, "")
    )
}

async fn start(t: Transport, extra: &str) -> (Proxy, Upstream, Upstream) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut env = t.env().to_vec();
    env.push(("DUOTONE_PREVIEW_SECRET", SECRET));
    let p = Proxy::start_with_env(&config(&blue, &green, extra), &env).await;
    (p, blue, green)
}

/// How a test's requests are sent.
#[derive(Clone, Copy, Debug)]
struct Client {
    transport: Transport,
    h2: bool,
    /// POST with a [`BIG`] body (else GET).
    post: bool,
}

impl Client {
    fn http(&self) -> Http {
        if self.h2 {
            Http::h2()
        } else {
            Http::new()
        }
    }
}

/// Every way a request reaches the exchange.
const CLIENTS: [Client; 5] = [
    // The lane: HTTP/1.1 and HTTP/2.
    Client {
        transport: Transport::Lane,
        h2: false,
        post: false,
    },
    Client {
        transport: Transport::Lane,
        h2: true,
        post: false,
    },
    // Handed over by the lane: a large HTTP/2 POST (edge/exchange.rs).
    Client {
        transport: Transport::Lane,
        h2: true,
        post: true,
    },
    // Pingora's path alone.
    Client {
        transport: Transport::Pingora,
        h2: false,
        post: true,
    },
    Client {
        transport: Transport::Pingora,
        h2: true,
        post: false,
    },
];

/// One test per entry of [`CLIENTS`], in order: `name` runs `f(CLIENTS[i])`.
macro_rules! on_every_client {
    ($f:ident: $($name:ident),+ $(,)?) => {
        on_every_client!(@each $f, 0usize, $($name),+);
    };
    (@each $f:ident, $i:expr, $name:ident $(, $rest:ident)*) => {
        #[tokio::test]
        async fn $name() {
            $f(CLIENTS[$i]).await
        }
        on_every_client!(@each $f, $i + 1, $($rest),*);
    };
    (@each $f:ident, $i:expr,) => {
        const _: () = assert!($i == CLIENTS.len(), "one test per client");
    };
}

async fn send(http: &Http, p: &Proxy, c: Client, path: &str, headers: &[(&str, &str)]) -> Resp {
    let (method, body) = if c.post {
        ("POST", vec![b'x'; BIG])
    } else {
        ("GET", Vec::new())
    };
    let r = http
        .send(method, &p.url(path), headers, body)
        .await
        .unwrap_or_else(|e| panic!("{c:?} {method} {path}: {e:#}"));
    assert_eq!(r.status, 200, "{c:?}: {}", r.text());
    r
}

/// The `Set-Cookie` fields of a response.
fn set_cookies(r: &Resp) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_string())
        .collect()
}

fn pin(color: &str) -> String {
    format!("duotone_api={color}; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax")
}

/// The preview token as documented: hex HMAC-SHA256(secret,
/// "duotone-preview:" + service + ":" + color).
fn token(secret: &str, service: &str, color: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(
        &key,
        format!("duotone-preview:{service}:{color}").as_bytes(),
    );
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn call(p: &Proxy, method: &str, path: &str, body: Option<&str>) -> Resp {
    e2e::admin::call(p, TOKEN, method, path, body).await
}

/// With weights 50/50: a client without the cookie gets both colors, each
/// response pinning it to the color that answered; a client with the
/// cookie keeps its color across 200 requests and is sent no cookie.
async fn sticky(c: Client) {
    let (p, blue, green) = start(c.transport, WEIGHTS).await;
    let http = c.http();
    let mut seen = BTreeSet::new();
    let mut first = None;
    for _ in 0..40 {
        let r = send(&http, &p, c, "/", &[]).await;
        let color = r.text();
        assert_eq!(set_cookies(&r), vec![pin(&color)], "{c:?}");
        first.get_or_insert(color.clone());
        seen.insert(color);
    }
    assert_eq!(
        seen.len(),
        2,
        "{c:?}: a client without the cookie got {seen:?}"
    );
    let first = first.unwrap_or_default();
    let other = if first == "blue" { "green" } else { "blue" };
    for (color, n) in [(first.as_str(), 200), (other, 50)] {
        let cookie = format!("theme=dark; duotone_api={color}; x=\"y\"");
        for i in 0..n {
            let r = send(&http, &p, c, "/", &[("cookie", &cookie)]).await;
            assert_eq!(
                r.text(),
                color,
                "{c:?}: request {i} with the {color} cookie"
            );
            assert!(set_cookies(&r).is_empty(), "{c:?}: {:?}", set_cookies(&r));
        }
    }
    // The cookie reached the app as sent.
    let r = send(&http, &p, c, "/headers", &[("cookie", "duotone_api=green")]).await;
    assert_eq!(r.json()["headers"]["cookie"], "duotone_api=green", "{c:?}");
    // A cookie for another service, or a color that does not exist: chosen
    // by weight and pinned.
    for cookie in ["duotone_web=green", "duotone_api=red"] {
        let r = send(&http, &p, c, "/", &[("cookie", cookie)]).await;
        assert_eq!(set_cookies(&r), vec![pin(&r.text())], "{c:?}: {cookie}");
    }
    assert!(blue.hits() > 0 && green.hits() > 0);
}

on_every_client!(
    sticky:
    sticky_lane_h1,
    sticky_lane_h2,
    sticky_lane_h2_post_handed_to_pingora,
    sticky_pingora_h1_post,
    sticky_pingora_h2,
);

e2e::on_both_transports!(
    #[tokio::test]
    no_cookie_unless_weights_split_traffic
);

/// No weights, or weights that send everything to one color: no cookie is
/// set and a sticky cookie is ignored. Weights set through the admin API
/// turn it on and off at once.
async fn no_cookie_unless_weights_split_traffic(t: Transport) {
    let (p, _blue, _green) = start(t, "").await;
    let http = Http::new();
    let c = Client {
        transport: t,
        h2: false,
        post: false,
    };
    let only_blue = |what: &'static str| {
        let (http, p) = (&http, &p);
        async move {
            for cookie in ["", "duotone_api=green"] {
                for _ in 0..20 {
                    let r = send(http, p, c, "/", &[("cookie", cookie)]).await;
                    assert_eq!(r.text(), "blue", "{what}, cookie {cookie:?}");
                    assert!(set_cookies(&r).is_empty(), "{what}: {:?}", set_cookies(&r));
                }
            }
        }
    };
    only_blue("no weights").await;
    let v = call(&p, "GET", "/v1/services/api", None).await.json();
    assert_eq!(v["sticky"]["cookie"], "duotone_api", "{v:#}");
    assert_eq!(v["sticky"]["active"], false, "{v:#}");
    assert_eq!(v["sticky"]["max_age_s"], 86400, "{v:#}");
    assert!(v.get("preview").is_none(), "{v:#}");

    set_weights(&p, TOKEN, "api", r#"{"blue":100,"green":0}"#).await;
    only_blue("weights 100/0").await;

    let v = set_weights(&p, TOKEN, "api", r#"{"blue":50,"green":50}"#).await;
    assert_eq!(v["sticky"]["active"], true, "{v:#}");
    let r = send(&http, &p, c, "/", &[]).await;
    assert_eq!(set_cookies(&r), vec![pin(&r.text())]);
    for _ in 0..20 {
        let r = send(&http, &p, c, "/", &[("cookie", "duotone_api=green")]).await;
        assert_eq!(r.text(), "green");
    }
    // Weights that take green out: its cookie no longer pins.
    set_weights(&p, TOKEN, "api", r#"{"blue":100,"green":0}"#).await;
    only_blue("weights back to 100/0").await;
}

/// A valid preview token in the header or the cookie reaches the idle
/// color (not live, no weight) and sets no cookie; wrong tokens, another
/// service's, another secret's, another color's: ignored.
async fn preview(c: Client) {
    let (p, blue, green) = start(c.transport, PREVIEW).await;
    let http = c.http();
    let r = call(&p, "GET", "/v1/services/api/preview/green", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let tok = token(SECRET, "api", "green");
    assert_eq!(v["token"], tok.as_str(), "{v:#}");
    assert_eq!(v["value"], format!("green.{tok}"), "{v:#}");
    assert_eq!(v["header"], "Duotone-Preview", "{v:#}");
    assert_eq!(v["cookie"], "duotone_preview", "{v:#}");
    assert_eq!(v["color"], "green", "{v:#}");
    assert!(!r.text().contains(SECRET));

    let good = format!("green.{tok}");
    let cookie = format!("a=1; duotone_preview={good}");
    for headers in [
        vec![("Duotone-Preview", good.as_str())],
        vec![("duotone-preview", good.as_str())],
        vec![("cookie", cookie.as_str())],
    ] {
        for _ in 0..10 {
            let r = send(&http, &p, c, "/", &headers).await;
            assert_eq!(r.text(), "green", "{c:?}: {headers:?}");
            assert!(set_cookies(&r).is_empty(), "{c:?}: {:?}", set_cookies(&r));
        }
    }
    let green_hits = green.hits();
    assert!(green_hits >= 30, "{green_hits}");

    let mut flipped = tok.clone().into_bytes();
    flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap_or_default();
    let wrong = [
        format!("green.{flipped}"),
        format!("green.{}", token(SECRET, "web", "green")),
        format!("green.{}", token("another-secret-4567890", "api", "green")),
        format!("green.{}", token(SECRET, "api", "blue")),
        format!("green.{}", tok.to_ascii_uppercase()),
        format!("green.{}", &tok[..63]),
        tok.clone(),
        "green".to_string(),
    ];
    for value in &wrong {
        let cookie = format!("duotone_preview={value}");
        for headers in [
            vec![("Duotone-Preview", value.as_str())],
            vec![("cookie", cookie.as_str())],
        ] {
            let r = send(&http, &p, c, "/", &headers).await;
            assert_eq!(r.text(), "blue", "{c:?}: {headers:?} was honoured");
        }
    }
    // A token for `web` works for `web` (its own secret and name).
    let web = format!("green.{}", token(SECRET, "web", "green"));
    let r = send(&http, &p, c, "/web/x", &[("duotone-preview", &web)]).await;
    assert_eq!(r.text(), "green");
    assert_eq!(green.hits(), green_hits + 1);
    assert!(blue.hits() >= 2 * wrong.len() as u64);
}

on_every_client!(
    preview:
    preview_lane_h1,
    preview_lane_h2,
    preview_lane_h2_post_handed_to_pingora,
    preview_pingora_h1_post,
    preview_pingora_h2,
);

e2e::on_both_transports!(
    #[tokio::test]
    preview_without_a_secret_is_ignored
);

/// A service with no preview secret (here an unset variable with an empty
/// default): tokens are ignored, the admin API has none to give (409),
/// and the CLI says why.
async fn preview_without_a_secret_is_ignored(t: Transport) {
    let (p, _blue, green) =
        start(t, r#"preview = { secret = "${DUOTONE_NO_SUCH_SECRET:-}" }"#).await;
    let http = Http::new();
    let c = Client {
        transport: t,
        h2: false,
        post: false,
    };
    for secret in [SECRET, ""] {
        let value = format!("green.{}", token(secret, "api", "green"));
        let cookie = format!("duotone_preview={value}");
        for headers in [
            vec![("Duotone-Preview", value.as_str())],
            vec![("cookie", cookie.as_str())],
        ] {
            let r = send(&http, &p, c, "/", &headers).await;
            assert_eq!(r.text(), "blue", "{headers:?} was honoured");
        }
    }
    assert_eq!(green.hits(), 0);
    let r = call(&p, "GET", "/v1/services/api/preview/green", None).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("no preview secret"),
        "{}",
        r.text()
    );
    let r = call(&p, "GET", "/v1/services/api/preview/red", None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = call(&p, "GET", "/v1/services/nope/preview/green", None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = call(&p, "POST", "/v1/services/web/preview/green", Some("{}")).await;
    assert_eq!(r.status, 405, "{}", r.text());
    // Behind the admin token.
    let r = admin(
        "GET",
        &p.admin_url("/v1/services/web/preview/green"),
        None,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.status, 401, "{}", r.text());

    let (code, out, err) = e2e::admin::cli(&p, TOKEN, &["preview", "api", "green"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("409") && err.contains("no preview secret"),
        "{err}"
    );
}

/// `duotone preview SERVICE COLOR` prints the header (first line), a curl
/// example and the cookie; the token works; `duotone status` shows the
/// preview and, with weights, the sticky cookie.
#[tokio::test]
async fn preview_and_status_cli() {
    let (p, _blue, _green) = start(Transport::Lane, &format!("{PREVIEW}\n{WEIGHTS}")).await;
    let (code, out, err) = e2e::admin::cli(&p, TOKEN, &["preview", "api", "green"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let value = format!("green.{}", token(SECRET, "api", "green"));
    let header = format!("Duotone-Preview: {value}");
    assert_eq!(out.lines().next(), Some(header.as_str()), "{out}");
    assert!(out.contains(&format!("curl -H '{header}' ")), "{out}");
    assert!(out.contains(&format!("duotone_preview={value}")), "{out}");
    assert!(!out.contains(SECRET) && !err.contains(SECRET));
    let r = send(
        &Http::new(),
        &p,
        CLIENTS[0],
        "/",
        &[("duotone-preview", &value)],
    )
    .await;
    assert_eq!(r.text(), "green");
    assert!(set_cookies(&r).is_empty());

    let (code, out, err) = e2e::admin::cli(&p, TOKEN, &["status", "api"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("sticky: clients pinned by cookie duotone_api (max-age 86400s)"),
        "{out}"
    );
    assert!(
        out.contains("preview: header Duotone-Preview or cookie duotone_preview"),
        "{out}"
    );
    assert!(!out.contains(SECRET));
}

/// A WebSocket upgrade (Pingora's own proxy) follows the sticky cookie and
/// preview tokens, and an upgrade chosen by weight is pinned by its 101.
#[tokio::test]
async fn websockets_follow_the_cookie_and_the_preview() {
    let (p, _blue, _green) = start(Transport::Lane, &format!("{PREVIEW}\n{WEIGHTS}")).await;
    let url = format!("ws://{}/ws", p.ports.http);
    let open = |headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let mut req = url.into_client_request().expect("ws request");
            for (k, v) in headers {
                req.headers_mut()
                    .insert(k, v.parse().expect("header value"));
            }
            let (mut ws, resp) = tokio_tungstenite::connect_async(req)
                .await
                .expect("websocket handshake through duotone");
            assert_eq!(resp.status(), 101);
            ws.send(Message::text("hi")).await.expect("send");
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("echo in time")
                .expect("echo")
                .expect("echo frame");
            let text = msg.into_text().map(|t| t.to_string()).unwrap_or_default();
            let color = text.strip_suffix(": hi").unwrap_or(&text).to_string();
            let cookies: Vec<String> = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap_or("").to_string())
                .collect();
            (color, cookies)
        }
    };
    for color in ["blue", "green"] {
        for _ in 0..10 {
            let (got, cookies) = open(vec![("cookie", format!("duotone_api={color}"))]).await;
            assert_eq!(got, color);
            assert!(cookies.is_empty(), "{cookies:?}");
        }
    }
    let value = format!("blue.{}", token(SECRET, "api", "blue"));
    for _ in 0..10 {
        let (got, cookies) = open(vec![
            ("duotone-preview", value.clone()),
            ("cookie", "duotone_api=green".into()),
        ])
        .await;
        assert_eq!(got, "blue");
        assert!(cookies.is_empty(), "{cookies:?}");
    }
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let (got, cookies) = open(vec![]).await;
        assert_eq!(cookies, vec![pin(&got)]);
        seen.insert(got);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// With `sticky = false` and no preview, neither rule applies (and the view
/// shows neither); a reload that adds them, with a cookie name and max-age
/// of its own, turns them on.
#[tokio::test]
async fn a_config_reload_turns_the_rules_on() {
    let (p, _blue, _green) = start(Transport::Lane, "canary = { sticky = false }").await;
    let http = Http::new();
    let c = CLIENTS[0];
    let value = format!("green.{}", token(SECRET, "api", "green"));
    let r = send(&http, &p, c, "/", &[("duotone-preview", &value)]).await;
    assert_eq!(r.text(), "blue");
    let v = call(&p, "GET", "/v1/services/api", None).await.json();
    assert!(
        v.get("sticky").is_none() && v.get("preview").is_none(),
        "{v:#}"
    );
    let text = std::fs::read_to_string(&p.config).unwrap_or_default();
    let text = text.replace(
        "canary = { sticky = false }",
        &format!("canary = {{ cookie = \"pin\", max_age = \"2h\" }}\n{PREVIEW}\n{WEIGHTS}"),
    );
    std::fs::write(&p.config, text).unwrap_or_else(|e| panic!("{e}"));
    let r = call(&p, "POST", "/v1/reload", Some("{}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(&http, &p, c, "/", &[("duotone-preview", &value)]).await;
    assert_eq!(r.text(), "green");
    let r = send(&http, &p, c, "/", &[]).await;
    assert_eq!(
        set_cookies(&r),
        vec![format!(
            "pin={}; Path=/; Max-Age=7200; HttpOnly; SameSite=Lax",
            r.text()
        )]
    );
}
