//! Hot reload of the config and the k-table. One thread wakes on file events (notify), on SIGHUP
//! and at least every poll interval; whatever changed is loaded, checked and swapped in whole. A
//! config or k-table that does not load leaves the running one in place; why is logged and
//! counted (`hydrus_config_reloads_total{result="error"}`, `hydrus_ktable_reloads_total{...}`).

use crate::config::{self, KTableSource, Running};
use crate::state::{now_ms, system_time_ms, KTableState, Loaded, State};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use hydrus_filters::e2e::E2eTable;
use hydrus_filters::hedge::HedgeTable;
use hydrus_filters::KTable;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What woke the reloader.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// Something may have changed: reload what differs.
    Check,
    /// SIGHUP: reload both, even if unchanged.
    Force,
    Stop,
}

/// The bytes and modification time last loaded from a file, to see whether it changed.
#[derive(Debug, Clone, PartialEq, Default)]
struct Seen {
    bytes: Vec<u8>,
    modified_ms: Option<u64>,
}

/// A changed file is loaded only once it has stopped changing for this long: editors and
/// config-management tools may write a file in several chunks, and its first half must not go
/// live. (A file replaced by rename is whole, and waits at most this long.)
pub const SETTLE: Duration = Duration::from_millis(250);

/// A file's new content that has not settled yet: its bytes and when they were first read.
#[derive(Debug, Default)]
struct Settling {
    pending: Option<(Vec<u8>, Instant)>,
}

impl Settling {
    /// Whether `bytes` (read now, from a file last modified at `modified_ms`) have settled;
    /// if not, when to look again.
    fn settled(&mut self, bytes: &[u8], modified_ms: Option<u64>) -> Result<(), Instant> {
        let now = Instant::now();
        let quiet = modified_ms
            .map(|m| now_ms().saturating_sub(m))
            .is_some_and(|age| age >= SETTLE.as_millis() as u64);
        match &self.pending {
            _ if quiet => {}
            Some((b, since)) if b.as_slice() == bytes => {
                if since.elapsed() < SETTLE {
                    return Err(*since + SETTLE);
                }
            }
            _ => {
                self.pending = Some((bytes.to_vec(), now));
                return Err(now + SETTLE);
            }
        }
        self.pending = None;
        Ok(())
    }
}

fn modified_ms(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(system_time_ms)
}

/// What looking at a table source found.
enum Change {
    Unchanged,
    /// New content: its text, where it came from, and the file's or response's modification time.
    New {
        text: String,
        source: String,
        modified_ms: Option<u64>,
    },
    Failed(String),
    /// New content that is still changing: look again at this time.
    Settling(Instant),
}

/// One table source (a file or an http URL) being watched for new content.
#[derive(Default)]
struct Watched {
    source: Option<KTableSource>,
    seen: Seen,
    etag: Option<String>,
    next_poll: Option<Instant>,
    /// The last failure, so that a persisting one is logged and counted once.
    error: Option<String>,
    settling: Settling,
}

impl Watched {
    /// Point at a (possibly) new source; true when it changed.
    fn set_source(&mut self, source: Option<KTableSource>) -> bool {
        if source == self.source {
            return false;
        }
        *self = Watched {
            source,
            ..Watched::default()
        };
        true
    }

    fn path(&self) -> Option<&Path> {
        self.source.as_ref().and_then(|s| s.path.as_deref())
    }

    fn check(&mut self, agent: &ureq::Agent, force: bool) -> Change {
        let Some(source) = self.source.clone() else {
            return Change::Unchanged;
        };
        if let Some(path) = &source.path {
            let seen = match std::fs::read(path) {
                Ok(bytes) => Seen {
                    bytes,
                    modified_ms: modified_ms(path),
                },
                Err(e) => return Change::Failed(format!("{}: {e}", path.display())),
            };
            if !force && seen == self.seen {
                self.settling = Settling::default();
                return Change::Unchanged;
            }
            if !force {
                if let Err(at) = self.settling.settled(&seen.bytes, seen.modified_ms) {
                    return Change::Settling(at);
                }
            }
            self.seen = seen;
            return match String::from_utf8(self.seen.bytes.clone()) {
                Ok(text) => Change::New {
                    text,
                    source: path.display().to_string(),
                    modified_ms: self.seen.modified_ms,
                },
                Err(_) => Change::Failed(format!("{}: not UTF-8", path.display())),
            };
        }
        let Some(url) = &source.url else {
            return Change::Unchanged;
        };
        if !force && self.next_poll.is_some_and(|t| Instant::now() < t) {
            return Change::Unchanged;
        }
        self.next_poll = Some(Instant::now() + source.poll_interval);
        if force {
            self.etag = None;
        }
        match fetch(agent, url, self.etag.as_deref()) {
            Err(e) => Change::Failed(e),
            Ok(None) => Change::Unchanged,
            Ok(Some((body, etag, last_modified))) => {
                self.etag = etag;
                if !force && body == self.seen.bytes {
                    return Change::Unchanged;
                }
                self.seen = Seen {
                    bytes: body,
                    modified_ms: last_modified,
                };
                match String::from_utf8(self.seen.bytes.clone()) {
                    Ok(text) => Change::New {
                        text,
                        source: url.clone(),
                        modified_ms: last_modified,
                    },
                    Err(_) => Change::Failed(format!("{url}: not UTF-8")),
                }
            }
        }
    }
}

