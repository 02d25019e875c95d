//! The data served: one immutable [`Snapshot`] per organization, and the
//! [`Store`] that holds the current one of each.
//!
//! A snapshot is built in one piece from a parsed payload and replaced in
//! one piece after the next good refresh; nothing in it is changed in place.
//! Readers (instrument callbacks, `/readyz`, `check`) take the current
//! snapshot without locking and without waiting for a refresh in progress.
//! A failed refresh never touches the snapshot; it only updates the
//! organization's status and error counts.
//!
//! Building is the exporter's one burst of work, and an organization is
//! served only once it is done, so it is kept short: the parsed payload is
//! taken apart (label strings move into the snapshot), families of
//! 8,192 series or more are converted on every core, and each
//! series is one allocation, its attributes sorted once for the SDK.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use hashbrown::{HashSet, HashTable};
use opentelemetry::{Key, KeyValue, Value};

use crate::parse::{Exposition, Label, MetricKind, Sample};
use crate::scout::Reason;

/// The label every series carries: the Docker organization.
pub const ORG_LABEL: &str = "org";

/// What a Scout label named `org` is renamed to, so it cannot hide ours.
pub const EXPORTED_ORG_LABEL: &str = "exported_org";

/// A family Scout documents, with the description and unit we give it.
#[derive(Clone, Copy, Debug)]
pub struct KnownFamily {
    /// The name in Scout's payload and in Prometheus.
    pub prometheus_name: &'static str,
    /// The description of the instrument.
    pub description: &'static str,
    /// The OpenTelemetry unit; an annotation, so Prometheus names keep no
    /// unit suffix.
    pub unit: &'static str,
}

/// The three gauges Docker documents for the metrics endpoint.
pub const KNOWN_FAMILIES: [KnownFamily; 3] = [
    KnownFamily {
        prometheus_name: "scout_stream_vulnerabilities",
        description: "Vulnerabilities in a stream, by severity.",
        unit: "{vulnerability}",
    },
    KnownFamily {
        prometheus_name: "scout_policy_compliant_images",
        description: "Compliant images for a policy in a stream.",
        unit: "{image}",
    },
    KnownFamily {
        prometheus_name: "scout_policy_evaluated_images",
        description: "Total images evaluated against a policy in a stream.",
        unit: "{image}",
    },
];

/// Families with at least this many samples are built on several threads.
const PARALLEL_FROM: usize = 8_192;

