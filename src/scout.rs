//! The HTTP client for Docker Scout's metrics endpoint.
//!
//! One [`ScoutClient`] serves every organization. It sends
//! `GET {base}/v1/exporter/org/{org}/metrics` with the bearer token, asks for
//! either text format, accepts gzip, and bounds the connect time, the total
//! time and the body size. Every failure is sorted into one [`Reason`], the
//! label value of `scout_exporter_refresh_errors_total`. The client does not
//! parse the body and does not retry: the refresh loop decides both.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url, redirect};

use crate::parse::Format;
use crate::secret::Token;

/// Why a refresh failed: the `reason` label of the error counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 401: the token is wrong, expired or revoked.
    Unauthorized,
    /// 403: the token's owner may not read this organization.
    Forbidden,
    /// 404: the organization is not enrolled in Scout, or misspelled.
    NotFound,
    /// 429: Scout asked us to slow down.
    RateLimited,
    /// 5xx, or any other status we cannot use.
    ServerError,
    /// The fetch took longer than the configured total time.
    Timeout,
    /// No connection: refused, DNS, TLS, proxy, or connect timeout.
    Connect,
    /// The body was cut short, empty, or not metrics.
    InvalidPayload,
    /// The body was larger than the configured cap.
    TooLarge,
}

impl Reason {
    /// Every reason, in the order the counter lists them.
    pub const ALL: [Reason; 9] = [
        Reason::Unauthorized,
        Reason::Forbidden,
        Reason::NotFound,
        Reason::RateLimited,
        Reason::ServerError,
        Reason::Timeout,
        Reason::Connect,
        Reason::InvalidPayload,
        Reason::TooLarge,
    ];

    /// Every label value, in the order of [`Reason::ALL`].
    pub const ALL_LABELS: [&'static str; 9] = [
        "unauthorized",
        "forbidden",
        "not_found",
        "rate_limited",
        "server_error",
        "timeout",
        "connect",
        "invalid_payload",
        "too_large",
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        Reason::ALL_LABELS[self.index()]
    }

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// What a user should check, for the log line.
    pub fn hint(self) -> &'static str {
        match self {
            Reason::Unauthorized => {
                "check the token: it must be a valid personal or organization access token \
                 created by an owner of the organization"
            }
            Reason::Forbidden => {
                "the token was accepted but may not read this organization: \
                 it must come from an owner of the organization"
            }
            Reason::NotFound => {
                "check the organization name and that the organization is enrolled in Docker Scout"
            }
            Reason::RateLimited => {
                "Scout asked to slow down; the next request waits for Retry-After"
            }
            Reason::ServerError => "Scout answered with an error; retrying with backoff",
            Reason::Timeout => "Scout did not answer in time; consider raising --scout-timeout",
            Reason::Connect => "could not reach Scout; check the network, proxy and --scout-url",
            Reason::InvalidPayload => "Scout's answer was not a complete metrics payload",
            Reason::TooLarge => "the payload exceeded --max-body-size",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed fetch.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct FetchError {
    /// The counter label.
    pub reason: Reason,
    /// What happened, for the log; never holds the token.
    pub detail: String,
    /// For 429: how long Scout asked us to wait.
    pub retry_after: Option<Duration>,
}

impl FetchError {
    /// An error with no `Retry-After`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> FetchError {
        FetchError { reason, detail: detail.into(), retry_after: None }
    }
}

/// A body as Scout sent it.
#[derive(Debug)]
pub struct Fetched {
    /// The decompressed body.
    pub body: Vec<u8>,
    /// The format its `Content-Type` names.
    pub format: Format,
    /// Time from sending the request to the last body byte.
    pub elapsed: Duration,
}

/// How to reach Scout.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Base URL, without the `/v1/...` path.
    pub base_url: Url,
    /// Total time for one fetch, body included.
    pub timeout: Duration,
    /// Largest body read, after decompression.
    pub max_body_bytes: usize,
    /// An explicit proxy for every request; otherwise the `*_PROXY`
    /// variables apply.
    pub proxy: Option<Url>,
}

/// Talks to Scout for every organization.
#[derive(Clone, Debug)]
pub struct ScoutClient {
    http: reqwest::Client,
    settings: ClientSettings,
}

