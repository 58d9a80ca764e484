//! A config builder: the preamble every test shares (loopback listener and admin, a quick
//! shutdown, its own upgrade socket), clusters, and routes with their filters. It renders a
//! template (`{port}`, `{admin}`, `{dir}` filled in by [`super::render`]).

use std::fmt::Write as _;
use std::net::SocketAddr;

/// A config under construction.
#[derive(Clone)]
pub struct Config {
    threads: Option<usize>,
    grace: String,
    timeout: Option<String>,
    shutdown: Vec<String>,
    top: Vec<String>,
    clusters: Vec<(String, Vec<SocketAddr>, String)>,
    routes: Vec<Route>,
}

/// One route: a name, an optional match, a cluster, its filters in order.
#[derive(Clone)]
pub struct Route {
    name: String,
    matches: Option<String>,
    cluster: String,
    filters: Vec<String>,
    /// More of the route's section (`idempotent: true`).
    more: Vec<String>,
}

/// A route named `name` to `cluster`, matching every request until [`Route::matching`].
pub fn route(name: &str, cluster: &str) -> Route {
    Route {
        name: name.into(),
        matches: None,
        cluster: cluster.into(),
        filters: Vec::new(),
        more: Vec::new(),
    }
}

impl Route {
    /// The route's match, as a YAML flow map: `{ path_prefix: /rank }`.
    pub fn matching(mut self, yaml: &str) -> Self {
        self.matches = Some(yaml.into());
        self
    }

    /// More of the route's section, one `key: value` line.
    pub fn with(mut self, line: &str) -> Self {
        self.more.push(line.into());
        self
    }

    /// Add a filter: its YAML as a list entry's content, e.g. `rollout: { percent: 50 }` or a
    /// block (its lines indented as under `- `).
    pub fn filter(mut self, yaml: &str) -> Self {
        self.filters.push(yaml.trim_matches('\n').to_string());
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    pub fn new() -> Self {
        Self {
            threads: Some(2),
            grace: "0s".into(),
            timeout: None,
            shutdown: Vec::new(),
            top: Vec::new(),
            clusters: Vec::new(),
            routes: Vec::new(),
        }
    }

    pub fn threads(mut self, n: Option<usize>) -> Self {
        self.threads = n;
        self
    }

    /// `shutdown.grace_period` (and `shutdown.timeout`).
    pub fn grace(mut self, grace: &str, timeout: Option<&str>) -> Self {
        self.grace = grace.into();
        self.timeout = timeout.map(str::to_string);
        self
    }

    /// More of the shutdown section (`pid_file: ...`).
    pub fn shutdown(mut self, line: &str) -> Self {
        self.shutdown.push(line.into());
        self
    }

    /// More top-level YAML (`limits:`, `headers:`, ...), as written.
    pub fn top(mut self, yaml: &str) -> Self {
        self.top.push(yaml.trim_matches('\n').to_string());
        self
    }

    pub fn cluster(self, name: &str, endpoints: &[SocketAddr]) -> Self {
        self.cluster_with(name, endpoints, "")
    }

    /// A cluster with more of its section (lines indented by 4).
    pub fn cluster_with(mut self, name: &str, endpoints: &[SocketAddr], extra: &str) -> Self {
        self.clusters.push((
            name.into(),
            endpoints.to_vec(),
            extra.trim_matches('\n').into(),
        ));
        self
    }

    pub fn route(mut self, r: Route) -> Self {
        self.routes.push(r);
        self
    }

    /// The template.
    pub fn template(&self) -> String {
        let mut s = String::from("listen: 127.0.0.1:{port}\n");
        if let Some(n) = self.threads {
            let _ = writeln!(s, "threads: {n}");
        }
        s.push_str("admin:\n  listen: 127.0.0.1:{admin}\n");
        let _ = writeln!(s, "shutdown:\n  grace_period: {}", self.grace);
        if let Some(t) = &self.timeout {
            let _ = writeln!(s, "  timeout: {t}");
        }
        s.push_str("  upgrade_sock: {dir}/upgrade.sock\n");
        for l in &self.shutdown {
            let _ = writeln!(s, "  {l}");
        }
        for t in &self.top {
            let _ = writeln!(s, "{t}");
        }
        s.push_str("clusters:\n");
        for (name, endpoints, extra) in &self.clusters {
            let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
            let _ = writeln!(s, "  {name}:\n    endpoints: [{}]", list.join(", "));
            if !extra.is_empty() {
                let _ = writeln!(s, "{extra}");
            }
        }
        s.push_str("routes:\n");
        for r in &self.routes {
            let _ = writeln!(s, "  - name: {}\n    cluster: {}", r.name, r.cluster);
            if let Some(m) = &r.matches {
                let _ = writeln!(s, "    match: {m}");
            }
            for l in &r.more {
                let _ = writeln!(s, "    {l}");
            }
            if !r.filters.is_empty() {
                s.push_str("    filters:\n");
            }
            for f in &r.filters {
                let mut lines = f.lines();
                if let Some(first) = lines.next() {
                    let _ = writeln!(s, "      - {}", first.trim_start());
                }
                for l in lines {
                    let _ = writeln!(s, "        {l}");
                }
            }
        }
        s
    }
}

/// `rollout: { percent: P }`.
pub fn rollout(percent: &str) -> String {
    format!("rollout: {{ percent: {percent} }}")
}

/// The hydrus filter most tests use: s10 (cost 6), s20 (cost 10, the default), s40 (cost 18),
/// reading the k-table at `ktable` (a path, `{dir}` allowed).
pub fn hydrus3(ktable: &str) -> String {
    format!(
        "hydrus:
  default_strategy: s20
  ktable:
    path: {ktable}
  strategies:
    - {{ name: s10, cost: 6, qoe_scale: 0.9 }}
    - {{ name: s20, cost: 10 }}
    - {{ name: s40, cost: 18, qoe_scale: 1.08 }}"
    )
}

/// The file log under `{dir}/logs`, flushed every 100 ms.
pub fn file_log() -> String {
    "log:
  file:
    dir: {dir}/logs
    flush_interval: 100ms"
        .into()
}
