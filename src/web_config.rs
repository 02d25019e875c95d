//! The web configuration file (`--web.config.file`): TLS, client certificates
//! and basic auth for the HTTP endpoint, in the Prometheus exporter-toolkit
//! format that every official exporter reads.
//!
//! This module owns reading and checking that file and deciding whether a
//! request's `Authorization` header is good. It does not serve, route or log:
//! [`crate::server`] does the handshakes and answers, and nothing here may
//! print a password, a hash or a private key (the [`Debug`] of [`WebConfig`]
//! shows only what is switched on).
//!
//! | key | what we do with it |
//! |---|---|
//! | `basic_auth_users` | user name to bcrypt hash; empty means no basic auth |
//! | `tls_server_config:` | |
//! | `cert_file`, `key_file` | served certificate chain and key (inline: `cert`, `key`) |
//! | `client_auth_type` | `NoClientCert` (default) or a `Verify` mode, see below |
//! | `client_ca_file` | CAs that client certificates must chain to (inline: `client_ca`) |
//! | `min_version`, `max_version` | `TLS12` (default minimum) or `TLS13` (default maximum) |
//! | `cipher_suites` | TLS 1.2 suites by Go name; TLS 1.3 names change nothing, as in Go |
//! | `prefer_server_cipher_suites` | default true: the server's order wins |
//! | `curve_preferences` | `X25519`, `CurveP256`, `CurveP384`, in order of preference |
//! | `http_server_config:` | |
//! | `headers` | the five security headers the toolkit allows, on every answer |
//! | `http2` | accepted and ignored: the endpoint speaks HTTP/1.1 only |
//!
//! `VerifyClientCertIfGiven` checks a certificate when the client sends one;
//! `RequireAndVerifyClientCert` also refuses clients that send none. Both
//! need `client_ca_file`; a client CA with `NoClientCert` is an error, since
//! nothing would be checked against it.
//!
//! Relative file names resolve against the folder of the configuration file,
//! as the toolkit does. Unknown keys are errors, as in the toolkit, and so is
//! every setting we cannot honour, so that a file never silently protects
//! less than it says: `TLS10` and `TLS11` (rustls speaks 1.2 and 1.3 only),
//! `RequestClientCert` and `RequireAnyClientCert` (they accept any
//! certificate unchecked, which protects nothing), `client_allowed_sans` and
//! `rate_limit` (not implemented), `CurveP521` and non-AEAD cipher suites
//! (not in our TLS library).
//!
//! Which paths need credentials: `/metrics` and every unknown path do.
//! `/healthz` and `/readyz` do not, so Kubernetes probes keep working without
//! a password in the pod spec; they reveal no more than a TCP probe and the
//! readiness bit, because with basic auth on `/readyz` does not name the
//! organizations it waits for. This is a deliberate difference from the
//! toolkit, which guards every path. Client certificates are checked during
//! the TLS handshake, before any path is read, so `RequireAndVerifyClientCert`
//! guards the probes too: use TCP probes there.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10). A successful
//! check is remembered, per user, as a salted SHA-256 of the password, so a
//! scrape every few seconds pays it once rather than every time. Failures are
//! never remembered: each guess costs a full bcrypt run, and only one run
//! happens at a time, so a flood of guesses holds one core at most. An
//! unknown user name runs bcrypt against a dummy hash, so the answer time
//! does not tell which names exist.
//!
//! Known shortcoming: the file is read once, at start. The toolkit re-reads
//! it on every request, so rotated certificates are picked up; here a new
//! certificate needs a restart.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hyper::header::{HeaderName, HeaderValue};
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use serde::Deserialize;

/// The realm sent in `WWW-Authenticate` with every 401.
pub const REALM: &str = "scout-exporter";

