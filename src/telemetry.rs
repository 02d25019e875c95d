//! The OpenTelemetry export pipelines: an OTLP push and a Prometheus pull.
//!
//! Each pipeline has its own `SdkMeterProvider` with a single reader, and
//! the same instruments are registered on both, reading the same snapshots.
//! We measured the SDK (0.33.1) with one provider holding both readers: an
//! observable callback run for one reader also wrote into the other
//! reader's storage, so a series removed from the snapshot was still shown
//! by the other output (6 series where 3 existed in 3 of 30 Prometheus
//! scrapes). One provider per reader shows exactly the snapshot every time,
//! which `tests/pipeline.rs` checks by interleaving scrapes and pushes.
//!
//! The Prometheus pipeline writes no `target_info` series and no
//! `otel_scope_*` labels: users who scraped Scout directly see Scout's
//! series with one added label, `org`, and the exporter's own metrics. The
//! resource still travels with every OTLP push.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry_otlp::{MetricExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{
    Instrument, PeriodicReader, SdkMeterProvider, Stream, Temporality,
};

use crate::config::{OtelSettings, OtlpProtocol};
use crate::instruments::{ExporterHealth, Role, SHARD_CARDINALITY_LIMIT, ShardSource, Side};
use prometheus::proto::MetricFamily;

/// The instrumentation scope of every instrument.
pub const SCOPE: &str = "scout-exporter";

/// Failure to set up an export pipeline.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    /// The Prometheus exporter could not be built.
    #[error("Prometheus exporter: {0}")]
    Prometheus(String),
}

/// The Prometheus pull pipeline: one or more shards, gathered together.
#[derive(Debug)]
pub struct PrometheusPipeline {
    /// Locked for each whole gather, and while a shard is added, so that a
    /// scrape sees one shard count throughout.
    shards: Mutex<Vec<PullShard>>,
    resource: Resource,
}

/// One pull shard: a provider whose reader is an opentelemetry-prometheus
/// exporter, in a registry of its own (the prometheus crate refuses a
/// second OpenTelemetry collector in one registry).
#[derive(Debug)]
struct PullShard {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
}

impl PullShard {
    fn build(resource: &Resource) -> Result<PullShard, TelemetryError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
        let provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(exporter)
            .with_view(cardinality_view())
            .build();
        Ok(PullShard { provider, registry })
    }
}

impl PrometheusPipeline {
    /// Collects every instrument and encodes the result as Prometheus text.
    /// Runs the callbacks; call it off the async threads for large data.
    pub fn encode(&self) -> Vec<u8> {
        let families = {
            let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            merge(shards.iter().map(|s| s.registry.gather()).collect())
        };
        let mut out = Vec::with_capacity(64 * 1024);
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = prometheus::Encoder::encode(&encoder, &families, &mut out) {
            tracing::error!(error = %e, "cannot encode the Prometheus exposition");
        }
        drop(families);
        crate::memory::release_free_memory();
        out.shrink_to_fit();
        out
    }

    fn add_shard(&self, install: &mut dyn FnMut(&Meter)) -> bool {
        match PullShard::build(&self.resource) {
            Ok(shard) => {
                let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
                install(&shard.provider.meter_with_scope(scope()));
                shards.push(shard);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot add a Prometheus pipeline");
                false
            }
        }
    }
}

/// Joins the families that several shards gathered: one family per name,
/// names in order, and within a family the series ordered by label values,
/// as one registry orders them.
fn merge(mut gathered: Vec<Vec<MetricFamily>>) -> Vec<MetricFamily> {
    if gathered.len() == 1 {
        return gathered.pop().unwrap_or_default();
    }
    let mut by_name: BTreeMap<String, MetricFamily> = BTreeMap::new();
    for mut family in gathered.into_iter().flatten() {
        match by_name.entry(family.name().to_owned()) {
            Entry::Vacant(e) => {
                e.insert(family);
            }
            Entry::Occupied(mut e) => e.get_mut().mut_metric().extend(family.take_metric()),
        }
    }
    for family in by_name.values_mut() {
        family.mut_metric().sort_by(|a, b| {
            let (a, b) = (a.get_label(), b.get_label());
            a.len()
                .cmp(&b.len())
                .then_with(|| a.iter().map(|l| l.value()).cmp(b.iter().map(|l| l.value())))
        });
    }
    by_name.into_values().collect()
}

