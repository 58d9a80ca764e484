//! The span queue and the OTLP exporter thread. The request path pushes a sampled request's
//! spans (one box) without waiting or waking anyone; the thread drains the queue on its own
//! timer, in batches of `max_batch` requests, turns them into OTLP protobuf and sends them
//! (gRPC through `tonic`, or an HTTP POST of the same message). A full queue drops (counted,
//! `hydrus_trace_spans_total{result="queue_full"}`); a failed export drops its batch (counted,
//! `export_failed`) and the thread backs off, so a collector that is down costs a refused
//! connection every few seconds, never a request's time.

use super::{AttemptOutcome, AttrValue, FinishedTrace, OtlpProtocol, TracingConfig};
use crossbeam_queue::ArrayQueue;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::{IntCounter, IntGauge};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Queue = ArrayQueue<Box<FinishedTrace>>;

/// The request path's end of the span queue.
pub struct TraceQueue {
    queue: Arc<Queue>,
    dropped: IntCounter,
}

impl TraceQueue {
    /// Hand a request's spans over; a full queue drops them, counted.
    pub fn push(&self, t: Box<FinishedTrace>) {
        let spans = t.spans() as u64;
        if self.queue.push(t).is_err() {
            self.dropped.inc_by(spans);
        }
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("tracing.otlp.endpoint `{endpoint}`: {message}")]
pub struct StartError {
    endpoint: String,
    message: String,
}

/// The exporter thread, for shutdown.
pub struct Exporter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Exporter {
    /// Send what is queued (within `timeout`), then stop.
    pub fn shutdown(self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.thread().unpark();
        let until = Instant::now() + timeout;
        while !self.thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.thread.is_finished() {
            log::warn!("tracing: the exporter did not finish within {timeout:?}; spans still queued are lost");
        }
    }
}

/// How batches are sent.
enum Client {
    Grpc {
        rt: tokio::runtime::Runtime,
        client: TraceServiceClient<tonic::transport::Channel>,
    },
    Http {
        agent: ureq::Agent,
        url: String,
    },
}

impl Client {
    fn new(cfg: &TracingConfig) -> Result<Self, StartError> {
        let endpoint = cfg.otlp.endpoint.trim_end_matches('/').to_string();
        let failed = |message: String| StartError {
            endpoint: cfg.otlp.endpoint.clone(),
            message,
        };
        match cfg.otlp.protocol {
            OtlpProtocol::Grpc => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| failed(e.to_string()))?;
                let channel = {
                    let _in = rt.enter();
                    tonic::transport::Endpoint::from_shared(endpoint)
                        .map_err(|e| failed(e.to_string()))?
                        .connect_timeout(cfg.otlp.timeout)
                        .timeout(cfg.otlp.timeout)
                        .connect_lazy()
                };
                Ok(Self::Grpc {
                    rt,
                    client: TraceServiceClient::new(channel),
                })
            }
            OtlpProtocol::Http => Ok(Self::Http {
                agent: ureq::Agent::config_builder()
                    .timeout_global(Some(cfg.otlp.timeout))
                    .http_status_as_error(true)
                    .build()
                    .into(),
                url: format!("{endpoint}/v1/traces"),
            }),
        }
    }

    /// Send one request's worth of spans; the collector's partial rejections are counted as
    /// failed.
    fn export(&mut self, req: ExportTraceServiceRequest) -> Result<u64, String> {
        match self {
            Self::Grpc { rt, client } => rt
                .block_on(client.export(req))
                .map(|r| {
                    r.into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_spans.max(0) as u64)
                })
                .map_err(|s| format!("{}: {}", s.code(), s.message())),
            Self::Http { agent, url } => {
                let body = prost::Message::encode_to_vec(&req);
                agent
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .send(&body[..])
                    .map(|_| 0)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// The exporter's counters (`hydrus_trace_spans_total{result}`, `hydrus_trace_queue_depth`).
pub struct ExportMetrics {
    pub exported: IntCounter,
    pub queue_full: IntCounter,
    pub export_failed: IntCounter,
    pub depth: IntGauge,
}

/// Start the exporter thread.
pub fn start(cfg: &TracingConfig, m: ExportMetrics) -> Result<(TraceQueue, Exporter), StartError> {
    let queue = Arc::new(ArrayQueue::new(cfg.queue_capacity));
    let mut client = Client::new(cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Counters {
        exported: m.exported,
        failed: m.export_failed,
        depth: m.depth,
    };
    let resource = Resource {
        attributes: vec![kv(
            "service.name",
            AttrValue::Str(cfg.service_name.clone().into()),
        )],
        ..Default::default()
    };
    let thread = {
        let (queue, stop, run_cfg) = (queue.clone(), stop.clone(), cfg.clone());
        std::thread::Builder::new()
            .name("hydrus-otlp".into())
            .spawn(move || run(&queue, &stop, &run_cfg, &mut client, &counters, &resource))
            .map_err(|e| StartError {
                endpoint: cfg.otlp.endpoint.clone(),
                message: format!("cannot start the exporter thread: {e}"),
            })?
    };
    Ok((
        TraceQueue {
            queue,
            dropped: m.queue_full,
        },
        Exporter { stop, thread },
    ))
}

struct Counters {
    exported: IntCounter,
    failed: IntCounter,
    depth: IntGauge,
}

/// Longest wait after failed exports before the next try.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At most one warning about a failing collector this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

fn run(
    queue: &Queue,
    stop: &AtomicBool,
    cfg: &TracingConfig,
    client: &mut Client,
    c: &Counters,
    resource: &Resource,
) {
    let mut backoff = Duration::ZERO;
    let mut warned: Option<Instant> = None;
    let mut failures = 0u64;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut batch = Vec::with_capacity(cfg.max_batch.min(queue.len()));
        while batch.len() < cfg.max_batch {
            match queue.pop() {
                Some(t) => batch.push(t),
                None => break,
            }
        }
        c.depth.set(queue.len() as i64);
        if batch.is_empty() {
            if stopping {
                return;
            }
            std::thread::park_timeout(cfg.flush_interval);
            continue;
        }
        let spans: u64 = batch.iter().map(|t| t.spans() as u64).sum();
        match client.export(request(&batch, resource)) {
            Ok(rejected) => {
                c.exported.inc_by(spans.saturating_sub(rejected));
                c.failed.inc_by(rejected.min(spans));
                backoff = Duration::ZERO;
                if failures > 0 {
                    log::info!(
                        "tracing: the collector at {} takes spans again ({failures} exports failed before)",
                        cfg.otlp.endpoint
                    );
                    failures = 0;
                }
            }
            Err(e) => {
                c.failed.inc_by(spans);
                failures += 1;
                if warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        endpoint = %cfg.otlp.endpoint,
                        "tracing: export to the collector at {} failed, {spans} spans dropped: {e}",
                        cfg.otlp.endpoint
                    );
                    warned = Some(Instant::now());
                }
                if stopping {
                    return; // (not waiting at shutdown for a collector that is down)
                }
                backoff = next_backoff(backoff, cfg.flush_interval);
                std::thread::park_timeout(backoff);
            }
        }
        if queue.len() < cfg.max_batch && !stopping && backoff.is_zero() {
            std::thread::park_timeout(cfg.flush_interval);
        }
    }
}