/// Why the web configuration file cannot be used. Each message starts with
/// the file and names the key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebConfigError {
    /// The configuration file itself could not be read.
    #[error("web config file {}: cannot read it: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape: an unknown key, a wrong
    /// type. The message comes from the YAML reader and names the key.
    #[error("web config file {}: {message}", path.display())]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// What the YAML reader said, with the key and line.
        message: String,
    },
    /// A key holds a value scout-exporter cannot use.
    #[error("web config file {}: {key}: {problem}", path.display())]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The key, dotted from the top (`tls_server_config.min_version`).
        key: String,
        /// What is wrong and, where there is one, the fix.
        problem: String,
    },
    /// A file named by a key could not be read or holds nothing usable.
    #[error("web config file {}: {key} {}: {problem}", path.display(), file.display())]
    File {
        /// The configuration file.
        path: PathBuf,
        /// The key that names the file.
        key: String,
        /// The file, resolved against the configuration file's folder.
        file: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

/// The file as written. Every key of the toolkit format appears here, so
/// that one we do not support gets a clear refusal rather than "unknown".
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    tls_server_config: Option<TlsFormat>,
    http_server_config: Option<HttpFormat>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFormat {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

impl TlsFormat {
    fn is_empty(&self) -> bool {
        self.cert.is_none()
            && self.key.is_none()
            && self.client_ca.is_none()
            && self.cert_file.is_none()
            && self.key_file.is_none()
            && self.client_auth_type.is_none()
            && self.client_ca_file.is_none()
            && self.client_allowed_sans.is_none()
            && self.min_version.is_none()
            && self.max_version.is_none()
            && self.cipher_suites.is_none()
            && self.prefer_server_cipher_suites.is_none()
            && self.curve_preferences.is_none()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpFormat {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// A loaded and checked web configuration.
pub struct WebConfig {
    path: PathBuf,
    tls: Option<Arc<ServerConfig>>,
    auth: Option<Arc<BasicAuth>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for WebConfig {
    // Only what is switched on: the users' hashes and the key stay out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .field("basic_auth_users", &self.auth.as_ref().map_or(0, |a| a.users.len()))
            .field("headers", &self.headers.len())
            .finish()
    }
}

impl WebConfig {
    /// Reads and checks the file at `path`; file names inside it resolve
    /// against its folder.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| WebConfigError::Read { path: path.to_path_buf(), source })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        WebConfig::parse(&text, path, dir)
    }

    /// Checks `text` as if read from `path`, resolving file names against
    /// `dir`.
    fn parse(text: &str, path: &Path, dir: &Path) -> Result<WebConfig, WebConfigError> {
        let at = Context { path, dir };
        // An empty file (or one of comments only) turns nothing on.
        let file: FileFormat = serde_yaml_ng::from_str::<Option<FileFormat>>(text)
            .map_err(|e| WebConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
            .unwrap_or_default();
        if file.rate_limit.is_some() {
            return Err(at.invalid(
                "rate_limit",
                "not supported by scout-exporter; remove it (the endpoint caps connections and \
                 times out idle clients on its own)",
            ));
        }
        let tls = match file.tls_server_config {
            Some(tls) if !tls.is_empty() => Some(Arc::new(tls_config(&at, tls)?)),
            _ => None,
        };
        let headers = match file.http_server_config {
            Some(http) => response_headers(&at, http)?,
            None => Vec::new(),
        };
        let auth = match file.basic_auth_users {
            Some(users) if !users.is_empty() => Some(Arc::new(BasicAuth::new(&at, users)?)),
            _ => None,
        };
        Ok(WebConfig { path: path.to_path_buf(), tls, auth, headers })
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The TLS settings, when the endpoint is to serve TLS.
    pub fn tls(&self) -> Option<Arc<ServerConfig>> {
        self.tls.clone()
    }

    /// Whether requests need basic-auth credentials.
    pub fn basic_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Headers to add to every answer.
    pub fn response_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// Whether a request with this `Authorization` header may proceed. True
    /// when basic auth is off; otherwise the header must carry a configured
    /// user and that user's password. May take one bcrypt run, off the async
    /// threads.
    pub async fn authorize(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(auth) = &self.auth else { return true };
        let Some((user, password)) = authorization.and_then(|v| basic_credentials(v.as_bytes()))
        else {
            return false;
        };
        auth.check(&user, password).await
    }

    /// How many bcrypt runs [`WebConfig::authorize`] has made: remembered
    /// successes do not count.
    pub fn bcrypt_runs(&self) -> u64 {
        self.auth.as_ref().map_or(0, |a| a.runs.load(Ordering::Relaxed))
    }
}

/// PEM text and where it came from, for error messages.
struct Pem {
    /// The key that gave it (`tls_server_config.cert_file`).
    key: String,
    /// The file, when it came from one rather than inline.
    file: Option<PathBuf>,
    bytes: Vec<u8>,
}

/// The configuration file and its folder, for resolving names and errors.
struct Context<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl Context<'_> {
    fn invalid(&self, key: &str, problem: impl Into<String>) -> WebConfigError {
        WebConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    fn file_error(&self, key: &str, file: &Path, problem: impl Into<String>) -> WebConfigError {
        WebConfigError::File {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            file: file.to_path_buf(),
            problem: problem.into(),
        }
    }

    /// The PEM text of `file_key` (a file name) or of `inline_key`; at most
    /// one may be set. `Ok(None)` when neither is.
    fn pem(
        &self,
        file_key: &str,
        file: Option<PathBuf>,
        inline_key: &str,
        inline: Option<String>,
    ) -> Result<Option<Pem>, WebConfigError> {
        match (file, inline) {
            (Some(_), Some(_)) => {
                Err(self.invalid(file_key, format!("set {file_key} or {inline_key}, not both")))
            }
            (Some(file), None) => {
                let full = self.dir.join(&file);
                let bytes = std::fs::read(&full).map_err(|e| {
                    self.file_error(file_key, &full, format!("cannot read it: {e}"))
                })?;
                Ok(Some(Pem { key: file_key.to_string(), file: Some(full), bytes }))
            }
            (None, Some(text)) => {
                Ok(Some(Pem { key: inline_key.to_string(), file: None, bytes: text.into_bytes() }))
            }
            (None, None) => Ok(None),
        }
    }

    /// An error about PEM material, naming the file when it came from one.
    fn pem_error(&self, pem: &Pem, problem: impl Into<String>) -> WebConfigError {
        match &pem.file {
            Some(file) => self.file_error(&pem.key, file, problem),
            None => self.invalid(&pem.key, problem),
        }
    }

    fn certificates(&self, pem: &Pem) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
        let certs = CertificateDer::pem_slice_iter(&pem.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.pem_error(pem, format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(self.pem_error(pem, "holds no PEM certificate"));
        }
        Ok(certs)
    }
}

const TLS_KEY: &str = "tls_server_config";

/// Builds the rustls settings from the `tls_server_config` section.
fn tls_config(at: &Context<'_>, tls: TlsFormat) -> Result<ServerConfig, WebConfigError> {
    if tls.client_allowed_sans.is_some() {
        return Err(at.invalid(
            "tls_server_config.client_allowed_sans",
            "not supported by scout-exporter; remove it and issue client certificates from a \
             CA that signs only for Prometheus",
        ));
    }
    let cert =
        at.pem("tls_server_config.cert_file", tls.cert_file, "tls_server_config.cert", tls.cert)?;
    let key =
        at.pem("tls_server_config.key_file", tls.key_file, "tls_server_config.key", tls.key)?;
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, _) => {
            return Err(at.invalid(
                "tls_server_config.cert_file",
                "missing: TLS needs cert_file and key_file",
            ));
        }
        (_, None) => {
            return Err(at.invalid(
                "tls_server_config.key_file",
                "missing: TLS needs cert_file and key_file",
            ));
        }
    };
    let chain = at.certificates(&cert)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key.bytes)
        .map_err(|e| at.pem_error(&key, format!("no usable PEM private key: {e}")))?;

    let min = version(at, "tls_server_config.min_version", tls.min_version.as_deref(), 12)?;
    let max = version(at, "tls_server_config.max_version", tls.max_version.as_deref(), 13)?;
    if min > max {
        return Err(at.invalid(
            "tls_server_config.min_version",
            format!("TLS{min} is above max_version TLS{max}"),
        ));
    }
    let versions: Vec<&'static SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, v)| v)
            .collect();

    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = &tls.cipher_suites {
        provider.cipher_suites = cipher_suites(at, names)?;
    }
    if let Some(names) = &tls.curve_preferences {
        provider.kx_groups = curves(at, names)?;
    }
    let provider = Arc::new(provider);

    let ca = at.pem(
        "tls_server_config.client_ca_file",
        tls.client_ca_file,
        "tls_server_config.client_ca",
        tls.client_ca,
    )?;
    let mode = tls.client_auth_type.as_deref().unwrap_or("");
    let mandatory = match mode {
        "" | "NoClientCert" => None,
        "VerifyClientCertIfGiven" => Some(false),
        "RequireAndVerifyClientCert" => Some(true),
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(at.invalid(
                "tls_server_config.client_auth_type",
                format!(
                    "{mode} accepts any client certificate without checking it, which protects \
                     nothing; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with \
                     client_ca_file"
                ),
            ));
        }
        other => {
            return Err(at.invalid(
                "tls_server_config.client_auth_type",
                format!(
                    "unknown value `{other}`; expected NoClientCert, VerifyClientCertIfGiven or \
                     RequireAndVerifyClientCert"
                ),
            ));
        }
    };

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| at.invalid(TLS_KEY, format!("no usable TLS settings: {e}")))?;
    let builder = match (mandatory, ca) {
        (None, None) => builder.with_no_client_auth(),
        (None, Some(ca)) => {
            return Err(at.invalid(
                &ca.key,
                "set, but client_auth_type is NoClientCert, so no client certificate would be \
                 checked; set client_auth_type: RequireAndVerifyClientCert",
            ));
        }
        (Some(_), None) => {
            return Err(at.invalid(
                "tls_server_config.client_ca_file",
                format!(
                    "missing: client_auth_type {mode} needs the CA that signs client certificates"
                ),
            ));
        }
        (Some(mandatory), Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in at.certificates(&ca)? {
                roots.add(cert).map_err(|e| at.pem_error(&ca, format!("not a usable CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mandatory { verifier } else { verifier.allow_unauthenticated() };
            let verifier =
                verifier.build().map_err(|e| at.pem_error(&ca, format!("not a usable CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|e| at.pem_error(&key, format!("does not fit the certificate: {e}")))?;
    config.ignore_client_order = tls.prefer_server_cipher_suites.unwrap_or(true);
    // Only HTTP/1.1 is served; saying so lets a client that prefers h2 fall back at once.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `TLS12` → 12. `default` when unset.
fn version(
    at: &Context<'_>,
    key: &str,
    value: Option<&str>,
    default: u8,
) -> Result<u8, WebConfigError> {
    match value {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(old @ ("TLS10" | "TLS11")) => Err(at.invalid(
            key,
            format!(
                "{old} is not supported: scout-exporter speaks TLS 1.2 and 1.3 only; use TLS12"
            ),
        )),
        Some(other) => {
            Err(at.invalid(key, format!("unknown version `{other}`; expected TLS12 or TLS13")))
        }
    }
}

/// The TLS 1.2 suites named, in the order given, followed by every TLS 1.3
/// suite. Go ignores this list for TLS 1.3, and so do we.
fn cipher_suites(
    at: &Context<'_>,
    names: &[String],
) -> Result<Vec<SupportedCipherSuite>, WebConfigError> {
    let tls12: [(&str, SupportedCipherSuite); 6] = [
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    let tls13 =
        ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];
    let mut chosen = Vec::new();
    for name in names {
        // Go also knows the two ChaCha suites without their `_SHA256` tail.
        let full = if name.ends_with("CHACHA20_POLY1305") {
            format!("{name}_SHA256")
        } else {
            name.clone()
        };
        if let Some((_, suite)) = tls12.iter().find(|(n, _)| *n == full) {
            if !chosen.contains(suite) {
                chosen.push(*suite);
            }
        } else if !tls13.contains(&name.as_str()) {
            let known: Vec<&str> = tls12.iter().map(|(n, _)| *n).collect();
            return Err(at.invalid(
                "tls_server_config.cipher_suites",
                format!("`{name}` is not supported; choose from {}", known.join(", ")),
            ));
        }
    }
    chosen.extend([
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ]);
    Ok(chosen)
}

/// Key-exchange groups by their Go names, in preference order.
fn curves(
    at: &Context<'_>,
    names: &[String],
) -> Result<Vec<&'static dyn SupportedKxGroup>, WebConfigError> {
    let mut chosen: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    for name in names {
        let group: &'static dyn SupportedKxGroup = match name.as_str() {
            "X25519" => kx_group::X25519,
            "CurveP256" => kx_group::SECP256R1,
            "CurveP384" => kx_group::SECP384R1,
            other => {
                return Err(at.invalid(
                    "tls_server_config.curve_preferences",
                    format!("`{other}` is not supported; choose from X25519, CurveP256, CurveP384"),
                ));
            }
        };
        if !chosen.iter().any(|g| g.name() == group.name()) {
            chosen.push(group);
        }
    }
    if chosen.is_empty() {
        return Err(at.invalid("tls_server_config.curve_preferences", "is empty; name a curve"));
    }
    Ok(chosen)
}

/// The headers `http_server_config.headers` may set, as the toolkit allows.
const ALLOWED_HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

fn response_headers(
    at: &Context<'_>,
    http: HttpFormat,
) -> Result<Vec<(HeaderName, HeaderValue)>, WebConfigError> {
    // `http2` is accepted so that toolkit files load; HTTP/1.1 serves scrapes equally well.
    let _ = http.http2;
    let mut out = Vec::new();
    for (name, value) in http.headers.unwrap_or_default() {
        let key = format!("http_server_config.headers.{name}");
        let Some(known) = ALLOWED_HEADERS.iter().find(|h| h.eq_ignore_ascii_case(&name)) else {
            return Err(at.invalid(
                &key,
                format!("cannot be set; allowed are {}", ALLOWED_HEADERS.join(", ")),
            ));
        };
        let value = value.trim();
        // Blank means unset, as in the toolkit.
        if value.is_empty() {
            continue;
        }
        let allowed: &[&str] = match *known {
            "X-Frame-Options" => &["deny", "sameorigin"],
            "X-Content-Type-Options" => &["nosniff"],
            _ => &[],
        };
        if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(value)) {
            return Err(
                at.invalid(&key, format!("`{value}` is not allowed; use {}", allowed.join(" or ")))
            );
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| at.invalid(&key, "is not a valid header value"))?;
        let name = HeaderName::from_bytes(known.as_bytes())
            .map_err(|_| at.invalid(&key, "is not a valid header name"))?;
        out.push((name, value));
    }
    Ok(out)
}

/// One configured user.
struct User {
    name: Box<[u8]>,
    hash: String,
}

/// bcrypt runs allowed at once. One keeps a flood of guesses to one core
/// of the two the exporter is sized for.
const BCRYPT_AT_ONCE: usize = 1;

/// The configured users and the memory of successful checks.
struct BasicAuth {
    users: Vec<User>,
    /// Highest cost among the users' hashes, for the dummy hash.
    cost: u32,
    /// A hash to verify against when the user is unknown, made on first
    /// need so that start-up does not pay for it.
    dummy: OnceLock<String>,
    /// Per user, the digest of the last password that passed bcrypt.
    verified: Mutex<Vec<Option<[u8; 32]>>>,
    /// Secret salt of those digests, fresh each run.
    salt: [u8; 32],
    bcrypt_turn: tokio::sync::Semaphore,
    runs: AtomicU64,
}

impl BasicAuth {
    fn new(at: &Context<'_>, users: BTreeMap<String, String>) -> Result<BasicAuth, WebConfigError> {
        let mut cost = 0;
        let mut out = Vec::with_capacity(users.len());
        for (name, hash) in users {
            let key = format!("basic_auth_users.{name}");
            if name.contains(':') {
                return Err(at.invalid(&key, "a user name cannot contain `:`"));
            }
            let parts: bcrypt::HashParts = hash.parse().map_err(|e| {
                at.invalid(&key, format!("not a bcrypt hash ({e}); make one with htpasswd -nBC 10"))
            })?;
            if !(4..=31).contains(&parts.get_cost()) {
                return Err(at.invalid(
                    &key,
                    format!("bcrypt cost {} is outside 4 to 31", parts.get_cost()),
                ));
            }
            cost = cost.max(parts.get_cost());
            out.push(User { name: name.into_bytes().into_boxed_slice(), hash });
        }
        let mut salt = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut salt)
            .map_err(|_| at.invalid("basic_auth_users", "no secure random numbers available"))?;
        Ok(BasicAuth {
            verified: Mutex::new(vec![None; out.len()]),
            users: out,
            cost,
            dummy: OnceLock::new(),
            salt,
            bcrypt_turn: tokio::sync::Semaphore::new(BCRYPT_AT_ONCE),
            runs: AtomicU64::new(0),
        })
    }

    /// The index of `name`, comparing with every user in constant time
    /// so the answer time does not depend on where a name differs.
    fn find(&self, name: &[u8]) -> Option<usize> {
        let mut found = None;
        for (i, user) in self.users.iter().enumerate() {
            if constant_time_eq(&user.name, name) {
                found = Some(i);
            }
        }
        found
    }

    fn digest(&self, password: &[u8]) -> [u8; 32] {
        let mut context = sha256().start();
        context.update(&self.salt);
        context.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }

    async fn check(self: &Arc<Self>, user: &[u8], password: Vec<u8>) -> bool {
        let index = self.find(user);
        let digest = self.digest(&password);
        if let Some(i) = index {
            let remembered = self.verified.lock().unwrap_or_else(|e| e.into_inner())[i];
            if remembered.is_some_and(|r| constant_time_eq(&r, &digest)) {
                return true;
            }
        }
        let Ok(_turn) = self.bcrypt_turn.acquire().await else { return false };
        let this = self.clone();
        let passed = tokio::task::spawn_blocking(move || {
            this.runs.fetch_add(1, Ordering::Relaxed);
            let hash = match index {
                Some(i) => this.users[i].hash.as_str(),
                None => this
                    .dummy
                    .get_or_init(|| bcrypt::hash(b"no such user", this.cost).unwrap_or_default()),
            };
            // bcrypt runs for unknown users too, so both take the same time.
            let matches = bcrypt::verify(&password, hash).unwrap_or(false);
            matches && index.is_some()
        })
        .await
        .unwrap_or(false);
        if let (true, Some(i)) = (passed, index) {
            self.verified.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(digest);
        }
        passed
    }
}

/// SHA-256 from the TLS library already linked in.
fn sha256() -> &'static dyn rustls::crypto::hash::Hash {
    let Some(suite) = cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() else {
        unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite")
    };
    suite.common.hash_provider
}

/// Equality whose time depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// User name and password from `Basic <base64>`.
fn basic_credentials(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64_decode(rest.trim_ascii())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Standard base64 with optional padding; `None` on anything else.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let input = input.strip_suffix(b"==").or_else(|| input.strip_suffix(b"=")).unwrap_or(input);
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with a self-signed `server.crt`/`server.key` and `ca.crt`.
    fn certs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        dir
    }

    fn load(dir: &Path, yaml: &str) -> Result<WebConfig, WebConfigError> {
        let path = dir.join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        WebConfig::load(&path)
    }

    fn error(dir: &Path, yaml: &str) -> String {
        match load(dir, yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    /// A cost-4 hash: the lowest bcrypt allows, so tests stay fast.
    fn hash(password: &str) -> String {
        bcrypt::hash(password, 4).unwrap()
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        let plain = format!("{user}:{password}");
        HeaderValue::from_str(&format!("Basic {}", base64_encode(plain.as_bytes()))).unwrap()
    }

    fn base64_encode(data: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn an_empty_file_turns_nothing_on() {
        let dir = tempfile::tempdir().unwrap();
        for empty in ["", "\n", "# all commented out\n# basic_auth_users:\n"] {
            let config = load(dir.path(), empty).unwrap();
            assert!(config.tls().is_none());
            assert!(!config.basic_auth());
        }
        let config = load(dir.path(), "tls_server_config: {}\nbasic_auth_users: {}\n").unwrap();
        assert!(config.tls().is_none());
        assert!(!config.basic_auth());
    }

    #[test]
    fn tls_files_resolve_against_the_config_folder() {
        let dir = certs();
        let yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
        // Loaded from elsewhere: the names must still find the files beside it.
        let config = load(dir.path(), yaml).unwrap();
        let tls = config.tls().expect("TLS is on");
        assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(tls.ignore_client_order);
    }

    #[test]
    fn inline_pem_works_like_files() {
        let dir = certs();
        let cert = std::fs::read_to_string(dir.path().join("server.crt")).unwrap();
        let key = std::fs::read_to_string(dir.path().join("server.key")).unwrap();
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        let yaml =
            format!("tls_server_config:\n  cert: |\n{}  key: |\n{}", indent(&cert), indent(&key));
        assert!(load(dir.path(), &yaml).unwrap().tls().is_some());
        let both = format!("{yaml}  cert_file: server.crt\n");
        let e = error(dir.path(), &both);
        assert!(e.contains("set tls_server_config.cert_file or tls_server_config.cert"), "{e}");
    }

    #[test]
    fn every_error_names_the_file_and_the_key() {
        let dir = certs();
        let file = dir.path().join("web.yml").display().to_string();
        let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
        let cases: Vec<(String, &[&str])> = vec![
            ("unknown_key: 1\n".into(), &["unknown field `unknown_key`"]),
            (format!("{tls}  cert_fil: x\n"), &["unknown field `cert_fil`"]),
            (
                "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n".into(),
                &["tls_server_config.cert_file", "missing.crt", "cannot read"],
            ),
            (
                "tls_server_config:\n  key_file: server.key\n".into(),
                &["tls_server_config.cert_file", "missing"],
            ),
            (
                "tls_server_config:\n  cert_file: server.crt\n".into(),
                &["tls_server_config.key_file", "missing"],
            ),
            (
                "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(),
                &["tls_server_config.cert_file", "no PEM certificate"],
            ),
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n".into(),
                &["tls_server_config.key_file", "private key"],
            ),
            (format!("{tls}  min_version: TLS10\n"), &["min_version", "TLS10 is not supported"]),
            (format!("{tls}  min_version: TLS11\n"), &["min_version", "TLS11 is not supported"]),
            (format!("{tls}  max_version: TLS14\n"), &["max_version", "unknown version `TLS14`"]),
            (
                format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"),
                &["min_version", "TLS13 is above max_version TLS12"],
            ),
            (
                format!(
                    "{tls}  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n"
                ),
                &["client_auth_type", "protects nothing"],
            ),
            (format!("{tls}  client_auth_type: Sometimes\n"), &["unknown value `Sometimes`"]),
            (
                format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
                &["tls_server_config.client_ca_file", "missing"],
            ),
            (
                format!("{tls}  client_ca_file: ca.crt\n"),
                &["tls_server_config.client_ca_file", "NoClientCert"],
            ),
            (format!("{tls}  client_allowed_sans: [a]\n"), &["client_allowed_sans"]),
            (
                format!("{tls}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"),
                &["cipher_suites", "TLS_RSA_WITH_AES_128_CBC_SHA"],
            ),
            (
                format!("{tls}  curve_preferences: [CurveP521]\n"),
                &["curve_preferences", "CurveP521"],
            ),
            ("rate_limit:\n  interval: 1s\n  burst: 2\n".into(), &["rate_limit", "not supported"]),
            (
                "http_server_config:\n  headers:\n    X-Custom: 1\n".into(),
                &["http_server_config.headers.X-Custom", "cannot be set"],
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".into(),
                &["X-Frame-Options", "`allow` is not allowed"],
            ),
            ("http_server_config:\n  http3: true\n".into(), &["unknown field `http3`"]),
            (
                "basic_auth_users:\n  alice: hunter2\n".into(),
                &["basic_auth_users.alice", "not a bcrypt hash"],
            ),
            ("basic_auth_users: [alice]\n".into(), &["basic_auth_users"]),
        ];
        for (yaml, wanted) in cases {
            let e = error(dir.path(), &yaml);
            assert!(e.starts_with(&format!("web config file {file}: ")), "{e}");
            for w in wanted {
                assert!(e.contains(w), "{e:?} lacks {w:?}\n{yaml}");
            }
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn a_missing_config_file_is_named() {
        let e = WebConfig::load(Path::new("no/such/web.yml")).unwrap_err().to_string();
        assert!(e.starts_with("web config file no/such/web.yml: cannot read it"), "{e}");
    }

    #[test]
    fn toolkit_settings_we_can_honour_load() {
        let dir = certs();
        let yaml = "tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: VerifyClientCertIfGiven
  client_ca_file: ca.crt
  min_version: TLS13
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
  curve_preferences: [CurveP256, X25519]
http_server_config:
  http2: true
  headers:
    x-frame-options: DENY
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: ''
";
        let config = load(dir.path(), yaml).unwrap();
        let tls = config.tls().unwrap();
        assert!(!tls.ignore_client_order);
        let names: Vec<_> =
            config.response_headers().iter().map(|(n, v)| format!("{n}: {v:?}")).collect();
        assert_eq!(names, ["x-content-type-options: \"nosniff\"", "x-frame-options: \"DENY\""]);
    }

    #[test]
    fn debug_shows_no_hash() {
        let dir = tempfile::tempdir().unwrap();
        let hashed = hash("s3cret");
        let config =
            load(dir.path(), &format!("basic_auth_users:\n  alice: '{hashed}'\n")).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains(&hashed[7..]), "{shown}");
        assert!(shown.contains("basic_auth_users: 1"), "{shown}");
    }

    #[tokio::test]
    async fn basic_auth_accepts_only_the_right_password() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "basic_auth_users:\n  alice: '{}'\n  bob: '{}'\n",
            hash("alice pw"),
            hash("bob:pw")
        );
        let config = load(dir.path(), &yaml).unwrap();
        assert!(config.basic_auth());
        assert!(config.authorize(Some(&basic("alice", "alice pw"))).await);
        assert!(config.authorize(Some(&basic("bob", "bob:pw"))).await, "colons in passwords");
        assert!(!config.authorize(Some(&basic("alice", "bob:pw"))).await);
        assert!(!config.authorize(Some(&basic("carol", "alice pw"))).await);
        assert!(!config.authorize(Some(&basic("alic", "alice pw"))).await);
        assert!(!config.authorize(None).await);
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic YWxpY2U=", ""] {
            assert!(!config.authorize(Some(&HeaderValue::from_static(bad))).await, "{bad}");
        }
        let lower = basic("alice", "alice pw").to_str().unwrap().replace("Basic", "basic");
        assert!(config.authorize(Some(&HeaderValue::from_str(&lower).unwrap())).await);
    }

    #[tokio::test]
    async fn successes_are_remembered_and_failures_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            load(dir.path(), &format!("basic_auth_users:\n  alice: '{}'\n", hash("pw"))).unwrap();
        for _ in 0..5 {
            assert!(config.authorize(Some(&basic("alice", "pw"))).await);
        }
        assert_eq!(config.bcrypt_runs(), 1, "one bcrypt run for five good scrapes");
        for _ in 0..3 {
            assert!(!config.authorize(Some(&basic("alice", "wrong"))).await);
        }
        assert_eq!(config.bcrypt_runs(), 4, "every wrong guess pays bcrypt");
        assert!(!config.authorize(Some(&basic("mallory", "pw"))).await);
        assert_eq!(config.bcrypt_runs(), 5, "an unknown user pays bcrypt too");
        assert!(config.authorize(Some(&basic("alice", "pw"))).await);
        assert_eq!(config.bcrypt_runs(), 5, "the good password is still remembered");
    }

    #[tokio::test]
    async fn without_users_every_request_passes() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(dir.path(), "http_server_config: {}\n").unwrap();
        assert!(config.authorize(None).await);
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        for text in ["", "a", "ab", "abc", "abcd", "alice:pw", "\u{e9}t\u{e9}:\u{1f511}"] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(base64_decode(encoded.as_bytes()).unwrap(), text.as_bytes(), "{encoded}");
            let bare = encoded.trim_end_matches('=');
            assert_eq!(base64_decode(bare.as_bytes()).unwrap(), text.as_bytes(), "{bare}");
        }
        assert!(base64_decode(b"a").is_none());
        assert!(base64_decode(b"ab-_").is_none());
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"alice", b"alice"));
        assert!(!constant_time_eq(b"alice", b"alicf"));
        assert!(!constant_time_eq(b"alice", b"alic"));
        assert!(constant_time_eq(b"", b""));
    }
}