/// The series of one family, in payload order: the first of repeated
/// series counts, and series with NaN or infinite values are left out.
/// Large families are converted on every core (a refresh is the only busy
/// moment of the exporter, and the organization is served only once it is
/// done); the check for repeats then runs over the finished series.
fn family_series(samples: Vec<Sample>, org_attr: &KeyValue, skipped: &mut Skipped) -> Vec<Series> {
    let convert = |part: Vec<Sample>| -> Vec<Series> {
        part.into_iter().map(|sample| series_of(sample, org_attr)).collect()
    };
    let threads = if samples.len() < PARALLEL_FROM {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    };
    let mut all: Vec<Series> = if threads == 1 {
        convert(samples)
    } else {
        let total = samples.len();
        let chunk = total.div_ceil(threads);
        // Owned parts, last first, so that each thread frees the samples
        // it converted and the memory is reused as it goes.
        let mut rest = samples;
        let mut parts = Vec::with_capacity(threads);
        while rest.len() > chunk {
            parts.push(rest.split_off(rest.len() - chunk));
        }
        parts.push(rest);
        parts.reverse();
        std::thread::scope(|scope| {
            let parts: Vec<_> =
                parts.into_iter().map(|part| scope.spawn(move || convert(part))).collect();
            let mut all = Vec::with_capacity(total);
            for part in parts {
                // A panic in a conversion is a bug; surface it as one.
                all.extend(part.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
            all
        })
    };

    let mut seen: HashTable<usize> = HashTable::with_capacity(all.len());
    let mut keep = vec![false; all.len()];
    for (i, series) in all.iter().enumerate() {
        let same = |&j: &usize| all[j].attributes == series.attributes;
        if seen.find(series.shard_key, same).is_some() {
            skipped.duplicates += 1;
            continue;
        }
        seen.insert_unique(series.shard_key, i, |&j| all[j].shard_key);
        if series.value.is_finite() {
            keep[i] = true;
        } else {
            skipped.non_finite += 1;
        }
    }
    drop(seen);
    let mut keep = keep.into_iter();
    // `retain` visits the series once each, in order.
    all.retain(|_| keep.next().unwrap_or(false));
    all
}

/// One sample as a series: `org` and Scout's labels (one named `org`
/// renamed to `exported_org`), sorted by key.
fn series_of(sample: Sample, org_attr: &KeyValue) -> Series {
    Series::new(attributes(org_attr, sample.labels.into_vec().into_iter()), sample.value)
}

/// `org` followed by Scout's labels, a label named `org` renamed to
/// `exported_org` so that it cannot hide ours.
fn attributes(org_attr: &KeyValue, labels: impl ExactSizeIterator<Item = Label>) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(labels.len() + 1);
    attributes.push(org_attr.clone());
    for Label { name, value } in labels {
        let key: Key = if &*name == ORG_LABEL {
            Key::from_static_str(EXPORTED_ORG_LABEL)
        } else {
            Key::from(name)
        };
        attributes.push(KeyValue::new(key, Value::String(value.into())));
    }
    attributes
}

/// The derived family: compliant over evaluated images, per policy/stream.
pub const COMPLIANCE_RATIO: &str = "scout.policy.compliance";

/// The OpenTelemetry name for a Scout family: underscores become dots, and a
/// colon (allowed in Prometheus names, not in instrument names) becomes an
/// underscore. The Prometheus exporter turns dots back into underscores, so
/// users see Scout's own name.
pub fn otel_name(prometheus_name: &str) -> String {
    prometheus_name.replace(':', "_").replace('_', ".")
}

/// Whether a passed-through family would collide with one of our own
/// instruments.
fn is_reserved(otel: &str) -> bool {
    otel == COMPLIANCE_RATIO || otel.starts_with("scout.exporter.")
}

/// Seed of the hash that gives each series its [`Series::shard_key`].
const SHARD_SEED: u64 = 0x5c07_e4b0_12c3_9d61;

/// One series of a family: its attributes (sorted by key) and value.
#[derive(Clone, Debug)]
pub struct Series {
    /// `org` and Scout's labels, keys unchanged, sorted by key.
    pub attributes: Box<[KeyValue]>,
    /// The value Scout gave (or, for the ratio, computed from it).
    pub value: f64,
    /// A stable hash of the attributes, which picks the OTLP request the
    /// series travels in when the data is split.
    pub shard_key: u64,
}

impl Series {
    /// Sorts the attributes by key: the SDK looks an attribute set up as
    /// given and, when it is not sorted, stores a sorted copy as well, so
    /// sorted sets cost each pipeline half the memory and no sort per
    /// observation. Both outputs order labels themselves.
    fn new(mut attributes: Vec<KeyValue>, value: f64) -> Series {
        use std::hash::{BuildHasher, Hash, Hasher};
        attributes.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        // A fixed seed: a series keeps its shard from one refresh to the next.
        let mut hasher = foldhash::quality::FixedState::with_seed(SHARD_SEED).build_hasher();
        for kv in &attributes {
            kv.key.as_str().hash(&mut hasher);
            kv.value.as_str().hash(&mut hasher);
        }
        Series { attributes: attributes.into_boxed_slice(), value, shard_key: hasher.finish() }
    }
}

/// One family as exported.
#[derive(Clone, Debug)]
pub struct ExportedFamily {
    /// Instrument name (`scout.stream.vulnerabilities`).
    pub otel_name: Arc<str>,
    /// The name in Scout's payload (`scout_stream_vulnerabilities`).
    pub prometheus_name: Arc<str>,
    /// Scout's HELP text, if any.
    pub help: Option<String>,
    /// The series, in payload order.
    pub series: Vec<Series>,
}

/// What building a snapshot left out, and why; logged by the refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Series whose value was NaN or infinite, which OpenTelemetry drops.
    pub non_finite: usize,
    /// Repeated series; the first one counts, as in Prometheus.
    pub duplicates: usize,
    /// `scout_*` families of a type other than gauge or untyped.
    pub unsupported_families: Vec<String>,
    /// `scout_*` families whose name is one of our own.
    pub reserved_families: Vec<String>,
    /// Families outside the `scout_` namespace.
    pub foreign_families: usize,
    /// Families cut to `--max-series-per-metric`: name and series left out.
    pub over_limit: Vec<(String, usize)>,
    /// Series of the unsupported families.
    pub unsupported_series: usize,
    /// Series of the reserved families.
    pub reserved_series: usize,
    /// Series of the families outside the `scout_` namespace.
    pub foreign_series: usize,
}

