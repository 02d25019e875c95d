//! The OpenTelemetry instruments, and the callbacks that read snapshots.
//!
//! Every Scout family is an observable gauge whose callback walks the
//! current snapshot of each organization and observes its series: no I/O,
//! no lock held across a refresh, nothing cached between collections, so a
//! series that leaves Scout's payload leaves the output at the next
//! collection. A family Scout adds later gets its gauge when it first
//! appears. The exporter's own health is reported by the `scout.exporter.*`
//! instruments. Each instrument is registered once on every meter handed in
//! (one meter per export pipeline), and each callback is guarded so that a
//! panic is logged and counted instead of silencing later collections.
//!
//! OTLP meters are shards: each observes only the Scout series whose key
//! falls in it, so that one push request stays well under a receiver's
//! size limit. Shards are added as the data grows ([`SERIES_PER_PUSH`]
//! series each); while a shard is being added, one collection may carry a
//! series twice or miss it once. The exporter's own metrics travel in
//! shard 0.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, ObservableCounter, ObservableGauge};

use crate::scout::Reason;
use crate::snapshot::{COMPLIANCE_RATIO, KNOWN_FAMILIES, Snapshot, Store, otel_name};

/// Bucket bounds of the refresh duration histogram, in seconds: from a fast
/// cached answer to the default 30 s timeout.
pub const REFRESH_BUCKETS: [f64; 12] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0, 60.0];

/// Names of the exporter's own instruments.
pub mod names {
    /// 1 when the last refresh of an organization succeeded.
    pub const UP: &str = "scout.exporter.up";
    /// Time of the last good refresh.
    pub const LAST_SUCCESS: &str = "scout.exporter.last_success.timestamp";
    /// Age of the data served.
    pub const SNAPSHOT_AGE: &str = "scout.exporter.snapshot.age";
    /// Duration of each refresh attempt.
    pub const REFRESH_DURATION: &str = "scout.exporter.refresh.duration";
    /// Failed refreshes by reason.
    pub const REFRESH_ERRORS: &str = "scout.exporter.refresh.errors";
    /// Failed OTLP exports.
    pub const EXPORT_ERRORS: &str = "scout.exporter.export.errors";
}

/// Most Scout series one OTLP request carries: about 2 MiB at the 126
/// bytes per point measured, half of the 4 MiB a gRPC server accepts by
/// default.
pub const SERIES_PER_PUSH: usize = 16_384;

/// What a meter feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The Prometheus pull pipeline: every series.
    Pull,
    /// OTLP pipeline number `n`: the series whose key falls in it.
    PushShard(usize),
}

impl Role {
    fn carries_own_metrics(self) -> bool {
        matches!(self, Role::Pull | Role::PushShard(0))
    }
}

/// Builds one more OTLP pipeline on demand.
pub trait ShardSource: Send + Sync {
    /// A meter of a new push pipeline, or `None` when there is none to add.
    fn add_shard(&self) -> Option<Meter>;
}

/// Counters kept outside the store that the instruments report.
#[derive(Debug, Default)]
pub struct ExporterHealth {
    /// OTLP exports that failed.
    pub otlp_export_failures: AtomicU64,
    /// Instrument callbacks that panicked.
    pub callback_panics: AtomicU64,
}

