//! Reading decision logs from a Kafka topic (`--logs kafka://BROKER[,BROKER]/TOPIC`), with
//! the consumer group's committed offsets, so a restarted solver resumes where it stopped.
//!
//! Every partition of the topic is assigned to this consumer (one solver per topic). Offsets are
//! committed only once the records they cover are in a written k-table: in batch mode after the
//! table is written; in follow mode up to the first record of a window still open.

use super::follow::FollowSource;
use super::LineSink;
use super::SourceError;
use crate::metrics::{SolverMetrics, LAG_EVERY};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// rdkafka's error, kept as the source of ours; boxed, as it is large (a config error holds
/// three strings) and every `Result` of the solver carries it.
type RdKafkaError = Box<rdkafka::error::KafkaError>;

/// Why the Kafka topic could not be read or its offsets committed; each names the URL, brokers
/// or group at fault where there is one.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("{url}: expected kafka://BROKERS/TOPIC")]
    Url { url: String },
    #[error("kafka consumer for {brokers}: {source}")]
    Consumer {
        brokers: String,
        #[source]
        source: RdKafkaError,
    },
    #[error("{url}: metadata: {source}")]
    Metadata {
        url: String,
        #[source]
        source: RdKafkaError,
    },
    #[error("{url}: no such topic, or it has no partitions")]
    NoTopic { url: String },
    #[error("{url}: committed offsets of group {group}: {source}")]
    Committed {
        url: String,
        group: String,
        #[source]
        source: RdKafkaError,
    },
    /// A partition and its offset could not be added to the assignment.
    #[error("{url}: {source}")]
    Partition {
        url: String,
        #[source]
        source: RdKafkaError,
    },
    #[error("{url}: assign: {source}")]
    Assign {
        url: String,
        #[source]
        source: RdKafkaError,
    },
    #[error("kafka: {0}")]
    Poll(#[source] RdKafkaError),
    #[error("kafka watermarks: {0}")]
    Watermarks(#[source] RdKafkaError),
    #[error("kafka: no progress towards the end of the topic for 30 s")]
    Stalled,
    /// An offset to commit could not be listed.
    #[error("kafka: {0}")]
    CommitOffset(#[source] RdKafkaError),
    #[error("kafka commit: {0}")]
    Commit(#[source] RdKafkaError),
}

/// `kafka://host:port[,host:port]/topic` split into brokers and topic.
pub fn parse_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("kafka://")?;
    let (brokers, topic) = rest.split_once('/')?;
    if brokers.is_empty() || topic.is_empty() || topic.contains('/') {
        return None;
    }
    Some((brokers.to_string(), topic.to_string()))
}

/// The partition ids of `topic` (none when it does not exist).
pub(crate) fn partition_ids(
    c: &BaseConsumer,
    topic: &str,
) -> rdkafka::error::KafkaResult<Vec<i32>> {
    let md = c.fetch_metadata(Some(topic), TIMEOUT)?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

pub struct KafkaSource {
    /// Shared with the lag watcher ([`watch_lag`]), which only queries it.
    consumer: Arc<BaseConsumer>,
    topic: String,
    partitions: Vec<i32>,
    /// Per partition: the next offset to read (last consumed + 1).
    next: BTreeMap<i32, i64>,
    /// Per absolute window: per partition, the first offset of a record in it.
    window_first: BTreeMap<usize, BTreeMap<i32, i64>>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaSource {
    /// `properties`: `--kafka-property`, set last (they replace the reader's own settings).
    pub fn new(
        url: &str,
        group: &str,
        properties: &[(String, String)],
    ) -> Result<Self, KafkaError> {
        let (brokers, topic) = parse_url(url).ok_or_else(|| KafkaError::Url {
            url: url.to_string(),
        })?;
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in properties {
            cc.set(k, v);
        }
        let consumer: BaseConsumer = cc.create().map_err(|e| KafkaError::Consumer {
            brokers: brokers.clone(),
            source: Box::new(e),
        })?;
        let partitions = partition_ids(&consumer, &topic).map_err(|e| KafkaError::Metadata {
            url: url.to_string(),
            source: Box::new(e),
        })?;
        if partitions.is_empty() {
            return Err(KafkaError::NoTopic {
                url: url.to_string(),
            });
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&topic, *p);
        }
        let committed =
            consumer
                .committed_offsets(tpl, TIMEOUT)
                .map_err(|e| KafkaError::Committed {
                    url: url.to_string(),
                    group: group.to_string(),
                    source: Box::new(e),
                })?;
        let mut assign = TopicPartitionList::new();
        let mut next = BTreeMap::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) if o >= 0 => {
                    next.insert(e.partition(), o);
                    Offset::Offset(o)
                }
                _ => Offset::Beginning,
            };
            assign
                .add_partition_offset(&topic, e.partition(), offset)
                .map_err(|e| KafkaError::Partition {
                    url: url.to_string(),
                    source: Box::new(e),
                })?;
        }
        consumer.assign(&assign).map_err(|e| KafkaError::Assign {
            url: url.to_string(),
            source: Box::new(e),
        })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic,
            partitions,
            next,
            window_first: BTreeMap::new(),
        })
    }

    fn take(&mut self, c: &mut dyn LineSink, timeout: Duration) -> Result<usize, KafkaError> {
        let mut n = 0;
        let mut wait = timeout;
        while let Some(m) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            let m = m.map_err(|e| KafkaError::Poll(Box::new(e)))?;
            let (p, o) = (m.partition(), m.offset());
            if let Some(payload) = m.payload() {
                let topic = &self.topic;
                if let Some(w) = c.line(payload, &|| format!("{topic}[{p}]@{o}")) {
                    self.window_first
                        .entry(w)
                        .or_default()
                        .entry(p)
                        .or_insert(o);
                }
            }
            self.next.insert(p, o + 1);
            n += 1;
            if n >= 100_000 {
                break;
            }
        }
        Ok(n)
    }

    /// Read until every partition is at the high watermark it had when this was called.
    pub fn read_to_end(&mut self, c: &mut dyn LineSink) -> Result<(), KafkaError> {
        let mut high = BTreeMap::new();
        for p in &self.partitions {
            let (_, h) = self
                .consumer
                .fetch_watermarks(&self.topic, *p, TIMEOUT)
                .map_err(|e| KafkaError::Watermarks(Box::new(e)))?;
            high.insert(*p, h);
        }
        let mut idle_since = Instant::now();
        loop {
            let done = high
                .iter()
                .all(|(p, h)| *h == 0 || self.next.get(p).is_some_and(|n| n >= h));
            if done {
                return Ok(());
            }
            if self.take(c, Duration::from_millis(200))? > 0 {
                idle_since = Instant::now();
            } else if idle_since.elapsed() > Duration::from_secs(30) {
                return Err(KafkaError::Stalled);
            }
        }
    }

    fn commit(&self, upto: &BTreeMap<i32, i64>) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in upto {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(|e| KafkaError::CommitOffset(Box::new(e)))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| KafkaError::Commit(Box::new(e)))
    }

    /// Commit everything read (batch mode, after the table is written).
    pub fn commit_all(&self) -> Result<(), KafkaError> {
        self.commit(&self.next)
    }
}

