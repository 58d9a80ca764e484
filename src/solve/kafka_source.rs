//! Reading decision logs from a Kafka topic (`--logs kafka://BROKER[,BROKER]/TOPIC`), with
//! the consumer group's committed offsets, so a restarted solver resumes where it stopped.
//!
//! Every partition of the topic is assigned to this consumer (one solver per topic). Offsets are
//! committed only once the records they cover are in a written k-table: in batch mode after the
//! table is written; in follow mode up to the first record of a window still open.

use super::follow::FollowSource;
use super::input::LineSink;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// `kafka://host:port[,host:port]/topic` split into brokers and topic.
pub fn parse_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("kafka://")?;
    let (brokers, topic) = rest.split_once('/')?;
    if brokers.is_empty() || topic.is_empty() || topic.contains('/') {
        return None;
    }
    Some((brokers.to_string(), topic.to_string()))
}

pub struct KafkaSource {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Per partition: the next offset to read (last consumed + 1).
    next: BTreeMap<i32, i64>,
    /// Per absolute window: per partition, the first offset of a record in it.
    window_first: BTreeMap<usize, BTreeMap<i32, i64>>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaSource {
    pub fn new(url: &str, group: &str) -> Result<Self, String> {
        let (brokers, topic) =
            parse_url(url).ok_or_else(|| format!("{url}: expected kafka://BROKERS/TOPIC"))?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| format!("kafka consumer for {brokers}: {e}"))?;
        let md = consumer
            .fetch_metadata(Some(&topic), TIMEOUT)
            .map_err(|e| format!("{url}: metadata: {e}"))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!("{url}: no such topic, or it has no partitions"));
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&topic, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, TIMEOUT)
            .map_err(|e| format!("{url}: committed offsets of group {group}: {e}"))?;
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
                .map_err(|e| format!("{url}: {e}"))?;
        }
        consumer
            .assign(&assign)
            .map_err(|e| format!("{url}: assign: {e}"))?;
        Ok(Self {
            consumer,
            topic,
            partitions,
            next,
            window_first: BTreeMap::new(),
        })
    }

    fn take(&mut self, c: &mut dyn LineSink, timeout: Duration) -> Result<usize, String> {
        let mut n = 0;
        let mut wait = timeout;
        while let Some(m) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            let m = m.map_err(|e| format!("kafka: {e}"))?;
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
    pub fn read_to_end(&mut self, c: &mut dyn LineSink) -> Result<(), String> {
        let mut high = BTreeMap::new();
        for p in &self.partitions {
            let (_, h) = self
                .consumer
                .fetch_watermarks(&self.topic, *p, TIMEOUT)
                .map_err(|e| format!("kafka watermarks: {e}"))?;
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
                return Err("kafka: no progress towards the end of the topic for 30 s".into());
            }
        }
    }

    fn commit(&self, upto: &BTreeMap<i32, i64>) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in upto {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(|e| format!("kafka: {e}"))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| format!("kafka commit: {e}"))
    }

    /// Commit everything read (batch mode, after the table is written).
    pub fn commit_all(&self) -> Result<(), String> {
        self.commit(&self.next)
    }
}

impl FollowSource for KafkaSource {
    fn poll(&mut self, c: &mut dyn LineSink) -> Result<(), String> {
        while self.take(c, Duration::from_millis(100))? > 0 {}
        Ok(())
    }

    fn written(&mut self, open: &BTreeSet<usize>) -> Result<(), String> {
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
        self.commit(&upto)
    }
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
}
