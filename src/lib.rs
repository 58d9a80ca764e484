//! hydrus: a reverse proxy on pingora that decides, per request, how much a ranking service
//! spends on each user, so that total QoE is highest within a resource budget.
//!
//! The per-request decision logic is plain Rust in the `hydrus-filters` crate (`filters/`):
//! one module per policy, each a filter of a route's chain. This crate is the edge around it:
//!
//! - [`config`]: the YAML file, checked and compiled into routes, clusters and filters.
//! - [`edge`]: the pingora proxy (session -> filter inputs -> upstream request) and its
//!   connections.
//! - [`tables`]: hot reload of the config and of every filter's table.
//! - [`logsink`]: the decision log's queue and its file and Kafka sinks.
//! - [`admin`], [`metrics`], [`state`], [`serve`], [`check`]: around the proxy.
//! - [`cluster`], [`probe`], [`health`]: upstream clusters, their active health probes, and the
//!   thread that runs them.
//! - [`solve_wiring`]: what `hydrus solve` needs of the proxy's config (its own crate,
//!   `hydrus-solve`, never reaches into the proxy).

pub mod admin;
pub mod check;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod edge;
pub mod health;
pub mod logsink;
pub mod metrics;
pub mod probe;
pub mod serve;
pub mod solve_wiring;
pub mod state;
pub mod tables;
pub mod tls;
pub mod transport;
