//! Hot reload of the config and the k-table. One thread wakes on file events (notify), on SIGHUP
//! and at least every poll interval; whatever changed is loaded, checked and swapped in whole. A
//! config or k-table that does not load leaves the running one in place; why is logged and
//! counted (`hydrus_config_reloads_total{result="error"}`, `hydrus_ktable_reloads_total{...}`).

use crate::config::{self, KTableSource, Running};
use crate::state::{now_ms, system_time_ms, KTableState, State};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
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

/// The result of looking at a k-table source.
enum Fetched {
    Unchanged,
    New(Box<KTableState>),
}

/// The bytes and modification time last loaded from a file, to see whether it changed.
#[derive(Debug, Clone, PartialEq, Default)]
struct Seen {
    bytes: Vec<u8>,
    modified_ms: Option<u64>,
}

fn modified_ms(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(system_time_ms)
}

/// Load a k-table file.
pub fn load_ktable_file(path: &Path) -> Result<KTableState, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table = KTable::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let now = now_ms();
    let made = table
        .generated_at_ms()
        .or_else(|| modified_ms(path))
        .unwrap_or(now);
    Ok(KTableState {
        table,
        source: path.display().to_string(),
        loaded_at_ms: now,
        made_at_ms: made,
    })
}

/// GET a k-table URL; `etag` from the last good answer makes it conditional.
fn fetch_ktable(
    agent: &ureq::Agent,
    url: &str,
    etag: &mut Option<String>,
    last_body: &mut Vec<u8>,
) -> Result<Fetched, String> {
    let mut req = agent.get(url);
    if let Some(tag) = etag.as_deref() {
        req = req.header("if-none-match", tag);
    }
    let mut resp = req.call().map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    if status == 304 {
        return Ok(Fetched::Unchanged);
    }
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    let new_tag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let last_modified = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate_ms);
    let body = resp
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))?;
    if body == *last_body {
        *etag = new_tag;
        return Ok(Fetched::Unchanged);
    }
    let text = String::from_utf8(body.clone()).map_err(|_| format!("{url}: not UTF-8"))?;
    let table = KTable::parse(&text).map_err(|e| format!("{url}: {e}"))?;
    *etag = new_tag;
    *last_body = body;
    let now = now_ms();
    Ok(Fetched::New(Box::new(KTableState {
        made_at_ms: table.generated_at_ms().or(last_modified).unwrap_or(now),
        table,
        source: url.to_string(),
        loaded_at_ms: now,
    })))
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

/// The reloader thread's state.
pub struct Reloader {
    state: Arc<State>,
    config_path: PathBuf,
    config_seen: Seen,
    ktable_source: Option<KTableSource>,
    ktable_seen: Seen,
    ktable_error: Option<String>,
    url_etag: Option<String>,
    url_body: Vec<u8>,
    url_next_poll: Instant,
    agent: ureq::Agent,
    watcher: Option<notify::RecommendedWatcher>,
    watched: Vec<PathBuf>,
    tx: Sender<Trigger>,
}

impl Reloader {
    /// Load the k-table the config names (at start), and get ready to watch both files.
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
            ktable_source: None,
            ktable_seen: Seen::default(),
            ktable_error: None,
            url_etag: None,
            url_body: Vec::new(),
            url_next_poll: Instant::now(),
            agent,
            watcher: None,
            watched: Vec::new(),
            tx,
        };
        r.check_ktable(true);
        r
    }

    fn ktable_source_of(running: &Running) -> Option<KTableSource> {
        running.hydrus.as_ref().map(|h| h.ktable.clone())
    }

    /// Watch the directories of the config file and of the k-table file: editors and
    /// `hydrus solve` replace files by rename, which a watch on the file itself would miss.
    fn rewatch(&mut self) {
        let mut dirs = vec![parent_dir(&self.config_path)];
        if let Some(p) = self.ktable_source.as_ref().and_then(|s| s.path.as_ref()) {
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
            return;
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
                let source_changed = Self::ktable_source_of(&new) != self.ktable_source;
                self.state.set_config(new);
                self.state
                    .metrics
                    .config_reloads
                    .with_label_values(&["ok"])
                    .inc();
                log::info!("config reloaded from {}", self.config_path.display());
                if source_changed {
                    self.check_ktable(true);
                }
            }
        }
    }

    fn ktable_failed(&mut self, why: String) {
        if self.ktable_error.as_deref() != Some(why.as_str()) {
            log::error!("k-table not loaded, keeping the running one: {why}");
            self.state
                .metrics
                .ktable_reloads
                .with_label_values(&["error"])
                .inc();
            self.ktable_error = Some(why);
        }
    }

    fn ktable_loaded(&mut self, k: KTableState) {
        log::info!(
            "k-table loaded from {} ({} scenarios)",
            k.source,
            k.table.scenario_names().len()
        );
        self.state.set_ktable(Some(k));
        self.state
            .metrics
            .ktable_reloads
            .with_label_values(&["ok"])
            .inc();
        self.ktable_error = None;
    }

    fn check_ktable(&mut self, force: bool) {
        let running = self.state.config.load_full();
        let source = Self::ktable_source_of(&running);
        if source != self.ktable_source {
            // A different source: what was loaded from the old one no longer applies.
            self.ktable_source = source.clone();
            self.ktable_seen = Seen::default();
            self.url_etag = None;
            self.url_body.clear();
            self.url_next_poll = Instant::now();
            self.ktable_error = None;
            self.state.set_ktable(None);
        }
        let Some(source) = source else {
            return;
        };
        if let Some(path) = &source.path {
            let seen = match std::fs::read(path) {
                Ok(bytes) => Seen {
                    bytes,
                    modified_ms: modified_ms(path),
                },
                Err(e) => {
                    return self.ktable_failed(format!("{}: {e}", path.display()));
                }
            };
            if !force && seen == self.ktable_seen {
                return;
            }
            self.ktable_seen = seen;
            match load_ktable_file(path) {
                Ok(k) => self.ktable_loaded(k),
                Err(e) => self.ktable_failed(e),
            }
        } else if let Some(url) = &source.url {
            if !force && Instant::now() < self.url_next_poll {
                return;
            }
            self.url_next_poll = Instant::now() + source.poll_interval;
            if force {
                self.url_etag = None;
                self.url_body.clear();
            }
            match fetch_ktable(&self.agent, url, &mut self.url_etag, &mut self.url_body) {
                Ok(Fetched::Unchanged) => self.ktable_error = None,
                Ok(Fetched::New(k)) => self.ktable_loaded(*k),
                Err(e) => self.ktable_failed(e),
            }
        }
    }

    /// Run until a `Stop` trigger arrives or every sender is gone.
    pub fn run(mut self, rx: Receiver<Trigger>) {
        self.rewatch();
        loop {
            let poll = self
                .ktable_source
                .as_ref()
                .map_or(Duration::from_secs(1), |s| s.poll_interval)
                .min(Duration::from_secs(1));
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
                log::info!("SIGHUP: reloading config and k-table");
            }
            self.check_config(force);
            self.check_ktable(force);
            self.rewatch();
            self.state.refresh_gauges();
        }
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
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