impl FollowSource for KafkaSource {
    fn poll(&mut self, c: &mut dyn LineSink) -> Result<(), SourceError> {
        while self.take(c, Duration::from_millis(100))? > 0 {}
        Ok(())
    }

    fn watch_lag(&mut self, metrics: &Arc<SolverMetrics>) {
        watch_lag(&self.consumer, &self.topic, metrics);
    }

    fn written(&mut self, open: &BTreeSet<usize>) -> Result<(), SourceError> {
        self.window_first.retain(|w, _| open.contains(w));
        // Per partition, resume at the first record of a window still open, else after the
        // last record read.
        let mut upto = self.next.clone();
        for firsts in self.window_first.values() {
            for (p, o) in firsts {
                let e = upto.entry(*p).or_insert(*o);
                *e = (*e).min(*o);
            }
        }
        Ok(self.commit(&upto)?)
    }
}

/// Measure, every [`LAG_EVERY`] on a thread of its own, how far behind `consumer` is in each
/// partition of `topic` it holds, into `metrics`: the high watermark (a query to the broker)
/// minus the consumer's position, where a partition not read from yet counts from its
/// committed offset, else its low watermark. A thread rather than the follow loop, so that the
/// lag keeps growing while the loop is stuck (in a long solve, or a hung write). It stops once
/// the consumer is dropped. The first measurement is made here, before the solver reads: the
/// backlog it starts with.
pub(crate) fn watch_lag(consumer: &Arc<BaseConsumer>, topic: &str, metrics: &Arc<SolverMetrics>) {
    let (weak, name, m) = (Arc::downgrade(consumer), topic.to_string(), metrics.clone());
    let mut shown = BTreeSet::new();
    measure_lag(&weak, &name, &m, &mut shown);
    let spawned = std::thread::Builder::new()
        .name("solver-lag".into())
        .spawn(move || loop {
            std::thread::sleep(LAG_EVERY);
            if !measure_lag(&weak, &name, &m, &mut shown) {
                return;
            }
        });
    if let Err(e) = spawned {
        log::warn!("{topic}: the consumer lag is not measured: {e}");
    }
}

