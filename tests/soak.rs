//! A bounded soak: fast refreshes against a Scout that alternates good and
//! failing answers, 32 concurrent scrapers, and an OTLP receiver that comes
//! and goes. Afterwards the exporter must have answered every scrape, not
//! panicked, kept its memory flat after warm-up, and counted exactly the
//! failures the fake served.
//!
//! `SOAK_SECONDS` sets the length (default 120 under CI, 20 otherwise).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use scout_exporter::fake::{FakeScout, PROMETHEUS_TEXT, Reply};

/// Every `reason` label value, from the library's own list.
const REASONS: [&str; 9] = scout_exporter::scout::Reason::ALL_LABELS;

/// One cycle of Scout's answers: good ones (the normal payload, after no
/// delay) between failures of several kinds.
fn cycle() -> Vec<(Reply, bool)> {
    let good = || (Reply::Delay(Duration::ZERO), false);
    vec![
        good(),
        (Reply::Status(500, vec![]), true),
        good(),
        (Reply::Status(401, vec![]), true),
        good(),
        (Reply::Body(PROMETHEUS_TEXT.into(), "garbage {{{\n".into()), true),
        good(),
        (Reply::Short, true),
        good(),
        (Reply::Status(404, vec![]), true),
        good(),
        (Reply::Status(503, vec![]), true),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_keeps_memory_flat_and_counts_every_failure() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if ci { 120 } else { 20 });
    let total = Duration::from_secs(seconds);
    let warm_up = total / 6;

    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload(
        "acme",
        payload(&["prod", "staging", "dev"], &[("p1", "One"), ("p2", "Two")], 5),
    );
    let cycles = (seconds as usize * 10) / cycle().len() + 10;
    let script: Vec<(Reply, bool)> = (0..cycles).flat_map(|_| cycle()).collect();
    fake.push("acme", script.iter().map(|(r, _)| r.clone()));

    let sink = OtlpSink::default();
    let otlp_addr = free_addr();
    let url = fake.url();
    let endpoint = format!("http://{otlp_addr}");
    let exporter = Arc::new(Exporter::start(
        &[
            "--org",
            "acme",
            "--scout-url",
            &url,
            "--refresh-interval",
            "100ms",
            "--scout-timeout",
            "2s",
        ],
        &[
            ("DOCKER_SCOUT_API_KEY", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ],
    ));

    // 32 scrapers, each counting answers and failures.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    scout_exporter::scout::install_crypto_provider();
    let client = reqwest::Client::new();
    let mut scrapers = Vec::new();
    for _ in 0..32 {
        let (stop, ok, bad, client) = (stop.clone(), ok.clone(), bad.clone(), client.clone());
        let url = exporter.url("/metrics");
        scrapers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answered = match client.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if answered {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // The OTLP receiver comes and goes every two seconds.
    let started = Instant::now();
    let mut receiver = None;
    let mut rss_after_warm_up = None;
    let mut rss_max = 0;
    while started.elapsed() < total {
        receiver = match receiver.take() {
            Some(task) => {
                tokio::task::JoinHandle::abort(&task);
                None
            }
            None => Some(sink.serve_on(otlp_addr).await.1),
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = exporter.rss_kib();
        if started.elapsed() >= warm_up {
            rss_after_warm_up.get_or_insert(rss);
            rss_max = rss_max.max(rss);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        s.await.unwrap();
    }

    // Let Scout answer well again, then compare the books.
    fake.clear_script("acme");
    let served = fake.requests_for("acme") as usize;
    let base = rss_after_warm_up.expect("a warm-up sample");
    let log = exporter.log();
    let counters: BTreeMap<String, f64> =
        eventually(Duration::from_secs(10), "a good refresh", || async {
            let s = scrape(&exporter).await;
            let up =
                s.get(&("scout_exporter_up".to_string(), [("org".into(), "acme".into())].into()));
            (up == Some(&1.0)).then(|| {
                REASONS
                    .iter()
                    .map(|r| {
                        let key = (
                            "scout_exporter_refresh_errors_total".to_string(),
                            [("org".into(), "acme".into()), ("reason".into(), r.to_string())]
                                .into(),
                        );
                        (r.to_string(), s[&key])
                    })
                    .collect()
            })
        })
        .await;
    let consumed = served.min(script.len());
    let failures_served = script[..consumed].iter().filter(|(_, failed)| *failed).count() as f64;
    let counted: f64 = counters.values().sum();

    let answered = ok.load(Ordering::Relaxed);
    eprintln!(
        "soak {seconds}s: {answered} scrapes answered, {} failed; {served} Scout requests, \
         {failures_served} failures served, counted {counters:?}; RSS after warm-up {base} KiB, \
         max {rss_max} KiB, OTLP requests received {}",
        bad.load(Ordering::Relaxed),
        sink.count()
    );
    assert_eq!(bad.load(Ordering::Relaxed), 0, "every scrape must be answered");
    assert!(answered > 1000, "only {answered} scrapes");
    assert_eq!(counted, failures_served, "counters must add up to the fake's failures");
    assert!(rss_max <= base + 10 * 1024, "RSS grew from {base} KiB to {rss_max} KiB");
    assert!(!log.contains("panicked"), "a panic was logged:\n{log}");
    assert!(sink.count() > 0, "the receiver never got data");
}
