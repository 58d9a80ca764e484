//! Writing tables, atomically (a proxy hot-reloads them and must never see half of one): the
//! k-table, E2E and hedge solvers write their files the same way.

use hydrus_filters::hydrus::ktable::{KTable, KTableError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a table could not be written; each names the file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The directory of `--out` could not be created.
    #[error("{}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing, syncing or renaming the temp file over `path` failed.
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A table could not be serialized as YAML.
    #[error("{}: {source}", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    /// The solver's rows do not make a k-table the proxy would load (a bug if ever seen).
    #[error("solver produced an invalid k-table: {0}")]
    InvalidKTable(#[source] KTableError),
}

/// Write a file atomically: a temp file in the same directory, fsynced, renamed over `out`, so
/// that a proxy reloading it never sees half a table.
pub fn write_atomic(out: &Path, text: &str) -> Result<(), OutputError> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Err(source) = std::fs::create_dir_all(&dir) {
        return Err(OutputError::CreateDir { dir, source });
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "table.yaml".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    res.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        OutputError::Write {
            path: out.to_path_buf(),
            source,
        }
    })
}

/// Write `table` as YAML under a `header` comment line, atomically (see [`write_atomic`]).
pub fn write_yaml<T: serde::Serialize>(
    out: &Path,
    header: &str,
    table: &T,
) -> Result<(), OutputError> {
    let yaml = serde_norway::to_string(table).map_err(|source| OutputError::Yaml {
        path: out.to_path_buf(),
        source,
    })?;
    write_atomic(out, &format!("{header}\n{yaml}"))
}

/// Write a k-table atomically (see [`write_atomic`]).
pub fn write_ktable(out: &Path, table: &KTable) -> Result<(), OutputError> {
    let text = format!(
        "# written by `hydrus solve` ({} windows of {} s per scenario)\n{}",
        table.windows(),
        table.window_secs(),
        table.to_yaml()
    );
    write_atomic(out, &text)
}