/// GET a URL, conditional on `etag`: `None` for 304, else (body, ETag, Last-Modified).
type Fetched = Option<(Vec<u8>, Option<String>, Option<u64>)>;

fn fetch(agent: &ureq::Agent, url: &str, etag: Option<&str>) -> Result<Fetched, String> {
    let mut req = agent.get(url);
    if let Some(tag) = etag {
        req = req.header("if-none-match", tag);
    }
    let mut resp = req.call().map_err(|e| format!("{url}: {e}"))?;
    match resp.status().as_u16() {
        304 => return Ok(None),
        200 => {}
        status => return Err(format!("{url}: HTTP {status}")),
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let new_tag = header("etag");
    let last_modified = header("last-modified").and_then(|v| httpdate_ms(&v));
    let body = resp
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(Some((body, new_tag, last_modified)))
}

fn httpdate_ms(v: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(v)
        .ok()
        .or_else(|| parse_imf_fixdate(v))
        .and_then(system_time_ms)
}
/// `Sun, 06 Nov 1994 08:49:37 GMT`, the HTTP date format.
fn parse_imf_fixdate(v: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[2])? + 1;
    let text = format!(
        "{}-{:02}-{:02}T{}Z",
        parts[3],
        month,
        parts[1].parse::<u32>().ok()?,
        parts[4]
    );
    humantime::parse_rfc3339(&text).ok()
}

/// A table and what is known of its age: its own `generated_at_ms`, else the file's or the
/// response's modification time, else now.
fn loaded<T>(table: T, generated: Option<u64>, source: String, modified: Option<u64>) -> Loaded<T> {
    let now = now_ms();
    Loaded {
        made_at_ms: generated.or(modified).unwrap_or(now),
        table,
        source,
        loaded_at_ms: now,
    }
}

/// Load a k-table file.
pub fn load_ktable_file(path: &Path) -> Result<KTableState, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table = KTable::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let generated = table.generated_at_ms();
    Ok(loaded(
        table,
        generated,
        path.display().to_string(),
        modified_ms(path),
    ))
}

/// Check that an e2e table names the e2e filter's groups, in order.
fn e2e_groups_match(table: &E2eTable, running: &Running) -> Result<(), String> {
    match &running.e2e {
        Some(e) if table.groups() != e.group_names.as_slice() => Err(format!(
            "groups {:?} are not the e2e filter's groups {:?}",
            table.groups(),
            e.group_names
        )),
        _ => Ok(()),
    }
}

/// A parsed and checked table with its `generated_at_ms`, or why not.
type Parsed<T> = Result<(T, Option<u64>), String>;

/// How one kind of table is parsed, described and installed.
struct TableKind<'a, T> {
    what: &'a str,
    counter: &'a prometheus::IntCounterVec,
    /// Parse and check the text; the table and its `generated_at_ms`.
    parse: &'a dyn Fn(&str) -> Parsed<T>,
    describe: &'a dyn Fn(&T) -> String,
    install: &'a dyn Fn(Option<Loaded<T>>),
}

