//! Every setting, where it comes from, and its validation.
//!
//! Precedence is flag, then environment variable, then config file, then
//! default. The environment is read through [`Env`], never straight from the
//! process, so the precedence is testable. OTLP is configured only with the
//! standard `OTEL_*` variables: this module checks them all at start, so a
//! wrong value stops the program with one line naming the setting, instead
//! of being ignored later by the SDK. The token's value never appears in an
//! error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use reqwest::Url;
use serde::Deserialize;

use crate::secret::{Token, TokenError, TokenSource};

/// Scout's public API.
pub const DEFAULT_SCOUT_URL: &str = "https://api.scout.docker.com";
/// How often each organization is fetched by default.
///
/// Scout recomputes its answer at most once an hour. Fetching every five
/// minutes makes new data visible within five minutes of Scout publishing
/// it, and a revoked token visible as `scout_exporter_up 0` within five
/// minutes, for 12 small requests an hour per organization.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Total time for one fetch by default.
pub const DEFAULT_SCOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Age after which an organization's Scout series are withdrawn.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(24 * 3600);
/// Largest payload read by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The Prometheus exporter port the OpenTelemetry specification names.
pub const DEFAULT_PROMETHEUS_PORT: u16 = 9464;
/// Most series one metric may hold before OpenTelemetry folds the rest into
/// an overflow series.
pub const DEFAULT_MAX_SERIES_PER_METRIC: usize = 200_000;

const AFTER_HELP: &str = "\
Precedence: flag, then environment variable, then config file, then default.
The token is read only from DOCKER_SCOUT_API_KEY or a token file, never from a flag.
OTLP is configured with the standard OTEL_* variables; see the README.";

/// Command-line arguments, before the environment and config file apply.
#[derive(Debug, Default, Parser)]
#[command(name = "scout-exporter", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// What to do; without a subcommand, serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Fetch this Docker organization (repeatable or comma-separated)
    /// [env: DOCKER_SCOUT_ORG].
    #[arg(long = "org", value_name = "ORG", value_delimiter = ',')]
    pub orgs: Vec<String>,

    /// Read the access token from this file [env: DOCKER_SCOUT_TOKEN_FILE].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Use this Scout API base URL [env: DOCKER_SCOUT_API_URL] [default:
    /// https://api.scout.docker.com].
    #[arg(long, value_name = "URL")]
    pub scout_url: Option<String>,

    /// Fetch each organization this often, e.g. 30s or 15m
    /// [env: SCOUT_REFRESH_INTERVAL] [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub refresh_interval: Option<String>,

    /// Allow this long for one fetch, body included [env: SCOUT_TIMEOUT]
    /// [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub scout_timeout: Option<String>,

    /// Withdraw an organization's Scout series once its data is this old
    /// [env: SCOUT_MAX_STALENESS] [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub max_staleness: Option<String>,

    /// Refuse payloads larger than this, e.g. 64MiB [env: SCOUT_MAX_BODY_SIZE]
    /// [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    pub max_body_size: Option<String>,

    /// Serve /metrics, /healthz and /readyz on this address
    /// [env: OTEL_EXPORTER_PROMETHEUS_HOST, OTEL_EXPORTER_PROMETHEUS_PORT]
    /// [default: 0.0.0.0:9464].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// Read settings and organizations from this YAML file
    /// [env: SCOUT_EXPORTER_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve a built-in sample organization; no token needed.
    #[arg(long)]
    pub demo: bool,

    /// Write logs as text or JSON [env: SCOUT_LOG_FORMAT] [default: text];
    /// levels come from RUST_LOG.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Allow plain http:// to a Scout URL that is not loopback
    /// [env: SCOUT_ALLOW_INSECURE_HTTP].
    #[arg(long)]
    pub allow_insecure_http: bool,

    /// Send Scout requests through this proxy [env: SCOUT_PROXY]; otherwise
    /// HTTPS_PROXY, HTTP_PROXY and NO_PROXY apply.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,

    /// Protect /metrics with TLS or basic auth, as in the Prometheus
    /// exporter-toolkit's web config file [env: SCOUT_WEB_CONFIG_FILE].
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Keep at most this many series of each metric of an organization;
    /// the rest are left out and logged [env: SCOUT_MAX_SERIES] [default:
    /// 200000].
    #[arg(long, value_name = "N")]
    pub max_series_per_metric: Option<usize>,
}

