//! The hydrus filter's side of the spend controller: what a request's end feeds the loop, and
//! the loops' gauge series.

use super::{table_id, HydrusFilter, HydrusHandles};
use crate::filter::Group;
use crate::filter::RequestState;
use crate::hydrus::spend::SpendLoop;
use std::sync::Arc;

impl HydrusFilter {
    /// The spend loops' series, by scenario name (the running k-table's rows) and resource
    /// index.
    pub(super) fn spend_series(&self) -> Vec<(String, usize, Arc<SpendLoop>)> {
        let h = self.handles.load();
        let Some(k) = self
            .ktable
            .get()
            .filter(|k| table_id(Some(k)) == h.loops_table)
        else {
            return Vec::new();
        };
        let names = k.table.scenario_names();
        let per_row = h.loop_resources.max(1);
        h.loops
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let name = names.get(i / per_row)?;
                Some((name.clone(), i % per_row, l.clone()?))
            })
            .collect()
    }

    pub(super) fn retire_spend_gauges(&self) {
        for (name, resource) in &self.handles.load().loop_names {
            self.metrics.spend.remove(&self.route, name, resource);
        }
    }

    /// A treatment request the rule decided (no fallback) ended: its cost in each resource is
    /// spend the loop of its scenario and that resource measures; the first request past the
    /// period updates that loop's `m`. (A request decided on a k-table that was replaced before
    /// it ended may count under the new loops.)
    pub(super) fn spend_done(
        &self,
        h: &HydrusHandles,
        state: &RequestState,
        d: &crate::hydrus::Decision,
    ) {
        let (Group::Treatment, None, Some(row)) = (state.group, d.fallback, d.scenario) else {
            return;
        };
        let per_row = h.loop_resources.max(1);
        let costs = self.rule.strategies.costs(d.strategy);
        for r in 0..per_row {
            let Some(l) = h.loops.get(row * per_row + r).and_then(|l| l.as_deref()) else {
                continue;
            };
            let cost = costs.get(r).copied().unwrap_or(0.0);
            if l.record(cost, state.now_ms) {
                let target = self.ktable.get().and_then(|k| {
                    let w = k.table.window_of(state.now_ms);
                    k.table.expected_cost_of(row, w, r)
                });
                l.tick(state.now_ms, target);
            }
        }
    }
}
