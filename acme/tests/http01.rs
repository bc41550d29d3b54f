//! HTTP-01 against real Pebble: fallback while pending, issuance, a site
//! added by `replace_specs`, private cache files, restart from cache with the
//! CA down, and a CA that is down at first start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use acme::{CertSource, CertSpec, CertStore, Challenge};
use common::*;
use e2e::pebble::{pebble_or_skip, Pebble, PebbleOptions};
use tokio::net::TcpListener;

fn acme_spec(name: &str, hosts: &[&str]) -> CertSpec {
    CertSpec {
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        source: CertSource::Acme,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_new_site_and_restart_from_cache() {
    if !pebble_or_skip("http01_issuance_new_site_and_restart_from_cache") {
        return;
    }
    init_tracing();
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_port = plain.local_addr().expect("addr").port();
    let mut pebble = Pebble::start_new(PebbleOptions {
        http_port,
        tls_port: e2e::free_port(),
        validity_secs: None,
    })
    .await
    .expect("pebble");
    let state = tempfile::tempdir().expect("tempdir");
    let settings = settings(&pebble, state.path(), Challenge::Http01);
    let hosts = ["a.duotone.test", "www.a.duotone.test"];
    let store =
        CertStore::new(Some(settings.clone()), vec![acme_spec("a", &hosts)]).expect("store");
    serve_http01(plain, store.clone());
    let tls = serve_tls(&store).await;

    // Before any order: the self-signed fallback, never a failed handshake.
    let peer = handshake(tls, Some("a.duotone.test"), None, &[])
        .await
        .expect("fallback handshake");
    assert_eq!(peer.meta().issuer, "Duotone self-signed");
    assert_eq!(source_of(&store, "a"), Some("self-signed"));

    let started = Instant::now();
    let run = tokio::spawn(store.clone().run());
    poll(Duration::from_secs(40), || {
        (source_of(&store, "a") == Some("acme")).then_some(())
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
        "HTTP-01 issuance against Pebble took {:?}",
        started.elapsed()
    );

    let roots = pebble.root_store().expect("root");
    for host in hosts {
        let peer = handshake(tls, Some(host), Some(roots.clone()), &[b"h2", b"http/1.1"])
            .await
            .unwrap_or_else(|e| panic!("verified handshake for {host}: {e}"));
        let mut sans = peer.meta().sans;
        sans.sort();
        assert_eq!(sans, vec!["a.duotone.test", "www.a.duotone.test"]);
        assert_eq!(peer.alpn.as_deref(), Some(&b"h2"[..]));
    }
    let info = store.certificates().remove(0);
    assert_eq!(
        (info.source, info.configured, info.renewals),
        ("acme", "acme", 1)
    );
    assert!(
        info.not_after > info.not_before && !info.issuer.is_empty(),
        "{info:?}"
    );

    // Reload with a new site: it gets its own certificate without restart.
    store
        .replace_specs(vec![
            acme_spec("a", &hosts),
            acme_spec("b", &["b.duotone.test"]),
        ])
        .expect("replace");
    assert_eq!(
        source_of(&store, "a"),
        Some("acme"),
        "unchanged spec keeps its cert"
    );
    poll(Duration::from_secs(40), || {
        (source_of(&store, "b") == Some("acme")).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no certificate for b: {:?}", store.certificates()));
    let peer = handshake(tls, Some("b.duotone.test"), Some(roots.clone()), &[])
        .await
        .expect("b");
    assert_eq!(peer.meta().sans, vec!["b.duotone.test"]);

    // Cache files hold private keys: 0600.
    for f in std::fs::read_dir(state.path().join("acme")).expect("cache dir") {
        let f = f.expect("entry");
        let mode = f.metadata().expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.path().display());
    }

    // Restart with the CA down: the cached certificate is served at once.
    let served = store.cert_for(Some("a.duotone.test")).cert[0].to_vec();
    run.abort();
    pebble.stop();
    let again = CertStore::new(
        Some(settings),
        vec![acme_spec("a", &hosts), acme_spec("b", &["b.duotone.test"])],
    )
    .expect("store from cache");
    assert_eq!(source_of(&again, "a"), Some("acme"));
    assert_eq!(
        again.cert_for(Some("www.a.duotone.test")).cert[0].to_vec(),
        served
    );
    let tls2 = serve_tls(&again).await;
    let _run2 = tokio::spawn(again.clone().run());
    let peer = handshake(tls2, Some("a.duotone.test"), Some(roots), &[])
        .await
        .expect("cached");
    assert_eq!(peer.leaf(), served.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_down_at_first_start_then_up() {
    if !pebble_or_skip("ca_down_at_first_start_then_up") {
        return;
    }
    init_tracing();
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_port = plain.local_addr().expect("addr").port();
    let mut pebble = Pebble::new(PebbleOptions {
        http_port,
        tls_port: e2e::free_port(),
        validity_secs: None,
    })
    .expect("pebble");
    let state = tempfile::tempdir().expect("tempdir");
    let store = CertStore::new(
        Some(settings(&pebble, state.path(), Challenge::Http01)),
        vec![acme_spec("down", &["down.duotone.test"])],
    )
    .expect("store with the CA down");
    serve_http01(plain, store.clone());
    let tls = serve_tls(&store).await;
    let _run = tokio::spawn(store.clone().run());

    let failed = poll(Duration::from_secs(10), || {
        store.certificates().into_iter().find(|c| c.failures > 0)
    })
    .await
    .expect("the failed order is counted");
    assert!(failed.last_error.is_some(), "{failed:?}");
    let peer = handshake(tls, Some("down.duotone.test"), None, &[])
        .await
        .expect("fallback");
    assert_eq!(peer.meta().issuer, "Duotone self-signed");
    assert_eq!(peer.meta().sans, vec!["down.duotone.test"]);

    pebble.start().await.expect("pebble");
    let started = Instant::now();
    poll(Duration::from_secs(45), || {
        (source_of(&store, "down") == Some("acme")).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no certificate: {:?}\n{}",
            store.certificates(),
            pebble.log()
        )
    });
    eprintln!("certificate {:?} after the CA came up", started.elapsed());
    let roots = pebble.root_store().expect("root");
    let peer = handshake(tls, Some("down.duotone.test"), Some(roots), &[])
        .await
        .expect("verified");
    assert_eq!(peer.meta().sans, vec!["down.duotone.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificate_is_renewed_without_restart() {
    if !pebble_or_skip("short_lived_certificate_is_renewed_without_restart") {
        return;
    }
    init_tracing();
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_port = plain.local_addr().expect("addr").port();
    let pebble = Pebble::start_new(PebbleOptions {
        http_port,
        tls_port: e2e::free_port(),
        validity_secs: Some(12),
    })
    .await
    .expect("pebble");
    let state = tempfile::tempdir().expect("tempdir");
    let store = CertStore::new(
        Some(settings(&pebble, state.path(), Challenge::Http01)),
        vec![acme_spec("renew", &["renew.duotone.test"])],
    )
    .expect("store");
    serve_http01(plain, store.clone());
    let tls = serve_tls(&store).await;
    let _run = tokio::spawn(store.clone().run());
    let renewals = |n: u64| {
        let store = store.clone();
        move || store.certificates().into_iter().find(|c| c.renewals >= n)
    };
    let first = poll(Duration::from_secs(40), renewals(1))
        .await
        .unwrap_or_else(|| panic!("no certificate: {:?}", store.certificates()));
    let first_leaf = store.cert_for(Some("renew.duotone.test")).cert[0].to_vec();
    assert!(first.not_after - first.not_before <= 13, "{first:?}");

    // rustls-acme renews at two thirds of the validity.
    let second = poll(Duration::from_secs(40), renewals(2))
        .await
        .unwrap_or_else(|| panic!("no renewal: {:?}", store.certificates()));
    assert!(second.not_after > first.not_after, "{second:?}");
    let roots = pebble.root_store().expect("root");
    let peer = handshake(tls, Some("renew.duotone.test"), Some(roots), &[])
        .await
        .expect("renewed");
    assert_ne!(peer.leaf(), first_leaf.as_slice());
    assert_eq!(peer.meta().not_after, second.not_after);
}
