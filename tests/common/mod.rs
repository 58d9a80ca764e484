//! Test harness: real loopback upstreams that record what they receive, the real `hydrus`
//! binary started on a config, and a small HTTP client. Every wait is bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod dns;
pub mod raw;

#[allow(unused_imports)] // not every test binary builds a config
pub use config::{
    file_log, hydrus3, hydrus3_template, pool_filtered, pool_heavy_template, pool_template,
    rollout, route, strategy_config, strategy_template, template, template_with, Config,
};

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback port for a process a test starts. Taken from 20000-29999, below Linux's
/// ephemeral range (so no `bind(0)` or outgoing connection gets it meanwhile), and reserved with
/// a marker file, so that tests running in parallel processes never pick the same one.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("hydrus-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32);
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 10_000) as u16;
        let mark = dir.join(port.to_string());
        // A reservation older than an hour is left over from an earlier run.
        if let Ok(m) = std::fs::metadata(&mark) {
            if m.modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > Duration::from_secs(3600))
            {
                let _ = std::fs::remove_file(&mark);
            }
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&mark)
            .is_err()
        {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub upstream: String,
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, Vec<String>>,
    /// The query as received.
    pub raw_query: String,
    pub headers: BTreeMap<String, String>,
    /// Every header line as received (names spelled as received), in order, duplicates included.
    pub raw_headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|s| s.as_str())
    }
    /// How many header lines named `name` (case-insensitive) arrived.
    pub fn header_count(&self, name: &str) -> usize {
        self.raw_headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }
    pub fn query_one(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .and_then(|v| v.first())
            .map(|s| s.as_str())
    }
}

/// A loopback HTTP/1.1 upstream that records every request and answers 200 with a small JSON
/// body naming itself and echoing hydrus's headers. One thread per connection, keep-alive: a
/// real server's behaviour without a pool that could queue a connection behind others.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
    pub delay_ms: Arc<AtomicU64>,
    /// Extra delay per request in flight (this one included): a load-dependent service time.
    pub per_inflight_ms: Arc<AtomicU64>,
    /// Every `tail_every`-th request (0: none) takes `tail_ms` longer: a slow tail.
    pub tail_every: Arc<AtomicU64>,
    pub tail_ms: Arc<AtomicU64>,
    /// The status `/healthz` answers (200 by default).
    pub health_status: Arc<AtomicU64>,
}

struct Shared {
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    delay: Arc<AtomicU64>,
    per: Arc<AtomicU64>,
    inflight: AtomicU64,
    tail_every: Arc<AtomicU64>,
    tail_ms: Arc<AtomicU64>,
    served: AtomicU64,
    health: Arc<AtomicU64>,
}

/// Serve one connection until it closes or the upstream stops.
fn serve_connection(stream: std::net::TcpStream, sh: Arc<Shared>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        // Request line and headers.
        let mut head: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            // A read timeout may leave part of a line in `line`: keep it, read on.
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {
                    let l = line.trim_end_matches(['\r', '\n']).to_string();
                    line.clear();
                    if l.is_empty() {
                        if head.is_empty() {
                            continue;
                        }
                        break;
                    }
                    head.push(l);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if sh.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let mut parts = head[0].split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let url = parts.next().unwrap_or("/").to_string();
        let raw_headers: Vec<(String, String)> = head[1..]
            .iter()
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let headers: BTreeMap<String, String> = raw_headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let mut body = vec![0u8; len as usize];
            let _ = reader.read_exact(&mut body);
        }
        let (path, q) = url.split_once('?').unwrap_or((&url, ""));
        if path == "/healthz" {
            // Health checks are answered, not recorded.
            let status = sh.health.load(Ordering::SeqCst);
            let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            if writer.write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            query.entry(k.into()).or_default().push(v.into());
        }
        let echo = |h: &str| headers.get(h).cloned().unwrap_or_default();
        let body = format!(
            "{{\"upstream\":\"{}\",\"strategy\":\"{}\",\"group\":\"{}\"}}",
            sh.name,
            echo("x-hydrus-strategy"),
            echo("x-hydrus-group")
        );
        let close = headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        sh.seen.lock().unwrap().push(Seen {
            upstream: sh.name.clone(),
            method,
            path: path.to_string(),
            query,
            raw_query: q.to_string(),
            headers,
            raw_headers,
        });
        let now_in = sh.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        let nth = sh.served.fetch_add(1, Ordering::SeqCst) + 1;
        let every = sh.tail_every.load(Ordering::SeqCst);
        let tail = if every > 0 && nth % every == 0 {
            sh.tail_ms.load(Ordering::SeqCst)
        } else {
            0
        };
        let d = sh.delay.load(Ordering::SeqCst) + sh.per.load(Ordering::SeqCst) * now_in + tail;
        if d > 0 {
            std::thread::sleep(Duration::from_millis(d));
        }
        sh.inflight.fetch_sub(1, Ordering::SeqCst);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
            body
        );
        if writer.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

