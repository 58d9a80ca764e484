//! `hydrus solve --follow`: keep reading new records and, each time a window closes, solve it
//! and rewrite its slot of the k-table (the paper's "update the parameters every 15 minutes").
//!
//! Records are grouped by absolute window (day and window), so each occurrence is solved on its
//! own records; its `k` replaces that window-of-day's slot. A window is closed once the clock is
//! `lateness` past its end, so records still in proxies' queues make it in.

use super::output::{base_rows, print_reports, set_slot, table_from_rows};
use super::{FollowError, FollowOptions, SolveOptions, WindowData};
use crate::read::follow::FollowSource;
use crate::read::{Collector, Keying, Pool};
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
    let mut first = true;
    loop {
        source.poll(&mut c)?;
        c.stats.one_route()?;
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
            log::info!(
                "wrote {} from the {} records read at start",
                fo.out.display(),
                c.stats.records
            );
        }
        let closed: Vec<(String, usize)> = (c.pools.keys().chain(c.multi.keys()))
            .filter(|(_, w)| (*w as u64 + 1) * window_ms + fo.lateness.as_millis() as u64 <= now)
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
            }
            let table = table_from_rows(opts.window_secs, rows.clone(), c.strategy_set.clone())?;
            write_ktable(&fo.out, &table)?;
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
