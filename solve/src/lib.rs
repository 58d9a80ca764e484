//! The offline half of hydrus: what `hydrus solve` and `hydrus simulate` do, over plain data.
//! It depends on the filters (the formats of the log record and the tables) and never on the
//! proxy: `cargo test -p hydrus-solve` builds without pingora.
//!
//! - [`read`]: decision logs in (files, gzip, a directory; chunks on every core; following them
//!   as they grow; a Kafka topic), counted and checked line by line.
//! - One module per policy's solver: [`hydrus`] (the k-table, exactly, at fleet scale),
//!   [`e2e`] (the E2E decision table), [`hedge`] (Kwiken's reissue timeouts); [`multi`], the
//!   k solver of strategies that cost several resources (which the reader's collector keeps
//!   per window, so it is not under `hydrus`).
//! - [`write`]: tables written atomically.
//! - [`metrics`]: a following solver's own metrics and their listener (`--metrics-listen`).
//! - [`simulate`]: the papers' evaluation on a seeded population.
//! - [`cli`]: each command's options as plain values (clap's derive names their flags; the
//!   binary wires them into its commands), and the drivers that read, solve and write.
#![forbid(unsafe_code)]

pub mod cli;
pub mod e2e;
pub mod hedge;
pub mod hydrus;
pub mod metrics;
pub mod multi;
pub mod read;
pub mod simulate;
pub mod write;

pub use cli::{run, window_secs, E2eSpec, Format, Policy, SolveArgs, SolveError};
