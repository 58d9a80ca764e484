//! `hydrus solve --follow`: keep reading new records and, each time a window closes, solve it
//! and rewrite its slot of the k-table (the paper's "update the parameters every 15 minutes").
//!
//! Records are grouped by absolute window (day and window), so each occurrence is solved on its
//! own records; its `k` replaces that window-of-day's slot. A window is closed once the clock is
//! `lateness` past its end, so records still in proxies' queues make it in, and once a poll has
//! brought none of its records: a backlog read at start (one partition after another, a file
//! after another) is read whole before its windows are solved. A record that comes
//! after its window was solved (or a day or more before the newest window solved, whose slot
//! holds a newer occurrence) is late: counted and dropped, for solved alone it would replace its
//! window's `k` with one from a handful of records.

use super::output::{base_rows, print_reports, set_slot, table_from_rows};
use super::{FollowError, FollowOptions, SolveOptions, WindowData};
use crate::read::follow::FollowSource;
use crate::read::{Collector, Keying, LineSink, Pool};
use crate::write::write_ktable;
use hydrus_filters::clock::unix_ms;
use std::collections::BTreeSet;

/// Run until the source fails; each open window's records go into a pool like `template`
/// (records, or a summary).
pub fn run<P: Pool + WindowData>(
    source: &mut dyn FollowSource,
    opts: &SolveOptions,
    fo: &FollowOptions,
    template: P,
) -> Result<(), FollowError> {
    let windows = (86_400 / opts.window_secs) as usize;
    let window_ms = u64::from(opts.window_secs) * 1000;
    let mut rows = base_rows(&fo.out, opts.window_secs);
    let mut c = Collector::with_pool(opts.window_secs, Keying::Absolute, template)
        .for_route(opts.route.clone())
        .with_multi(fo.multi.clone());
    let m = &fo.metrics;
    if m.served() {
        source.watch_lag(m);
    }
    let mut first = true;
    let mut solved = Solved::default();
    let mut late = 0u64;
    loop {
        let mut sink = LateFilter {
            c: &mut c,
            solved: &solved,
            windows,
            late: 0,
            touched: BTreeSet::new(),
        };
        source.poll(&mut sink)?;
        let new_late = sink.late;
        let touched = std::mem::take(&mut sink.touched);
        if new_late > 0 {
            c.pools.retain(|(_, w), _| !solved.is_late(*w, windows));
            c.multi.retain(|(_, w), _| !solved.is_late(*w, windows));
            late += new_late;
            log::warn!("{new_late} late record(s) of windows already solved dropped");
        }
        m.observe_reads(&c.stats.counts(c.replaced, late));
        if let Some(bytes) = source.lag_bytes() {
            m.set_file_lag(bytes);
        }
        c.stats.one_route()?;
        m.set_ready();
        let now = unix_ms();
        if std::mem::take(&mut first) && !(c.pools.is_empty() && c.multi.is_empty()) {
            // At start, a table from everything read so far, open windows included (they are
            // solved again when they close): proxies need not wait for a window to close.
            let mut keys: Vec<&(String, usize)> = c.pools.keys().chain(c.multi.keys()).collect();
            keys.sort_by_key(|(_, w)| *w);
            for key in keys {
                if let Some(r) = report_of(&c, key, windows, opts) {
                    set_slot(&mut rows, &r, windows);
                }
            }
            let table = table_from_rows(opts.window_secs, rows.clone(), c.strategy_set.clone())?;
            write_ktable(&fo.out, &table)?;
            m.table_written(0);
            log::info!(
                "wrote {} from the {} records read at start",
                fo.out.display(),
                c.stats.records
            );
        }
        let closed: Vec<(String, usize)> = (c.pools.keys().chain(c.multi.keys()))
            .filter(|(_, w)| (*w as u64 + 1) * window_ms + fo.lateness.as_millis() as u64 <= now)
            .filter(|(_, w)| !touched.contains(w))
            .cloned()
            .collect();
        if !closed.is_empty() {
            let mut reports = Vec::new();
            for key in &closed {
                if let Some(r) = report_of(&c, key, windows, opts) {
                    set_slot(&mut rows, &r, windows);
                    reports.push(r);
                }
                c.pools.remove(key);
                c.multi.remove(key);
                solved.add(key.1, windows);
            }
            let table = table_from_rows(opts.window_secs, rows.clone(), c.strategy_set.clone())?;
            write_ktable(&fo.out, &table)?;
            m.table_written(reports.len());
            let open: BTreeSet<usize> = (c.pools.keys().chain(c.multi.keys()))
                .map(|(_, w)| *w)
                .collect();
            source.written(&open)?;
            print_reports(&reports, fo.json);
            log::info!(
                "wrote {} ({} window(s) closed; {} records read, {} malformed)",
                fo.out.display(),
                reports.len(),
                c.stats.records,
                c.stats.malformed
            );
        }
        std::thread::sleep(fo.poll);
    }
}

