//! The admin listener: `/metrics` (Prometheus text), `/ready`, `/config` (the running config as
//! JSON) and `/ktable`. It binds to loopback by default because `/config` shows everything.

use crate::state::{now_ms, State};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct Admin {
    pub state: Arc<State>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

impl Admin {
    pub fn ktable_json(&self) -> Option<serde_json::Value> {
        let k = self.state.ktable.load_full()?;
        let running = self.state.config.load();
        let now = now_ms();
        let window = k.table.window_of(now);
        let current: serde_json::Map<String, serde_json::Value> = k
            .table
            .scenario_names()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), json!(k.table.k(i, window))))
            .collect();
        Some(json!({
            "source": k.source,
            "loaded_at_ms": k.loaded_at_ms,
            "made_at_ms": k.made_at_ms,
            "age_seconds": k.age(now).as_secs_f64(),
            "stale": k.stale(running.hydrus.as_ref().and_then(|h| h.ktable.max_age), now),
            "window_secs": k.table.window_secs(),
            "current_window": window,
            "current_k": current,
            "table": k.table.to_file(),
        }))
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                self.state.refresh_gauges();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.state.metrics.render(),
                )
            }
            "/ready" => {
                if self.state.ready.load(Ordering::SeqCst) {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not ready\n".to_vec(),
                    )
                }
            }
            "/config" => {
                let r = self.state.config.load();
                json_reply(
                    StatusCode::OK,
                    json!({"file": r.file, "threads": r.threads, "config": r.source}),
                )
            }
            "/ktable" => match self.ktable_json() {
                Some(v) => json_reply(StatusCode::OK, v),
                None => json_reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": "no k-table loaded; requests get the default strategy"}),
                ),
            },
            _ => json_reply(
                StatusCode::NOT_FOUND,
                json!({"error": "not found", "endpoints": ["/metrics", "/ready", "/config", "/ktable"]}),
            ),
        }
    }
}
