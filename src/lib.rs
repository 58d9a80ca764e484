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
//! - [`otel`]: trace context and spans, exported over OTLP (their own crate, `hydrus-otel`);
//!   [`logging`]: the process log.
//! - [`admin`], [`metrics`], [`state`], [`serve`], [`check`]: around the proxy.
//! - [`cluster`], [`probe`], [`transport`], [`tls`]: upstream clusters, their health probes,
//!   protocols and TLS (their own crate, `hydrus-upstream`, with `hydrus-discovery` for names);
//!   [`health`]: the thread that checks their health and resolves their names again.
//! - [`solve_wiring`]: what `hydrus solve` needs of the proxy's config (its own crate,
//!   `hydrus-solve`, never reaches into the proxy).

pub use hydrus_otel as otel;
pub use hydrus_upstream::{cluster, probe, tls, transport};

pub mod admin;
pub mod check;
pub mod config;
pub mod demo;
pub mod edge;
pub mod health;
pub mod listening;
pub mod logging;
pub mod logsink;
pub mod metrics;
pub mod serve;
pub mod solve_wiring;
pub mod state;
pub mod tables;
