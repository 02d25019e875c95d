//! Log output: `tracing` events to standard error, as text or JSON.
//!
//! Levels come from `RUST_LOG` (default `info`). The OpenTelemetry SDK's own
//! events are kept at `error` unless `RUST_LOG` asks otherwise: export
//! failures are logged, counted and rate-limited by the exporter itself
//! (`telemetry`), so the SDK's per-interval warnings would only repeat them
//! as a flood.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

// The SDK logs under its package names, hyphens included.
const DEFAULT_FILTER: &str = "info,opentelemetry_sdk=error,opentelemetry-otlp=error,\
                              opentelemetry_otlp=error,opentelemetry=error,h2=warn,hyper=warn,\
                              tonic=warn,reqwest=warn";

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init()
        }
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if result.is_err() {
        eprintln!("scout-exporter: a log subscriber was already installed");
    }
}
