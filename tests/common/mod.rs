//! Helpers shared by the integration tests: the exporter binary run as a
//! user runs it, a gRPC OTLP receiver built from the official protobuf
//! definitions, and readers for both outputs.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
use scout_exporter::parse::{Format, Limits, parse};

pub const TOKEN: &str = "dckr_pat_TEST_SECRET_0123456789";

/// A series: metric name and sorted labels.
pub type SeriesKey = (String, BTreeMap<String, String>);

/// The exporter binary, started with its own environment.
pub struct Exporter {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Exporter {
    /// Starts the binary and waits for its start-up line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scout-exporter"));
        cmd.args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd.spawn().expect("the exporter binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Keep the line before announcing the port, so a test that
                // reads the log right after start sees it.
                sink.lock().unwrap().push(line.clone());
                if let Some(port) = line
                    .split("/metrics")
                    .next()
                    .and_then(|head| head.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|_| line.contains("scout-exporter started"))
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            panic!("no start-up line; log:\n{}", log.lock().unwrap().join("\n"))
        });
        Exporter { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM, waits for the exit, and returns the status with the
    /// whole log, and how long the exit took.
    pub fn terminate_keeping_log(self) -> ((std::process::ExitStatus, String), Duration) {
        let log = self.log.clone();
        let (status, took) = self.terminate();
        // Let the reader thread drain the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let text = log.lock().unwrap().join("\n");
        ((status, text), took)
    }

    /// Sends SIGTERM and waits for the exit, returning its status and how
    /// long it took.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(Instant::now() < deadline, "exporter did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
}

/// Fetches a URL, returning status and body.
pub async fn get(url: &str) -> (u16, String) {
    scout_exporter::scout::install_crypto_provider();
    let r = reqwest::get(url).await.expect("request succeeds");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Scrapes `/metrics` and parses it with the project's parser.
pub async fn scrape(exporter: &Exporter) -> BTreeMap<SeriesKey, f64> {
    let (status, body) = get(&exporter.url("/metrics")).await;
    assert_eq!(status, 200, "{body}");
    series_of_text(&body)
}

pub fn series_of_text(body: &str) -> BTreeMap<SeriesKey, f64> {
    let e = parse(body.as_bytes(), Format::Prometheus, &Limits::default())
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{body}"));
    let mut out = BTreeMap::new();
    for family in e.families {
        for s in family.samples {
            let labels =
                s.labels.iter().map(|l| (l.name.to_string(), l.value.to_string())).collect();
            out.insert((s.name.to_string(), labels), s.value);
        }
    }
    out
}

/// Only the series whose name starts with `prefix`.
pub fn only(series: &BTreeMap<SeriesKey, f64>, prefix: &str) -> BTreeMap<SeriesKey, f64> {
    series
        .iter()
        .filter(|((n, _), _)| n.starts_with(prefix))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gRPC OTLP metrics receiver that keeps every request, with the time
/// it arrived.
#[derive(Clone, Default)]
pub struct OtlpSink {
    pub requests: Arc<Mutex<Vec<(Instant, ExportMetricsServiceRequest)>>>,
}

#[tonic::async_trait]
impl MetricsService for OtlpSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push((Instant::now(), request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl OtlpSink {
    /// Starts on a free loopback port.
    pub async fn start() -> (OtlpSink, SocketAddr) {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> (OtlpSink, SocketAddr) {
        let sink = OtlpSink::default();
        let (addr, _task) = sink.serve_on(addr).await;
        (sink, addr)
    }

    /// Serves this sink on `addr` until the returned task is aborted.
    pub async fn serve_on(&self, addr: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Like a Collector, accept gzip-compressed requests.
        let service = MetricsServiceServer::new(self.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (addr, task)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The gauge and sum points of each request received after `since`.
    pub fn points_since(&self, since: Instant) -> Vec<BTreeMap<SeriesKey, f64>> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, r)| points_of(r))
            .collect()
    }

    /// The points of the latest request.
    pub fn latest(&self) -> Option<BTreeMap<SeriesKey, f64>> {
        self.requests.lock().unwrap().last().map(|(_, r)| points_of(r))
    }
}

/// Gauge and sum data points by (metric name, attributes).
pub fn points_of(request: &ExportMetricsServiceRequest) -> BTreeMap<SeriesKey, f64> {
    let mut out = BTreeMap::new();
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let points = match &m.data {
                    Some(Data::Gauge(g)) => &g.data_points,
                    Some(Data::Sum(s)) => &s.data_points,
                    _ => continue,
                };
                for p in points {
                    let labels = p
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(AnyValue::StringValue(s)) => s.clone(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    let value = match p.value {
                        Some(NumberValue::AsDouble(d)) => d,
                        Some(NumberValue::AsInt(i)) => i as f64,
                        None => f64::NAN,
                    };
                    out.insert((m.name.clone(), labels), value);
                }
            }
        }
    }
    out
}

/// The Prometheus name an OTLP metric name maps to, for Scout families.
pub fn prom_name(otel: &str) -> String {
    // Unit and counter suffixes are not added here; Scout families have none.
    otel.replace('.', "_")
}

/// A Scout-shaped payload: `streams` × five severities, and `policies` ×
/// `streams` for the two policy families, with a value per series derived
/// from `seed`.
pub fn payload(streams: &[&str], policies: &[(&str, &str)], seed: u64) -> String {
    let mut out = String::from(
        "# HELP scout_stream_vulnerabilities Vulnerabilities in a stream\n\
         # TYPE scout_stream_vulnerabilities gauge\n",
    );
    let mut n = seed;
    let mut next = || {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (n >> 33) % 500
    };
    for stream in streams {
        for sev in ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNSPECIFIED"] {
            out.push_str(&format!(
                "scout_stream_vulnerabilities{{streamName=\"{}\",severity=\"{sev}\"}} {}\n",
                escape(stream),
                next()
            ));
        }
    }
    let mut compliant = String::from("# TYPE scout_policy_compliant_images gauge\n");
    let mut evaluated = String::from("# TYPE scout_policy_evaluated_images gauge\n");
    for (id, name) in policies {
        for stream in streams {
            let total = next() + 1;
            let ok = next() % (total + 1);
            let labels = format!(
                "id=\"{}\",displayName=\"{}\",streamName=\"{}\"",
                escape(id),
                escape(name),
                escape(stream)
            );
            compliant.push_str(&format!("scout_policy_compliant_images{{{labels}}} {ok}\n"));
            evaluated.push_str(&format!("scout_policy_evaluated_images{{{labels}}} {total}\n"));
        }
    }
    out + &compliant + &evaluated
}

/// Escapes a label value for Prometheus text.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The distinct `streamName` values of one metric in a series map.
pub fn streams(series: &BTreeMap<SeriesKey, f64>, metric: &str) -> BTreeSet<String> {
    series
        .keys()
        .filter(|(n, _)| n == metric)
        .filter_map(|(_, l)| l.get("streamName").cloned())
        .collect()
}

/// A loopback address with nothing listening (bound, then released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
