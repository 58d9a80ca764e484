//! `hydrus serve`: put the proxy, the admin listener, the optional demo upstream, the reloader
//! and the log sink together on a pingora server, and take them down in order.

use crate::admin::Admin;
use crate::config::{self, Running, StartOnly};
use crate::demo::DemoRanker;
use crate::edge::conns::{Connections, Edge};
use crate::edge::Proxy;
use crate::logsink::{self, LogSink};
use crate::metrics::Metrics;
use crate::state::State;
use crate::tables::{self, Trigger};
use hydrus_filters::log::SinkConfig;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server};
use pingora::services::listening::Service;
use std::net::{SocketAddr, TcpListener};
use std::{sync::atomic::Ordering, sync::Arc, time::Duration};

pub struct ServeOptions {
    /// Take the listening sockets over from a running hydrus (pingora's graceful upgrade).
    pub upgrade: bool,
}

/// Why `hydrus serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("{what} {addr}: cannot listen: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    LogSink(#[from] logsink::StartError),
    #[error(transparent)]
    Tracing(#[from] crate::otel::export::StartError),
    #[error("{0}")]
    Reload(#[from] tables::ReloadError),
    #[error("{0}")]
    Health(#[from] crate::health::HealthError),
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}

impl ServeError {
    fn thread(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Thread { what, source }
    }
}

/// Fail fast, with the address, when a listener cannot bind: pingora would panic in a worker.
fn can_bind(what: &'static str, addr: SocketAddr) -> Result<(), ServeError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| ServeError::Bind { what, addr, source })
}

fn preflight(start: &StartOnly) -> Result<(), ServeError> {
    can_bind("listen", start.listen)?;
    can_bind("admin.listen", start.admin_listen)?;
    if let Some(a) = start
        .demo_upstream
        .as_ref()
        .and_then(|d| d.listen.parse().ok())
    {
        can_bind("demo_upstream.listen", a)?;
    }
    Ok(())
}

pub fn serve(config: &config::ConfigFile, opts: ServeOptions) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let running: Running = config::load_from(config, &metrics, config::Purpose::Serve)?;
    if *config == config::ConfigFile::Embedded {
        log::info!(
            "no --config and no {} here: running {}",
            config::DEFAULT_PATH,
            config.describe()
        );
    }
    let start = running.start.clone();
    if !opts.upgrade {
        preflight(&start)?;
    }
    // Every client connection holds a file descriptor: raise the soft limit to the hard one
    // and derive the connection cap from it (unless the config sets one).
    let nofile = crate::edge::conns::raise_fd_limit();
    let auto_cap = crate::edge::conns::cap_for_fd_limit(nofile);
    let (queue, sink) = match &start.log {
        Some(l) => {
            let (q, s) = logsink::start(l, &metrics)?;
            (Some(q), Some(s))
        }
        None => (None, None),
    };
    let (traces, exporter) = match &start.tracing {
        Some(t) => {
            let counters = crate::otel::export::ExportMetrics {
                exported: metrics.trace_spans.with_label_values(&["exported"]),
                queue_full: metrics.trace_spans.with_label_values(&["queue_full"]),
                export_failed: metrics.trace_spans.with_label_values(&["export_failed"]),
                depth: metrics.trace_queue_depth.clone(),
            };
            let (q, e) = crate::otel::export::start(t, counters)?;
            (Some(q), Some(e))
        }
        None => (None, None),
    };
    for w in &running.warnings {
        log::warn!("{w}");
    }
    let cap = running.limits.max_connections.unwrap_or(auto_cap);
    let state = Arc::new(State::new(running, metrics, queue, traces));
    let reload_tx = tables::spawn(state.clone(), config.clone())?;
    let _health = crate::health::spawn(state.clone())?;
    let mut server = Server::new_with_opt_and_conf(options(opts.upgrade), server_conf(&start));
    server.bootstrap();
    add_services(&mut server, &state, &start, auto_cap)?;
    watch_phases(&mut server, &state, &start)?;
    announce(&start, nofile, cap);
    server.run(RunArgs::default());

    // The runtimes are down: no request is in flight. Drain what was logged.
    state.ready.store(false, Ordering::SeqCst);
    let _ = reload_tx.send(Trigger::Stop);
    if let Some(e) = exporter {
        // (What is queued goes in one more export, bounded by its timeout.)
        let timeout = start
            .tracing
            .as_ref()
            .map_or(Duration::ZERO, |t| t.otlp.timeout);
        e.shutdown(timeout);
    }
    stopped(&start, sink);
    Ok(())
}

fn options(upgrade: bool) -> Opt {
    Opt {
        upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    }
}

fn server_conf(start: &StartOnly) -> ServerConf {
    ServerConf {
        threads: start.threads,
        // Whole seconds: the config check refuses anything else.
        grace_period_seconds: Some(start.shutdown.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(start.shutdown.timeout.as_secs()),
        upgrade_sock: start.upgrade_sock.clone(),
        pid_file: start.pid_file.display().to_string(),
        // A new binary started with --upgrade waits this many seconds for the old one's SIGQUIT.
        upgrade_sock_connect_accept_max_retries: Some(30),
        work_stealing: start.server.work_stealing,
        listener_tasks_per_fd: start.server.listener_tasks_per_fd,
        upstream_keepalive_pool_size: start.server.upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

/// The proxy (behind the connection guard), the admin listener and the demo ranker.
fn add_services(
    server: &mut Server,
    state: &Arc<State>,
    start: &StartOnly,
    auto_cap: usize,
) -> Result<(), ServeError> {
    let conns = Arc::new(Connections::new(auto_cap, &state.metrics));
    Connections::spawn_reaper(&conns, crate::edge::conns::REAP_PERIOD)
        .map_err(ServeError::thread("connection reaper"))?;
    let mut http = pingora::proxy::http_proxy(&server.configuration, Proxy::new(state.clone()));
    // HTTP/2 on the same listener: with prior knowledge in clear text (h2c, what gRPC clients
    // send), by ALPN over TLS; an idle HTTP/2 connection closed like an idle keep-alive one.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(state.config.load().limits.idle_timeout);
    http.server_options = Some(options);
    let edge = Edge {
        proxy: Arc::new(http),
        state: state.clone(),
        conns,
        // Until shortly before the runtimes stop at the end of the grace period.
        drain: start
            .shutdown
            .grace_period
            .saturating_sub(Duration::from_millis(500)),
        drain_until: std::sync::OnceLock::new(),
        shutdown_watched: std::sync::OnceLock::new(),
    };
    let mut proxy = Service::new("hydrus proxy".into(), edge);
    proxy.add_tcp(&start.listen.to_string());
    server.add_service(proxy);
    let mut admin = Service::new(
        "hydrus admin".into(),
        Admin {
            state: state.clone(),
        },
    );
    admin.add_tcp(&start.admin_listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);
    if let Some(d) = &start.demo_upstream {
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
    Ok(())
}

/// `/ready`: up once the server runs and its listener is bound, down as soon as shutdown or
/// upgrade begins; the pid file written once serving.
fn watch_phases(
    server: &mut Server,
    state: &Arc<State>,
    start: &StartOnly,
) -> Result<(), ServeError> {
    crate::listening::watch(state, start.listen).map_err(ServeError::thread("listening"))?;
    let pid_file = start.pid_file.clone();
    let mut phases = server.watch_execution_phase();
    let ready_state = state.clone();
    let started = std::thread::Builder::new()
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
                let starting = matches!(
                    p,
                    ExecutionPhase::Bootstrap
                        | ExecutionPhase::BootstrapComplete
                        | ExecutionPhase::Setup
                );
                if !ready && !starting {
                    log::info!("shutdown phase: {p:?}");
                }
            }
        })
        .map(drop);
    started.map_err(ServeError::thread("phase"))
}

fn announce(start: &StartOnly, nofile: u64, cap: usize) {
    match start.log.as_ref().map(|l| &l.sink) {
        Some(SinkConfig::File(f)) => log::info!(
            "decision log: JSON-lines files in {} (a file per {}, flushed every {})",
            f.dir.display(),
            humantime::format_duration(f.window),
            humantime::format_duration(f.flush_interval)
        ),
        Some(SinkConfig::Kafka(k)) => log::info!(
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
        "hydrus listening on {} (admin {}), {} threads, at most {cap} client connections (open-file limit {nofile})",
        start.listen,
        start.admin_listen,
        start.threads,
    );
}

/// After the server stopped: drain the log, remove the pid file if it is still ours.
fn stopped(start: &StartOnly, sink: Option<LogSink>) {
    if let Some(s) = sink {
        let drain = start
            .log
            .as_ref()
            .map_or(Duration::from_secs(10), |l| l.drain_timeout);
        s.shutdown(drain);
    }
    // The pid file names the process serving: ours only if no upgrade took over.
    let ours = format!("{}\n", std::process::id());
    if std::fs::read_to_string(&start.pid_file).is_ok_and(|p| p == ours) {
        if let Err(e) = std::fs::remove_file(&start.pid_file) {
            log::warn!("pid file {}: {e}", start.pid_file.display());
        }
    }
    log::info!("hydrus stopped");
}
