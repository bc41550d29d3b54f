//! TLS-ALPN-01 against real Pebble through a real Pingora server whose HTTPS
//! listener comes from `acme::listener::add_https` (pre-TLS hook answering
//! `acme-tls/1`, normal connections untouched, h2 + http/1.1).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use acme::{CertSource, CertSpec, CertStore, Challenge};
use async_trait::async_trait;
use common::*;
use e2e::pebble::{pebble_or_skip, Pebble, PebbleOptions};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Hello;

#[async_trait]
impl ServeHttp for Hello {
    async fn response(&self, _: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut resp = http::Response::new(b"hello".to_vec());
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(5));
        resp
    }
}

/// Starts a Pingora server with one HTTPS listener on `port` in a thread
/// (it lives until the test process exits).
fn start_pingora(port: u16, store: Arc<CertStore>) {
    let mut server = Server::new(None).expect("pingora server");
    server.bootstrap();
    let mut svc = Service::new("https".to_string(), Hello);
    acme::listener::add_https(&mut svc, &format!("127.0.0.1:{port}"), store).expect("add_https");
    server.add_service(svc);
    std::thread::spawn(move || server.run(RunArgs::default()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issuance_through_pingora() {
    if !pebble_or_skip("tls_alpn01_issuance_through_pingora") {
        return;
    }
    init_tracing();
    let port = e2e::free_port();
    let pebble = Pebble::start_new(PebbleOptions {
        http_port: e2e::free_port(),
        tls_port: port,
        validity_secs: None,
    })
    .await
    .expect("pebble");
    let state = tempfile::tempdir().expect("tempdir");
    let hosts = vec![
        "alpn.duotone.test".to_string(),
        "www.alpn.duotone.test".to_string(),
    ];
    let store = CertStore::new(
        Some(settings(&pebble, state.path(), Challenge::TlsAlpn01)),
        vec![CertSpec {
            name: "alpn".into(),
            hosts,
            source: CertSource::Acme,
        }],
    )
    .expect("store");
    start_pingora(port, store.clone());
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");

    // The listener is up and serves the fallback over h2 before any order.
    let peer = poll_async(Duration::from_secs(10), || {
        handshake(addr, Some("alpn.duotone.test"), None, &[b"h2", b"http/1.1"])
    })
    .await
    .expect("pingora listener");
    assert_eq!(peer.meta().issuer, "Duotone self-signed");
    assert_eq!(peer.alpn.as_deref(), Some(&b"h2"[..]));

    let started = Instant::now();
    let _run = tokio::spawn(store.clone().run());
    poll(Duration::from_secs(40), || {
        (source_of(&store, "alpn") == Some("acme")).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no certificate: {:?}\n{}",
            store.certificates(),
            pebble.log()
        )
    });
    eprintln!(
        "TLS-ALPN-01 issuance against Pebble took {:?}",
        started.elapsed()
    );

    let roots = pebble.root_store().expect("root");
    for host in ["alpn.duotone.test", "www.alpn.duotone.test"] {
        let peer = handshake(addr, Some(host), Some(roots.clone()), &[b"h2", b"http/1.1"])
            .await
            .unwrap_or_else(|e| panic!("verified handshake for {host}: {e}"));
        let mut sans = peer.meta().sans;
        sans.sort();
        assert_eq!(sans, vec!["alpn.duotone.test", "www.alpn.duotone.test"]);
        assert_eq!(peer.alpn.as_deref(), Some(&b"h2"[..]));
    }

    // A full HTTP/1.1 exchange passes through the hook untouched.
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("alpn.duotone.test".try_into().expect("name"), tcp)
        .await
        .expect("handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: alpn.duotone.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut resp = String::new();
    tls.read_to_string(&mut resp).await.ok();
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("hello"),
        "{resp}"
    );
}

/// Polls an async fallible operation until it succeeds or `limit` passes.
async fn poll_async<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
