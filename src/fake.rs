//! A stand-in for Docker Scout's metrics endpoint, for the demo, the tests
//! and local experiments.
//!
//! It speaks what Docker documents for the real endpoint: `GET
//! /v1/exporter/org/<ORG>/metrics` with `Authorization: Bearer <token>`,
//! 401 for a missing or wrong token, 404 for an organization it does not
//! know, and otherwise 200 with Prometheus text (`text/plain;
//! version=0.0.4`), gzip-compressed when the client accepts it. Tests can
//! queue scripted answers per organization (a status, a stalled or short
//! body, a delay, a redirect) to reproduce Scout's failures. It binds a
//! loopback port and never leaves the machine.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The content type of Prometheus text 0.0.4, as Scout sends it.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics 1.0 text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Produces an organization's payload on each request.
pub type PayloadFn = Arc<dyn Fn() -> (String, Bytes) + Send + Sync>;

/// One scripted answer, used once, in order, before the normal payload.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A status with these headers and an empty body.
    Status(u16, Vec<(String, String)>),
    /// 200 with this content type and body.
    Body(String, Bytes),
    /// 200 that sends this many bytes of the payload, then nothing more.
    Stall(usize),
    /// 200 with a `Content-Length` larger than the bytes sent.
    Short,
    /// The normal payload after a delay.
    Delay(Duration),
    /// 302 to this location.
    Redirect(String),
    /// 200 with a chunked body of valid lines that never ends.
    Endless,
}

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request path.
    pub path: String,
    /// Header names and values, lowercased names.
    pub headers: Vec<(String, String)>,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    /// The value of header `name` (lowercase), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    token: String,
    payloads: HashMap<String, PayloadFn>,
    scripts: HashMap<String, VecDeque<Reply>>,
    seen: Vec<Seen>,
    served: HashMap<String, u64>,
    in_flight: HashMap<String, u64>,
    max_in_flight: HashMap<String, u64>,
}

/// A running fake Scout.
pub struct FakeScout {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeScout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeScout").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for FakeScout {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeScout {
    /// Starts on a free loopback port, accepting `token`.
    pub async fn start(token: &str) -> std::io::Result<FakeScout> {
        Self::start_on(("127.0.0.1", 0), token).await
    }

    /// Starts on `addr`, accepting `token`.
    pub async fn start_on(
        addr: impl tokio::net::ToSocketAddrs,
        token: &str,
    ) -> std::io::Result<FakeScout> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State { token: token.to_string(), ..State::default() }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FakeScout { addr, state, task })
    }

    /// The base URL to give the exporter as `--scout-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves a fixed Prometheus-text payload for `org`.
    pub fn set_payload(&self, org: &str, body: impl Into<String>) {
        self.set_payload_as(org, PROMETHEUS_TEXT, body);
    }

    /// Serves a fixed payload with this content type for `org`.
    pub fn set_payload_as(&self, org: &str, content_type: &str, body: impl Into<String>) {
        let (ct, body) = (content_type.to_string(), Bytes::from(body.into()));
        self.set_payload_fn(org, Arc::new(move || (ct.clone(), body.clone())));
    }

    /// Computes the payload for `org` on each request.
    pub fn set_payload_fn(&self, org: &str, payload: PayloadFn) {
        self.state().payloads.insert(org.to_string(), payload);
    }

    /// Queues scripted answers for `org`.
    pub fn push(&self, org: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state().scripts.entry(org.to_string()).or_default().extend(replies);
    }

    /// Changes the accepted token (a rotation).
    pub fn set_token(&self, token: &str) {
        self.state().token = token.to_string();
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// Requests answered for `org` (any status).
    pub fn requests_for(&self, org: &str) -> u64 {
        self.state().served.get(org).copied().unwrap_or(0)
    }

    /// The most requests for `org` that were being answered at once.
    pub fn max_in_flight(&self, org: &str) -> u64 {
        self.state().max_in_flight.get(org).copied().unwrap_or(0)
    }

    /// Drops the scripted answers for `org` not yet used.
    pub fn clear_script(&self, org: &str) {
        self.state().scripts.remove(org);
    }

    /// Scripted answers for `org` not yet used.
    pub fn pending(&self, org: &str) -> usize {
        self.state().scripts.get(org).map_or(0, VecDeque::len)
    }
}

type FakeResponse = Response<FakeBody>;

