//! The programs from outside the project that `tests/interop.rs` runs
//! against the exporter: Prometheus and promtool (Debian's `prometheus`
//! package), oteltest's otelsink (an OTLP gRPC receiver) and an OTLP/HTTP
//! receiver on the opentelemetry-proto Python package, the last two started
//! through the scripts in `tests/peers/`.
//!
//! This module finds each program, starts it on a loopback port with its
//! files in a temporary directory, reads back what it saw, and kills it when
//! the handle is dropped. It installs nothing (`.ci/install.sh` does) and
//! judges nothing: the assertions stay in the tests. A program that is not
//! installed skips the test with a note, except under CI (`CI=true`), where
//! it fails it, so an interop check can never pass by absence.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::SeriesKey;

/// How long a peer may take to accept connections. Generous, since two
/// cores may be compiling or running other tests at the same time.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this run is CI's, where a missing peer is a failure.
pub fn under_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

/// Returns the peer that was found; otherwise fails the test under CI, or
/// prints a note and returns `None` so the test can skip.
pub fn require<T>(found: Result<T, String>) -> Option<T> {
    match found {
        Ok(peer) => Some(peer),
        Err(why) if under_ci() => panic!("{why}; under CI it must be there (.ci/install.sh)"),
        Err(why) => {
            // Straight to stderr, past the test harness' capture, so a skip
            // shows in a passing run.
            let _ = writeln!(
                std::io::stderr(),
                "note: interop test skipped: {why} (.ci/install.sh installs it)"
            );
            None
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

/// A program on `PATH`.
pub fn program(name: &str) -> Result<PathBuf, String> {
    on_path(name).ok_or_else(|| format!("`{name}` is not on PATH"))
}

/// A Python interpreter that imports every module of `modules`, which come
/// from the PyPI package `package`: `python3` on `PATH` first, then the one
/// in the virtual environment `.ci/install.sh` creates, so a developer need
/// not put that environment on `PATH`.
pub fn python_with(package: &str, modules: &[&str]) -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python3");
    let import = format!("import {}", modules.join(", "));
    [on_path("python3"), Some(venv)]
        .into_iter()
        .flatten()
        .find(|python| {
            Command::new(python)
                .args(["-c", &import])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| format!("no python3 has the PyPI package `{package}` (`{import}` fails)"))
}

/// A loopback port that was free a moment ago, for a program that must be
/// told its port instead of reporting the one it picked. Another process
/// may take it in between; the callers then start over on a new port.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port is free");
    listener.local_addr().unwrap().port()
}

/// A running peer, killed when dropped. Its stdout and stderr lines are
/// kept together for failure messages.
pub struct Peer {
    name: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    /// Starts `cmd` with its output captured.
    pub fn spawn(name: &str, mut cmd: Command) -> Peer {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        keep_lines(child.stdout.take().unwrap(), output.clone());
        keep_lines(child.stderr.take().unwrap(), output.clone());
        Peer { name: name.to_string(), child, output }
    }

    /// Everything the peer printed so far.
    pub fn output(&self) -> String {
        format!("-- {} output --\n{}", self.name, self.output.lock().unwrap().join("\n"))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for a printed line that starts with `prefix` and returns the
    /// rest of it; fails when the peer exits first or after the start-up
    /// timeout.
    pub async fn line_after(&mut self, prefix: &str) -> Result<String, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = self
                .output
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_string));
            if let Some(rest) = found {
                return Ok(rest);
            }
            if let Some(status) = self.exited() {
                return Err(format!("{} exited with {status}\n{}", self.name, self.output()));
            }
            if Instant::now() > deadline {
                return Err(format!("{} printed no {prefix:?} line\n{}", self.name, self.output()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keep_lines(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
}

fn http_client() -> reqwest::Client {
    scout_exporter::scout::install_crypto_provider();
    reqwest::Client::new()
}

/// What `promtool check metrics` said about one exposition.
#[derive(Debug)]
pub struct Lint {
    /// The exit code: 0 clean, 3 lint problems only, 1 a parse error.
    pub code: Option<i32>,
    /// Its standard error, where it writes one line a problem.
    pub problems: String,
}

/// Runs `promtool check metrics` with `body` on its standard input.
pub fn promtool_check_metrics(promtool: &Path, body: &str) -> Lint {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_string();
    // A writer thread, so a large body cannot fill the pipes both ways.
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child.wait_with_output().expect("promtool runs");
    writer.join().unwrap().expect("promtool reads its input");
    let mut problems = String::from_utf8_lossy(&out.stderr).into_owned();
    problems.push_str(&String::from_utf8_lossy(&out.stdout));
    Lint { code: out.status.code(), problems }
}

/// A sample of an instant query: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A Prometheus server that scrapes the given targets every second.
pub struct Prometheus {
    peer: Peer,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `binary` scraping `127.0.0.1:PORT/metrics` for each `(job,
    /// PORT)` of `targets`, and waits until it answers queries.
    pub async fn start(binary: &Path, targets: &[(&str, u16)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n",
        );
        for (job, port) in targets {
            config.push_str(&format!(
                "  - job_name: {job:?}\n    static_configs: [{{targets: [\"127.0.0.1:{port}\"]}}]\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let storage = dir.path().join("data");
        let client = http_client();
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(binary);
            cmd.arg(format!("--config.file={}", config_file.display()))
                .arg(format!("--storage.tsdb.path={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // Relative default paths (consoles, data) land in the temporary
                // directory, never in the working tree.
                .current_dir(dir.path());
            let mut peer = Peer::spawn("prometheus", cmd);
            let base = format!("http://127.0.0.1:{port}");
            match ready(&mut peer, &client, &base, &storage).await {
                Ok(()) => return Prometheus { peer, base, client, _dir: dir },
                Err(why) => failures.push(why),
            }
        }
        panic!("Prometheus did not start:\n{}", failures.join("\n"))
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        api(&self.client, &self.base, path, params).await
    }

    /// Runs an instant query. A range vector result gives each series'
    /// latest value; a string result is an error.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await?;
        let value_of = |pair: &Value| -> Result<f64, String> {
            let text = pair[1].as_str().ok_or_else(|| format!("no value in {pair}"))?;
            text.parse().map_err(|e| format!("value {text:?}: {e}"))
        };
        let labels_of = |metric: &Value| -> BTreeMap<String, String> {
            metric
                .as_object()
                .map(|m| {
                    m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").into())).collect()
                })
                .unwrap_or_default()
        };
        let result = &data["result"];
        match data["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Ok((labels_of(&s["metric"]), value_of(&s["value"])?)))
                .collect(),
            Some("matrix") => result
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| Some((s, s["values"].as_array()?.last()?)))
                .map(|(s, last)| Ok((labels_of(&s["metric"]), value_of(last)?)))
                .collect(),
            Some("scalar") => Ok(vec![(BTreeMap::new(), value_of(result)?)]),
            other => Err(format!("result of type {other:?}: {result}")),
        }
    }

    /// The values of `label` on series matching `selector`, as Grafana's
    /// `label_values()` asks for them.
    pub async fn label_values(
        &self,
        label: &str,
        selector: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let params: Vec<(&str, &str)> = selector.map(|s| ("match[]", s)).into_iter().collect();
        let data = self.api(&format!("/api/v1/label/{label}/values"), &params).await?;
        let values = data.as_array().ok_or_else(|| format!("not a list: {data}"))?;
        Ok(values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
    }

    /// Waits until `job`'s target has been scraped `scrapes` times, and
    /// fails with Prometheus' view of its targets if a scrape failed or
    /// the scrapes do not come.
    pub async fn wait_for_scrapes(&self, job: &str, scrapes: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        let count = format!("count_over_time(up{{job={job:?}}}[5m])");
        let up = format!("up{{job={job:?}}}");
        loop {
            let done = self.query(&count).await.ok().and_then(|s| s.first().map(|(_, v)| *v));
            if done.is_some_and(|n| n >= scrapes as f64) {
                let up = self.query(&up).await.unwrap_or_default();
                assert!(
                    up.iter().all(|(_, v)| *v == 1.0),
                    "Prometheus failed to scrape job {job}:\n{}",
                    self.targets().await
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not scrape job {job} {scrapes} times in {START_TIMEOUT:?}:\n{}\n{}",
                self.targets().await,
                self.peer.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each target's URL, health and last scrape error, for failure messages.
    pub async fn targets(&self) -> String {
        match self.api("/api/v1/targets", &[]).await {
            Ok(data) => data["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("targets unknown: {e}"),
        }
    }
}

/// Waits until the Prometheus just started answers on its port. Asking for
/// its storage path tells it apart from another test's Prometheus that took
/// the same port first.
async fn ready(
    peer: &mut Peer,
    client: &reqwest::Client,
    base: &str,
    storage: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = peer.exited() {
            return Err(format!("exited with {status}\n{}", peer.output()));
        }
        if let Ok(flags) = api(client, base, "/api/v1/status/flags", &[]).await {
            if flags["storage.tsdb.path"].as_str() == storage.to_str() {
                return Ok(());
            }
            return Err("another process answers on its port".to_string());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready in {START_TIMEOUT:?}\n{}", peer.output()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls a Prometheus HTTP API endpoint and returns its `data`, or the
/// error Prometheus gave.
async fn api(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    params: &[(&str, &str)],
) -> Result<Value, String> {
    let url = url::Url::parse_with_params(&format!("{base}{path}"), params).unwrap();
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&body)
        .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
    if value["status"] != "success" {
        let text = |key: &str| value[key].as_str().unwrap_or("?").to_string();
        return Err(format!("{}: {}", text("errorType"), text("error")));
    }
    Ok(value["data"].clone())
}

/// One metric of an OTLP export, as a receiver decoded it.
#[derive(Clone, Debug)]
pub struct OtlpMetric {
    /// The metric name.
    pub name: String,
    /// The field holding the data: `gauge`, `sum`, `histogram`,
    /// `exponentialHistogram` or `summary`.
    pub kind: String,
    /// The aggregation temporality of a sum or histogram, by its enum name.
    pub temporality: Option<String>,
    /// Whether a sum is monotonic.
    pub monotonic: bool,
    /// The attributes and value of each number data point; histograms and
    /// summaries have none here.
    pub points: Vec<(BTreeMap<String, String>, f64)>,
}

/// The gauge and sum points of `metrics` by (metric name, attributes).
pub fn points(metrics: &[OtlpMetric]) -> BTreeMap<SeriesKey, f64> {
    metrics
        .iter()
        .flat_map(|m| m.points.iter().map(|(attrs, v)| ((m.name.clone(), attrs.clone()), *v)))
        .collect()
}

/// The metrics of one `ExportMetricsServiceRequest` in protobuf's JSON
/// mapping, as `tests/peers/otlp_json.py` writes them.
fn decode_request(request: &Value) -> Result<Vec<OtlpMetric>, String> {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for rm in list(&request["resourceMetrics"]) {
        for sm in list(&rm["scopeMetrics"]) {
            for m in list(&sm["metrics"]) {
                let name = m["name"].as_str().ok_or("a metric without a name")?.to_string();
                let kinds = ["gauge", "sum", "histogram", "exponentialHistogram", "summary"];
                let kind = kinds
                    .into_iter()
                    .find(|k| m.get(k).is_some())
                    .ok_or_else(|| format!("metric {name} has no data: {m}"))?;
                let data = &m[kind];
                let mut points = Vec::new();
                if matches!(kind, "gauge" | "sum") {
                    for p in list(&data["dataPoints"]) {
                        let attrs = list(&p["attributes"])
                            .iter()
                            .map(|kv| {
                                (kv["key"].as_str().unwrap_or("").to_string(), any(&kv["value"]))
                            })
                            .collect();
                        points.push((attrs, number(&p).map_err(|e| format!("{name}: {e}"))?));
                    }
                }
                out.push(OtlpMetric {
                    name,
                    kind: kind.to_string(),
                    temporality: data["aggregationTemporality"].as_str().map(str::to_string),
                    monotonic: data["isMonotonic"].as_bool().unwrap_or(false),
                    points,
                });
            }
        }
    }
    Ok(out)
}

/// An attribute value as text; the exporter sends only strings, and any
/// other type shows here as its JSON so a comparison names it.
fn any(value: &Value) -> String {
    match value["stringValue"].as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    }
}

/// A number data point's value. The JSON mapping writes 64-bit integers,
/// NaN and the infinities as strings, and the scripts write every double as
/// a string too (`tests/peers/otlp_json.py` says why), which Rust's own
/// parser reads exactly.
fn number(point: &Value) -> Result<f64, String> {
    match (&point["asDouble"], &point["asInt"]) {
        (Value::Number(n), _) => n.as_f64().ok_or_else(|| format!("asDouble {n}")),
        (Value::String(s), _) | (Value::Null, Value::String(s)) => {
            s.parse().map_err(|e| format!("value {s:?}: {e}"))
        }
        (Value::Null, Value::Number(n)) => n.as_f64().ok_or_else(|| format!("asInt {n}")),
        _ => Err(format!("a data point without a number value: {point}")),
    }
}

/// An OTLP receiver run from one of the Python scripts in `tests/peers/`,
/// which writes each request it decodes to a file as a JSON line.
pub struct PySink {
    peer: Peer,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl PySink {
    /// oteltest's otelsink, receiving OTLP over gRPC.
    pub async fn otelsink(python: &Path) -> PySink {
        // otelsink must be told its port, and reports no other.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match PySink::start(python, "otelsink_dump.py", free_port()).await {
                Ok(sink) => return sink,
                Err(why) => failures.push(why),
            }
        }
        panic!("otelsink did not start:\n{}", failures.join("\n"))
    }

    /// The opentelemetry-proto receiver of OTLP over HTTP with protobuf.
    pub async fn http(python: &Path) -> PySink {
        PySink::start(python, "otlp_http_sink.py", 0)
            .await
            .unwrap_or_else(|why| panic!("the OTLP/HTTP receiver did not start:\n{why}"))
    }

    async fn start(python: &Path, script: &str, port: u16) -> Result<PySink, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(script);
        let mut cmd = Command::new(python);
        cmd.arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--out")
            .arg(&out)
            // No __pycache__ beside the scripts in the working tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(dir.path());
        let mut peer = Peer::spawn(&script.file_name().unwrap().to_string_lossy(), cmd);
        let port = peer.line_after("listening ").await?;
        let port = port.trim().parse().map_err(|e| format!("port {port:?}: {e}"))?;
        Ok(PySink { peer, port, out, _dir: dir })
    }

    /// The URL to give the exporter as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far, or the first protocol error the
    /// receiver wrote down.
    pub fn received(&self) -> Result<Vec<Vec<OtlpMetric>>, String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        // The last line may still be being written.
        let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
        complete
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
                if let Some(error) = value.get("error") {
                    return Err(format!("the receiver refused a request: {error}"));
                }
                decode_request(&value)
            })
            .collect()
    }

    /// Waits for a request whose metrics satisfy `wanted` and returns them.
    /// Fails with `what`, the receiver's output and `context` (the
    /// exporter's log) after 20 s.
    pub async fn wait_for(
        &self,
        what: &str,
        context: impl Fn() -> String,
        wanted: impl Fn(&[OtlpMetric]) -> bool,
    ) -> Vec<OtlpMetric> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let received = self.received().unwrap_or_else(|e| panic!("{e}\n{}", context()));
            if let Some(found) = received.into_iter().rev().find(|m| wanted(m)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no OTLP request with {what} reached {}\n{}\n-- exporter log --\n{}",
                self.endpoint(),
                self.peer.output(),
                context()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
