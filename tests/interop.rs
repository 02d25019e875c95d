//! Interop tests: the exporter binary against real programs that nobody
//! here wrote, each reading its output with its own code. promtool lints
//! `/metrics`; a real Prometheus scrapes it and answers PromQL over it, the
//! Grafana dashboards' expressions included; oteltest's otelsink receives
//! the OTLP gRPC export; and a receiver built on the opentelemetry-proto
//! Python package decodes the OTLP http/protobuf export.
//!
//! Each test starts its own processes on loopback ports, with files in
//! temporary directories, and stops them when it ends. A missing program
//! skips the test with a note, and fails it under CI (`CI=true`).
//! `tests/common/peers.rs` starts and reads the programs; the assertions are
//! here.

mod common;
#[path = "common/peers.rs"]
mod peers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use peers::{OtlpMetric, Prometheus, PySink, program, python_with, require};
use scout_exporter::fake::FakeScout;
use serde_json::Value;

const ORG: &str = "acme";
/// Stream names as users may write them: characters Prometheus text must
/// escape (quote, backslash, newline), characters of its syntax (`{`, `,`,
/// `=`), and text far from ASCII.
const STREAMS: [&str; 6] = [
    "production",
    "say \"hi\"",
    "C:\\builds\\nightly\\",
    "line one\nline two",
    "team={a,b}",
    "café 日本 🚀",
];
const POLICIES: [(&str, &str); 2] = [
    ("no-fixable-critical-high", "No fixable critical or high vulnerabilities"),
    ("ünïcode\\id", "Quotes \"here\", a backslash \\ and\na newline ✓"),
];
const SCOUT_FAMILIES: [&str; 3] = [
    "scout_stream_vulnerabilities",
    "scout_policy_compliant_images",
    "scout_policy_evaluated_images",
];
/// What promtool says of a label name such as Scout's `streamName`, which
/// the exporter keeps so existing queries work.
const CAMEL_CASE: &str = "label names should be written in 'snake_case' not 'camelCase'";

/// The exporter between a fake Scout serving `payload()` over the odd
/// names above and whatever `env` points it at.
struct OnFakeScout {
    _fake: FakeScout,
    exporter: Exporter,
    /// Scout's series with `org` added: what every output must carry.
    want: BTreeMap<SeriesKey, f64>,
}

async fn on_fake_scout(env: &[(&str, &str)]) -> OnFakeScout {
    let body = payload(&STREAMS, &POLICIES, 11);
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload(ORG, body.clone());
    let url = fake.url();
    let mut all_env = vec![("DOCKER_SCOUT_API_KEY", TOKEN)];
    all_env.extend_from_slice(env);
    let exporter =
        Exporter::start(&["--scout-url", &url, "--org", ORG, "--refresh-interval", "1h"], &all_env);

    let want: BTreeMap<SeriesKey, f64> = series_of_text(&body)
        .into_iter()
        .map(|((name, mut labels), v)| {
            labels.insert("org".to_string(), ORG.to_string());
            ((name, labels), v)
        })
        .collect();
    // The expectation comes from the project's parser; that it unescaped the
    // names back to the constants above keeps it honest.
    let streams = streams(&want, "scout_stream_vulnerabilities");
    assert_eq!(streams, STREAMS.iter().map(|s| s.to_string()).collect());
    let names: BTreeSet<String> =
        want.keys().filter_map(|(_, l)| l.get("displayName")).cloned().collect();
    assert_eq!(names, POLICIES.iter().map(|(_, n)| n.to_string()).collect());
    assert_eq!(want.len(), STREAMS.len() * (5 + 2 * POLICIES.len()));
    OnFakeScout { _fake: fake, exporter, want }
}

/// The `/metrics` body once the first refresh has landed.
async fn body_with_scout_data(exporter: &Exporter) -> String {
    eventually(Duration::from_secs(15), "Scout series on /metrics", || async {
        let (status, body) = get(&exporter.url("/metrics")).await;
        (status == 200 && body.contains("scout_stream_vulnerabilities{")).then_some(body)
    })
    .await
}

/// Only the Scout families of `series`, under their Prometheus names.
fn scout_series(series: &BTreeMap<SeriesKey, f64>) -> BTreeMap<SeriesKey, f64> {
    series
        .iter()
        .map(|((n, l), v)| ((prom_name(n), l.clone()), *v))
        .filter(|((n, _), _)| SCOUT_FAMILIES.contains(&n.as_str()))
        .collect()
}

// promtool

