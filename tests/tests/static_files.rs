//! Static and media files served at the edge, end to end: the real binary,
//! real files in a temp dir, real sockets (raw request lines where a client
//! could normalize the path). Each test runs twice: `::lane` (the default)
//! and `::pingora` (`DUOTONE_LANE=off`), see `e2e::transport`.

use e2e::client::{raw, Http, Resp};
use e2e::proxy::Proxy;
use e2e::transport::Transport;
use e2e::upstream::Upstream;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{symlink, FileExt};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Content of the file next to the roots that must never be served.
const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";
const MIB: u64 = 1024 * 1024;

/// `<tmp>/static` and `<tmp>/media` (served), `<tmp>/secret` and
/// `<tmp>/secret.txt` (never readable through the proxy).
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["static", "media"] {
            fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        fs::write(dir.path().join("secret"), SECRET).expect("secret");
        fs::write(dir.path().join("secret.txt"), SECRET).expect("secret");
        Tree { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(&p, data).expect("write");
        p
    }

    /// Files for the content-type, validator, range, sidecar, cache, index
    /// and symlink checks.
    fn populate(&self) {
        self.write("static/app.css", "body{color:red}");
        self.write("static/app.css.gz", "GZIP-SIDECAR-OF-APP-CSS");
        self.write("static/app.css.br", "BROTLI-SIDECAR-OF-APP-CSS!");
        self.write("static/app.3f2a9c81b7d4.css", "body{color:blue}");
        self.write("static/app.js", "console.log(1)");
        self.write("static/page.html", "<!doctype html><p>page</p>");
        self.write("static/logo.png", b"\x89PNG\r\n\x1a\nnot-really");
        self.write("static/blob.unknownext", "opaque");
        self.write("static/digits.bin", digits(100));
        self.write("static/docs/index.html", "<h1>docs index</h1>");
        self.write("static/nolist/hidden-name.txt", "x");
        self.write("static/inner/real.txt", "REAL-INNER");
        symlink("real.txt", self.path("static/inner/alias.txt")).expect("symlink");
        symlink("../secret", self.path("static/leak")).expect("symlink");
        symlink("../secret.txt", self.path("static/leak.txt")).expect("symlink");
        symlink(self.dir.path(), self.path("static/outdir")).expect("symlink");
        self.write("media/upload.txt", "MEDIA-UPLOAD");
        self.write("media/sub/photo.png", b"\x89PNGphoto");
        symlink("upload.txt", self.path("media/alias.txt")).expect("symlink");
        symlink("../secret", self.path("media/leak")).expect("symlink");
    }

    fn root(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// `n` bytes `0123456789012…`.
fn digits(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'0' + (i % 10) as u8).collect()
}

/// One site: a proxied `/`, `/static/` (sidecars, immutable hashed names,
/// index, symlinks inside the root followed) and `/media/` (no index, no
/// symlinks).
fn config(tree: &Tree, app: &Upstream) -> String {
    format!(
        r#"
[server]
http = "{{http}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[[sites]]
hosts = ["*"]
  [[sites.routes]]
  path = "/"
  service = "app"
  [[sites.routes]]
  path = "/static/"
  static = {{ root = "{static_root}", precompressed = true, immutable_hashed = true, index = true, follow_symlinks = true, max_age = "5m" }}
  [[sites.routes]]
  path = "/media/"
  static = {{ root = "{media_root}", follow_symlinks = false }}
  [[sites.routes]]
  path = "/assets/"
  static = {{ root = "{static_root}", immutable_hashed = true, immutable_max_age = "24h" }}

[services.app]
colors.blue = ["{app}"]
"#,
        static_root = tree.root("static"),
        media_root = tree.root("media"),
        app = app.member(),
    )
}

struct Env {
    tree: Tree,
    _app: Upstream,
    proxy: Proxy,
    http: Http,
}

impl Env {
    async fn start(t: Transport) -> Env {
        let tree = Tree::new();
        tree.populate();
        let app = Upstream::start("app").await;
        let proxy = Proxy::start_on(t, &config(&tree, &app)).await;
        Env {
            tree,
            _app: app,
            proxy,
            http: Http::new(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.http
            .get_with(&self.proxy.url(path), headers)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.proxy.log()))
    }

    async fn send(&self, method: &str, path: &str) -> Resp {
        self.http
            .send(method, &self.proxy.url(path), &[], bytes::Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// A raw response: status and the whole text.
struct Raw {
    status: u16,
    text: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        let head = self.text.split("\r\n\r\n").next().unwrap_or("");
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `GET <target>` exactly as written (no client normalization).
async fn raw_get(addr: SocketAddr, target: &str) -> Raw {
    let req = format!("GET {target} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n");
    let text = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw { status, text }
}

e2e::on_both_transports!(
    #[tokio::test]
    content_types_validators_and_conditionals
);
async fn content_types_validators_and_conditionals(t: Transport) {
    let env = Env::start(t).await;
    for (path, ct) in [
        ("/static/app.css", "text/css; charset=utf-8"),
        ("/static/page.html", "text/html; charset=utf-8"),
        ("/static/logo.png", "image/png"),
        ("/static/blob.unknownext", "application/octet-stream"),
        ("/media/sub/photo.png", "image/png"),
        ("/media/upload.txt", "text/plain; charset=utf-8"),
    ] {
        let r = env.get(path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", env.proxy.log());
        assert_eq!(r.header("content-type"), ct, "{path}");
        assert!(!r.header("etag").is_empty(), "{path} has an ETag");
        assert!(
            httpdate_ok(r.header("last-modified")),
            "{path}: Last-Modified {:?}",
            r.header("last-modified")
        );
        assert_eq!(r.header("accept-ranges"), "bytes");
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("content-length"), r.body.len().to_string());
    }
    let js = env.get("/static/app.js", &[]).await;
    assert!(
        js.header("content-type")
            .ends_with("javascript; charset=utf-8"),
        "{:?}",
        js.header("content-type")
    );
    assert_eq!(js.text(), "console.log(1)");

    // 304 by If-None-Match (also inside a list) and by If-Modified-Since.
    let r = env.get("/media/upload.txt", &[]).await;
    let (etag, lm) = (r.header("etag"), r.header("last-modified"));
    let list = format!("\"nope\", {etag}");
    for h in [
        ("if-none-match", etag),
        ("if-none-match", list.as_str()),
        ("if-modified-since", lm),
    ] {
        let c = env.get("/media/upload.txt", &[h]).await;
        assert_eq!(c.status, 304, "{h:?}");
        assert!(c.body.is_empty());
        assert_eq!(c.header("etag"), etag);
    }
    let c = env
        .get("/media/upload.txt", &[("if-none-match", "\"other\"")])
        .await;
    assert_eq!((c.status, c.text().as_str()), (200, "MEDIA-UPLOAD"));
    let c = env
        .get(
            "/media/upload.txt",
            &[("if-modified-since", "Thu, 01 Jan 1998 00:00:00 GMT")],
        )
        .await;
    assert_eq!(c.status, 200);

    // A changed file gets a new ETag and is served again.
    std::thread::sleep(Duration::from_millis(20));
    env.tree.write("media/upload.txt", "MEDIA-UPLOAD-v2");
    let c = env
        .get("/media/upload.txt", &[("if-none-match", etag)])
        .await;
    assert_eq!((c.status, c.text().as_str()), (200, "MEDIA-UPLOAD-v2"));
    assert_ne!(c.header("etag"), etag);
}

fn httpdate_ok(v: &str) -> bool {
    v.ends_with(" GMT") && v.len() == 29
}

e2e::on_both_transports!(
    #[tokio::test]
    byte_ranges_and_if_range
);
async fn byte_ranges_and_if_range(t: Transport) {
    let env = Env::start(t).await;
    let all = digits(100);
    let path = "/static/digits.bin";
    let full = env.get(path, &[]).await;
    assert_eq!(full.body.as_ref(), all.as_slice());
    let etag = full.header("etag").to_string();
    let lm = full.header("last-modified").to_string();

    for (range, start, end) in [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=-5", 95, 99),
        ("bytes=10-", 10, 99),
        ("bytes=90-1000", 90, 99),
    ] {
        let r = env.get(path, &[("range", range)]).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body.as_ref(), &all[start..=end], "{range}");
        assert_eq!(
            r.header("content-range"),
            format!("bytes {start}-{end}/100"),
            "{range}"
        );
        assert_eq!(r.header("content-length"), (end - start + 1).to_string());
    }

    for range in ["bytes=100-", "bytes=200-300", "bytes=-0"] {
        let r = env.get(path, &[("range", range)]).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), "bytes */100", "{range}");
        assert!(r.body.is_empty());
    }

    // If-Range: a stale validator means the whole file, a current one the range.
    for stale in ["\"0000000000000000\"", "Thu, 01 Jan 1998 00:00:00 GMT"] {
        let r = env
            .get(path, &[("range", "bytes=0-9"), ("if-range", stale)])
            .await;
        assert_eq!(r.status, 200, "{stale}");
        assert_eq!(r.body.as_ref(), all.as_slice());
    }
    for current in [etag.as_str(), lm.as_str()] {
        let r = env
            .get(path, &[("range", "bytes=0-9"), ("if-range", current)])
            .await;
        assert_eq!(r.status, 206, "{current}");
        assert_eq!(r.body.as_ref(), b"0123456789");
    }
    // Multiple ranges: the whole representation.
    let r = env.get(path, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!((r.status, r.body.len()), (200, 100));
}

e2e::on_both_transports!(
    #[tokio::test]
    precompressed_sidecars_by_accept_encoding
);
async fn precompressed_sidecars_by_accept_encoding(t: Transport) {
    let env = Env::start(t).await;
    let path = "/static/app.css";
    let cases: [(Option<&str>, &str, &str); 7] = [
        (None, "", "body{color:red}"),
        (
            Some("br;q=0.5, gzip;q=1"),
            "gzip",
            "GZIP-SIDECAR-OF-APP-CSS",
        ),
        (Some("gzip, br"), "br", "BROTLI-SIDECAR-OF-APP-CSS!"),
        (Some("gzip, br;q=0"), "gzip", "GZIP-SIDECAR-OF-APP-CSS"),
        (Some("br;q=0"), "", "body{color:red}"),
        (Some("identity"), "", "body{color:red}"),
        (Some("zstd"), "", "body{color:red}"),
    ];
    let mut etags = std::collections::BTreeMap::new();
    for (ae, coding, body) in cases {
        let headers: Vec<(&str, &str)> = ae.map(|v| ("accept-encoding", v)).into_iter().collect();
        let r = env.get(path, &headers).await;
        assert_eq!(r.status, 200, "{ae:?}");
        assert_eq!(r.header("content-encoding"), coding, "{ae:?}");
        assert_eq!(r.text(), body, "{ae:?}");
        assert_eq!(r.header("content-type"), "text/css; charset=utf-8");
        assert_eq!(r.header("vary"), "Accept-Encoding", "{ae:?}");
        assert_eq!(r.header("content-length"), body.len().to_string());
        let prev = etags.insert(coding, r.header("etag").to_string());
        if let Some(prev) = prev {
            assert_eq!(prev, r.header("etag"), "stable ETag per representation");
        }
    }
    let distinct: std::collections::BTreeSet<_> = etags.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "identity, gzip and br ETags differ: {etags:?}"
    );
    // A sidecar's ETag revalidates that sidecar only.
    let gz = &etags["gzip"];
    let r = env
        .get(path, &[("accept-encoding", "gzip"), ("if-none-match", gz)])
        .await;
    assert_eq!(r.status, 304);
    let r = env.get(path, &[("if-none-match", gz)]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "body{color:red}"));
    // Range over a sidecar is a range of the compressed bytes.
    let r = env
        .get(path, &[("accept-encoding", "gzip"), ("range", "bytes=0-3")])
        .await;
    assert_eq!((r.status, r.text().as_str()), (206, "GZIP"));
    // The sidecars themselves stay addressable by name without Vary games.
    let r = env.get("/media/upload.txt", &[]).await;
    assert_eq!(r.header("vary"), "", "no sidecars on /media/");
}

e2e::on_both_transports!(
    #[tokio::test]
    cache_control_index_head_and_methods
);
async fn cache_control_index_head_and_methods(t: Transport) {
    let env = Env::start(t).await;
    let r = env.get("/static/app.3f2a9c81b7d4.css", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    let r = env.get("/assets/app.3f2a9c81b7d4.css", &[]).await;
    assert_eq!(
        r.header("cache-control"),
        "public, max-age=86400, immutable",
        "immutable_max_age is configurable"
    );
    for path in ["/static/app.css", "/static/page.html"] {
        let r = env.get(path, &[]).await;
        assert_eq!(
            r.header("cache-control"),
            "public, max-age=300, must-revalidate",
            "{path}"
        );
    }
    // /media/ has the default max-age (60 s) and no immutable names.
    let r = env.get("/media/upload.txt", &[]).await;
    assert_eq!(
        r.header("cache-control"),
        "public, max-age=60, must-revalidate"
    );

    // Index for directories on /static/ (redirect without the slash).
    let r = env.get("/static/docs/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>docs index</h1>");
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    let r = env.get("/static/docs", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), "./docs/");
    // A directory without index.html, and /media/ without index: 404, no
    // listing (`/static/nolist` first redirects to the slash form).
    for (path, status) in [
        ("/static/nolist/", 404),
        ("/static/nolist", 301),
        ("/media/", 404),
        ("/media/sub/", 404),
        ("/media/sub", 404),
    ] {
        let r = env.get(path, &[]).await;
        assert_eq!(r.status, status, "{path}");
        for leaked in ["hidden-name", "photo.png", "upload.txt"] {
            assert!(!r.text().contains(leaked), "{path} lists {leaked}");
        }
    }

    // HEAD: the headers of GET, no body.
    let get = env.get("/static/page.html", &[]).await;
    let head = env.send("HEAD", "/static/page.html").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for h in ["content-length", "content-type", "etag", "last-modified"] {
        assert_eq!(head.header(h), get.header(h), "{h}");
    }
    // Raw HEAD: nothing after the header block.
    let req = "HEAD /static/page.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let text = raw(env.proxy.ports.http, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD sent a body: {text:?}");

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = env.send(method, "/static/app.css").await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), "GET, HEAD", "{method}");
    }
    let r = env.send("POST", "/media/upload.txt").await;
    assert_eq!(r.status, 405);
}

