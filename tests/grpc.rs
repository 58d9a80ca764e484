//! gRPC through hydrus: a tonic client calls tonic servers (tonic-health's service: a unary call
//! and a server-streaming one) through hydrus over HTTP/2 in clear text. The Hydrus decision is
//! made on the call's metadata and reaches the server as metadata; trailers come back intact;
//! a call hydrus cannot proxy gets a gRPC status, not an HTTP error; an endpoint that reports
//! NOT_SERVING to the gRPC health check gets no calls until it reports SERVING again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::raw::{grpc_response, open_call};
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;

/// A tonic server with the health service, recording every call's metadata.
struct GrpcUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    reporter: HealthReporter,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl GrpcUpstream {
    fn start(rt: &Runtime) -> Self {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let service = InterceptedService::new(service, move |req: tonic::Request<()>| {
            let headers = req.metadata().clone().into_headers();
            record.lock().unwrap().push(headers);
            Ok(req)
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            addr,
            seen,
            reporter,
            _stop: stop,
        }
    }

    fn take(&self) -> Vec<http::HeaderMap> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn set(&self, rt: &Runtime, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        rt.block_on(self.reporter.set_service_status("", status));
    }
}

fn client(rt: &Runtime, port: u16) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    HealthClient::new(rt.block_on(channel.connect()).unwrap())
}

