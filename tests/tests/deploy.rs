//! `duotone deploy` and `deploy/bluegreen.sh`, end to end: real shell
//! commands start and stop colors; each color's upstream passes its health
//! check only once its start command has created a marker file.

use e2e::bluegreen::GatedColors;
use e2e::client::Http;
use e2e::load::{Counts, Load};
use e2e::proxy::duotone_bin;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "deploy-test-token-0123456789";

struct Fixture(GatedColors);

impl std::ops::Deref for Fixture {
    type Target = GatedColors;
    fn deref(&self) -> &GatedColors {
        &self.0
    }
}

impl Fixture {
    /// Blue is running and live; green's app is not started.
    async fn new() -> Fixture {
        let f = Fixture(GatedColors::start(&[], TOKEN, false).await);
        f.wait(|v| {
            v["colors"]["blue"]["healthy"] == true
                && v["colors"]["green"]["members"][0]["health"] == "down"
        })
        .await;
        f
    }

    /// A `--start` command that marks the color ready and logs the call.
    fn start_logged_cmd(&self) -> String {
        let d = self.dir.path().display();
        format!("touch {d}/{{color}}.ready && echo \"$DUOTONE_COLOR from $DUOTONE_OLD_COLOR\" >> {d}/started")
    }

    async fn wait(&self, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        self.0.wait(Duration::from_secs(10), f).await
    }

    async fn answer(&self) -> String {
        let r = Http::new().get(&self.p.url("/")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DUOTONE_ADMIN", self.p.admin_url("")),
            ("DUOTONE_ADMIN_TOKEN", TOKEN.to_string()),
        ]
    }
}

/// Clients that count failed requests until stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_starts_waits_flips_drains_and_stops() {
    let f = Fixture::new().await;
    let traffic = Load::start(&f.p.url("/"), 4);
    let (code, out, err) = f.deploy_started(&f.start_logged_cmd(), &[]).await;
    let Counts {
        ok,
        failed,
        samples,
        ..
    } = traffic.finish().await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        failed, 0,
        "{failed} failed requests during the deploy ({ok} ok): {samples:?}"
    );
    assert!(ok > 0);
    assert!(out.contains("api is live on green"), "{out}");
    assert_eq!(f.log("started"), "green from blue\n");
    assert_eq!(f.log("stopped"), "blue\n");
    assert!(!f.blue.marker.exists() && f.green.marker.exists());
    assert_eq!(f.service().await["live"], "green");
    assert_eq!(f.answer().await, "green");
    assert!(f.green.hits() > 0);

    // Deploying again right away goes back to blue — but blue was just
    // stopped, and its start command here does not make it healthy. Health
    // learned before the start command must not count: the deploy fails and
    // green stays live.
    let (code, out, err) = f
        .deploy(&[
            "--start",
            "true",
            "--stop",
            &f.stop_cmd(),
            "--health-timeout",
            "1s",
        ])
        .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("did not become healthy"), "{err}");
    assert_eq!(f.service().await["live"], "green");
    assert_eq!(f.answer().await, "green");
    // The failed color is stopped again; the live one (green) is not.
    assert_eq!(f.log("stopped"), "blue\nblue\n");

    // And a real start of blue deploys it.
    let (code, out, err) = f.deploy_started(&f.start_logged_cmd(), &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(f.log("started"), "green from blue\nblue from green\n");
    assert_eq!(f.log("stopped"), "blue\nblue\ngreen\n");
    assert_eq!(f.answer().await, "blue");
}

#[tokio::test]
async fn failing_start_command_keeps_the_old_color() {
    let f = Fixture::new().await;
    let stop = f.stop_cmd();
    let (code, out, err) = f
        .deploy(&["--start", "echo starting {color}; exit 3", "--stop", &stop])
        .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains("starting green"), "{out}");
    assert!(err.contains("command failed"), "{err}");
    assert_eq!(f.service().await["live"], "blue");
    assert_eq!(f.answer().await, "blue");
    // Whatever the failed start left behind is stopped; blue is not touched.
    assert_eq!(f.log("stopped"), "green\n");
    assert!(err.contains("green stopped again"), "{err}");
    assert!(f.blue.marker.exists());
}

#[tokio::test]
async fn new_color_never_healthy_times_out_and_keeps_the_old_color() {
    let f = Fixture::new().await;
    let d = f.dir.path().display().to_string();
    let stop = f.stop_cmd();
    let started = std::time::Instant::now();
    let (code, out, err) = f
        .deploy(&[
            "--start",
            &format!("touch {d}/{{color}}.started"),
            "--stop",
            &stop,
            "--health-timeout",
            "1s",
        ])
        .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        err.contains("green did not become healthy within 1s") && err.contains("blue stays live"),
        "{err}"
    );
    assert!(f.path("green.started").exists());
    assert_eq!(f.service().await["live"], "blue");
    assert_eq!(f.answer().await, "blue");
    assert_eq!(f.log("stopped"), "green\n");
    assert!(f.blue.marker.exists());
}

