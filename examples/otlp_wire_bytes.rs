//! Bytes on the wire per OTLP push, with and without gzip.
//!
//! ```sh
//! cargo build --release --bin scout-exporter
//! cargo run --release --example otlp_wire_bytes -- target/release/scout-exporter 10000
//! ```
//!
//! Runs the given exporter binary against the Scout stand-in with N series,
//! pushing over gRPC through a loopback relay that counts the bytes the
//! exporter sends, to a receiver built from the official OTLP definitions.
//! Prints bytes per push for `OTEL_EXPORTER_OTLP_COMPRESSION=none` and
//! `gzip`, and for `http/protobuf` the same two ways.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scout_exporter::demo::scaled_payload;
use scout_exporter::fake::FakeScout;
use support::CountingSink;

mod support;

/// Relays `listen` to `target`, counting the bytes sent toward `target`.
async fn relay(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counted = Arc::new(AtomicU64::new(0));
    let total = counted.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let total = total.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        total.fetch_add(n as u64, Ordering::Relaxed);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                let _ = tokio::join!(up, down);
            });
        }
    });
    (addr, counted)
}

/// An HTTP receiver that answers every POST with an empty OTLP response.
async fn http_sink() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let _ = req.into_body().collect().await;
                            seen.fetch_add(1, Ordering::Relaxed);
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            ));
                            r.headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, count)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args.next().unwrap_or_else(|| "target/release/scout-exporter".into());
    let series: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);

    let fake = FakeScout::start("wire").await.unwrap();
    fake.set_payload("acme", scaled_payload(series, 0));

    let (sink, grpc_addr) = CountingSink::start().await;
    let (http_addr, http_pushes) = http_sink().await;
    let pushes = |protocol: &str| match protocol {
        "grpc" => sink.pushes(),
        _ => http_pushes.load(Ordering::Relaxed),
    };

    println!("{series} series, bytes the exporter sent per push");
    for (protocol, target) in [("grpc", grpc_addr), ("http/protobuf", http_addr)] {
        for compression in ["none", "gzip"] {
            let (relay_addr, bytes) = relay(target).await;
            let endpoint = match protocol {
                "grpc" => format!("http://{relay_addr}"),
                _ => format!("http://{relay_addr}/v1/metrics"),
            };
            let mut child = Command::new(&binary)
                .args(["--org", "acme", "--scout-url", &fake.url(), "--listen", "127.0.0.1:0"])
                .args(["--refresh-interval", "1h"])
                .env_clear()
                .env("DOCKER_SCOUT_API_KEY", "wire")
                .env("OTEL_METRICS_EXPORTER", "otlp")
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
                .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &endpoint)
                .env("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
                .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
                .stderr(Stdio::null())
                .spawn()
                .expect("the exporter starts");
            // Skip the first pushes (before data), then measure five.
            let (start, before) = (Instant::now(), pushes(protocol));
            while pushes(protocol) < before + 3 && start.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (b0, n0) = (bytes.load(Ordering::Relaxed), pushes(protocol));
            while pushes(protocol) < n0 + 5 && start.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (b1, n1) = (bytes.load(Ordering::Relaxed), pushes(protocol));
            let _ = child.kill();
            let _ = child.wait();
            let per_push = (b1 - b0) / (n1 - n0).max(1);
            println!("  {protocol:<14} compression={compression:<5} {per_push:>10} bytes per push");
        }
    }
}
