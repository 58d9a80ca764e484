//! `hydrus serve`: put the proxy, the admin listener, the optional demo upstream, the reloader
//! and the log sink together on a pingora server, and take them down in order.

use crate::admin::Admin;
use crate::config::{self, Running};
use crate::conns::{Connections, Edge};
use crate::demo::DemoRanker;
use crate::logsink;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{self, Trigger};
use crate::state::State;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server};
use pingora::services::listening::Service;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub struct ServeOptions {
    /// Take the listening sockets over from a running hydrus (pingora's graceful upgrade).
    pub upgrade: bool,
}

/// Fail fast, with the address, when a listener cannot bind: pingora would panic in a worker.
fn can_bind(what: &str, addr: SocketAddr) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("{what} {addr}: cannot listen: {e}"))
}

pub fn serve(config_path: &Path, opts: ServeOptions) -> Result<(), String> {
    let running: Running = config::load(config_path).map_err(|e| e.to_string())?;
    if !opts.upgrade {
        can_bind("listen", running.listen)?;
        can_bind("admin.listen", running.admin_listen)?;
        if let Some(d) = &running.source.demo_upstream {
            if let Ok(a) = d.listen.parse() {
                can_bind("demo_upstream.listen", a)?;
            }
        }
    }
    // Every client connection holds a file descriptor: raise the soft limit to the hard one
    // and derive the connection cap from it (unless the config sets one).
    let nofile = crate::conns::raise_fd_limit();
    let auto_cap = crate::conns::cap_for_fd_limit(nofile);
    let metrics = Arc::new(Metrics::new());
    let (queue, sink) = match &running.log {
        Some(l) => {
            let (q, s) = logsink::start(l, &metrics)?;
            (Some(q), Some(s))
        }
        None => (None, None),
    };
    let shutdown = running.source.shutdown.clone();
    let pid_file = running.pid_file.clone();
    let state = Arc::new(State::new(running.clone(), metrics, queue));
    let reload_tx = reload::spawn(state.clone(), config_path.to_path_buf())?;
    let _health = crate::health::spawn(state.clone())?;
    for w in &running.warnings {
        log::warn!("{w}");
    }

    let conf = ServerConf {
        threads: running.threads,
        // Whole seconds: the config check refuses anything else.
        grace_period_seconds: Some(shutdown.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(shutdown.timeout.as_secs()),
        upgrade_sock: running.upgrade_sock.clone(),
        pid_file: pid_file.display().to_string(),
        // A new binary started with --upgrade waits this many seconds for the old one's SIGQUIT.
        upgrade_sock_connect_accept_max_retries: Some(30),
        work_stealing: running.source.server.work_stealing,
        listener_tasks_per_fd: running.source.server.listener_tasks_per_fd,
        upstream_keepalive_pool_size: running.source.server.upstream_keepalive_pool_size,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let conns = Arc::new(Connections::new(auto_cap, &state.metrics));
    Connections::spawn_reaper(&conns, crate::conns::REAP_PERIOD)
        .map_err(|e| format!("cannot start the connection reaper: {e}"))?;
    let edge = Edge {
        proxy: Arc::new(pingora::proxy::http_proxy(
            &server.configuration,
            Proxy::new(state.clone()),
        )),
        state: state.clone(),
        conns,
        // Until shortly before the runtimes stop at the end of the grace period.
        drain: shutdown
            .grace_period
            .saturating_sub(Duration::from_millis(500)),
        drain_until: std::sync::OnceLock::new(),
    };
    let mut proxy = Service::new("hydrus proxy".into(), edge);
    proxy.add_tcp(&running.listen.to_string());
    server.add_service(proxy);

    let mut admin = Service::new(
        "hydrus admin".into(),
        Admin {
            state: state.clone(),
        },
    );
    admin.add_tcp(&running.admin_listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);

    if let Some(d) = &running.source.demo_upstream {
        let mut demo = Service::new(
            "hydrus demo ranker".into(),
            DemoRanker {
                per_candidate: d.per_candidate,
            },
        );
        demo.add_tcp(&d.listen);
        demo.threads = Some(1);
        server.add_service(demo);
    }

    // /ready: up once the server runs, down as soon as shutdown or upgrade begins.
    let mut phases = server.watch_execution_phase();
    let ready_state = state.clone();
    std::thread::Builder::new()
        .name("hydrus-phase".into())
        .spawn(move || {
            while let Ok(p) = phases.blocking_recv() {
                let ready = matches!(p, ExecutionPhase::Running);
                ready_state.ready.store(ready, Ordering::SeqCst);
                if ready {
                    // The pid of the process now serving, for `kill -QUIT $(cat pid_file)`.
                    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
                        log::warn!("pid file {}: {e}", pid_file.display());
                    }
                }
                if !ready
                    && !matches!(
                        p,
                        ExecutionPhase::Bootstrap
                            | ExecutionPhase::BootstrapComplete
                            | ExecutionPhase::Setup
                    )
                {
                    log::info!("shutdown phase: {p:?}");
                }
            }
        })
        .map_err(|e| format!("cannot start the phase thread: {e}"))?;

    match running.log.as_ref().map(|l| &l.sink) {
        Some(config::SinkConfig::File(f)) => log::info!(
            "decision log: JSON-lines files in {} (a file per {}, flushed every {})",
            f.dir.display(),
            humantime::format_duration(f.window),
            humantime::format_duration(f.flush_interval)
        ),
        Some(config::SinkConfig::Kafka(k)) => log::info!(
            "decision log: Kafka topic {} at {} (compression.type {})",
            k.topic,
            k.brokers,
            k.properties
                .get("compression.type")
                .map_or("lz4", String::as_str)
        ),
        None => log::info!("decision log: none (no log filter)"),
    }
    log::info!(
        "hydrus listening on {} (admin {}), {} threads, at most {} client connections (open-file limit {nofile})",
        running.listen,
        running.admin_listen,
        running.threads,
        running.limits.max_connections.unwrap_or(auto_cap),
    );
    server.run(RunArgs::default());

    // The runtimes are down: no request is in flight. Drain what was logged.
    state.ready.store(false, Ordering::SeqCst);
    let _ = reload_tx.send(Trigger::Stop);
    if let Some(s) = sink {
        let drain = running
            .log
            .as_ref()
            .map_or(Duration::from_secs(10), |l| l.drain_timeout);
        s.shutdown(drain);
    }
    // The pid file names the process serving: ours only if no upgrade took over.
    let ours = format!("{}\n", std::process::id());
    if std::fs::read_to_string(&running.pid_file).is_ok_and(|p| p == ours) {
        if let Err(e) = std::fs::remove_file(&running.pid_file) {
            log::warn!("pid file {}: {e}", running.pid_file.display());
        }
    }
    log::info!("hydrus stopped");
    Ok(())
}
