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
//! Each output is split into shards, one meter (and SDK provider) each,
//! and a shard observes only the Scout series whose key falls in it, at
//! most about [`SERIES_PER_SHARD`] series. This keeps one OTLP request well
//! under a receiver's size limit, and it bounds the SDK's storage: the SDK
//! gives every instrument a table sized for its cardinality limit at once,
//! so a limit that fits 100,000 series cost 8 MiB per instrument and
//! provider even for a small organization. Shards are added as the data
//! grows. A new pull shard appears between two collections of `/metrics`;
//! while a push shard is being added, one push may carry a series twice or
//! miss it once. The exporter's own metrics travel in shard 0 of each
//! output.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, ObservableCounter, ObservableGauge};

use crate::scout::Reason;
use crate::snapshot::{COMPLIANCE_RATIO, KNOWN_FAMILIES, Skipped, Snapshot, Store, otel_name};

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
    /// Series of Scout's payload left out of the served data, by reason.
    pub const SERIES_SKIPPED: &str = "scout.exporter.series.skipped";
}

/// Scout series one shard carries on average: one OTLP request of about
/// 2 MiB at the 126 bytes per point measured, half of the 4 MiB a gRPC
/// server accepts by default.
pub const SERIES_PER_SHARD: usize = 16_384;

/// The SDK cardinality limit of a Scout gauge in one shard. Series spread
/// over shards by a hash, so a shard holds [`SERIES_PER_SHARD`] give or
/// take a few hundred; the margin keeps its series out of the SDK's
/// overflow series. The SDK allocates a table for this many at once
/// (about 1 MiB).
pub const SHARD_CARDINALITY_LIMIT: usize = SERIES_PER_SHARD + SERIES_PER_SHARD / 4;

/// One of the two outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The Prometheus endpoint.
    Pull,
    /// The OTLP push.
    Push,
}

/// What a meter feeds: shard `n` of one output, observing the series whose
/// key falls in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Shard `n` of the Prometheus endpoint.
    PullShard(usize),
    /// Shard `n` of the OTLP push: one request per collection.
    PushShard(usize),
}

impl Role {
    fn carries_own_metrics(self) -> bool {
        matches!(self, Role::PullShard(0) | Role::PushShard(0))
    }

    fn side(self) -> Side {
        match self {
            Role::PullShard(_) => Side::Pull,
            Role::PushShard(_) => Side::Push,
        }
    }

    fn index(self) -> usize {
        match self {
            Role::PullShard(i) | Role::PushShard(i) => i,
        }
    }
}

