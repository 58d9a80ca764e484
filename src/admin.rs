//! The admin listener: `/metrics` (Prometheus text), `/ready`, `/config` (the running config as
//! JSON), `/ktable` and `/rollout` (where each route's rollout stands). It binds to loopback by default because `/config` shows everything.

use crate::state::State;
use async_trait::async_trait;
use http::{Response, StatusCode};
use hydrus_filters::clock::unix_ms;
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

/// `route=NAME` of a query string.
fn route_param(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("route="))
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

impl Admin {
    /// Where each route's rollout stands: its share now, its ramp's step and the next, its
    /// guard's state and figures; one object per route with a rollout filter.
    pub fn rollout_json(&self) -> serde_json::Value {
        let running = self.state.config.load();
        let now = unix_ms();
        let routes: Vec<_> = running
            .routes
            .iter()
            .filter_map(|r| hydrus_filters::rollout::of(&r.route.chain))
            .map(|f| f.standing(now))
            .collect();
        json!(routes)
    }

    /// The k-table of a route's hydrus filter (`route` by name, else the first route with one).
    pub fn ktable_json(&self, route: Option<&str>) -> Option<serde_json::Value> {
        let running = self.state.config.load();
        let (name, filter) = running.routes.iter().find_map(|r| {
            let h = hydrus_filters::hydrus::of(&r.route.chain)?;
            route.is_none_or(|n| n == r.name()).then_some((r.name(), h))
        })?;
        let k = filter.ktable.get()?;
        let now = unix_ms();
        let window = k.table.window_of(now);
        let current: serde_json::Map<String, serde_json::Value> = k
            .table
            .scenario_names()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), json!(k.table.k(i, window))))
            .collect();
        Some(json!({
            "route": name,
            "source": k.source,
            "loaded_at_ms": k.loaded_at_ms,
            "made_at_ms": k.made_at_ms,
            "age_seconds": k.age(now).as_secs_f64(),
            "stale": k.stale(filter.ktable.source.max_age, now),
            "window_secs": k.table.window_secs(),
            "current_window": window,
            "current_k": current,
            "table": k.table.to_file(),
        }))
    }
}

use hydrus_filters::table::REDACTED;

/// Redact the credentials and query values of every `http(s)://` URL in the config.
fn redact_url_credentials(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
            *s = hydrus_filters::table::redacted_url(s);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_url_credentials),
        serde_json::Value::Object(o) => o.values_mut().for_each(redact_url_credentials),
        _ => {}
    }
}

/// The rollout salt and secret Kafka properties of one chain entry.
fn redact_filter(f: &mut serde_json::Value) {
    if let Some(salt) = f.pointer_mut("/rollout/salt") {
        *salt = json!(REDACTED);
    }
    if let Some(props) = f
        .pointer_mut("/log/kafka/properties")
        .and_then(|p| p.as_object_mut())
    {
        for (k, val) in props.iter_mut() {
            if crate::logsink::secret_property(k) {
                *val = json!(REDACTED);
            }
        }
    }
}

/// The running config as `/config` shows it: secrets and the rollout salt (which would let a
/// client pick user ids that land in treatment) replaced.
pub fn redacted_config(config: &crate::config::Config) -> serde_json::Value {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    let each_filter = |v: &mut serde_json::Value, f: &dyn Fn(&mut serde_json::Value)| {
        let Some(o) = v.as_object_mut() else {
            return;
        };
        let top = o.get_mut("filters").and_then(|c| c.as_array_mut());
        top.into_iter().flatten().for_each(f);
        if let Some(routes) = o.get_mut("routes").and_then(|r| r.as_array_mut()) {
            for r in routes {
                let chain = r.get_mut("filters").and_then(|c| c.as_array_mut());
                chain.into_iter().flatten().for_each(f);
            }
        }
    };
    each_filter(&mut v, &as_running);
    redact_url_credentials(&mut v);
    each_filter(&mut v, &redact_filter);
    v
}

/// A chain entry as its kind runs it: its section parsed, defaults filled in.
fn as_running(f: &mut serde_json::Value) {
    let Some(o) = f.as_object_mut().filter(|o| o.len() == 1) else {
        return;
    };
    for (name, section) in o.iter_mut() {
        let kind = hydrus_filters::kinds().find(|k| k.name() == name);
        let yaml = serde_norway::to_value(&*section).ok();
        if let Some(running) = kind.zip(yaml).and_then(|(k, y)| k.running_section(&y)) {
            *section = running;
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            let mut r = json_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "only GET and HEAD are allowed"}),
            );
            r.headers_mut()
                .insert("allow", http::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = req.uri.path().to_string();
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
                // Not before every cluster has had an endpoint (a name may not resolve yet), nor
                // before the proxy's listener is bound.
                let served = self.state.endpoints_found.load(Ordering::Relaxed)
                    && self.state.listening.load(Ordering::Relaxed);
                if self.state.ready.load(Ordering::SeqCst) && served {
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
                    json!({"file": r.file, "threads": r.start.threads, "config": redacted_config(&r.source)}),
                )
            }
            "/ktable" => match self.ktable_json(route_param(req.uri.query())) {
                Some(v) => json_reply(StatusCode::OK, v),
                None => json_reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": "no k-table loaded; requests get the default strategy"}),
                ),
            },
            "/rollout" => json_reply(StatusCode::OK, self.rollout_json()),
            _ => json_reply(
                StatusCode::NOT_FOUND,
                json!({"error": "not found", "endpoints": ["/metrics", "/ready", "/config", "/ktable", "/rollout"]}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_the_salt_are_redacted() {
        let text = r#"
listen: 127.0.0.1:8080
clusters:
  a:
    endpoints: ["127.0.0.1:1"]
route:
  cluster: a
filters:
  - rollout: { percent: 5, salt: pepper }
  - hydrus:
      default_strategy: a
      ktable: { url: "http://ops:tablepass@127.0.0.1:1/k.yaml?token=tabletoken" }
      strategies: [{ name: a, cost: 1 }]
  - log:
      kafka:
        brokers: 127.0.0.1:9092
        topic: t
        properties:
          sasl.password: hunter2
          sasl.oauthbearer.client.secret: s2
          acks: all
"#;
        let m = crate::metrics::Metrics::new();
        let r = crate::config::load_str(std::path::Path::new("h.yaml"), text, &m).expect("valid");
        let v = redacted_config(&r.source).to_string();
        for secret in ["pepper", "hunter2", "s2\"", "tablepass", "tabletoken"] {
            assert!(!v.contains(secret), "{secret} in {v}");
        }
        assert!(v.contains(r#""acks":"all""#), "{v}");
        assert!(v.contains(REDACTED));
        assert!(
            v.contains("http://<redacted>@127.0.0.1:1/k.yaml?token=<redacted>"),
            "{v}"
        );
    }
}
