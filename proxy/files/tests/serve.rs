//! End-to-end behaviour of `FileServer::respond` on real files in temp dirs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use files::{
    read_chunk, Body, FileOptions, FileServer, FilesError, OpenFiles, Reply, DEFAULT_CHUNK_SIZE,
};
use http::{HeaderMap, Method, StatusCode};

const SECRET: &[u8] = b"TOP-SECRET-OUTSIDE-ROOT";

/// `<tmp>/root` (served) and `<tmp>/secret.txt` (must never be readable).
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("mkdir root");
        fs::write(dir.path().join("secret.txt"), SECRET).expect("secret");
        Fixture { _dir: dir, root }
    }

    fn outside(&self) -> &Path {
        self._dir.path()
    }

    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(&p, data).expect("write");
        p
    }

    fn server(&self, f: impl FnOnce(&mut FileOptions)) -> FileServer {
        let mut opts = FileOptions::new(&self.root);
        f(&mut opts);
        FileServer::new(opts).expect("server")
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    h
}

async fn collect(body: Body) -> Vec<u8> {
    match body {
        Body::Empty => Vec::new(),
        Body::Bytes(b) => b.to_vec(),
        Body::File(mut f) => {
            let mut out = Vec::new();
            while let Some(chunk) = read_chunk(&mut f, DEFAULT_CHUNK_SIZE).await.expect("read") {
                out.extend_from_slice(&chunk);
            }
            out
        }
    }
}

async fn req(srv: &FileServer, method: Method, rel: &str, h: &[(&str, &str)]) -> (Reply, Vec<u8>) {
    let mut reply = srv.respond(&method, rel, &headers(h)).await;
    let body = collect(std::mem::replace(&mut reply.body, Body::Empty)).await;
    (reply, body)
}

async fn get(srv: &FileServer, rel: &str, h: &[(&str, &str)]) -> (Reply, Vec<u8>) {
    req(srv, Method::GET, rel, h).await
}

fn hdr<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().expect("ascii"))
}

fn set_mtime(p: &Path, secs: u64) {
    let f = fs::File::options().write(true).open(p).expect("open");
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set mtime");
}

