//! A request's decision log record as the request path leaves it: what it read and decided,
//! copied nowhere. One box per request goes to the log queue; the sink thread turns it into
//! the JSON line of [`hydrus_filters::LogRecord`] (through the borrowed
//! [`hydrus_filters::log::RecordRef`]), so the request path never formats or copies strings.

use crate::config::{RouteRuntime, Running};
use crate::metrics::Metrics;
use http::HeaderValue;
use hydrus_filters::filter::{RequestState, DEVICE_ID, QOE, REQUEST_ID, SCENARIO, USER_ID};
use hydrus_filters::hydrus::ktable::DEFAULT_SCENARIO;
use hydrus_filters::hydrus::SCENARIO_OTHER;
use hydrus_filters::log::text::{protocol, AddrText, Copied, PathText, RequestId};
use hydrus_filters::log::{capped_text, AccessRef, Extra, KRef, RecordRef, ValueInfoRef};
use prometheus::IntCounter;
use std::borrow::Cow;
use std::sync::Arc;

/// What the session says of a finished request, for its access record and span.
pub struct Access {
    pub client: Option<std::net::SocketAddr>,
    pub method: http::Method,
    /// The request target's path and query, copied (see [`Copied`]).
    pub path: PathText,
    pub version: http::Version,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The client's `tracestate` (traced requests only).
    pub tracestate: Option<String>,
}

/// What one request leaves for its log record.
pub struct Pending {
    /// The config the request ran on: cluster names, by index.
    pub running: Arc<Running>,
    /// The route it took: its name, and its hydrus filter's strategy names.
    pub route: Arc<RouteRuntime>,
    pub ts_ms: u64,
    /// The identity headers as decided on, copied (the QoE score is not recorded).
    pub ids: [Option<Copied>; 5],
    pub generated_id: Option<RequestId>,
    /// What the route's filters decided (and added to the record).
    pub state: RequestState,
    pub status: u16,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    pub cluster_load: Option<u32>,
    pub error: Option<&'static str>,
    pub grpc_status: Option<u8>,
    /// What the session said of the exchange (`None` for a request answered before routing).
    pub access: Option<Access>,
    pub endpoint: Option<std::net::SocketAddr>,
    pub attempts: u32,
    pub trace_id: Option<[u8; 16]>,
}

/// One record field copied from a request header: its name in the record, and its counters
/// of values cut to fit (`hydrus_log_fields_truncated_total`) and of values that were not UTF-8
/// (`hydrus_log_fields_escaped_total`).
pub struct Field {
    name: &'static str,
    cut: IntCounter,
    escaped: IntCounter,
}

/// The record's fields copied from request headers.
pub struct Truncations {
    user_id: Field,
    device_id: Field,
    request_id: Field,
    /// The scenario header as `scenario` (on a route where it is not checked against declared
    /// scenarios, any value), and as `scenario_raw` (an undeclared one).
    scenario: Field,
    scenario_raw: Field,
}

impl Truncations {
    pub fn new(m: &Metrics) -> Self {
        // (The scenario header is cut under `scenario` either way.)
        let c = |cut: &str, name: &'static str| Field {
            name,
            cut: m.log_fields_truncated.with_label_values(&[cut]),
            escaped: m.log_fields_escaped.with_label_values(&[name]),
        };
        Self {
            user_id: c("user_id", "user_id"),
            device_id: c("device_id", "device_id"),
            request_id: c("request_id", "request_id"),
            scenario: c("scenario", "scenario"),
            scenario_raw: c("scenario", "scenario_raw"),
        }
    }
}

/// A header's value as its record field holds it, counted; an escaped one named in `escaped`.
fn capped<'a>(
    v: Option<&'a Copied>,
    field: &Field,
    escaped: &mut Vec<&'static str>,
) -> Cow<'a, str> {
    let c = capped_text(v.map_or(&[][..], Copied::as_bytes));
    if c.cut {
        field.cut.inc();
    }
    if c.escaped {
        field.escaped.inc();
        escaped.push(field.name);
    }
    c.text
}

impl Pending {
    /// The Kafka key: the user id.
    pub fn key(&self) -> &[u8] {
        self.ids[USER_ID].as_ref().map_or(&[][..], Copied::as_bytes)
    }

