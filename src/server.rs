//! The HTTP endpoint: `/metrics`, `/healthz` and `/readyz`.
//!
//! `/metrics` serves the Prometheus pipeline's exposition. Encoding runs the
//! instrument callbacks over every series, so it is done once and the body
//! (and its gzip form, made on first demand) is served to every scrape until
//! a snapshot or status changes. Once the body is [`MAX_BODY_AGE`] old (or,
//! for large data, [`ENCODE_SHARE`] times as old as its encode took), the
//! next scrape starts a new encode in the background and is served the old
//! body meanwhile, which keeps the self-metrics (data age, export errors)
//! current without making a steady stream of scrapes wait; a body is never
//! served more than twice that old. When the data changed, scrapes wait for
//! the new body. One encode runs at a time, off the async threads.
//!
//! Connections are capped ([`DEFAULT_MAX_CONNECTIONS`]), and a client that
//! does not send its request headers within [`HEADER_TIMEOUT`] is dropped,
//! as is one that does not finish a TLS handshake within
//! [`HANDSHAKE_TIMEOUT`]. Those bounds alone would still let idle clients
//! starve Prometheus: a few hundred connections that send nothing fill the
//! cap, and a new scrape waits in the kernel's queue behind them for a
//! timeout or two. So a new connection never waits for an idle one: when the
//! cap is reached, the connection that has been idle the longest (mid
//! handshake, still sending its headers, or waiting between keep-alive
//! requests) is closed to make room. Only a connection whose request is
//! being handled, from the moment it passed authentication until its
//! response is handed to hyper, is safe from this, and only when every
//! connection is in that state does a new one wait. Prometheus sends its
//! request as soon as it connects, so it is never the longest idle; pushing
//! it out would take more than the whole cap of new connections within that
//! instant, which is a flood no per-connection rule can stop. The cost: a
//! response still being written counts as idle, so under such pressure a
//! slow reader can lose its connection mid-body.
//!
//! With a web configuration file ([`crate::web_config`]), each connection
//! first completes the TLS handshake (checking the client certificate when
//! the file asks for one), and requests other than `/healthz` and
//! `/readyz` need basic-auth credentials when users are configured; a
//! request without good ones gets a bare 401 and nothing else. With basic
//! auth on, `/readyz` gives the number of organizations it waits for but
//! not their names. The file's extra headers go on every answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::snapshot::Store;
use crate::telemetry::PrometheusPipeline;
use crate::web_config::{REALM, WebConfig};

/// Age after which the next scrape starts a new encode in the background;
/// a body is served at most twice this old (see [`ENCODE_SHARE`]).
pub const MAX_BODY_AGE: Duration = Duration::from_secs(1);
/// A body is kept at least this many times as long as making it took, so
/// that under a steady stream of scrapes the background encodes use at
/// most a tenth of one core. Up to about 10,000 series an encode takes
/// well under a tenth of [`MAX_BODY_AGE`] and this changes nothing; at
/// 100,000 one takes about 0.75 s, and re-encoding every second took half
/// the core that served the scrapes (143 scrapes a second against
/// nginx's 199 on the same core).
pub const ENCODE_SHARE: u32 = 10;
/// Time allowed for a client to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Largest request head accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time allowed for a client to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One encoded exposition.
#[derive(Debug)]
struct Encoded {
    body: Bytes,
    gzip: OnceLock<Bytes>,
    generation: u64,
    made: Instant,
    /// How long collecting and encoding it took.
    took: Duration,
}

impl Encoded {
    /// How long this body is served before a scrape asks for the next.
    fn fresh_for(&self, max_age: Duration) -> Duration {
        fresh_for(max_age, self.took)
    }
}

/// [`MAX_BODY_AGE`] (or `max_age`), stretched for a body slow to make.
fn fresh_for(max_age: Duration, took: Duration) -> Duration {
    max_age.max(took.saturating_mul(ENCODE_SHARE))
}