fn request(service: &str, metadata: &[(&'static str, &str)]) -> tonic::Request<HealthCheckRequest> {
    let mut r = tonic::Request::new(HealthCheckRequest {
        service: service.into(),
    });
    for (k, v) in metadata {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

/// The hydrus section: s40 asks for 40 candidates (a query parameter, metadata on a call) and
/// the large model (a header).
const HYDRUS: &str = "hydrus:
  default_strategy: s20
  ktable:
    path: {dir}/ktable.yaml
  strategies:
    - { name: s10, cost: 6, qoe_scale: 0.9, set_query: { candidates: \"10\" } }
    - { name: s20, cost: 10, set_query: { candidates: \"20\" } }
    - { name: s40, cost: 18, qoe_scale: 1.08, set_query: { candidates: \"40\" }, set_headers: { x-model: large } }";

fn start_hydrus(template: &str) -> Hydrus {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ktable.yaml"),
        ktable(&[("default", 0.004)], None),
    )
    .unwrap();
    Hydrus::start_in(dir, template)
}

/// Calls to the health service's Check go through the decision; Watch passes through.
fn config(endpoints: &[SocketAddr], cluster_extra: &str) -> String {
    Config::new()
        .cluster_with("ranking", endpoints, cluster_extra)
        .route(
            route("check", "ranking")
                .matching("{ path: /grpc.health.v1.Health/Check }")
                .filter(&rollout("100"))
                .filter(HYDRUS)
                .filter(&file_log()),
        )
        .route(route("watch", "ranking").matching("{ path: /grpc.health.v1.Health/Watch }"))
        .template()
}

#[test]
fn a_call_is_decided_on_its_metadata_and_streams_pass_through() {
    let rt = Runtime::new().unwrap();
    let up = GrpcUpstream::start(&rt);
    let h = start_hydrus(&config(&[up.addr], "    protocol: h2c"));
    let mut c = client(&rt, h.port);

    // A unary call with QoE metadata: s40 (q = 0.6, k = 0.004), its side effects as metadata.
    let answer = rt
        .block_on(c.check(request(
            "",
            &[
                ("x-user-id", "u1"),
                ("x-qoe-score", "0.6"),
                ("candidates", "9999"),
            ],
        )))
        .unwrap();
    assert_eq!(answer.get_ref().status(), ServingStatus::Serving);
    let seen = up.take().pop().unwrap();
    let md = |k: &str| seen.get(k).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(md("x-hydrus-strategy").as_deref(), Some("s40"));
    assert_eq!(md("x-hydrus-group").as_deref(), Some("hydrus"));
    assert_eq!(md("x-model").as_deref(), Some("large"));
    // The strategy's candidate count replaced the client's (never both).
    assert_eq!(seen.get_all("candidates").iter().count(), 1);
    assert_eq!(md("candidates").as_deref(), Some("40"));
    assert_eq!(md("x-user-id").as_deref(), Some("u1"));

    // A call the server answers with an error status: the status and message come back as
    // the server sent them, and the log record has the call's grpc-status.
    let err = rt
        .block_on(c.check(request("no.such.Service", &[("x-user-id", "u2")])))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("service not registered"), "{err:?}");

    // Server streaming through the pass-through route: every message as the server sends it.
    let mut stream = rt.block_on(c.watch(request("", &[]))).unwrap().into_inner();
    let first = rt.block_on(stream.message()).unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    up.set(&rt, false);
    let second = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), stream.message()).await })
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.status(), ServingStatus::NotServing);
    drop(stream);

    assert!(eventually(Duration::from_secs(5), || {
        read_records(&h.path("logs")).len() >= 2
    }));
    let records = read_records(&h.path("logs"));
    let by_user = |u: &str| records.iter().find(|r| r.user_id == u).unwrap();
    assert_eq!(
        (by_user("u1").status, by_user("u1").grpc_status),
        (200, Some(0))
    );
    assert_eq!(by_user("u1").chosen, "s40");
    assert_eq!(by_user("u2").grpc_status, Some(5), "NOT_FOUND");
    assert_eq!(records.len(), 2, "the watch route is not logged");
}

#[test]
fn a_call_hydrus_cannot_proxy_gets_a_grpc_status_not_an_http_error() {
    let rt = Runtime::new().unwrap();
    // Nothing listens there.
    let gone: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let template = Config::new()
        .cluster_with("ranking", &[gone], "    protocol: h2c")
        .route(
            route("check", "ranking")
                .matching("{ path: /grpc.health.v1.Health/Check }")
                .filter(&file_log()),
        )
        .template();
    let h = start_hydrus(&template);
    let mut c = client(&rt, h.port);
    let err = rt
        .block_on(c.check(request("", &[("x-user-id", "u1")])))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("hydrus"), "{err:?}");
    // No route takes Watch: UNIMPLEMENTED, as a server without the method would say.
    let err = rt.block_on(c.watch(request("", &[]))).unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert_eq!(
        h.metric("hydrus_requests_rejected_total{reason=\"no_route\"}"),
        1.0
    );
    assert!(eventually(Duration::from_secs(5), || {
        !read_records(&h.path("logs")).is_empty()
    }));
    let r = read_records(&h.path("logs")).pop().unwrap();
    assert_eq!((r.status, r.grpc_status), (200, Some(14)));
}

#[test]
fn an_endpoint_not_serving_gets_no_calls_until_it_serves_again() {
    let rt = Runtime::new().unwrap();
    let (a, b) = (GrpcUpstream::start(&rt), GrpcUpstream::start(&rt));
    let (interval, timeout, threshold) = (Duration::from_millis(200), Duration::from_secs(1), 2);
    let checks = format!(
        "    protocol: h2c
    health_check:
      grpc_service: \"\"
      interval: {}ms
      timeout: {}ms
      healthy_threshold: {threshold}
      unhealthy_threshold: {threshold}",
        interval.as_millis(),
        timeout.as_millis()
    );
    // The documented timing: out after `unhealthy_threshold` checks (back after
    // `healthy_threshold`), one per interval, the last answered within its timeout; plus
    // 500 ms: the checks' 100 ms tick (twice) and scheduling on a loaded 2-core machine.
    let bound = interval * threshold + timeout + Duration::from_millis(500);
    let h = start_hydrus(&config(&[a.addr, b.addr], &checks));
    let mut c = client(&rt, h.port);
    let healthy = |addr: SocketAddr| {
        h.metric(&format!(
            "hydrus_endpoint_healthy{{cluster=\"ranking\",endpoint=\"{addr}\"}}"
        ))
    };
    // Both serve: both get calls (the health checks reach the servers too: only calls with
    // our user id are counted).
    let calls = |c: &mut HealthClient<Channel>, n: usize| {
        for _ in 0..n {
            rt.block_on(c.check(request("", &[("x-user-id", "load")])))
                .unwrap();
        }
    };
    let ours = |up: &GrpcUpstream| {
        up.take()
            .iter()
            .filter(|m| m.get("x-user-id").is_some_and(|v| v == "load"))
            .count()
    };
    calls(&mut c, 10);
    let (to_a, to_b) = (ours(&a), ours(&b));
    assert_eq!(to_a + to_b, 10);
    assert!(to_a > 0 && to_b > 0, "both serve: {to_a} and {to_b}");

    // How long after A switches to `serving` the health gauge says `want` (measured from
    // just before the switch; polled every 10 ms, given up after 10 s).
    let switch = |serving: bool, want: f64| {
        let start = Instant::now();
        a.set(&rt, serving);
        while healthy(a.addr) != want && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    };

    // A says NOT_SERVING: it is out within the bound, and then gets no calls.
    let out = switch(false, 0.0);
    assert!(
        out <= bound,
        "out after {out:?}, documented within {bound:?}"
    );
    a.take();
    b.take();
    calls(&mut c, 20);
    assert_eq!((ours(&a), ours(&b)), (0, 20));

    // Serving again: it gets calls again.
    let back = switch(true, 1.0);
    assert!(
        back <= bound,
        "back after {back:?}, documented within {bound:?}"
    );
    eprintln!("out after {out:?}, back after {back:?}; bound {bound:?}");
    calls(&mut c, 20);
    assert!(ours(&a) > 0, "A serves again and gets calls");
}

/// A gRPC server written with the h2 crate, to see what tonic hides: it answers every call
/// (whose body must be the HealthCheckRequest sent) with SERVING after `delay`, then trailers
/// `grpc-status: 0` and `x-served-by: NAME`.
fn h2_server(rt: &Runtime, name: &'static str, delay: Duration) -> SocketAddr {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(answer_call(req, respond, name, delay));
                }
            });
        }
    });
    addr
}

