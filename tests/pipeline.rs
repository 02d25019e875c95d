//! End-to-end tests of the pipeline: the exporter binary between a fake
//! Scout and a gRPC OTLP receiver built from the official protobuf
//! definitions, scraped over HTTP as Prometheus would.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use scout_exporter::fake::{FakeScout, OPENMETRICS_TEXT, PROMETHEUS_TEXT};

const STREAMS: [&str; 3] = ["latest-indexed", "production", "staging"];
const POLICIES: [(&str, &str); 2] = [
    ("no-fixable-critical-high", "No fixable critical or high vulnerabilities"),
    ("default-non-root-user", "Default non-root user"),
];
const SCOUT_FAMILIES: [&str; 3] = [
    "scout_stream_vulnerabilities",
    "scout_policy_compliant_images",
    "scout_policy_evaluated_images",
];

struct Setup {
    fake: FakeScout,
    sink: OtlpSink,
    exporter: Exporter,
}

async fn setup(orgs: &[&str], refresh: &str, prepare: impl FnOnce(&FakeScout)) -> Setup {
    setup_with(orgs, refresh, &[("OTEL_METRIC_EXPORT_INTERVAL", "100")], prepare).await
}

/// Like [`setup`], with extra environment for the exporter.
async fn setup_with(
    orgs: &[&str],
    refresh: &str,
    env: &[(&str, &str)],
    prepare: impl FnOnce(&FakeScout),
) -> Setup {
    let fake = FakeScout::start(TOKEN).await.unwrap();
    prepare(&fake);
    let (sink, addr) = OtlpSink::start().await;
    let endpoint = format!("http://{addr}");
    let url = fake.url();
    let mut args = vec!["--scout-url", url.as_str(), "--refresh-interval", refresh];
    for org in orgs {
        args.extend(["--org", org]);
    }
    let mut vars =
        vec![("DOCKER_SCOUT_API_KEY", TOKEN), ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)];
    vars.extend_from_slice(env);
    let exporter = Exporter::start(&args, &vars);
    Setup { fake, sink, exporter }
}

/// What the exporter should serve for `body` of `org`: Scout's series with
/// `org` added.
fn expected(body: &str, org: &str) -> BTreeMap<SeriesKey, f64> {
    series_of_text(body)
        .into_iter()
        .map(|((name, mut labels), v)| {
            labels.insert("org".to_string(), org.to_string());
            ((name, labels), v)
        })
        .collect()
}