/// The cached `/metrics` body.
///
/// A body made from the current snapshots is served for [`MAX_BODY_AGE`]
/// (longer for a body slow to make, see [`ENCODE_SHARE`]). During as long
/// again a scrape still gets it at once while one background encode makes
/// the next, so a steady stream of scrapes never waits for the periodic
/// refresh of the self-metrics; a scrape that comes later than that
/// (Prometheus every 15 s or more) waits for a fresh body. A served body is
/// therefore at most twice that age old.
/// When the data itself changed (a refresh published or failed), scrapes
/// wait for the new body, so a removed series is never served again.
#[derive(Debug, Clone)]
pub struct MetricsCache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    pipeline: Arc<PrometheusPipeline>,
    store: Arc<Store>,
    current: ArcSwapOption<Encoded>,
    encoding: tokio::sync::Mutex<()>,
    refreshing: std::sync::atomic::AtomicBool,
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
            inner: Arc::new(CacheInner {
                pipeline,
                store,
                current: ArcSwapOption::empty(),
                encoding: tokio::sync::Mutex::new(()),
                refreshing: std::sync::atomic::AtomicBool::new(false),
                max_age,
            }),
        }
    }

    async fn get(&self) -> Arc<Encoded> {
        let inner = &self.inner;
        if let Some(current) = inner.current.load_full()
            && current.generation == inner.store.generation()
            && current.made.elapsed() < current.fresh_for(inner.max_age).saturating_mul(2)
        {
            if current.made.elapsed() >= current.fresh_for(inner.max_age)
                && !inner.refreshing.swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                let cache = self.clone();
                tokio::spawn(async move {
                    cache.inner.encode(false).await;
                    cache.inner.refreshing.store(false, std::sync::atomic::Ordering::Release);
                });
            }
            return current;
        }
        inner.encode(true).await
    }
    /// The current exposition, plain.
    pub async fn body(&self) -> Bytes {
        self.get().await.body.clone()
    }
}

impl CacheInner {
    /// Encodes a new body, one encode at a time. With `only_if_stale`,
    /// returns the body another caller made meanwhile, if it is current.
    async fn encode(&self, only_if_stale: bool) -> Arc<Encoded> {
        let _turn = self.encoding.lock().await;
        if only_if_stale
            && let Some(current) = self.current.load_full()
            && current.generation == self.store.generation()
            && current.made.elapsed() < current.fresh_for(self.max_age)
        {
            return current;
        }
        // Read the generation before collecting: a snapshot published while
        // we encode makes this body stale at once.
        let generation = self.store.generation();
        let pipeline = self.pipeline.clone();
        let started = Instant::now();
        let body = tokio::task::spawn_blocking(move || pipeline.encode()).await.unwrap_or_default();
        let encoded = Arc::new(Encoded {
            body: Bytes::from(body),
            gzip: OnceLock::new(),
            generation,
            made: Instant::now(),
            took: started.elapsed(),
        });
        self.current.store(Some(encoded.clone()));
        encoded
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
    /// Connections open at once. When all are open, a new one takes the
    /// place of the longest idle; it waits only if every one is busy.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { max_connections: DEFAULT_MAX_CONNECTIONS }
    }
}

/// One open connection in the table.
#[derive(Debug)]
struct Open {
    id: u64,
    /// Handling a request: not to be closed to make room.
    busy: bool,
    /// When it last became idle (or was accepted).
    idle_since: Instant,
    /// Fired to close it.
    close: oneshot::Sender<()>,
}

/// The table behind [`Slots`].
#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: Vec<Open>,
}

/// The open connections, capped, and which of them may be closed to make
/// room for a new one.
#[derive(Debug)]
struct Slots {
    max: usize,
    table: Mutex<Table>,
    freed: Notify,
}

/// A connection's place in [`Slots`]; dropping it frees the place.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

/// Marks a connection busy while alive.
#[derive(Debug)]
struct Busy<'a>(&'a Slot);

impl Slots {
    fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots { max: max.max(1), table: Mutex::default(), freed: Notify::new() })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table stays consistent through a panic elsewhere; keep serving.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection, closing the longest-idle one when the
    /// cap is reached; `None` when every open connection is busy.
    fn try_admit(self: &Arc<Self>) -> Option<(Slot, oneshot::Receiver<()>)> {
        let mut table = self.table();
        if table.open.len() >= self.max {
            let (oldest, _) = table
                .open
                .iter()
                .enumerate()
                .filter(|(_, o)| !o.busy)
                .min_by_key(|(_, o)| o.idle_since)?;
            let _ = table.open.swap_remove(oldest).close.send(());
        }
        let id = table.next_id;
        table.next_id += 1;
        let (close, closed) = oneshot::channel();
        table.open.push(Open { id, busy: false, idle_since: Instant::now(), close });
        Some((Slot { slots: self.clone(), id }, closed))
    }

    /// A place for a new connection, waiting while every open one is busy.
    async fn admit(self: &Arc<Self>) -> (Slot, oneshot::Receiver<()>) {
        loop {
            // Register interest before looking, so a place freed in between
            // is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(admitted) = self.try_admit() {
                return admitted;
            }
            freed.await;
        }
    }

    fn set_busy(&self, id: u64, busy: bool) {
        let mut table = self.table();
        if let Some(open) = table.open.iter_mut().find(|o| o.id == id) {
            open.busy = busy;
            if !busy {
                open.idle_since = Instant::now();
                drop(table);
                self.freed.notify_one();
            }
        }
    }
}

impl Slot {
    fn busy(&self) -> Busy<'_> {
        self.slots.set_busy(self.id, true);
        Busy(self)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.slots.set_busy(self.0.id, false);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.slots.table();
        if let Some(at) = table.open.iter().position(|o| o.id == self.id) {
            table.open.swap_remove(at);
        }
        drop(table);
        self.slots.freed.notify_one();
    }
}

