//! A stand-in for Docker Scout's metrics endpoint, for local experiments
//! and benchmarks.
//!
//! ```sh
//! cargo run --example fake_scout -- --port 8080 --token secret --org acme --series 10000
//! DOCKER_SCOUT_API_KEY=secret cargo run -- --org acme --scout-url http://127.0.0.1:8080
//! ```
//!
//! It serves `GET /v1/exporter/org/<ORG>/metrics` with bearer-token checks,
//! as the real endpoint does. `--series N` sizes each organization's
//! payload: N series spread over the three documented families (about 150
//! bytes each), with `--drift` making the values change on every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use scout_exporter::demo::scaled_payload;
use scout_exporter::fake::{FakeScout, PROMETHEUS_TEXT};

struct Args {
    port: u16,
    token: String,
    orgs: Vec<String>,
    series: usize,
    drift: bool,
}

fn args() -> Args {
    let mut args =
        Args { port: 8080, token: "secret".into(), orgs: Vec::new(), series: 84, drift: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => args.port = value().parse().expect("--port takes a number"),
            "--token" => args.token = value(),
            "--org" => args.orgs.push(value()),
            "--series" => args.series = value().parse().expect("--series takes a number"),
            "--drift" => args.drift = true,
            "--help" | "-h" => {
                println!(
                    "fake_scout [--port 8080] [--token T] [--org ORG]... [--series N] [--drift]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown flag {other}"),
        }
    }
    if args.orgs.is_empty() {
        args.orgs.push("acme".into());
    }
    args
}

#[tokio::main]
async fn main() {
    let args = args();
    let scout = FakeScout::start_on(("127.0.0.1", args.port), &args.token).await.expect("bind");
    for org in &args.orgs {
        let (series, drift) = (args.series, args.drift);
        let fixed = Bytes::from(scaled_payload(series, 0));
        let round = Arc::new(AtomicU64::new(0));
        scout.set_payload_fn(
            org,
            Arc::new(move || {
                let body = if drift {
                    Bytes::from(scaled_payload(series, round.fetch_add(1, Ordering::Relaxed)))
                } else {
                    fixed.clone()
                };
                (PROMETHEUS_TEXT.to_string(), body)
            }),
        );
    }
    println!(
        "fake Scout on {} serving {} with {} series each",
        scout.url(),
        args.orgs.join(","),
        args.series
    );
    tokio::signal::ctrl_c().await.ok();
}