    /// The identity headers as a record keeps them: copied, so that the request's buffers are
    /// freed on its own thread.
    pub fn copy_ids(ids: &[Option<HeaderValue>; 5]) -> [Option<Copied>; 5] {
        let mut out: [Option<Copied>; 5] = Default::default();
        for (i, (slot, v)) in out.iter_mut().zip(ids).enumerate() {
            if i != QOE {
                *slot = v.as_ref().map(|v| Copied::new(v.as_bytes()));
            }
        }
        out
    }

    /// Append the record as one JSON line.
    pub fn encode_into(&self, out: &mut Vec<u8>, t: &Truncations) {
        let parts = self.route.route.chain.record(&self.state);
        // (No allocation unless a value is escaped.)
        let mut escaped: Vec<&'static str> = Vec::new();
        let user_id = capped(self.ids[USER_ID].as_ref(), &t.user_id, &mut escaped);
        let device_id = capped(self.ids[DEVICE_ID].as_ref(), &t.device_id, &mut escaped);
        let request_id: Cow<'_, str> = match &self.generated_id {
            Some(g) => Cow::Borrowed(std::str::from_utf8(g).unwrap_or_default()),
            None => capped(self.ids[REQUEST_ID].as_ref(), &t.request_id, &mut escaped),
        };
        let (scenario, scenario_raw) = self.scenario(t, &mut escaped);
        let a = self.access.as_ref();
        let client_addr = a.and_then(|a| a.client).map(AddrText::new);
        let query = hydrus_filters::log::of(&self.route.route.chain)
            .map_or_else(Default::default, |l| l.query);
        let path =
            a.map(|a| hydrus_filters::log::logged_path(a.path.path(), a.path.query(), query));
        let endpoint = self.endpoint.map(AddrText::new);
        let trace_id = self
            .trace_id
            .map(|t| crate::otel::context::trace_id_hex(&t));
        RecordRef {
            ts_ms: self.ts_ms,
            request_id: &request_id,
            user_id: &user_id,
            device_id: &device_id,
            scenario: &scenario,
            group: self.state.group.as_str(),
            chosen: parts.chosen.unwrap_or("default"),
            k: KRef(parts.k),
            value_info: ValueInfoRef(parts.value_info),
            status: self.status,
            upstream_ms: self.upstream_ms,
            fallback: self.state.fallback,
            cluster: self
                .running
                .clusters
                .get(self.state.cluster)
                .map(|c| c.name.as_str()),
            total_ms: Some(self.total_ms),
            cluster_load: self.cluster_load,
            scenario_raw: scenario_raw.as_deref(),
            error: self.error,
            would_choose: parts.would_choose,
            strategy_set: parts.strategy_set,
            route: Some(self.route.name()),
            grpc_status: self.grpc_status,
            access: AccessRef {
                client_addr: client_addr.as_ref().map(AddrText::as_str),
                method: a.map(|a| a.method.as_str()),
                path: path.as_deref(),
                protocol: a.map(|a| protocol(a.version)),
                endpoint: endpoint.as_ref().map(AddrText::as_str),
                attempts: a.map(|_| self.attempts),
                request_bytes: a.map(|a| a.request_bytes),
                response_bytes: a.map(|a| a.response_bytes),
                trace_id: trace_id.as_ref().and_then(|t| std::str::from_utf8(t).ok()),
            },
            extra: Extra(&parts.extra),
            escaped: &escaped,
        }
        .encode_into(out);
    }

    /// The scenario as recorded, and the value sent when it named no declared scenario.
    fn scenario(
        &self,
        t: &Truncations,
        escaped: &mut Vec<&'static str>,
    ) -> (Cow<'_, str>, Option<Cow<'_, str>>) {
        let declared = self.state.scenario_declared;
        let raw = self.ids[SCENARIO].as_ref();
        match raw {
            None => (Cow::Borrowed(DEFAULT_SCENARIO), None),
            Some(_) if declared => (capped(raw, &t.scenario, escaped), None),
            Some(_) => (
                Cow::Borrowed(SCENARIO_OTHER),
                Some(capped(raw, &t.scenario_raw, escaped)),
            ),
        }
    }
}
