//! The merging side of a solver group: every member reads the whole summaries topic and,
//! once every log partition's progress has passed a window, merges that window's summaries
//! and solves it.

use super::super::output::set_slot;
use super::super::output::TableRows;
use super::super::summary::{WindowSummary, DEFAULT_CAP};
use super::super::summary_file::{self, SummaryFile};
use super::super::{SolveOptions, WindowData, WindowReport};
use crate::read::Collector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What the summaries topic carries (JSON, tagged by `kind`); docs/solver.md, "Solving in a group".
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum GroupMessage {
    /// One log partition's summary of one absolute window.
    Window {
        log_topic: String,
        partition: i32,
        partitions: usize,
        window_abs: usize,
        member: String,
        /// (Boxed: a summary is much larger than a progress message.)
        summary: Box<SummaryFile>,
    },
    /// Every window of the partition up to `closed_through` is published.
    Progress {
        log_topic: String,
        partition: i32,
        partitions: usize,
        closed_through: usize,
        window_secs: u32,
        member: String,
    },
}

/// The windows published by every partition, merged once all partitions have passed them.
#[derive(Default)]
pub(super) struct Merger {
    parts: BTreeMap<usize, BTreeMap<i32, SummaryFile>>,
    pub(super) progress: BTreeMap<i32, usize>,
    /// Windows with summaries not yet in the table.
    dirty: BTreeSet<usize>,
    /// Per window of the day: the absolute window whose solution is in the table's slot.
    slots: BTreeMap<usize, usize>,
}

impl Merger {
    /// Take one message of the summaries topic: those of our log topic, partition count and
    /// window length (`ours`); others are skipped.
    pub(super) fn receive(&mut self, bytes: &[u8], name: &str, ours: (&str, usize, u32)) {
        let msg = match serde_json::from_slice::<GroupMessage>(bytes) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{name}: not a summary message: {e}");
                return;
            }
        };
        let (log_topic, partitions, window_secs) = ours;
        let newest = self.progress.values().max().copied().unwrap_or(0);
        match msg {
            GroupMessage::Window {
                log_topic: t,
                partitions: n,
                ref summary,
                ..
            } if t != log_topic || n != partitions || summary.window_secs != window_secs => {}
            GroupMessage::Progress {
                log_topic: t,
                partitions: n,
                window_secs: w,
                ..
            } if t != log_topic || n != partitions || w != window_secs => {}
            GroupMessage::Window {
                partition,
                window_abs,
                summary,
                ..
            } => {
                let windows = (86_400 / window_secs.max(1)) as usize;
                if window_abs + windows <= newest {
                    return; // a day and more old: its slot holds a newer window
                }
                match summary_file::check(*summary, Path::new(name)) {
                    Ok(s) => {
                        self.parts
                            .entry(window_abs)
                            .or_default()
                            .insert(partition, s);
                        self.dirty.insert(window_abs);
                    }
                    Err(e) => log::warn!("{e}"),
                }
            }
            GroupMessage::Progress {
                partition,
                closed_through,
                ..
            } => {
                let d = self.progress.entry(partition).or_insert(closed_through);
                *d = (*d).max(closed_through);
            }
        }
    }

    /// Whether every partition has published window `w`.
    fn ready(&self, w: usize, partitions: usize) -> bool {
        (0..partitions as i32).all(|p| self.progress.get(&p).is_some_and(|d| *d >= w))
    }

    /// Merge and solve every window all partitions have published and not yet solved; put
    /// them in `rows`. Returns the reports and the strategy set.
    pub(super) fn solve_ready(
        &mut self,
        partitions: usize,
        opts: &SolveOptions,
        rows: &mut TableRows,
    ) -> (Vec<WindowReport>, Option<String>) {
        let windows = (86_400 / opts.window_secs) as usize;
        let ready: Vec<usize> = self
            .dirty
            .iter()
            .copied()
            .filter(|w| self.ready(*w, partitions))
            .collect();
        let (mut reports, mut set) = (Vec::new(), None);
        for w in ready {
            self.dirty.remove(&w);
            let Some(parts) = self.parts.get(&w) else {
                continue;
            };
            let mut merged: Option<Collector<WindowSummary>> = None;
            for f in parts.values() {
                // (Members refuse multi-resource records: a summary here has none to restore.)
                let template = crate::read::MultiTemplate::default();
                let path = std::path::Path::new("summaries topic");
                let Ok(c) = summary_file::collector_of(
                    f.clone(),
                    DEFAULT_CAP,
                    opts.budget,
                    &template,
                    path,
                ) else {
                    continue;
                };
                match &mut merged {
                    Some(m) => m.merge(c),
                    None => merged = Some(c),
                }
            }
            let Some(c) = merged else { continue };
            let slot = self.slots.entry(w % windows).or_insert(w);
            if *slot > w {
                continue; // the slot holds a newer window
            }
            *slot = w;
            for ((scenario, _), pool) in &c.pools {
                if pool.has_records() {
                    let r = pool.window_report(scenario, w % windows, opts);
                    set_slot(rows, &r, windows);
                    reports.push(r);
                }
            }
            set = c.strategy_set.clone().or(set);
        }
        // A day back is kept: an old window's summary sent again is merged with its fellows.
        if let Some(newest) = self.parts.keys().next_back().copied() {
            self.parts.retain(|w, _| w + windows >= newest);
        }
        (reports, set)
    }
}