e2e::on_both_transports!(
    #[tokio::test]
    mixed_site_routes_static_media_and_proxy
);
async fn mixed_site_routes_static_media_and_proxy(t: Transport) {
    let env = Env::start(t).await;
    let r = env.get("/", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
    let r = env.get("/anything/else", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
    // `/staticx` is not under `/static/`: proxied.
    let r = env.get("/staticx/app.css", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
    let r = env.get("/static/app.css", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "body{color:red}"));
    let r = env.get("/media/upload.txt", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "MEDIA-UPLOAD"));
    // Missing files are 404 locally, never forwarded to the app.
    let r = env.get("/static/missing.css", &[]).await;
    assert_eq!(r.status, 404);
    assert_ne!(r.text(), "app");
    let r = env.get("/media/missing.png", &[]).await;
    assert_eq!(r.status, 404);
    // Query strings do not name files.
    let r = env.get("/static/app.css?v=3", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "body{color:red}"));
    // Encoded but harmless names still resolve.
    env.tree.write("media/with space.txt", "spaced");
    let r = raw_get(env.proxy.ports.http, "/media/with%20space.txt").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.ends_with("spaced"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    // Over HTTP/2 too.
    let r = Http::h2()
        .get(&env.proxy.url("/static/app.css"))
        .await
        .expect("h2");
    assert_eq!((r.status, r.text().as_str()), (200, "body{color:red}"));
}

e2e::on_both_transports!(
    #[tokio::test]
    traversal_is_refused_and_never_leaks
);
async fn traversal_is_refused_and_never_leaks(t: Transport) {
    let env = Env::start(t).await;
    let addr = env.proxy.ports.http;
    // Sanity: the raw path works for a legitimate file.
    let ok = raw_get(addr, "/static/inner/real.txt").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.text.ends_with("REAL-INNER"));

    // Ambiguous paths are 400 (strict decoding); symlinks out of the root or
    // on a `follow_symlinks = false` route are 404.
    let refused = [
        "/static/../secret",
        "/static/../secret.txt",
        "/static/inner/../../secret",
        "/static/./../secret",
        "/static//../secret",
        "/static/..",
        "/static/%2e%2e/secret",
        "/static/%2E%2E/secret",
        "/static/.%2e/secret",
        "/static/%2e./secret",
        "/static/%2E%2E%2Fsecret",
        "/static/%2e%2e%2fsecret",
        "/static/..%2fsecret",
        "/static/..%2Fsecret",
        "/static/inner%2f..%2f..%2fsecret",
        "/static/%2fsecret",
        "/static/%2Fetc%2Fpasswd",
        "/static/..\\secret",
        "/static/inner\\..\\..\\secret",
        "/static/%5c..%5csecret",
        "/static/..%5csecret",
        "/static/..%5Csecret",
        "/static/%00",
        "/static/secret%00.txt",
        "/static/app.css%00.png",
        "/static/%c0%ae%c0%ae/secret",
        "/static/%c0%ae%c0%ae%c0%afsecret",
        "/static/..%c0%afsecret",
        "/static/%e0%80%ae%e0%80%ae/secret",
        "/static/%ff",
        "/static/%",
        "/static/%2",
        "/static/%zz",
        "/static/%%32%65%%32%65/secret",
        "/static/%g0",
        "/media/../secret",
        "/media/%2e%2e/secret",
        "/media/..%2fsecret",
        "/media/%5c..%5csecret",
    ]
    .map(|t| (t, 400));
    let symlinks = [
        "/static/leak",
        "/static/leak.txt",
        "/static/outdir/secret",
        "/media/leak",
        "/media/alias.txt",
    ]
    .map(|t| (t, 404));
    for (target, status) in refused.into_iter().chain(symlinks) {
        let r = raw_get(addr, target).await;
        assert_eq!(r.status, status, "{target}: {}", r.text);
        assert!(!r.text.contains(SECRET), "{target} leaked: {}", r.text);
        assert!(!r.text.contains("REAL-INNER"), "{target}");
    }
    // Decoded exactly once: `%252e%252e` is a literal file name, not `..`.
    let r = raw_get(addr, "/static/%252e%252e/secret").await;
    assert_eq!(r.status, 404, "{}", r.text);
    // A symlink that stays inside the root is followed when allowed...
    let r = raw_get(addr, "/static/inner/alias.txt").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.ends_with("REAL-INNER"));
    // (also through a directory symlink whose target contains the root)
    let r = raw_get(addr, "/static/outdir/static/app.css").await;
    assert_eq!(r.status, 200, "{}", r.text);
    // ...but never on a follow_symlinks = false route, where the target itself works.
    let r = raw_get(addr, "/media/upload.txt").await;
    assert_eq!(r.status, 200);
    assert!(r.text.ends_with("MEDIA-UPLOAD"));

    // Paths outside the static prefixes go to the app, which has no secret either;
    // whatever the proxy does with them, no file outside the roots is read.
    for target in [
        "/static%2f..%2fsecret",
        "/%2e%2e/secret",
        "/../secret",
        "/static/../../secret.txt",
        "/media%2f../secret",
    ] {
        let r = raw_get(addr, target).await;
        assert!(r.status != 0, "{target}: no response");
        assert!(!r.text.contains(SECRET), "{target} leaked: {}", r.text);
    }
    // Absolute-form request targets are held to the same rules.
    let r = raw_get(addr, "http://site.test/static/../secret").await;
    assert!(!r.text.contains(SECRET), "{}", r.text);
    let r = raw_get(addr, "http://site.test/static/%2e%2e/secret").await;
    assert!(!r.text.contains(SECRET), "{}", r.text);
    // HEAD and Range do not open a side door.
    for req in [
        "HEAD /static/%2e%2e/secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /static/leak HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\nConnection: close\r\n\r\n",
    ] {
        let text = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 404"),
            "{text}"
        );
        assert!(!text.contains("TOP-"));
    }
    // A file served (and cached) a moment ago, then swapped for a link out
    // of the root, is refused at once.
    let real = env.tree.path("static/inner/real.txt");
    fs::remove_file(&real).expect("rm");
    symlink(env.tree.path("secret"), &real).expect("symlink");
    let r = raw_get(addr, "/static/inner/real.txt").await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(!r.text.contains(SECRET));
    let r = raw_get(addr, "/static/inner/alias.txt").await;
    assert_eq!(r.status, 404, "{}", r.text);
    // The proxy is still healthy after all that.
    let r = env.get("/static/app.css", &[]).await;
    assert_eq!(r.status, 200);
}

