//! A config builder: the preamble every test shares (loopback listener and admin, a quick
//! shutdown, its own upgrade socket), clusters, and routes with their filters. It renders a
//! template (`{port}`, `{admin}`, `{dir}` filled in by [`super::render`]). Below it, the templates
//! built with it that several test files share.

use super::Upstream;
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

// Templates several test files share.

/// hydrus in front of the `pool` cluster (its section's `cluster_extra` lines), no filters;
/// `top`: more top-level YAML.
pub fn pool_template(endpoints: &[SocketAddr], cluster_extra: &str, top: &str) -> String {
    let mut c = Config::new().cluster_with("pool", endpoints, cluster_extra);
    if !top.is_empty() {
        c = c.top(top);
    }
    c.route(route("default", "pool")).template()
}

/// hydrus in front of the `pool` cluster, running one filter.
pub fn pool_filtered(endpoints: &[SocketAddr], filter: &str) -> String {
    Config::new()
        .cluster("pool", endpoints)
        .route(route("default", "pool").filter(filter))
        .template()
}

/// hydrus with strategies that set query keys and a header, `rollout` percent of users in
/// treatment (a salted rollout); `extra`: more of the hydrus section (indented by 6).
pub fn strategy_template(up: &Upstream, rollout: &str, extra: &str) -> String {
    strategy_config(up, Some(rollout), extra)
}

/// As [`strategy_template`]; without a rollout filter when `rollout` is `None`.
pub fn strategy_config(up: &Upstream, rollout: Option<&str>, extra: &str) -> String {
    let extra: Vec<&str> = extra
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    let hydrus = format!(
        r#"hydrus:
  default_strategy: s20
{}
  ktable:
    path: {{dir}}/ktable.yaml
  strategies:
    - {{ name: s10, cost: 6, qoe_scale: 0.9, set_query: {{ candidates: "10" }} }}
    - {{ name: s20, cost: 10, set_query: {{ candidates: "20" }} }}
    - {{ name: s40, cost: 18, qoe_scale: 1.08, set_headers: {{ x-model: large }}, set_query: {{ candidates: "40" }} }}"#,
        extra.join("\n")
    );
    let mut r = route("default", "pool");
    if let Some(p) = rollout {
        r = r.filter(&format!("rollout:\n  percent: {p}\n  salt: s3cret-salt"));
    }
    Config::new()
        .cluster("pool", &[up.addr])
        .route(
            r.filter(&hydrus)
                .filter("log:\n  file:\n    dir: {dir}/logs"),
        )
        .template()
}

/// Two clusters (`small`, `big`); three strategies; `percent` of users in treatment; the hydrus
/// filter with a k-table file in the temp dir (`extra_ktable`: more of its `ktable` section).
/// Hand values for q (single QoE) at k = 0.004:
///   s10: 0.90q - 0.024   s20: q - 0.040   s40: 1.08q - 0.072
///   s20 beats s10 when q > 0.16; s40 beats s20 when q > 0.4.
pub fn template(small: &Upstream, big: &Upstream, percent: &str, extra_ktable: &str) -> String {
    template_with(
        small,
        big,
        percent,
        &format!("path: {{dir}}/ktable.yaml\n{}", extra_ktable.trim()),
    )
}

/// The same, with the k-table's source fields as given.
pub fn template_with(small: &Upstream, big: &Upstream, percent: &str, ktable: &str) -> String {
    let ktable: Vec<String> = ktable.lines().map(|l| format!("    {l}")).collect();
    let hydrus = format!(
        r#"hydrus:
  default_strategy: s20
  ktable:
{}
  strategies:
    - name: s10
      cost: 6
      qoe_scale: 0.9
      set_query: {{ candidates: "10" }}
    - name: s20
      cost: 10
      set_query: {{ candidates: "20" }}
    - name: s40
      cost: 18
      qoe_scale: 1.08
      cluster: big
      set_headers: {{ x-model: large }}
      set_query: {{ candidates: "40" }}"#,
        ktable.join("\n")
    );
    Config::new()
        .grace("1s", Some("2s"))
        .cluster("small", &[small.addr])
        .cluster("big", &[big.addr])
        .route(
            route("default", "small")
                .filter(&rollout(percent))
                .filter(&hydrus),
        )
        .template()
}

/// One endpoint behind `rollout` (`percent`), [`hydrus3`] reading `ktable_path` and the
/// [`file_log`]. Three strategies; at k = 0.004 a QoE of 0.6 makes s40 the argmax (see
/// tests/decision.rs).
pub fn hydrus3_template(up: &Upstream, percent: &str, ktable_path: &str) -> String {
    Config::new()
        .grace("1s", None)
        .cluster("pool", &[up.addr])
        .route(
            route("default", "pool")
                .filter(&rollout(percent))
                .filter(&hydrus3(ktable_path))
                .filter(&file_log()),
        )
        .template()
}

/// hydrus in front of the `pool` cluster (and `slow`, when given, for the `heavy` strategy),
/// with `percent` of users in treatment; a pid file, and the file log under `{dir}/logs`.
pub fn pool_heavy_template(
    upstreams: &[&Upstream],
    slow: Option<&Upstream>,
    percent: u32,
) -> String {
    let endpoints: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let mut hydrus = hydrus3("{dir}/ktable.yaml");
    let mut c = Config::new()
        .grace("2s", Some("3s"))
        .shutdown("pid_file: {dir}/hydrus.pid")
        .cluster_with(
            "pool",
            &endpoints,
            "    connect_timeout: 300ms\n    outlier: { base_ejection_time: 300ms, max_ejection_time: 1s }",
        );
    if let Some(slow) = slow {
        c = c.cluster_with("slow", &[slow.addr], "    read_timeout: 300ms");
        hydrus.push_str("\n    - { name: heavy, cost: 50, cluster: slow }");
    }
    c.route(
        route("default", "pool")
            .filter(&rollout(&percent.to_string()))
            .filter(&hydrus)
            .filter("log:\n  file:\n    dir: {dir}/logs"),
    )
    .template()
}