/// Installs the process-wide TLS crypto provider (ring) once.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ScoutClient {
    /// Builds the client. Fails only on an invalid proxy URL or when the TLS
    /// roots cannot be loaded.
    pub fn new(settings: ClientSettings) -> Result<ScoutClient, reqwest::Error> {
        install_crypto_provider();
        let connect_timeout = settings.timeout.min(Duration::from_secs(10));
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .user_agent(concat!("scout-exporter/", env!("CARGO_PKG_VERSION")))
            .gzip(true)
            .connect_timeout(connect_timeout)
            .timeout(settings.timeout)
            .redirect(same_origin_redirects());
        if let Some(proxy) = &settings.proxy {
            let proxy = reqwest::Proxy::all(proxy.as_str())?.no_proxy(reqwest::NoProxy::from_env());
            builder = builder.proxy(proxy);
        }
        Ok(ScoutClient { http: builder.build()?, settings })
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The metrics URL of one organization.
    pub fn metrics_url(&self, org: &str) -> Url {
        let mut url = self.settings.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["v1", "exporter", "org", org, "metrics"]);
        }
        url
    }

    /// Fetches one organization's payload.
    pub async fn fetch(&self, org: &str, token: &Token) -> Result<Fetched, FetchError> {
        let started = Instant::now();
        let work = self.fetch_inner(org, token, started);
        match tokio::time::timeout(self.settings.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::new(
                Reason::Timeout,
                format!(
                    "no complete answer within {}",
                    humantime::format_duration(self.settings.timeout)
                ),
            )),
        }
    }

    async fn fetch_inner(
        &self,
        org: &str,
        token: &Token,
        started: Instant,
    ) -> Result<Fetched, FetchError> {
        let mut auth =
            HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                FetchError::new(
                    Reason::Unauthorized,
                    "the token holds characters not allowed in a header",
                )
            })?;
        auth.set_sensitive(true);
        let response = self
            .http
            .get(self.metrics_url(org))
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, Format::ACCEPT)
            .send()
            .await
            .map_err(classify)?;

        let status = response.status();
        if !status.is_success() {
            return Err(status_error(status, &response));
        }
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let format = Format::from_content_type(content_type.as_deref())
            .map_err(|e| FetchError::new(Reason::InvalidPayload, e.to_string()))?;
        let body = read_capped(response, self.settings.max_body_bytes).await?;
        if body.is_empty() {
            return Err(FetchError::new(Reason::InvalidPayload, "empty body"));
        }
        Ok(Fetched { body, format, elapsed: started.elapsed() })
    }
}

/// Follows a redirect only within the same scheme, host and port, so the
/// token never reaches another origin; at most five hops.
fn same_origin_redirects() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().cloned();
        let same = first.is_some_and(|first| first.origin() == attempt.url().origin());
        if same && attempt.previous().len() <= 5 { attempt.follow() } else { attempt.stop() }
    })
}

fn status_error(status: StatusCode, response: &reqwest::Response) -> FetchError {
    let reason = match status {
        StatusCode::UNAUTHORIZED => Reason::Unauthorized,
        StatusCode::FORBIDDEN => Reason::Forbidden,
        StatusCode::NOT_FOUND => Reason::NotFound,
        StatusCode::TOO_MANY_REQUESTS => Reason::RateLimited,
        _ => Reason::ServerError,
    };
    let detail = if status.is_redirection() {
        let target = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| response.url().join(v).ok())
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|| "an unknown place".to_string());
        format!("HTTP {status}: redirect to {target} not followed, so the token stays with Scout")
    } else {
        format!("HTTP {status}")
    };
    let retry_after = (reason == Reason::RateLimited)
        .then(|| response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()))
        .flatten()
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    FetchError { reason, detail, retry_after }
}

/// Reads `Retry-After`: delay seconds or an HTTP date. Capped at one day.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(Duration::from_secs(24 * 3600)))
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::new(Reason::TooLarge, format!("body exceeds {cap} bytes"));
    let declared = response.content_length();
    if declared.is_some_and(|len| len > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.map_or(64 * 1024, |len| len as usize));
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sorts a transport error into a reason, with its cause chain as detail.
fn classify(err: reqwest::Error) -> FetchError {
    let reason = if err.is_connect() {
        Reason::Connect
    } else if err.is_timeout() {
        Reason::Timeout
    } else if err.is_body() || err.is_decode() {
        Reason::InvalidPayload
    } else {
        Reason::Connect
    };
    let err = err.without_url();
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    if reason == Reason::InvalidPayload {
        detail.push_str(" (body cut short or malformed)");
    }
    FetchError::new(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("999999999", now), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn metrics_url_appends_the_documented_path() {
        let client = ScoutClient::new(ClientSettings {
            base_url: Url::parse("https://api.scout.docker.com").unwrap(),
            timeout: Duration::from_secs(5),
            max_body_bytes: 1024,
            proxy: None,
        })
        .unwrap();
        assert_eq!(
            client.metrics_url("acme").as_str(),
            "https://api.scout.docker.com/v1/exporter/org/acme/metrics"
        );
        let prefixed = ScoutClient::new(ClientSettings {
            base_url: Url::parse("http://127.0.0.1:8080/prefix/").unwrap(),
            ..client.settings().clone()
        })
        .unwrap();
        assert_eq!(
            prefixed.metrics_url("a/b").as_str(),
            "http://127.0.0.1:8080/prefix/v1/exporter/org/a%2Fb/metrics"
        );
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
