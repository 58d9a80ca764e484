//! What Prometheus and the dashboard see: `promtool` accepts the alerting rules and the live
//! `/metrics` (every family, the spend controller on); a real Prometheus scrapes hydrus and a
//! following solver (on a tansu topic), loads the rules and answers every query of the Grafana
//! dashboard. Loopback only; every load bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn promtool() -> std::path::PathBuf {
    which("promtool").expect("promtool is not installed: run `bash .ci/install test`")
}

#[test]
fn promtool_accepts_the_rules_and_the_live_metrics() {
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(format!("{ROOT}/config/prometheus-rules.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the spend controller on: every family the proxy can export is in the text.
    let up = Upstream::start("a");
    let h = start_with_spend_control(&up);
    for i in 0..40 {
        get_with(
            &h.url("/"),
            &[("x-user-id", &format!("u{i}")), ("x-qoe-score", "0.5")],
        )
        .unwrap();
        if i == 19 {
            // Past the loop's period: the next request updates it.
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
    assert!(
        h.metrics().contains("hydrus_spend_correction{"),
        "{}",
        h.metrics()
    );
    promtool_accepts(&h.metrics());
}

/// `promtool check metrics` accepts `exposition`.
fn promtool_accepts(exposition: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn query(prom: u16, q: &str) -> serde_json::Value {
    let url = format!(
        "http://127.0.0.1:{prom}/api/v1/query?query={}",
        q.bytes()
            .map(|b| if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    let (status, body) = get(&url).unwrap();
    assert_eq!(status, 200, "{q}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// hydrus on [`pool_heavy_template`] (half of the users in treatment), with the spend controller
/// on (a cap) and a k-table that carries the solver's expectation: every dashboard query has its
/// series.
fn start_with_spend_control(up: &Upstream) -> Hydrus {
    let dir = tempfile::tempdir().unwrap();
    let row = vec!["10"; 96].join(", ");
    let table = format!(
        "{}expected:\n  default:\n    cost_per_request: [{row}]\n",
        ktable(&[("default", 0.004)], None)
    );
    std::fs::write(dir.path().join("ktable.yaml"), table).unwrap();
    let t = pool_heavy_template(&[up], None, 50)
        .replace(
            "qoe_scale: 1.08 }",
            "qoe_scale: 1.08 }\n          spend_control: { scenarios: { default: { max_cost_per_second: 100000 } } }",
        )
        // A rollout guard: its series too.
        .replace("rollout: { percent: 50 }", "rollout: { percent: 50, guard: {} }");
    assert!(t.contains("guard: {}"), "{t}");
    Hydrus::start_in(dir, &t)
}

/// `hydrus solve --follow` on a tansu topic holding a few records, serving its metrics on the
/// returned port: every solver family has its series (the lag's are per partition).
fn start_solver(b: &Broker, dir: &std::path::Path) -> (std::process::Child, u16) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    b.create_topic("logs", 1);
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", b.url())
        .create()
        .unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 60_000;
    for i in 0..20 {
        let line = format!(
            r#"{{"ts_ms":{ts},"request_id":"r{i}","chosen":"a","value_info":[{{"strategy":"a","cost":1.0,"qoe":0.{i}1}},{{"strategy":"b","cost":2.0,"qoe":0.9}}]}}"#
        );
        p.send(BaseRecord::<(), str>::to("logs").payload(&line))
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let port = free_port();
    let child = Command::new(bin())
        .args(["solve", "--follow", "--window", "10s", "--lateness", "1s"])
        .arg("--logs")
        .arg(format!("kafka://{}/logs", b.url()))
        .arg("--out")
        .arg(dir.join("k.yaml"))
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, port)
}

#[test]
fn prometheus_scrapes_hydrus_and_every_dashboard_query_answers() {
    let up = Upstream::start("a");
    let h = start_with_spend_control(&up);
    let broker = Broker::start();
    let solver_dir = tempfile::tempdir().unwrap();
    let (mut solver, solver_port) = start_solver(&broker, solver_dir.path());
    let solver_metrics = || {
        get(&format!("http://127.0.0.1:{solver_port}/metrics"))
            .map(|r| r.1)
            .unwrap_or_default()
    };
    let load = Load::start(h.port, 2, Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{ROOT}/config/prometheus-rules.yaml\"]\nscrape_configs:\n  - job_name: hydrus\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n  - job_name: hydrus-solver\n    static_configs:\n      - targets: [\"127.0.0.1:{solver_port}\"]\n",
            h.admin_port
        ),
    )
    .unwrap();
    let prometheus =
        which("prometheus").expect("prometheus is not installed: run `bash .ci/install test`");
    let mut prom = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let answered = eventually(Duration::from_secs(40), || {
        get(&format!("http://127.0.0.1:{prom_port}/-/ready")).is_ok_and(|r| r.0 == 200)
            && query(prom_port, "sum(rate(hydrus_requests_total[10s]))")["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
    });
    let (ok, failed) = load.finish();
    assert!(
        answered,
        "prometheus scraped hydrus and a rate query answered"
    );
    // The solver has read the topic and measured its lag: every family it exports has series.
    let solver_read = eventually(Duration::from_secs(30), || {
        let text = solver_metrics();
        metric_value(&text, "hydrus_solver_records_read_total") == Some(20.0)
            && metric_value(&text, "hydrus_solver_consumer_lag") == Some(0.0)
            && !query(prom_port, "hydrus_solver_consumer_lag")["data"]["result"]
                .as_array()
                .is_some_and(|r| r.is_empty())
    });
    assert!(solver_read, "{}", solver_metrics());
    // promtool accepts the solver's exposition too.
    promtool_accepts(&solver_metrics());
    assert!(ok > 0 && failed.is_empty(), "{failed:?}");
    // Every query of the Grafana dashboard is valid PromQL and names real metrics.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let metrics = h.metrics() + &solver_metrics();
    let mut n = 0;
    for panel in dash["panels"].as_array().unwrap() {
        // (A row has no targets.)
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$solver", ".*");
            let v = query(prom_port, &expr);
            assert_eq!(v["status"], "success", "{expr}: {v}");
            let name = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .find(|w| w.starts_with("hydrus_") || w.starts_with("process_"))
                .unwrap();
            let base = name.trim_end_matches("_bucket");
            assert!(metrics.contains(base), "{name} is exported");
            n += 1;
        }
    }
    assert!(n >= 10);
    assert!(!query(
        prom_port,
        "sum by (strategy) (rate(hydrus_requests_total[1m]))"
    )["data"]["result"]
        .as_array()
        .unwrap()
        .is_empty());
    // The alerting rules loaded and evaluate.
    let (status, body) = get(&format!("http://127.0.0.1:{prom_port}/api/v1/rules")).unwrap();
    assert_eq!(status, 200);
    let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(list.len(), 23);
    assert!(
        list.iter().all(|r| r["health"] != "err"),
        "{}",
        serde_json::to_string_pretty(list).unwrap()
    );
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = solver.kill();
    let _ = solver.wait();
}