impl Skipped {
    /// Reasons a series is left out, as the `reason` attribute of
    /// `scout.exporter.series.skipped`, in the order of [`Skipped::series`].
    pub const REASONS: [&'static str; 6] = [
        "non_finite",
        "duplicate",
        "over_limit",
        "unsupported_type",
        "reserved_name",
        "outside_namespace",
    ];

    /// Series left out, one count for each of [`Skipped::REASONS`].
    pub fn series(&self) -> [usize; 6] {
        [
            self.non_finite,
            self.duplicates,
            self.over_limit.iter().map(|(_, cut)| cut).sum(),
            self.unsupported_series,
            self.reserved_series,
            self.foreign_series,
        ]
    }
}

/// One organization's data as of one good refresh.
#[derive(Debug)]
pub struct Snapshot {
    /// The organization.
    pub org: Arc<str>,
    /// When the payload was received.
    pub fetched_at: SystemTime,
    /// Families, Scout's order, then the compliance ratio.
    pub families: Vec<ExportedFamily>,
    /// What was left out.
    pub skipped: Skipped,
}

impl Snapshot {
    /// Builds a snapshot from a parsed payload, taking it apart: its label
    /// strings move into the snapshot instead of being shared with it.
    pub fn build(org: &str, exposition: Exposition, fetched_at: SystemTime) -> Snapshot {
        let org: Arc<str> = Arc::from(org);
        let org_attr = KeyValue::new(ORG_LABEL, Value::String(org.clone().into()));
        let mut skipped = Skipped::default();
        let mut families: Vec<ExportedFamily> = Vec::new();
        // Computed first, while the policy families are still whole.
        let ratio = compliance_ratio(&exposition, &org_attr);

        for family in exposition.families {
            if !family.name.starts_with("scout_") {
                skipped.foreign_families += 1;
                skipped.foreign_series += family.samples.len();
                continue;
            }
            if !matches!(family.kind, MetricKind::Gauge | MetricKind::Unknown) {
                skipped.unsupported_families.push(format!(
                    "{} ({})",
                    family.name,
                    family.kind.as_str()
                ));
                skipped.unsupported_series += family.samples.len();
                continue;
            }
            let otel = otel_name(&family.name);
            if is_reserved(&otel) {
                skipped.reserved_families.push(family.name.clone());
                skipped.reserved_series += family.samples.len();
                continue;
            }
            let series = family_series(family.samples, &org_attr, &mut skipped);
            families.push(ExportedFamily {
                otel_name: Arc::from(otel),
                prometheus_name: Arc::from(family.name.as_str()),
                help: family.help,
                series,
            });
        }

        if let Some(ratio) = ratio {
            families.push(ratio);
        }
        Snapshot { org, fetched_at, families, skipped }
    }

    /// Keeps the first `max` series of each family, in Scout's order, and
    /// records what was cut.
    pub fn keep_at_most(&mut self, max: usize) {
        for family in &mut self.families {
            if family.series.len() > max {
                let cut = family.series.len() - max;
                family.series.truncate(max);
                family.series.shrink_to_fit();
                self.skipped.over_limit.push((family.prometheus_name.to_string(), cut));
            }
        }
    }

    /// The family with this instrument name, if the payload had it.
    pub fn family(&self, otel_name: &str) -> Option<&ExportedFamily> {
        self.families.iter().find(|f| &*f.otel_name == otel_name)
    }

    /// Number of series over all families.
    pub fn series_count(&self) -> usize {
        self.families.iter().map(|f| f.series.len()).sum()
    }

    /// Age of the data at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.fetched_at).unwrap_or(Duration::ZERO)
    }

    /// Distinct values of one label over every family.
    pub fn label_values(&self, key: &str) -> BTreeSet<String> {
        self.families
            .iter()
            .flat_map(|f| f.series.iter())
            .flat_map(|s| s.attributes.iter())
            .filter(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
            .collect()
    }
}

