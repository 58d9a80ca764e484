//! A demo ranking service, started when the config has `demo_upstream`, so that a fresh
//! checkout answers `curl` at once. It "ranks" `candidates` items (query parameter, default 20)
//! for the user and reports what it was asked to do, including hydrus's headers.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::time::Duration;

pub struct DemoRanker {
    pub per_candidate: Option<Duration>,
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[async_trait]
impl ServeHttp for DemoRanker {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let header = |n: &str| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let candidates: u32 = query_param(req.uri.query(), "candidates")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
            .min(10_000);
        let user = header("x-user-id").unwrap_or_default();
        if let Some(d) = self.per_candidate {
            tokio::time::sleep(d * candidates).await;
        }
        // A stable "score" per (user, item): the top ten of `candidates` items.
        let seed = fnv1a(user.as_bytes());
        let mut scored: Vec<(u64, u32)> = (0..candidates)
            .map(|i| {
                (
                    seed.rotate_left(i % 64) ^ u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    i,
                )
            })
            .collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        let items: Vec<u32> = scored.iter().take(10).map(|s| s.1).collect();
        let body = json!({
            "service": "hydrus-demo-ranker",
            "user": user,
            "strategy": header("x-hydrus-strategy"),
            "group": header("x-hydrus-group"),
            "model": header("x-model"),
            "candidates": candidates,
            "items": items,
        });
        let mut body = serde_json::to_vec(&body).unwrap_or_default();
        body.push(b'\n');
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// FNV-1a: a fixed, dependency-free hash for the demo's made-up scores.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}
