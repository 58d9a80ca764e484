//! hydrus-otel: trace context and spans for the hop hydrus adds (`tracing:` in the config).
//! Plain Rust over plain data but for the exporter's thread; the proxy's hooks call it.
//!
//! A request's W3C `traceparent` is read (or a trace started, sampled at `sample_ratio`); each
//! attempt on an endpoint (first try, retry, hedge) is a span of its own whose id the upstream
//! gets as its parent in `traceparent`; the request's span carries the route's decision. A
//! sampled request's spans go to a bounded queue when it ends; one thread exports them over
//! OTLP (gRPC or HTTP/protobuf) in batches. The request path never waits for it: a full queue
//! drops the spans, counted, and so does an export that fails.
//!
//! - [`context`]: `traceparent` read and written.
//! - [`export`]: the queue and the exporter thread.

pub mod context;
pub mod export;

use context::{new_span_id, new_trace_id, TraceParent, RANDOM, SAMPLED};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `tracing:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The share of new traces (requests without a valid `traceparent`) that are recorded; a
    /// request with one follows its caller's `sampled` flag. Reloadable.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// Where spans are sent.
    pub otlp: OtlpConfig,
    /// Finished requests (each a request span and its attempts) waiting for export; when full,
    /// new ones are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Requests per export call.
    #[serde(default = "default_batch")]
    pub max_batch: usize,
    /// The exporter wakes this often to send what is queued.
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// `service.name` of the spans' resource.
    #[serde(default = "default_service")]
    pub service_name: String,
    /// Continue a caller's trace and follow its `sampled` flag. `false` at an edge facing
    /// untrusted clients: every request starts a trace of its own (sampled at `sample_ratio`),
    /// so a client cannot make hydrus record every request. Reloadable.
    #[serde(default = "default_trust")]
    pub trust_incoming: bool,
}

impl TracingConfig {
    /// What the request path reads of it (reloadable).
    pub fn sampling(&self) -> Sampling {
        Sampling {
            ratio: self.sample_ratio,
            trust_incoming: self.trust_incoming,
        }
    }

    /// The exporter's settings alone (start-only): the sampling fields at their defaults.
    pub fn exporter_part(&self) -> Self {
        Self {
            sample_ratio: default_ratio(),
            trust_incoming: default_trust(),
            ..self.clone()
        }
    }
}

/// How a traced proxy samples (`tracing.sample_ratio`, `tracing.trust_incoming`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub ratio: f64,
    pub trust_incoming: bool,
}

/// Longest `tracestate` kept with a trace's spans (W3C: a vendor may drop a longer one).
pub const MAX_TRACESTATE: usize = 512;

/// A request's `tracestate` for its spans: its fields joined with `,` (several are one list),
/// `None` when there is none or it is longer than [`MAX_TRACESTATE`].
pub fn tracestate<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut out = String::new();
    for f in fields {
        let f = std::str::from_utf8(f).ok()?.trim();
        if f.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(f);
        if out.len() > MAX_TRACESTATE {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The OTLP collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `http://HOST:PORT` (gRPC, e.g. port 4317), or the base of OTLP/HTTP (`/v1/traces` is
    /// appended; e.g. port 4318).
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// One export call may take this long; then its spans are dropped, counted.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

fn default_ratio() -> f64 {
    0.01
}
fn default_queue() -> usize {
    8192
}
fn default_batch() -> usize {
    512
}
fn default_flush() -> Duration {
    Duration::from_millis(200)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_service() -> String {
    "hydrus".into()
}
fn default_trust() -> bool {
    true
}

/// Check `tracing:`; problems are reported as `(field, message)`.
pub fn check(t: &TracingConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        out.push(("tracing.sample_ratio", "must be within 0-1".to_string()));
    }
    let e = t.otlp.endpoint.as_str();
    match e.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {
            if e.parse::<http::Uri>().is_err() {
                out.push(("tracing.otlp.endpoint", format!("`{e}` is not a URL")));
            }
        }
        _ if e.starts_with("https://") => out.push((
            "tracing.otlp.endpoint",
            format!("`{e}`: TLS to the collector is not supported; send to a collector on this host or network (`http://HOST:PORT`)"),
        )),
        _ => out.push((
            "tracing.otlp.endpoint",
            format!("`{e}`: write `http://HOST:PORT`"),
        )),
    }
    if t.otlp.timeout.is_zero() {
        out.push(("tracing.otlp.timeout", "must be positive".to_string()));
    }
    if t.queue_capacity == 0 {
        out.push(("tracing.queue_capacity", "must be at least 1".to_string()));
    }
    if t.max_batch == 0 {
        out.push(("tracing.max_batch", "must be at least 1".to_string()));
    }
    if t.flush_interval.is_zero() {
        out.push(("tracing.flush_interval", "must be positive".to_string()));
    }
    if t.service_name.trim().is_empty() {
        out.push(("tracing.service_name", "must not be empty".to_string()));
    }
    out
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Why an attempt was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    First,
    /// After a failed attempt (on another endpoint, or on a fresh connection).
    Retry,
    /// The hedge filter's reissue of a slow first attempt.
    Hedge,
}

