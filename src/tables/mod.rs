//! Hot reload of the config and of every table the routes' filters read (k-tables, E2E decision
//! tables, hedge tables: whatever [`ReloadableTable`]s the chain declares). One thread wakes on
//! file events (notify), on SIGHUP and at least every poll interval; whatever changed is loaded,
//! checked and swapped in whole. A config or table that does not load leaves the running one in
//! place; why is logged and counted (`hydrus_config_reloads_total{result="error"}`,
//! `hydrus_ktable_reloads_total{...}`, ...).

pub mod watch;

use crate::config::{self, ConfigFile, Running};
use crate::state::State;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use hydrus_filters::clock::unix_ms;
use hydrus_filters::table::ReloadableTable;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use watch::{Change, Seen, Settling, Watched};

pub use watch::SETTLE;

/// What woke the reloader.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// Something may have changed: reload what differs.
    Check,
    /// SIGHUP: reload everything, even if unchanged.
    Force,
    Stop,
}

/// Why the reloader could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// One filter table and its source's watch.
struct TableWatch {
    table: Arc<dyn ReloadableTable>,
    watched: Watched,
}

/// The reloader thread's state.
pub struct Reloader {
    state: Arc<State>,
    config: ConfigFile,
    config_seen: Seen,
    config_settling: Settling,
    /// When a settling file is to be looked at again.
    wake_at: Option<Instant>,
    tables: Vec<TableWatch>,
    agent: ureq::Agent,
    watcher: Option<notify::RecommendedWatcher>,
    watched: Vec<PathBuf>,
    /// The names of the watched files (events about other files in those directories are not
    /// ours).
    watched_names: Vec<std::ffi::OsString>,
    watched_any: bool,
    tx: Sender<Trigger>,
}

impl Reloader {
    /// Load the tables the config names (at start), and get ready to watch the files.
    pub fn new(state: Arc<State>, config: ConfigFile, tx: Sender<Trigger>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = Self {
            config_seen: config_seen(&config).unwrap_or_default(),
            state,
            config,
            config_settling: Settling::default(),
            wake_at: None,
            tables: Vec::new(),
            agent,
            watcher: None,
            watched: Vec::new(),
            watched_names: Vec::new(),
            watched_any: false,
            tx,
        };
        r.retarget();
        r.check_tables(true);
        r
    }

    /// Point the table watches at the running config's tables; a table that took over its
    /// predecessor's content (same source) keeps its watch, so it is not loaded again.
    fn retarget(&mut self) {
        let running = self.state.config.load_full();
        let mut old = std::mem::take(&mut self.tables);
        for table in running.tables() {
            let kept = old
                .iter()
                .position(|o| o.table.source() == table.source() && table.is_loaded());
            let watched = kept.map_or_else(Watched::default, |i| old.swap_remove(i).watched);
            self.tables.push(TableWatch { table, watched });
        }
    }