/// Compliant over evaluated images for each policy and stream present in
/// both families with a positive evaluated count.
fn compliance_ratio(exposition: &Exposition, org_attr: &KeyValue) -> Option<ExportedFamily> {
    let find = |name: &str| {
        exposition
            .families
            .iter()
            .find(|f| f.name == name && matches!(f.kind, MetricKind::Gauge | MetricKind::Unknown))
    };
    let compliant = find("scout_policy_compliant_images")?;
    let evaluated = find("scout_policy_evaluated_images")?;
    let mut evaluated_by: hashbrown::HashMap<&[Label], f64> =
        hashbrown::HashMap::with_capacity(evaluated.samples.len());
    for s in &evaluated.samples {
        evaluated_by.entry(&s.labels).or_insert(s.value);
    }
    let mut seen: HashSet<&[Label]> = HashSet::new();
    let mut series = Vec::new();
    for s in &compliant.samples {
        if !seen.insert(&s.labels) {
            continue;
        }
        let Some(&total) = evaluated_by.get(&*s.labels) else { continue };
        if !total.is_finite() || total <= 0.0 || !s.value.is_finite() {
            continue;
        }
        let attributes = attributes(org_attr, s.labels.iter().cloned());
        series.push(Series::new(attributes, (s.value / total).clamp(0.0, 1.0)));
    }
    Some(ExportedFamily {
        otel_name: Arc::from(COMPLIANCE_RATIO),
        prometheus_name: Arc::from("scout_policy_compliance_ratio"),
        help: None,
        series,
    })
}

/// One organization's current snapshot and status.
#[derive(Debug)]
pub struct OrgState {
    name: Arc<str>,
    org_attr: KeyValue,
    snapshot: ArcSwapOption<Snapshot>,
    up: AtomicBool,
    last_error: ArcSwap<Option<String>>,
    errors: [AtomicU64; Reason::ALL.len()],
    attempts: AtomicU64,
}

impl OrgState {
    fn new(name: &str) -> OrgState {
        let name: Arc<str> = Arc::from(name);
        OrgState {
            org_attr: KeyValue::new(ORG_LABEL, Value::String(name.clone().into())),
            name,
            snapshot: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            last_error: ArcSwap::from_pointee(Some("no refresh has completed yet".to_string())),
            errors: Default::default(),
            attempts: AtomicU64::new(0),
        }
    }

    /// The organization.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `org=<name>`, ready to attach to a self-metric.
    pub fn org_attribute(&self) -> &KeyValue {
        &self.org_attr
    }

    /// The last good snapshot, if any.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// Whether the last refresh succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Why the last refresh failed, while it is failing.
    pub fn last_error(&self) -> Option<String> {
        (**self.last_error.load()).clone()
    }

    /// Failed refreshes so far for one reason.
    pub fn errors(&self, reason: Reason) -> u64 {
        self.errors[reason.index()].load(Ordering::Relaxed)
    }

    /// Refreshes attempted so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }
}

/// The current state of every configured organization.
#[derive(Debug)]
pub struct Store {
    orgs: Box<[OrgState]>,
    generation: AtomicU64,
}

impl Store {
    /// A store for these organizations, none of them with data yet.
    pub fn new<S: AsRef<str>>(orgs: &[S]) -> Store {
        Store {
            orgs: orgs.iter().map(|o| OrgState::new(o.as_ref())).collect(),
            generation: AtomicU64::new(0),
        }
    }

    /// Every organization, in configuration order.
    pub fn orgs(&self) -> &[OrgState] {
        &self.orgs
    }

    /// One organization by index.
    pub fn org(&self, index: usize) -> &OrgState {
        &self.orgs[index]
    }