/// Serves until `shutdown` turns true, with TLS and basic auth when `web`
/// asks for them.
pub async fn serve(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    limits: ServerLimits,
    web: Option<Arc<WebConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Slots::new(limits.max_connections);
    let tls = web.as_ref().and_then(|w| w.tls()).map(TlsAcceptor::from);
    loop {
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
        let (slot, closed) = tokio::select! {
            admitted = slots.admit() => admitted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let connection =
            Connection { endpoint: endpoint.clone(), web: web.clone(), slot: Arc::new(slot), peer };
        let tls = tls.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = connection.run(stream, tls) => {}
                _ = closed => {
                    tracing::debug!(%peer, "idle connection closed to make room for a new one");
                }
            }
        });
    }
}

/// What one connection's requests need.
#[derive(Clone)]
struct Connection {
    endpoint: Arc<Endpoint>,
    web: Option<Arc<WebConfig>>,
    slot: Arc<Slot>,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let peer = self.peer;
        let Some(tls) = tls else {
            return self.http(TokioIo::new(stream)).await;
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
            Ok(Ok(stream)) => self.http(TokioIo::new(stream)).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn http<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let service = hyper::service::service_fn(move |req| {
            let connection = self.clone();
            async move { Ok::<_, Infallible>(connection.handle(req).await) }
        });
        let result = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .serve_connection(io, service)
            .await;
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection closed with an error");
        }
    }

    /// Authentication, then the route, then the configured headers.
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
        let mut response = match &self.web {
            Some(web) if !probe && !web.authorize(req.headers().get(AUTHORIZATION)).await => {
                unauthorized()
            }
            _ => {
                let _busy = self.slot.busy();
                let hide_names = self.web.as_ref().is_some_and(|w| w.basic_auth());
                route(&self.endpoint, req, self.peer, hide_names).await
            }
        };
        if let Some(web) = &self.web {
            for (name, value) in web.response_headers() {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    }
}

/// The only answer to a request without good credentials.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    let challenge = format!("Basic realm=\"{REALM}\"");
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    r
}

/// Answers one authorized request. `hide_names` keeps organization names
/// out of `/readyz`, for when only `/metrics` is behind a password.
async fn route(
    endpoint: &Endpoint,
    req: Request<Incoming>,
    _peer: SocketAddr,
    hide_names: bool,
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
            } else if hide_names {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: waiting for {} organizations\n", waiting.len()),
                )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_slow_to_make_is_kept_ten_times_as_long_as_it_took() {
        let second = Duration::from_secs(1);
        assert_eq!(fresh_for(second, Duration::from_millis(2)), second);
        assert_eq!(fresh_for(second, Duration::from_millis(100)), second);
        assert_eq!(fresh_for(second, Duration::from_millis(750)), Duration::from_millis(7500));
        assert_eq!(fresh_for(second, Duration::MAX), Duration::MAX);
    }

    fn closed(rx: &mut oneshot::Receiver<()>) -> bool {
        !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    #[test]
    fn a_full_table_closes_the_longest_idle_connection() {
        let slots = Slots::new(2);
        let (a, mut a_closed) = slots.try_admit().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let (_b, mut b_closed) = slots.try_admit().unwrap();
        let (_c, _) = slots.try_admit().expect("room is made");
        assert!(closed(&mut a_closed), "the oldest idle connection goes");
        assert!(!closed(&mut b_closed));
        assert_eq!(slots.table().open.len(), 2);
        drop(a);
        assert_eq!(slots.table().open.len(), 2, "dropping a closed connection frees nothing twice");
    }

    #[test]
    fn a_busy_connection_is_never_closed_to_make_room() {
        let slots = Slots::new(2);
        let (a, mut a_closed) = slots.try_admit().unwrap();
        let (_b, mut b_closed) = slots.try_admit().unwrap();
        let busy = a.busy();
        let (_c, _) = slots.try_admit().unwrap();
        assert!(!closed(&mut a_closed), "busy since before the newcomer");
        assert!(closed(&mut b_closed));
        drop(busy);
        // Idle again, and now the longest idle of the two.
        let (_d, _) = slots.try_admit().unwrap();
        assert!(!closed(&mut a_closed), "a became idle after c was accepted");
    }

    #[tokio::test]
    async fn a_new_connection_waits_only_while_every_slot_is_busy() {
        let slots = Slots::new(1);
        let (a, _) = slots.try_admit().unwrap();
        let busy = a.busy();
        assert!(slots.try_admit().is_none());
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit().await.0.id }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "nothing could be closed");
        drop(busy);
        let id = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("admitted once a slot turned idle")
            .unwrap();
        assert_eq!(id, 1);
    }
}