    /// Watch the directories of the config file and the table files: editors and
    /// `hydrus solve` replace files by rename, which a watch on the file itself would miss.
    /// Only events naming one of the files wake the reloader: a busy directory (a log written
    /// next to the config) would otherwise have it read every file 50 times a second. Nor do
    /// events of a file being opened or read (notify reports opens): the reloader's own reads
    /// would wake it again, for ever.
    fn rewatch(&mut self) {
        // (The embedded config has no file to watch.)
        let mut files: Vec<PathBuf> = match &self.config {
            ConfigFile::Path(p) => vec![p.clone()],
            ConfigFile::Embedded => Vec::new(),
        };
        files.extend(
            self.tables
                .iter()
                .filter_map(|t| t.table.source().path.clone()),
        );
        let mut dirs: Vec<PathBuf> = files.iter().map(|p| parent_dir(p)).collect();
        dirs.sort();
        dirs.dedup();
        let mut names: Vec<std::ffi::OsString> = files
            .iter()
            .filter_map(|p| p.file_name().map(ToOwned::to_owned))
            .collect();
        names.sort();
        names.dedup();
        // A symlinked file (a Kubernetes ConfigMap) changes when a link elsewhere in its
        // directory is swapped: then every event there counts.
        let any = files.iter().any(|p| p.is_symlink());
        if (&dirs, &names, any) == (&self.watched, &self.watched_names, self.watched_any)
            && self.watcher.is_some()
        {
            return;
        }
        let tx = self.tx.clone();
        let wanted = names.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // (An event naming no file, or asking for a rescan, may hide ours. A file opened,
            // read, or closed unwritten has not changed.)
            let ours = ev.is_ok_and(|ev| {
                use notify::event::{AccessKind, AccessMode};
                let changes = match ev.kind {
                    notify::EventKind::Access(a) => a == AccessKind::Close(AccessMode::Write),
                    _ => true,
                };
                let names_ours = || {
                    ev.paths
                        .iter()
                        .any(|p| p.file_name().is_some_and(|n| wanted.iter().any(|w| w == n)))
                };
                ev.need_rescan() || changes && (any || ev.paths.is_empty() || names_ours())
            });
            if ours {
                let _ = tx.send(Trigger::Check);
            }
        });
        match watcher {
            Ok(mut w) => {
                for d in &dirs {
                    if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                        log::warn!("cannot watch {} (polling instead): {e}", d.display());
                    }
                }
                self.watcher = Some(w);
                self.watched = dirs;
                self.watched_names = names;
                self.watched_any = any;
            }
            Err(e) => log::warn!("file watching unavailable (polling instead): {e}"),
        }
    }

    fn count_config(&self, result: &str) {
        self.state
            .metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
    }

    /// Look at the config file; load it when it changed (and settled).
    fn check_config(&mut self, force: bool) {
        let seen = match config_seen(&self.config) {
            Ok(s) => s,
            Err(e) => {
                if force {
                    tracing::error!(file = %self.config.describe(), "config reload: {}: {e}", self.config.describe());
                    self.count_config("error");
                }
                return;
            }
        };
        if !force && seen.bytes == self.config_seen.bytes {
            self.config_settling = Settling::default();
            return;
        }
        if !force {
            if let Err(at) = self.config_settling.settled(&seen.bytes, seen.modified_ms) {
                self.wake(at);
                return;
            }
        }
        self.config_seen = seen;
        let text = String::from_utf8_lossy(&self.config_seen.bytes).into_owned();
        match config::load_str(self.config.path(), &text, &self.state.metrics) {
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(file = %self.config.describe(), "config reload refused, keeping the running config: {e}");
                }
                self.count_config("error");
            }
            Ok(new) => self.install_config(new),
        }
    }

    fn install_config(&mut self, new: Running) {
        let old = self.state.config.load_full();
        let changed = old.start.changed(&new.start);
        if !changed.is_empty() || old.start != new.start {
            tracing::warn!(
                file = %self.config.describe(),
                "config reloaded, but {} take effect only after a restart or upgrade",
                if changed.is_empty() {
                    "start-only settings".to_string()
                } else {
                    changed.join(", ")
                }
            );
        }
        for gone in removed(&old, &new) {
            let kind = match gone {
                Removed::Route(name) => {
                    tracing::warn!(
                        route = %name,
                        file = %self.config.describe(),
                        "config reloaded from {}: route `{name}` that was running is gone from it",
                        self.config.describe()
                    );
                    "route"
                }
                Removed::Filter(route, kind) => {
                    tracing::warn!(
                        route = %route,
                        file = %self.config.describe(),
                        "config reloaded from {}: the `{kind}` filter that was running on route \
                         `{route}` is gone from it",
                        self.config.describe()
                    );
                    kind
                }
            };
            self.state
                .metrics
                .config_dropped
                .with_label_values(&[kind])
                .inc();
        }
        self.state.set_config(new);
        self.retarget();
        self.count_config("ok");
        log::info!("config reloaded from {}", self.config.describe());
    }

    /// Look at every table source; install what changed.
    fn check_tables(&mut self, force: bool) {
        let mut changed = false;
        let mut wakes = Vec::new();
        for t in &mut self.tables {
            match refresh(t, &self.agent, force) {
                Refreshed::Installed => changed = true,
                Refreshed::Settling(at) => wakes.push(at),
                Refreshed::Nothing => {}
            }
        }
        for at in wakes {
            self.wake(at);
        }
        if changed {
            self.state.tables_changed();
        }
    }

    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// How long to wait for a trigger: the shortest poll interval, or a settling file.
    fn next_wait(&mut self) -> Duration {
        let mut poll = self
            .tables
            .iter()
            .map(|t| t.table.source().poll_interval)
            .fold(Duration::from_secs(1), Duration::min);
        if let Some(at) = self.wake_at.take() {
            poll = poll.min(at.saturating_duration_since(Instant::now()));
        }
        poll
    }

    /// Run until a `Stop` trigger arrives or every sender is gone.
    pub fn run(mut self, rx: Receiver<Trigger>) {
        self.rewatch();
        loop {
            let mut force = match rx.recv_timeout(self.next_wait()) {
                Ok(Trigger::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Trigger::Force) => true,
                Ok(Trigger::Check) | Err(RecvTimeoutError::Timeout) => false,
            };
            // Let a burst of file events settle (an editor's write, rename, chmod).
            std::thread::sleep(Duration::from_millis(20));
            while let Ok(t) = rx.try_recv() {
                match t {
                    Trigger::Stop => return,
                    Trigger::Force => force = true,
                    Trigger::Check => {}
                }
            }
            if force {
                log::info!("SIGHUP: reloading the config and the tables");
            }
            self.check_config(force);
            self.check_tables(force);
            self.rewatch();
            self.state.refresh_gauges();
        }
    }
}