/// All instruments, on every meter.
pub struct Instruments {
    meters: Mutex<Vec<(Meter, Role)>>,
    shards: Option<Arc<dyn ShardSource>>,
    /// Number of push shards, read by every push callback.
    shard_count: Arc<AtomicUsize>,
    store: Arc<Store>,
    health: Arc<ExporterHealth>,
    max_staleness: Duration,
    max_series: usize,
    /// Scout families with a gauge: name, description, unit.
    families: Mutex<Vec<(Arc<str>, String, &'static str)>>,
    registered: Mutex<HashSet<Arc<str>>>,
    durations: Vec<Histogram<f64>>,
    // Handles are kept so the instruments live as long as the exporter.
    gauges: Mutex<Vec<ObservableGauge<f64>>>,
    _counters: Vec<ObservableCounter<u64>>,
    _up: Vec<ObservableGauge<u64>>,
}

impl std::fmt::Debug for Instruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instruments")
            .field("shards", &self.shard_count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Instruments {
    /// Registers the documented Scout gauges, the compliance ratio and the
    /// exporter's own instruments on each meter.
    pub fn register(
        meters: Vec<(Meter, Role)>,
        shards: Option<Arc<dyn ShardSource>>,
        store: Arc<Store>,
        health: Arc<ExporterHealth>,
        max_staleness: Duration,
        max_series: usize,
    ) -> Instruments {
        let mut durations = Vec::new();
        let mut counters = Vec::new();
        let mut up = Vec::new();
        let mut gauges = Vec::new();
        let push_shards = meters.iter().filter(|(_, r)| matches!(r, Role::PushShard(_))).count();
        for (meter, role) in &meters {
            if !role.carries_own_metrics() {
                continue;
            }
            durations.push(
                meter
                    .f64_histogram(names::REFRESH_DURATION)
                    .with_description(
                        "Duration of each refresh of an organization, failed ones included.",
                    )
                    .with_unit("s")
                    .with_boundaries(REFRESH_BUCKETS.to_vec())
                    .build(),
            );

            let (s, h) = (store.clone(), health.clone());
            up.push(
                meter
                    .u64_observable_gauge(names::UP)
                    .with_description(
                        "1 when the last refresh of the organization succeeded, else 0.",
                    )
                    .with_callback(move |obs| {
                        guarded(&h, names::UP, || {
                            for org in s.orgs() {
                                obs.observe(
                                    u64::from(org.is_up()),
                                    std::slice::from_ref(org.org_attribute()),
                                );
                            }
                        })
                    })
                    .build(),
            );

            let (s, h) = (store.clone(), health.clone());
            gauges.push(
                meter
                    .f64_observable_gauge(names::LAST_SUCCESS)
                    .with_description(
                        "Unix time of the last successful refresh of the organization.",
                    )
                    .with_unit("s")
                    .with_callback(move |obs| {
                        guarded(&h, names::LAST_SUCCESS, || {
                            for org in s.orgs() {
                                if let Some(snap) = org.snapshot() {
                                    let t = snap
                                        .fetched_at
                                        .duration_since(UNIX_EPOCH)
                                        .unwrap_or_default();
                                    obs.observe(
                                        t.as_secs_f64(),
                                        std::slice::from_ref(org.org_attribute()),
                                    );
                                }
                            }
                        })
                    })
                    .build(),
            );

            let (s, h) = (store.clone(), health.clone());
            gauges.push(
                meter
                    .f64_observable_gauge(names::SNAPSHOT_AGE)
                    .with_description(
                        "Age of the organization's data as served, at collection time.",
                    )
                    .with_unit("s")
                    .with_callback(move |obs| {
                        guarded(&h, names::SNAPSHOT_AGE, || {
                            let now = SystemTime::now();
                            for org in s.orgs() {
                                if let Some(snap) = org.snapshot() {
                                    obs.observe(
                                        snap.age(now).as_secs_f64(),
                                        std::slice::from_ref(org.org_attribute()),
                                    );
                                }
                            }
                        })
                    })
                    .build(),
            );

            let (s, h) = (store.clone(), health.clone());
            counters.push(
                meter
                    .u64_observable_counter(names::REFRESH_ERRORS)
                    .with_description("Failed refreshes of the organization, by reason.")
                    .with_callback(move |obs| {
                        guarded(&h, names::REFRESH_ERRORS, || {
                            for org in s.orgs() {
                                for reason in Reason::ALL {
                                    obs.observe(
                                        org.errors(reason),
                                        &[
                                            org.org_attribute().clone(),
                                            KeyValue::new("reason", reason.as_str()),
                                        ],
                                    );
                                }
                            }
                        })
                    })
                    .build(),
            );

            let h = health.clone();
            counters.push(
                meter
                    .u64_observable_counter(names::EXPORT_ERRORS)
                    .with_description("Failed pushes of metric data, by exporter.")
                    .with_callback(move |obs| {
                        let failures = h.otlp_export_failures.load(Ordering::Relaxed);
                        obs.observe(failures, &[KeyValue::new("exporter", "otlp")]);
                    })
                    .build(),
            );
        }

        let instruments = Instruments {
            meters: Mutex::new(meters),
            shards,
            shard_count: Arc::new(AtomicUsize::new(push_shards)),
            store,
            health,
            max_staleness,
            max_series,
            families: Mutex::new(Vec::new()),
            registered: Mutex::new(HashSet::new()),
            durations,
            gauges: Mutex::new(gauges),
            _counters: counters,
            _up: up,
        };
        for known in KNOWN_FAMILIES {
            instruments.register_family(
                &otel_name(known.prometheus_name),
                known.description.to_string(),
                known.unit,
            );
        }
        instruments.register_family(
            COMPLIANCE_RATIO,
            "Compliant images over evaluated images for a policy in a stream; \
             absent where no image was evaluated."
                .to_string(),
            "1",
        );
        instruments
    }

    /// Gives every family of `snapshot` a gauge, registering the ones Scout
    /// added since start. Warns when a family holds more series than the
    /// per-metric limit, since the excess would be folded into an overflow
    /// series.
    pub fn ensure_families(&self, snapshot: &Snapshot) {
        for family in &snapshot.families {
            let description = family.help.clone().unwrap_or_else(|| {
                format!("Passed through from Docker Scout's {}.", family.prometheus_name)
            });
            self.register_family(&family.otel_name, description, "");
            if family.series.len() > self.max_series {
                tracing::error!(
                    org = %snapshot.org,
                    metric = %family.prometheus_name,
                    series = family.series.len(),
                    limit = self.max_series,
                    "more series than --max-series-per-metric allows; the excess is folded into one \
                     overflow series"
                );
            }
        }
    }

    /// Adds push shards until each carries at most [`SERIES_PER_PUSH`]
    /// series, counting `incoming` for the organization about to publish
    /// it in place of its current snapshot.
    pub fn fit_shards(&self, org: &str, incoming: usize) {
        let Some(source) = &self.shards else { return };
        let total: usize = self
            .store
            .orgs()
            .iter()
            .filter(|o| o.name() != org)
            .filter_map(|o| o.snapshot())
            .map(|s| s.series_count())
            .sum::<usize>()
            + incoming;
        let needed = total.div_ceil(SERIES_PER_PUSH).max(1);
        let mut current = self.shard_count.load(Ordering::Acquire);
        while current < needed {
            let Some(meter) = source.add_shard() else { return };
            let role = Role::PushShard(current);
            let families = self.families.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (name, description, unit) in families {
                self.register_on(&meter, role, name, description, unit);
            }
            self.meters.lock().unwrap_or_else(|e| e.into_inner()).push((meter, role));
            current += 1;
            self.shard_count.store(current, Ordering::Release);
            tracing::info!(
                series = total,
                requests = current,
                "OTLP data split over more requests"
            );
        }
    }

    /// Records how long one refresh attempt took.
    pub fn record_refresh(&self, org: &KeyValue, elapsed: Duration) {
        for histogram in &self.durations {
            histogram.record(elapsed.as_secs_f64(), std::slice::from_ref(org));
        }
    }

    fn register_family(&self, name: &str, description: String, unit: &'static str) {
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if registered.contains(name) {
            return;
        }
        let name: Arc<str> = Arc::from(name);
        registered.insert(name.clone());
        self.families.lock().unwrap_or_else(|e| e.into_inner()).push((
            name.clone(),
            description.clone(),
            unit,
        ));
        let meters = self.meters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (meter, role) in meters {
            self.register_on(&meter, role, name.clone(), description.clone(), unit);
        }
    }

    /// One Scout family's gauge on one meter. A push shard observes only
    /// the series whose key falls in it.
    fn register_on(
        &self,
        meter: &Meter,
        role: Role,
        family: Arc<str>,
        description: String,
        unit: &'static str,
    ) {
        let (store, health) = (self.store.clone(), self.health.clone());
        let max_staleness = self.max_staleness;
        let shard = match role {
            Role::Pull => None,
            Role::PushShard(index) => Some((index as u64, self.shard_count.clone())),
        };
        let gauge = meter
            .f64_observable_gauge(family.to_string())
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |obs| {
                guarded(&health, &family, || {
                    let now = SystemTime::now();
                    let shards =
                        shard.as_ref().map(|(i, n)| (*i, n.load(Ordering::Acquire).max(1) as u64));
                    for org in store.orgs() {
                        let Some(snap) = org.snapshot() else { continue };
                        if snap.age(now) > max_staleness {
                            continue;
                        }
                        let Some(f) = snap.family(&family) else { continue };
                        for series in &f.series {
                            if shards.is_some_and(|(i, n)| series.shard_key % n != i) {
                                continue;
                            }
                            obs.observe(series.value, &series.attributes);
                        }
                    }
                })
            })
            .build();
        self.gauges.lock().unwrap_or_else(|e| e.into_inner()).push(gauge);
    }
}

/// Runs a callback body, turning a panic into a logged, counted error.
fn guarded(health: &ExporterHealth, instrument: &str, body: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(body)).is_err() {
        health.callback_panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(instrument, "instrument callback panicked; this collection lacks its data");
    }
}
