//! Assembles and runs the Pingora server: the proxy service with its
//! listeners, and the background tasks (admin API, health checks, SIGHUP).

use crate::control::{Control, Source};
use crate::edge::Edge;
use crate::ops::admin::Admin;
use anyhow::{Context, Result};
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{ListenFds, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::Service;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Runs Duotone with the config from `source` until SIGTERM/SIGINT (or
/// SIGQUIT: hand the listeners to a new process, then drain and exit).
/// With `upgrade`, the listeners (HTTP, HTTPS and the admin API's) are taken
/// over from the running process through `{state_dir}/upgrade.sock` instead
/// of being bound: see `duotone upgrade` ([`crate::cli::upgrade`]).
/// Never returns on success (Pingora exits the process).
pub fn run(source: Source, upgrade: bool) -> Result<()> {
    // Until the reload handler is installed (with the background tasks), a
    // SIGHUP must not kill the proxy: ignore it. The handler replaces this.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let config_file = match &source {
        Source::File(path) => Some(path.clone()),
        Source::Embedded { .. } => None,
    };
    // As Go and nginx's worker_rlimit_nofile: the soft file limit (often
    // 1024 in a shell) up to the hard one, then a warning if the config
    // needs more (`crate::ops::nofile`).
    crate::ops::nofile::raise();
    let config = source
        .load()
        .map_err(|d| anyhow::anyhow!("invalid config:\n{d}"))?;
    crate::ops::nofile::check(&config.limits);
    let server_cfg = config.server.clone();
    let idle = config.limits.keepalive_timeout;
    let certs = if config
        .sites
        .iter()
        .any(|s| s.tls != routes::config::Tls::Off)
    {
        Some(crate::control::tls::store(&config).context("loading certificates")?)
    } else {
        None
    };
    // Several edge nodes: the one etcd handle this node's parts share
    // (not contacted here: a node starts from its local state while etcd is down).
    let cluster = config.cluster.as_ref().map(|c| {
        let node = cluster::Cluster::node_name(c);
        Arc::new(cluster::Cluster::new(c.clone(), node))
    });
    // Shared certificates: one ACME order per certificate for the cluster,
    // keys sealed in etcd, challenges answered by any node.
    if let (Some(store), Some(cluster), Some(settings)) = (&certs, &cluster, &config.cluster) {
        if config.acme.is_some() {
            let secret = settings.secret_key.as_ref().map(|k| k.0);
            store.set_shared(Arc::new(cluster::EtcdCerts::new(cluster.clone(), secret)));
            tracing::info!(
                node = cluster.node(),
                "ACME certificates shared through etcd"
            );
        }
    }
    let metrics = Arc::new(crate::metrics::Metrics::new()?);
    let threads = server_cfg.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let conns = crate::net::stream::Connections::new(threads);
    let control = Control::new(source, config, metrics.clone(), certs.clone())?;
    {
        let c = control.clone();
        let m = control.clone();
        let conns = conns.clone();
        metrics.set_state_sources(vec![
            Arc::new(move || crate::metrics::service_gauges(&c.load().table)),
            Arc::new(move || crate::metrics::maintenance_gauges(&m.load().table)),
            Arc::new({
                let certs = certs.clone();
                move || {
                    certs
                        .as_deref()
                        .map(crate::control::tls::gauges)
                        .unwrap_or_default()
                }
            }),
            Arc::new(crate::edge::static_files::gauges),
            Arc::new(|| {
                vec![crate::metrics::StateGauge {
                    name: "duotone_client_handshake_failures_total",
                    labels: vec![],
                    value: crate::ops::logging::handshake_failures() as f64,
                }]
            }),
            Arc::new(move || {
                let parked = crate::accept::park::parked();
                crate::metrics::connection_gauges(conns.total(), conns.per_worker(), parked)
            }),
            Arc::new(crate::net::spool::gauges),
            Arc::new(crate::ops::nofile::gauges),
            Arc::new({
                let c = control.clone();
                move || c.cluster_gauges()
            }),
        ]);
    }

    // Bound here, before anything starts, so a port in use is a clear error
    // at start; on an upgrade it comes from the old process instead.
    let admin_listener = match server_cfg.admin.filter(|_| !upgrade) {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding admin listener {addr}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };

    let state = server_cfg.state_dir.display().to_string();
    let conf = ServerConf {
        threads,
        // The proxy's workers are the accept service's own threads
        // (`crate::accept`); Pingora's runtimes run the background tasks, on
        // one single-threaded runtime per thread (no work stealing).
        work_stealing: false,
        // As PID 1 (a container's entrypoint), the process outlives its own
        // drain after an upgrade (`crate::ops::init`): then the background
        // task below ends the grace period, not Pingora (which would exit).
        grace_period_seconds: Some(if crate::ops::init::is_pid1() {
            u64::from(u32::MAX)
        } else {
            server_cfg.grace_period.as_secs().max(1)
        }),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        max_retries: 9,
        // Pingora writes this pid file only when it daemonizes (never
        // here); Duotone writes it itself ([`crate::ops::pidfile`]).
        pid_file: format!("{state}/{}", crate::ops::pidfile::PID_FILE),
        // A new process started with `--upgrade` listens here for the old
        // one's listeners, which the old one sends on SIGQUIT.
        upgrade_sock: format!("{state}/{}", crate::ops::pidfile::UPGRADE_SOCK),
        ..Default::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if upgrade {
        tracing::info!(
            sock = %format!("{state}/{}", crate::ops::pidfile::UPGRADE_SOCK),
            "upgrade: waiting for the running process's listeners"
        );
    }
    // On an upgrade this waits for the old process's listeners (it exits
    // the process if they do not come within a few seconds).
    server.bootstrap();
    if upgrade {
        tracing::info!("upgrade: listeners taken over");
    }
    if let Err(e) = crate::ops::pidfile::write(&server_cfg.state_dir) {
        tracing::error!("pid file: {e:#}");
    }
    crate::ops::pidfile::notify_systemd();

    let compression = config_has_compression(&control);
    let _ = control.compression_installed.set(compression);
    let ids = Arc::new(crate::net::forwarded::RequestIds::default());
    let access_log = Arc::new(crate::ops::access_log::AccessLog::start()?);
    let lane = crate::lane::Lane {
        control: control.clone(),
        ids: ids.clone(),
        access_log: access_log.clone(),
        acme: certs.is_some(),
    };
    let edge = Edge {
        control: control.clone(),
        ids,
        access_log,
        compression,
        acme_http01: certs.clone().map(|store| {
            Arc::new(move |token: String| {
                let store = store.clone();
                Box::pin(async move { store.http01_answer(&token).await })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
            }) as crate::edge::Http01Answers
        }),
    };
    let mut app = pingora::proxy::http_proxy(&server.configuration, edge);
    let mut opts = HttpServerOptions::default();
    opts.h2c = true;
    // HTTP/2 connections idle this long are closed, as HTTP/1 keep-alive
    // ones are (a changed keepalive_timeout reaches h2 at the next restart).
    opts.h2_idle_timeout = Some(idle);
    app.server_options = Some(opts);
    let lane = lane_enabled().then_some(lane);
    let guarded = crate::accept::conn::Guarded::new(app, conns.clone(), control.clone(), lane);
    // One single-threaded runtime per worker thread: no cross-thread task
    // stealing on the request path (measured faster on 2 cores).
    let mut proxy = crate::accept::AcceptService::new("duotone", guarded, threads);
    let buffers = acme::listener::client_buffers();
    if let Some(addr) = server_cfg.http {
        proxy.add(crate::accept::Endpoint::plain(addr.to_string()));
    }
    if let (Some(addr), Some(store)) = (server_cfg.https, &certs) {
        let tls = https(store, &control).context("setting up the https listener")?;
        proxy.add(crate::accept::Endpoint::tls(addr.to_string(), buffers, tls));
    }
    server.add_service(proxy);

    let extras = crate::ops::admin_extras::Extras {
        metrics,
        certs: certs.clone().map(|store| {
            Arc::new(move || crate::control::tls::certificates_json(&store))
                as Arc<dyn Fn() -> serde_json::Value + Send + Sync>
        }),
    };
    if let Some(addr) = server_cfg.admin {
        let listen = admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(addr);
        server.add_service(AdminService {
            admin: Arc::new(Admin {
                control: control.clone(),
                token: server_cfg.admin_token.clone(),
                extras: extras.clone(),
                listen,
            }),
            addr: addr.to_string(),
            bound: admin_listener,
        });
    }
    let tasks = Tasks {
        control: control.clone(),
        extras,
        conns: conns.clone(),
        certs: certs.clone(),
        cluster,
        state_dir: server_cfg.state_dir.clone(),
        config_file,
        grace: server_cfg
            .grace_period
            .max(std::time::Duration::from_secs(1)),
    };
    server.add_service(background_service("control", tasks));
    tracing::info!(
        http = ?server_cfg.http,
        https = ?server_cfg.https,
        admin = ?server_cfg.admin,
        "duotone running"
    );
    server.run_forever()
}

/// The TLS side of the HTTPS listener: certificates from `store`, the
/// rustls config of [`crate::control::tls::server_config`], and before the handshake the PROXY
/// header when the running config asks for one
/// ([`crate::accept::proxy_protocol::PreTls`], always installed, so a reload can turn
/// it on or off), then, with TLS-ALPN-01 configured, the hook that answers
/// validation connections ([`acme::listener::TlsAlpnHook`]).
fn https(
    store: &Arc<acme::CertStore>,
    control: &Arc<Control>,
) -> Result<crate::accept::Tls, acme::CertError> {
    let mut before: Vec<pingora::listeners::PreTlsCallback> =
        vec![Arc::new(crate::accept::proxy_protocol::PreTls {
            control: control.clone(),
        })];
    if store.challenge() == Some(acme::Challenge::TlsAlpn01) {
        before.push(Arc::new(acme::listener::TlsAlpnHook::new(store.clone())?));
    }
    let config = crate::control::tls::server_config(store)?;
    Ok(crate::accept::Tls {
        acceptor: pingora::listeners::tls::Acceptor::from_server_config(Arc::new(config)),
        before,
    })
}

/// Whether HTTP/1.1 requests take the lane (on unless `DUOTONE_LANE=off`,
/// which sends every request through Pingora's full path).
fn lane_enabled() -> bool {
    let on = std::env::var("DUOTONE_LANE").map_or(true, |v| v != "off" && v != "0");
    if !on {
        tracing::info!("DUOTONE_LANE=off: every request takes Pingora's path");
    }
    on
}

/// True when any route of the running config has `compress = true`.
fn config_has_compression(control: &Control) -> bool {
    control
        .load()
        .table
        .sites
        .iter()
        .any(|s| s.routes.iter().any(|r| r.compress))
}

/// The admin API's listener as a Pingora service of its own, so that it is
/// in the hand-over table with the proxy's listeners: bound at start (or
/// inherited on an upgrade), passed on at the next upgrade, and no longer
/// accepted on once this process shuts down or hands over.
struct AdminService {
    admin: Arc<Admin>,
    /// The configured address: the socket's name in the hand-over table.
    addr: String,
    /// The socket bound at start (none on an upgrade: then it is inherited).
    bound: Option<std::net::TcpListener>,
}

#[async_trait]
impl Service for AdminService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let listener = match self.bound.take() {
            Some(l) => {
                if let Some(fds) = &fds {
                    fds.lock().add(self.addr.clone(), l.as_raw_fd());
                }
                Ok(l)
            }
            None => crate::accept::bind::listen(&self.addr, fds.as_ref()).await,
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin listener {}: {e}", self.addr);
                return;
            }
        };
        match listener.try_clone() {
            Ok(mine) => crate::ops::admin::serve(self.admin.clone(), mine, shutdown).await,
            Err(e) => tracing::error!("admin listener {}: {e}", self.addr),
        }
        // The socket stays open while the process lives: the hand-over
        // table names it, and the new process may still be taking it.
        std::future::pending::<()>().await;
        drop(listener);
    }

    fn name(&self) -> &str {
        "admin"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.addr.clone()])
    }
}