fn scout_only(series: &BTreeMap<SeriesKey, f64>) -> BTreeMap<SeriesKey, f64> {
    series
        .iter()
        .filter(|((n, _), _)| SCOUT_FAMILIES.contains(&n.as_str()))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// OTLP points renamed to their Prometheus names, Scout families only.
fn otlp_scout_only(points: &BTreeMap<SeriesKey, f64>) -> BTreeMap<SeriesKey, f64> {
    points
        .iter()
        .map(|((n, l), v)| ((prom_name(n), l.clone()), *v))
        .filter(|((n, _), _)| SCOUT_FAMILIES.contains(&n.as_str()))
        .collect()
}

async fn wait_for_data(s: &Setup, what: &str) -> BTreeMap<SeriesKey, f64> {
    eventually(Duration::from_secs(15), what, || async {
        let series = scrape(&s.exporter).await;
        series.keys().any(|(n, _)| n == "scout_stream_vulnerabilities").then_some(series)
    })
    .await
}

async fn wait_for_otlp(s: &Setup) -> BTreeMap<SeriesKey, f64> {
    eventually(Duration::from_secs(15), "an OTLP export with Scout data", || async {
        s.sink.latest().filter(|p| p.keys().any(|(n, _)| n == "scout.stream.vulnerabilities"))
    })
    .await
}

#[tokio::test]
async fn every_series_reaches_both_outputs_with_equal_values() {
    let body = payload(&STREAMS, &POLICIES, 7);
    let s = setup(&["acme"], "1h", |f| f.set_payload("acme", body.clone())).await;
    let want = expected(&body, "acme");
    assert_eq!(want.len(), 15 + 12);

    let scraped = wait_for_data(&s, "Scout series on /metrics").await;
    assert_eq!(scout_only(&scraped), want);
    let pushed = wait_for_otlp(&s).await;
    assert_eq!(otlp_scout_only(&pushed), want);

    // Label keys are Scout's own, plus org, in both outputs.
    for (name, labels) in want.keys() {
        let keys: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
        let expected_keys: BTreeSet<&str> = if name == "scout_stream_vulnerabilities" {
            ["org", "severity", "streamName"].into()
        } else {
            ["displayName", "id", "org", "streamName"].into()
        };
        assert_eq!(keys, expected_keys);
    }

    // The ratio is compliant / evaluated, in both outputs.
    let ratio: BTreeMap<_, _> = only(&scraped, "scout_policy_compliance_ratio");
    assert_eq!(ratio.len(), 6);
    for ((_, labels), value) in &ratio {
        let c = want[&("scout_policy_compliant_images".to_string(), labels.clone())];
        let e = want[&("scout_policy_evaluated_images".to_string(), labels.clone())];
        assert_eq!(*value, c / e);
        assert_eq!(pushed[&("scout.policy.compliance".to_string(), labels.clone())], c / e);
    }
    assert_eq!(
        scraped[&("scout_exporter_up".to_string(), [("org".into(), "acme".into())].into())],
        1.0
    );
}

#[tokio::test]
async fn interleaved_scrapes_and_pushes_never_show_a_removed_series() {
    // Scout's answer alternates between two stream sets on every request.
    let a = payload(&["s1", "s2", "s3"], &POLICIES, 1);
    let b = payload(&["s1", "s2", "s4"], &POLICIES, 2);
    let requests = Arc::new(AtomicU64::new(0));
    let s = setup(&["acme"], "150ms", |f| {
        let (a, b, n) = (Bytes::from(a.clone()), Bytes::from(b.clone()), requests.clone());
        f.set_payload_fn(
            "acme",
            Arc::new(move || {
                let body =
                    if n.fetch_add(1, Ordering::SeqCst) % 2 == 0 { a.clone() } else { b.clone() };
                (PROMETHEUS_TEXT.to_string(), body)
            }),
        );
    })
    .await;
    wait_for_data(&s, "first data").await;
    let allowed: [BTreeSet<String>; 2] =
        [["s1", "s2", "s3"].map(String::from).into(), ["s1", "s2", "s4"].map(String::from).into()];

    let started = Instant::now();
    let mut seen_sets = BTreeSet::new();
    let mut scrapes = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let series = scrape(&s.exporter).await;
        for metric in ["scout_stream_vulnerabilities", "scout_policy_compliance_ratio"] {
            let set = streams(&series, metric);
            assert!(allowed.contains(&set), "scrape {scrapes}: {metric} shows streams {set:?}");
            seen_sets.insert(set);
        }
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert_eq!(seen_sets.len(), 2, "both payloads should have been served");

    let pushes = s.sink.points_since(started);
    assert!(pushes.len() >= 10, "only {} OTLP requests", pushes.len());
    for (i, points) in pushes.iter().enumerate() {
        for metric in ["scout.stream.vulnerabilities", "scout.policy.compliance"] {
            let set = streams(points, metric);
            assert!(allowed.contains(&set), "OTLP request {i}: {metric} shows streams {set:?}");
        }
    }

    // Now a stream leaves for good: gone from both outputs after the next
    // refresh.
    s.fake.set_payload("acme", payload(&["s1", "s2"], &POLICIES, 3));
    let before = s.fake.requests_for("acme");
    eventually(Duration::from_secs(10), "a refresh of the new payload", || async {
        (s.fake.requests_for("acme") >= before + 2).then_some(())
    })
    .await;
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let series = scrape(&s.exporter).await;
    let two: BTreeSet<String> = ["s1", "s2"].map(String::from).into();
    assert_eq!(streams(&series, "scout_stream_vulnerabilities"), two);
    let late: Vec<_> = s.sink.points_since(settled + Duration::from_millis(250));
    assert!(!late.is_empty());
    for points in late {
        assert_eq!(streams(&points, "scout.stream.vulnerabilities"), two);
    }
}

#[tokio::test]
async fn unusual_label_values_round_trip_exactly_through_both_outputs() {
    let odd = ["quote\"d", "back\\slash", "new\nline", "ünïcødé 日本 🚀", "trailing\\"];
    let policies = [("id,with=chars}", "Name \"quoted\" \\ and\nnewline é")];
    let body = payload(&odd, &policies, 11);
    let s = setup(&["acme"], "1h", |f| f.set_payload("acme", body.clone())).await;
    let want = expected(&body, "acme");

    let scraped = wait_for_data(&s, "Scout series").await;
    assert_eq!(scout_only(&scraped), want);
    let got: BTreeSet<String> = streams(&scraped, "scout_stream_vulnerabilities");
    assert_eq!(got, odd.iter().map(|s| s.to_string()).collect());

    let pushed = wait_for_otlp(&s).await;
    assert_eq!(otlp_scout_only(&pushed), want);
}

#[tokio::test]
async fn openmetrics_input_is_served_like_prometheus_text() {
    let body = payload(&STREAMS, &POLICIES, 5);
    let om = format!("{body}# EOF\n");
    let s =
        setup(&["acme"], "1h", |f| f.set_payload_as("acme", OPENMETRICS_TEXT, om.clone())).await;
    let scraped = wait_for_data(&s, "Scout series from OpenMetrics").await;
    assert_eq!(scout_only(&scraped), expected(&body, "acme"));
    let pushed = wait_for_otlp(&s).await;
    assert_eq!(otlp_scout_only(&pushed), expected(&body, "acme"));
    // Both formats were asked for.
    let accept = s.fake.seen()[0].headers.iter().find(|(k, _)| k == "accept").cloned().unwrap().1;
    assert!(
        accept.contains("application/openmetrics-text") && accept.contains("text/plain"),
        "{accept}"
    );
}

#[tokio::test]
async fn unauthorized_sets_up_to_zero_and_keeps_the_last_good_series() {
    let body = payload(&STREAMS, &POLICIES, 9);
    let s = setup(&["acme"], "200ms", |f| f.set_payload("acme", body.clone())).await;
    let good = scout_only(&wait_for_data(&s, "first data").await);

    s.fake.set_token("a-different-token");
    let org: BTreeMap<String, String> = [("org".into(), "acme".into())].into();
    let unauthorized: BTreeMap<String, String> =
        [("org".into(), "acme".into()), ("reason".into(), "unauthorized".into())].into();
    let series = eventually(Duration::from_secs(10), "up=0 after a 401", || async {
        let series = scrape(&s.exporter).await;
        let up = series.get(&("scout_exporter_up".to_string(), org.clone())).copied();
        (up == Some(0.0)).then_some(series)
    })
    .await;
    assert!(
        series[&("scout_exporter_refresh_errors_total".to_string(), unauthorized.clone())] >= 1.0
    );
    assert_eq!(scout_only(&series), good, "the last good series must stay");

    let pushed = eventually(Duration::from_secs(10), "up=0 over OTLP", || async {
        s.sink
            .latest()
            .filter(|p| p.get(&("scout.exporter.up".to_string(), org.clone())) == Some(&0.0))
    })
    .await;
    assert_eq!(otlp_scout_only(&pushed), good);
    assert!(pushed[&("scout.exporter.refresh.errors".to_string(), unauthorized)] >= 1.0);
    let log = s.exporter.log();
    assert!(log.contains("reason=unauthorized") && log.contains("org=acme"), "{log}");
    assert!(!log.contains(TOKEN), "the token leaked into the log");
}

#[tokio::test]
async fn two_organizations_side_by_side_one_failing() {
    let body = payload(&STREAMS, &POLICIES, 3);
    // `ghost` has no payload: the fake answers 404, as Scout does for an
    // organization that is not enrolled.
    let s = setup(&["acme", "ghost"], "100ms", |f| f.set_payload("acme", body.clone())).await;
    let series = eventually(Duration::from_secs(10), "ghost counted as not_found", || async {
        let series = scrape(&s.exporter).await;
        let key = (
            "scout_exporter_refresh_errors_total".to_string(),
            [("org".into(), "ghost".into()), ("reason".into(), "not_found".into())].into(),
        );
        (series.get(&key).copied().unwrap_or(0.0) >= 2.0).then_some(series)
    })
    .await;
    assert_eq!(scout_only(&series), expected(&body, "acme"));
    let up =
        |org: &str| series[&("scout_exporter_up".to_string(), [("org".into(), org.into())].into())];
    assert_eq!(up("acme"), 1.0);
    assert_eq!(up("ghost"), 0.0);

    // acme keeps refreshing on its own schedule while ghost fails.
    let before = s.fake.requests_for("acme");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(s.fake.requests_for("acme") >= before + 3);

    let (status, text) = get(&s.exporter.url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(text.contains("ghost") && !text.contains("acme"), "{text}");
}

#[tokio::test]
async fn demo_serves_data_within_five_seconds() {
    let started = Instant::now();
    let exporter = Exporter::start(&["--demo"], &[("OTEL_METRICS_EXPORTER", "prometheus")]);
    let series = eventually(Duration::from_secs(5), "demo data", || async {
        let series = scrape(&exporter).await;
        series
            .keys()
            .any(|(n, l)| n == "scout_stream_vulnerabilities" && l["org"] == "demo")
            .then_some(series)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(streams(&series, "scout_stream_vulnerabilities"), STREAMS.map(String::from).into());
    let severities: BTreeSet<_> = series
        .keys()
        .filter(|(n, _)| n == "scout_stream_vulnerabilities")
        .map(|(_, l)| l["severity"].clone())
        .collect();
    assert_eq!(severities.len(), 5);
    let (status, _) = get(&exporter.url("/readyz")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_organization_is_split_into_requests_a_default_receiver_accepts() {
    // 8,000 streams × 5 severities = 40,000 series: one request would be
    // about 5 MB, over the 4 MiB a default gRPC receiver (like this one,
    // built with tonic's defaults) accepts.
    let names: Vec<String> = (0..8000).map(|i| format!("team-{i:05}/service")).collect();
    let streams: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = payload(&streams, &[], 17);
    // Kept whole: dropping it stops the fake and the exporter.
    let rig = setup_with(&["acme"], "1h", &[("OTEL_METRIC_EXPORT_INTERVAL", "1000")], |f| {
        f.set_payload("acme", body.clone())
    })
    .await;
    let (sink, exporter) = (&rig.sink, &rig.exporter);
    let want = expected(&body, "acme");
    let scraped = eventually(Duration::from_secs(60), "40,000 series on /metrics", || async {
        let s = scrape(exporter).await;
        (scout_only(&s).len() == want.len()).then_some(s)
    })
    .await;
    assert_eq!(scout_only(&scraped), want);
    // Gathered from several SDK pipelines, /metrics still has one family
    // per name and each series once: a map of series would hide repeats.
    let (_, text) = get(&exporter.url("/metrics")).await;
    let samples = text.lines().filter(|l| l.starts_with("scout_stream_vulnerabilities{")).count();
    assert_eq!(samples, want.len(), "each series exactly once");
    assert_eq!(text.matches("# TYPE scout_stream_vulnerabilities ").count(), 1);
    assert_eq!(text.matches("# TYPE scout_exporter_up ").count(), 1);

    let union = eventually(Duration::from_secs(60), "every series over OTLP", || async {
        let mut union = BTreeMap::new();
        for points in sink.points_since(Instant::now() - Duration::from_secs(3)) {
            union.extend(otlp_scout_only(&points));
        }
        (union.len() == want.len()).then_some(union)
    })
    .await;
    assert_eq!(union, want);
    let largest = {
        let requests = sink.requests.lock().unwrap();
        requests.iter().map(|(_, r)| prost::Message::encoded_len(r)).max().unwrap()
    };
    assert!(largest < 4 * 1024 * 1024, "a request of {largest} bytes");
    let log = exporter.log();
    for output in ["output=\"prometheus\"", "output=\"otlp\""] {
        assert!(
            log.contains("data split over more SDK pipelines") && log.contains(output),
            "{log}"
        );
    }
    let s = scrape(exporter).await;
    let key = (
        "scout_exporter_export_errors_total".to_string(),
        [("exporter".into(), "otlp".into())].into(),
    );
    assert_eq!(s[&key], 0.0, "no export may have been refused");
}

#[tokio::test]
async fn series_beyond_the_per_metric_limit_are_left_out_and_logged() {
    let body = payload(&STREAMS, &POLICIES, 5);
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload("acme", body.clone());
    let exporter = Exporter::start(
        &["--scout-url", &fake.url(), "--org", "acme", "--max-series-per-metric", "4"],
        &[("DOCKER_SCOUT_API_KEY", TOKEN), ("OTEL_METRICS_EXPORTER", "prometheus")],
    );
    let scraped = eventually(Duration::from_secs(15), "capped data", || async {
        let s = scrape(&exporter).await;
        s.keys().any(|(n, _)| n == "scout_stream_vulnerabilities").then_some(s)
    })
    .await;
    // Scout's first four series of each family, in Scout's order.
    let want: BTreeMap<SeriesKey, f64> = SCOUT_FAMILIES
        .iter()
        .flat_map(|family| {
            let prefix = format!("{family}{{");
            let first: String = body
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .take(4)
                .map(|l| format!("{l}\n"))
                .collect();
            expected(&first, "acme")
        })
        .collect();
    assert_eq!(scout_only(&scraped), want);
    let log = exporter.log();
    assert!(log.contains("more series than --max-series-per-metric allows"), "{log}");
    assert!(log.contains("left_out=11") && log.contains("left_out=2"), "{log}");
    // The compliance ratio is cut too: one series per evaluated series, as
    // every evaluated count in this payload is above zero.
    let cut: usize = SCOUT_FAMILIES
        .iter()
        .chain(&["scout_policy_evaluated_images"])
        .map(|family| {
            let prefix = format!("{family}{{");
            body.lines().filter(|l| l.starts_with(&prefix)).count().saturating_sub(4)
        })
        .sum();
    assert_eq!(skipped(&scraped, "acme", "over_limit"), Some(cut as f64));
}

/// `scout_exporter_series_skipped{org, reason}` in `series`, if present.
fn skipped(series: &BTreeMap<SeriesKey, f64>, org: &str, reason: &str) -> Option<f64> {
    let labels = [("org", org), ("reason", reason)].map(|(k, v)| (k.to_string(), v.to_string()));
    series.get(&("scout_exporter_series_skipped".to_string(), labels.into())).copied()
}

#[tokio::test]
async fn series_left_out_of_scouts_payload_are_counted_by_reason_in_both_outputs() {
    let body = "scout_stream_vulnerabilities{streamName=\"prod\",severity=\"HIGH\"} 3\n\
                scout_stream_vulnerabilities{streamName=\"prod\",severity=\"HIGH\"} 4\n\
                scout_stream_vulnerabilities{streamName=\"prod\",severity=\"LOW\"} NaN\n\
                scout_stream_vulnerabilities{streamName=\"prod\",severity=\"MEDIUM\"} +Inf\n\
                # TYPE scout_scans counter\n\
                scout_scans{streamName=\"prod\"} 12\n\
                scout_scans{streamName=\"dev\"} 2\n\
                scout_exporter_up 1\n\
                go_goroutines 9\n";
    let s = setup(&["acme"], "1h", |f| f.set_payload("acme", body.to_string())).await;
    let scraped = wait_for_data(&s, "the Scout series that could be kept").await;
    let want = [
        ("non_finite", 2.0),
        ("duplicate", 1.0),
        ("over_limit", 0.0),
        ("unsupported_type", 2.0),
        ("reserved_name", 1.0),
        ("outside_namespace", 1.0),
    ];
    for (reason, count) in want {
        assert_eq!(skipped(&scraped, "acme", reason), Some(count), "{reason} on /metrics");
    }
    let vulns = only(&scraped, "scout_stream_vulnerabilities");
    assert_eq!(vulns.into_values().collect::<Vec<_>>(), [3.0], "the first of a repeated series");

    let pushed = eventually(Duration::from_secs(15), "the skipped series pushed", || async {
        s.sink.latest().filter(|p| p.keys().any(|(n, _)| n == "scout.exporter.series.skipped"))
    })
    .await;
    let pushed: BTreeMap<SeriesKey, f64> =
        pushed.into_iter().map(|((n, l), v)| ((prom_name(&n), l), v)).collect();
    for (reason, count) in want {
        assert_eq!(skipped(&pushed, "acme", reason), Some(count), "{reason} over OTLP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_pushes_arrive_whole() {
    let body = payload(&STREAMS, &POLICIES, 21);
    let env = [("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"), ("OTEL_METRIC_EXPORT_INTERVAL", "200")];
    let rig = setup_with(&["acme"], "1h", &env, |f| f.set_payload("acme", body.clone())).await;
    let sink = &rig.sink;
    let pushed = eventually(Duration::from_secs(15), "a gzip push with Scout data", || async {
        sink.latest().filter(|p| p.keys().any(|(n, _)| n == "scout.stream.vulnerabilities"))
    })
    .await;
    assert_eq!(otlp_scout_only(&pushed), expected(&body, "acme"));
}
