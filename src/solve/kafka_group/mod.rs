//! `hydrus solve --follow --logs kafka://B/LOGS --group G --summaries kafka://B/SUMMARIES`:
//! several solvers share one topic of decision logs, each reading a part of it.
//!
//! Every member subscribes to the log topic in consumer group `G`, so Kafka splits the
//! partitions among the members and gives a dead member's partitions to the others. A member
//! summarises each partition it holds per absolute window. Once a window has closed, and the
//! partition is read to its end, the member publishes that window's summary of the partition
//! (key `LOGS/w/ABS/P`) and the partition's progress (key `LOGS/progress/P`: every window up to
//! ABS is published) to the summaries topic, a compacted one (the newest message of a key is
//! what counts). Only then does it commit the partition's offsets, up to the first record of a
//! window still open. Every member reads the whole summaries topic too: a window that every
//! partition's progress has passed is merged from its partitions' summaries and written to the
//! member's `--out`. So any member writes the table, and all of them write the same one.
//!
//! A partition that moves resumes at its committed offset: its new holder reads the records of
//! the windows still open again. Records of a window the partition's progress has passed are
//! late; they are counted, never published over the window's summary.

use super::follow::{base_rows, FollowError, FollowOptions};
use super::input::{Collector, Keying, LineSink};
use super::kafka_source::parse_url;
use super::output::{print_table, table_from_rows, write_ktable};
use super::summary::{WindowSummary, DEFAULT_CAP};
use super::summary_file;
use super::SolveOptions;
use crate::state::now_ms;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod merger;

use merger::{GroupMessage, Merger};

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
struct Delivery {
    failed: AtomicU64,
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

const TIMEOUT: Duration = Duration::from_secs(10);

/// One log partition this member holds.
struct Held {
    collector: Collector<WindowSummary>,
    /// The next offset to read: after the last record read, else where reading started.
    next: i64,
    /// Per absolute window: the offset of its first record here.
    window_first: BTreeMap<usize, i64>,
}

/// A member of a solver group.
pub struct Member {
    logs: BaseConsumer,
    log_topic: String,
    partitions: usize,
    summaries: BaseConsumer,
    summary_topic: String,
    summary_partitions: Vec<i32>,
    summary_next: BTreeMap<i32, i64>,
    producer: BaseProducer<Delivery>,
    name: String,
    held: BTreeMap<i32, Held>,
    template: Collector<WindowSummary>,
    merger: Merger,
    /// Records of windows already published, dropped.
    late: u64,
}

fn split(url: &str) -> Result<(String, String), GroupError> {
    parse_url(url).ok_or_else(|| GroupError::Url {
        url: url.to_string(),
    })
}

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

fn created<T>(brokers: &str, r: rdkafka::error::KafkaResult<T>) -> Result<T, GroupError> {
    r.map_err(|e| GroupError::Client {
        brokers: brokers.to_string(),
        source: Box::new(e),
    })
}

fn topic_err(topic: &str, what: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> GroupError {
    let topic = topic.to_string();
    move |e| GroupError::Topic {
        topic: topic.clone(),
        what,
        source: Box::new(e),
    }
}

/// The partition ids of `topic`.
fn partitions_of(c: &BaseConsumer, topic: &str) -> Result<Vec<i32>, GroupError> {
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(topic_err(topic, "metadata"))?;
    let ids: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if ids.is_empty() {
        return Err(GroupError::NoTopic {
            topic: topic.to_string(),
        });
    }
    Ok(ids)
}

/// One record of log partition `p` at offset `o` into its holder's summaries.
fn take(
    held: &mut BTreeMap<i32, Held>,
    template: &Collector<WindowSummary>,
    topic: &str,
    (p, o): (i32, i64),
    payload: Option<&[u8]>,
) {
    if held.get(&p).is_some_and(|h| o < h.next) {
        // Given away and back: reading restarted at the committed offset.
        held.remove(&p);
    }
    let h = held.entry(p).or_insert_with(|| Held {
        collector: template.clone(),
        next: o,
        window_first: BTreeMap::new(),
    });
    if let Some(payload) = payload {
        if let Some(w) = h.collector.line(payload, &|| format!("{topic}[{p}]@{o}")) {
            h.window_first.entry(w).or_insert(o);
        }
    }
    h.next = o + 1;
}

/// `host/pid`: which member published a summary.
fn member_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}/{}", std::process::id())
}