impl AttemptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Retry => "retry",
            Self::Hedge => "hedge",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The endpoint answered with this status.
    Status(u16),
    /// It failed: `connect`, `timeout`, `response`, ... (the kinds of
    /// `hydrus_upstream_errors_total`).
    Error(&'static str),
    /// The race it was in was won by the other attempt.
    Cancelled,
}

/// One attempt on an endpoint.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    pub span_id: [u8; 8],
    pub kind: AttemptKind,
    pub endpoint: SocketAddr,
    pub start_ns: u64,
    pub end_ns: u64,
    pub outcome: AttemptOutcome,
}

/// A sampled request's trace as it goes (see [`Sampled::start`]).
#[derive(Debug)]
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    /// The caller's span, from its `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// hydrus's span for the request.
    pub span_id: [u8; 8],
    pub flags: u8,
    /// No valid `traceparent` came: the trace began here (a `tracestate` sent is not of it).
    pub started_here: bool,
    pub start_ns: u64,
    /// The attempts that ended.
    pub attempts: Vec<AttemptSpan>,
    /// The attempt on pingora's path in flight, and its span id.
    pub current: Option<AttemptSpan>,
}

/// A request's trace context as it came, and whether it is recorded: decided before anything
/// is built, so that an unsampled request costs a header lookup and a random number.
#[derive(Debug, Clone, Copy)]
pub struct Sampled {
    pub trace_id: [u8; 16],
    parent: Option<TraceParent>,
    pub sampled: bool,
}

impl Sampled {
    /// Continue the caller's trace (following its `sampled` flag), or start one, sampled at
    /// `ratio` (by its trace id, as OpenTelemetry's ratio sampler: the same trace is sampled
    /// alike by every proxy with the same ratio).
    pub fn decide(traceparent: Option<&[u8]>, ratio: f64) -> Self {
        let parent = traceparent.and_then(TraceParent::parse);
        let (trace_id, sampled) = match parent {
            Some(p) => (p.trace_id, p.sampled()),
            None => {
                let id = new_trace_id();
                (id, by_ratio(&id, ratio))
            }
        };
        Self {
            trace_id,
            parent,
            sampled,
        }
    }

    /// The trace id a log record names: the caller's, or one begun here and recorded. (A trace
    /// begun here and not recorded is known nowhere else: none.)
    pub fn logged_id(&self) -> Option<[u8; 16]> {
        (self.sampled || self.parent.is_some()).then_some(self.trace_id)
    }

    /// The request's trace, when it is recorded. An unsampled one is not: its request goes on
    /// with the caller's `traceparent` untouched (or none), as through a proxy that does not
    /// trace, which is what W3C asks of one that records nothing.
    pub fn start(self) -> Option<Box<RequestTrace>> {
        if !self.sampled {
            return None;
        }
        // Of the caller's flags only level 2's random flag is passed on beside `sampled`
        // (version 00 senders zero the flags they do not know).
        let flags = self.parent.map_or(0, |p| p.flags & RANDOM) | SAMPLED;
        Some(Box::new(RequestTrace {
            trace_id: self.trace_id,
            parent: self.parent.map(|p| p.parent_id),
            span_id: new_span_id(),
            flags,
            started_here: self.parent.is_none(),
            start_ns: unix_ns(),
            attempts: Vec::new(),
            current: None,
        }))
    }
}

impl RequestTrace {
    /// [`Sampled::decide`], then [`Sampled::start`].
    pub fn begin(traceparent: Option<&[u8]>, ratio: f64) -> Option<Box<Self>> {
        Sampled::decide(traceparent, ratio).start()
    }

