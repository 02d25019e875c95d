//! Proxies: `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` as curl reads them,
//! and `--proxy URL`, checked with a recording forward proxy on loopback.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use scout_exporter::fake::FakeScout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A forward proxy that records each request line. Plain-HTTP requests are
/// relayed to their target; `CONNECT` is recorded and refused, so nothing
/// leaves the machine.
struct Proxy {
    url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let record = lines.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let first = text.lines().next().unwrap_or_default().to_string();
                    record.lock().unwrap().push(first.clone());
                    let mut parts = first.split(' ');
                    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    if method == "CONNECT" {
                        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                        return;
                    }
                    let authority =
                        target.trim_start_matches("http://").split('/').next().unwrap_or("");
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(authority).await else {
                        return;
                    };
                    if upstream.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Proxy { url, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

async fn up_once(exporter: &Exporter) {
    eventually(Duration::from_secs(10), "a good refresh", || async {
        let s = scrape(exporter).await;
        let key = ("scout_exporter_up".to_string(), [("org".into(), "acme".into())].into());
        (s.get(&key) == Some(&1.0)).then_some(())
    })
    .await;
}

async fn fake() -> FakeScout {
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload("acme", payload(&["prod"], &[], 1));
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_from_the_environment_is_used_unless_no_proxy_matches() {
    let (fake, proxy) = (fake().await, Proxy::start().await);
    let url = fake.url();
    let args = ["--org", "acme", "--scout-url", url.as_str(), "--refresh-interval", "1h"];
    let via = Exporter::start(
        &args,
        &[
            ("DOCKER_SCOUT_API_KEY", TOKEN),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("HTTP_PROXY", &proxy.url),
        ],
    );
    up_once(&via).await;
    let expected = format!("GET {url}/v1/exporter/org/acme/metrics HTTP/1.1");
    assert_eq!(proxy.lines(), vec![expected], "the request must go through the proxy");

    let direct = Exporter::start(
        &args,
        &[
            ("DOCKER_SCOUT_API_KEY", TOKEN),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("http_proxy", &proxy.url),
            ("NO_PROXY", "127.0.0.1"),
        ],
    );
    up_once(&direct).await;
    assert_eq!(proxy.lines().len(), 1, "NO_PROXY must bypass the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_flag_routes_scout_requests() {
    let (fake, proxy) = (fake().await, Proxy::start().await);
    let url = fake.url();
    let exporter = Exporter::start(
        &["--org", "acme", "--scout-url", &url, "--refresh-interval", "1h", "--proxy", &proxy.url],
        &[("DOCKER_SCOUT_API_KEY", TOKEN), ("OTEL_METRICS_EXPORTER", "prometheus")],
    );
    up_once(&exporter).await;
    assert_eq!(proxy.lines().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_tunnels_https_requests() {
    let proxy = Proxy::start().await;
    // The proxy refuses the tunnel: what matters is that it was asked.
    let exporter = Exporter::start(
        &["--org", "acme", "--scout-url", "https://scout.invalid", "--refresh-interval", "1h"],
        &[
            ("DOCKER_SCOUT_API_KEY", TOKEN),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("HTTPS_PROXY", &proxy.url),
        ],
    );
    eventually(Duration::from_secs(10), "a CONNECT at the proxy", || async {
        proxy.lines().first().cloned().filter(|l| l.starts_with("CONNECT scout.invalid:443"))
    })
    .await;
    let s = scrape(&exporter).await;
    let key = (
        "scout_exporter_refresh_errors_total".to_string(),
        [("org".into(), "acme".into()), ("reason".into(), "connect".into())].into(),
    );
    assert_eq!(s.get(&key), Some(&1.0));
}
