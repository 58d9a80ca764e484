//! hydrus's decision logic, as plain Rust over plain data.
//!
//! Nothing here knows about pingora, sockets or clocks: the proxy in `src/` reads headers and
//! the time, hands bytes and numbers to these functions, and applies what they return. That keeps
//! every filter unit-testable, property-testable and benchmarkable without a server.
//!
//! - [`strategy`]: the strategy set (cost, QoE scale) from the config.
//! - [`qoe`]: the QoE header parser.
//! - [`decide`]: the decision rule, `argmax_j qoe_j - k * cost_j`, ties to the cheaper.
//! - [`ktable`]: the per-window k-table written by `hydrus solve`.
//! - [`rollout`]: the stable user-id split into treatment and control.
//! - [`hydrus`]: the hydrus filter: all of the above for one request, with its fallbacks.
//! - [`e2e`]: E2E's external-delay buckets and decision table.
//! - [`hedge`]: Kwiken-style reissues: the race, the budget, the timeout table.
//! - [`log`]: the decision log record (Listing 1 of the Hydrus paper, plus what the solver needs).
//! - [`outlier`]: passive health of a cluster's endpoints (consecutive failures, hung endpoints).
//! - [`retry`]: the retry budget (retries as a share of requests in flight).
//! - [`query`]: the query parameters hydrus owns, stripped from what the client sent.

pub mod decide;
pub mod e2e;
pub mod hedge;
pub mod hydrus;
pub mod ktable;
pub mod log;
pub mod outlier;
pub mod qoe;
pub mod query;
pub mod retry;
pub mod rollout;
pub mod strategy;

pub use decide::decide;
pub use hydrus::{Decision, Fallback, HydrusFilter, RequestInputs};
pub use ktable::{KTable, KTableError};
pub use log::{LogRecord, ValueInfo};
pub use qoe::{QoeError, QoeRange, QoeVector};
pub use rollout::{Group, Rollout};
pub use strategy::{Strategy, StrategyError, StrategySet, MAX_STRATEGIES};
