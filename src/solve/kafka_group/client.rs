//! The Kafka side of a solver group member: its error type, client settings and helpers.

use super::super::kafka_source::{parse_url, partition_ids};
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
    #[error("kafka: {0}")]
    Poll(#[source] RdKafkaError),
    #[error("{topic}: {failed} summary message(s) not delivered")]
    Delivery { topic: String, failed: u64 },
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
