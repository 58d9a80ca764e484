//! hydrus's decision logic, as plain Rust over plain data.
//!
//! Nothing here knows about pingora or sockets: the proxy in `src/` turns a request into an
//! [`filter::Input`], runs the route's [`route::Chain`] of filters over it, and applies what they
//! decided. That keeps every policy unit-testable, property-testable and benchmarkable without a
//! server.
//!
//! One folder or file per policy, each holding all of it (its YAML section and checks, its
//! table, its metrics, its request hook, its log fields):
//!
//! - [`rollout`]: the stable user-id split into treatment and control.
//! - [`hydrus`]: the Hydrus paper's allocation: strategies, QoE header, decision rule, k-table.
//! - [`e2e`]: E2E's routing by external delay, from a bucketed decision table.
//! - [`hedge`]: Kwiken-style reissues: the race, the budget, the timeout table.
//! - [`log`]: the decision log record and the log section.
//!
//! And what they share:
//!
//! - [`filter`]: the contract every policy implements ([`filter::Filter`], [`filter::FilterKind`]).
//! - [`table`]: hot-reloaded tables, whatever their kind.
//! - [`route`]: routes (which requests a chain runs on) and chains.
//! - [`outlier`], [`retry`], [`query`]: passive endpoint health, the retry budget, owned query
//!   keys (used by the edge for every route).
//! - [`identity`]: the identity headers' names, found in a request's header map in one walk.
//! - [`request`]: the checks of a request's framing fields (`Host`, `Content-Length`) and the
//!   `cookie` join for an HTTP/1.1 hop.

pub mod clock;
pub mod e2e;
pub mod filter;
pub mod fleet;
pub mod hedge;
pub mod hydrus;
pub mod identity;
pub mod log;
pub mod outcome;
pub mod outlier;
pub mod query;
pub mod request;
pub mod resource;
pub mod retry;
pub mod rollout;
pub mod route;
pub mod table;

pub use filter::Group;
pub use hydrus::decide::decide;
pub use hydrus::ktable::{KTable, KTableError};
pub use hydrus::qoe::{QoeError, QoeRange, QoeVector};
pub use hydrus::strategy::{Strategy, StrategyError, StrategySet, MAX_STRATEGIES};
pub use hydrus::{Decision, Fallback, HydrusRule, RequestInputs};
pub use log::{LogRecord, ValueInfo};
pub use rollout::Rollout;

/// Every kind of filter a chain may name. Adding a policy: its module, and one line here.
pub static KINDS: &[&dyn filter::FilterKind] = &[
    &rollout::KIND,
    &hydrus::KIND,
    &e2e::KIND,
    &hedge::KIND,
    &log::KIND,
];

/// [`KINDS`], as an iterator.
pub fn kinds() -> impl Iterator<Item = &'static dyn filter::FilterKind> {
    KINDS.iter().copied()
}
