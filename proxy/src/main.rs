//! `duotone`: an edge proxy with TLS, static files and blue/green deploys.

// House rule: no `unwrap()`/`expect()` on input or I/O outside tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use anyhow::Context;
use clap::{Parser, Subcommand};
use duotone::cli::{client, demo, healthcheck};
use duotone::{control, server, AdminArgs};
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Duotone: one binary at the edge for routing, TLS, static files and blue/green deploys.
#[derive(Parser)]
#[command(name = "duotone", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy with a config file.
    Run {
        /// Config file.
        #[arg(
            short,
            long,
            env = "DUOTONE_CONFIG",
            default_value = "/etc/duotone/duotone.toml"
        )]
        config: PathBuf,
        /// Take the listening sockets over from the running Duotone (through
        /// {state_dir}/upgrade.sock, sent on its SIGQUIT) instead of binding
        /// them; `duotone upgrade` starts the new process this way.
        #[arg(long)]
        upgrade: bool,
    },
    /// Replace the running Duotone by a new process without closing a listener:
    /// start BINARY with `run --upgrade`, hand the sockets over (SIGQUIT to the
    /// pid in {state_dir}/duotone.pid), wait until the old process has drained
    /// and exited.
    Upgrade {
        /// Config file of the new process (its state_dir names the running one).
        #[arg(
            short,
            long,
            env = "DUOTONE_CONFIG",
            default_value = "/etc/duotone/duotone.toml"
        )]
        config: PathBuf,
        /// The new binary (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Append the new process's stdout and stderr to this file (default:
        /// this command's).
        #[arg(long)]
        log: Option<PathBuf>,
        /// How long the new process may take to be ready for the sockets.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Check a config file; prints every error as file:line: key: message.
    Check {
        /// Config file.
        #[arg(
            short,
            long,
            env = "DUOTONE_CONFIG",
            default_value = "/etc/duotone/duotone.toml"
        )]
        config: PathBuf,
    },
    /// Exit 0 if the proxy of this config serves: the admin API's /healthz,
    /// or with `admin = "off"` the http (else https) listener. For a
    /// container's HEALTHCHECK; needs no token and no curl.
    Healthcheck {
        /// Config file.
        #[arg(
            short,
            long,
            env = "DUOTONE_CONFIG",
            default_value = "/etc/duotone/duotone.toml"
        )]
        config: PathBuf,
        /// Longest wait for the connection and for the answer.
        #[arg(long, default_value = "2s")]
        timeout: String,
    },
    /// Run a self-contained demo: proxy on 127.0.0.1:8080, two demo upstreams, static files, admin on 127.0.0.1:9090.
    Demo {
        /// Proxy listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: String,
    },
    /// Show services: live color, weights, health, in-flight requests, open WebSockets.
    Status {
        /// Only this service.
        service: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Flip a service's live color (to the other of two when COLOR is omitted).
    Flip {
        /// Service name.
        service: String,
        /// Target color.
        color: Option<String>,
        /// Flip even if the target color has no healthy member.
        #[arg(long)]
        force: bool,
        /// Then wait until the old color is drained: no request in flight,
        /// and its WebSockets closed by the edge (`drain_upgraded`). Exits
        /// non-zero if requests are still in flight after --drain-timeout.
        #[arg(long)]
        drain: bool,
        /// Longest wait for the old color's requests with --drain (its
        /// WebSockets are closed by then at the latest).
        #[arg(long, default_value = "300s")]
        drain_timeout: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set canary weights, e.g. `duotone weights api blue=90 green=10`.
    Weights {
        /// Service name.
        service: String,
        /// COLOR=WEIGHT pairs.
        #[arg(required = true)]
        weights: Vec<String>,
        /// Set them even if a color given weight has no healthy member.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Turn maintenance mode on or off for a service (`duotone maintenance
    /// on api`) or a site (`duotone maintenance on --site example.com`):
    /// its requests get 503 with the maintenance page, except from clients
    /// on `[maintenance] allow` or with the secret cookie.
    Maintenance {
        /// `on` or `off`.
        state: client::OnOff,
        /// Service name.
        #[arg(required_unless_present = "site", conflicts_with = "site")]
        service: Option<String>,
        /// Site name (its first host, as `duotone status` and the access
        /// log show it) instead of a service.
        #[arg(long)]
        site: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Pause a service: its new requests are held at the edge (not refused)
    /// until `duotone resume`, up to its `pause` timeout and queue.
    Pause {
        /// Service name.
        service: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Resume a paused service: held requests go on to the color live now.
    Resume {
        /// Service name.
        service: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the preview header (and a curl example) that sends requests to COLOR of SERVICE, live or idle.
    Preview {
        /// Service name.
        service: String,
        /// The color to reach.
        color: String,
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running proxy to re-read its config.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Blue/green deploy: start the idle color, wait healthy, flip, drain, stop the old color.
    Deploy(Box<client::DeployArgs>),
}

/// mimalloc's `arena_eager_commit` option number (mimalloc 2.x).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Commits mimalloc arena memory as it is used rather than all at once
/// (idle RSS ≈ 14 MiB instead of ≈ 23 MiB). It must run before the first
/// Rust allocation creates the arena, hence a constructor, not `main`.
#[allow(unsafe_code)]
extern "C" fn lazy_arena_commit() {
    // SAFETY: setting a mimalloc option has no memory-safety preconditions.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

// SAFETY: `.init_array` takes pointers to `extern "C" fn()` that the loader
// calls before `main`; `lazy_arena_commit` is one, and it neither allocates
// nor relies on Rust's runtime being set up.
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static LAZY_ARENA_COMMIT: extern "C" fn() = lazy_arena_commit;

fn main() -> ExitCode {
    // Before any rustls config exists: ring restricted to the safe suites,
    // in Duotone's order (Pingora's listeners use the process default).
    acme::tls::install_default_provider();
    // Pingora's per-client handshake failures are demoted from ERROR there.
    duotone::ops::logging::init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config, upgrade } => server::run(control::Source::File(config), upgrade),
        Cmd::Upgrade {
            config,
            binary,
            log,
            timeout,
        } => upgrade(config, binary, log, &timeout),
        Cmd::Check { config } => return check(config),
        Cmd::Healthcheck { config, timeout } => routes::duration::parse(&timeout)
            .map_err(|e| anyhow::anyhow!("--timeout {timeout:?}: {e}"))
            .and_then(|t| healthcheck::run(&config, t)),
        Cmd::Demo {
            listen,
            admin_listen,
        } => demo::run(&listen, &admin_listen),
        Cmd::Status {
            service,
            admin,
            json,
        } => client::status(&admin, service.as_deref(), json),
        Cmd::Flip {
            service,
            color,
            force,
            drain,
            drain_timeout,
            admin,
        } => client::flip(
            &admin,
            &service,
            color.as_deref(),
            force,
            drain,
            &drain_timeout,
        ),
        Cmd::Weights {
            service,
            weights,
            force,
            admin,
        } => client::weights(&admin, &service, &weights, force),
        Cmd::Maintenance {
            state,
            service,
            site,
            admin,
        } => client::maintenance(&admin, state, service.as_deref(), site.as_deref()),
        Cmd::Pause { service, admin } => client::pause(&admin, &service, true),
        Cmd::Resume { service, admin } => client::pause(&admin, &service, false),
        Cmd::Preview {
            service,
            color,
            admin,
            json,
        } => client::preview(&admin, &service, &color, json),
        Cmd::Reload { admin } => client::reload(&admin),
        Cmd::Deploy(args) => client::deploy(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duotone: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `duotone upgrade`: see [`duotone::cli::upgrade`].
fn upgrade(
    config: PathBuf,
    binary: Option<PathBuf>,
    log: Option<PathBuf>,
    timeout: &str,
) -> anyhow::Result<()> {
    let binary = match binary {
        Some(b) => b,
        None => std::env::current_exe().context("finding this binary (give --binary)")?,
    };
    let timeout = routes::duration::parse(timeout)
        .map_err(|e| anyhow::anyhow!("--timeout {timeout}: {e}"))?;
    duotone::cli::upgrade::run(&duotone::cli::upgrade::Options {
        config,
        binary,
        log,
        timeout,
    })
}

fn check(config: PathBuf) -> ExitCode {
    let loaded = control::Source::File(config.clone()).load_for_check();
    let loaded = loaded.and_then(|(c, warnings)| {
        // Printed, but the config is valid: `duotone run` checks them again
        // where it runs.
        for w in &warnings.0 {
            eprintln!("warning: {w}");
        }
        let warned = warnings.0.len();
        if c.sites.iter().any(|s| s.tls != routes::config::Tls::Off) {
            duotone::control::tls::store_for_check(&c).map_err(|e| {
                routes::Diagnostics(vec![routes::Diagnostic {
                    file: config.display().to_string(),
                    line: 0,
                    key: "sites.tls".into(),
                    message: e.to_string(),
                }])
            })?;
        }
        Ok((c, warned))
    });
    match loaded {
        Ok((c, warned)) => {
            println!(
                "{}: ok ({} sites, {} services{})",
                config.display(),
                c.sites.len(),
                c.services.len(),
                match warned {
                    0 => String::new(),
                    1 => ", 1 warning".to_string(),
                    n => format!(", {n} warnings"),
                }
            );
            ExitCode::SUCCESS
        }
        Err(d) => {
            for e in &d.0 {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}
