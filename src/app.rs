//! Wiring: from a resolved [`Config`] to a running exporter, and the
//! `check` subcommand.
//!
//! [`start`] builds every part in order (demo, tokens, client, store,
//! pipelines, instruments, listener), starts one refresh task per
//! organization and the HTTP endpoint, and returns a [`Running`] handle.
//! [`Running::stop`] is the shutdown path SIGINT and SIGTERM take: stop
//! refreshing, push once more over OTLP, and return within ten seconds even
//! if the collector hangs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, OrgConfig, OtlpProtocol};
use crate::demo::{self, Demo};
use crate::instruments::{ExporterHealth, Instruments};
use crate::parse::Limits;
use crate::refresh::Refresher;
use crate::scout::{ClientSettings, ScoutClient};
use crate::secret::TokenSource;
use crate::server::{self, Endpoint, MAX_BODY_AGE, MetricsCache, ServerLimits};
use crate::snapshot::Store;
use crate::telemetry::Telemetry;
use crate::web_config::WebConfig;

/// Why the exporter could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A token could not be read.
    #[error("organization `{org}`: {source}")]
    Token {
        /// The organization.
        org: String,
        /// Why.
        source: crate::secret::TokenError,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// An export pipeline could not be built.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (--listen, OTEL_EXPORTER_PROMETHEUS_HOST/PORT): {source}")]
    Listen {
        /// host:port as configured.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The demo could not start.
    #[error("demo: {0}")]
    Demo(std::io::Error),
    /// The web config file (`--web.config.file`) is unreadable or invalid;
    /// the message names the file and the key.
    #[error(transparent)]
    WebConfig(#[from] crate::web_config::WebConfigError),
    /// `check` found organizations that failed.
    #[error("{0} of {1} organizations failed")]
    CheckFailed(usize, usize),
}

/// A running exporter.
pub struct Running {
    /// Where `/metrics` is served.
    pub addr: SocketAddr,
    /// The organizations' state.
    pub store: Arc<Store>,
    /// Counters of export problems.
    pub health: Arc<ExporterHealth>,
    telemetry: Arc<Telemetry>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _demo: Option<Demo>,
    _instruments: Arc<Instruments>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The organizations to fetch: the configured ones, or the demo's.
async fn organizations(
    config: &Config,
) -> Result<(Vec<OrgConfig>, Option<Demo>, Option<String>), RunError> {
    if config.demo {
        let demo = demo::start().await.map_err(RunError::Demo)?;
        let url = demo.scout.url();
        Ok((vec![demo.org.clone()], Some(demo), Some(url)))
    } else {
        Ok((config.orgs.clone(), None, None))
    }
}

fn client(config: &Config, url_override: Option<&str>) -> Result<ScoutClient, RunError> {
    let base_url = match url_override {
        Some(url) => reqwest::Url::parse(url).expect("the demo URL parses"),
        None => config.scout_url.clone(),
    };
    Ok(ScoutClient::new(ClientSettings {
        base_url,
        timeout: config.scout_timeout,
        max_body_bytes: config.max_body_bytes,
        proxy: if url_override.is_some() { None } else { config.proxy.clone() },
    })?)
}

/// Opens every organization's token source, reading token files once, so
/// an unusable one stops the start before anything else is set up.
fn open_tokens(orgs: &[OrgConfig]) -> Result<Vec<TokenSource>, RunError> {
    orgs.iter()
        .map(|org| {
            org.token.open().map_err(|source| RunError::Token { org: org.name.clone(), source })
        })
        .collect()
}

fn refreshers(
    config: &Config,
    orgs: &[OrgConfig],
    tokens: Vec<TokenSource>,
    client: &ScoutClient,
    store: &Arc<Store>,
    instruments: Option<Arc<Instruments>>,
) -> Vec<Refresher> {
    orgs.iter()
        .zip(tokens)
        .enumerate()
        .map(|(index, (org, token))| Refresher {
            index,
            org: org.name.clone(),
            token,
            client: client.clone(),
            store: store.clone(),
            instruments: instruments.clone(),
            interval: config.refresh_interval,
            limits: Limits::default(),
            max_staleness: config.max_staleness,
            max_series_per_metric: config.max_series_per_metric,
        })
        .collect()
}

/// Starts the exporter. Must run inside a tokio runtime.
pub async fn start(config: &Config) -> Result<Running, RunError> {
    // First, so that a bad file stops start-up before anything runs.
    let web = match &config.web_config_file {
        Some(path) => Some(Arc::new(WebConfig::load(path)?)),
        None => None,
    };
    let tls = web.as_ref().is_some_and(|w| w.tls().is_some());
    let basic_auth = web.as_ref().is_some_and(|w| w.basic_auth());
    let (orgs, demo, demo_url) = organizations(config).await?;
    let tokens = open_tokens(&orgs)?;
    let client = client(config, demo_url.as_deref())?;
    let names: Vec<&str> = orgs.iter().map(|o| o.name.as_str()).collect();
    let store = Arc::new(Store::new(&names));
    let health = Arc::new(ExporterHealth::default());

    let telemetry = Arc::new(Telemetry::build(&config.otel, health.clone())?);
    let shards: Arc<dyn crate::instruments::ShardSource> = telemetry.clone();
    let instruments = Arc::new(Instruments::register(
        telemetry.meters(),
        Some(shards),
        store.clone(),
        health.clone(),
        config.max_staleness,
    ));
    let refreshers = refreshers(config, &orgs, tokens, &client, &store, Some(instruments.clone()));

    let listen = format!("{}:{}", config.listen_host, config.listen_port);
    let listener = TcpListener::bind((config.listen_host.as_str(), config.listen_port))
        .await
        .map_err(|source| RunError::Listen { addr: listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen { addr: listen, source })?;

    let otel = &config.otel;
    let otlp = if otel.otlp {
        let default = match otel.protocol {
            OtlpProtocol::Grpc => "http://localhost:4317",
            OtlpProtocol::HttpProtobuf => "http://localhost:4318",
        };
        format!(
            "{} via {} every {}, {} temporality",
            otel.endpoint.as_deref().unwrap_or(default),
            match otel.protocol {
                OtlpProtocol::Grpc => "grpc",
                OtlpProtocol::HttpProtobuf => "http/protobuf",
            },
            humantime::format_duration(otel.export_interval),
            otel.temporality,
        )
    } else {
        "off".to_string()
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        organizations = %names.join(","),
        scout = %client.settings().base_url,
        demo = config.demo,
        refresh_interval = %humantime::format_duration(config.refresh_interval),
        prometheus = %if otel.prometheus {
            format!("{}://{addr}/metrics", if tls { "https" } else { "http" })
        } else {
            "off".to_string()
        },
        tls = %if tls { "on" } else { "off" },
        basic_auth = %if basic_auth { "on" } else { "off" },
        otlp = %otlp,
        "scout-exporter started"
    );
    if otel.sdk_disabled {
        tracing::warn!(
            "OTEL_SDK_DISABLED=true: no metrics are exported; /healthz and /readyz still answer"
        );
    }

    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for refresher in refreshers {
        tasks.push(tokio::spawn(refresher.run(stopped.clone())));
    }
    let endpoint = Arc::new(Endpoint {
        metrics: telemetry
            .prometheus_arc()
            .map(|p| MetricsCache::new(p, store.clone(), MAX_BODY_AGE)),
        store: store.clone(),
    });
    let limits = ServerLimits::default();
    tasks.push(tokio::spawn(server::serve(listener, endpoint, limits, web, stopped)));

    Ok(Running {
        addr,
        store,
        health,
        telemetry,
        stop,
        tasks,
        _demo: demo,
        _instruments: instruments,
    })
}

impl Running {
    /// Stops refreshing and serving, pushes once more over OTLP, and
    /// returns within about ten seconds.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
        let telemetry = self.telemetry.clone();
        let flush = tokio::task::spawn_blocking(move || telemetry.shutdown());
        if tokio::time::timeout(Duration::from_secs(8), flush).await.is_err() {
            tracing::warn!("final export did not finish within 8 seconds; exiting anyway");
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Serves until a signal, then shuts down.
pub async fn run(config: Config) -> Result<(), RunError> {
    let running = start(&config).await?;
    shutdown_signal().await;
    tracing::info!("signal received; stopping");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// `scout-exporter check`: fetches each organization once and prints a
/// summary to standard output.
pub async fn check(config: Config) -> Result<(), RunError> {
    let (orgs, _demo, demo_url) = organizations(&config).await?;
    let tokens = open_tokens(&orgs)?;
    let client = client(&config, demo_url.as_deref())?;
    let names: Vec<&str> = orgs.iter().map(|o| o.name.as_str()).collect();
    let store = Arc::new(Store::new(&names));
    let mut failed = 0;
    for refresher in refreshers(&config, &orgs, tokens, &client, &store, None) {
        let url = client.metrics_url(&refresher.org);
        println!("organization {} ({url})", refresher.org);
        match refresher.refresh_once().await {
            Ok(done) => {
                let snap = &done.snapshot;
                println!(
                    "  ok: {} series, {} bytes, fetched and parsed in {} ms",
                    snap.series_count(),
                    done.bytes,
                    done.elapsed.as_millis()
                );
                for family in &snap.families {
                    println!("  {:<40} {:>7} series", family.prometheus_name, family.series.len());
                }
                let streams = snap.label_values("streamName");
                println!(
                    "  streams ({}): {}",
                    streams.len(),
                    streams.into_iter().collect::<Vec<_>>().join(", ")
                );
                let policies = snap.label_values("displayName");
                println!(
                    "  policies ({}): {}",
                    policies.len(),
                    policies.into_iter().collect::<Vec<_>>().join(", ")
                );
                let s = &snap.skipped;
                if s.non_finite
                    + s.duplicates
                    + s.unsupported_families.len()
                    + s.reserved_families.len()
                    > 0
                {
                    println!("  left out: {s:?}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("  FAILED: {e}");
                println!("  hint: {}", e.reason.hint());
            }
        }
    }
    if failed > 0 { Err(RunError::CheckFailed(failed, orgs.len())) } else { Ok(()) }
}