async fn answer_call(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    name: &'static str,
    delay: Duration,
) {
    let mut body = req.into_body();
    let mut got = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    tokio::time::sleep(delay).await;
    let ok = got == GRPC_REQUEST;
    let Ok(mut send) = respond.send_response(grpc_response(), false) else {
        return;
    };
    // A HealthCheckResponse{status: SERVING}: field 1, varint 1.
    let message = bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
    let _ = send.send_data(message, false);
    let mut trailers = http::HeaderMap::new();
    let status = if ok { "0" } else { "3" }; // INVALID_ARGUMENT: not the body sent
    trailers.insert("grpc-status", status.parse().unwrap());
    trailers.insert("x-served-by", name.parse().unwrap());
    let _ = send.send_trailers(trailers);
}

/// A HealthCheckRequest for service "x": field 1, length 1, "x", in a gRPC frame.
const GRPC_REQUEST: &[u8] = &[0, 0, 0, 0, 3, 0x0a, 0x01, b'x'];

/// One call over a raw HTTP/2 connection to hydrus: the response's status, its trailers.
fn raw_call(rt: &Runtime, port: u16) -> (u16, http::HeaderMap) {
    rt.block_on(async move {
        let (response, mut send, _client) =
            open_call(port, "/grpc.health.v1.Health/Check", Some("u1")).await;
        send.send_data(bytes::Bytes::from_static(GRPC_REQUEST), true)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .unwrap()
            .unwrap();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        (status, body.trailers().await.unwrap().unwrap_or_default())
    })
}

fn served_by(t: &http::HeaderMap) -> (&str, &str) {
    let get = |k: &str| t.get(k).map_or("", |v| v.to_str().unwrap());
    (get("grpc-status"), get("x-served-by"))
}

#[test]
fn trailers_come_back_intact_and_slow_calls_are_hedged_only_on_idempotent_routes() {
    let rt = Runtime::new().unwrap();
    let slow = h2_server(&rt, "slow", Duration::from_millis(1500));
    let fast = h2_server(&rt, "fast", Duration::ZERO);
    let hedge = "hedge:\n  table:\n    path: {dir}/hedge.yaml\n  burst: 20";
    let routes = |idempotent: bool| {
        let r = route("check", "ranking").filter(hedge).filter(&file_log());
        let r = if idempotent {
            r.with("idempotent: true")
        } else {
            r
        };
        Config::new()
            .cluster_with("ranking", &[slow, fast], "    protocol: h2c")
            .route(r)
            .template()
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hedge.yaml"),
        "budget: 1.0\nroutes:\n  ranking: { timeout_ms: 100 }\n",
    )
    .unwrap();
    let h = Hydrus::start_in(dir, &routes(true));
    // Round robin sends every other first attempt to the slow server: on this idempotent
    // route those are reissued to the fast one after 100 ms, which answers, trailers and all.
    for _ in 0..4 {
        let (status, trailers) = raw_call(&rt, h.port);
        assert_eq!(status, 200);
        assert_eq!(served_by(&trailers), ("0", "fast"));
    }
    assert!(h.metric("hydrus_hedges_total{result=\"won\"}") >= 1.0);
    assert!(eventually(Duration::from_secs(5), || {
        read_records(&h.path("logs")).len() == 4
    }));
    let records = read_records(&h.path("logs"));
    assert!(records.iter().all(|r| r.grpc_status == Some(0)));
    assert!(records.iter().any(|r| r.hedge.as_deref() == Some("hedge")));

    // The same route not marked idempotent: calls are not reissued, the slow server answers
    // its share, its trailers intact too.
    h.rewrite_config(&routes(false));
    let mut by = std::collections::BTreeSet::new();
    assert!(eventually(Duration::from_secs(10), || {
        let (status, trailers) = raw_call(&rt, h.port);
        assert_eq!(status, 200);
        let (code, name) = served_by(&trailers);
        assert_eq!(code, "0");
        by.insert(name.to_string());
        by.contains("slow")
    }));
}

