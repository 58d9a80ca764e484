//! Hot-reloaded tables (the k-table, E2E's decision table, the hedge table): where a table
//! comes from, the one loaded, and the slot a filter reads it from. One reload loop (in the
//! edge) watches every filter's [`ReloadableTable`]s, whatever they are.

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A table's source as written in a filter's section (`ktable:`, `table:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSourceConfig {
    /// A file, reloaded when it changes (relative to the config file).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Or an `http://` URL, polled with `If-None-Match`.
    #[serde(default)]
    pub url: Option<String>,
    /// How often the URL (or, as a backstop to file events, the file) is checked.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A table older than this (by its `generated_at_ms`, else the file's or response's
    /// modification time) is stale.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

/// A table's source, checked, with relative paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSource {
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub poll_interval: Duration,
    pub max_age: Option<Duration>,
}

/// A loaded table and what is known of its age.
#[derive(Debug)]
pub struct Loaded<T> {
    pub table: T,
    /// Where it came from: a path or URL.
    pub source: String,
    /// When this proxy loaded it (Unix ms).
    pub loaded_at_ms: u64,
    /// When it was made (Unix ms): its `generated_at_ms`, else the file's modification time or
    /// the response's `Last-Modified`, else when it was loaded.
    pub made_at_ms: u64,
}

impl<T> Loaded<T> {
    /// Whether it is older than `max_age` (never, without one).
    pub fn stale(&self, max_age: Option<Duration>, now_ms: u64) -> bool {
        max_age.is_some_and(|max| self.age(now_ms) > max)
    }

    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.made_at_ms))
    }
}

/// Why a table was refused (the running one stays).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TableError {
    /// It does not parse, or breaks the table format's rules.
    #[error("{0}")]
    Parse(String),
    /// It does not fit the running config (e.g. other replica groups).
    #[error("{0}")]
    Mismatch(String),
}

/// A kind of table.
pub trait Table: Sized + Send + Sync + 'static {
    /// What it is called in logs (`k-table`).
    const WHAT: &'static str;
    fn parse_table(text: &str) -> Result<Self, TableError>;
    fn generated_at(&self) -> Option<u64>;
    /// A short description for the log (`3 scenarios`).
    fn describe(&self) -> String;
}

/// Something that checks a freshly parsed table against the running config.
pub type TableCheck<T> = Box<dyn Fn(&T) -> Result<(), TableError> + Send + Sync>;

/// The table a filter reads: swapped whole on reload, so a request sees one snapshot.
pub struct TableSlot<T: Table> {
    pub source: TableSource,
    current: ArcSwapOption<Loaded<T>>,
    check: Option<TableCheck<T>>,
    /// `ok` / `error` loads, for `hydrus_..._reloads_total`.
    pub reloads: [prometheus::IntCounter; 2],
}

impl<T: Table> TableSlot<T> {
    pub fn new(source: TableSource, reloads: [prometheus::IntCounter; 2]) -> Self {
        Self {
            source,
            current: ArcSwapOption::empty(),
            check: None,
            reloads,
        }
    }

    pub fn with_check(mut self, check: TableCheck<T>) -> Self {
        self.check = Some(check);
        self
    }

    pub fn get(&self) -> Option<Arc<Loaded<T>>> {
        self.current.load_full()
    }

    pub fn set(&self, t: Option<Loaded<T>>) {
        self.current.store(t.map(Arc::new));
    }

    /// Take over another slot's table (same kind, same source: a config reload kept it), if it
    /// has one.
    pub fn adopt(&self, old: &TableSlot<T>) {
        if let Some(t) = old
            .current
            .load_full()
            .filter(|_| old.source == self.source)
        {
            self.current.store(Some(t));
        }
    }
}

/// A table slot as the reload loop sees it, whatever its kind.
pub trait ReloadableTable: Send + Sync {
    fn what(&self) -> &'static str;
    fn source(&self) -> &TableSource;
    fn is_loaded(&self) -> bool;
    /// Parse and install new text; `Ok` with a description, or why not (the running one stays).
    fn install(
        &self,
        text: &str,
        from: String,
        modified_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<String, TableError>;
    /// The source changed: forget what came from the old one.
    fn clear(&self);
    /// Count a load (`ok`) or a refused one.
    fn counted(&self, ok: bool);
}

impl<T: Table> ReloadableTable for TableSlot<T> {
    fn what(&self) -> &'static str {
        T::WHAT
    }

    fn source(&self) -> &TableSource {
        &self.source
    }

    fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    fn install(
        &self,
        text: &str,
        from: String,
        modified_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<String, TableError> {
        let table = T::parse_table(text)?;
        if let Some(check) = &self.check {
            check(&table)?;
        }
        let describe = table.describe();
        let made = table.generated_at().or(modified_ms).unwrap_or(now_ms);
        self.set(Some(Loaded {
            table,
            source: from,
            loaded_at_ms: now_ms,
            made_at_ms: made,
        }));
        Ok(describe)
    }

    fn clear(&self) {
        self.set(None);
    }

    fn counted(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }
}

/// What replaces a secret in a printed URL.
pub const REDACTED: &str = "<redacted>";

/// A URL as it may be printed (in `/config`, `/ktable`, logs): its credentials (`user:pass@`)
/// and every query value replaced by [`REDACTED`], the fragment dropped; the scheme, host,
/// port, path and query keys kept, so that an operator still sees which table it is.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}={REDACTED}"),
                None => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// `text` with every `http://` or `https://` URL in it redacted as [`redacted_url`] does (an
/// error message from an HTTP client may repeat the URL it was given).
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = ["http://", "https://"]
        .iter()
        .filter_map(|s| rest.find(s))
        .min()
    {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')'))
            .map_or(rest.len(), |e| i + e);
        // (Punctuation ending a sentence is not the URL's.)
        let end = i + rest[i..end].trim_end_matches([':', ',', '.', ';']).len();
        out.push_str(&redacted_url(&rest[i..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// What `stat` says of a file, to tell that it has not changed without reading it: the watcher
/// polls its tables once a second, and reading a multi-MB k-table whole each time to compare it
/// cost more than anything else an idle proxy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// How long after a file's last change its stamp is trusted: timestamps move in kernel ticks, so
/// a write in the same tick as an earlier stat can leave them equal (git's "racy" index entries).
pub const STAMP_TRUSTED_AFTER: Duration = Duration::from_secs(1);

impl FileStamp {
    /// The file's stamp now (`None` if it cannot be read, or on a platform without inodes). The
    /// file is opened and its descriptor asked, not its path: NFS revalidates cached attributes
    /// on open (close-to-open), so a table another host rewrote is seen as a read would see it.
    pub fn of(path: &std::path::Path) -> Option<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::File::open(path).and_then(|f| f.metadata()).ok()?;
            Some(Self {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            None
        }
    }

    /// This stamp, if the file's last change (its ctime, which no tool can set back) was at least
    /// [`STAMP_TRUSTED_AFTER`] before `now_ms`: then any later write gives a different stamp.
    pub fn trusted_at(self, now_ms: u64) -> Option<Self> {
        let changed_ms = self.ctime.0.saturating_mul(1000) + self.ctime.1 / 1_000_000;
        let age = i64::try_from(now_ms).ok()?.saturating_sub(changed_ms);
        (age >= STAMP_TRUSTED_AFTER.as_millis() as i64).then_some(self)
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::*;
    use crate::clock::unix_ms;

    #[test]
    fn a_file_changed_keeps_no_stamp_of_before_even_with_its_size_and_mtime_put_back() {
        let dir = std::env::temp_dir().join(format!("hydrus-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("k.yaml");
        std::fs::write(&path, "k: 0.004\n").expect("write");
        let before = FileStamp::of(&path).expect("stamp");
        assert_eq!(
            FileStamp::of(&path),
            Some(before),
            "unchanged: the same stamp"
        );
        assert_eq!(
            before.trusted_at(unix_ms()),
            None,
            "just changed: not trusted yet"
        );
        assert_eq!(before.trusted_at(unix_ms() + 1_500), Some(before));
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "k: 0.002\n").expect("rewrite");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(mtime).expect("mtime put back");
        drop(f);
        let after = FileStamp::of(&path).expect("stamp");
        assert_eq!(after.len, before.len);
        assert_eq!(after.mtime, before.mtime);
        assert_ne!(after, before, "the ctime moved");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_are_redacted() {
        assert_eq!(
            redacted_url("http://alice:s3cret@tables.internal:8080/k.yaml?token=abc&v=2#x"),
            "http://<redacted>@tables.internal:8080/k.yaml?token=<redacted>&v=<redacted>"
        );
        assert_eq!(redacted_url("http://h/k.yaml"), "http://h/k.yaml");
        assert_eq!(redacted_url("http://h?flag"), "http://h?flag");
        // An `@` in the path is not a credential.
        assert_eq!(redacted_url("http://h/a@b"), "http://h/a@b");
        assert_eq!(
            redact_urls_in("GET http://u:p@h/k?t=1: connection refused (http://u:p@h/k?t=1)"),
            "GET http://<redacted>@h/k?t=<redacted>: connection refused (http://<redacted>@h/k?t=<redacted>)"
        );
    }
}
