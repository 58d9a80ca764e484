//! A new policy is one filter module: its section, its compile, its request hook and the state
//! it keeps per request, what it adds to the upstream request and the log record. This one (a
//! made-up `tier` policy: premium users, by user-id prefix, get a header the ranking service
//! reads) is registered next to the built-in kinds with one line, compiled from YAML and run in
//! a route's chain, as the proxy would; its record fields reach the JSON line, as many as it
//! writes. Nothing of the contract names it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use hydrus_filters::filter::{
    CompileCtx, Filter, FilterKind, Input, LogValue, Problems, RecordParts, RequestState, Upstream,
    USER_ID,
};
use hydrus_filters::log::{Extra, KRef, RecordRef, ValueInfoRef};
use hydrus_filters::route::{compile_route, RouteConfig, RouteEnv};
use serde::Deserialize;
use std::any::Any;
use std::sync::Arc;

// --- the policy: everything of it ---------------------------------------------------------

/// `- tier:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierConfig {
    header: String,
    premium_prefix: String,
}

/// What the tier policy keeps of each request: its own type, in the request's state.
struct Tier {
    premium: bool,
    /// How many characters of the user id matched (a second field for the record).
    matched: u64,
}

/// Fields beyond any fixed count: the record takes as many as a policy writes.
const MORE: [&str; 7] = ["t1", "t2", "t3", "t4", "t5", "t6", "t7"];

struct TierFilter {
    header: HeaderName,
    owned: Vec<HeaderName>,
    premium_prefix: Vec<u8>,
}

impl Filter for TierFilter {
    fn kind(&self) -> &'static str {
        "tier"
    }

    fn decide(&self, input: &Input<'_>, state: &mut RequestState) {
        let premium = input
            .id(USER_ID)
            .is_some_and(|u| u.starts_with(&self.premium_prefix));
        let matched = if premium {
            self.premium_prefix.len() as u64
        } else {
            0
        };
        state.put(Tier { premium, matched });
    }

    fn edit_upstream(&self, state: &RequestState, up: &mut dyn Upstream) {
        let premium = state.get::<Tier>().is_some_and(|t| t.premium);
        let value = if premium { "premium" } else { "standard" };
        up.set_header(&self.header, HeaderValue::from_static(value));
    }

    fn record<'a>(&'a self, state: &'a RequestState, parts: &mut RecordParts<'a>) {
        let Some(t) = state.get::<Tier>() else {
            return;
        };
        let tier = if t.premium { "premium" } else { "standard" };
        parts.extra.push(("tier", LogValue::Str(tier)));
        parts.extra.push(("tier_matched", LogValue::U64(t.matched)));
        for (i, name) in MORE.iter().enumerate() {
            parts.extra.push((name, LogValue::U64(i as u64)));
        }
    }

    fn owned_headers(&self) -> &[HeaderName] {
        &self.owned
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct TierKind;

impl FilterKind for TierKind {
    fn name(&self) -> &'static str {
        "tier"
    }

    fn metrics(&self, _r: &prometheus::Registry) -> Arc<dyn Any + Send + Sync> {
        Arc::new(())
    }

    fn compile(
        &self,
        section: &serde_norway::Value,
        cx: &mut CompileCtx<'_>,
    ) -> Option<Arc<dyn Filter>> {
        let c: TierConfig = cx.parse(section)?;
        let f = cx.sub("header");
        let header = cx.problems.header_name(&f, &c.header)?;
        Some(Arc::new(TierFilter {
            owned: vec![header.clone()],
            header,
            premium_prefix: c.premium_prefix.into_bytes(),
        }))
    }
}

// --- registering it, and running it as the proxy does -------------------------------------

static TIER: TierKind = TierKind;

struct Recorded(Vec<(HeaderName, HeaderValue)>);

impl Upstream for Recorded {
    fn set_header(&mut self, name: &HeaderName, value: HeaderValue) {
        self.0.push((name.clone(), value));
    }

    fn set_query(&mut self, _pairs: &[(String, String)]) {}
}