/// Builds one more pipeline of an output on demand.
pub trait ShardSource: Send + Sync {
    /// Adds a pipeline to `side` and hands its meter to `install`, which
    /// registers the instruments and publishes the new shard count. For the
    /// pull side this runs while no collection does, so that a scrape never
    /// mixes two shard counts. Returns false when no pipeline could be
    /// added (the side is off, or building it failed).
    fn add_shard(&self, side: Side, install: &mut dyn FnMut(&Meter)) -> bool;
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
    /// Number of pull shards, read by every pull callback.
    pull_shards: Arc<AtomicUsize>,
    /// Number of push shards, read by every push callback.
    push_shards: Arc<AtomicUsize>,
    store: Arc<Store>,
    health: Arc<ExporterHealth>,
    max_staleness: Duration,
    /// Scout families with a gauge: name, description, unit.
    families: Mutex<Vec<(Arc<str>, String, &'static str)>>,
    registered: Mutex<HashSet<Arc<str>>>,
    durations: Vec<Histogram<f64>>,
    // Handles are kept so the instruments live as long as the exporter.
    gauges: Mutex<Vec<ObservableGauge<f64>>>,
    _counters: Vec<ObservableCounter<u64>>,
    _whole_gauges: Vec<ObservableGauge<u64>>,
}

impl std::fmt::Debug for Instruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instruments")
            .field("pull_shards", &self.pull_shards.load(Ordering::Relaxed))
            .field("push_shards", &self.push_shards.load(Ordering::Relaxed))
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
    ) -> Instruments {
        let mut durations = Vec::new();
        let mut counters = Vec::new();
        let mut whole_gauges = Vec::new();
        let mut gauges = Vec::new();
        let count = |side| meters.iter().filter(|(_, r)| r.side() == side).count();
        let (pull_shards, push_shards) = (count(Side::Pull), count(Side::Push));
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
            whole_gauges.push(
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
            whole_gauges.push(
                meter
                    .u64_observable_gauge(names::SERIES_SKIPPED)
                    .with_description(
                        "Series of the organization's last good payload that are not \
                         exported, by reason.",
                    )
                    .with_unit("{series}")
                    .with_callback(move |obs| {
                        guarded(&h, names::SERIES_SKIPPED, || {
                            for org in s.orgs() {
                                let Some(snap) = org.snapshot() else { continue };
                                let counts = snap.skipped.series();
                                for (reason, count) in Skipped::REASONS.iter().zip(counts) {
                                    obs.observe(
                                        count as u64,
                                        &[
                                            org.org_attribute().clone(),
                                            KeyValue::new("reason", *reason),
                                        ],
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
            pull_shards: Arc::new(AtomicUsize::new(pull_shards)),
            push_shards: Arc::new(AtomicUsize::new(push_shards)),
            store,
            health,
            max_staleness,
            families: Mutex::new(Vec::new()),
            registered: Mutex::new(HashSet::new()),
            durations,
            gauges: Mutex::new(gauges),
            _counters: counters,
            _whole_gauges: whole_gauges,
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
    /// added since start.
    pub fn ensure_families(&self, snapshot: &Snapshot) {
        for family in &snapshot.families {
            let description = family.help.clone().unwrap_or_else(|| {
                format!("Passed through from Docker Scout's {}.", family.prometheus_name)
            });
            self.register_family(&family.otel_name, description, "");
        }
    }

    /// Adds shards to both outputs until each carries at most
    /// [`SERIES_PER_SHARD`] series on average, counting `incoming` for the
    /// organization about to publish instead of its current snapshot.
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
        let needed = total.div_ceil(SERIES_PER_SHARD).max(1);
        // Held throughout, so that a family registered meanwhile reaches
        // the new shards too.
        let _families_fixed = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        for (side, count) in [(Side::Pull, &self.pull_shards), (Side::Push, &self.push_shards)] {
            let mut current = count.load(Ordering::Acquire);
            // A side that is off has no shard 0 and gets none.
            if current == 0 {
                continue;
            }
            while current < needed {
                let role = match side {
                    Side::Pull => Role::PullShard(current),
                    Side::Push => Role::PushShard(current),
                };
                let added = source.add_shard(side, &mut |meter| {
                    let families = self.families.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    for (name, description, unit) in families {
                        self.register_on(meter, role, name, description, unit);
                    }
                    self.meters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((meter.clone(), role));
                    count.store(current + 1, Ordering::Release);
                });
                if !added {
                    break;
                }
                current += 1;
                tracing::info!(
                    series = total,
                    output = match side {
                        Side::Pull => "prometheus",
                        Side::Push => "otlp",
                    },
                    shards = current,
                    "data split over more SDK pipelines"
                );
            }
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
        let (index, count) = match role.side() {
            Side::Pull => (role.index() as u64, self.pull_shards.clone()),
            Side::Push => (role.index() as u64, self.push_shards.clone()),
        };
        let gauge = meter
            .f64_observable_gauge(family.to_string())
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |obs| {
                guarded(&health, &family, || {
                    let now = SystemTime::now();
                    let shards = count.load(Ordering::Acquire).max(1) as u64;
                    for org in store.orgs() {
                        let Some(snap) = org.snapshot() else { continue };
                        if snap.age(now) > max_staleness {
                            continue;
                        }
                        let Some(f) = snap.family(&family) else { continue };
                        for series in &f.series {
                            if series.shard_key % shards != index {
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