/// Point `w` at `source`, look at it, and install what loads; a table that does not load
/// leaves the running one in place.
fn refresh<T>(
    w: &mut Watched,
    agent: &ureq::Agent,
    source: Option<KTableSource>,
    force: bool,
    installed: bool,
    kind: TableKind<'_, T>,
) -> Option<Instant> {
    let mut installed = installed;
    if w.set_source(source) {
        // A different source: what was loaded from the old one no longer applies.
        (kind.install)(None);
        installed = false;
    }
    match w.check(agent, force || !installed) {
        Change::Unchanged => {}
        Change::New {
            text,
            source,
            modified_ms,
        } => match (kind.parse)(&text) {
            Ok((table, generated)) => {
                log::info!(
                    "{} loaded from {source} ({})",
                    kind.what,
                    (kind.describe)(&table)
                );
                (kind.install)(Some(loaded(table, generated, source, modified_ms)));
                kind.counter.with_label_values(&["ok"]).inc();
                w.error = None;
            }
            Err(e) => failed(w, format!("{source}: {e}"), kind.what, kind.counter),
        },
        Change::Failed(e) => failed(w, e, kind.what, kind.counter),
        Change::Settling(at) => return Some(at),
    }
    None
}

/// The reloader thread's state.
pub struct Reloader {
    state: Arc<State>,
    config_path: PathBuf,
    config_seen: Seen,
    config_settling: Settling,
    /// When a settling file is to be looked at again.
    wake_at: Option<Instant>,
    ktable: Watched,
    e2e: Watched,
    hedge: Watched,
    agent: ureq::Agent,
    watcher: Option<notify::RecommendedWatcher>,
    watched: Vec<PathBuf>,
    tx: Sender<Trigger>,
}

impl Reloader {
    /// Load the tables the config names (at start), and get ready to watch the files.
    pub fn new(state: Arc<State>, config_path: PathBuf, tx: Sender<Trigger>) -> Self {
        let config_seen = Seen {
            bytes: std::fs::read(&config_path).unwrap_or_default(),
            modified_ms: modified_ms(&config_path),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = Self {
            state,
            config_path,
            config_seen,
            config_settling: Settling::default(),
            wake_at: None,
            ktable: Watched::default(),
            e2e: Watched::default(),
            hedge: Watched::default(),
            agent,
            watcher: None,
            watched: Vec::new(),
            tx,
        };
        r.check_tables(true);
        r
    }

    /// Watch the directories of the config file and the table files: editors and
    /// `hydrus solve` replace files by rename, which a watch on the file itself would miss.
    fn rewatch(&mut self) {
        let mut dirs = vec![parent_dir(&self.config_path)];
        for p in [self.ktable.path(), self.e2e.path(), self.hedge.path()]
            .into_iter()
            .flatten()
        {
            dirs.push(parent_dir(p));
        }
        dirs.sort();
        dirs.dedup();
        if dirs == self.watched && self.watcher.is_some() {
            return;
        }
        let tx = self.tx.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok() {
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
            }
            Err(e) => log::warn!("file watching unavailable (polling instead): {e}"),
        }
    }

