//! Resident memory of the exporter, idle and under load, against its targets.
//!
//! ```sh
//! cargo build --release --bin scout-exporter --example memory
//! target/release/examples/memory target/release/scout-exporter [SECONDS [EXPORTERS [CASE]]]
//! ```
//!
//! Runs the given exporter binary (Linux only: it reads `/proc`) against
//! the Scout stand-in and samples its resident set every 50 ms while a
//! scraper fetches `/metrics` every second and an OTLP receiver built from
//! the official definitions takes its pushes:
//!
//! - `--demo`, idle: the README's first command, nothing pushed or scraped;
//! - 10,000 series whose values change on every fetch, refreshed every
//!   second (300 times the default rate), pushed every second and scraped;
//! - 100,000 series, the same, refreshed every 5 s.
//!
//! For each it prints the resident set after the first 10 s (median and
//! largest sample), the kernel's high-water mark for the whole run
//! (`VmHWM`, which no sample can miss), how far the median and the largest
//! sample of the last third of the run moved from those of the first third
//! ("flat across refreshes": a leak moves both, while the resident set
//! going up and down with each refresh moves the median alone), and the
//! ratio of the high-water mark to the target. `EXPORTERS`
//! (default `otlp,prometheus`) is the `OTEL_METRICS_EXPORTER` of the two
//! loaded cases, to see what each output costs; `CASE` (`demo`, `10000`
//! or `100000`) runs one case only.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use scout_exporter::demo::scaled_payload;
use scout_exporter::fake::{FakeScout, PROMETHEUS_TEXT};
use support::CountingSink;

mod support;

const MIB: f64 = 1024.0 * 1024.0;
const WARM_UP: Duration = Duration::from_secs(10);

/// One situation to measure.
struct Case {
    name: &'static str,
    /// The issue's target, in decimal megabytes.
    target_mb: f64,
    /// Series in the organization; `None` runs `--demo`.
    series: Option<usize>,
    refresh: &'static str,
    busy: bool,
}

