//! How soon an organization is served after Scout answers its first fetch.
//!
//! ```sh
//! cargo build --release --bin scout-exporter --example ready
//! target/release/examples/ready target/release/scout-exporter [ROUNDS]
//! ```
//!
//! Starts the given exporter binary, with both outputs on, against the
//! Scout stand-in, and polls `/readyz` every millisecond. The clock starts
//! when the stand-in receives the first request and stops at the first
//! `/readyz` that answers 200, so the figure includes sending the body,
//! parsing it, building the snapshot, adding SDK pipelines for large data
//! and publishing: an upper bound of the time from the fetch returning to
//! the organization being served. The body is sent uncompressed, so the
//! stand-in's own gzip time is not counted. Prints the median and largest
//! of `ROUNDS` (default 5) starts at 84, 10,000 and 100,000 series, and the
//! ratio of the largest to the 100 ms target. A second pair of columns
//! gives the exporter's own account (its debug log line `refreshed`): the
//! time from the fetch returning to the snapshot being published
//! (`build_ms` + `publish_ms`), which is what the target is about.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scout_exporter::demo::scaled_payload;
use scout_exporter::fake::{FakeScout, PROMETHEUS_TEXT, Reply};
use support::CountingSink;

mod support;

const TARGET: Duration = Duration::from_millis(100);

/// One start: milliseconds from Scout's first request to `/readyz` 200,
/// and from the fetch returning to the snapshot published, as logged.
async fn one_start(binary: &str, series: usize, scout: &FakeScout, otlp: &str) -> (f64, f64) {
    let text = scaled_payload(series, 0);
    let org = format!("org-{series}-{}", fastrand::u32(..));
    scout.set_payload(&org, text.clone());
    scout.push(&org, [Reply::Body(PROMETHEUS_TEXT.to_string(), text.into())]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(binary)
        .env_clear()
        .args(["--org", &org, "--scout-url", &scout.url(), "--refresh-interval", "1h"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("DOCKER_SCOUT_API_KEY", "ready")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("RUST_LOG", "scout_exporter::refresh=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the exporter starts");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let path = format!("/v1/exporter/org/{org}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready_at = loop {
        assert!(Instant::now() < deadline, "{series} series: not ready within 60 s");
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill();
    let log = child.wait_with_output().expect("the exporter's log").stderr;
    let log = String::from_utf8_lossy(&log);
    let line = log.lines().find(|l| l.contains("refreshed")).expect("a `refreshed` log line");
    let field = |name: &str| -> f64 {
        let start = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
        let value = line[start..].split_whitespace().next().unwrap_or_default();
        value.parse().expect(name)
    };
    let asked = scout.seen().into_iter().find(|s| s.path == path).expect("Scout was asked").at;
    (ready_at.duration_since(asked).as_secs_f64() * 1000.0, field("build_ms") + field("publish_ms"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args.next().unwrap_or_else(|| "target/release/scout-exporter".into());
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5).max(1);

    scout_exporter::scout::install_crypto_provider();
    let scout = FakeScout::start("ready").await.unwrap();
    let (_sink, sink_addr) = CountingSink::start().await;
    let otlp = format!("http://{sink_addr}");
    println!("from Scout's first request to /readyz 200, {rounds} starts each");
    println!(
        "{:>8} {:>23} {:>23} {:>7} {:>6}",
        "series", "first request to ready", "fetch end to published", "target", "ratio"
    );
    println!("{:>8} {:>11} {:>11} {:>11} {:>11}", "", "median", "largest", "median", "largest");
    for series in [84, 10_000, 100_000] {
        let (mut whole, mut after_fetch) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (w, a) = one_start(&binary, series, &scout, &otlp).await;
            whole.push(w);
            after_fetch.push(a);
        }
        whole.sort_by(f64::total_cmp);
        after_fetch.sort_by(f64::total_cmp);
        let largest = after_fetch[rounds - 1];
        println!(
            "{series:>8} {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>5}ms {:>6.2}",
            whole[rounds / 2],
            whole[rounds - 1],
            after_fetch[rounds / 2],
            largest,
            TARGET.as_millis(),
            largest / TARGET.as_secs_f64() / 1000.0
        );
    }
}