/// The wait after another failed export: doubling, up to [`MAX_BACKOFF`], never shorter than
/// the flush interval (which may itself be longer than the cap).
fn next_backoff(last: Duration, flush: Duration) -> Duration {
    last.saturating_mul(2).min(MAX_BACKOFF).max(flush)
}

fn kv(key: impl Into<String>, v: AttrValue) -> KeyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.into_owned()),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
        AttrValue::F64(f) => any_value::Value::DoubleValue(f),
    };
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

/// One OTLP request for a batch of finished requests.
fn request(batch: &[Box<FinishedTrace>], resource: &Resource) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(batch.iter().map(|t| t.spans()).sum());
    for t in batch {
        spans_of(t, &mut spans);
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "hydrus".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The request's span (a server span, child of the caller's) and each attempt's (client spans,
/// children of the request's).
fn spans_of(t: &FinishedTrace, out: &mut Vec<Span>) {
    let r = &t.trace;
    let trace_state = t.tracestate.clone().unwrap_or_default();
    let code = |error: bool| Status {
        message: String::new(),
        code: if error {
            status::StatusCode::Error as i32
        } else {
            status::StatusCode::Unset as i32
        },
    };
    out.push(Span {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        trace_state: trace_state.clone(),
        parent_span_id: r.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(r.flags),
        name: t.name.clone(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: r.start_ns,
        end_time_unix_nano: t.end_ns,
        attributes: t
            .attributes
            .iter()
            .map(|(k, v)| kv(k.clone().into_owned(), v.clone()))
            .collect(),
        status: Some(code(t.error)),
        ..Default::default()
    });
    for a in &r.attempts {
        let mut attributes = vec![
            kv(
                "hydrus.attempt",
                AttrValue::Str(Cow::Borrowed(a.kind.as_str())),
            ),
            kv(
                "server.address",
                AttrValue::Str(a.endpoint.ip().to_string().into()),
            ),
            kv("server.port", AttrValue::Int(i64::from(a.endpoint.port()))),
        ];
        let error = match a.outcome {
            AttemptOutcome::Status(s) => {
                attributes.push(kv(
                    "http.response.status_code",
                    AttrValue::Int(i64::from(s)),
                ));
                attributes.push(kv("hydrus.outcome", AttrValue::Str("response".into())));
                s >= 500
            }
            AttemptOutcome::Error(kind) => {
                attributes.push(kv("error.type", AttrValue::Str(kind.into())));
                attributes.push(kv("hydrus.outcome", AttrValue::Str("error".into())));
                true
            }
            AttemptOutcome::Cancelled => {
                attributes.push(kv("hydrus.outcome", AttrValue::Str("cancelled".into())));
                false
            }
        };
        out.push(Span {
            trace_id: r.trace_id.to_vec(),
            span_id: a.span_id.to_vec(),
            trace_state: trace_state.clone(),
            parent_span_id: r.span_id.to_vec(),
            flags: u32::from(r.flags),
            name: format!("attempt {}", a.kind.as_str()),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: a.start_ns,
            end_time_unix_nano: a.end_ns.max(a.start_ns),
            attributes,
            status: Some(code(error)),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_never_undercuts_the_flush_interval() {
        let ms = Duration::from_millis;
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..8 {
            b = next_backoff(b, ms(200));
            seen.push(b.as_millis());
        }
        assert_eq!(seen, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        // A flush interval past the cap (it used to panic in `clamp`).
        assert_eq!(next_backoff(Duration::ZERO, ms(10_000)), ms(10_000));
        assert_eq!(next_backoff(ms(10_000), ms(10_000)), ms(10_000));
    }
}