    /// Bumped whenever any snapshot or status changes; the `/metrics` cache
    /// compares it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces an organization's snapshot after a good refresh.
    pub fn publish(&self, index: usize, snapshot: Snapshot) {
        let org = &self.orgs[index];
        org.snapshot.store(Some(Arc::new(snapshot)));
        org.up.store(true, Ordering::Release);
        org.last_error.store(Arc::new(None));
        org.attempts.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Records a failed refresh; the snapshot stays.
    pub fn record_failure(&self, index: usize, reason: Reason, detail: &str) {
        let org = &self.orgs[index];
        org.errors[reason.index()].fetch_add(1, Ordering::Relaxed);
        org.up.store(false, Ordering::Release);
        org.last_error.store(Arc::new(Some(format!("{reason}: {detail}"))));
        org.attempts.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Organizations without a good snapshot, with the reason, for
    /// `/readyz`. Empty when every organization has data.
    pub fn not_ready(&self) -> Vec<String> {
        self.orgs
            .iter()
            .filter(|o| o.snapshot.load().is_none())
            .map(|o| format!("{}: {}", o.name, o.last_error().unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Format, Limits, parse};

    fn snapshot(body: &str) -> Snapshot {
        let e = parse(body.as_bytes(), Format::Prometheus, &Limits::default()).unwrap();
        Snapshot::build("acme", e, SystemTime::now())
    }

    fn attrs(s: &Series) -> Vec<(String, String)> {
        s.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned())).collect()
    }

    #[test]
    fn keep_at_most_cuts_each_family_to_its_first_series_and_says_so() {
        let mut snap = snapshot(
            "# TYPE scout_stream_vulnerabilities gauge\n\
             scout_stream_vulnerabilities{streamName=\"a\",severity=\"HIGH\"} 1\n\
             scout_stream_vulnerabilities{streamName=\"b\",severity=\"HIGH\"} 2\n\
             scout_stream_vulnerabilities{streamName=\"c\",severity=\"HIGH\"} 3\n\
             # TYPE scout_policy_evaluated_images gauge\n\
             scout_policy_evaluated_images{id=\"p\",displayName=\"P\",streamName=\"a\"} 5\n",
        );
        snap.keep_at_most(2);
        let vulns = snap.family("scout.stream.vulnerabilities").unwrap();
        assert_eq!(vulns.series.iter().map(|s| s.value).collect::<Vec<_>>(), [1.0, 2.0]);
        assert_eq!(snap.family("scout.policy.evaluated.images").unwrap().series.len(), 1);
        assert_eq!(snap.skipped.over_limit, [("scout_stream_vulnerabilities".to_string(), 1)]);
        assert_eq!(snap.skipped.series()[2], 1);
    }

    #[test]
    fn series_carry_org_and_scout_labels_unchanged_sorted_by_key() {
        let snap = snapshot(
            "# TYPE scout_stream_vulnerabilities gauge\n\
             scout_stream_vulnerabilities{streamName=\"prod\",severity=\"HIGH\"} 4\n",
        );
        let fam = snap.family("scout.stream.vulnerabilities").unwrap();
        assert_eq!(&*fam.prometheus_name, "scout_stream_vulnerabilities");
        assert_eq!(
            attrs(&fam.series[0]),
            vec![
                ("org".into(), "acme".into()),
                ("severity".into(), "HIGH".into()),
                ("streamName".into(), "prod".into())
            ]
        );
        assert_eq!(fam.series[0].value, 4.0);
    }

    #[test]
    fn a_scout_label_named_org_is_renamed_in_every_family_and_the_ratio() {
        let snap = snapshot(
            "scout_policy_compliant_images{id=\"p\",org=\"team\",streamName=\"a\"} 1\n\
             scout_policy_evaluated_images{id=\"p\",org=\"team\",streamName=\"a\"} 2\n",
        );
        for name in ["scout.policy.compliant.images", COMPLIANCE_RATIO] {
            let keys: Vec<String> =
                attrs(&snap.family(name).unwrap().series[0]).into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["exported_org", "id", "org", "streamName"], "{name}");
        }
    }

    #[test]
    fn ratio_is_compliant_over_evaluated_and_absent_at_zero() {
        let snap = snapshot(
            "scout_policy_compliant_images{id=\"p1\",displayName=\"P\",streamName=\"a\"} 3\n\
             scout_policy_compliant_images{id=\"p1\",displayName=\"P\",streamName=\"b\"} 0\n\
             scout_policy_evaluated_images{id=\"p1\",displayName=\"P\",streamName=\"a\"} 4\n\
             scout_policy_evaluated_images{id=\"p1\",displayName=\"P\",streamName=\"b\"} 0\n",
        );
        let ratio = snap.family(COMPLIANCE_RATIO).unwrap();
        assert_eq!(ratio.series.len(), 1);
        assert_eq!(ratio.series[0].value, 0.75);
        assert_eq!(attrs(&ratio.series[0])[3], ("streamName".into(), "a".into()));
    }

    #[test]
    fn unknown_scout_gauges_pass_through_and_others_are_left_out() {
        let snap = snapshot(
            "# TYPE scout_new_thing gauge\nscout_new_thing{k=\"v\"} 1\n\
             scout_untyped 2\n\
             # TYPE scout_requests counter\nscout_requests 3\n\
             go_goroutines 7\n\
             scout_exporter_up 1\n",
        );
        assert!(snap.family("scout.new.thing").is_some());
        assert!(snap.family("scout.untyped").is_some());
        assert!(snap.family("scout.requests").is_none());
        assert_eq!(snap.skipped.unsupported_families, vec!["scout_requests (counter)"]);
        assert_eq!(snap.skipped.reserved_families, vec!["scout_exporter_up"]);
        assert_eq!(snap.skipped.foreign_families, 1);
        // non_finite, duplicate, over_limit, unsupported_type, reserved_name,
        // outside_namespace
        assert_eq!(snap.skipped.series(), [0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn a_family_built_on_several_threads_keeps_payload_order_and_finds_repeats_across_parts() {
        let n = 2 * PARALLEL_FROM;
        let mut body: String =
            (0..n).map(|i| format!("scout_x{{stream=\"s{i:05}\"}} {i}\n")).collect();
        // Repeats of the first and a middle series, at the far end of the
        // payload, and labels written in another order: the first counts.
        body.push_str("scout_x{stream=\"s00000\"} -1\n");
        body.push_str(&format!("scout_x{{stream=\"s{:05}\"}} -1\n", n / 2));
        body.push_str("scout_x{b=\"2\",a=\"1\"} 7\nscout_x{a=\"1\",b=\"2\"} -1\n");
        body.push_str("scout_x{stream=\"nan\"} NaN\n");
        let snap = snapshot(&body);
        let values: Vec<f64> =
            snap.family("scout.x").unwrap().series.iter().map(|s| s.value).collect();
        let want: Vec<f64> = (0..n).map(|i| i as f64).chain([7.0]).collect();
        assert_eq!(values, want);
        assert_eq!((snap.skipped.duplicates, snap.skipped.non_finite), (3, 1));
    }

    #[test]
    fn duplicates_keep_the_first_and_non_finite_values_are_counted() {
        let snap = snapshot("scout_x{a=\"1\"} 1\nscout_x{a=\"1\"} 2\nscout_x{a=\"2\"} NaN\n");
        let fam = snap.family("scout.x").unwrap();
        assert_eq!(fam.series.len(), 1);
        assert_eq!(fam.series[0].value, 1.0);
        assert_eq!(snap.skipped.duplicates, 1);
        assert_eq!(snap.skipped.non_finite, 1);
        assert_eq!(snap.skipped.series(), [1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn a_scout_label_named_org_cannot_hide_ours() {
        let snap = snapshot("scout_x{org=\"other\"} 1\n");
        let a = attrs(&snap.family("scout.x").unwrap().series[0]);
        assert_eq!(a, vec![("exported_org".into(), "other".into()), ("org".into(), "acme".into())]);
    }

    #[test]
    fn failure_keeps_the_snapshot_and_counts_the_reason() {
        let store = Store::new(&["acme"]);
        assert_eq!(store.not_ready().len(), 1);
        store.publish(0, snapshot("scout_x 1\n"));
        let g = store.generation();
        store.record_failure(0, Reason::Unauthorized, "HTTP 401");
        let org = store.org(0);
        assert!(!org.is_up());
        assert!(org.snapshot().is_some());
        assert_eq!(org.errors(Reason::Unauthorized), 1);
        assert!(store.generation() > g);
        assert!(store.not_ready().is_empty());
    }

    #[test]
    fn otel_names_are_dotted() {
        assert_eq!(otel_name("scout_stream_vulnerabilities"), "scout.stream.vulnerabilities");
        assert_eq!(otel_name("scout_a:b"), "scout.a.b");
    }
}