fn env_kinds(
    r: &prometheus::Registry,
) -> Vec<(&'static dyn FilterKind, Arc<dyn Any + Send + Sync>)> {
    hydrus_filters::kinds()
        .chain([&TIER as &dyn FilterKind])
        .map(|k| (k, k.metrics(r)))
        .collect()
}

#[test]
fn a_new_policy_is_one_filter_registered_next_to_the_others() {
    let yaml = r#"
name: rank
cluster: ranking
filters:
  - rollout: { percent: 100 }
  - tier: { header: x-tier, premium_prefix: "vip-" }
"#;
    let rc: RouteConfig = serde_norway::from_str(yaml).unwrap();
    let registry = prometheus::Registry::new();
    let kinds = env_kinds(&registry);
    let fallbacks = prometheus::IntCounterVec::new(
        prometheus::Opts::new("hydrus_fallback_total", "fallbacks"),
        &["route", "group", "reason"],
    )
    .unwrap();
    let identity = [
        "x-user-id",
        "x-device-id",
        "x-request-id",
        "x-qoe-score",
        "x-scenario",
    ]
    .map(HeaderName::from_static);
    let env = RouteEnv {
        file: std::path::Path::new("hydrus.yaml"),
        cluster_names: &["ranking".to_string()],
        identity: &identity,
        kinds: &kinds,
        fallbacks: &fallbacks,
    };
    let mut problems = Problems::default();
    let route = compile_route(&rc, "routes[0]", "routes[0].cluster", &env, &mut problems)
        .expect("compiles");
    assert_eq!(
        route.chain.owned_headers,
        [HeaderName::from_static("x-tier")]
    );

    let tier_of = |user: &'static str| {
        let ids = [Some(HeaderValue::from_static(user)), None, None, None, None];
        let headers = HeaderMap::new();
        let input = Input {
            method: &Method::GET,
            path: "/rank",
            headers: &headers,
            now_ms: 0,
            ids: &ids,
        };
        let mut state = RequestState::new(route.cluster);
        route.chain.decide(&input, &mut state);
        let mut up = Recorded(Vec::new());
        route.chain.edit_upstream(&state, &mut up);
        // The record, as the log sink writes it: the chain asks each filter for its part.
        let parts = route.chain.record(&state);
        let mut line = Vec::new();
        RecordRef {
            ts_ms: 1,
            request_id: "r",
            user_id: user,
            device_id: "",
            scenario: "default",
            group: state.group.as_str(),
            chosen: parts.chosen.unwrap_or("default"),
            k: KRef(parts.k),
            value_info: ValueInfoRef(parts.value_info),
            status: 200,
            upstream_ms: None,
            fallback: None,
            cluster: None,
            total_ms: None,
            cluster_load: None,
            scenario_raw: None,
            error: None,
            would_choose: None,
            strategy_set: parts.strategy_set,
            route: Some("rank"),
            grpc_status: None,
            access: Default::default(),
            extra: Extra(&parts.extra),
            escaped: &[],
        }
        .encode_into(&mut line);
        let record: serde_json::Value = serde_json::from_slice(&line).unwrap();
        (up.0, record)
    };
    let (headers, record) = tier_of("vip-alice");
    assert_eq!(
        headers,
        [(
            HeaderName::from_static("x-tier"),
            HeaderValue::from_static("premium")
        )]
    );
    assert_eq!(record["tier"], "premium");
    assert_eq!(record["tier_matched"], 4);
    for (i, name) in MORE.iter().enumerate() {
        assert_eq!(record[name], i as u64, "{name} in {record}");
    }
    let (headers, record) = tier_of("bob");
    assert_eq!(headers[0].1, "standard");
    assert_eq!(
        (&record["tier"], &record["tier_matched"]),
        (&"standard".into(), &0.into())
    );

    // Its section's mistakes are named like every other's.
    let bad: RouteConfig =
        serde_norway::from_str(&yaml.replace("header: x-tier", "headr: x-tier")).unwrap();
    let mut problems = Problems::default();
    assert!(compile_route(&bad, "routes[0]", "routes[0].cluster", &env, &mut problems).is_none());
    assert_eq!(problems.errors[0].0, "routes[0].filters[1].tier.headr");
}
