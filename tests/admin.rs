//! The admin listener: `/config`, `/ktable`, `/ready` describe the running proxy; secrets are
//! redacted, only reads are answered, and `hydrus check` warns about an admin listener open to
//! the network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn admin_endpoints_describe_the_running_proxy() {
    let kt = ktable(&[("default", 0.004)], None);
    let (_small, _big, h) = start(ALL_TREATED, Some(kt), "");
    let (status, body) = get(&format!("{}/config", h.admin())).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The config as written (the route's filters, in order).
    assert_eq!(
        v["config"]["routes"][0]["filters"][1]["hydrus"]["default_strategy"],
        "s20"
    );
    let (status, body) = get(&format!("{}/ktable", h.admin())).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["current_k"]["default"], 0.004);
    assert_eq!(v["window_secs"], 900);
    assert_eq!(
        get(&format!("{}/ready", h.admin())).unwrap(),
        (200, "ready\n".into())
    );
    assert_eq!(get(&format!("{}/nope", h.admin())).unwrap().0, 404);
}

#[test]
fn admin_hides_secrets_and_answers_only_reads() {
    let up = Upstream::start("a");
    let h = start_strategies(&up, "50", "", &[("default", 0.004)]);
    let (status, body) = get(&format!("{}/config", h.admin())).unwrap();
    assert_eq!(status, 200);
    assert!(
        !body.contains("s3cret-salt") && body.contains("<redacted>"),
        "{body}"
    );
    let answer = raw_request(
        h.admin_port,
        b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get, head"),
        "{answer}"
    );
    // `hydrus check` warns about an admin listener open to the network.
    let path = h.path("open-admin.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8080\nadmin:\n  listen: 0.0.0.0:9901\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\nroute:\n  cluster: a\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains(":3:") && err.contains("admin.listen"),
        "{err}"
    );
}
