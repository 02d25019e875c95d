//! Downstream faults and shutdown: a missing collector, a collector that
//! never answers, and SIGTERM, with and without a hung export.

mod common;

use std::time::{Duration, Instant};

use common::*;
use scout_exporter::fake::FakeScout;

async fn scout() -> FakeScout {
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload("acme", payload(&["prod", "dev"], &[("p1", "Policy one")], 8));
    fake
}

fn export_errors(s: &std::collections::BTreeMap<SeriesKey, f64>) -> f64 {
    let key = (
        "scout_exporter_export_errors_total".to_string(),
        [("exporter".into(), "otlp".into())].into(),
    );
    s.get(&key).copied().unwrap_or(0.0)
}

fn start(fake: &FakeScout, endpoint: &str, extra_env: &[(&str, &str)]) -> Exporter {
    let url = fake.url();
    let mut env = vec![
        ("DOCKER_SCOUT_API_KEY", TOKEN),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ];
    env.extend_from_slice(extra_env);
    Exporter::start(&["--org", "acme", "--scout-url", &url, "--refresh-interval", "1h"], &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_collector_leaves_metrics_alone_and_data_flows_once_it_appears() {
    let fake = scout().await;
    let addr = free_addr();
    let exporter = start(&fake, &format!("http://{addr}"), &[]);

    let s = eventually(Duration::from_secs(10), "failed exports counted", || async {
        let s = scrape(&exporter).await;
        (export_errors(&s) >= 3.0).then_some(s)
    })
    .await;
    assert!(
        s.keys().any(|(n, _)| n == "scout_stream_vulnerabilities"),
        "/metrics must be unaffected"
    );
    let rss_early = exporter.rss_kib();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counted = export_errors(&s);
    let s = scrape(&exporter).await;
    assert!(export_errors(&s) > counted, "failed exports must go on being counted");
    let rss_late = exporter.rss_kib();
    assert!(
        rss_late < rss_early + 4 * 1024,
        "memory grew from {rss_early} KiB to {rss_late} KiB while exports failed"
    );
    let warnings = exporter.log().lines().filter(|l| l.contains("OTLP export failed")).count();
    assert_eq!(warnings, 1, "repeated export failures must be rate-limited:\n{}", exporter.log());

    // A collector appears on the same address: data flows within about one
    // interval (the gRPC channel reconnects with backoff; allow a few).
    let (sink, _) = OtlpSink::start_on(addr).await;
    let appeared = Instant::now();
    eventually(Duration::from_secs(10), "data at the new collector", || async {
        sink.latest().filter(|p| p.keys().any(|(n, _)| n == "scout.stream.vulnerabilities"))
    })
    .await;
    eprintln!("data flowed {:?} after the collector appeared", appeared.elapsed());
    eventually(Duration::from_secs(5), "the recovery logged", || async {
        exporter.log().contains("OTLP export recovered").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_is_bounded_by_the_export_timeout() {
    let fake = scout().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let exporter =
        start(&fake, &format!("http://{addr}"), &[("OTEL_EXPORTER_OTLP_TIMEOUT", "500")]);
    let s = eventually(Duration::from_secs(15), "timed-out exports counted", || async {
        let s = scrape(&exporter).await;
        (export_errors(&s) >= 3.0).then_some(s)
    })
    .await;
    assert!(s.keys().any(|(n, _)| n == "scout_stream_vulnerabilities"));
    // Scrapes stay fast while exports hang.
    let started = Instant::now();
    for _ in 0..20 {
        scrape(&exporter).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "scrapes slowed to {:?}",
        started.elapsed()
    );

    // SIGTERM during a hung export still exits, cleanly, within 10 s.
    let (status, took) = exporter.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_pushes_once_more_and_exits_zero() {
    let fake = scout().await;
    let (sink, addr) = OtlpSink::start().await;
    // A long interval: the only pushes are the shutdown's.
    let exporter =
        start(&fake, &format!("http://{addr}"), &[("OTEL_METRIC_EXPORT_INTERVAL", "600000")]);
    eventually(Duration::from_secs(10), "data on /metrics", || async {
        let s = scrape(&exporter).await;
        s.keys().any(|(n, _)| n == "scout_stream_vulnerabilities").then_some(())
    })
    .await;
    assert_eq!(sink.count(), 0);
    let ((status, log), took) = exporter.terminate_keeping_log();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    let last = sink.latest().unwrap_or_else(|| panic!("no final export on shutdown:\n{log}"));
    assert!(last.keys().any(|(n, _)| n == "scout.stream.vulnerabilities"));
    assert!(log.contains("signal received"), "{log}");
}
