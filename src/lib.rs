//! hydrus: a reverse proxy on pingora that decides, per request, how much a ranking service
//! spends on each user, so that total QoE is highest within a resource budget.
//!
//! The per-request decision logic is plain Rust in the `hydrus-filters` crate (`filters/`);
//! this crate is the edge around it: the pingora server, CLI, admin endpoint, hot reload, log
//! sinks, the offline solver and the simulator.

pub mod admin;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conns;
pub mod demo;
pub mod health;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod locate;
pub mod logsink;
pub mod metrics;
pub mod proxy;
pub mod record;
pub mod reload;
pub mod serve;
pub mod simulate;
pub mod solve;
pub mod state;
