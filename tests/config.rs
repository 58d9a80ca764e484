//! The config file and `hydrus check`: an error names its line (and `serve` refuses to start
//! with it), an endpoint name that does not resolve here is a warning, a bad duration says what
//! durations look like; the embedded default config runs where there is no config file; and the
//! small things an operator meets (help, `simulate` writing nothing unasked, process metrics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn check_names_the_line_of_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\n    bogus: 1\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5:", path.display())) && err.contains("unknown field `bogus`"),
        "{err}"
    );
    // A semantic error names its line too; `serve` refuses to start with the same message.
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\nroute:\n  cluster: b\n",
    )
    .unwrap();
    for cmd in ["check", "serve"] {
        let out = std::process::Command::new(bin())
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:6:", path.display())) && err.contains("no cluster named `b`"),
            "{cmd}: {err}"
        );
    }
    // And a good one is OK.
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK"));
}

/// The README's first command on a machine that has only the binary: `hydrus serve` with no
/// config file anywhere runs the default built into it (the demo ranker behind the proxy, on
/// 127.0.0.1:8080, 8081 and 9901), and `hydrus check` checks that one.
#[test]
fn the_embedded_default_config_runs_where_there_is_no_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let check = Command::new(bin())
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "OK: the embedded default config (as config/hydrus.yaml)"
    );
    let log_path = dir.path().join("hydrus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(bin())
        .arg("serve")
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut h = Hydrus {
        config_path: dir.path().join("config/hydrus.yaml"),
        dir,
        port: 8080,
        admin_port: 9901,
        child: Some(child),
        log_path,
        nofile: None,
    };
    h.wait_ready();
    let (status, body) = get_with(
        &h.url("/rank"),
        &[("x-user-id", "carol"), ("x-qoe-score", "0.1")],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // No k-table here yet (config/ktable.yaml, which `hydrus solve` writes): the default.
    assert!(body.contains("\"strategy\":\"s20\""), "{body}");
    assert!(eventually(Duration::from_secs(5), || {
        h.metric(r#"hydrus_fallback_total{reason="no_ktable"}"#) == 1.0
    }));
    assert!(
        h.log().contains("running the embedded default config"),
        "{}",
        h.log()
    );
    // Its log files go where the default config says, relative to config/: ./logs.
    h.terminate();
    assert_eq!(read_records(&h.path("logs")).len(), 1);
}

/// `hydrus check` may run where the proxy does not (a CI box): an endpoint name that does
/// not resolve there is a warning, not an error.
#[test]
fn check_warns_about_an_endpoint_name_that_does_not_resolve_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"ranker.invalid:8080\"]\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(
            "clusters.a.endpoints[0]: `ranker.invalid:8080` does not resolve on this machine"
        ),
        "{said}"
    );
    // What is not a host name at all is still an error.
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"ranker invalid\"]\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn small_things_an_operator_meets() {
    // `help --help` and `help COMMAND` work.
    let out = Command::new(bin())
        .args(["help", "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin())
        .args(["help", "solve"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: hydrus solve"));
    // A bad duration says what durations look like; sub-second shutdown times are refused,
    // not rounded.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.yaml");
    let base = "listen: 127.0.0.1:8080\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\nroute:\n  cluster: a\n";
    std::fs::write(&path, format!("{base}shutdown:\n  grace_period: 1500ms\n")).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(":8:") && err.contains("not whole seconds"),
        "{err}"
    );
    std::fs::write(&path, format!("{base}shutdown:\n  grace_period: soon\n")).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("durations are written like 500ms, 2s"),
        "{err}"
    );
    // `simulate` without --out writes nothing where it is run.
    let out = Command::new(bin())
        .args(["simulate", "--hedge", "--requests", "2000"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("benches").exists());
    // The process's own metrics, for the open-files alert; and the log sink named at start.
    let up = Upstream::start("a");
    let h = Hydrus::start(&hydrus3_template(&up, "0", "{dir}/k.yaml"));
    let metrics = h.metrics();
    for m in [
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(m), "{m}");
    }
    assert!(
        h.log().contains("decision log: JSON-lines files in"),
        "{}",
        h.log()
    );
}