/// Peak and current resident set size of `pid`, in KiB.
fn memory_kib(pid: i32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {status}"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Streams `GET target` (optionally with a Range) on its own connection and
/// checks the status, the byte count and `probes` (absolute file offset →
/// expected bytes) without keeping the body. Returns the body length.
async fn download(
    addr: SocketAddr,
    target: &str,
    range: Option<(u64, u64)>,
    probes: &[(u64, &[u8])],
) -> u64 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let range_header = range
        .map(|(a, b)| format!("Range: bytes={a}-{b}\r\n"))
        .unwrap_or_default();
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n{range_header}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let body_start = loop {
        let n = s.read(&mut buf).await.expect("read head");
        assert!(n > 0, "closed before headers");
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head_text = String::from_utf8_lossy(&head[..body_start]).into_owned();
    let want_status = if range.is_some() { "206" } else { "200" };
    assert!(
        head_text.starts_with(&format!("HTTP/1.1 {want_status}")),
        "{head_text}"
    );
    let content_length: u64 = head_text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    let base = range.map_or(0, |(a, _)| a);
    let mut got = 0u64;
    let mut pending: Vec<(u64, &[u8], usize)> = probes
        .iter()
        .filter(|(off, bytes)| *off >= base && *off + bytes.len() as u64 <= base + content_length)
        .map(|&(off, bytes)| (off - base, bytes, 0))
        .collect();
    let mut check = |chunk: &[u8], at: u64| {
        for (off, want, matched) in pending.iter_mut() {
            let end = *off + want.len() as u64;
            let (lo, hi) = ((*off).max(at), end.min(at + chunk.len() as u64));
            if lo < hi {
                let part = &chunk[(lo - at) as usize..(hi - at) as usize];
                assert_eq!(part, &want[(lo - *off) as usize..(hi - *off) as usize]);
                *matched += part.len();
            }
        }
    };
    check(&head[body_start..], 0);
    got += (head.len() - body_start) as u64;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
            .await
            .expect("body stalled")
            .expect("read body");
        if n == 0 {
            break;
        }
        check(&buf[..n], got);
        got += n as u64;
    }
    assert_eq!(
        got, content_length,
        "{target} {range:?}: short or long body"
    );
    for (off, want, matched) in &pending {
        assert_eq!(*matched, want.len(), "probe at {off} not fully seen");
    }
    got
}