/// A gRPC server written with the h2 crate that counts the calls it gets. `/t.S/Echo` sends
/// back each piece of the call's body as it arrives (a bidirectional stream); `/t.S/Serve`
/// answers with five messages 150 ms apart (server streaming). Both answer their header at
/// once and end with trailers `grpc-status: 0`.
fn streaming_server(rt: &Runtime) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    rt.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(stream_call(req, respond));
                }
            });
        }
    });
    (addr, calls)
}

/// One message of the streaming tests: `i` in a gRPC frame.
fn message(i: u8) -> bytes::Bytes {
    bytes::Bytes::from(vec![0, 0, 0, 0, 1, i])
}

async fn stream_call(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
) {
    let echo = req.uri().path() == "/t.S/Echo";
    let Ok(mut send) = respond.send_response(grpc_response(), false) else {
        return;
    };
    let mut body = req.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        if echo {
            let _ = send.send_data(chunk, false);
        }
    }
    if !echo {
        for i in 0..5 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let _ = send.send_data(message(i), false);
        }
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let _ = send.send_trailers(trailers);
}

/// Read a response body until it holds `len` bytes (all of it: `usize::MAX`), within 5 s;
/// appends to `got` and the time since `start` at which each whole message arrived.
async fn read_until(
    body: &mut h2::RecvStream,
    len: usize,
    got: &mut Vec<u8>,
    arrivals: &mut Vec<Duration>,
    start: Instant,
) {
    while got.len() < len {
        let next = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("the response's messages within 5 s");
        let Some(chunk) = next else { break };
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
        // (The test's messages are 6 bytes each.)
        while arrivals.len() < got.len() / 6 {
            arrivals.push(start.elapsed());
        }
    }
}

#[test]
fn streaming_calls_on_a_hedged_idempotent_route_reach_the_server_once_and_stream() {
    let rt = Runtime::new().unwrap();
    let (a, calls_a) = streaming_server(&rt);
    let (b, calls_b) = streaming_server(&rt);
    let calls = || calls_a.load(Ordering::SeqCst) + calls_b.load(Ordering::SeqCst);
    let hedge = "hedge:\n  table:\n    path: {dir}/hedge.yaml\n  burst: 20";
    let template = Config::new()
        .cluster_with("ranking", &[a, b], "    protocol: h2c")
        .route(
            route("streams", "ranking")
                .with("idempotent: true")
                .filter(hedge)
                .filter(&file_log()),
        )
        .template();
    let dir = tempfile::tempdir().unwrap();
    // Every call is reissued once it goes 300 ms unanswered, well within both streams.
    std::fs::write(
        dir.path().join("hedge.yaml"),
        "budget: 1.0\nroutes:\n  ranking: { timeout_ms: 300 }\n",
    )
    .unwrap();
    let h = Hydrus::start_in(dir, &template);

    // Server streaming: one request message, five answers over 600 ms. The race ends at the
    // first response header; the messages then come as the server sends them.
    rt.block_on(async {
        let (response, mut send, _client) = open_call(h.port, "/t.S/Serve", Some("u1")).await;
        let start = Instant::now();
        send.send_data(bytes::Bytes::from_static(GRPC_REQUEST), true)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let (mut got, mut arrivals) = (Vec::new(), Vec::new());
        read_until(&mut body, usize::MAX, &mut got, &mut arrivals, start).await;
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(
            got,
            (0..5).flat_map(|i| message(i).to_vec()).collect::<Vec<_>>()
        );
        // Streamed: the last message came well after the first (the server spaces them
        // 600 ms apart), not all at once when the stream ended.
        assert!(
            arrivals[4] - arrivals[0] >= Duration::from_millis(300),
            "{arrivals:?}"
        );
    });
    assert_eq!(calls(), 1, "a server-streaming call is not reissued");

    // Client (and bidirectional) streaming: the body holds more than one message, so it is
    // not hedged, and not held until it ends: the first two messages come back echoed
    // before the client sends its last one.
    rt.block_on(async {
        let (response, mut send, _client) = open_call(h.port, "/t.S/Echo", Some("u2")).await;
        let start = Instant::now();
        send.send_data(message(1), false).unwrap();
        send.send_data(message(2), false).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .unwrap()
            .unwrap();
        let mut body = response.into_body();
        let (mut got, mut arrivals) = (Vec::new(), Vec::new());
        read_until(&mut body, 12, &mut got, &mut arrivals, start).await;
        send.send_data(message(3), true).unwrap();
        read_until(&mut body, usize::MAX, &mut got, &mut arrivals, start).await;
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(got, [message(1), message(2), message(3)].concat());
    });
    assert_eq!(calls(), 2, "a client-streaming call is sent once");

    assert!(eventually(Duration::from_secs(5), || {
        read_records(&h.path("logs")).len() == 2
    }));
    let records = read_records(&h.path("logs"));
    assert!(
        records.iter().all(|r| r.grpc_status == Some(0)),
        "{records:?}"
    );
    assert_eq!(
        h.metric("hydrus_hedges_total{result=\"sent\"}"),
        0.0,
        "nothing reissued"
    );
}

