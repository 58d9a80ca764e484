//! `hydrus solve` needs two things of the proxy: for `--policy e2e`, what the config's first
//! e2e filter says; for `--policy hydrus`, the hydrus filter's budgets per resource. The solver
//! crate takes them as plain values; this reads them from `--config`.

use crate::config::ConfigErrors;
use hydrus_solve::cli::E2eSpec;
use std::path::Path;

/// Why `--config` gave no e2e filter.
#[derive(Debug, thiserror::Error)]
pub enum E2eSpecError {
    /// The config did not load (each problem names its file and line).
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("{}: has no e2e filter", .0.display())]
    NoE2eFilter(std::path::PathBuf),
}

/// The first e2e filter of `config`'s routes, as the E2E solver takes it.
pub fn e2e_spec(config: &Path) -> Result<E2eSpec, E2eSpecError> {
    // The filters register their metric families in a registry of their own.
    let running = crate::config::load(config, &crate::metrics::Metrics::new())?;
    let e = running
        .routes
        .iter()
        .find_map(|r| hydrus_filters::e2e::of(&r.route.chain))
        .ok_or_else(|| E2eSpecError::NoE2eFilter(config.to_path_buf()))?;
    Ok(E2eSpec {
        groups: e.group_names.clone(),
        qoe_model: e.qoe_model,
        priorities: e.priority_header.is_some(),
    })
}

/// Why `--config` gave no hydrus filter to take budgets from.
#[derive(Debug, thiserror::Error)]
pub enum BudgetsError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("{}: no route {} has a hydrus filter", .config.display(), .route.as_deref().map_or(String::new(), |r| format!("named `{r}`")))]
    NoHydrusFilter {
        config: std::path::PathBuf,
        route: Option<String>,
    },
}

/// What `--config` says of the hydrus filter of `route` (without a name: the first route with
/// one): its `resources.NAME.budget_per_request`, and the resources its strategies cost.
pub struct Budgets {
    pub per_request: std::collections::BTreeMap<String, f64>,
    pub resources: Vec<String>,
}

/// [`Budgets`] of `config`.
pub fn resource_budgets(config: &Path, route: Option<&str>) -> Result<Budgets, BudgetsError> {
    let running = crate::config::load(config, &crate::metrics::Metrics::new())?;
    running
        .routes
        .iter()
        .filter(|r| route.is_none_or(|name| r.route.name == name))
        .find_map(|r| hydrus_filters::hydrus::of(&r.route.chain))
        .map(|h| Budgets {
            per_request: h.resource_budgets.clone(),
            resources: h.rule.strategies.resources().to_vec(),
        })
        .ok_or_else(|| BudgetsError::NoHydrusFilter {
            config: config.to_path_buf(),
            route: route.map(str::to_string),
        })
}