/// Background work next to the proxy.
struct Tasks {
    control: Arc<Control>,
    extras: crate::ops::admin_extras::Extras,
    conns: Arc<crate::net::stream::Connections>,
    certs: Option<Arc<acme::CertStore>>,
    /// The etcd cluster this node shares state with (`[cluster]`).
    cluster: Option<Arc<cluster::Cluster>>,
    state_dir: std::path::PathBuf,
    /// The config file (none for the demo): what a SIGUSR2 upgrade runs with.
    config_file: Option<std::path::PathBuf>,
    /// How long in-flight requests may take after a shutdown begins.
    grace: std::time::Duration,
}

#[async_trait]
impl BackgroundService for Tasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(c) = &self.cluster {
            let s = c.settings();
            tracing::info!(node = c.node(), endpoints = ?s.endpoints, prefix = %s.prefix, "cluster mode (etcd)");
            if let Err(e) = self.control.start_cluster(c.clone()) {
                tracing::error!("cluster: cannot start the deploy state sync: {e:#}");
            }
        }
        tokio::spawn(crate::control::health::run(self.control.clone()));
        if let Some(store) = &self.certs {
            tokio::spawn(store.clone().run());
        }
        let control = self.control.clone();
        let extras = self.extras.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::error!("cannot install SIGHUP handler");
                return;
            };
            while hup.recv().await.is_some() {
                let result = control.reload();
                extras.reloaded(result.is_ok());
                match result {
                    Ok(w) => tracing::info!(warnings = ?w, "SIGHUP: config reloaded"),
                    Err(e) => tracing::warn!("SIGHUP: reload refused, old config stays:\n{e}"),
                }
            }
        });
        if let Some(config) = self.config_file.clone() {
            let state = self.state_dir.clone();
            tokio::spawn(upgrade_on_sigusr2(config, state));
        }
        let _ = shutdown.changed().await;
        // Graceful shutdown: Pingora has stopped accepting and closes idle
        // keep-alive connections; exit as soon as the last one is done
        // instead of always waiting out the whole grace period.
        tracing::info!("shutting down: waiting for in-flight requests");
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            let open = self.conns.total();
            let over = tokio::time::Instant::now() >= deadline;
            if open <= 0 || over {
                if open > 0 {
                    tracing::warn!("grace period over: closing {open} connection(s)");
                } else {
                    tracing::info!("all client connections finished; exiting");
                }
                crate::ops::pidfile::remove_if_mine(&self.state_dir);
                if crate::ops::init::is_pid1() {
                    // After a hand-over: stay as the container's init.
                    crate::ops::init::stay(&self.state_dir).await;
                }
                std::process::exit(0);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// SIGUSR2: replace this process by the binary at its path (see
/// [`crate::cli::upgrade::from_inside`]); on failure this process serves on.
async fn upgrade_on_sigusr2(config: std::path::PathBuf, state: std::path::PathBuf) {
    let Ok(mut usr2) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
    else {
        tracing::error!("cannot install SIGUSR2 handler");
        return;
    };
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2: upgrading in place");
        let (config, state) = (config.clone(), state.clone());
        let done = tokio::task::spawn_blocking(move || {
            crate::cli::upgrade::from_inside(&config, &state, std::time::Duration::from_secs(60))
        })
        .await;
        match done {
            Ok(Ok(())) => return,
            Ok(Err(e)) => tracing::error!("SIGUSR2: upgrade failed, this process serves on: {e:#}"),
            Err(e) => tracing::error!("SIGUSR2: upgrade failed, this process serves on: {e}"),
        }
    }
}