/// Subcommands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Fetch each organization once, print a summary, and exit.
    Check,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The process environment, or a fixed map in tests.
pub trait Env {
    /// The variable's value; `None` when unset or empty.
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned().filter(|v| !v.trim().is_empty())
    }
}

/// A configuration that cannot be used. Each message names the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("{setting}: invalid value `{value}`: {expected}")]
    Invalid {
        /// Flag, variable or file key.
        setting: String,
        /// The value given (never a token).
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A required setting is absent.
    #[error("{0}")]
    Missing(String),
    /// Two settings contradict each other.
    #[error("{0}")]
    Conflict(String),
    /// The config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A token file is unusable.
    #[error("{0}")]
    Token(#[from] TokenError),
}

fn invalid(setting: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// The optional YAML configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Scout API base URL.
    pub scout_url: Option<String>,
    /// Refresh interval, e.g. `15m`.
    pub refresh_interval: Option<String>,
    /// Total fetch time, e.g. `30s`.
    pub scout_timeout: Option<String>,
    /// Staleness limit, e.g. `24h`.
    pub max_staleness: Option<String>,
    /// Payload size cap, e.g. `64MiB`.
    pub max_body_size: Option<String>,
    /// `HOST:PORT` of the pull endpoint.
    pub listen: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<LogFormat>,
    /// Proxy URL for Scout requests.
    pub proxy: Option<String>,
    /// Allow plain HTTP to a non-loopback Scout URL.
    pub allow_insecure_http: Option<bool>,
    /// exporter-toolkit web config file.
    pub web_config_file: Option<PathBuf>,
    /// Series cap per metric.
    pub max_series_per_metric: Option<usize>,
    /// Organizations, each with an optional token file of its own.
    #[serde(default)]
    pub organizations: Vec<FileOrg>,
}

/// One organization in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOrg {
    /// The Docker organization namespace.
    pub name: String,
    /// Its token file; without one, the global token applies.
    pub token_file: Option<PathBuf>,
}

/// Where one organization's token comes from, before it is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSpec {
    /// `DOCKER_SCOUT_API_KEY`.
    Env(Token),
    /// A file, read now and again when it changes.
    File(PathBuf),
}

impl TokenSpec {
    /// Opens the source, reading a file once to check it.
    pub fn open(&self) -> Result<TokenSource, TokenError> {
        match self {
            TokenSpec::Env(token) => Ok(TokenSource::Fixed(token.clone())),
            TokenSpec::File(path) => TokenSource::file(path),
        }
    }
}

/// One organization to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgConfig {
    /// The namespace.
    pub name: String,
    /// Its token.
    pub token: TokenSpec,
}

/// The OTLP protocols this build speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// gRPC, port 4317 by default.
    Grpc,
    /// HTTP with protobuf bodies, port 4318 by default.
    HttpProtobuf,
}