    /// An attempt on pingora's path begins: its `traceparent` is [`Self::current_traceparent`]
    /// until it ends.
    pub fn start_attempt(&mut self, endpoint: SocketAddr) {
        if self.current.is_some() {
            // (Ended without an outcome hydrus saw: not expected, recorded as it stands.)
            self.end_attempt(AttemptOutcome::Error("abandoned"));
        }
        let kind = if self.attempts.is_empty() {
            AttemptKind::First
        } else {
            AttemptKind::Retry
        };
        self.current = Some(AttemptSpan {
            span_id: new_span_id(),
            kind,
            endpoint,
            start_ns: unix_ns(),
            end_ns: 0,
            outcome: AttemptOutcome::Cancelled,
        });
    }

    /// The attempt in flight ended so.
    pub fn end_attempt(&mut self, outcome: AttemptOutcome) {
        if let Some(mut a) = self.current.take() {
            a.end_ns = unix_ns();
            a.outcome = outcome;
            self.attempts.push(a);
        }
    }

    /// The `traceparent` for the attempt in flight (the request's own span when none is).
    pub fn current_traceparent(&self) -> http::HeaderValue {
        let span = self.current.as_ref().map_or(&self.span_id, |a| &a.span_id);
        context::traceparent(&self.trace_id, span, self.flags)
    }

    /// What the hedge path's concurrent attempts record their spans through.
    pub fn hedge_spans(&self) -> HedgeSpans {
        HedgeSpans {
            trace_id: self.trace_id,
            flags: self.flags,
            ended: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Take the hedge path's attempts into the request's.
    pub fn add_hedge_spans(&mut self, spans: &HedgeSpans) {
        let mut v = spans.ended.lock().unwrap_or_else(|p| p.into_inner());
        self.attempts.append(&mut v);
        self.attempts.sort_by_key(|a| a.start_ns);
    }
}

/// Whether a new trace is sampled at `ratio`: its id's low 8 bytes below `ratio` of their range.
fn by_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

/// The spans of the hedge path's attempts, which run at once: each attempt's [`AttemptGuard`]
/// adds its own when it ends or is dropped (the loser of a race).
#[derive(Clone)]
pub struct HedgeSpans {
    trace_id: [u8; 16],
    flags: u8,
    ended: Arc<Mutex<Vec<AttemptSpan>>>,
}

impl HedgeSpans {
    pub fn start(&self, kind: AttemptKind, endpoint: SocketAddr) -> AttemptGuard {
        AttemptGuard {
            span: AttemptSpan {
                span_id: new_span_id(),
                kind,
                endpoint,
                start_ns: unix_ns(),
                end_ns: 0,
                outcome: AttemptOutcome::Cancelled,
            },
            to: self.ended.clone(),
            trace_id: self.trace_id,
            flags: self.flags,
            ended: false,
        }
    }
}

/// One attempt of the hedge path: its span ends with [`AttemptGuard::end`], or as cancelled
/// when dropped before.
pub struct AttemptGuard {
    span: AttemptSpan,
    to: Arc<Mutex<Vec<AttemptSpan>>>,
    trace_id: [u8; 16],
    flags: u8,
    ended: bool,
}

impl AttemptGuard {
    pub fn traceparent(&self) -> http::HeaderValue {
        context::traceparent(&self.trace_id, &self.span.span_id, self.flags)
    }

    pub fn end(mut self, outcome: AttemptOutcome) {
        self.span.outcome = outcome;
        self.record();
    }

    fn record(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.span.end_ns = unix_ns();
        self.to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.span.clone());
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.record();
    }
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    Int(i64),
    F64(f64),
}

/// A sampled request, ended: its span and its attempts', for the exporter.
#[derive(Debug)]
pub struct FinishedTrace {
    pub trace: Box<RequestTrace>,
    pub end_ns: u64,
    /// The request span's name (`METHOD ROUTE`).
    pub name: String,
    pub attributes: Vec<(Cow<'static, str>, AttrValue)>,
    /// The client got an error (5xx, a gRPC failure, or no response).
    pub error: bool,
    /// The client's `tracestate`, passed on with the spans of its trace.
    pub tracestate: Option<String>,
}

impl FinishedTrace {
    /// Spans in it: the request's and each attempt's.
    pub fn spans(&self) -> usize {
        1 + self.trace.attempts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn a_callers_trace_is_continued_and_its_sampled_flag_followed() {
        let t = RequestTrace::begin(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"),
            0.0,
        )
        .expect("sampled");
        assert!(!t.started_here);
        assert_eq!(
            t.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(t.flags, 0x03, "sampled, and level 2's random flag kept");
        let unknown = RequestTrace::begin(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"),
            0.0,
        )
        .expect("sampled");
        assert_eq!(
            unknown.flags, 0x03,
            "flags version 00 does not define are zeroed"
        );
        let s = Sampled::decide(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            1.0,
        );
        assert!(!s.sampled, "the caller decided");
        assert_eq!(
            s.logged_id(),
            Some(s.trace_id),
            "the caller's trace id is logged"
        );
        assert!(s.start().is_none(), "nothing recorded, nothing sent");
        let t = RequestTrace::begin(Some(b"garbage"), 1.0).expect("sampled");
        assert!(t.started_here && t.parent.is_none());
        let s = Sampled::decide(None, 0.0);
        assert_eq!(
            s.logged_id(),
            None,
            "a trace begun here and not recorded is not logged"
        );
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        let n = 20_000;
        let sampled = (0..n)
            .filter(|_| Sampled::decide(None, 0.1).sampled)
            .count();
        assert!((1700..2300).contains(&sampled), "{sampled} of {n}");
        assert!(!(0..1000).any(|_| Sampled::decide(None, 0.0).sampled));
    }

    #[test]
    fn a_tracestate_is_joined_and_capped() {
        let v = |fields: &[&str]| tracestate(fields.iter().map(|f| f.as_bytes()));
        assert_eq!(v(&["a=1", " b=2 "]).as_deref(), Some("a=1,b=2"));
        assert_eq!(v(&[]), None);
        assert_eq!(v(&[""]), None);
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE));
        assert_eq!(v(&[&long]), None, "longer than W3C's 512: dropped");
        assert_eq!(v(&["a=1", &"b".repeat(511)]), None);
    }