impl Member {
    pub fn new(
        logs_url: &str,
        summaries_url: &str,
        group: &str,
        opts: &SolveOptions,
    ) -> Result<Self, GroupError> {
        let (brokers, log_topic) = split(logs_url)?;
        let (sbrokers, summary_topic) = split(summaries_url)?;
        let logs: BaseConsumer = created(
            &brokers,
            client(&brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                // A member that died gives its partitions away within this.
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000")
                .create(),
        )?;
        let partitions = partitions_of(&logs, &log_topic)?.len();
        logs.subscribe(&[&log_topic])
            .map_err(topic_err(&log_topic, "subscribe"))?;
        // The summaries are read whole by every member: assigned, never committed.
        let summaries: BaseConsumer = created(
            &sbrokers,
            client(&sbrokers)
                .set("group.id", format!("{group}-summaries"))
                .set("enable.auto.commit", "false")
                .create(),
        )?;
        let summary_partitions = partitions_of(&summaries, &summary_topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in &summary_partitions {
            tpl.add_partition_offset(&summary_topic, *p, Offset::Beginning)
                .map_err(topic_err(&summary_topic, "assign"))?;
        }
        summaries
            .assign(&tpl)
            .map_err(topic_err(&summary_topic, "assign"))?;
        let producer: BaseProducer<Delivery> = created(
            &sbrokers,
            client(&sbrokers)
                .set("message.timeout.ms", "30000")
                .set("compression.type", "lz4")
                .create_with_context(Delivery::default()),
        )?;
        let template = Collector::with_pool(
            opts.window_secs,
            Keying::Absolute,
            WindowSummary::new(DEFAULT_CAP, opts.budget),
        );
        Ok(Self {
            logs,
            log_topic,
            partitions,
            summaries,
            summary_topic,
            summary_partitions,
            summary_next: BTreeMap::new(),
            producer,
            name: member_name(),
            held: BTreeMap::new(),
            template,
            merger: Merger::default(),
            late: 0,
        })
    }

    /// Read the log partitions held up to their `marks` (at least until nothing more comes),
    /// for at most `budget`; follow the group's assignment.
    fn poll_logs(
        &mut self,
        marks: &BTreeMap<i32, i64>,
        budget: Duration,
    ) -> Result<(), GroupError> {
        // Bounded: under steady traffic the topic is never idle, and a fetch may take a while.
        let until = std::time::Instant::now() + budget;
        loop {
            let mut n = 0;
            let mut wait = Duration::from_millis(100);
            while let Some(m) = self.logs.poll(wait) {
                wait = Duration::ZERO;
                let m = m.map_err(|e| GroupError::Poll(Box::new(e)))?;
                take(
                    &mut self.held,
                    &self.template,
                    &self.log_topic,
                    (m.partition(), m.offset()),
                    m.payload(),
                );
                n += 1;
                if n >= 100_000 {
                    break;
                }
            }
            self.follow_assignment()?;
            let behind = self
                .held
                .iter()
                .any(|(p, h)| marks.get(p).is_some_and(|m| h.next < *m));
            if (n == 0 && !behind) || std::time::Instant::now() >= until {
                return Ok(());
            }
        }
    }

    /// Drop what is no longer held; start what is newly held at its committed offset.
    fn follow_assignment(&mut self) -> Result<(), GroupError> {
        let assigned: BTreeSet<i32> = self
            .logs
            .assignment()
            .map_err(topic_err(&self.log_topic, "assignment"))?
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let gone: Vec<i32> = self
            .held
            .keys()
            .filter(|p| !assigned.contains(p))
            .copied()
            .collect();
        for p in gone {
            self.held.remove(&p);
            log::info!("{}[{p}]: given to another member", self.log_topic);
        }
        for p in assigned {
            if self.held.contains_key(&p) {
                continue;
            }
            let next = self.start_offset(p)?;
            log::info!("{}[{p}]: held from offset {next}", self.log_topic);
            self.held.insert(
                p,
                Held {
                    collector: self.template.clone(),
                    next,
                    window_first: BTreeMap::new(),
                },
            );
        }
        Ok(())
    }

    /// Where reading a newly held partition starts: the group's committed offset, else the
    /// partition's first.
    fn start_offset(&self, p: i32) -> Result<i64, GroupError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.log_topic, p);
        let committed = self
            .logs
            .committed_offsets(tpl, TIMEOUT)
            .map_err(topic_err(&self.log_topic, "committed offsets"))?;
        let c = committed.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        });
        match c {
            Some(o) => Ok(o),
            None => Ok(self.watermarks(p)?.0),
        }
    }

    fn watermarks(&self, p: i32) -> Result<(i64, i64), GroupError> {
        self.logs
            .fetch_watermarks(&self.log_topic, p, TIMEOUT)
            .map_err(topic_err(&self.log_topic, "watermarks"))
    }

    /// Read the summaries topic to its end.
    fn read_summaries(&mut self) -> Result<(), GroupError> {
        let mut high = BTreeMap::new();
        for p in &self.summary_partitions {
            let (_, h) = self
                .summaries
                .fetch_watermarks(&self.summary_topic, *p, TIMEOUT)
                .map_err(topic_err(&self.summary_topic, "watermarks"))?;
            high.insert(*p, h);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let done = high
                .iter()
                .all(|(p, h)| self.summary_next.get(p).copied().unwrap_or(0) >= *h);
            if done || std::time::Instant::now() > deadline {
                return Ok(());
            }
            let Some(m) = self.summaries.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.map_err(|e| GroupError::Poll(Box::new(e)))?;
            self.summary_next.insert(m.partition(), m.offset() + 1);
            let name = format!("{}[{}]@{}", self.summary_topic, m.partition(), m.offset());
            if let Some(bytes) = m.payload() {
                self.merger
                    .receive(bytes, &name, &self.log_topic, self.partitions);
            }
        }
    }

    /// The high watermark of each partition held: once a partition is read up to the mark
    /// taken after a window closed, every record written before it closed has been read.
    fn high_marks(&self) -> Result<BTreeMap<i32, i64>, GroupError> {
        let mut marks = BTreeMap::new();
        for p in self.held.keys() {
            marks.insert(*p, self.watermarks(*p)?.1);
        }
        Ok(marks)
    }

    fn send(&self, key: &str, value: &GroupMessage) -> Result<(), GroupError> {
        let payload = serde_json::to_vec(value).unwrap_or_default();
        loop {
            let r = BaseRecord::to(&self.summary_topic)
                .key(key)
                .payload(&payload);
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    self.producer.poll(Duration::from_millis(100));
                }
                Err((e, _)) => {
                    return Err(topic_err(&self.summary_topic, "publish")(e));
                }
            }
        }
    }

    /// Publish every window up to `closed` of the partitions read up to their `marks` (taken
    /// once `closed` had closed), then commit their offsets up to the first record of a window
    /// still open.
    fn publish(
        &mut self,
        closed: usize,
        windows: usize,
        marks: &BTreeMap<i32, i64>,
    ) -> Result<(), GroupError> {
        let ready: Vec<i32> = self
            .held
            .iter()
            .filter(|(p, h)| marks.get(p).is_some_and(|m| h.next >= *m))
            .map(|(p, _)| *p)
            .collect();
        let failed_before = self.producer.context().failed.load(Ordering::Relaxed);
        let mut sent = Vec::new();
        for p in ready {
            let done = self.merger.progress.get(&p).copied();
            let Some(h) = self.held.get_mut(&p) else {
                continue;
            };
            let due: BTreeSet<usize> = h
                .collector
                .pools
                .keys()
                .map(|(_, w)| *w)
                .filter(|w| *w <= closed)
                .collect();
            let (late, fresh): (Vec<usize>, Vec<usize>) =
                due.into_iter().partition(|w| done.is_some_and(|d| *w <= d));
            for ((_, w), pool) in &h.collector.pools {
                if late.contains(w) {
                    self.late += pool.records;
                }
            }
            let h = &self.held[&p];
            for w in &fresh {
                let pools = h.collector.pools.iter().filter(|(k, _)| k.1 == *w);
                let summary = summary_file::file_of(&h.collector, pools, |a| a % windows);
                let msg = GroupMessage::Window {
                    log_topic: self.log_topic.clone(),
                    partition: p,
                    partitions: self.partitions,
                    window_abs: *w,
                    member: self.name.clone(),
                    summary,
                };
                self.send(&format!("{}/w/{w}/{p}", self.log_topic), &msg)?;
            }
            if done.is_none_or(|d| d < closed) {
                let msg = GroupMessage::Progress {
                    log_topic: self.log_topic.clone(),
                    partition: p,
                    partitions: self.partitions,
                    closed_through: closed,
                    member: self.name.clone(),
                };
                self.send(&format!("{}/progress/{p}", self.log_topic), &msg)?;
            }
            sent.push(p);
        }
        if sent.is_empty() {
            return Ok(());
        }
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(topic_err(&self.summary_topic, "flush"))?;
        let failed = self.producer.context().failed.load(Ordering::Relaxed) - failed_before;
        if failed > 0 {
            return Err(GroupError::Delivery {
                topic: self.summary_topic.clone(),
                failed,
            });
        }
        self.commit(&sent, closed)
    }

    /// Forget the published windows of `parts` and commit where their open windows start.
    fn commit(&mut self, parts: &[i32], closed: usize) -> Result<(), GroupError> {
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            let Some(h) = self.held.get_mut(p) else {
                continue;
            };
            h.collector.pools.retain(|(_, w), _| *w > closed);
            h.window_first.retain(|w, _| *w > closed);
            let upto = h.window_first.values().min().copied().unwrap_or(h.next);
            tpl.add_partition_offset(&self.log_topic, *p, Offset::Offset(upto))
                .map_err(topic_err(&self.log_topic, "commit"))?;
        }
        self.logs
            .commit(&tpl, CommitMode::Sync)
            .map_err(topic_err(&self.log_topic, "commit"))
    }
}

