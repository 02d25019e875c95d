//! The HTTP endpoint: `/metrics`, `/healthz` and `/readyz`.
//!
//! `/metrics` serves the Prometheus pipeline's exposition. Encoding runs the
//! instrument callbacks over every series, so it is done once and the body
//! (and its gzip form, made on first demand) is served to every scrape until
//! a snapshot or status changes or the body is [`MAX_BODY_AGE`] old; the age
//! bound keeps the self-metrics (data age, export errors) current. One
//! encode runs at a time, off the async threads; scrapes that arrive during
//! it wait for its result instead of starting their own.
//!
//! Connections are capped, and a client that does not send its request
//! headers within [`HEADER_TIMEOUT`] is dropped, so idle or slow clients
//! cannot starve Prometheus.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::snapshot::Store;
use crate::telemetry::PrometheusPipeline;

/// The longest a cached exposition is served.
pub const MAX_BODY_AGE: Duration = Duration::from_secs(1);
/// Time allowed for a client to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Largest request head accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One encoded exposition.
#[derive(Debug)]
struct Encoded {
    body: Bytes,
    gzip: OnceLock<Bytes>,
    generation: u64,
    made: Instant,
}

/// The cached `/metrics` body.
#[derive(Debug)]
pub struct MetricsCache {
    pipeline: Arc<PrometheusPipeline>,
    store: Arc<Store>,
    current: ArcSwapOption<Encoded>,
    encoding: tokio::sync::Mutex<()>,
    max_age: Duration,
}

impl MetricsCache {
    /// A cache over the pipeline, invalidated by the store's generation.
    pub fn new(
        pipeline: Arc<PrometheusPipeline>,
        store: Arc<Store>,
        max_age: Duration,
    ) -> MetricsCache {
        MetricsCache {
            pipeline,
            store,
            current: ArcSwapOption::empty(),
            encoding: tokio::sync::Mutex::new(()),
            max_age,
        }
    }

    fn fresh(&self) -> Option<Arc<Encoded>> {
        let current = self.current.load_full()?;
        (current.generation == self.store.generation() && current.made.elapsed() < self.max_age)
            .then_some(current)
    }

    async fn get(&self) -> Arc<Encoded> {
        if let Some(hit) = self.fresh() {
            return hit;
        }
        let _turn = self.encoding.lock().await;
        if let Some(hit) = self.fresh() {
            return hit;
        }
        // Read the generation before collecting: a snapshot published while
        // we encode makes this body stale at once.
        let generation = self.store.generation();
        let pipeline = self.pipeline.clone();
        let body = tokio::task::spawn_blocking(move || pipeline.encode()).await.unwrap_or_default();
        let encoded = Arc::new(Encoded {
            body: Bytes::from(body),
            gzip: OnceLock::new(),
            generation,
            made: Instant::now(),
        });
        self.current.store(Some(encoded.clone()));
        encoded
    }

    /// The current exposition, plain.
    pub async fn body(&self) -> Bytes {
        self.get().await.body.clone()
    }
}

/// What the endpoint serves.
#[derive(Debug)]
pub struct Endpoint {
    /// `None` when the Prometheus exporter is disabled.
    pub metrics: Option<MetricsCache>,
    /// For `/readyz`.
    pub store: Arc<Store>,
}

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { max_connections: DEFAULT_MAX_CONNECTIONS }
    }
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(route(&endpoint, req, peer).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
}

async fn route(
    endpoint: &Endpoint,
    req: Request<Incoming>,
    _peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = req.method() == Method::HEAD;
    let mut response = match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let waiting = endpoint.store.not_ready();
            if waiting.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready:\n{}\n", waiting.join("\n")),
                )
            }
        }
        _ => match &endpoint.metrics {
            None => text(
                StatusCode::NOT_FOUND,
                "the Prometheus exporter is off (OTEL_METRICS_EXPORTER or OTEL_SDK_DISABLED)\n",
            ),
            Some(cache) => metrics(cache, &req).await,
        },
    };
    if head {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

async fn metrics(cache: &MetricsCache, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let encoded = cache.get().await;
    let wants_gzip = req
        .headers()
        .get_all(hyper::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            coding.eq_ignore_ascii_case("gzip") && !refused
        });
    let body = if wants_gzip {
        let gz = match encoded.gzip.get() {
            Some(gz) => gz.clone(),
            None => {
                let plain = encoded.body.clone();
                let gz =
                    tokio::task::spawn_blocking(move || gzip(&plain)).await.unwrap_or_default();
                encoded.gzip.get_or_init(|| gz).clone()
            }
        };
        Some(gz)
    } else {
        None
    };
    let mut r = Response::new(Full::new(body.clone().unwrap_or_else(|| encoded.body.clone())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    r.headers_mut().insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if body.is_some() {
        r.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn gzip(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 6),
        flate2::Compression::fast(),
    );
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
