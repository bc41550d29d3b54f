//! The HTTPS listener as testssl.sh sees it: no HIGH or CRITICAL finding.
//!
//! The certificate is made like a public CA's (an EC P-256 leaf valid 90
//! days, signed by a root, with CRL and OCSP URIs), so that what testssl.sh
//! reports is about Duotone's TLS settings, not a throwaway certificate.
//! Skipped when testssl.sh is missing, unless `DUOTONE_REQUIRE_TESTSSL=1`
//! (as `./dev test` sets).

use e2e::proxy::Proxy;
use e2e::upstream::Upstream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A root (`ca.pem`) and a `localhost` leaf chained to it (`chain.pem`, `leaf.key`).
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut root = vec![
        "req",
        "-x509",
        "-days",
        "365",
        "-subj",
        "/CN=Duotone Test Root",
    ];
    root.extend(ec);
    root.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &root);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "leaf.key", "-out", "leaf.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         crlDistributionPoints=URI:http://127.0.0.1/root.crl\n\
         authorityInfoAccess=OCSP;URI:http://127.0.0.1/ocsp\n",
    )
    .expect("ext.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "90",
            "-extfile",
            "ext.cnf",
            "-out",
            "leaf.pem",
        ],
    );
    let chain = std::fs::read_to_string(dir.join("leaf.pem")).expect("leaf")
        + &std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    std::fs::write(dir.join("chain.pem"), chain).expect("chain");
}

fn testssl_available() -> bool {
    Command::new("testssl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testssl_finds_nothing_high_or_critical() {
    if !testssl_available() {
        assert!(
            std::env::var("DUOTONE_REQUIRE_TESTSSL").as_deref() != Ok("1"),
            "testssl.sh is required (apt-get install testssl.sh)"
        );
        eprintln!("SKIPPED: testssl.sh not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let app = Upstream::start("app").await;
    let d = dir.path().display();
    let p = Proxy::start(&format!(
        r#"
[server]
http = "{{http}}"
https = "{{https}}"
admin = "{{admin}}"
state_dir = "{{state}}"

[[sites]]
hosts = ["localhost"]
tls = {{ cert = "{d}/chain.pem", key = "{d}/leaf.key" }}
hsts = true
  [[sites.routes]]
  path = "/"
  service = "app"

[services.app]
colors.blue = ["{app}"]
"#,
        app = app.member()
    ))
    .await;
    let json = dir.path().join("testssl.json");
    let target = format!("https://localhost:{}", p.ports.https.port());
    let run = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new("testssl")
            .args(["--quiet", "--color", "0", "--warnings", "off"])
            .arg("--add-ca")
            .arg(dir.path().join("ca.pem"))
            .arg("--jsonfile")
            .arg(&json)
            .arg(&target)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("testssl.sh finished within 10 minutes")
    .expect("run testssl.sh");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no testssl.sh report ({e}):\n{}",
            String::from_utf8_lossy(&run.stdout)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl JSON");
    assert!(findings.len() > 20, "testssl.sh checked too little: {text}");
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl.sh findings:\n{}", bad.join("\n"));
    // What the findings above rest on: only TLS 1.2 and 1.3, server order.
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert!(
        finding("TLS1_1").starts_with("not offered"),
        "{}",
        finding("TLS1_1")
    );
    assert!(
        finding("TLS1_3").starts_with("offered"),
        "{}",
        finding("TLS1_3")
    );
    assert_eq!(finding("cert_chain_of_trust"), "passed.");
}
