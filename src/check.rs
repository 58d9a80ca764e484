//! `hydrus check`: the config as `serve` would load it, and every table it names: problems
//! with their place, warnings, and whether each k-table fits the strategies it will serve.

use crate::config::{self, Running};
use crate::metrics::Metrics;
use hydrus_filters::clock::unix_ms;

/// What `hydrus check` prints of a config that loads.
pub struct Checked {
    pub warnings: Vec<String>,
    /// Each route's ramp: its timetable.
    pub timetables: Vec<String>,
}

/// What `hydrus check` found: errors (the config does not load), or what to print.
pub fn check(file: &config::ConfigFile) -> Result<Checked, config::ConfigErrors> {
    // Filters register their metric families in a registry of their own.
    let running = config::load_from(file, &Metrics::new(), config::Purpose::Check)?;
    let mut warnings: Vec<String> = running.warnings.iter().map(|w| w.to_string()).collect();
    warnings.extend(table_warnings(&running));
    let timetables = running
        .routes
        .iter()
        .filter_map(|r| hydrus_filters::rollout::of(&r.route.chain)?.timetable())
        .collect();
    Ok(Checked {
        warnings,
        timetables,
    })
}

/// Load every table file the filters name (each once, naming the routes that read it). Not
/// fatal: `serve` starts, and those routes fall back until a table loads.
fn table_warnings(running: &Running) -> Vec<String> {
    let mut failed: Vec<(String, String, Vec<&str>)> = Vec::new();
    for route in &running.routes {
        for table in route.route.chain.tables() {
            let Some(path) = table.source().path.clone() else {
                continue;
            };
            let shown = format!("{} {}", table.what(), path.display());
            if let Some(f) = failed.iter_mut().find(|f| f.0 == shown) {
                f.2.push(route.name());
                continue;
            }
            let loaded = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    table
                        .install(&text, path.display().to_string(), None, unix_ms())
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = loaded {
                failed.push((shown, e, vec![route.name()]));
            }
        }
    }
    let mut out: Vec<String> = failed
        .into_iter()
        .map(|(shown, e, routes)| {
            format!(
                "{shown}: {e} (requests of route {} get the default until it loads)",
                routes.join(", ")
            )
        })
        .collect();
    for w in running.routes.iter().flat_map(|r| {
        strategy_set_warning(r)
            .into_iter()
            .chain(missing_scenarios_warning(r))
            .chain(spend_scenario_warnings(r))
    }) {
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// Whether a route's k-table was solved for the strategies it serves.
fn strategy_set_warning(route: &crate::config::RouteRuntime) -> Option<String> {
    let h = hydrus_filters::hydrus::of(&route.route.chain)?;
    let (k, path) = (h.ktable.get()?, h.ktable.source.path.as_ref()?);
    let ours = &h.rule.fingerprint;
    let (theirs, mine) = (k.table.resources(), h.rule.strategies.resources());
    if (theirs.len() > 1 || mine.len() > 1) && theirs != mine {
        return Some(format!(
            "k-table {}: for resources [{}], but this config's strategies cost [{}]: treatment requests fall back (ktable_mismatch) until `hydrus solve` writes a table from logs of these strategies",
            path.display(),
            theirs.join(", "),
            mine.join(", ")
        ));
    }
    match k.table.strategy_set() {
        Some(fp) if fp != ours => Some(format!(
            "k-table {}: solved for strategy set {fp}, but this config's is {ours}: treatment requests fall back (ktable_mismatch) until `hydrus solve` writes a table from logs of these strategies",
            path.display()
        )),
        Some(_) => None,
        None => Some(format!(
            "k-table {}: does not say which strategy set it was solved for (strategy_set); it is used as if it were this config's ({ours})",
            path.display()
        )),
    }
}

/// Whether a route declares scenarios (`hydrus.scenarios`) its k-table has no row for: their
/// requests fall back (`unknown_scenario`), and control records of them carry no `k`.
fn missing_scenarios_warning(route: &crate::config::RouteRuntime) -> Option<String> {
    let h = hydrus_filters::hydrus::of(&route.route.chain)?;
    let declared = h.rule.scenarios.as_ref()?;
    let (k, path) = (h.ktable.get()?, h.ktable.source.path.as_ref()?);
    let default = hydrus_filters::hydrus::ktable::DEFAULT_SCENARIO;
    let missing: Vec<&str> = declared
        .iter()
        .map(String::as_str)
        .filter(|s| *s != default)
        .chain([default])
        .filter(|s| k.table.scenario_index(s.as_bytes()).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "k-table {}: no row for the declared scenario(s) {} of route {}: their treatment requests fall back (unknown_scenario) until `hydrus solve` writes a table from their logs",
            path.display(),
            missing.join(", "),
            route.name()
        )
    })
}

/// A scenario `spend_control.scenarios` names that requests can never name (a typo: without a
/// `scenarios` list, the declared ones are the k-table's rows): it runs no loop.
fn spend_scenario_warnings(route: &crate::config::RouteRuntime) -> Vec<String> {
    let Some(h) = hydrus_filters::hydrus::of(&route.route.chain) else {
        return Vec::new();
    };
    let (Some(sc), Some(k)) = (h.spend_control(), h.ktable.get()) else {
        return Vec::new();
    };
    let Some(named) = sc.named() else {
        return Vec::new();
    };
    named
        .filter(|n| !h.rule.declared(n.as_bytes(), Some(&k.table)))
        .map(|n| {
            format!(
                "route {}: spend_control.scenarios.{n}: no scenario of that name is declared or in the k-table ({}): it runs no loop (a typo?)",
                route.name(),
                k.source
            )
        })
        .collect()
}