impl Upstream {
    pub fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0")
    }

    pub fn start_on(name: &str, addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let per_inflight_ms = Arc::new(AtomicU64::new(0));
        let tail_every = Arc::new(AtomicU64::new(0));
        let tail_ms = Arc::new(AtomicU64::new(0));
        let health_status = Arc::new(AtomicU64::new(200));
        let shared = Arc::new(Shared {
            health: health_status.clone(),
            tail_every: tail_every.clone(),
            tail_ms: tail_ms.clone(),
            served: AtomicU64::new(0),
            name: name.to_string(),
            seen: seen.clone(),
            stop: stop.clone(),
            delay: delay_ms.clone(),
            per: per_inflight_ms.clone(),
            inflight: AtomicU64::new(0),
        });
        let acceptor = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !shared.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let sh = shared.clone();
                        conns.push(std::thread::spawn(move || serve_connection(s, sh)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        Self {
            name: name.to_string(),
            addr,
            seen,
            stop,
            acceptor: Some(acceptor),
            delay_ms,
            per_inflight_ms,
            tail_every,
            tail_ms,
            health_status,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Stop answering: close the listener and every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A running `hydrus serve`.
pub struct Hydrus {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub child: Option<Child>,
    pub log_path: PathBuf,
    /// An open-file limit to start hydrus under (soft, hard), when set.
    pub nofile: Option<(u64, u64)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hydrus")
}

/// Fill `{port}`, `{admin}` and `{dir}` in a config template.
pub fn render(template: &str, port: u16, admin: u16, dir: &Path) -> String {
    template
        .replace("{port}", &port.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{dir}", &dir.display().to_string())
}

/// Write a file atomically (temp + rename), as `hydrus solve` and careful operators do.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A k-table with one constant k per scenario.
pub fn ktable(scenarios: &[(&str, f64)], generated_at_ms: Option<u64>) -> String {
    let mut s = String::from("window_secs: 900\n");
    if let Some(g) = generated_at_ms {
        s.push_str(&format!("generated_at_ms: {g}\n"));
    }
    s.push_str("scenarios:\n");
    for (name, k) in scenarios {
        let row = vec![format!("{k}"); 96].join(", ");
        s.push_str(&format!("  {name}: [{row}]\n"));
    }
    s
}

impl Hydrus {
    /// Start hydrus on a config template (see [`render`]) and wait until `/ready`.
    pub fn start(template: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, template)
    }

    pub fn start_in(dir: tempfile::TempDir, template: &str) -> Self {
        Self::start_limited(dir, template, None)
    }

    /// Start under an open-file limit (`prlimit --nofile`), soft and hard alike.
    pub fn start_limited(dir: tempfile::TempDir, template: &str, nofile: Option<u64>) -> Self {
        Self::start_under(dir, template, nofile.map(|n| (n, n)))
    }

    /// Start under a soft and a hard open-file limit (`prlimit --nofile=SOFT:HARD`).
    pub fn start_under(dir: tempfile::TempDir, template: &str, nofile: Option<(u64, u64)>) -> Self {
        let mut h = Self::launch(dir, template, nofile);
        h.wait_ready();
        h
    }

    /// Start without waiting for `/ready` (which may rightly say not ready).
    pub fn launch(dir: tempfile::TempDir, template: &str, nofile: Option<(u64, u64)>) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let config_path = dir.path().join("hydrus.yaml");
        std::fs::write(&config_path, render(template, port, admin_port, dir.path())).unwrap();
        let log_path = dir.path().join("hydrus.log");
        let mut h = Self {
            dir,
            config_path,
            port,
            admin_port,
            child: None,
            log_path,
            nofile,
        };
        h.spawn(false);
        h
    }

    pub fn spawn(&mut self, upgrade: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = match self.nofile {
            // prlimit execs the command: the child's pid is hydrus's.
            Some((soft, hard)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}")).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("serve").arg("--config").arg(&self.config_path);
        if upgrade {
            cmd.arg("--upgrade");
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("hydrus exited early ({status}):\n{}", self.log());
                }
            }
            if let Ok((200, _)) = get(&format!("{}/ready", self.admin())) {
                // Ready means serving: the proxy's port takes connections from then on.
                if let Err(e) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                    panic!(
                        "/ready said ready, the proxy port refused: {e}\n{}",
                        self.log()
                    );
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hydrus not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The value of a metric series, e.g. `hydrus_fallback_total{reason="nan_qoe"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series).unwrap_or(0.0)
    }

    pub fn metrics(&self) -> String {
        get(&format!("{}/metrics", self.admin())).unwrap().1
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// SIGTERM and wait for the exit (bounded).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(60))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(Instant::now() < deadline, "hydrus did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rewrite the config from a template (atomically).
    pub fn rewrite_config(&self, template: &str) {
        write_atomic(
            &self.config_path,
            &render(template, self.port, self.admin_port, self.dir.path()),
        );
    }
}

impl Drop for Hydrus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of `series` in Prometheus text, e.g. `hydrus_fallback_total{reason="nan_qoe"}`:
/// the sum over every series of that name whose labels include the given ones (so an
/// assertion need not name labels it does not care about, such as `route`). `None` when no
/// series matches.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    let (name, want) = split_series(series);
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, labels) = split_series(head);
        if n == name && want.iter().all(|w| labels.contains(w)) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// `name{a="1",b="2"}` as its name and its `a="1"` label pairs.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        None => (series.trim(), Vec::new()),
        Some((name, rest)) => {
            let inner = rest.trim_end().trim_end_matches('}');
            let labels = inner
                .split("\",")
                .map(|l| l.trim_end_matches('"'))
                .filter(|l| !l.is_empty())
                .collect();
            (name, labels)
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

thread_local! {
    static AGENT: ureq::Agent = agent();
}

/// GET with headers; (status, body).
pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
    AGENT.with(|a| {
        let mut req = a.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.call().map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok((status, body))
    })
}

pub fn get(url: &str) -> Result<(u16, String), String> {
    get_with(url, &[])
}

/// Poll `f` until it returns true or `limit` passes; returns whether it did.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send raw bytes on a new connection and read the answer until the server closes or 5 s pass.
pub fn raw_request(port: u16, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough: stop at the end of a Content-Length body.
                let text = String::from_utf8_lossy(&out);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    });
                    if len.is_some_and(|l| body.len() >= l) {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A tansu broker (Kafka protocol) on loopback with in-memory storage.
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let mut b = Self {
            port: free_port(),
            child: None,
            log,
            _dir: dir,
        };
        b.spawn();
        b
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let tansu = which("tansu").expect("tansu is not installed: run `bash .ci/install test`");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_with_config(name, partitions, "");
    }

    /// A topic with a setting (`cleanup.policy=compact`), empty for none.
    pub fn create_topic_with_config(&self, name: &str, partitions: u32, config: &str) {
        let mut cmd = Command::new(which("tansu").unwrap());
        cmd.args([
            "topic",
            "create",
            "--broker",
            &format!("tcp://127.0.0.1:{}", self.port),
        ])
        .args(["--partitions", &partitions.to_string(), name]);
        if !config.is_empty() {
            cmd.args(["--config", config]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (memory storage: topics must be created again).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Write `records` to `path` as JSON lines, as the proxy's file log writes them.
pub fn write_records(path: &Path, records: &[hydrus_filters::LogRecord]) {
    let mut out = Vec::new();
    for r in records {
        r.encode_into(&mut out);
    }
    std::fs::write(path, out).unwrap();
}

/// `hydrus solve ARGS`, which must succeed (else its stderr is the failure).
pub fn solve_ok(args: &[&str]) -> std::process::Output {
    let o = Command::new(bin())
        .arg("solve")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "solve {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Every record in the `*.jsonl` files under `dir` (recursively).
pub fn read_records(dir: &Path) -> Vec<hydrus_filters::LogRecord> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            out.extend(read_records(&p));
        } else if p.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                out.push(
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{}: {e}: {line}", p.display())),
                );
            }
        }
    }
    out
}

/// One request of [`requests`]: its index, status (0 when it failed) and client-side latency.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub i: usize,
    pub status: u16,
    pub latency: Duration,
}

impl Sent {
    pub fn ms(&self) -> f64 {
        self.latency.as_secs_f64() * 1000.0
    }
}

/// `n` GETs of `url` from `threads` threads, request `i` with the headers `headers(i)`;
/// bounded to two minutes. Results in completion order.
pub fn requests(
    url: &str,
    n: usize,
    threads: usize,
    headers: impl Fn(usize) -> Vec<(&'static str, String)> + Send + Sync + 'static,
) -> Vec<Sent> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let headers = Arc::new(headers);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, url, headers) = (next.clone(), url.to_string(), headers.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n || Instant::now() > deadline {
                        return out;
                    }
                    let h = headers(i);
                    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let t = Instant::now();
                    let status = get_with(&url, &h).map_or_else(
                        |e| {
                            eprintln!("request {i} failed: {e}");
                            0
                        },
                        |r| r.0,
                    );
                    out.push(Sent {
                        i,
                        status,
                        latency: t.elapsed(),
                    });
                }
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// What a [`KeepAliveLoad`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: usize,
    /// Requests written to a connection and never answered (reset or closed unanswered): lost.
    pub lost: Vec<String>,
    /// Connections refused before anything was sent (nothing lost).
    pub refused: usize,
    /// Answers other than 200.
    pub other: Vec<String>,
}

/// Clients that keep their connections alive and never retry: each thread writes a request on
/// its connection, reads the answer, and opens a new connection only when the server said
/// `Connection: close` (or refused it). A request whose connection breaks before its answer
/// is counted as lost, not sent again.
pub struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadReport>>,
}

/// Read one HTTP/1.1 response with a content-length body; (status, close?) or None if the
/// connection broke first.
fn read_response(s: &mut std::net::TcpStream) -> Option<(u16, bool)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let lower = head.to_ascii_lowercase();
            let len = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1)?.parse().ok()?;
                return Some((status, lower.contains("connection: close")));
            }
        }
    }
}

impl KeepAliveLoad {
    /// `threads` clients, one request every `pause`, for at most `limit`.
    pub fn start(port: u16, threads: usize, pause: Duration, limit: Duration) -> Self {
        use std::io::Write;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut r = LoadReport::default();
                    let deadline = Instant::now() + limit;
                    let mut conn: Option<std::net::TcpStream> = None;
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        i += 1;
                        let s = match conn.take() {
                            Some(s) => s,
                            None => match std::net::TcpStream::connect(("127.0.0.1", port)) {
                                Ok(s) => {
                                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                                    s
                                }
                                Err(_) => {
                                    r.refused += 1;
                                    std::thread::sleep(pause);
                                    continue;
                                }
                            },
                        };
                        let mut s = s;
                        let req = format!(
                            "GET /rank HTTP/1.1\r\nhost: x\r\nx-user-id: u{t}-{i}\r\nx-qoe-score: 0.5\r\n\r\n"
                        );
                        if s.write_all(req.as_bytes()).is_err() {
                            r.lost.push(format!("thread {t} request {i}: write failed"));
                            continue;
                        }
                        match read_response(&mut s) {
                            Some((200, close)) => {
                                r.ok += 1;
                                if !close {
                                    conn = Some(s);
                                }
                            }
                            Some((status, close)) => {
                                r.other.push(format!("thread {t} request {i}: {status}"));
                                if !close {
                                    conn = Some(s);
                                }
                            }
                            None => r.lost.push(format!("thread {t} request {i}: no answer")),
                        }
                        std::thread::sleep(pause);
                    }
                    r
                })
            })
            .collect();
        Self { stop, threads }
    }

    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadReport::default();
        for t in self.threads {
            let r = t.join().unwrap();
            all.ok += r.ok;
            all.refused += r.refused;
            all.lost.extend(r.lost);
            all.other.extend(r.other);
        }
        all
    }
}

// Helpers several test files share.

/// [`Hydrus::metric`] of the series `name` with `labels`: the sum over the series carrying them,
/// 0 when none does.
pub fn metric_of(h: &Hydrus, name: &str, labels: &[(&str, &str)]) -> f64 {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    h.metric(&format!("{name}{{{}}}", inner.join(",")))
}

/// Whether the server closed `s` within `limit` (reads EOF or a reset).
pub fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    use std::io::Read;
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 4096];
    while t.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

/// hydrus on [`strategy_template`], with a k-table of `kt` written first.
pub fn start_strategies(up: &Upstream, rollout: &str, extra: &str, kt: &[(&str, f64)]) -> Hydrus {
    Hydrus::start_in(
        with_file("ktable.yaml", &ktable(kt, None)),
        &strategy_template(up, rollout, extra),
    )
}

/// The rollout percent that puts every user in treatment.
pub const ALL_TREATED: &str = "100";

/// The two clusters' upstreams (`small`, `big`) and hydrus on [`template`], with `rollout`
/// percent of users in treatment and the k-table `kt` written first when given.
pub fn start(
    rollout: &str,
    kt: Option<String>,
    extra_ktable: &str,
) -> (Upstream, Upstream, Hydrus) {
    let small = Upstream::start("small");
    let big = Upstream::start("big");
    let dir = tempfile::tempdir().unwrap();
    if let Some(kt) = kt {
        std::fs::write(dir.path().join("ktable.yaml"), kt).unwrap();
    }
    let h = Hydrus::start_in(dir, &template(&small, &big, rollout, extra_ktable));
    (small, big, h)
}

/// A GET of `/rank?user=1&candidates=999` with `headers`.
pub fn send(h: &Hydrus, headers: &[(&str, &str)]) -> (u16, String) {
    get_with(&h.url("/rank?user=1&candidates=999"), headers).unwrap()
}

/// The last request either upstream saw.
pub fn last(small: &Upstream, big: &Upstream) -> Seen {
    let mut all = small.seen();
    all.extend(big.seen());
    assert_eq!(
        all.len(),
        1,
        "exactly one request reached an upstream: {all:?}"
    );
    small.take();
    big.take();
    all.pop().unwrap()
}

/// A test directory holding `text` as the file `name` (a template's `{dir}/NAME`).
pub fn with_file(name: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), text).unwrap();
    dir
}

/// A test directory holding `table` as `k.yaml` (the templates' `{dir}/k.yaml`).
pub fn with_ktable(table: &str) -> tempfile::TempDir {
    with_file("k.yaml", table)
}

/// `n` GETs of `/rank`, from users `user-0`, `user-1`, ... with QoE `q`; each answered 200.
pub fn send_users(h: &Hydrus, n: usize, q: &str) {
    for i in 0..n {
        let (status, _) = get_with(
            &h.url("/rank"),
            &[("x-user-id", &format!("user-{i}")), ("x-qoe-score", q)],
        )
        .unwrap();
        assert_eq!(status, 200);
    }
}

/// Steady load from `threads` threads until stopped (at most `limit`); counts statuses.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, threads: usize, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + limit;
                    let url = format!("http://127.0.0.1:{port}/rank");
                    for i in 0..5_000_000u64 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            return;
                        }
                        let user = format!("u{t}-{}", i % 5000);
                        let q = format!("{:.2}", (i % 100) as f64 / 100.0);
                        let headers = [("x-user-id", user.as_str()), ("x-qoe-score", q.as_str())];
                        match get_with(&url, &headers) {
                            Ok((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((s, b)) => failed.lock().unwrap().push(format!("{s} {b}")),
                            Err(e) => failed.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            threads,
        }
    }

    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            Arc::try_unwrap(self.failed).unwrap().into_inner().unwrap(),
        )
    }
}

/// The solver tests' strategies: (name, cost, QoE scale).
pub const SOLVER_STRATEGIES: [(&str, f64, f64); 3] =
    [("s10", 6.0, 0.9), ("s20", 10.0, 1.0), ("s40", 18.0, 1.08)];

/// A control record of [`SOLVER_STRATEGIES`] (QoE `q` under the default strategy, scaled).
pub fn control_record(
    ts_ms: u64,
    i: u64,
    scenario: &str,
    q: f64,
    chosen: &str,
) -> hydrus_filters::LogRecord {
    hydrus_filters::LogRecord {
        ts_ms,
        request_id: format!("r{i}"),
        user_id: format!("u{i}"),
        scenario: scenario.into(),
        group: "control".into(),
        chosen: chosen.into(),
        value_info: SOLVER_STRATEGIES
            .iter()
            .map(|(name, cost, scale)| hydrus_filters::ValueInfo {
                strategy: name.to_string(),
                cost: (*cost).into(),
                qoe: q * scale,
            })
            .collect(),
        status: 200,
        upstream_ms: Some(1.0),
        ..Default::default()
    }
}

/// Deterministic QoE values spread over (0, 1).
pub fn spread_q(i: u64) -> f64 {
    ((i * 7919) % 1000) as f64 / 1000.0 * 0.9 + 0.05
}
