//! Trace context and spans end to end: a client's `traceparent` reaches the upstream as a child
//! of the attempt's span; the spans reach a real OTLP receiver (a gRPC server from the
//! OpenTelemetry protocol's own crate) with the right parents, a hedged request's two attempts
//! among them; every logged request's record is an access record; a collector that is down
//! costs requests nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP/gRPC collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name");
            assert!(service.is_some(), "spans name their service");
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serve on a loopback port of its own, on `rt`.
    fn start(rt: &tokio::runtime::Runtime) -> (Self, std::net::SocketAddr) {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Collector::default();
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(c.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (c, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key) {
        Some(Value::StringValue(v)) => Some(v),
        _ => None,
    }
}

fn int(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `tracing:` sending every trace's spans to `collector` (gRPC) soon.
fn tracing(collector: &str, ratio: f64) -> String {
    format!(
        "tracing:\n  sample_ratio: {ratio}\n  flush_interval: 50ms\n  otlp:\n    endpoint: http://{collector}\n    timeout: 1s"
    )
}

#[test]
fn a_hedged_requests_attempts_are_spans_whose_ids_the_upstreams_see_as_parents() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (collector, at) = Collector::start(&rt);
    // One slow endpoint, one fast: a request whose first attempt goes to the slow one is
    // hedged to the other after 50 ms.
    let slow = Upstream::start("slow");
    let fast = Upstream::start("fast");
    slow.delay_ms.store(400, Ordering::SeqCst);
    let template = Config::new()
        .cluster("pool", &[slow.addr, fast.addr])
        .route(
            route("default", "pool")
                .filter("hedge:\n  table:\n    path: {dir}/hedge.yaml\n  burst: 20")
                .filter(&file_log()),
        )
        .top(&tracing(&at.to_string(), 0.0))
        .template();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hedge.yaml"),
        "budget: 1.0\nroutes:\n  pool: { timeout_ms: 50 }\n",
    )
    .unwrap();
    let h = Hydrus::start_in(dir, &template);

    // Four requests, each in a trace of the client's (sampled by it: the proxy's own ratio is
    // 0); round robin sends two of the first attempts to the slow endpoint.
    let trace = |i: u8| {
        (
            format!("4bf92f3577b34da6a3ce929d0e0e47{i:02x}"),
            "00f067aa0ba902b7",
        )
    };
    for i in 0..4u8 {
        let (tid, pid) = trace(i);
        let tp = format!("00-{tid}-{pid}-01");
        let (status, _) = get_with(
            &h.url("/rank"),
            &[
                ("x-user-id", "u1"),
                ("traceparent", &tp),
                ("tracestate", "vendor=1"),
            ],
        )
        .unwrap();
        assert_eq!(status, 200);
    }
    // A caller that does not sample: its context goes on untouched, nothing is recorded.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let (status, _) = get_with(
        &h.url("/rank"),
        &[("x-user-id", "u2"), ("traceparent", unsampled)],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(10), || {
            h.metric(r#"hydrus_trace_spans_total{result="exported"}"#) >= 10.0
        }),
        "spans exported: {}",
        h.metrics()
    );
    let spans = collector.spans();
    let seen: Vec<Seen> = slow.seen().into_iter().chain(fast.seen()).collect();
    let passed: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.header("traceparent")
                .is_some_and(|t| t.contains("0af7651916cd"))
        })
        .collect();
    assert!(!passed.is_empty());
    for s in passed {
        assert_eq!(
            s.header("traceparent"),
            Some(unsampled),
            "passed on untouched"
        );
    }
    assert!(!spans
        .iter()
        .any(|s| hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c"));
    assert_eq!(h.metric("hydrus_traces_sampled_total"), 4.0);
    let mut hedged = 0;
    for i in 0..4u8 {
        let (tid, pid) = trace(i);
        let of_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == tid).collect();
        // The request's span: a child of the client's, carrying the route's decision.
        let req: Vec<&&Span> = of_trace.iter().filter(|s| s.kind == 2).collect();
        assert_eq!(
            req.len(),
            1,
            "one server span in trace {tid}: {of_trace:#?}"
        );
        let req = req[0];
        assert_eq!(hex(&req.parent_span_id), pid);
        assert_eq!(req.trace_state, "vendor=1", "the caller's tracestate kept");
        assert_eq!(text(req, "hydrus.route"), Some("default"));
        assert_eq!(text(req, "hydrus.group"), Some("hydrus"));
        assert_eq!(text(req, "http.request.method"), Some("GET"));
        assert_eq!(int(req, "http.response.status_code"), Some(200));
        // Its attempts: children of it, each the parent the upstream that got it saw.
        let attempts: Vec<&&Span> = of_trace.iter().filter(|s| s.kind == 3).collect();
        assert!(!attempts.is_empty() && attempts.len() <= 2, "{attempts:#?}");
        for a in &attempts {
            assert_eq!(
                a.parent_span_id, req.span_id,
                "an attempt is the request's child"
            );
            assert!(a.start_time_unix_nano >= req.start_time_unix_nano);
            assert!(a.end_time_unix_nano <= req.end_time_unix_nano);
        }
        let sent_parents: Vec<String> = seen
            .iter()
            .filter_map(|s| s.header("traceparent"))
            .filter(|tp| tp.contains(&tid))
            .map(|tp| tp.split('-').nth(2).unwrap().to_string())
            .collect();
        let mut want: Vec<String> = attempts.iter().map(|a| hex(&a.span_id)).collect();
        let mut got = sent_parents.clone();
        want.sort();
        got.sort();
        assert_eq!(
            got, want,
            "each attempt's span is the parent its upstream saw"
        );
        for s in seen
            .iter()
            .filter(|s| s.header("traceparent").is_some_and(|t| t.contains(&tid)))
        {
            assert_eq!(s.header("tracestate"), Some("vendor=1"));
            assert!(s.header("traceparent").unwrap().ends_with("-01"));
        }
        if attempts.len() == 2 {
            hedged += 1;
            let kind = |k: &str| {
                attempts
                    .iter()
                    .find(|a| text(a, "hydrus.attempt") == Some(k))
            };
            let first = kind("first").expect("the first attempt");
            let hedge = kind("hedge").expect("the reissue");
            assert_eq!(int(first, "server.port"), Some(i64::from(slow.addr.port())));
            assert_eq!(int(hedge, "server.port"), Some(i64::from(fast.addr.port())));
            assert_eq!(int(hedge, "http.response.status_code"), Some(200));
            assert_eq!(text(first, "hydrus.outcome"), Some("cancelled"));
        } else {
            assert_eq!(text(attempts[0], "hydrus.attempt"), Some("first"));
        }
    }
    assert!(
        hedged >= 1,
        "round robin sent a first attempt to the slow endpoint"
    );

    // The log records carry the trace ids, attempts and the endpoint that answered.
    assert!(eventually(Duration::from_secs(10), || {
        read_records(&h.path("logs")).len() == 5
    }));
    for r in read_records(&h.path("logs")) {
        let tid = r.access.trace_id.clone().expect("a trace id");
        let unsampled = tid == "0af7651916cd43dd8448eb211c80319c";
        assert!(unsampled || (0..4).any(|i| trace(i).0 == tid), "{tid}");
        assert_eq!(
            r.access.endpoint,
            Some(fast.addr.to_string()),
            "the fast one answered"
        );
        assert!(matches!(r.access.attempts, Some(1 | 2)));
    }
}