#[tokio::test]
async fn content_types_and_basic_headers() {
    let fx = Fixture::new();
    let srv = fx.server(|_| {});
    for (name, ct) in [
        ("a.css", "text/css; charset=utf-8"),
        ("a.html", "text/html; charset=utf-8"),
        ("a.json", "application/json; charset=utf-8"),
        ("a.svg", "image/svg+xml; charset=utf-8"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.png", "image/png"),
        ("noext", "application/octet-stream"),
    ] {
        fx.write(name, b"0123456789");
        let (r, body) = get(&srv, name, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}");
        assert_eq!(hdr(&r, "content-type"), Some(ct), "{name}");
        assert_eq!(hdr(&r, "content-length"), Some("10"));
        assert_eq!(hdr(&r, "accept-ranges"), Some("bytes"));
        assert_eq!(hdr(&r, "x-content-type-options"), Some("nosniff"));
        assert_eq!(
            hdr(&r, "cache-control"),
            Some("public, max-age=60, must-revalidate")
        );
        assert!(hdr(&r, "vary").is_none());
        assert_eq!(body, b"0123456789");
    }
    fx.write("a.js", b"x");
    let (r, _) = get(&srv, "a.js", &[]).await;
    let ct = hdr(&r, "content-type").expect("ct");
    assert!(
        ct.contains("javascript") && ct.ends_with("; charset=utf-8"),
        "{ct}"
    );
    // encoded names are decoded once
    fx.write("with space.txt", b"s");
    assert_eq!(get(&srv, "with%20space.txt", &[]).await.1, b"s");
}

#[tokio::test]
async fn validators_and_not_modified() {
    let fx = Fixture::new();
    let p = fx.write("a.css", b"body{}");
    set_mtime(&p, 1_700_000_000);
    let srv = fx.server(|o| o.precompressed = true);
    let (r, _) = get(&srv, "a.css", &[]).await;
    let etag = hdr(&r, "etag").expect("etag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
    let lm = hdr(&r, "last-modified").expect("last-modified").to_owned();
    assert_eq!(
        lm,
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    );

    let weak = format!("W/{etag}");
    let list = format!("\"nope\", {etag}");
    for inm in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        for method in [Method::GET, Method::HEAD] {
            let (r, body) = req(&srv, method, "a.css", &[("if-none-match", inm)]).await;
            assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{inm}");
            assert!(body.is_empty());
            assert_eq!(hdr(&r, "etag"), Some(etag.as_str()));
            assert!(hdr(&r, "cache-control").is_some());
            assert_eq!(hdr(&r, "vary"), Some("Accept-Encoding"));
            assert!(hdr(&r, "content-length").is_none());
        }
    }
    assert_eq!(
        get(&srv, "a.css", &[("if-none-match", "\"other\"")])
            .await
            .0
            .status,
        StatusCode::OK
    );

    // If-Modified-Since
    let later = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_100));
    let earlier = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_600_000_000));
    assert_eq!(
        get(&srv, "a.css", &[("if-modified-since", &lm)])
            .await
            .0
            .status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get(&srv, "a.css", &[("if-modified-since", &later)])
            .await
            .0
            .status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get(&srv, "a.css", &[("if-modified-since", &earlier)])
            .await
            .0
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&srv, "a.css", &[("if-modified-since", "garbage")])
            .await
            .0
            .status,
        StatusCode::OK
    );
    // If-None-Match takes precedence over If-Modified-Since
    let r = get(
        &srv,
        "a.css",
        &[("if-none-match", "\"other\""), ("if-modified-since", &lm)],
    )
    .await
    .0;
    assert_eq!(r.status, StatusCode::OK);

    // If-Match / If-Unmodified-Since
    assert_eq!(
        get(&srv, "a.css", &[("if-match", &etag)]).await.0.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&srv, "a.css", &[("if-match", "\"x\"")]).await.0.status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        get(&srv, "a.css", &[("if-match", &weak)]).await.0.status,
        StatusCode::PRECONDITION_FAILED
    );
    let r = get(&srv, "a.css", &[("if-unmodified-since", &earlier)])
        .await
        .0;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        get(&srv, "a.css", &[("if-unmodified-since", &lm)])
            .await
            .0
            .status,
        StatusCode::OK
    );

    // a change of content changes the ETag
    fs::write(&p, b"body{color:red}").expect("rewrite");
    let (r, _) = get(&srv, "a.css", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(hdr(&r, "etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn ranges() {
    let fx = Fixture::new();
    let data: Vec<u8> = (0..100u8).collect();
    let p = fx.write("r.bin", &data);
    set_mtime(&p, 1_700_000_000);
    let srv = fx.server(|_| {});
    let etag = hdr(&get(&srv, "r.bin", &[]).await.0, "etag")
        .expect("etag")
        .to_owned();
    let lm = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000));

    for (range, cr, want) in [
        ("bytes=0-9", "bytes 0-9/100", &data[0..10]),
        ("bytes=-5", "bytes 95-99/100", &data[95..]),
        ("bytes=90-", "bytes 90-99/100", &data[90..]),
        ("bytes=95-1000", "bytes 95-99/100", &data[95..]),
    ] {
        let (r, body) = get(&srv, "r.bin", &[("range", range)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(hdr(&r, "content-range"), Some(cr));
        assert_eq!(
            hdr(&r, "content-length"),
            Some(want.len().to_string().as_str())
        );
        assert_eq!(body, want);
    }
    for range in ["bytes=100-", "bytes=200-300", "bytes=-0"] {
        let (r, body) = get(&srv, "r.bin", &[("range", range)]).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(hdr(&r, "content-range"), Some("bytes */100"));
        assert!(body.is_empty());
    }
    // invalid syntax and multiple ranges: full 200
    for range in ["bytes=5-1", "bytes=x-", "lines=1-2", "bytes=0-1,5-6"] {
        let (r, body) = get(&srv, "r.bin", &[("range", range)]).await;
        assert_eq!(r.status, StatusCode::OK, "{range}");
        assert!(hdr(&r, "content-range").is_none());
        assert_eq!(body, data);
    }
    // If-Range
    let weak = format!("W/{etag}");
    for (if_range, status) in [
        (etag.as_str(), StatusCode::PARTIAL_CONTENT),
        (lm.as_str(), StatusCode::PARTIAL_CONTENT),
        ("\"stale\"", StatusCode::OK),
        (weak.as_str(), StatusCode::OK),
        ("Thu, 01 Jan 2004 00:00:00 GMT", StatusCode::OK),
        ("nonsense", StatusCode::OK),
    ] {
        let (r, body) = get(
            &srv,
            "r.bin",
            &[("range", "bytes=0-3"), ("if-range", if_range)],
        )
        .await;
        assert_eq!(r.status, status, "{if_range}");
        assert_eq!(body.len(), if status == StatusCode::OK { 100 } else { 4 });
    }
    // Range is ignored for HEAD
    let (r, body) = req(&srv, Method::HEAD, "r.bin", &[("range", "bytes=0-3")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(hdr(&r, "content-length"), Some("100"));
    assert!(body.is_empty());
}

#[tokio::test]
async fn precompressed_sidecars() {
    let fx = Fixture::new();
    fx.write("x.css", b"plain-css-content");
    fx.write("x.css.br", b"BR");
    fx.write("x.css.gz", b"GZIP!");
    fx.write("only.css", b"no sidecars");
    let srv = fx.server(|o| o.precompressed = true);

    let mut etags = std::collections::HashSet::new();
    for (ae, enc, body_want) in [
        ("gzip, deflate, br, zstd", Some("br"), &b"BR"[..]),
        ("gzip", Some("gzip"), b"GZIP!"),
        ("br;q=0, gzip", Some("gzip"), b"GZIP!"),
        ("gzip;q=0.5, br;q=0.4", Some("gzip"), b"GZIP!"),
        ("zstd", None, b"plain-css-content"),
        ("*", Some("br"), b"BR"),
        ("*;q=0.1, br;q=0", Some("gzip"), b"GZIP!"),
        ("identity, br;q=0.5", None, b"plain-css-content"),
        ("br;q=0, gzip;q=0", None, b"plain-css-content"),
        ("", None, b"plain-css-content"),
    ] {
        let (r, body) = get(&srv, "x.css", &[("accept-encoding", ae)]).await;
        assert_eq!(r.status, StatusCode::OK, "{ae}");
        assert_eq!(hdr(&r, "content-encoding"), enc, "{ae}");
        assert_eq!(
            hdr(&r, "content-type"),
            Some("text/css; charset=utf-8"),
            "{ae}"
        );
        assert_eq!(hdr(&r, "vary"), Some("Accept-Encoding"));
        assert_eq!(
            hdr(&r, "content-length"),
            Some(body_want.len().to_string().as_str())
        );
        assert_eq!(body, body_want, "{ae}");
        etags.insert((enc, hdr(&r, "etag").expect("etag").to_owned()));
    }
    // one ETag per representation, all distinct, with encoding suffixes
    let distinct: std::collections::HashSet<_> = etags.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(distinct.len(), 3);
    assert!(etags
        .iter()
        .any(|(e, t)| *e == Some("br") && t.ends_with("-br\"")));
    assert!(etags
        .iter()
        .any(|(e, t)| *e == Some("gzip") && t.ends_with("-gz\"")));
    let (r, _) = get(&srv, "x.css", &[]).await;
    assert_eq!(hdr(&r, "vary"), Some("Accept-Encoding"));

    // no request header → plain; 304 per representation
    let br_etag = etags
        .iter()
        .find(|(e, _)| *e == Some("br"))
        .expect("br")
        .1
        .clone();
    let (r, _) = get(
        &srv,
        "x.css",
        &[("accept-encoding", "br"), ("if-none-match", &br_etag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(hdr(&r, "vary"), Some("Accept-Encoding"));
    let (r, _) = get(
        &srv,
        "x.css",
        &[("accept-encoding", "gzip"), ("if-none-match", &br_etag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // ranges apply to the encoded representation
    let (r, body) = get(
        &srv,
        "x.css",
        &[("accept-encoding", "gzip"), ("range", "bytes=1-2")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(hdr(&r, "content-range"), Some("bytes 1-2/5"));
    assert_eq!(body, b"ZI");
    let (r, _) = get(
        &srv,
        "x.css",
        &[
            ("accept-encoding", "gzip"),
            ("range", "bytes=0-1"),
            ("if-range", &br_etag),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // a sidecar requested by name is a plain file
    let (r, body) = get(&srv, "x.css.br", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(hdr(&r, "content-encoding").is_none());
    assert_eq!(body, b"BR");

    // Vary even without sidecars; none at all when the feature is off
    let (r, body) = get(&srv, "only.css", &[("accept-encoding", "br")]).await;
    assert_eq!(
        (hdr(&r, "vary"), body.as_slice()),
        (Some("Accept-Encoding"), &b"no sidecars"[..])
    );
    let plain = fx.server(|_| {});
    let (r, body) = get(&plain, "x.css", &[("accept-encoding", "br, gzip")]).await;
    assert!(hdr(&r, "vary").is_none() && hdr(&r, "content-encoding").is_none());
    assert_eq!(body, b"plain-css-content");
}

#[tokio::test]
async fn immutable_only_for_hashed_names() {
    let fx = Fixture::new();
    for n in [
        "app.3f2a9c81b7d4.css",
        "app.css",
        "main.8e0d2f6b1a9c4d7e5f30.js",
        "report.20240101.pdf",
    ] {
        fx.write(n, b"x");
    }
    let srv = fx.server(|o| {
        o.immutable_hashed = true;
        o.max_age = Duration::from_secs(120);
    });
    let immutable = Some("public, max-age=31536000, immutable");
    let short = Some("public, max-age=120, must-revalidate");
    for (n, want) in [
        ("app.3f2a9c81b7d4.css", immutable),
        ("main.8e0d2f6b1a9c4d7e5f30.js", immutable),
        ("app.css", short),
        ("report.20240101.pdf", short),
    ] {
        assert_eq!(
            hdr(&get(&srv, n, &[]).await.0, "cache-control"),
            want,
            "{n}"
        );
    }
    let off = fx.server(|_| {});
    let r = get(&off, "app.3f2a9c81b7d4.css", &[]).await.0;
    assert_eq!(
        hdr(&r, "cache-control"),
        Some("public, max-age=60, must-revalidate")
    );
}

#[tokio::test]
async fn vite_names_and_a_configured_pattern() {
    let fx = Fixture::new();
    for n in [
        "assets/index-BdX3k9aQ.js",
        "assets/chunk.5f3a2b1c.js",
        "assets/my-document.pdf",
        "assets/app_v12.js",
    ] {
        fx.write(n, b"x");
    }
    let immutable = Some("public, max-age=31536000, immutable");
    let short = Some("public, max-age=60, must-revalidate");
    let default = fx.server(|o| o.immutable_hashed = true);
    let custom = fx.server(|o| {
        o.immutable_pattern = Some(files::HashPattern::new(r"_v[0-9]+\.js$").unwrap());
    });
    for (n, by_default, by_pattern) in [
        ("assets/index-BdX3k9aQ.js", immutable, short),
        ("assets/chunk.5f3a2b1c.js", immutable, short),
        ("assets/my-document.pdf", short, short),
        ("assets/app_v12.js", short, immutable),
    ] {
        let r = get(&default, n, &[]).await.0;
        assert_eq!(hdr(&r, "cache-control"), by_default, "default: {n}");
        let r = get(&custom, n, &[]).await.0;
        assert_eq!(hdr(&r, "cache-control"), by_pattern, "pattern: {n}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn traversal_and_symlinks() {
    use std::os::unix::fs::symlink;
    let fx = Fixture::new();
    fx.write("ok.txt", b"ok");
    fx.write("sub/inner.txt", b"inner");
    symlink(fx.outside().join("secret.txt"), fx.root.join("out.txt")).expect("symlink");
    symlink(fx.outside(), fx.root.join("outdir")).expect("symlink");
    symlink("../secret.txt", fx.root.join("rel_out.txt")).expect("symlink");
    symlink("ok.txt", fx.root.join("alias.txt")).expect("symlink");
    symlink("sub", fx.root.join("sublink")).expect("symlink");

    for follow in [false, true] {
        let srv = fx.server(|o| o.follow_symlinks = follow);
        for (rel, status) in [
            ("../secret.txt", StatusCode::BAD_REQUEST),
            ("sub/../../secret.txt", StatusCode::BAD_REQUEST),
            ("%2e%2e/secret.txt", StatusCode::BAD_REQUEST),
            ("%2E%2E/secret.txt", StatusCode::BAD_REQUEST),
            (".%2e/secret.txt", StatusCode::BAD_REQUEST),
            ("..%2fsecret.txt", StatusCode::BAD_REQUEST),
            ("sub%2f..%2f..%2fsecret.txt", StatusCode::BAD_REQUEST),
            ("sub%2Finner.txt", StatusCode::BAD_REQUEST),
            ("..\\secret.txt", StatusCode::BAD_REQUEST),
            ("%5c..%5csecret.txt", StatusCode::BAD_REQUEST),
            ("..%5Csecret.txt", StatusCode::BAD_REQUEST),
            ("ok.txt%00.png", StatusCode::BAD_REQUEST),
            ("%00", StatusCode::BAD_REQUEST),
            ("%zz", StatusCode::BAD_REQUEST),
            ("%e9", StatusCode::BAD_REQUEST),
            ("/etc/passwd", StatusCode::NOT_FOUND),
            ("//etc/passwd", StatusCode::NOT_FOUND),
            ("out.txt", StatusCode::NOT_FOUND),
            ("rel_out.txt", StatusCode::NOT_FOUND),
            ("outdir/secret.txt", StatusCode::NOT_FOUND),
            ("missing.txt", StatusCode::NOT_FOUND),
            ("ok.txt/", StatusCode::NOT_FOUND),
            ("ok.txt/x", StatusCode::NOT_FOUND),
            ("sub", StatusCode::NOT_FOUND),
        ] {
            let (r, body) = get(&srv, rel, &[]).await;
            assert_eq!(r.status, status, "{rel} follow={follow}");
            assert!(
                !body.windows(SECRET.len()).any(|w| w == SECRET),
                "{rel} leaked"
            );
        }
        let inside = if follow {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(
            get(&srv, "alias.txt", &[]).await.0.status,
            inside,
            "follow={follow}"
        );
        assert_eq!(
            get(&srv, "sublink/inner.txt", &[]).await.0.status,
            inside,
            "follow={follow}"
        );
        // leaves the root and comes back: the target itself is inside
        assert_eq!(
            get(&srv, "outdir/root/ok.txt", &[]).await.0.status,
            inside,
            "follow={follow}"
        );
        assert_eq!(get(&srv, "./ok.txt", &[]).await.1, b"ok");
    }
    let srv = fx.server(|o| o.follow_symlinks = true);
    assert_eq!(get(&srv, "alias.txt", &[]).await.1, b"ok");
    assert_eq!(get(&srv, "sublink/inner.txt", &[]).await.1, b"inner");
}

#[cfg(unix)]
#[tokio::test]
async fn only_regular_files() {
    let fx = Fixture::new();
    let fifo = fx.root.join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("cstring");
    // SAFETY: valid NUL-terminated path.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0);
    let srv = fx.server(|o| o.index = Some("index.html".into()));
    assert_eq!(get(&srv, "pipe", &[]).await.0.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn head_and_methods() {
    let fx = Fixture::new();
    fx.write("a.txt", b"hello");
    let srv = fx.server(|_| {});
    let (g, _) = get(&srv, "a.txt", &[]).await;
    let h = srv.respond(&Method::HEAD, "a.txt", &HeaderMap::new()).await;
    assert_eq!(h.status, StatusCode::OK);
    assert!(matches!(h.body, Body::Empty));
    assert_eq!(h.headers, g.headers);
    assert_eq!(hdr(&h, "content-length"), Some("5"));
    let h = srv
        .respond(&Method::HEAD, "missing", &HeaderMap::new())
        .await;
    assert_eq!(h.status, StatusCode::NOT_FOUND);
    assert!(matches!(h.body, Body::Empty));

    for m in [
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
    ] {
        let (r, _) = req(&srv, m.clone(), "a.txt", &[]).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(hdr(&r, "allow"), Some("GET, HEAD"));
    }
}

#[tokio::test]
async fn directories_and_index() {
    let fx = Fixture::new();
    fx.write("index.html", b"root index");
    fx.write("docs/index.html", b"docs index");
    fx.write("docs/index.html.gz", b"GZ");
    fx.write("empty/keep.txt", b"k");
    let srv = fx.server(|o| {
        o.index = Some("index.html".into());
        o.precompressed = true;
    });
    let (r, body) = get(&srv, "docs/", &[]).await;
    assert_eq!(
        (r.status, body.as_slice()),
        (StatusCode::OK, &b"docs index"[..])
    );
    assert_eq!(hdr(&r, "content-type"), Some("text/html; charset=utf-8"));
    let (r, body) = get(&srv, "docs/", &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        (hdr(&r, "content-encoding"), body.as_slice()),
        (Some("gzip"), &b"GZ"[..])
    );
    assert_eq!(get(&srv, "", &[]).await.1, b"root index");
    assert_eq!(get(&srv, "/", &[]).await.1, b"root index");
    let (r, body) = get(&srv, "docs", &[]).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(hdr(&r, "location"), Some("./docs/"));
    assert!(!body.is_empty());
    assert_eq!(hdr(&get(&srv, "a/../docs", &[]).await.0, "location"), None);
    assert_eq!(
        get(&srv, "empty/", &[]).await.0.status,
        StatusCode::NOT_FOUND
    );

    let no_index = fx.server(|_| {});
    assert_eq!(
        get(&no_index, "docs/", &[]).await.0.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&no_index, "docs", &[]).await.0.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&no_index, "", &[]).await.0.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn large_sparse_file_streams_in_bounded_chunks() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let fx = Fixture::new();
    let p = fx.root.join("big.bin");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&p).expect("create");
        f.set_len(SIZE).expect("sparse");
        f.write_all(b"HEAD").expect("write");
        f.seek(SeekFrom::Start(SIZE - 4)).expect("seek");
        f.write_all(b"TAIL").expect("write");
    }
    let srv = fx.server(|_| {});
    let r = srv
        .respond(&Method::GET, "big.bin", &HeaderMap::new())
        .await;
    assert_eq!(hdr(&r, "content-length"), Some(SIZE.to_string().as_str()));
    let Body::File(mut body) = r.body else {
        panic!("expected a file body")
    };
    assert_eq!((body.offset(), body.len()), (0, SIZE));
    let (mut total, mut chunks, mut first, mut last) = (0u64, 0u32, None, Vec::new());
    while let Some(chunk) = read_chunk(&mut body, DEFAULT_CHUNK_SIZE)
        .await
        .expect("chunk")
    {
        assert!(!chunk.is_empty() && chunk.len() <= DEFAULT_CHUNK_SIZE);
        first.get_or_insert_with(|| chunk.slice(..4));
        total += chunk.len() as u64;
        chunks += 1;
        last = chunk.to_vec();
    }
    assert_eq!(total, SIZE);
    assert_eq!(chunks, 1600);
    assert_eq!(first.as_deref(), Some(&b"HEAD"[..]));
    assert!(last.ends_with(b"TAIL"));
    assert_eq!(body.remaining(), 0);

    let (r, tail) = get(&srv, "big.bin", &[("range", "bytes=-4")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail, b"TAIL");
}

#[tokio::test]
async fn shrinking_file_is_an_error_not_a_short_body() {
    let fx = Fixture::new();
    // Larger than files::SMALL_FILE, so it streams from the open file.
    let p = fx.write("s.bin", &[7u8; 200_000]);
    let srv = fx.server(|_| {});
    let r = srv.respond(&Method::GET, "s.bin", &HeaderMap::new()).await;
    let Body::File(mut body) = r.body else {
        panic!("expected a file body")
    };
    fs::File::options()
        .write(true)
        .open(&p)
        .expect("open")
        .set_len(100)
        .expect("truncate");
    let mut err = None;
    loop {
        match read_chunk(&mut body, 4096).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::UnexpectedEof)
    );
}

#[test]
fn constructor_validation() {
    let fx = Fixture::new();
    assert!(matches!(
        FileServer::new(FileOptions::new(fx.root.join("nope"))),
        Err(FilesError::Root { .. })
    ));
    let file = fx.write("f.txt", b"x");
    assert!(matches!(
        FileServer::new(FileOptions::new(file)),
        Err(FilesError::NotADirectory(_))
    ));
    for bad in ["../index.html", "a/index.html", "", "..", "%2e"] {
        let mut o = FileOptions::new(&fx.root);
        o.index = Some(bad.into());
        assert!(
            matches!(FileServer::new(o), Err(FilesError::InvalidIndex(_))),
            "{bad}"
        );
    }
    let srv = FileServer::new(FileOptions::new(&fx.root)).expect("ok");
    assert_eq!(
        srv.options().root,
        fs::canonicalize(&fx.root).expect("canon")
    );
}

#[cfg(unix)]
#[tokio::test]
async fn permission_denied_is_403() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return; // root bypasses file permissions
    }
    let fx = Fixture::new();
    let p = fx.write("locked.txt", b"x");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o000)).expect("chmod");
    let srv = fx.server(|_| {});
    assert_eq!(
        get(&srv, "locked.txt", &[]).await.0.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn small_files_come_from_memory_and_stay_fresh() {
    let fx = Fixture::new();
    let p = fx.write("a.css", b"version-one");
    set_mtime(&p, 1_700_000_000);
    let srv = fx.server(|o| o.precompressed = true);
    let first = srv.respond(&Method::GET, "a.css", &HeaderMap::new()).await;
    assert!(matches!(&first.body, Body::Bytes(b) if b.as_ref() == b"version-one"));
    // Hits answer the same, ranges included.
    let (again, body) = get(&srv, "a.css", &[]).await;
    assert_eq!(body, b"version-one");
    assert_eq!(again.headers, first.headers);
    let (r, body) = get(&srv, "a.css", &[("range", "bytes=-3")]).await;
    assert_eq!(
        (r.status, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &b"one"[..])
    );
    // Same size, same mtime, new content: still seen at once (ctime moves).
    std::thread::sleep(Duration::from_millis(10));
    fs::write(&p, b"version-two").expect("rewrite");
    set_mtime(&p, 1_700_000_000);
    assert_eq!(get(&srv, "a.css", &[]).await.1, b"version-two");
    // Replaced by a new file (new inode), then removed.
    let tmp = fx.root.join("a.css.tmp");
    fs::write(&tmp, b"version-3").expect("write");
    fs::rename(&tmp, &p).expect("rename");
    assert_eq!(get(&srv, "a.css", &[]).await.1, b"version-3");
    fs::remove_file(&p).expect("rm");
    assert_eq!(
        get(&srv, "a.css", &[]).await.0.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn cache_ttl_bounds_staleness_of_resolution() {
    let fx = Fixture::new();
    fx.write("b.js", b"plain");
    let gz = [("accept-encoding", "gzip")];
    let srv = fx.server(|o| {
        o.precompressed = true;
        o.cache_ttl = Duration::from_millis(200);
    });
    assert_eq!(get(&srv, "b.js", &gz).await.1, b"plain");
    // A sidecar that appears is used once the entry expires.
    fx.write("b.js.gz", b"GZ");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (r, body) = get(&srv, "b.js", &gz).await;
    assert_eq!(
        (hdr(&r, "content-encoding"), body.as_slice()),
        (Some("gzip"), &b"GZ"[..])
    );
    // Without a cache it is used at once.
    let uncached = fx.server(|o| {
        o.precompressed = true;
        o.cache_ttl = Duration::ZERO;
    });
    fx.write("c.js", b"plain");
    assert_eq!(get(&uncached, "c.js", &gz).await.1, b"plain");
    fx.write("c.js.gz", b"GZ");
    assert_eq!(get(&uncached, "c.js", &gz).await.1, b"GZ");
}

#[cfg(unix)]
#[tokio::test]
async fn cached_file_swapped_for_a_symlink_is_not_served() {
    use std::os::unix::fs::symlink;
    let fx = Fixture::new();
    let p = fx.write("swap.txt", b"inside");
    fx.write("dir/in.txt", b"in-dir");
    for follow in [false, true] {
        let srv = fx.server(|o| {
            o.follow_symlinks = follow;
            o.cache_ttl = Duration::from_secs(3600);
        });
        fs::write(&p, b"inside").expect("write");
        assert_eq!(get(&srv, "swap.txt", &[]).await.1, b"inside");
        assert_eq!(get(&srv, "dir/in.txt", &[]).await.1, b"in-dir");
        // The file, then a directory on the path, become links out of the root.
        fs::remove_file(&p).expect("rm");
        symlink(fx.outside().join("secret.txt"), &p).expect("symlink");
        let moved = fx.outside().join("moved-dir");
        fs::rename(fx.root.join("dir"), &moved).expect("mv dir");
        fs::create_dir(fx.outside().join("evil")).expect("mkdir");
        fs::write(fx.outside().join("evil/in.txt"), SECRET).expect("write");
        symlink(fx.outside().join("evil"), fx.root.join("dir")).expect("symlink");
        for rel in ["swap.txt", "dir/in.txt"] {
            let (r, body) = get(&srv, rel, &[]).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{rel} follow={follow}");
            assert!(!body.windows(SECRET.len()).any(|w| w == SECRET));
        }
        // restore for the next round
        fs::remove_file(&p).expect("rm link");
        fs::remove_file(fx.root.join("dir")).expect("rm link");
        fs::remove_dir_all(fx.outside().join("evil")).expect("rm evil");
        fs::rename(&moved, fx.root.join("dir")).expect("mv back");
    }
}

/// Larger than `files::SMALL_FILE`, so it streams from the open file.
const LARGE: usize = 200_000;

/// Waits (bounded) until `cond` holds; assertions are made on state after.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A server bounded to `limit` open files, and the shared bound.
fn bounded(fx: &Fixture, limit: usize) -> (FileServer, OpenFiles) {
    let open = OpenFiles::new(limit);
    let srv = fx.server(|o| {
        o.open_files = Some(open.clone());
        o.cache_ttl = Duration::from_secs(3600);
    });
    (srv, open)
}

#[tokio::test]
async fn open_files_limit_makes_lookups_wait_for_streamed_bodies() {
    let fx = Fixture::new();
    fx.write("a.bin", &[1u8; LARGE]);
    fx.write("b.bin", &[2u8; LARGE + 1]);
    let (srv, open) = bounded(&fx, 1);
    assert_eq!((open.limit(), open.in_use(), open.waiting()), (1, 0, 0));

    let a = srv.respond(&Method::GET, "a.bin", &HeaderMap::new()).await;
    let Body::File(mut a_body) = a.body else {
        panic!("expected a file body")
    };
    assert_eq!(open.in_use(), 1);
    let chunk = read_chunk(&mut a_body, 4096).await.expect("read");
    assert_eq!(chunk.map(|c| c.len()), Some(4096));

    let other = srv.clone();
    let b = tokio::spawn(async move {
        other
            .respond(&Method::GET, "b.bin", &HeaderMap::new())
            .await
    });
    until("B to wait for a permit", || open.waiting() == 1).await;
    assert_eq!(open.in_use(), 1);
    assert!(!b.is_finished(), "B answered while A held the only permit");

    drop(a_body);
    let mut b = b.await.expect("join");
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(hdr(&b, "content-length"), Some("200001"));
    assert!(matches!(b.body, Body::File(_)));
    assert_eq!((open.in_use(), open.waiting()), (1, 0));
    let body = collect(std::mem::replace(&mut b.body, Body::Empty)).await;
    assert_eq!(body, vec![2u8; LARGE + 1]);
    assert_eq!((open.in_use(), open.waiting()), (0, 0));
}

#[tokio::test]
async fn cache_hits_need_no_open_files_permit() {
    let fx = Fixture::new();
    fx.write("a.css", b"body{}");
    fx.write("b.css", b"b{}");
    fx.write("big.bin", &[0u8; LARGE]);
    let (srv, open) = bounded(&fx, 1);
    // Warm the cache: this lookup opens the file, so it takes the permit.
    assert_eq!(get(&srv, "a.css", &[]).await.1, b"body{}");
    assert_eq!(open.in_use(), 0);

    let big = srv
        .respond(&Method::GET, "big.bin", &HeaderMap::new())
        .await;
    assert!(matches!(big.body, Body::File(_)));
    assert_eq!(open.in_use(), 1);
    for _ in 0..50 {
        let (r, body) = tokio::time::timeout(Duration::from_secs(10), get(&srv, "a.css", &[]))
            .await
            .expect("a cache hit must not wait for a permit");
        assert_eq!(
            (r.status, body.as_slice()),
            (StatusCode::OK, &b"body{}"[..])
        );
    }
    // Requests refused before any lookup need none either.
    assert_eq!(
        get(&srv, "a%2fb.css", &[]).await.0.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        req(&srv, Method::POST, "a.css", &[]).await.0.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!((open.in_use(), open.waiting()), (1, 0));

    // An uncached file does wait; giving up on it leaves no waiter behind.
    let other = srv.clone();
    let miss = tokio::spawn(async move { get(&other, "b.css", &[]).await.1 });
    until("the miss to wait", || open.waiting() == 1).await;
    miss.abort();
    assert!(miss.await.expect_err("aborted").is_cancelled());
    assert_eq!((open.in_use(), open.waiting()), (1, 0));

    drop(big);
    assert_eq!(open.in_use(), 0);
    assert_eq!(get(&srv, "b.css", &[]).await.1, b"b{}");
    assert_eq!(open.in_use(), 0);
}

#[tokio::test]
async fn answers_without_a_streamed_body_release_their_permit() {
    let fx = Fixture::new();
    fx.write("big.bin", &[5u8; LARGE]);
    fx.write("dir/index.html", b"<p>");
    let open = OpenFiles::new(1);
    let srv = fx.server(|o| {
        o.open_files = Some(open.clone());
        o.index = Some("index.html".into());
    });
    let (r, body) = get(&srv, "big.bin", &[]).await;
    assert_eq!(body.len(), LARGE);
    let etag = hdr(&r, "etag").expect("etag").to_owned();
    type Case<'a> = (Method, &'a str, &'a [(&'a str, &'a str)], StatusCode);
    let cases: [Case; 6] = [
        (Method::HEAD, "big.bin", &[], StatusCode::OK),
        (
            Method::GET,
            "big.bin",
            &[("if-none-match", &etag)],
            StatusCode::NOT_MODIFIED,
        ),
        (
            Method::GET,
            "big.bin",
            &[("if-match", "\"other\"")],
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            Method::GET,
            "big.bin",
            &[("range", "bytes=999999-")],
            StatusCode::RANGE_NOT_SATISFIABLE,
        ),
        (Method::GET, "missing.bin", &[], StatusCode::NOT_FOUND),
        (Method::GET, "dir", &[], StatusCode::MOVED_PERMANENTLY),
    ];
    for (method, rel, h, status) in cases {
        let (r, _) = tokio::time::timeout(Duration::from_secs(10), req(&srv, method, rel, h))
            .await
            .expect("a leaked permit would make this wait");
        assert_eq!(r.status, status, "{rel} {h:?}");
        assert_eq!(open.in_use(), 0, "{rel} {h:?}");
    }
    assert_eq!(get(&srv, "dir/", &[]).await.1, b"<p>");
    assert_eq!(open.in_use(), 0);
}

/// Shares one bound between two servers, and counts the process's real
/// descriptors into the root while more bodies are requested than allowed.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn open_descriptors_stay_within_the_limit() {
    let fx = Fixture::new();
    for i in 0..6u8 {
        fx.write(&format!("big{i}.bin"), &vec![i; LARGE]);
    }
    let (srv, open) = bounded(&fx, 2);
    let twin = fx.server(|o| o.open_files = Some(open.clone()));
    let root = srv.options().root.clone();
    let open_fds = || {
        fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(&root))
            .count()
    };
    assert_eq!(open_fds(), 0);

    let mut tasks: Vec<_> = (0..6u8)
        .map(|i| {
            let srv = if i % 2 == 0 {
                srv.clone()
            } else {
                twin.clone()
            };
            tokio::spawn(async move {
                let rel = format!("big{i}.bin");
                (i, srv.respond(&Method::GET, &rel, &HeaderMap::new()).await)
            })
        })
        .collect();
    // Two replies hold their bodies (inside the finished tasks); four wait.
    until("two bodies and four waiters", || {
        open.waiting() == 4 && tasks.iter().filter(|t| t.is_finished()).count() == 2
    })
    .await;
    assert_eq!(open.in_use(), 2);
    assert_eq!(open_fds(), 2);

    while !tasks.is_empty() {
        until("a reply", || tasks.iter().any(|t| t.is_finished())).await;
        let fds = open_fds();
        assert!(fds <= 2, "{fds} files open with a limit of 2");
        assert!(open.in_use() <= 2);
        let done = tasks
            .iter()
            .position(|t| t.is_finished())
            .expect("finished");
        let (i, reply) = tasks.swap_remove(done).await.expect("join");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(collect(reply.body).await, vec![i; LARGE]);
    }
    assert_eq!((open_fds(), open.in_use(), open.waiting()), (0, 0, 0));
}
