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

use super::output::table_from_rows;
use super::output::{base_rows, print_reports};
use super::summary::{WindowSummary, DEFAULT_CAP};
use super::summary_file;
use super::SolveOptions;
use super::{FollowError, FollowOptions};
use crate::metrics::SolverMetrics;
use crate::read::{Collector, Keying, LineSink, ReadStats};
use crate::write::write_ktable;
use hydrus_filters::clock::unix_ms;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod client;
mod merger;

pub use client::GroupError;
use client::{
    client, created, member_name, partitions_of, producer_config, split, topic_err,
    with_properties, Delivery, TIMEOUT,
};
use merger::{GroupMessage, Merger};

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
    /// Shared with the lag watcher, which only queries it.
    logs: Arc<BaseConsumer>,
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
    window_secs: u32,
    /// What the collectors of partitions no longer held had read (`replaced` too), so that the
    /// metrics' counts never go back.
    gone: (ReadStats, u64),
}

/// Keep what a partition's collector read before it is dropped.
fn fold(gone: &mut (ReadStats, u64), h: &Held) {
    gone.0.add_counts(&h.collector.stats);
    gone.1 += h.collector.replaced;
}

/// One record of log partition `p` at offset `o` into its holder's summaries.
fn take(
    held: &mut BTreeMap<i32, Held>,
    gone: &mut (ReadStats, u64),
    template: &Collector<WindowSummary>,
    topic: &str,
    (p, o): (i32, i64),
    payload: Option<&[u8]>,
) {
    if held.get(&p).is_some_and(|h| o < h.next) {
        // Given away and back: reading restarted at the committed offset.
        if let Some(h) = held.remove(&p) {
            fold(gone, &h);
        }
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

impl Member {
    pub fn new(
        logs_url: &str,
        summaries_url: &str,
        group: &str,
        properties: &[(String, String)],
        opts: &SolveOptions,
    ) -> Result<Self, GroupError> {
        let (brokers, log_topic) = split(logs_url)?;
        let (sbrokers, summary_topic) = split(summaries_url)?;
        let logs: BaseConsumer = created(
            &brokers,
            with_properties(
                client(&brokers)
                    .set("group.id", group)
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", "earliest")
                    // A member that died gives its partitions away within this.
                    .set("session.timeout.ms", "10000")
                    .set("heartbeat.interval.ms", "1000"),
                properties,
            )
            .create(),
        )?;
        let partitions = partitions_of(&logs, &log_topic)?.len();
        logs.subscribe(&[&log_topic])
            .map_err(topic_err(&log_topic, "subscribe"))?;
        // The summaries are read whole by every member: assigned, never committed.
        let summaries: BaseConsumer = created(
            &sbrokers,
            with_properties(
                client(&sbrokers)
                    .set("group.id", format!("{group}-summaries"))
                    .set("enable.auto.commit", "false"),
                properties,
            )
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
            producer_config(&sbrokers, properties).create_with_context(Delivery::default()),
        )?;
        let template = Collector::with_pool(
            opts.window_secs,
            Keying::Absolute,
            WindowSummary::new(DEFAULT_CAP, opts.budget),
        )
        .for_route(opts.route.clone());
        Ok(Self {
            logs: Arc::new(logs),
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
            window_secs: opts.window_secs,
            gone: (ReadStats::default(), 0),
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
                    &mut self.gone,
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
            if let Some(h) = self.held.values().find(|h| !h.collector.multi.is_empty()) {
                return Err(GroupError::SeveralResources {
                    topic: self.log_topic.clone(),
                    resources: h.collector.resources.join(", "),
                });
            }
            self.follow_assignment()?;
            let positions = self.positions()?;
            let behind = positions
                .iter()
                .any(|(p, o)| marks.get(p).is_some_and(|m| o < m));
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
            if let Some(h) = self.held.remove(&p) {
                fold(&mut self.gone, &h);
            }
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

    /// Export what the member read into `m`: every collector's counts, those of partitions
    /// no longer held included, and the records of windows already published (late).
    fn observe_reads(&self, m: &SolverMetrics) {
        let mut all = (self.gone.0.clone(), self.gone.1);
        for h in self.held.values() {
            fold(&mut all, h);
        }
        m.observe_reads(&all.0.counts(all.1, self.late));
    }

    /// Read the summaries topic to its end; false when it could not within 30 s (then this
    /// member must not publish: it may not know every partition's progress yet).
    fn read_summaries(&mut self) -> Result<bool, GroupError> {
        let mut marks = BTreeMap::new();
        for p in &self.summary_partitions {
            let (low, high) = self
                .summaries
                .fetch_watermarks(&self.summary_topic, *p, TIMEOUT)
                .map_err(topic_err(&self.summary_topic, "watermarks"))?;
            marks.insert(*p, (low, high));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let done = marks
                .iter()
                .all(|(p, (low, high))| self.summary_next.get(p).copied().unwrap_or(*low) >= *high);
            if done {
                return Ok(true);
            }
            if std::time::Instant::now() > deadline {
                log::warn!("{}: not read to its end within 30 s", self.summary_topic);
                return Ok(false);
            }
            let Some(m) = self.summaries.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.map_err(|e| GroupError::Poll(Box::new(e)))?;
            self.summary_next.insert(m.partition(), m.offset() + 1);
            let name = format!("{}[{}]@{}", self.summary_topic, m.partition(), m.offset());
            if let Some(bytes) = m.payload() {
                let ours = (self.log_topic.as_str(), self.partitions, self.window_secs);
                self.merger.receive(bytes, &name, ours);
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

    /// Send one message (`None`: a tombstone) for log partition `p`: all of a log partition's
    /// messages go to one summaries partition, so they are read in the order sent.
    fn send(&self, p: i32, key: &str, value: Option<&GroupMessage>) -> Result<(), GroupError> {
        let payload = value.and_then(|v| serde_json::to_vec(v).ok());
        // (Never empty: `partitions_of` refuses a topic without partitions.)
        let n = self.summary_partitions.len() as i32;
        let partition = self.summary_partitions[p.rem_euclid(n) as usize];
        loop {
            let mut r = BaseRecord::<str, Vec<u8>>::to(&self.summary_topic)
                .key(key)
                .partition(partition);
            if let Some(payload) = &payload {
                r = r.payload(payload);
            }
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
    /// still open. Windows are delivered before the progress that vouches for them.
    fn publish(
        &mut self,
        closed: usize,
        windows: usize,
        marks: &BTreeMap<i32, i64>,
        m: &SolverMetrics,
    ) -> Result<(), GroupError> {
        for h in self.held.values() {
            h.collector
                .stats
                .one_route()
                .map_err(|source| GroupError::SeveralRoutes {
                    topic: self.log_topic.clone(),
                    source,
                })?;
        }
        let positions = self.positions()?;
        let ready: Vec<i32> = self
            .held
            .keys()
            .filter(|p| {
                marks
                    .get(p)
                    .is_some_and(|m| positions.get(p).is_some_and(|o| o >= m))
            })
            .copied()
            .collect();
        let mut progressed = Vec::new();
        for &p in &ready {
            let done = self.merger.progress.get(&p).copied();
            let Some(h) = self.held.get(&p) else {
                continue;
            };
            let due: BTreeSet<usize> = h
                .collector
                .pools
                .keys()
                .map(|(_, w)| *w)
                .filter(|w| *w <= closed)
                .collect();
            for ((_, w), pool) in &h.collector.pools {
                if due.contains(w) && done.is_some_and(|d| *w <= d) {
                    self.late += pool.records;
                }
            }
            for w in due.iter().filter(|w| done.is_none_or(|d| **w > d)) {
                let pools = h.collector.pools.iter().filter(|(k, _)| k.1 == *w);
                let summary = summary_file::file_of(&h.collector, pools, |a| a % windows);
                let msg = GroupMessage::Window {
                    log_topic: self.log_topic.clone(),
                    partition: p,
                    partitions: self.partitions,
                    window_abs: *w,
                    member: self.name.clone(),
                    summary: Box::new(summary),
                };
                self.send(p, &self.window_key(*w, p), Some(&msg))?;
                // The same window a day and more back is of no more use: compaction drops it.
                if let Some(old) = w.checked_sub(windows + 1) {
                    self.send(p, &self.window_key(old, p), None)?;
                }
            }
            if done.is_none_or(|d| d < closed) {
                progressed.push(p);
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        self.delivered()?;
        for &p in &progressed {
            let msg = GroupMessage::Progress {
                log_topic: self.log_topic.clone(),
                partition: p,
                partitions: self.partitions,
                closed_through: closed,
                window_secs: self.window_secs,
                member: self.name.clone(),
            };
            let key = format!("{}/{}/progress/{p}", self.log_topic, self.window_secs);
            self.send(p, &key, Some(&msg))?;
        }
        self.delivered()?;
        self.commit(&ready, closed, m);
        Ok(())
    }

    fn window_key(&self, w: usize, p: i32) -> String {
        format!("{}/{}/w/{w}/{p}", self.log_topic, self.window_secs)
    }

    /// Wait until everything sent is delivered; an error if anything was not.
    fn delivered(&self) -> Result<(), GroupError> {
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(topic_err(&self.summary_topic, "flush"))?;
        // Failures counted since the last call: every message sent since is delivered or not.
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            return Err(GroupError::Delivery {
                topic: self.summary_topic.clone(),
                failed,
            });
        }
        Ok(())
    }

    /// The consumer's position in each partition held (past control records too), else the
    /// next offset after the last record read.
    fn positions(&self) -> Result<BTreeMap<i32, i64>, GroupError> {
        let mut out: BTreeMap<i32, i64> = self.held.iter().map(|(p, h)| (*p, h.next)).collect();
        let tpl = self
            .logs
            .position()
            .map_err(topic_err(&self.log_topic, "position"))?;
        for e in tpl.elements() {
            if let (Offset::Offset(o), Some(n)) = (e.offset(), out.get_mut(&e.partition())) {
                *n = (*n).max(o);
            }
        }
        Ok(out)
    }

    /// Forget the published windows of `parts` and commit where their open windows start. A
    /// commit refused (the group rebalancing) is only logged and counted: a partition that
    /// stays here is committed again next time; one that moves is read again from the last
    /// commit by its new holder, which drops the records of the windows published here.
    fn commit(&mut self, parts: &[i32], closed: usize, m: &SolverMetrics) {
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            let Some(h) = self.held.get_mut(p) else {
                continue;
            };
            h.collector.pools.retain(|(_, w), _| *w > closed);
            h.window_first.retain(|w, _| *w > closed);
            let upto = h.window_first.values().min().copied().unwrap_or(h.next);
            if let Err(e) = tpl.add_partition_offset(&self.log_topic, *p, Offset::Offset(upto)) {
                log::warn!("{}[{p}]: commit: {e}", self.log_topic);
            }
        }
        if let Err(e) = self.logs.commit(&tpl, CommitMode::Sync) {
            m.error("commit");
            log::warn!(
                "{}: commit refused, tried again next time: {e}",
                self.log_topic
            );
        }
    }
}

/// The newest window closed by the clock, `lateness` after its end.
fn last_closed(window_secs: u32, lateness: Duration) -> Option<usize> {
    let window_ms = u64::from(window_secs) * 1000;
    let t = unix_ms().checked_sub(lateness.as_millis() as u64)?;
    (t / window_ms).checked_sub(1).map(|w| w as usize)
}

/// Run a member until its sources fail, or SIGTERM/SIGINT: then it leaves the group, whose
/// other members take its partitions at once (from the offsets it committed).
pub fn run(
    logs_url: &str,
    summaries_url: &str,
    group: &str,
    properties: &[(String, String)],
    opts: &SolveOptions,
    fo: &FollowOptions,
) -> Result<(), FollowError> {
    let windows = (86_400 / opts.window_secs) as usize;
    let mut member = Member::new(logs_url, summaries_url, group, properties, opts)?;
    let m = &fo.metrics;
    if m.served() {
        crate::read::kafka::watch_lag(&member.logs, &member.log_topic, m);
    }
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
        m.set_ready();
        let complete = member.read_summaries()?;
        if !complete {
            m.error("summaries");
        }
        if let (Some(closed), true) = (closed, complete) {
            let late = member.late;
            member.publish(closed, windows, &marks, m)?;
            if !member.read_summaries()? {
                m.error("summaries");
            }
            if member.late > late {
                log::warn!(
                    "{} record(s) of windows already published dropped (late, or read again \
                     after their partition moved)",
                    member.late - late
                );
            }
        }
        member.observe_reads(m);
        let (reports, s) = member
            .merger
            .solve_ready(member.partitions, opts, &mut rows);
        set = s.or(set);
        if !reports.is_empty() {
            let table = table_from_rows(opts.window_secs, rows.clone(), set.clone())?;
            write_ktable(&fo.out, &table)?;
            m.table_written(reports.len());
            print_reports(&reports, fo.json);
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