/// What the `OTEL_*` variables ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtelSettings {
    /// Push over OTLP.
    pub otlp: bool,
    /// Serve the Prometheus pull endpoint.
    pub prometheus: bool,
    /// OTLP transport.
    pub protocol: OtlpProtocol,
    /// The endpoint as configured, for the start-up log; `None` is the
    /// protocol's default.
    pub endpoint: Option<String>,
    /// Push interval.
    pub export_interval: Duration,
    /// `OTEL_SDK_DISABLED=true`.
    pub sdk_disabled: bool,
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`, lowercased.
    pub temporality: String,
    /// `service.name` unless the environment names one.
    pub default_service_name: bool,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Serve or check.
    pub command: Option<Command>,
    /// Organizations; empty in demo mode until the demo starts.
    pub orgs: Vec<OrgConfig>,
    /// Serve the built-in sample organization.
    pub demo: bool,
    /// Scout API base URL.
    pub scout_url: Url,
    /// How often each organization is fetched.
    pub refresh_interval: Duration,
    /// Total time for one fetch.
    pub scout_timeout: Duration,
    /// Age at which Scout series are withdrawn.
    pub max_staleness: Duration,
    /// Payload size cap.
    pub max_body_bytes: usize,
    /// Pull endpoint host.
    pub listen_host: String,
    /// Pull endpoint port.
    pub listen_port: u16,
    /// Log format.
    pub log_format: LogFormat,
    /// Allow plain HTTP to a non-loopback Scout.
    pub allow_insecure_http: bool,
    /// Explicit proxy.
    pub proxy: Option<Url>,
    /// exporter-toolkit web config file.
    pub web_config_file: Option<PathBuf>,
    /// Series cap per metric.
    pub max_series_per_metric: usize,
    /// OpenTelemetry export settings.
    pub otel: OtelSettings,
}

impl Config {
    /// Resolves flags, environment and config file into one configuration.
    pub fn resolve(cli: Cli, env: &dyn Env) -> Result<Config, ConfigError> {
        let config_path =
            cli.config.clone().or_else(|| env.get("SCOUT_EXPORTER_CONFIG").map(PathBuf::from));
        let file = match &config_path {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };

        // flag > env > file, for a string setting.
        let pick =
            |flag: Option<String>, var: &str, file: Option<String>| -> Option<(String, String)> {
                flag.map(|v| (v, String::new()))
                    .or_else(|| env.get(var).map(|v| (v, var.to_string())))
                    .or_else(|| file.map(|v| (v, String::new())))
            };
        let named = |flag: &str, var: &str, source: &str| -> String {
            if source.is_empty() { flag.to_string() } else { var.to_string() }
        };

        let duration = |flag: Option<String>,
                        flag_name: &str,
                        var: &str,
                        file: Option<String>,
                        default: Duration| {
            match pick(flag, var, file) {
                None => Ok(default),
                Some((text, source)) => parse_duration(&text)
                    .ok_or_else(|| {
                        invalid(
                            &named(flag_name, var, &source),
                            &text,
                            "a duration with a unit, e.g. 30s, 15m or 2h",
                        )
                    })
                    .and_then(|d| {
                        if d.is_zero() {
                            Err(invalid(
                                &named(flag_name, var, &source),
                                &text,
                                "a duration above zero",
                            ))
                        } else {
                            Ok(d)
                        }
                    }),
            }
        };

        let refresh_interval = duration(
            cli.refresh_interval,
            "--refresh-interval",
            "SCOUT_REFRESH_INTERVAL",
            file.refresh_interval.clone(),
            DEFAULT_REFRESH_INTERVAL,
        )?;
        let scout_timeout = duration(
            cli.scout_timeout,
            "--scout-timeout",
            "SCOUT_TIMEOUT",
            file.scout_timeout.clone(),
            DEFAULT_SCOUT_TIMEOUT,
        )?;
        let max_staleness = duration(
            cli.max_staleness,
            "--max-staleness",
            "SCOUT_MAX_STALENESS",
            file.max_staleness.clone(),
            DEFAULT_MAX_STALENESS,
        )?;
        let max_body_bytes =
            match pick(cli.max_body_size, "SCOUT_MAX_BODY_SIZE", file.max_body_size.clone()) {
                None => DEFAULT_MAX_BODY_BYTES,
                Some((text, source)) => parse_size(&text).filter(|n| *n > 0).ok_or_else(|| {
                    invalid(
                        &named("--max-body-size", "SCOUT_MAX_BODY_SIZE", &source),
                        &text,
                        "a size such as 64MiB, 10MB or 1048576",
                    )
                })?,
            };
        let max_series_per_metric = match cli
            .max_series_per_metric
            .map(|n| (n.to_string(), String::new()))
            .or_else(|| env.get("SCOUT_MAX_SERIES").map(|v| (v, "SCOUT_MAX_SERIES".to_string())))
            .or_else(|| file.max_series_per_metric.map(|n| (n.to_string(), String::new())))
        {
            None => DEFAULT_MAX_SERIES_PER_METRIC,
            Some((text, source)) => {
                text.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid(
                        &named("--max-series-per-metric", "SCOUT_MAX_SERIES", &source),
                        &text,
                        "a whole number above zero",
                    )
                })?
            }
        };

        let allow_insecure_http = cli.allow_insecure_http
            || parse_bool_env(env, "SCOUT_ALLOW_INSECURE_HTTP")?.unwrap_or(false)
            || file.allow_insecure_http.unwrap_or(false);

        let scout_url = match pick(cli.scout_url, "DOCKER_SCOUT_API_URL", file.scout_url.clone()) {
            None => Url::parse(DEFAULT_SCOUT_URL).expect("the default URL parses"),
            Some((text, source)) => {
                let setting = named("--scout-url", "DOCKER_SCOUT_API_URL", &source);
                let url = Url::parse(&text)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| invalid(&setting, &text, "an http:// or https:// URL"))?;
                if url.scheme() == "http" && !allow_insecure_http && !is_loopback(&url) {
                    return Err(ConfigError::Conflict(format!(
                        "{setting}: refusing plain http:// to {}, which is not loopback: the token would travel \
                         unencrypted; use https:// or pass --allow-insecure-http",
                        url.host_str().unwrap_or_default()
                    )));
                }
                url
            }
        };

        let proxy = match pick(cli.proxy, "SCOUT_PROXY", file.proxy.clone()) {
            None => None,
            Some((text, source)) => Some(
                Url::parse(&text)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h"))
                    .ok_or_else(|| {
                        invalid(
                            &named("--proxy", "SCOUT_PROXY", &source),
                            &text,
                            "a proxy URL such as http://proxy:3128",
                        )
                    })?,
            ),
        };

        let log_format = match cli.log_format {
            Some(f) => f,
            None => match env.get("SCOUT_LOG_FORMAT") {
                Some(v) => LogFormat::from_str(&v, true)
                    .map_err(|_| invalid("SCOUT_LOG_FORMAT", &v, "text or json"))?,
                None => file.log_format.unwrap_or_default(),
            },
        };

        let (listen_host, listen_port) = resolve_listen(cli.listen, env, file.listen.clone())?;

        let web_config_file = cli
            .web_config_file
            .or_else(|| env.get("SCOUT_WEB_CONFIG_FILE").map(PathBuf::from))
            .or(file.web_config_file.clone());

        let otel = resolve_otel(env)?;

        let orgs = resolve_orgs(&cli.orgs, cli.token_file, env, &file, cli.demo)?;

        Ok(Config {
            command: cli.command,
            orgs,
            demo: cli.demo,
            scout_url,
            refresh_interval,
            scout_timeout,
            max_staleness,
            max_body_bytes,
            listen_host,
            listen_port,
            log_format,
            allow_insecure_http,
            proxy,
            web_config_file,
            max_series_per_metric,
            otel,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let file_error = |message: String| ConfigError::File { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| file_error(e.to_string()))
}

fn resolve_orgs(
    flag_orgs: &[String],
    flag_token_file: Option<PathBuf>,
    env: &dyn Env,
    file: &FileConfig,
    demo: bool,
) -> Result<Vec<OrgConfig>, ConfigError> {
    let (names, source): (Vec<String>, &str) = if !flag_orgs.is_empty() {
        (flag_orgs.to_vec(), "--org")
    } else if let Some(list) = env.get("DOCKER_SCOUT_ORG") {
        (list.split(',').map(str::to_string).collect(), "DOCKER_SCOUT_ORG")
    } else {
        (file.organizations.iter().map(|o| o.name.clone()).collect(), "organizations")
    };
    let names: Vec<String> =
        names.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();

    if demo {
        if !names.is_empty() {
            return Err(ConfigError::Conflict(format!(
                "--demo serves only the built-in organization; remove {source} to use it"
            )));
        }
        return Ok(Vec::new());
    }
    if names.is_empty() {
        return Err(ConfigError::Missing(
            "no organization: set --org, DOCKER_SCOUT_ORG or `organizations` in the config file, \
             or try --demo"
                .to_string(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        if !is_valid_org(name) {
            return Err(invalid(
                source,
                name,
                "a Docker organization namespace: lowercase letters, digits, `-` and `_`",
            ));
        }
        if !seen.insert(name) {
            return Err(ConfigError::Conflict(format!(
                "{source}: organization `{name}` is listed twice"
            )));
        }
    }

    let env_token = env.get("DOCKER_SCOUT_API_KEY");
    let global_file = flag_token_file.map(|p| (p, "--token-file")).or_else(|| {
        env.get("DOCKER_SCOUT_TOKEN_FILE").map(|p| (PathBuf::from(p), "DOCKER_SCOUT_TOKEN_FILE"))
    });
    let global =
        match (env_token, global_file) {
            (Some(_), Some((_, file_setting))) => {
                return Err(ConfigError::Conflict(format!(
                    "DOCKER_SCOUT_API_KEY and {file_setting} are both set; give the token one way"
                )));
            }
            (Some(raw), None) => Some(TokenSpec::Env(Token::new(raw).ok_or_else(|| {
                ConfigError::Missing("DOCKER_SCOUT_API_KEY is empty".to_string())
            })?)),
            (None, Some((path, _))) => Some(TokenSpec::File(path)),
            (None, None) => None,
        };

    names
        .into_iter()
        .map(|name| {
            let own = file
                .organizations
                .iter()
                .find(|o| o.name == name)
                .and_then(|o| o.token_file.clone());
            let token = own.map(TokenSpec::File).or_else(|| global.clone()).ok_or_else(|| {
                ConfigError::Missing(format!(
                    "organization `{name}` has no token: set DOCKER_SCOUT_API_KEY, --token-file, \
                     DOCKER_SCOUT_TOKEN_FILE, or token_file in the config file"
                ))
            })?;
            Ok(OrgConfig { name, token })
        })
        .collect()
}

/// Docker namespaces: 2 to 255 characters of `[a-z0-9_-]`, checked loosely
/// so that a typo fails here rather than as a 404 later.
fn is_valid_org(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn resolve_listen(
    flag: Option<String>,
    env: &dyn Env,
    file: Option<String>,
) -> Result<(String, u16), ConfigError> {
    if let Some(text) = flag {
        return split_host_port(&text)
            .ok_or_else(|| invalid("--listen", &text, "HOST:PORT, e.g. 0.0.0.0:9464"));
    }
    let env_host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST");
    let env_port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT");
    let (mut host, mut port) = ("0.0.0.0".to_string(), DEFAULT_PROMETHEUS_PORT);
    if let Some(text) = file {
        (host, port) = split_host_port(&text)
            .ok_or_else(|| invalid("listen", &text, "HOST:PORT, e.g. 0.0.0.0:9464"))?;
    }
    if let Some(h) = env_host {
        host = h.trim().trim_start_matches('[').trim_end_matches(']').to_string();
    }
    if let Some(p) = env_port {
        port = p.trim().parse().map_err(|_| {
            invalid("OTEL_EXPORTER_PROMETHEUS_PORT", &p, "a port number from 0 to 65535")
        })?;
    }
    Ok((host, port))
}

fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn parse_bool_env(env: &dyn Env, var: &str) -> Result<Option<bool>, ConfigError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(invalid(var, &v, "true or false")),
        },
    }
}

/// Reads and checks the `OTEL_*` variables that shape the export.
pub fn resolve_otel(env: &dyn Env) -> Result<OtelSettings, ConfigError> {
    let sdk_disabled = match env.get("OTEL_SDK_DISABLED") {
        None => false,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(invalid("OTEL_SDK_DISABLED", &v, "true or false")),
        },
    };

    let (mut otlp, mut prometheus) = (true, true);
    if let Some(list) = env.get("OTEL_METRICS_EXPORTER") {
        let words: Vec<String> = list.split(',').map(|w| w.trim().to_ascii_lowercase()).collect();
        (otlp, prometheus) = (false, false);
        for word in &words {
            match word.as_str() {
                "otlp" => otlp = true,
                "prometheus" => prometheus = true,
                "none" if words.len() == 1 => {}
                "none" => {
                    return Err(invalid(
                        "OTEL_METRICS_EXPORTER",
                        &list,
                        "`none` alone, or a list of otlp and prometheus",
                    ));
                }
                _ => {
                    return Err(invalid(
                        "OTEL_METRICS_EXPORTER",
                        &list,
                        "otlp, prometheus, none, or a comma list",
                    ));
                }
            }
        }
    }
    if sdk_disabled {
        (otlp, prometheus) = (false, false);
    }

    let protocol_var = ["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .into_iter()
        .find_map(|var| env.get(var).map(|v| (var, v)));
    let protocol = match protocol_var {
        None => OtlpProtocol::Grpc,
        Some((var, v)) => match v.trim() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            _ => return Err(invalid(var, &v, "grpc or http/protobuf")),
        },
    };

    let mut endpoint = None;
    for var in ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
        if let Some(v) = env.get(var) {
            let ok = Url::parse(v.trim())
                .ok()
                .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    var,
                    &v,
                    "a URL with http:// or https://, e.g. http://localhost:4317",
                ));
            }
            endpoint.get_or_insert(v.trim().to_string());
        }
    }
    for var in ["OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"] {
        if let Some(v) = env.get(var)
            && v.trim().parse::<u64>().is_err()
        {
            return Err(invalid(var, &v, "whole milliseconds, e.g. 10000"));
        }
    }
    for var in ["OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"] {
        if let Some(v) = env.get(var)
            && !matches!(v.trim(), "gzip" | "none")
        {
            return Err(invalid(var, &v, "gzip or none"));
        }
    }
    for var in [
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_RESOURCE_ATTRIBUTES",
    ] {
        if let Some(v) = env.get(var) {
            let ok = v
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .all(|p| p.split_once('=').is_some_and(|(k, _)| !k.trim().is_empty()));
            if !ok {
                // Header values may be secrets: name the variable, not the value.
                return Err(ConfigError::Invalid {
                    setting: var.to_string(),
                    value: "(not shown)".to_string(),
                    expected: "comma-separated key=value pairs".to_string(),
                });
            }
        }
    }
    let temporality = match env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
        None => "cumulative".to_string(),
        Some(v) => {
            let lower = v.trim().to_ascii_lowercase();
            if !matches!(lower.as_str(), "cumulative" | "delta" | "lowmemory") {
                return Err(invalid(
                    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                    &v,
                    "cumulative, delta or lowmemory",
                ));
            }
            lower
        }
    };
    let export_interval = match env.get("OTEL_METRIC_EXPORT_INTERVAL") {
        None => Duration::from_secs(60),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .ok_or_else(|| {
                invalid(
                    "OTEL_METRIC_EXPORT_INTERVAL",
                    &v,
                    "whole milliseconds above zero, e.g. 60000",
                )
            })?,
    };
    let default_service_name = env.get("OTEL_SERVICE_NAME").is_none()
        && !env.get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs.split(',').any(|p| p.trim_start().starts_with("service.name="))
        });

    Ok(OtelSettings {
        otlp,
        prometheus,
        protocol,
        endpoint,
        export_interval,
        sdk_disabled,
        temporality,
        default_service_name,
    })
}

/// Parses `30s`, `15m`, `1h30m`; a bare number is refused, since its unit
/// would be a guess.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(text).ok()
}

/// Parses a byte size: a number with an optional `B`, `KB`, `MB`, `GB`,
/// `KiB`, `MiB` or `GiB` suffix.
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits.parse().ok()?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("scout-exporter").chain(args.iter().copied())).unwrap()
    }

    fn resolve(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::resolve(cli(args), &env(vars))
    }

    const TOKEN: (&str, &str) = ("DOCKER_SCOUT_API_KEY", "dckr_pat_secret");

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "refresh_interval: 7m\nscout_timeout: 9s\norganizations: [{name: fileorg}]\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();

        let c = resolve(
            &["--config", path, "--refresh-interval", "1m"],
            &[TOKEN, ("SCOUT_REFRESH_INTERVAL", "2m")],
        )
        .unwrap();
        assert_eq!(c.refresh_interval, Duration::from_secs(60));
        assert_eq!(c.scout_timeout, Duration::from_secs(9));
        assert_eq!(c.max_staleness, DEFAULT_MAX_STALENESS);
        assert_eq!(c.orgs[0].name, "fileorg");

        let c = resolve(&["--config", path], &[TOKEN, ("SCOUT_REFRESH_INTERVAL", "2m")]).unwrap();
        assert_eq!(c.refresh_interval, Duration::from_secs(120));
        let c = resolve(&["--config", path], &[TOKEN]).unwrap();
        assert_eq!(c.refresh_interval, Duration::from_secs(420));
    }

    #[test]
    fn orgs_come_repeated_or_comma_separated() {
        let c = resolve(&["--org", "a,b", "--org", "c"], &[TOKEN]).unwrap();
        let names: Vec<_> = c.orgs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let c = resolve(&[], &[TOKEN, ("DOCKER_SCOUT_ORG", "x, y")]).unwrap();
        assert_eq!(c.orgs.len(), 2);
    }

    #[test]
    fn each_file_org_may_have_its_own_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "organizations:\n  - name: one\n    token_file: /run/one\n  - name: two\n",
        )
        .unwrap();
        let c = resolve(&["--config", file.to_str().unwrap()], &[TOKEN]).unwrap();
        assert_eq!(c.orgs[0].token, TokenSpec::File("/run/one".into()));
        assert!(matches!(c.orgs[1].token, TokenSpec::Env(_)));
    }

    #[test]
    fn missing_or_contradictory_settings_name_the_setting() {
        let err = resolve(&[], &[TOKEN]).unwrap_err().to_string();
        assert!(err.contains("--org"), "{err}");
        let err = resolve(&["--org", "a"], &[]).unwrap_err().to_string();
        assert!(err.contains("DOCKER_SCOUT_API_KEY"), "{err}");
        let err = resolve(&["--org", "a", "--token-file", "/x"], &[TOKEN]).unwrap_err().to_string();
        assert!(err.contains("--token-file"), "{err}");
        let err = resolve(&["--demo", "--org", "a"], &[]).unwrap_err().to_string();
        assert!(err.contains("--demo"), "{err}");
        let err =
            resolve(&["--org", "a", "--refresh-interval", "10"], &[TOKEN]).unwrap_err().to_string();
        assert!(err.starts_with("--refresh-interval: invalid value `10`"), "{err}");
        let err =
            resolve(&["--org", "a"], &[TOKEN, ("SCOUT_TIMEOUT", "soon")]).unwrap_err().to_string();
        assert!(err.starts_with("SCOUT_TIMEOUT:"), "{err}");
        let err = resolve(&["--org", "Bad Org"], &[TOKEN]).unwrap_err().to_string();
        assert!(err.contains("Bad Org"), "{err}");
    }

    #[test]
    fn errors_never_show_the_token() {
        for args in [&["--org", "a", "--token-file", "/x"][..], &["--demo", "--org", "a"], &[]] {
            if let Err(e) = resolve(args, &[TOKEN]) {
                assert!(!e.to_string().contains("dckr_pat_secret"), "{e}");
            }
        }
    }

    #[test]
    fn plain_http_is_refused_unless_loopback_or_allowed() {
        let base = ["--org", "a", "--scout-url"];
        let err =
            resolve(&[&base[..], &["http://scout.example.com"]].concat(), &[TOKEN]).unwrap_err();
        assert!(err.to_string().contains("--allow-insecure-http"), "{err}");
        assert!(resolve(&[&base[..], &["http://127.0.0.1:8080"]].concat(), &[TOKEN]).is_ok());
        assert!(resolve(&[&base[..], &["http://localhost:8080"]].concat(), &[TOKEN]).is_ok());
        assert!(resolve(&[&base[..], &["http://[::1]:8080"]].concat(), &[TOKEN]).is_ok());
        assert!(
            resolve(
                &[&base[..], &["http://scout.example.com", "--allow-insecure-http"]].concat(),
                &[TOKEN]
            )
            .is_ok()
        );
        let err = resolve(&[&base[..], &["ftp://x"]].concat(), &[TOKEN]).unwrap_err();
        assert!(err.to_string().starts_with("--scout-url: invalid value"), "{err}");
    }

    #[test]
    fn listen_comes_from_flag_or_otel_prometheus_variables() {
        let c = resolve(&["--demo"], &[]).unwrap();
        assert_eq!((c.listen_host.as_str(), c.listen_port), ("0.0.0.0", 9464));
        let c = resolve(
            &["--demo"],
            &[
                ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
                ("OTEL_EXPORTER_PROMETHEUS_PORT", "9999"),
            ],
        )
        .unwrap();
        assert_eq!((c.listen_host.as_str(), c.listen_port), ("127.0.0.1", 9999));
        let c = resolve(
            &["--demo", "--listen", "[::1]:1234"],
            &[("OTEL_EXPORTER_PROMETHEUS_PORT", "9999")],
        )
        .unwrap();
        assert_eq!((c.listen_host.as_str(), c.listen_port), ("::1", 1234));
        let err = resolve(&["--demo"], &[("OTEL_EXPORTER_PROMETHEUS_PORT", "http")]).unwrap_err();
        assert!(err.to_string().starts_with("OTEL_EXPORTER_PROMETHEUS_PORT:"), "{err}");
    }

    #[test]
    fn otel_variables_are_checked_at_start() {
        let ok = resolve_otel(&env(&[])).unwrap();
        assert!(ok.otlp && ok.prometheus);
        assert_eq!(ok.protocol, OtlpProtocol::Grpc);
        assert!(ok.default_service_name);

        let s = resolve_otel(&env(&[("OTEL_METRICS_EXPORTER", "prometheus")])).unwrap();
        assert!(!s.otlp && s.prometheus);
        let s = resolve_otel(&env(&[("OTEL_METRICS_EXPORTER", "none")])).unwrap();
        assert!(!s.otlp && !s.prometheus);
        let s = resolve_otel(&env(&[("OTEL_SDK_DISABLED", "true")])).unwrap();
        assert!(!s.otlp && !s.prometheus);
        let s = resolve_otel(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        let s = resolve_otel(&env(&[("OTEL_SERVICE_NAME", "mine")])).unwrap();
        assert!(!s.default_service_name);
        let s = resolve_otel(&env(&[("OTEL_RESOURCE_ATTRIBUTES", "a=b,service.name=x")])).unwrap();
        assert!(!s.default_service_name);

        for (var, value) in [
            ("OTEL_METRICS_EXPORTER", "otlp,none"),
            ("OTEL_METRICS_EXPORTER", "console"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "not a url"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ("OTEL_SDK_DISABLED", "maybe"),
        ] {
            let err = resolve_otel(&env(&[(var, value)])).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{var}:")), "{var}={value}: {err}");
        }
    }

    #[test]
    fn header_values_are_not_echoed() {
        let err = resolve_otel(&env(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("api-key"), "{err}");
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30"), None);
    }

    #[test]
    fn help_documents_every_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--org",
            "--token-file",
            "--scout-url",
            "--refresh-interval",
            "--scout-timeout",
            "--listen",
            "--config",
            "--demo",
            "--log-format",
            "--max-staleness",
            "--max-body-size",
            "--allow-insecure-http",
            "--proxy",
            "--web.config.file",
            "--max-series-per-metric",
            "DOCKER_SCOUT_API_KEY",
        ] {
            assert!(help.contains(flag), "help lacks {flag}");
        }
    }
}