/// Open an HTTP/2 connection to hydrus and start a call to `path`; `body_done` ends its
/// body. Returns the response future's outcome within 5 s: the status and whether the
/// response HEADERS ended the stream (a trailers-only answer), and its grpc-status.
fn raw_start(
    rt: &Runtime,
    port: u16,
    path: &str,
    body_done: bool,
) -> Result<(u16, bool, Option<String>), String> {
    let path = path.to_string();
    rt.block_on(async move {
        let (response, mut send, _client) = open_call(port, &path, None).await;
        send.send_data(bytes::Bytes::from_static(&GRPC_REQUEST[..4]), false)
            .unwrap();
        if body_done {
            send.send_data(bytes::Bytes::from_static(&GRPC_REQUEST[4..]), true)
                .unwrap();
        }
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .map_err(|_| "no answer in 5 s".to_string())?
            .map_err(|e| e.to_string())?;
        let grpc = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        let ended = response.body().is_end_stream();
        Ok((response.status().as_u16(), ended, grpc))
    })
}

#[test]
fn hydrus_answers_are_trailers_only_and_an_unfinished_body_runs_out_of_time() {
    let rt = Runtime::new().unwrap();
    let fast = h2_server(&rt, "fast", Duration::ZERO);
    let template = Config::new()
        .top("limits:\n  body_timeout: 1s\n  idle_timeout: 2s")
        .cluster_with("ranking", &[fast], "    protocol: h2c")
        .route(route("check", "ranking").matching("{ path: /grpc.health.v1.Health/Check }"))
        .template();
    let h = Hydrus::start(&template);
    // No route: UNIMPLEMENTED in HEADERS that end the stream, as gRPC clients expect.
    assert_eq!(
        raw_start(&rt, h.port, "/other.Service/Method", true),
        Ok((200, true, Some("12".into())))
    );
    // A call whose body never ends: the server waits for it, hydrus gives up after
    // body_timeout (the stream is reset) instead of holding the stream and its connection.
    let stalled = raw_start(&rt, h.port, "/grpc.health.v1.Health/Check", false);
    assert!(stalled.is_err(), "{stalled:?}");
    assert!(eventually(Duration::from_secs(5), || {
        h.metric("hydrus_downstream_connections_closed_total{reason=\"body_timeout\"}") == 1.0
    }));
    // Finished calls still go through.
    let (status, trailers) = raw_call(&rt, h.port);
    assert_eq!((status, served_by(&trailers)), (200, ("0", "fast")));
    // Idle HTTP/2 connections are closed after idle_timeout.
    assert!(eventually(Duration::from_secs(8), || {
        h.metric("hydrus_downstream_connections") == 0.0
    }));
}
