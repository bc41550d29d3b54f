//! `EtcdCerts` against a real 3-member etcd: sealing at rest, the order
//! lock (and a dead holder's lease running out), the watch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use acme::{ChallengeId, SharedCerts, SharedError, SharedEvent};
use cluster::{Cluster, EtcdCerts};
use e2e::etcd::{etcd_or_skip, EtcdCluster};

const SECRET: [u8; 32] = [42; 32];
const PEM: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

fn settings(etcd: &EtcdCluster) -> routes::config::Cluster {
    routes::config::Cluster {
        endpoints: etcd.endpoints(),
        prefix: "/t/".into(),
        node: None,
        auth: None,
        tls: None,
        secret_key: None,
        apply_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
    }
}

fn store(etcd: &EtcdCluster, node: &str, secret: Option<[u8; 32]>) -> EtcdCerts {
    EtcdCerts::new(
        Arc::new(Cluster::new(settings(etcd), node.to_string())),
        secret,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_at_rest_locks_in_line_and_dead_holders_expire() {
    if !etcd_or_skip("sealed_at_rest_locks_in_line_and_dead_holders_expire") {
        return;
    }
    let etcd = EtcdCluster::start(3).await.expect("etcd");
    let a = store(&etcd, "a", Some(SECRET));
    let b = store(&etcd, "b", Some(SECRET));

    // The watch: a resync, then what another node stores.
    let mut events = b.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("resync in time");
    assert_eq!(first, Some(SharedEvent::Up));

    // Sealed at rest, opened by any node with the key, refused without it.
    a.put_cert("a.test-x", PEM).await.expect("put cert");
    assert_eq!(
        b.get_cert("a.test-x").await.expect("get"),
        Some(PEM.to_vec())
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(SharedEvent::Cert { id, pem }) = events.recv().await {
                return (id, pem);
            }
        }
    })
    .await
    .expect("cert event");
    assert_eq!(seen, ("a.test-x".to_string(), PEM.to_vec()));
    let key1 = a.put_account("acc", b"first").await.expect("account");
    let key2 = b.put_account("acc", b"second").await.expect("account");
    assert_eq!(
        (key1.as_slice(), key2.as_slice()),
        (&b"first"[..], &b"first"[..])
    );
    let plain = store(&etcd, "p", None);
    assert!(matches!(
        plain.put_cert("x", PEM).await,
        Err(SharedError::NoSecretKey)
    ));
    let wrong = store(&etcd, "w", Some([1; 32]));
    assert!(matches!(
        wrong.get_cert("a.test-x").await,
        Err(SharedError::Corrupt { .. })
    ));
    for (key, value) in etcd.dump("/t/").expect("dump") {
        let text = String::from_utf8_lossy(&value);
        assert!(!text.contains("PRIVATE KEY"), "{key} holds a key in clear");
        assert!(!value.windows(16).any(|w| PEM[28..44] == *w), "{key}");
    }

    // The lock: one holder, the next in line gets it when it is released.
    let held = a.lock("a.test-x").await.expect("lock a");
    let challenge = ChallengeId::Http01("tok".into());
    a.put_challenge(&held, &challenge, "tok.thumb")
        .await
        .expect("challenge");
    assert_eq!(
        b.get_challenge(&challenge).await.expect("read"),
        Some("tok.thumb".into())
    );
    let waiting = tokio::spawn(async move { b.lock("a.test-x").await.map(|l| (b, l)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "b must wait while a holds the lock");
    let released = Instant::now();
    drop(held);
    let (b, held_b) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("b's turn in time")
        .expect("join")
        .expect("lock b");
    eprintln!("hand-over after release: {:?}", released.elapsed());
    // The challenge lived on a's lease: gone with it.
    assert_eq!(b.get_challenge(&challenge).await.expect("read"), None);
    drop(held_b);

    // A dead holder: its process stops keeping the lease alive (here its
    // runtime goes away without releasing anything); the next in line gets
    // the lock once the lease runs out.
    let endpoints = settings(&etcd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let dead = EtcdCerts::new(
                Arc::new(Cluster::new(endpoints, "dead".into())),
                Some(SECRET),
            );
            let lock = dead.lock("a.test-x").await.expect("dead's lock");
            std::mem::forget(lock);
            let _ = tx.send(());
        });
        rt.shutdown_background();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("dead node held the lock");
    let died = Instant::now();
    let held_c = tokio::time::timeout(Duration::from_secs(15), a.lock("a.test-x"))
        .await
        .expect("takeover within 15 s")
        .expect("lock after takeover");
    let takeover = died.elapsed();
    eprintln!("lock takeover after a dead holder: {takeover:?}");
    assert!(
        takeover >= Duration::from_secs(4) && takeover < Duration::from_secs(9),
        "{takeover:?}"
    );
    drop(held_c);
}