/// Both pipelines, whichever are enabled.
///
/// Each side may hold several providers, shards that split the Scout series
/// between them (see [`crate::instruments`]). OTLP sends one request per
/// provider and collection, and a receiver refuses requests above its
/// limit (4 MiB by default in gRPC servers); the 0.33 SDK offers no way to
/// split one collection into several requests. And the SDK sizes each
/// instrument's table for its cardinality limit at once, so a small limit
/// per shard keeps memory in proportion to the data.
#[derive(Debug)]
pub struct Telemetry {
    /// The pull side, served at `/metrics`.
    pub prometheus: Option<Arc<PrometheusPipeline>>,
    /// The push side: one provider per OTLP request shard.
    otlp: Mutex<Vec<SdkMeterProvider>>,
    /// What a new OTLP shard is built from; `None` when OTLP is off.
    push: Option<PushRecipe>,
}

/// Everything needed to build one more OTLP pipeline.
#[derive(Debug)]
struct PushRecipe {
    settings: OtelSettings,
    resource: Resource,
    health: Arc<ExporterHealth>,
}

impl PushRecipe {
    fn build(&self) -> Result<SdkMeterProvider, TelemetryError> {
        let settings = &self.settings;
        let exporter = match settings.protocol {
            OtlpProtocol::Grpc => {
                let mut builder = MetricExporter::builder().with_tonic();
                if settings.endpoint.as_deref().is_some_and(|e| e.starts_with("https://")) {
                    builder = builder.with_tls_config(
                        tonic::transport::ClientTlsConfig::new().with_native_roots(),
                    );
                }
                builder.build()
            }
            OtlpProtocol::HttpProtobuf => MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build(),
        }
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        let reader = PeriodicReader::builder(Watched::new(exporter, self.health.clone()))
            .with_interval(settings.export_interval)
            .build();
        Ok(SdkMeterProvider::builder()
            .with_resource(self.resource.clone())
            .with_reader(reader)
            .with_view(cardinality_view())
            .build())
    }
}

/// Gives the Scout families the per-shard cardinality limit; the
/// exporter's own instruments keep the SDK default, which keeps their
/// preallocated tables small.
fn cardinality_view() -> impl Fn(&Instrument) -> Option<Stream> + Send + Sync + 'static {
    move |i: &Instrument| {
        let scout_data = i.name().starts_with("scout.") && !i.name().starts_with("scout.exporter.");
        scout_data
            .then(|| Stream::builder().with_cardinality_limit(SHARD_CARDINALITY_LIMIT).build().ok())
            .flatten()
    }
}

