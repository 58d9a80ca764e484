//! The Kafka side of a solver group member: its error type, client settings and helpers.

use crate::read::kafka::{parse_url, partition_ids};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

type RdKafkaError = Box<rdkafka::error::KafkaError>;

/// Why a member of a solver group stopped; each names the topic or brokers at fault.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{url}: expected kafka://BROKERS/TOPIC")]
    Url { url: String },
    #[error("kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: RdKafkaError,
    },
    #[error("{topic}: {what}: {source}")]
    Topic {
        topic: String,
        what: &'static str,
        #[source]
        source: RdKafkaError,
    },
    #[error("{topic}: no such topic, or it has no partitions")]
    NoTopic { topic: String },
    /// Records of strategies that cost several resources: the group's summaries carry one.
    #[error("{topic}: records of strategies that cost several resources ({resources}): a solver group does not solve them yet; solve their logs in one batch (`hydrus solve --logs ... --out ...`)")]
    SeveralResources { topic: String, resources: String },
    #[error("kafka: {0}")]
    Poll(#[source] RdKafkaError),
    #[error("{topic}: {failed} summary message(s) not delivered")]
    Delivery { topic: String, failed: u64 },
    #[error("{topic}: {source}")]
    SeveralRoutes {
        topic: String,
        #[source]
        source: crate::read::SeveralRoutes,
    },
}

/// Counts the summary messages the broker did not take.
#[derive(Default)]
pub(super) struct Delivery {
    pub(super) failed: AtomicU64,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            log::error!("summary not delivered: {e}");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn split(url: &str) -> Result<(String, String), GroupError> {
    parse_url(url).ok_or_else(|| GroupError::Url {
        url: url.to_string(),
    })
}

pub(super) fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

/// `--kafka-property` over a client's settings: set last, so they replace the member's own.
pub(super) fn with_properties<'a>(
    c: &'a mut ClientConfig,
    properties: &[(String, String)],
) -> &'a mut ClientConfig {
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// The summaries producer's settings: lz4 compression, as the proxy's sink, unless a property
/// says otherwise (a consumer of the summaries without lz4 needs `compression.type=none`).
pub(super) fn producer_config(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut c = client(brokers);
    c.set("message.timeout.ms", "30000")
        .set("compression.type", "lz4");
    with_properties(&mut c, properties);
    c
}

pub(super) fn created<T>(
    brokers: &str,
    r: rdkafka::error::KafkaResult<T>,
) -> Result<T, GroupError> {
    r.map_err(|e| GroupError::Client {
        brokers: brokers.to_string(),
        source: Box::new(e),
    })
}

pub(super) fn topic_err(
    topic: &str,
    what: &'static str,
) -> impl Fn(rdkafka::error::KafkaError) -> GroupError {
    let topic = topic.to_string();
    move |e| GroupError::Topic {
        topic: topic.clone(),
        what,
        source: Box::new(e),
    }
}

/// The partition ids of `topic`.
pub(super) fn partitions_of(c: &BaseConsumer, topic: &str) -> Result<Vec<i32>, GroupError> {
    let ids = partition_ids(c, topic).map_err(topic_err(topic, "metadata"))?;
    if ids.is_empty() {
        return Err(GroupError::NoTopic {
            topic: topic.to_string(),
        });
    }
    Ok(ids)
}

/// `host/pid`: which member published a summary.
pub(super) fn member_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summaries_producer_compresses_with_lz4_unless_a_property_says_otherwise() {
        let c = producer_config("b:9092", &[]);
        assert_eq!(c.get("compression.type"), Some("lz4"));
        let props = [
            ("compression.type".to_string(), "zstd".to_string()),
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
        ];
        let c = producer_config("b:9092", &props);
        assert_eq!(c.get("compression.type"), Some("zstd"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }
}