/// Resident set samples of one run, in bytes.
struct Samples {
    after_warm_up: Vec<u64>,
    high_water: u64,
    scrapes: u64,
    failed_scrapes: u64,
    pushes: u64,
    points: u64,
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn median(sorted: &[u64]) -> u64 {
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

fn spawn(binary: &str, case: &Case, scout_url: &str, otlp: &str, port: u16) -> Child {
    let exporters = std::env::args().nth(3).unwrap_or_else(|| "otlp,prometheus".into());
    let mut command = Command::new(binary);
    command
        .env_clear()
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match case.series {
        None => {
            command.arg("--demo").env("OTEL_METRICS_EXPORTER", "prometheus");
        }
        Some(_) => {
            command
                .args(["--org", "acme", "--scout-url", scout_url])
                .args(["--refresh-interval", case.refresh])
                .env("DOCKER_SCOUT_API_KEY", "memory")
                .env("OTEL_METRICS_EXPORTER", &exporters)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
                .env("OTEL_METRIC_EXPORT_INTERVAL", "1000");
        }
    }
    command.spawn().expect("the exporter starts")
}

async fn measure(
    binary: &str,
    case: &Case,
    seconds: u64,
    scout: &FakeScout,
    sink: &CountingSink,
    otlp: &str,
) -> Samples {
    let (pushes0, points0) = (sink.pushes(), sink.points());
    if let Some(series) = case.series {
        let round = Arc::new(AtomicU64::new(0));
        scout.set_payload_fn(
            "acme",
            Arc::new(move || {
                let n = round.fetch_add(1, Ordering::Relaxed);
                (PROMETHEUS_TEXT.to_string(), Bytes::from(scaled_payload(series, n)))
            }),
        );
    }
    let port = free_port();
    let mut child = spawn(binary, case, &scout.url(), otlp, port);
    let pid = child.id();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    // Scrapes start once the exporter listens, so that a failed scrape
    // means a failure and not an early start.
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let listening = Instant::now();
    while client.get(&healthz).send().await.is_err() {
        assert!(listening.elapsed() < Duration::from_secs(10), "the exporter does not listen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (scrapes, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let scraper = case.busy.then(|| {
        let (scrapes, failed) = (scrapes.clone(), failed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let ok = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok { &scrapes } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        })
    });

    let start = Instant::now();
    let mut after_warm_up = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(rss) = status_kib(pid, "VmRSS:") else { break };
        if start.elapsed() >= WARM_UP {
            after_warm_up.push(rss * 1024);
        }
    }
    let high_water = status_kib(pid, "VmHWM:").unwrap_or(0) * 1024;
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
    Samples {
        after_warm_up,
        high_water,
        scrapes: scrapes.load(Ordering::Relaxed),
        failed_scrapes: failed.load(Ordering::Relaxed),
        pushes: sink.pushes() - pushes0,
        points: sink.points() - points0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args.next().unwrap_or_else(|| "target/release/scout-exporter".into());
    let seconds: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(60);
    assert!(seconds > WARM_UP.as_secs() + 5, "run for more than 15 s");

    scout_exporter::scout::install_crypto_provider();
    let scout = FakeScout::start("memory").await.unwrap();
    let (sink, sink_addr) = CountingSink::start().await;
    let otlp = format!("http://{sink_addr}");

    let cases = [
        Case { name: "--demo, idle", target_mb: 16.0, series: None, refresh: "", busy: false },
        Case {
            name: "10,000 series, refresh 1 s",
            target_mb: 64.0,
            series: Some(10_000),
            refresh: "1s",
            busy: true,
        },
        Case {
            name: "100,000 series, refresh 5 s",
            target_mb: 512.0,
            series: Some(100_000),
            refresh: "5s",
            busy: true,
        },
    ];
    println!("{seconds} s per case, resident set sampled every 50 ms after the first 10 s");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>11} {:>7} {:>6} {:>7} {:>14}",
        "case", "median", "largest", "VmHWM", "drift (MiB)", "target", "ratio", "scrapes", "pushes"
    );
    let only = std::env::args().nth(4);
    for case in &cases {
        let id = case.series.map_or("demo".to_string(), |n| n.to_string());
        if only.as_ref().is_some_and(|o| *o != id) {
            continue;
        }
        let s = measure(&binary, case, seconds, &scout, &sink, &otlp).await;
        let mut sorted = s.after_warm_up.clone();
        sorted.sort_unstable();
        let third = s.after_warm_up.len() / 3;
        let mut first: Vec<u64> = s.after_warm_up[..third].to_vec();
        let mut last: Vec<u64> = s.after_warm_up[s.after_warm_up.len() - third..].to_vec();
        first.sort_unstable();
        last.sort_unstable();
        let drift = |of: fn(&[u64]) -> u64| (of(&last) as f64 - of(&first) as f64) / MIB;
        let largest = |v: &[u64]| v.last().copied().unwrap_or(0);
        let target = case.target_mb * 1e6;
        println!(
            "{:<28} {:>6.1}MiB {:>6.1}MiB {:>6.1}MiB {:>+5.1}/{:<+5.1} {:>5}MB {:>6.2} {:>7} {:>14}",
            case.name,
            median(&sorted) as f64 / MIB,
            largest(&sorted) as f64 / MIB,
            s.high_water as f64 / MIB,
            drift(median),
            drift(largest),
            case.target_mb,
            s.high_water as f64 / target,
            if s.failed_scrapes > 0 {
                format!("{}!{}", s.scrapes, s.failed_scrapes)
            } else {
                s.scrapes.to_string()
            },
            format!("{}/{}", s.pushes, s.points),
        );
        // 20 samples a second: the median of each 10 s, to see a trend.
        let trend: Vec<String> = s
            .after_warm_up
            .chunks(200)
            .map(|c| {
                let mut c = c.to_vec();
                c.sort_unstable();
                format!("{:.1}", median(&c) as f64 / MIB)
            })
            .collect();
        println!("{:<28} every 10 s (MiB): {}", "", trend.join(" "));
    }
}