#[tokio::test]
async fn keep_failed_leaves_the_new_color_running() {
    let f = Fixture::new().await;
    let d = f.dir.path().display().to_string();
    let stop = f.stop_cmd();
    let (code, out, err) = f
        .deploy(&[
            "--start",
            &format!("touch {d}/{{color}}.started"),
            "--stop",
            &stop,
            "--health-timeout",
            "1s",
            "--keep-failed",
        ])
        .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("blue stays live, green left running (--keep-failed)"),
        "{err}"
    );
    assert_eq!(f.log("stopped"), "");
    assert_eq!(f.service().await["live"], "blue");
}

/// Whether `pid` is gone (or a zombie waiting for whoever inherited it).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn start_command_left_in_the_foreground_is_stopped_and_refused() {
    let f = Fixture::new().await;
    let d = f.dir.path().display().to_string();
    let stop = f.stop_cmd();
    // A "server" that never returns, as `docker compose up` without -d.
    let start = format!("touch {d}/{{color}}.ready; sleep 60 & echo $! > {d}/server.pid; wait");
    let started = std::time::Instant::now();
    let (code, out, err) = f
        .deploy(&["--start", &start, "--stop", &stop, "--start-timeout", "1s"])
        .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        err.contains("the start command was still running after 1s, so it was stopped")
            && err.contains("in the background and return"),
        "{err}"
    );
    // The deploy went no further: no flip, green stopped again, and the
    // process the command left in the foreground is gone.
    assert!(!out.contains("[2/5]"), "{out}");
    assert_eq!(f.service().await["live"], "blue");
    assert_eq!(f.answer().await, "blue");
    assert_eq!(f.log("stopped"), "green\n");
    let pid: i32 = f.log("server.pid").trim().parse().expect("server.pid");
    let dead = e2e::eventually(Duration::from_secs(10), || async move {
        gone(pid).then_some(())
    })
    .await;
    assert!(
        dead.is_some(),
        "process {pid} of the start command still runs"
    );
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/bluegreen.sh")
        .canonicalize()
        .expect("deploy/bluegreen.sh")
}

/// Runs `deploy/bluegreen.sh ARGS` with the admin API in the environment.
async fn run_script(
    f: &Fixture,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script()).args(args);
    cmd.env("DUOTONE_BIN", duotone_bin());
    for (k, v) in f.env() {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run bluegreen.sh"))
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bluegreen_sh_wraps_deploy() {
    let f = Fixture::new().await;
    let (start, stop) = (f.start_logged_cmd(), f.stop_cmd());

    // Plain commands.
    let (code, out, err) = run_script(
        &f,
        &[
            "api",
            "--start",
            &start,
            "--stop",
            &stop,
            "--health-timeout",
            "10s",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(f.log("started"), "green from blue\n");
    assert_eq!(f.log("stopped"), "blue\n");
    assert_eq!(f.answer().await, "green");

    // Compose mode, with a stand-in `docker` on PATH (no engine here) that
    // logs its arguments and plays the app: `up` makes the color ready.
    let bin = f.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let d = f.dir.path().display().to_string();
    let fake = bin.join("docker");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$*\" >> {d}/docker.log\ncase \"$*\" in\n  *' up -d') touch {d}/$DUOTONE_COLOR.ready ;;\n  *' down') rm -f {d}/$DUOTONE_COLOR.ready ;;\nesac\n"
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let compose = format!("{d}/my app/compose.yml");
    let (code, out, err) = run_script(
        &f,
        &[
            "api",
            "-p",
            "shop's {color}",
            "-f",
            &compose,
            "--health-timeout",
            "10s",
        ],
        &[("PATH", &path)],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        f.log("docker.log"),
        format!(
            "compose -p shop's blue -f {compose} up -d\ncompose -p shop's green -f {compose} down\n"
        )
    );
    assert_eq!(f.answer().await, "blue");
    assert!(!f.green.marker.exists());

    // A project name without {color} gets "-{color}" appended.
    let (code, out, err) = run_script(
        &f,
        &["api", "-p", "shop", "--to", "green"],
        &[("PATH", &path)],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(f
        .log("docker.log")
        .ends_with("compose -p shop-green up -d\ncompose -p shop-blue down\n"));
    assert_eq!(f.answer().await, "green");

    // Usage errors exit 2 and change nothing; a refused deploy passes its status through.
    let (code, _, err) = run_script(&f, &["api"], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("missing --start"), "{err}");
    let (code, _, err) = run_script(&f, &["api", "--start", "true", "--bogus"], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("unknown argument: --bogus"), "{err}");
    let (code, _, err) = run_script(&f, &["api", "--start", "exit 1"], &[]).await;
    assert_eq!(code, 1, "{err}");
    // Wrong token: the admin API refuses before anything runs.
    let (code, _, err) = run_script(
        &f,
        &["api", "--start", &start],
        &[("DUOTONE_ADMIN_TOKEN", "wrong-wrong-wrong-wrong")],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    assert_eq!(f.answer().await, "green");
    assert_eq!(f.log("started"), "green from blue\n");
}
