//! Static certificates from files, reload on change without dropping
//! connections, self-signed specs, unknown / missing SNI.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use acme::{CertSource, CertSpec, CertStore};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA and a function writing leaves signed by it.
struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new() -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "Static Test CA");
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("ca");
        TestCa { cert, key }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("root");
        roots
    }

    /// Writes a leaf for `hosts`; returns its DER.
    fn write_leaf(&self, hosts: &[&str], cert: &Path, key: &Path) -> Vec<u8> {
        let p = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .expect("params");
        let k = KeyPair::generate().expect("key");
        let c = p.signed_by(&k, &self.cert, &self.key).expect("leaf");
        std::fs::write(key, k.serialize_pem()).expect("write key");
        std::fs::write(cert, c.pem() + &self.cert.pem()).expect("write cert");
        c.der().to_vec()
    }
}

fn leaf(store: &CertStore, sni: Option<&str>) -> Vec<u8> {
    store.cert_for(sni).cert[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_cert_is_served_and_reloaded_without_dropping_connections() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let ca = TestCa::new();
    let first = ca.write_leaf(&["static.test", "*.static.test"], &cert, &key);
    let specs = vec![
        CertSpec {
            name: "static".into(),
            hosts: vec!["static.test".into(), "*.static.test".into()],
            source: CertSource::Static {
                cert: cert.clone(),
                key: key.clone(),
            },
        },
        CertSpec {
            name: "internal".into(),
            hosts: vec!["internal.test".into()],
            source: CertSource::SelfSigned,
        },
    ];
    let store = CertStore::new(None, specs).expect("store");
    store.set_static_poll_interval(Duration::from_millis(50));
    let _run = tokio::spawn(store.clone().run());
    let addr = serve_tls(&store).await;

    for sni in ["static.test", "www.static.test", "STATIC.test"] {
        let peer = handshake(addr, Some(sni), Some(ca.roots()), &[])
            .await
            .expect("verified");
        assert_eq!(peer.leaf(), first.as_slice(), "{sni}");
    }
    let info = store.certificates();
    assert_eq!(
        (info[0].source, info[0].issuer.as_str()),
        ("static", "Static Test CA")
    );
    assert_eq!(
        (info[1].source, info[1].configured),
        ("self-signed", "self-signed")
    );

    // A connection opened before the swap.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(ca.roots())
    .with_no_client_auth();
    config.alpn_protocols.clear();
    let mut old_conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("static.test".try_into().expect("name"), tcp)
        .await
        .expect("old connection");

    let second = ca.write_leaf(&["static.test", "*.static.test"], &cert, &key);
    assert_ne!(first, second);
    poll(Duration::from_secs(5), || {
        (leaf(&store, Some("static.test")) == second).then_some(())
    })
    .await
    .expect("reloaded certificate");
    let peer = handshake(addr, Some("a.static.test"), Some(ca.roots()), &[])
        .await
        .expect("new");
    assert_eq!(peer.leaf(), second.as_slice());

    old_conn
        .write_all(b"still here")
        .await
        .expect("write on old connection");
    let mut buf = [0u8; 10];
    old_conn
        .read_exact(&mut buf)
        .await
        .expect("read on old connection");
    assert_eq!(&buf, b"still here");

    // A broken rewrite keeps the last good certificate.
    std::fs::write(&key, "garbage").expect("write");
    assert_eq!(store.reload_static(), 0);
    assert_eq!(leaf(&store, Some("static.test")), second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_sni_gets_the_default_certificate() {
    init_tracing();
    let spec = |name: &str| CertSpec {
        name: name.into(),
        hosts: vec![format!("{name}.test")],
        source: CertSource::SelfSigned,
    };
    let store = CertStore::new(None, vec![spec("first"), spec("second")]).expect("store");
    let addr = serve_tls(&store).await;
    let default = leaf(&store, Some("first.test"));
    assert_ne!(leaf(&store, Some("second.test")), default);
    for sni in [Some("nope.test"), Some("localhost"), None] {
        let peer = handshake(addr, sni, None, &[b"h2"])
            .await
            .expect("handshake");
        assert_eq!(peer.leaf(), default.as_slice(), "{sni:?}");
        assert_eq!(peer.alpn.as_deref(), Some(&b"h2"[..]));
    }

    // No specs at all: a generic self-signed certificate, still no failure.
    let empty = CertStore::new(None, vec![]).expect("empty store");
    let addr = serve_tls(&empty).await;
    let peer = handshake(addr, Some("anything.test"), None, &[])
        .await
        .expect("handshake");
    assert_eq!(peer.meta().sans, vec!["duotone.invalid"]);
}

#[test]
fn bad_specs_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = CertSpec {
        name: "m".into(),
        hosts: vec!["m.test".into()],
        source: CertSource::Static {
            cert: dir.path().join("no.pem"),
            key: dir.path().join("no.key"),
        },
    };
    assert!(CertStore::new(None, vec![missing]).is_err());
    let acme_without_settings = CertSpec {
        name: "a".into(),
        hosts: vec!["a.test".into()],
        source: CertSource::Acme,
    };
    assert!(CertStore::new(None, vec![acme_without_settings]).is_err());
    let dup = CertSpec {
        name: "d".into(),
        hosts: vec![],
        source: CertSource::SelfSigned,
    };
    assert!(CertStore::new(None, vec![dup.clone(), dup]).is_err());

    // A failed reload leaves the running specs alone.
    let ok = CertSpec {
        name: "ok".into(),
        hosts: vec!["ok.test".into()],
        source: CertSource::SelfSigned,
    };
    let store = CertStore::new(None, vec![ok]).expect("store");
    let bad = CertSpec {
        name: "bad".into(),
        hosts: vec!["bad.test".into()],
        source: CertSource::Static {
            cert: dir.path().join("no.pem"),
            key: dir.path().join("no.key"),
        },
    };
    assert!(store.replace_specs(vec![bad]).is_err());
    assert_eq!(store.certificates()[0].name, "ok");
}