/// The newest window closed by the clock, `lateness` after its end.
fn last_closed(window_secs: u32, lateness: Duration) -> Option<usize> {
    let window_ms = u64::from(window_secs) * 1000;
    let t = now_ms().checked_sub(lateness.as_millis() as u64)?;
    (t / window_ms).checked_sub(1).map(|w| w as usize)
}

/// Run a member until its sources fail, or SIGTERM/SIGINT: then it leaves the group, whose
/// other members take its partitions at once (from the offsets it committed).
pub fn run(
    logs_url: &str,
    summaries_url: &str,
    group: &str,
    opts: &SolveOptions,
    fo: &FollowOptions,
) -> Result<(), FollowError> {
    let windows = (86_400 / opts.window_secs) as usize;
    let mut member = Member::new(logs_url, summaries_url, group, opts)?;
    let mut rows = base_rows(&fo.out, opts.window_secs);
    let mut set = None;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            log::warn!("signal {sig} not handled: {e}");
        }
    }
    while !stop.load(Ordering::Relaxed) {
        let closed = last_closed(opts.window_secs, fo.lateness);
        let marks = member.high_marks()?;
        member.poll_logs(&marks, Duration::from_secs(5))?;
        member.read_summaries()?;
        if let Some(closed) = closed {
            let late = member.late;
            member.publish(closed, windows, &marks)?;
            member.read_summaries()?;
            if member.late > late {
                log::warn!(
                    "{} late record(s) dropped: their windows were published",
                    member.late - late
                );
            }
        }
        let (reports, s) = member
            .merger
            .solve_ready(member.partitions, opts, &mut rows);
        set = s.or(set);
        if !reports.is_empty() {
            let table = table_from_rows(opts.window_secs, rows.clone(), set.clone())?;
            write_ktable(&fo.out, &table)?;
            if fo.json {
                for r in &reports {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                }
            } else {
                let _ = print_table(&reports, &mut std::io::stdout());
            }
            log::info!(
                "wrote {} ({} window(s) merged from the group's summaries)",
                fo.out.display(),
                reports.len()
            );
        }
        std::thread::sleep(fo.poll);
    }
    member.logs.unsubscribe();
    log::info!("left group {group}: its other members take the partitions held here");
    Ok(())
}