/// Asserts that promtool finds no error in `body` and no lint problem but
/// one camelCase warning for each camelCase label name of each series.
fn assert_only_camel_case_warnings(promtool: &Path, what: &str, body: &str) {
    let lint = peers::promtool_check_metrics(promtool, body);
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for (name, labels) in series_of_text(body).keys() {
        let camel = labels.keys().filter(|k| k.chars().any(|c| c.is_ascii_uppercase())).count();
        if camel > 0 {
            *want.entry(name.clone()).or_default() += camel;
        }
    }
    assert!(!want.is_empty(), "{what}: Scout's camelCase labels are missing:\n{body}");

    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let mut other = Vec::new();
    for line in lint.problems.lines().filter(|l| !l.trim().is_empty()) {
        match line.split_once(' ') {
            Some((metric, CAMEL_CASE)) => *got.entry(metric.to_string()).or_default() += 1,
            _ => other.push(line),
        }
    }
    assert!(
        other.is_empty(),
        "promtool check metrics on {what} reported more than camelCase label names:\n{}\n\
         -- /metrics --\n{body}",
        other.join("\n")
    );
    assert_eq!(got, want, "{what}: camelCase warnings per metric, promtool vs the series");
    // 3 is promtool's code for lint problems alone; a parse error is 1.
    assert_eq!(lint.code, Some(3), "{what}: promtool exit code\n{}", lint.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_but_camel_case_label_names_in_demo_and_odd_label_values() {
    let Some(promtool) = require(program("promtool")) else { return };

    let demo = Exporter::start(&["--demo"], &[("OTEL_METRICS_EXPORTER", "prometheus")]);
    let body = body_with_scout_data(&demo).await;
    assert_only_camel_case_warnings(&promtool, "--demo", &body);

    let s = on_fake_scout(&[("OTEL_METRICS_EXPORTER", "prometheus")]).await;
    let body = body_with_scout_data(&s.exporter).await;
    assert_eq!(scout_series(&series_of_text(&body)), s.want);
    assert_only_camel_case_warnings(&promtool, "odd label values", &body);
}

// Prometheus

/// A sample's labels without those Prometheus adds for the target.
fn without_target_labels(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.remove("job");
    labels.remove("instance");
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stores_every_scout_series_with_scouts_value_and_the_org_label() {
    let Some(binary) = require(program("prometheus")) else { return };
    let s = on_fake_scout(&[("OTEL_METRICS_EXPORTER", "prometheus")]).await;
    body_with_scout_data(&s.exporter).await;
    let prometheus = Prometheus::start(&binary, &[("scout", s.exporter.port)]).await;
    prometheus.wait_for_scrapes("scout", 1).await;

    for family in SCOUT_FAMILIES {
        let got: BTreeMap<SeriesKey, f64> = prometheus
            .query(family)
            .await
            .unwrap_or_else(|e| panic!("query {family}: {e}"))
            .into_iter()
            .map(|(labels, v)| {
                let mut labels = without_target_labels(labels);
                let name = labels.remove("__name__").unwrap_or_default();
                ((name, labels), v)
            })
            .collect();
        assert_eq!(got, only(&s.want, family), "{family}: Prometheus vs Scout's payload");
    }

    let up = prometheus.query("scout_exporter_up").await.unwrap();
    let up: Vec<_> = up.into_iter().map(|(l, v)| (without_target_labels(l), v)).collect();
    let labels = BTreeMap::from([
        ("__name__".to_string(), "scout_exporter_up".to_string()),
        ("org".to_string(), ORG.to_string()),
    ]);
    assert_eq!(up, vec![(labels, 1.0)]);
}

// OTLP

/// The exporter on the fake Scout, pushing OTLP to `sink` every 500 ms,
/// with `extra` in its environment.
async fn on_fake_scout_pushing_to(sink: &PySink, extra: &[(&str, &str)]) -> OnFakeScout {
    let endpoint = sink.endpoint();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
    ];
    env.extend_from_slice(extra);
    on_fake_scout(&env).await
}

/// Waits for a request with Scout data and asserts it carries every Scout
/// series, under its dotted name, with Scout's attributes and values, and
/// the compliance ratio of each policy in each stream.
async fn assert_every_scout_series_arrives(sink: &PySink, s: &OnFakeScout) -> Vec<OtlpMetric> {
    let metrics = sink
        .wait_for(
            "Scout data",
            || s.exporter.log(),
            |m| m.iter().any(|m| m.name == "scout.stream.vulnerabilities"),
        )
        .await;
    for name in [
        "scout.stream.vulnerabilities",
        "scout.policy.compliant.images",
        "scout.policy.evaluated.images",
    ] {
        let m = metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(m.kind, "gauge", "{name}");
    }
    let points = peers::points(&metrics);
    assert_eq!(scout_series(&points), s.want, "OTLP points vs Scout's payload");

    for ((name, labels), compliant) in only(&s.want, "scout_policy_compliant_images") {
        let evaluated = s.want[&("scout_policy_evaluated_images".to_string(), labels.clone())];
        let ratio = points.get(&("scout.policy.compliance".to_string(), labels.clone()));
        assert_eq!(ratio, Some(&(compliant / evaluated)), "{name} {labels:?}");
    }
    metrics
}

/// Asserts the exporter's own counters arrived as monotonic sums with
/// `temporality`.
fn assert_counters(metrics: &[OtlpMetric], temporality: &str) {
    for name in ["scout.exporter.refresh.errors", "scout.exporter.export.errors"] {
        let m = metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(m.kind, "sum", "{name}");
        assert_eq!(m.temporality.as_deref(), Some(temporality), "{name}");
        assert!(m.monotonic, "{name} is not monotonic");
        assert!(!m.points.is_empty(), "{name} has no points");
    }
}

fn otelsink_python() -> Option<std::path::PathBuf> {
    require(python_with("oteltest", &["oteltest.sink", "google.protobuf.json_format"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otelsink_receives_every_scout_series_over_grpc_with_scouts_values() {
    let Some(python) = otelsink_python() else { return };
    let sink = PySink::otelsink(&python).await;
    let s = on_fake_scout_pushing_to(&sink, &[]).await;
    let metrics = assert_every_scout_series_arrives(&sink, &s).await;
    // Cumulative is the default, which the delta test below changes.
    assert_counters(&metrics, "AGGREGATION_TEMPORALITY_CUMULATIVE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otelsink_receives_the_exporters_counters_as_monotonic_delta_sums_when_delta_is_preferred()
{
    let Some(python) = otelsink_python() else { return };
    let sink = PySink::otelsink(&python).await;
    let delta = [("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")];
    let s = on_fake_scout_pushing_to(&sink, &delta).await;
    let metrics = assert_every_scout_series_arrives(&sink, &s).await;
    assert_counters(&metrics, "AGGREGATION_TEMPORALITY_DELTA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_otlp_http_receiver_decodes_every_scout_series_from_http_protobuf() {
    let Some(python) = require(python_with(
        "opentelemetry-proto",
        &["opentelemetry.proto.collector.metrics.v1.metrics_service_pb2"],
    )) else {
        return;
    };
    let sink = PySink::http(&python).await;
    let s =
        on_fake_scout_pushing_to(&sink, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).await;
    let metrics = assert_every_scout_series_arrives(&sink, &s).await;
    assert_counters(&metrics, "AGGREGATION_TEMPORALITY_CUMULATIVE");
}

// Grafana dashboards

/// A query a dashboard sends to its Prometheus data source.
struct DashboardQuery {
    dashboard: String,
    /// The panel title, or the template variable's name.
    place: String,
    /// The query as written in the dashboard.
    raw: String,
    /// The values of the dashboard's variables.
    vars: BTreeMap<String, String>,
}

/// What Grafana puts in place of its built-in variables, and of each
/// dashboard variable: `.*` for the ones that select label values, as the
/// dashboards' "All" option does.
fn variables(dashboard: &Value) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__interval_ms", "15000"),
        ("__range", "5m"),
        ("__range_s", "300"),
        ("__range_ms", "300000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let Some(name) = v["name"].as_str() else { continue };
        let value = match v["type"].as_str() {
            Some("datasource") => "prometheus".to_string(),
            Some("constant") => v["query"].as_str().unwrap_or_default().to_string(),
            Some("interval") => "1m".to_string(),
            _ => ".*".to_string(),
        };
        vars.insert(name.to_string(), value);
    }
    vars
}

/// Replaces `$name`, `${name}`, `${name:format}` and `[[name]]` with their
/// values; a `$` not followed by a name (a regex anchor) stays. An unknown
/// name is an error.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find(['$', '[']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (name, len) = if let Some(braced) = tail.strip_prefix("${") {
            let end = braced.find('}').ok_or_else(|| format!("unclosed ${{ in {expr}"))?;
            (braced[..end].split(':').next().unwrap_or(""), end + 3)
        } else if let Some((inner, _)) = tail.strip_prefix("[[").and_then(|b| b.split_once("]]")) {
            let name = inner.split(':').next().unwrap_or("");
            if name.chars().all(is_name) { (name, inner.len() + 4) } else { ("", 0) }
        } else if let Some(plain) = tail.strip_prefix('$') {
            let end = plain.find(|c: char| !is_name(c)).unwrap_or(plain.len());
            (&plain[..end], end + 1)
        } else {
            ("", 0)
        };
        if name.is_empty() {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
            continue;
        }
        let value = vars.get(name).ok_or_else(|| format!("unknown variable {name}"))?;
        out.push_str(value);
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

fn collect_panels<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
    for panel in panels.as_array().into_iter().flatten() {
        out.push(panel);
        // Rows hold their panels when collapsed.
        collect_panels(&panel["panels"], out);
    }
}

/// Every Prometheus query of every dashboard: panel targets, and template
/// variables of type query.
fn dashboard_queries() -> Vec<DashboardQuery> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("otel/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let vars = variables(&dashboard);
        let query = |place: String, raw: &str| DashboardQuery {
            dashboard: name.clone(),
            place,
            raw: raw.to_string(),
            vars: vars.clone(),
        };

        for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            if v["type"] != "query" {
                continue;
            }
            let raw = v["definition"]
                .as_str()
                .filter(|d| !d.is_empty())
                .or_else(|| v["query"].as_str())
                .or_else(|| v["query"]["query"].as_str());
            if let Some(raw) = raw {
                out.push(query(format!("variable ${}", v["name"].as_str().unwrap_or("?")), raw));
            }
        }

        let mut panels = Vec::new();
        collect_panels(&dashboard["panels"], &mut panels);
        for row in dashboard["rows"].as_array().into_iter().flatten() {
            collect_panels(&row["panels"], &mut panels);
        }
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(query(format!("panel {title:?}"), expr));
                }
            }
        }
    }
    out
}

/// Runs one dashboard query as Grafana would, failing on an error or on an
/// answer with no data.
async fn run(prometheus: &Prometheus, q: &DashboardQuery) -> Result<(), String> {
    let query = substitute(&q.raw, &q.vars)?;
    let query = query.trim();
    // Grafana's own functions for variable queries, over the HTTP API.
    let empty = if let Some(args) =
        query.strip_prefix("label_values(").and_then(|a| a.strip_suffix(')'))
    {
        let (selector, label) = match args.rsplit_once(',') {
            Some((selector, label)) => (Some(selector.trim()), label.trim()),
            None => (None, args.trim()),
        };
        prometheus.label_values(label, selector).await?.is_empty()
    } else if let Some(expr) = query.strip_prefix("query_result(").and_then(|a| a.strip_suffix(')'))
    {
        prometheus.query(expr).await?.is_empty()
    } else if let Some(regex) = query.strip_prefix("metrics(").and_then(|a| a.strip_suffix(')')) {
        let selector = format!("{{__name__=~{:?}}}", format!(".*{}.*", regex.trim()));
        prometheus.label_values("__name__", Some(&selector)).await?.is_empty()
    } else {
        prometheus.query(query).await?.is_empty()
    };
    if empty { Err(format!("no data for {query}")) } else { Ok(()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_dashboard_query_parses_and_returns_data_from_prometheus_scraping_the_demo() {
    let queries = dashboard_queries();
    assert!(!queries.is_empty(), "no dashboard queries found");
    let Some(binary) = require(program("prometheus")) else { return };
    let demo = Exporter::start(&["--demo"], &[("OTEL_METRICS_EXPORTER", "prometheus")]);
    body_with_scout_data(&demo).await;
    let prometheus = Prometheus::start(&binary, &[("scout-exporter", demo.port)]).await;
    // rate() and increase() need two samples in their window; three leave
    // a margin for a scrape that lands on a window edge.
    prometheus.wait_for_scrapes("scout-exporter", 3).await;

    let mut failures = Vec::new();
    for q in &queries {
        if let Err(why) = run(&prometheus, q).await {
            failures.push(format!("{} {}: {why}\n    {}", q.dashboard, q.place, q.raw));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries failed against the demo:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
}

#[test]
fn grafana_variables_are_substituted_and_regex_anchors_kept() {
    let vars: BTreeMap<String, String> =
        [("org", ".*"), ("__range", "5m"), ("__rate_interval", "1m"), ("datasource", "prometheus")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let got = substitute(
        r#"rate(x{org=~"$org", a=~"b$", c=~"${org:regex}"}[$__rate_interval]) offset [[__range]]"#,
        &vars,
    );
    assert_eq!(got.as_deref(), Ok(r#"rate(x{org=~".*", a=~"b$", c=~".*"}[1m]) offset 5m"#),);
    assert_eq!(substitute("x[5m:1m]", &vars).as_deref(), Ok("x[5m:1m]"));
    assert!(substitute("x{a=~\"$nope\"}", &vars).is_err());
}