enum Refreshed {
    Nothing,
    Installed,
    Settling(Instant),
}

/// Look at one table's source and install what loads; a table that does not load leaves the
/// running one in place.
fn refresh(t: &mut TableWatch, agent: &ureq::Agent, force: bool) -> Refreshed {
    let what = t.table.what();
    match t
        .watched
        .check(t.table.source(), agent, force || !t.table.is_loaded())
    {
        Change::Unchanged => Refreshed::Nothing,
        Change::Settling(at) => Refreshed::Settling(at),
        Change::Failed(e) => {
            failed(t, e.to_string());
            Refreshed::Nothing
        }
        Change::New {
            text,
            source,
            modified_ms,
        } => match t
            .table
            .install(&text, source.clone(), modified_ms, unix_ms())
        {
            Ok(described) => {
                log::info!("{what} loaded from {source} ({described})");
                t.table.counted(true);
                t.watched.error = None;
                Refreshed::Installed
            }
            Err(e) => {
                failed(t, format!("{source}: {e}"));
                Refreshed::Nothing
            }
        },
    }
}

/// A table that did not load: the running one stays. Logged and counted once per distinct
/// failure, not at every poll.
fn failed(t: &mut TableWatch, why: String) {
    if t.watched.error.as_deref() != Some(why.as_str()) {
        tracing::error!(
            table = %t.table.what(),
            "{} not loaded, keeping the running one: {why}",
            t.table.what()
        );
        t.table.counted(false);
        t.watched.error = Some(why);
    }
}

/// The config's bytes now (and its file's modification time).
fn config_seen(config: &ConfigFile) -> std::io::Result<Seen> {
    match config {
        ConfigFile::Path(p) => Seen::read(p),
        ConfigFile::Embedded => Ok(Seen {
            bytes: config::EMBEDDED.as_bytes().to_vec(),
            modified_ms: None,
        }),
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Start the reloader thread and the SIGHUP listener; returns the trigger sender.
pub fn spawn(state: Arc<State>, config: ConfigFile) -> Result<Sender<Trigger>, ReloadError> {
    let (tx, rx) = unbounded();
    let reloader = Reloader::new(state, config, tx.clone());
    std::thread::Builder::new()
        .name("hydrus-reload".into())
        .spawn(move || reloader.run(rx))
        .map_err(|source| ReloadError::Thread {
            what: "reload",
            source,
        })?;
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(ReloadError::Signal)?;
    let hup = tx.clone();
    std::thread::Builder::new()
        .name("hydrus-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                if hup.send(Trigger::Force).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| ReloadError::Thread {
            what: "SIGHUP",
            source,
        })?;
    Ok(tx)
}

/// What a reload took away from the running config.
#[derive(Debug, PartialEq)]
enum Removed {
    /// A route (by name) the new config no longer has.
    Route(String),
    /// A filter kind a route that stays no longer runs: (route, kind).
    Filter(String, &'static str),
}

/// Routes gone, and filters gone from routes that stay: compared per route, since a kind that
/// another route still runs says nothing about the route that lost it.
fn removed(old: &Running, new: &Running) -> Vec<Removed> {
    let mut gone = Vec::new();
    for o in &old.routes {
        let name = &o.route.name;
        let Some(n) = new.routes.iter().find(|n| &n.route.name == name) else {
            gone.push(Removed::Route(name.clone()));
            continue;
        };
        let kept: Vec<&str> = n.route.chain.filters.iter().map(|s| s.kind()).collect();
        for s in &o.route.chain.filters {
            let kind = s.kind();
            let f = Removed::Filter(name.clone(), kind);
            if !kept.contains(&kind) && !gone.contains(&f) {
                gone.push(f);
            }
        }
    }
    gone
}