    #[test]
    fn changing_only_how_requests_are_sampled_is_no_exporter_change() {
        let cfg = |ratio: f64, trust: bool| TracingConfig {
            sample_ratio: ratio,
            otlp: OtlpConfig {
                endpoint: "http://127.0.0.1:4317".into(),
                protocol: OtlpProtocol::Grpc,
                timeout: Duration::from_secs(5),
            },
            queue_capacity: 8,
            max_batch: 4,
            flush_interval: Duration::from_millis(200),
            service_name: "hydrus".into(),
            trust_incoming: trust,
        };
        assert_eq!(
            cfg(0.01, true).exporter_part(),
            cfg(1.0, false).exporter_part()
        );
        assert_eq!(
            cfg(0.5, false).sampling(),
            Sampling {
                ratio: 0.5,
                trust_incoming: false
            }
        );
        let mut other = cfg(0.01, true);
        other.queue_capacity = 9;
        assert_ne!(other.exporter_part(), cfg(0.01, true).exporter_part());
    }

    #[test]
    fn attempts_are_child_spans_first_then_retries() {
        let mut t = RequestTrace::begin(None, 1.0).expect("sampled");
        t.start_attempt(addr());
        let first = t.current_traceparent();
        t.end_attempt(AttemptOutcome::Error("connect"));
        t.start_attempt(addr());
        let second = t.current_traceparent();
        t.end_attempt(AttemptOutcome::Status(200));
        assert_ne!(first, second);
        let kinds: Vec<_> = t.attempts.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [AttemptKind::First, AttemptKind::Retry]);
        let sent = TraceParent::parse(second.as_bytes()).expect("valid");
        assert_eq!(sent.trace_id, t.trace_id);
        assert_eq!(sent.parent_id, t.attempts[1].span_id);
    }

    #[test]
    fn a_dropped_hedge_attempt_is_recorded_cancelled() {
        let mut t = RequestTrace::begin(None, 1.0).expect("sampled");
        let spans = t.hedge_spans();
        let a = spans.start(AttemptKind::First, addr());
        let b = spans.start(AttemptKind::Hedge, addr());
        b.end(AttemptOutcome::Status(200));
        drop(a);
        t.add_hedge_spans(&spans);
        let got: Vec<_> = t.attempts.iter().map(|a| (a.kind, a.outcome)).collect();
        assert_eq!(got.len(), 2);
        assert!(got.contains(&(AttemptKind::First, AttemptOutcome::Cancelled)));
        assert!(got.contains(&(AttemptKind::Hedge, AttemptOutcome::Status(200))));
    }
}