fn scope() -> opentelemetry::InstrumentationScope {
    opentelemetry::InstrumentationScope::builder(SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

impl ShardSource for Telemetry {
    fn add_shard(&self, side: Side, install: &mut dyn FnMut(&Meter)) -> bool {
        match side {
            Side::Pull => self.prometheus.as_ref().is_some_and(|p| p.add_shard(install)),
            Side::Push => {
                let Some(recipe) = &self.push else { return false };
                match recipe.build() {
                    Ok(provider) => {
                        install(&provider.meter_with_scope(scope()));
                        self.otlp.lock().unwrap_or_else(|e| e.into_inner()).push(provider);
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot add an OTLP pipeline; requests may exceed receiver limits");
                        false
                    }
                }
            }
        }
    }
}

impl Telemetry {
    /// Builds the enabled pipelines. Must run inside a tokio runtime, since
    /// the gRPC channel is created here.
    pub fn build(
        settings: &OtelSettings,
        health: Arc<ExporterHealth>,
    ) -> Result<Telemetry, TelemetryError> {
        // The http/protobuf exporter builds a reqwest client too.
        crate::scout::install_crypto_provider();
        let resource = resource(settings);
        let prometheus = if settings.prometheus {
            let first = PullShard::build(&resource)?;
            Some(Arc::new(PrometheusPipeline {
                shards: Mutex::new(vec![first]),
                resource: resource.clone(),
            }))
        } else {
            None
        };

        let push =
            settings.otlp.then(|| PushRecipe { settings: settings.clone(), resource, health });
        let otlp = match &push {
            Some(recipe) => vec![recipe.build()?],
            None => Vec::new(),
        };
        Ok(Telemetry { prometheus, otlp: Mutex::new(otlp), push })
    }

    /// The pull pipeline, shared with the HTTP endpoint.
    pub fn prometheus_arc(&self) -> Option<Arc<PrometheusPipeline>> {
        self.prometheus.clone()
    }

    /// One meter per pipeline, with its role, for the instruments.
    pub fn meters(&self) -> Vec<(Meter, Role)> {
        let mut meters = Vec::new();
        if let Some(p) = &self.prometheus {
            let shards = p.shards.lock().unwrap_or_else(|e| e.into_inner());
            for (i, shard) in shards.iter().enumerate() {
                meters.push((shard.provider.meter_with_scope(scope()), Role::PullShard(i)));
            }
        }
        let otlp = self.otlp.lock().unwrap_or_else(|e| e.into_inner());
        for (i, p) in otlp.iter().enumerate() {
            meters.push((p.meter_with_scope(scope()), Role::PushShard(i)));
        }
        meters
    }

    /// Sends a last OTLP export from every push pipeline, in parallel, and
    /// stops both sides. Blocks for at most about five seconds on a
    /// collector that does not answer.
    pub fn shutdown(&self) {
        let otlp: Vec<SdkMeterProvider> =
            self.otlp.lock().unwrap_or_else(|e| e.into_inner()).clone();
        std::thread::scope(|scope| {
            for p in &otlp {
                scope.spawn(move || {
                    if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "final OTLP export did not complete");
                    }
                });
            }
        });
        if let Some(p) = &self.prometheus {
            for shard in p.shards.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = shard.provider.shutdown();
            }
        }
    }
}

fn resource(settings: &OtelSettings) -> Resource {
    let detected = Resource::builder().build();
    let mut builder = Resource::builder();
    if settings.default_service_name {
        builder = builder.with_service_name("scout-exporter");
    }
    if detected.get(&opentelemetry::Key::from_static_str("service.version")).is_none() {
        builder =
            builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    builder.build()
}

/// Wraps the OTLP exporter to count failed exports and log them without a
/// flood: the first failure at once, then one summary line per five
/// minutes while failures go on, and one line when exports recover.
#[derive(Debug)]
struct Watched<E> {
    inner: E,
    health: Arc<ExporterHealth>,
    log: std::sync::Mutex<LogGate>,
}

#[derive(Debug, Default)]
struct LogGate {
    last_logged: Option<Instant>,
    unlogged: u64,
    failing: bool,
}

const FAILURE_LOG_EVERY: Duration = Duration::from_secs(300);

impl<E> Watched<E> {
    fn new(inner: E, health: Arc<ExporterHealth>) -> Watched<E> {
        Watched { inner, health, log: Default::default() }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Watched<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        let mut gate = self.log.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if gate.failing {
                    tracing::info!("OTLP export recovered");
                }
                *gate = LogGate::default();
            }
            Err(error) => {
                self.health.otlp_export_failures.fetch_add(1, Ordering::Relaxed);
                gate.failing = true;
                let due = gate.last_logged.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY);
                if due {
                    tracing::warn!(
                        %error,
                        failures_since_last_log = gate.unlogged + 1,
                        "OTLP export failed; this interval's data is dropped, /metrics is unaffected"
                    );
                    gate.last_logged = Some(Instant::now());
                    gate.unlogged = 0;
                } else {
                    gate.unlogged += 1;
                }
            }
        }
        // The failure is counted and logged here; the SDK would log it again.
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