e2e::on_both_transports!(
    #[tokio::test]
    large_file_streams_with_bounded_memory
);
async fn large_file_streams_with_bounded_memory(t: Transport) {
    let env = Env::start(t).await;
    let size = 100 * MIB;
    let path = env.tree.path("media/big.bin");
    let f = fs::File::create(&path).expect("create");
    f.set_len(size).expect("sparse");
    let probes: Vec<(u64, &[u8])> = vec![
        (0, b"BEGIN-MARKER"),
        (7 * MIB + 3, b"SEVEN-MIB"),
        (50 * MIB - 4, b"ACROSS-THE-MIDDLE"),
        (size - 10, b"END-MARKER"),
    ];
    for (off, bytes) in &probes {
        f.write_all_at(bytes, *off).expect("marker");
    }
    drop(f);
    let addr = env.proxy.ports.http;
    let pid = env.proxy.pid();
    // Warm up the paths (allocator, code) before taking the baseline.
    assert_eq!(download(addr, "/media/upload.txt", None, &[]).await, 12);
    download(addr, "/media/big.bin", Some((0, MIB - 1)), &probes).await;
    let (hwm_before, rss_before) = memory_kib(pid);

    assert_eq!(download(addr, "/media/big.bin", None, &probes).await, size);
    for (a, b) in [
        (0, 11),
        (50 * MIB - 10, 50 * MIB + 20),
        (size - 10, size - 1),
        (7 * MIB, 9 * MIB),
    ] {
        assert_eq!(
            download(addr, "/media/big.bin", Some((a, b)), &probes).await,
            b - a + 1
        );
    }
    // Several at once.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let probes = probes.clone();
        tasks.push(tokio::spawn(async move {
            download(addr, "/media/big.bin", None, &probes).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), size);
    }

    let (hwm_after, rss_after) = memory_kib(pid);
    let growth_mib = hwm_after.saturating_sub(hwm_before) / 1024;
    eprintln!(
        "proxy memory: VmHWM {hwm_before} -> {hwm_after} KiB, VmRSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        growth_mib < 32,
        "peak RSS grew by {growth_mib} MiB serving a {} MiB file 5 times",
        size / MIB
    );
    assert!(rss_after.saturating_sub(rss_before) / 1024 < 32);
}