async fn answer(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<FakeResponse, Infallible> {
    let org = req
        .uri()
        .path()
        .strip_prefix("/v1/exporter/org/")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .map(str::to_string);
    let response = respond(state.clone(), req).await;
    if let Some(org) = org {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.in_flight.get_mut(&org) {
            *n = n.saturating_sub(1);
        }
    }
    response
}

async fn respond(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<FakeResponse, Infallible> {
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let accepts_gzip = headers
        .iter()
        .any(|(k, v)| k == "accept-encoding" && v.split(',').any(|e| e.trim().starts_with("gzip")));
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);

    let (org, payload, script, token) = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.seen.push(Seen { path: path.clone(), headers, at: Instant::now() });
        let org = path
            .strip_prefix("/v1/exporter/org/")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .map(str::to_string);
        let org = match org {
            Some(o) if req.method() == hyper::Method::GET => o,
            _ => return Ok(plain(StatusCode::NOT_FOUND, "not found\n")),
        };
        *s.served.entry(org.clone()).or_default() += 1;
        let now = {
            let n = s.in_flight.entry(org.clone()).or_default();
            *n += 1;
            *n
        };
        let max = s.max_in_flight.entry(org.clone()).or_default();
        *max = (*max).max(now);
        let script = s.scripts.get_mut(&org).and_then(VecDeque::pop_front);
        (org.clone(), s.payloads.get(&org).cloned(), script, s.token.clone())
    };

    if auth.as_deref() != Some(&format!("Bearer {token}")) {
        let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
        r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return Ok(r);
    }
    let Some(payload) = payload else {
        return Ok(plain(StatusCode::NOT_FOUND, &format!("organization {org} is not enrolled\n")));
    };
    let (content_type, body) = payload();

    match script {
        None => Ok(full(content_type, body, accepts_gzip)),
        Some(Reply::Status(code, extra)) => {
            let mut r =
                plain(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "");
            for (k, v) in extra {
                if let (Ok(k), Ok(v)) =
                    (hyper::header::HeaderName::try_from(k), HeaderValue::try_from(v))
                {
                    r.headers_mut().insert(k, v);
                }
            }
            Ok(r)
        }
        Some(Reply::Body(ct, b)) => Ok(full(ct, b, false)),
        Some(Reply::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(full(content_type, body, accepts_gzip))
        }
        Some(Reply::Redirect(location)) => {
            let mut r = plain(StatusCode::FOUND, "");
            if let Ok(v) = HeaderValue::try_from(location) {
                r.headers_mut().insert("location", v);
            }
            Ok(r)
        }
        Some(Reply::Stall(after)) => {
            let head = body.slice(..after.min(body.len()));
            let mut r = Response::new(FakeBody::partial(head, true));
            r.headers_mut().insert(CONTENT_TYPE, header(&content_type));
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            Ok(r)
        }
        Some(Reply::Endless) => {
            let mut r = Response::new(FakeBody::endless());
            r.headers_mut().insert(CONTENT_TYPE, header(&content_type));
            Ok(r)
        }
        Some(Reply::Short) => {
            let half = body.slice(..body.len() / 2);
            let mut r = Response::new(FakeBody::partial(half, false));
            r.headers_mut().insert(CONTENT_TYPE, header(&content_type));
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            Ok(r)
        }
    }
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

fn plain(status: StatusCode, text: &str) -> FakeResponse {
    let mut r = Response::new(FakeBody::full(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn full(content_type: String, body: Bytes, gzip: bool) -> FakeResponse {
    let (body, encoded) = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(&body);
        (Bytes::from(enc.finish().unwrap_or_default()), true)
    } else {
        (body, false)
    };
    let mut r = Response::new(FakeBody::full(body));
    r.headers_mut().insert(CONTENT_TYPE, header(&content_type));
    if encoded {
        r.headers_mut().insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    r
}

/// A body that sends one chunk, then ends or stalls forever.
pub struct FakeBody {
    chunk: Option<Bytes>,
    stall: bool,
    exact: bool,
    repeat: Option<Bytes>,
    /// A pause after the chunk, so it is flushed before the body ends.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl FakeBody {
    fn full(bytes: Bytes) -> FakeBody {
        FakeBody { chunk: Some(bytes), stall: false, exact: true, repeat: None, pause: None }
    }

    fn endless() -> FakeBody {
        let line = "scout_endless{streamName=\"s\",severity=\"LOW\"} 1\n".repeat(1024);
        FakeBody {
            chunk: None,
            stall: false,
            exact: false,
            repeat: Some(Bytes::from(line)),
            pause: None,
        }
    }

    fn partial(bytes: Bytes, stall: bool) -> FakeBody {
        let pause = (!stall).then(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
        FakeBody { chunk: Some(bytes), stall, exact: false, repeat: None, pause }
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(chunk) = self.chunk.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        if let Some(repeat) = &self.repeat {
            return Poll::Ready(Some(Ok(Frame::data(repeat.clone()))));
        }
        if self.stall { Poll::Pending } else { Poll::Ready(None) }
    }

    fn is_end_stream(&self) -> bool {
        self.chunk.is_none() && !self.stall && self.repeat.is_none() && self.pause.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.chunk {
            Some(c) if self.exact => hyper::body::SizeHint::with_exact(c.len() as u64),
            _ => hyper::body::SizeHint::default(),
        }
    }
}
