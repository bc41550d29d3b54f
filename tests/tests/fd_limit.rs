//! The file limit, end to end: `duotone run` started with a soft
//! `RLIMIT_NOFILE` of 1024 raises it to the hard limit itself (read back
//! from `/proc/PID/limits` and the `duotone_open_files_limit` gauge), and
//! warns when that is below what the config needs (2 × max_connections +
//! max_open_files + 1024), at start and on a reload that changes the need.

use e2e::client::admin;
use e2e::proxy::{api_config, Proxy};
use std::time::Duration;

const TOKEN: &str = "nofile-test-token-0123456789";
const WARNING: &str = "this config needs (2 × max_connections";

/// The child's hard limit: 4096, or the test's own hard limit if lower
/// (an unprivileged process can lower its hard limit, not raise it).
fn hard() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` to a live local.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit");
    lim.rlim_max.min(4096)
}

/// (soft, hard) "Max open files" of `pid` from /proc.
fn proc_limits(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no 'Max open files' in:\n{text}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn config(limits: &str) -> String {
    let mut c = api_config(TOKEN, r#"colors.blue = ["127.0.0.1:1"]"#);
    c.push_str(limits);
    c
}

async fn gauge(p: &Proxy) -> f64 {
    let m = admin("GET", &p.admin_url("/metrics"), Some(TOKEN), None)
        .await
        .unwrap()
        .text();
    m.lines()
        .find_map(|l| l.strip_prefix("duotone_open_files_limit "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duotone_open_files_limit in:\n{m}"))
}

#[tokio::test]
async fn soft_limit_raised_to_hard_and_a_short_one_warned() {
    let hard = hard();
    // Defaults: needs 22 048, more than `hard`.
    let p = Proxy::start_with_nofile(&config(""), (1024u64.min(hard), hard)).await;
    assert_eq!(proc_limits(p.pid()), (hard, hard), "soft raised to hard");
    assert_eq!(gauge(&p).await, hard as f64);
    let log = p.log();
    let want = format!("file limit {hard} is below the 22048 {WARNING}");
    assert!(log.contains(&want), "no warning {want:?} in:\n{log}");
    assert!(log.contains("file limit raised to the hard limit"), "{log}");
}

#[tokio::test]
async fn enough_for_the_config_is_not_warned_until_a_reload_needs_more() {
    let hard = hard();
    // 2 × 1024 + 1024 + 1024 = 4096: a hard limit of 4096 suffices.
    let small = (hard.saturating_sub(2048) / 2).max(1);
    let p = Proxy::start_with_nofile(
        &config(&format!("\n[limits]\nmax_connections = {small}\n")),
        (1024u64.min(hard), hard),
    )
    .await;
    assert_eq!(proc_limits(p.pid()).0, hard);
    assert!(!p.log().contains(WARNING), "{}", p.log());

    // A reload to the default max_connections needs 22 048: the answer and
    // the log say so.
    p.rewrite(&config(""));
    let r = admin("POST", &p.admin_url("/v1/reload"), Some(TOKEN), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let warnings = r.json()["warnings"].to_string();
    assert!(warnings.contains(WARNING), "{warnings}");
    let logged = e2e::eventually(Duration::from_secs(5), || async {
        p.log().contains(WARNING).then_some(())
    })
    .await;
    assert!(logged.is_some(), "{}", p.log());
    // The soft limit stays where the start put it.
    assert_eq!(proc_limits(p.pid()).0, hard);
}