/// One measurement of [`watch_lag`]; false once the consumer is gone. `shown`: the partitions
/// whose lag is exported, so that one given away is removed.
fn measure_lag(
    consumer: &Weak<BaseConsumer>,
    topic: &str,
    m: &SolverMetrics,
    shown: &mut BTreeSet<i32>,
) -> bool {
    let Some(c) = consumer.upgrade() else {
        return false;
    };
    // The partitions held, with the position in each (past control records too).
    let positions = match c.position() {
        Ok(tpl) => tpl,
        Err(e) => {
            log::debug!("{topic}: position: {e}");
            m.error("watermarks");
            return true;
        }
    };
    let mut at: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    for e in positions.elements().iter().filter(|e| e.topic() == topic) {
        let o = match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        };
        at.insert(e.partition(), o);
    }
    // Partitions not read from yet: from their committed offset.
    let mut unread = TopicPartitionList::new();
    for (p, _) in at.iter().filter(|(_, o)| o.is_none()) {
        unread.add_partition(topic, *p);
    }
    if unread.count() > 0 {
        match c.committed_offsets(unread, TIMEOUT) {
            Ok(tpl) => {
                for e in tpl.elements() {
                    if let (Offset::Offset(o), Some(slot)) =
                        (e.offset(), at.get_mut(&e.partition()))
                    {
                        *slot = (o >= 0).then_some(o);
                    }
                }
            }
            Err(e) => log::debug!("{topic}: committed offsets: {e}"),
        }
    }
    for (p, o) in &at {
        match c.fetch_watermarks(topic, *p, TIMEOUT) {
            Ok((low, high)) => m.set_lag(topic, *p, lag(low, high, *o)),
            Err(e) => {
                log::debug!("{topic}[{p}]: watermarks: {e}");
                m.error("watermarks");
            }
        }
    }
    for gone in shown.iter().filter(|p| !at.contains_key(p)) {
        m.forget_lag(topic, *gone);
    }
    *shown = at.into_keys().collect();
    true
}

/// Records of a partition from `low` to `high` (its watermarks) not yet read at `position`
/// (`None`: nothing read or committed, so all of them).
fn lag(low: i64, high: i64, position: Option<i64>) -> i64 {
    (high - position.unwrap_or(low).max(low)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("kafka://127.0.0.1:9092,127.0.0.1:9093/hydrus-logs"),
            Some(("127.0.0.1:9092,127.0.0.1:9093".into(), "hydrus-logs".into()))
        );
        assert_eq!(parse_url("kafka:///t"), None);
        assert_eq!(parse_url("kafka://b/"), None);
        assert_eq!(parse_url("http://b/t"), None);
    }

    #[test]
    fn lag_counts_from_the_position_else_the_start() {
        assert_eq!(lag(0, 100, Some(40)), 60);
        assert_eq!(lag(0, 100, Some(100)), 0);
        assert_eq!(
            lag(10, 100, None),
            90,
            "nothing read or committed: all of it"
        );
        // Retention dropped records under a committed offset: only what is left counts.
        assert_eq!(lag(50, 100, Some(20)), 50);
        // A watermark read before the last records came: never negative.
        assert_eq!(lag(0, 100, Some(103)), 0);
    }
}