/// The proxy's open descriptors that point at `file`.
fn fds_on(pid: i32, file: &std::path::Path) -> usize {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t == file))
        .count()
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Reads one HTTP/1.1 response with a Content-Length to its end; returns the
/// status and the body length.
async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, u64) {
    let mut head = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let (status, length, mut got) = loop {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before the head ended");
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            let status = text[9..12].parse().expect("status");
            let length: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            break (status, length, (head.len() - end - 4) as u64);
        }
    };
    while got < length {
        let n = s.read(&mut buf).await.expect("read body");
        assert!(n > 0, "body cut at {got} of {length}");
        got += n as u64;
    }
    (status, got)
}

e2e::on_both_transports!(
    #[tokio::test]
    open_files_are_capped_and_waiting_downloads_complete
);
async fn open_files_are_capped_and_waiting_downloads_complete(t: Transport) {
    let tree = Tree::new();
    tree.populate();
    let app = Upstream::start("app").await;
    let cfg = format!("{}\n[limits]\nmax_open_files = 2\n", config(&tree, &app));
    let proxy = Proxy::start_on(t, &cfg).await;
    let size = 64 * MIB;
    let path = tree.path("media/big.bin");
    fs::File::create(&path)
        .and_then(|f| f.set_len(size))
        .expect("sparse file");
    let path = fs::canonicalize(&path).expect("canonical");
    // Five clients ask for the file and read nothing yet: two streams hold
    // a handle (blocked on full socket buffers), three wait for one.
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(proxy.ports.http)
            .await
            .expect("connect");
        s.write_all(b"GET /media/big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("send");
        conns.push(s);
    }
    let url = proxy.admin_url("/metrics");
    let metrics = || async {
        let m = e2e::client::admin("GET", &url, None, None)
            .await
            .ok()?
            .text();
        let open = gauge(&m, "duotone_open_files")?;
        let waiting = gauge(&m, "duotone_open_files_waiting")?;
        Some((open, waiting))
    };
    // (A permit is taken just before the file is opened: wait for both.)
    let pid = proxy.pid();
    let seen = e2e::eventually(Duration::from_secs(20), || async {
        let m = metrics().await.filter(|&(o, w)| o == 2.0 && w == 3.0);
        m.filter(|_| fds_on(pid, &path) == 2)
    })
    .await;
    assert!(
        seen.is_some(),
        "never 2 open and 3 waiting: {:?}, {} descriptors on the file",
        metrics().await,
        fds_on(pid, &path)
    );
    // Read everything: the waiting downloads get their turn and complete.
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| tokio::spawn(async move { read_response(&mut s).await }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join"), (200, size));
    }
    let idle = e2e::eventually(Duration::from_secs(10), || async {
        metrics().await.filter(|&(o, w)| o == 0.0 && w == 0.0)
    })
    .await;
    assert!(
        idle.is_some(),
        "handles not released: {:?}",
        metrics().await
    );
    assert_eq!(fds_on(proxy.pid(), &path), 0);
}
