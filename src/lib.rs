//! scout-exporter: Docker Scout's supply-chain metrics, re-exported through
//! OpenTelemetry.
//!
//! The crate polls Scout's per-organization metrics endpoint, keeps the
//! last good answer of each organization as an immutable snapshot, and
//! exposes the snapshots through OpenTelemetry observable instruments that
//! an OTLP push and a Prometheus pull endpoint both read.

#![warn(missing_docs)]

pub mod config;
pub mod parse;
pub mod scout;
pub mod secret;
pub mod snapshot;
