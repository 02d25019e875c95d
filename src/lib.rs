//! scout-exporter: Docker Scout's supply-chain metrics, re-exported through
//! OpenTelemetry.
//!
//! The crate polls Scout's per-organization metrics endpoint, keeps the
//! last good answer of each organization as an immutable snapshot, and
//! exposes the snapshots through OpenTelemetry observable instruments that
//! an OTLP push and a Prometheus pull endpoint both read.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | flags, environment, config file, `OTEL_*` checks |
//! | [`secret`] | the access token and token files |
//! | [`scout`] | the HTTP client for Scout, failure reasons |
//! | [`parse`] | Prometheus text and OpenMetrics parsing |
//! | [`snapshot`] | immutable per-organization data and the store |
//! | [`refresh`] | the per-organization polling loop |
//! | [`instruments`] | OpenTelemetry instruments and their callbacks |
//! | [`telemetry`] | the OTLP and Prometheus pipelines |
//! | [`server`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`web_config`] | the web config file: TLS, client certificates, basic auth |
//! | [`demo`], [`fake`] | the sample organization and the Scout stand-in |
//! | [`app`] | wiring, shutdown, the `check` subcommand |
//! | [`memory`] | keeping the resident size flat under glibc |
//!
//! Embedding the exporter in another program takes a [`config::Config`]
//! and [`app::start`]; see `examples/embed.rs`.

#![warn(missing_docs)]

pub mod app;
pub mod config;
pub mod demo;
pub mod fake;
pub mod instruments;
pub mod logging;
pub mod memory;
pub mod parse;
pub mod refresh;
pub mod scout;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod web_config;