    fn check_config(&mut self, force: bool) {
        let seen = Seen {
            bytes: match std::fs::read(&self.config_path) {
                Ok(b) => b,
                Err(e) => {
                    if force {
                        log::error!("config reload: {}: {e}", self.config_path.display());
                        self.state
                            .metrics
                            .config_reloads
                            .with_label_values(&["error"])
                            .inc();
                    }
                    return;
                }
            },
            modified_ms: modified_ms(&self.config_path),
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
        match config::load_str(&self.config_path, &text) {
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("config reload refused, keeping the running config: {e}");
                }
                self.state
                    .metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
            }
            Ok(new) => {
                let old = self.state.config.load_full();
                warn_restart_only(&old, &new);
                for kind in dropped_filters(&old, &new) {
                    log::warn!(
                        "config reloaded from {}: the `{kind}` filter that was running is gone from it",
                        self.config_path.display()
                    );
                    self.state
                        .metrics
                        .config_dropped
                        .with_label_values(&[kind])
                        .inc();
                }
                self.state.set_config(new);
                self.state
                    .metrics
                    .config_reloads
                    .with_label_values(&["ok"])
                    .inc();
                log::info!("config reloaded from {}", self.config_path.display());
            }
        }
    }

    /// Look at every table source (pointed at what the running config names first).
    fn check_tables(&mut self, force: bool) {
        let running = self.state.config.load_full();
        let (state, metrics) = (self.state.clone(), self.state.metrics.clone());
        let mut wakes = Vec::new();
        wakes.push(refresh(
            &mut self.ktable,
            &self.agent,
            running.hydrus.as_ref().map(|h| h.ktable.clone()),
            force,
            state.ktable.load().is_some(),
            TableKind {
                what: "k-table",
                counter: &metrics.ktable_reloads,
                parse: &|text| {
                    let t = KTable::parse(text).map_err(|e| e.to_string())?;
                    let g = t.generated_at_ms();
                    Ok((t, g))
                },
                describe: &|t: &KTable| format!("{} scenarios", t.scenario_names().len()),
                install: &|t| state.set_ktable(t),
            },
        ));
        wakes.push(refresh(
            &mut self.e2e,
            &self.agent,
            running.e2e.as_ref().map(|e| e.table.clone()),
            force,
            state.e2e.load().is_some(),
            TableKind {
                what: "e2e table",
                counter: &metrics.e2e_reloads,
                parse: &|text| {
                    let t = E2eTable::parse(text).map_err(|e| e.to_string())?;
                    e2e_groups_match(&t, &running)?;
                    let g = t.generated_at_ms();
                    Ok((t, g))
                },
                describe: &|t: &E2eTable| format!("{} buckets", t.buckets()),
                install: &|t| state.set_e2e(t),
            },
        ));
        wakes.push(refresh(
            &mut self.hedge,
            &self.agent,
            running.hedge.as_ref().map(|h| h.table.clone()),
            force,
            state.hedge.load().is_some(),
            TableKind {
                what: "hedge table",
                counter: &metrics.hedge_reloads,
                parse: &|text| {
                    let t = HedgeTable::parse(text).map_err(|e| e.to_string())?;
                    let g = t.generated_at_ms();
                    Ok((t, g))
                },
                describe: &|t: &HedgeTable| format!("budget {}", t.budget()),
                install: &|t| state.set_hedge(t),
            },
        ));
        for at in wakes.into_iter().flatten() {
            self.wake(at);
        }
    }

    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// Run until a `Stop` trigger arrives or every sender is gone.
    pub fn run(mut self, rx: Receiver<Trigger>) {
        self.rewatch();
        loop {
            let mut poll = [&self.ktable, &self.e2e, &self.hedge]
                .iter()
                .filter_map(|w| w.source.as_ref().map(|s| s.poll_interval))
                .fold(Duration::from_secs(1), Duration::min);
            if let Some(at) = self.wake_at.take() {
                poll = poll.min(at.saturating_duration_since(Instant::now()));
            }
            let mut force = match rx.recv_timeout(poll) {
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

/// A table that did not load: the running one stays. Logged and counted once per distinct
/// failure, not at every poll.
fn failed(w: &mut Watched, why: String, what: &str, counter: &prometheus::IntCounterVec) {
    if w.error.as_deref() != Some(why.as_str()) {
        log::error!("{what} not loaded, keeping the running one: {why}");
        counter.with_label_values(&["error"]).inc();
        w.error = Some(why);
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The filter kinds the old config ran that the new one does not.
fn dropped_filters(old: &Running, new: &Running) -> Vec<&'static str> {
    let kinds =
        |r: &Running| -> Vec<&'static str> { r.source.filters.iter().map(|f| f.kind()).collect() };
    let now = kinds(new);
    kinds(old)
        .into_iter()
        .filter(|k| !now.contains(k))
        .collect()
}

/// Settings that only take effect at start: say so rather than pretend.
fn warn_restart_only(old: &Running, new: &Running) {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.admin_listen != new.admin_listen {
        changed.push("admin.listen");
    }
    if old.threads != new.threads {
        changed.push("threads");
    }
    if old.source.server != new.source.server {
        changed.push("server.*");
    }
    if old.log != new.log {
        changed.push("the log filter's sink and queue");
    }
    if old.source.demo_upstream.as_ref().map(|d| &d.listen)
        != new.source.demo_upstream.as_ref().map(|d| &d.listen)
    {
        changed.push("demo_upstream");
    }
    if !changed.is_empty() {
        log::warn!(
            "config reloaded, but {} take effect only after a restart or upgrade",
            changed.join(", ")
        );
    }
}

/// Start the reloader thread and the SIGHUP listener; returns the trigger sender.
pub fn spawn(state: Arc<State>, config_path: PathBuf) -> Result<Sender<Trigger>, String> {
    let (tx, rx) = unbounded();
    let reloader = Reloader::new(state, config_path, tx.clone());
    std::thread::Builder::new()
        .name("hydrus-reload".into())
        .spawn(move || reloader.run(rx))
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
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
        .map_err(|e| format!("cannot start the SIGHUP thread: {e}"))?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_dates() {
        assert_eq!(
            httpdate_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(httpdate_ms("yesterday"), None);
    }
}
