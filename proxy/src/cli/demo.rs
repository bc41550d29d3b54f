//! `duotone demo`: embedded defaults, no files needed. Two built-in demo
//! upstreams ("blue" and "green"), a static directory, the proxy and admin.

use crate::control::Source;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const CONFIG: &str = r#"# duotone demo (embedded)
[server]
http = "{listen}"
admin = "{admin}"
admin_token = {token}
state_dir = "{state}"

[[sites]]
hosts = ["*"]

  [[sites.routes]]
  path = "/static/"
  static = { root = "{static}", precompressed = true, immutable_hashed = true, index = true }

  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
live = "blue"
health = { path = "/healthz", interval = "1s" }
colors.blue  = ["{blue}"]
colors.green = ["{green}"]
"#;

/// Starts a demo upstream answering with its color; returns its address.
fn start_upstream(rt: &tokio::runtime::Runtime, color: &'static str) -> Result<SocketAddr> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let body = if req.uri().path() == "/healthz" {
                            "ok\n".to_string()
                        } else {
                            format!(
                                "Hello from {color}! ({} {})\n",
                                req.method(),
                                req.uri().path()
                            )
                        };
                        http::Response::builder()
                            .header("content-type", "text/plain; charset=utf-8")
                            .header("x-color", color)
                            .body(Full::new(Bytes::from(body)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn write_static(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><title>duotone demo</title><link rel=stylesheet href=app.3f2a9c81b7d4.css><h1>Served by duotone</h1>\n",
    )?;
    std::fs::write(dir.join("app.3f2a9c81b7d4.css"), "h1 { color: #2b6cb0; }\n")?;
    Ok(())
}

/// The demo's admin token: `DUOTONE_ADMIN_TOKEN` if set, else 32 random hex
/// digits, so that even the demo's API is not open to every local process
/// and web page.
fn admin_token() -> Result<String> {
    if let Some(t) = std::env::var("DUOTONE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(t.trim().to_string());
    }
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
        .context("reading /dev/urandom for the demo's admin token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs the demo until interrupted.
pub fn run(listen: &str, admin: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let blue = start_upstream(&rt, "blue")?;
    let green = start_upstream(&rt, "green")?;
    let base: PathBuf = std::env::temp_dir().join(format!("duotone-demo-{}", std::process::id()));
    let static_dir = base.join("static");
    write_static(&static_dir).context("writing demo static files")?;
    let token = admin_token()?;
    let text = CONFIG
        .replace("{token}", &serde_json::to_string(&token)?)
        .replace("{listen}", listen)
        .replace("{admin}", admin)
        .replace("{state}", &base.join("state").display().to_string())
        .replace("{static}", &static_dir.display().to_string())
        .replace("{blue}", &blue.to_string())
        .replace("{green}", &green.to_string());
    println!(
        "Duotone demo
  proxy    http://{listen}/          -> service \"app\", live color blue ({blue}), idle green ({green})
  static   http://{listen}/static/   -> {static_dir}
  admin    http://{admin}/v1/services  (bearer token below)

Admin token ({origin}):
  export DUOTONE_ADMIN_TOKEN='{token}'

Try:
  curl http://{listen}/                                   # Hello from blue!
  duotone flip app green --admin http://{admin}           # the CLI reads DUOTONE_ADMIN_TOKEN
  curl http://{listen}/                                   # Hello from green!
  duotone status --admin http://{admin}
  curl -X POST -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
       -d '{{\"to\":\"blue\"}}' http://{admin}/v1/services/app/flip
  curl -I http://{listen}/static/app.3f2a9c81b7d4.css     # immutable caching for hashed names
  curl -H 'Authorization: Bearer {token}' http://{admin}/metrics
Ctrl-C stops.
",
        static_dir = static_dir.display(),
        origin = if std::env::var("DUOTONE_ADMIN_TOKEN").is_ok_and(|t| !t.trim().is_empty()) {
            "from DUOTONE_ADMIN_TOKEN"
        } else {
            "generated for this run; set DUOTONE_ADMIN_TOKEN to choose one"
        },
    );
    // The upstreams keep running on `rt` while Pingora runs on its own threads.
    let _keep = rt;
    crate::server::run(
        Source::Embedded {
            name: "<demo>".into(),
            text,
        },
        false,
    )
}