/// The report of the pool (one resource) or multi-resource summary at `key`, as its window of
/// the day.
fn report_of<P: Pool + WindowData>(
    c: &Collector<P>,
    key: &(String, usize),
    windows: usize,
    opts: &SolveOptions,
) -> Option<super::WindowReport> {
    let (scenario, abs) = key;
    if let Some(inst) = c.pools.get(key) {
        return Some(inst.window_report(scenario, abs % windows, opts));
    }
    let summary = c.multi.get(key)?;
    let named = super::Named {
        summary,
        resources: &c.resources,
    };
    Some(named.window_report(scenario, abs % windows, opts))
}

/// The absolute windows solved in this run, for telling late records.
#[derive(Default)]
struct Solved {
    /// Those within a day of the newest (older ones are late whatever they were).
    recent: BTreeSet<usize>,
    newest: Option<usize>,
}

impl Solved {
    fn add(&mut self, w: usize, windows: usize) {
        let newest = self.newest.map_or(w, |n| n.max(w));
        self.newest = Some(newest);
        self.recent.insert(w);
        self.recent.retain(|r| r + windows > newest);
    }

    /// Whether a record of window `w` is late: `w` was solved, or is a day or more before the
    /// newest window solved (its slot holds a newer occurrence).
    fn is_late(&self, w: usize, windows: usize) -> bool {
        self.newest
            .is_some_and(|n| w <= n && (w + windows <= n || self.recent.contains(&w)))
    }
}

/// The collector, behind a check for late records: they are counted, and their window key is
/// not returned (a Kafka source then never holds its offsets back for them). Their pool is
/// dropped after the poll.
struct LateFilter<'a, P: Pool> {
    c: &'a mut Collector<P>,
    solved: &'a Solved,
    windows: usize,
    late: u64,
    /// The windows this poll brought records of: still coming in, not closed yet.
    touched: BTreeSet<usize>,
}

impl<P: Pool> LineSink for LateFilter<'_, P> {
    fn line(&mut self, line: &[u8], place: &dyn Fn() -> String) -> Option<usize> {
        let w = self.c.add_line(line, place)?;
        if self.solved.is_late(w, self.windows) {
            self.late += 1;
            return None;
        }
        self.touched.insert(w);
        Some(w)
    }

    fn incomplete(&mut self) {
        self.c.incomplete();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_is_a_solved_window_or_a_day_before_the_newest() {
        let windows = 96;
        let mut s = Solved::default();
        assert!(!s.is_late(5, windows), "nothing solved yet");
        s.add(1000, windows);
        s.add(998, windows);
        assert!(s.is_late(1000, windows) && s.is_late(998, windows));
        assert!(
            !s.is_late(999, windows),
            "never solved: its records are solved when it closes"
        );
        assert!(!s.is_late(1001, windows));
        assert!(
            s.is_late(1000 - windows, windows),
            "a day before: its slot holds 1000's"
        );
        s.add(1000 + windows, windows);
        assert!(
            s.is_late(998, windows),
            "older than a day: late whatever it was"
        );
        assert!(!s.recent.contains(&998), "pruned");
        assert_eq!(s.recent.len(), 1);
    }
}
