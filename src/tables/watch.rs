//! Watching one source (a file, or an `http://` URL) for new content: what was last seen,
//! whether a changing file has settled, conditional GETs.

use hydrus_filters::clock::{unix_ms, unix_ms_of};
use hydrus_filters::table::{redact_urls_in, redacted_url, FileStamp, TableSource};
use std::path::Path;
use std::time::Instant;

/// A changed file is loaded only once it has stopped changing for this long: editors and
/// config-management tools may write a file in several chunks, and its first half must not go
/// live. (A file replaced by rename is whole, and waits at most this long.)
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// Why a source could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{url}: {message}")]
    Url { url: String, message: String },
    #[error("{0}: not UTF-8")]
    NotUtf8(String),
}

/// The bytes and modification time last loaded from a file, to see whether it changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Seen {
    pub bytes: Vec<u8>,
    pub modified_ms: Option<u64>,
}

impl Seen {
    /// A file's bytes and modification time now.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            bytes: std::fs::read(path)?,
            modified_ms: modified_ms(path),
        })
    }
}

/// A file's new content that has not settled yet: its bytes and when they were first read.
#[derive(Debug, Default)]
pub struct Settling {
    pending: Option<(Vec<u8>, Instant)>,
}

impl Settling {
    /// Whether `bytes` (read now, from a file last modified at `modified_ms`) have settled;
    /// if not, when to look again.
    pub fn settled(&mut self, bytes: &[u8], modified_ms: Option<u64>) -> Result<(), Instant> {
        let now = Instant::now();
        let quiet = modified_ms
            .map(|m| unix_ms().saturating_sub(m))
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

pub fn modified_ms(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(unix_ms_of)
}

/// At most how long an unchanged stamp stands for the file's bytes before they are read again.
const STAMP_HELD_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// What looking at a source found.
pub enum Change {
    Unchanged,
    /// New content: its text, where it came from, and the file's or response's modification time.
    New {
        text: String,
        source: String,
        modified_ms: Option<u64>,
    },
    Failed(SourceError),
    /// New content that is still changing: look again at this time.
    Settling(Instant),
}

/// One source being watched for new content.
#[derive(Default)]
pub struct Watched {
    seen: Seen,
    etag: Option<String>,
    next_poll: Option<Instant>,
    /// The file's stamp when `seen` was read, once trusted, and when: while it holds, the file
    /// is not read (but once a minute, in case a file system keeps no honest ctime).
    stamp: Option<(FileStamp, Instant)>,
    /// The last failure, so that a persisting one is logged and counted once.
    pub error: Option<String>,
    settling: Settling,
}

impl Watched {
    /// Look at `source`; `force` reloads even unchanged content.
    pub fn check(&mut self, source: &TableSource, agent: &ureq::Agent, force: bool) -> Change {
        if let Some(path) = &source.path {
            return self.check_file(path, force);
        }
        match &source.url {
            Some(url) => self.check_url(url, source, agent, force),
            None => Change::Unchanged,
        }
    }

    fn check_file(&mut self, path: &Path, force: bool) -> Change {
        let shown = || path.display().to_string();
        let stamp = FileStamp::of(path);
        if let (Some(now), Some((held, since))) = (stamp, self.stamp) {
            if !force && now == held && since.elapsed() < STAMP_HELD_FOR {
                return Change::Unchanged;
            }
        }
        let trusted = stamp
            .and_then(|s| s.trusted_at(unix_ms()))
            .map(|s| (s, Instant::now()));
        self.stamp = None;
        let seen = match Seen::read(path) {
            Ok(s) => s,
            Err(e) => {
                return Change::Failed(SourceError::File {
                    path: shown(),
                    message: e.to_string(),
                })
            }
        };
        if !force && seen == self.seen {
            self.settling = Settling::default();
            self.stamp = trusted;
            return Change::Unchanged;
        }
        if !force {
            if let Err(at) = self.settling.settled(&seen.bytes, seen.modified_ms) {
                return Change::Settling(at);
            }
        }
        self.seen = seen;
        self.stamp = trusted;
        match String::from_utf8(self.seen.bytes.clone()) {
            Ok(text) => Change::New {
                text,
                source: shown(),
                modified_ms: self.seen.modified_ms,
            },
            Err(_) => Change::Failed(SourceError::NotUtf8(shown())),
        }
    }

    fn check_url(
        &mut self,
        url: &str,
        source: &TableSource,
        agent: &ureq::Agent,
        force: bool,
    ) -> Change {
        if !force && self.next_poll.is_some_and(|t| Instant::now() < t) {
            return Change::Unchanged;
        }
        self.next_poll = Some(Instant::now() + source.poll_interval);
        if force {
            self.etag = None;
        }
        let (body, etag, last_modified) = match fetch(agent, url, self.etag.as_deref()) {
            Err(e) => return Change::Failed(e),
            Ok(None) => return Change::Unchanged,
            Ok(Some(got)) => got,
        };
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
                source: redacted_url(url),
                modified_ms: last_modified,
            },
            Err(_) => Change::Failed(SourceError::NotUtf8(redacted_url(url))),
        }
    }
}

/// GET a URL, conditional on `etag`: `None` for 304, else (body, ETag, Last-Modified).
type Fetched = Option<(Vec<u8>, Option<String>, Option<u64>)>;

fn fetch(agent: &ureq::Agent, url: &str, etag: Option<&str>) -> Result<Fetched, SourceError> {
    // (Credentials and query values never reach a log line or an admin page.)
    let failed = |message: String| SourceError::Url {
        url: redacted_url(url),
        message: redact_urls_in(&message),
    };
    let mut req = agent.get(url);
    if let Some(tag) = etag {
        req = req.header("if-none-match", tag);
    }
    let mut resp = req.call().map_err(|e| failed(e.to_string()))?;
    match resp.status().as_u16() {
        304 => return Ok(None),
        200 => {}
        status => return Err(failed(format!("HTTP {status}"))),
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let new_tag = header("etag");
    let last_modified =
        header("last-modified").and_then(|v| hydrus_filters::clock::unix_ms_of_http_date(&v));
    let body = resp
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .map_err(|e| failed(e.to_string()))?;
    Ok(Some((body, new_tag, last_modified)))
}
