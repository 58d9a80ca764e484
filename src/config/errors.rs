//! Config problems, each naming the file, line, column and field at fault, as
//! `envoy --mode validate` does; and the checker that collects them while compiling.

use super::locate::Locator;
use hydrus_filters::filter::Problems;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest a setting may be: longer ones are mistakes (and could overflow clocks).
pub const DAY: Duration = Duration::from_secs(86_400);
pub const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field at fault, e.g. `routes[0].filters[1].hydrus.strategies[0].cluster`.
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// A problem with the file as a whole (it cannot be read, it is not YAML).
    pub fn whole(file: &Path, line: Option<usize>, column: Option<usize>, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            column,
            field: None,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// All problems found in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while a config compiles; fields are located in the file's text.
pub struct Checker<'a> {
    pub file: &'a Path,
    locator: Locator,
    /// Problems by field path; located when the checker finishes.
    pub problems: Problems,
    /// What the config is loaded for.
    pub purpose: super::Purpose,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a Path, text: &str) -> Self {
        Self {
            file,
            locator: Locator::new(text),
            problems: Problems::default(),
            purpose: super::Purpose::Serve,
        }
    }

    fn at(&self, field: &str, message: &str) -> ConfigError {
        let at = self.locator.find(field);
        ConfigError {
            file: self.file.to_path_buf(),
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            field: Some(field.to_string()),
            message: message.to_string(),
        }
    }

    /// The errors, if any; else the warnings.
    pub fn finish(&self) -> Result<Vec<ConfigError>, ConfigErrors> {
        let locate = |list: &[(String, String)]| -> Vec<ConfigError> {
            list.iter().map(|(f, m)| self.at(f, m)).collect()
        };
        if self.problems.errors.is_empty() {
            Ok(locate(&self.problems.warnings))
        } else {
            Err(ConfigErrors(locate(&self.problems.errors)))
        }
    }

    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.error(field, message);
    }

    pub fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.warn(field, message);
    }

    pub fn count(&self) -> usize {
        self.problems.count()
    }

    pub fn socket(&mut self, field: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(field, format!("`{text}` is not an IP:PORT address"));
                None
            }
        }
    }

    /// An endpoint as written: an address, or a name resolved while serving. `hydrus check`
    /// warns about a name this machine cannot resolve (it may run elsewhere than the proxy).
    pub fn endpoint(&mut self, field: &str, text: &str) -> Option<hydrus_discovery::Endpoint> {
        match hydrus_discovery::Endpoint::parse(text) {
            Ok(e) => {
                if e.is_name()
                    && self.purpose == super::Purpose::Check
                    && text
                        .to_socket_addrs()
                        .map_or(true, |mut it| it.next().is_none())
                {
                    self.warn(
                        field,
                        format!("`{text}` does not resolve on this machine: until it does where hydrus runs, the cluster has no endpoint there (503, not ready)"),
                    );
                }
                Some(e)
            }
            Err(e) => {
                self.error(field, e.to_string());
                None
            }
        }
    }

    /// Longer than zero, and at most a year.
    pub fn duration_positive(&mut self, field: &str, d: Duration) {
        self.problems.duration_positive(field, d);
    }

    pub fn duration_at_most(&mut self, field: &str, d: Duration, max: Duration) {
        if d > max {
            self.error(
                field,
                format!("must be at most {}", hydrus_filters::filter::readable(max)),
            );
        }
    }
}