#[test]
fn a_passthrough_route_writes_access_records_a_trace_begins_here_and_logs_are_json() {
    let up = Upstream::start("up");
    // A dead collector: nothing listens there. Requests must not notice.
    let dead = format!("127.0.0.1:{}", free_port());
    let template = Config::new()
        .cluster("pool", &[up.addr])
        .route(route("access", "pool").filter(&file_log()))
        .top(&tracing(&dead, 1.0))
        .top("log_format: json")
        .template();
    let h = Hydrus::start(&template);
    let body = "x".repeat(300);
    let agent = ureq::Agent::new_with_defaults();
    let mut resp = agent
        .post(&h.url("/p/q?user=42&n=3"))
        .header("traceparent", "00-not-a-trace-01")
        .header("tracestate", "vendor=1")
        .send(body.as_str())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let answer = resp.body_mut().read_to_string().unwrap();
    // Passed through untouched (no identity or group headers added), but for the trace
    // context of a trace begun here, whose `tracestate` is not the one sent.
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.header("x-hydrus-group"), None);
    assert_eq!(seen.header("x-request-id"), None);
    assert_eq!(seen.header("tracestate"), None);
    let tp = seen
        .header("traceparent")
        .expect("trace context sent")
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{tp}");
    assert_eq!(parts[1].len(), 32);
    // Two `traceparent` fields are no valid one (W3C): a trace of hydrus's own.
    let twice = "00-11111111111111111111111111111111-2222222222222222-01";
    let resp = agent
        .get(&h.url("/p"))
        .header("traceparent", twice)
        .header("traceparent", twice)
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let sent = up.seen().pop().unwrap();
    let sent = sent.header("traceparent").unwrap();
    assert!(!sent.contains("1111111111"), "{sent}");
    for _ in 0..50 {
        assert_eq!(get(&h.url("/p")).unwrap().0, 200);
    }
    assert!(eventually(Duration::from_secs(10), || {
        read_records(&h.path("logs")).len() == 52
    }));
    let records = read_records(&h.path("logs"));
    let r = records
        .iter()
        .find(|r| r.access.method.as_deref() == Some("POST"))
        .unwrap();
    let a = &r.access;
    assert!(a.client_addr.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(
        a.path.as_deref(),
        Some("/p/q?user&n"),
        "query values are not logged"
    );
    assert_eq!(a.protocol.as_deref(), Some("HTTP/1.1"));
    assert_eq!(a.endpoint, Some(up.addr.to_string()));
    assert_eq!(a.attempts, Some(1));
    assert_eq!(a.request_bytes, Some(300));
    assert_eq!(a.response_bytes, Some(answer.len() as u64));
    assert_eq!(
        a.trace_id.as_deref(),
        Some(parts[1]),
        "the record names the trace sent"
    );
    assert_eq!((r.status, r.route.as_deref()), (200, Some("access")));
    assert!(
        r.value_info.is_empty() && r.strategy_set.is_none(),
        "no decision"
    );
    // The collector is down: the spans are dropped, counted, and said so once.
    assert!(eventually(Duration::from_secs(10), || {
        h.metric(r#"hydrus_trace_spans_total{result="export_failed"}"#) > 0.0
    }));
    assert_eq!(
        h.metric(r#"hydrus_trace_spans_total{result="exported"}"#),
        0.0
    );
    // The process log: one JSON object per line, the warning naming what it concerns.
    assert!(eventually(Duration::from_secs(5), || {
        h.log().contains("tracing: export to the collector at")
    }));
    let lines: Vec<serde_json::Value> = h
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for l in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l[key].is_string(), "{key} in {l}");
        }
    }
    let warning = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .contains("export to the collector")
        })
        .unwrap();
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["target"], "hydrus_otel::export");
    assert_eq!(warning["endpoint"], format!("http://{dead}"));
}
