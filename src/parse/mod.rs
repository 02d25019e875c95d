//! Reads a Scout payload: Prometheus text 0.0.4 or OpenMetrics 1.0 text.
//!
//! This module owns the bytes-to-families step and nothing else: it performs
//! no I/O, keeps no state between calls and never panics on any input. It
//! returns either every family in the payload or one [`ParseError`] that
//! names the line and what was expected there; a payload is never accepted
//! in part.
//!
//! # Why our own parser
//!
//! Before writing this module we ran the Rust crates that read these
//! formats against the OpenMetrics project's 211 parser test vectors (see
//! `tests/openmetrics.rs`) and a generated 10 MB Scout-shaped payload
//! (release build, best of three):
//!
//! | crate | vectors right | speed | licence | why not |
//! |---|---|---|---|---|
//! | `prometheus-parse` 0.2.5 | 44 of 211 | 50 MB/s | Apache-2.0 | rejects nothing; drops labels whose value holds `,` `=` or `}`; no OpenMetrics |
//! | `openmetrics-parser` 0.5.1 | 203 of 211 | 0.4 MB/s | LGPL-3.0 | quadratic duplicate check; needs a final newline |
//! | `prom_text_format_parser` 0.1.0 | 101 of 211 | 90 MB/s | MIT/Apache-2.0 | keeps escapes; no OpenMetrics; one release |
//! | this module | 211 of 211 | 267 MB/s (OpenMetrics 214) | Apache-2.0 | |
//!
//! None is both correct and fast, none enforces size limits, and none hands
//! out shared label strings, which is what keeps a 100,000-series snapshot
//! small. `bench/parser.sh` measures this module against Python's
//! `prometheus_client` parser (about 45 times faster).
//!
//! # Formats
//!
//! [`Format::Prometheus`] follows what the Prometheus server accepts when it
//! scrapes: blank lines and free comments are skipped, spaces and tabs may
//! separate tokens, a trailing comma may close a label set, `TYPE` may come
//! after its samples, and timestamps are integer milliseconds.
//!
//! [`Format::OpenMetrics`] is strict, as the OpenMetrics 1.0 specification
//! and its reference parser are: single spaces, no blank lines, metadata
//! before samples, per-type sample names and value rules, and a final
//! `# EOF`. A body without `# EOF` is taken as truncated and rejected.
//!
//! In both formats an unknown escape sequence in a label value or `HELP`
//! text (`\z`) is kept as written, as the reference parsers do.

mod line;
mod openmetrics;
mod prometheus;

use std::sync::Arc;

use hashbrown::HashSet;

/// The two text formats Scout may answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4 (`text/plain`).
    Prometheus,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// Picks the format from an HTTP `Content-Type` header value.
    ///
    /// `text/plain` with version 0.0.4 or no version is Prometheus text;
    /// `application/openmetrics-text` with version 1.0.0 or no version is
    /// OpenMetrics. A missing header is taken as Prometheus text, as the
    /// Prometheus server does. Anything else is an error naming the type.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Format, UnsupportedFormat> {
        let Some(raw) = content_type else {
            return Ok(Format::Prometheus);
        };
        let mut parts = raw.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut version = None;
        for param in parts {
            if let Some((key, value)) = param.split_once('=')
                && key.trim().eq_ignore_ascii_case("version")
            {
                version = Some(value.trim().trim_matches('"').to_string());
            }
        }
        let unsupported = || UnsupportedFormat(raw.to_string());
        match media.as_str() {
            "text/plain" => match version.as_deref() {
                None | Some("0.0.4") => Ok(Format::Prometheus),
                Some(_) => Err(unsupported()),
            },
            "application/openmetrics-text" => match version.as_deref() {
                None | Some("1.0.0") => Ok(Format::OpenMetrics),
                Some(_) => Err(unsupported()),
            },
            _ => Err(unsupported()),
        }
    }

    /// The `Accept` header value that asks for either supported format,
    /// OpenMetrics preferred, as the Prometheus server asks.
    pub const ACCEPT: &'static str = "application/openmetrics-text;version=1.0.0;q=0.9,\
         text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
}

/// A `Content-Type` that names neither supported format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported content type `{0}`: expected text/plain;version=0.0.4 or application/openmetrics-text;version=1.0.0"
)]
pub struct UnsupportedFormat(pub String);

/// Bounds that keep one payload from taking unbounded memory or time.
///
/// The defaults are far above anything a real organization produces (a
/// Scout line is about 150 bytes with three labels) and low enough that a
/// hostile or broken body fails fast with a named limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, in bytes. Default 64 KiB.
    pub max_line_bytes: usize,
    /// Most labels on one series. Default 64.
    pub max_labels: usize,
    /// Longest label name, in bytes. Default 256.
    pub max_label_name_bytes: usize,
    /// Longest label value, in bytes, as written. Default 16 KiB.
    pub max_label_value_bytes: usize,
    /// Most samples in one payload. Default 1,000,000.
    pub max_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 64 * 1024,
            max_labels: 64,
            max_label_name_bytes: 256,
            max_label_value_bytes: 16 * 1024,
            max_series: 1_000_000,
        }
    }
}

/// The type a family declares, or `Unknown` when it declares none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonic total (`_total`, `_created`).
    Counter,
    /// Buckets, `_sum` and `_count`.
    Histogram,
    /// OpenMetrics gauge histogram (`_bucket`, `_gsum`, `_gcount`).
    GaugeHistogram,
    /// Quantiles, `_sum` and `_count`.
    Summary,
    /// OpenMetrics info (`_info`, value 1).
    Info,
    /// OpenMetrics state set (values 0 or 1).
    StateSet,
    /// `untyped` in Prometheus text, `unknown` in OpenMetrics, or no `TYPE`.
    Unknown,
}

impl MetricKind {
    fn from_openmetrics(word: &str) -> Option<MetricKind> {
        Some(match word {
            "gauge" => MetricKind::Gauge,
            "counter" => MetricKind::Counter,
            "histogram" => MetricKind::Histogram,
            "gaugehistogram" => MetricKind::GaugeHistogram,
            "summary" => MetricKind::Summary,
            "info" => MetricKind::Info,
            "stateset" => MetricKind::StateSet,
            "unknown" => MetricKind::Unknown,
            _ => return None,
        })
    }

    fn from_prometheus(word: &str) -> Option<MetricKind> {
        Some(match word {
            "gauge" => MetricKind::Gauge,
            "counter" => MetricKind::Counter,
            "histogram" => MetricKind::Histogram,
            "summary" => MetricKind::Summary,
            "untyped" => MetricKind::Unknown,
            _ => return None,
        })
    }

    /// The word used for this kind in a `TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::Histogram => "histogram",
            MetricKind::GaugeHistogram => "gaugehistogram",
            MetricKind::Summary => "summary",
            MetricKind::Info => "info",
            MetricKind::StateSet => "stateset",
            MetricKind::Unknown => "unknown",
        }
    }
}

/// One label pair. Both strings are shared with every other sample of the
/// payload that uses the same text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    /// The label name, as written.
    pub name: Arc<str>,
    /// The label value, unescaped.
    pub value: Arc<str>,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The full sample name, suffix included (`a_bucket`, `a_total`).
    pub name: Arc<str>,
    /// Labels in the order written.
    pub labels: Box<[Label]>,
    /// The value; NaN and infinities are kept.
    pub value: f64,
    /// The timestamp in seconds since the epoch, when one was written.
    pub timestamp: Option<f64>,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|l| &*l.name == name).map(|l| &*l.value)
    }
}

/// A metric family: its metadata and samples, in payload order.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// The family name (without sample suffixes).
    pub name: String,
    /// The declared type.
    pub kind: MetricKind,
    /// `HELP` text, unescaped, if given.
    pub help: Option<String>,
    /// OpenMetrics `UNIT`, if given.
    pub unit: Option<String>,
    /// Samples in the order they were written.
    pub samples: Vec<Sample>,
}

/// Everything one payload holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    /// Families in the order they first appeared.
    pub families: Vec<Family>,
}

impl Exposition {
    /// Number of samples over all families.
    pub fn sample_count(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }
}

/// Why a payload was rejected, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// One-based line number; 0 for a fault of the whole body.
    pub line: usize,
    /// What was wrong there.
    pub kind: ParseErrorKind,
}

/// What was wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The body is not UTF-8.
    #[error("body is not valid UTF-8 (byte {0})")]
    NotUtf8(usize),
    /// The body has no bytes at all.
    #[error("body is empty")]
    Empty,
    /// The grammar expected something else at this point.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar allows here.
        expected: &'static str,
        /// A short quote of what was there.
        found: String,
    },
    /// A number that does not parse.
    #[error("invalid {what} `{text}`")]
    InvalidNumber {
        /// Which number: value, timestamp, exemplar value.
        what: &'static str,
        /// The text as written.
        text: String,
    },
    /// A metric or label name outside the allowed characters.
    #[error("invalid {what} name `{name}`")]
    InvalidName {
        /// `metric` or `label`.
        what: &'static str,
        /// The name as written.
        name: String,
    },
    /// The same label twice on one sample.
    #[error("label `{0}` appears twice")]
    DuplicateLabel(String),
    /// A rule of the format about families, types or values.
    #[error("{0}")]
    Rule(String),
    /// OpenMetrics body without the closing `# EOF` line.
    #[error("missing `# EOF`: the body is truncated")]
    MissingEof,
    /// Anything after `# EOF`.
    #[error("text after `# EOF`")]
    TextAfterEof,
    /// A configured limit was exceeded.
    #[error("{what} exceeds the limit of {limit}")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
}

/// Parses a whole payload in the given format.
///
/// ```
/// use scout_exporter::parse::{parse, Format, Limits};
///
/// let body = "# TYPE scout_stream_vulnerabilities gauge\n\
///             scout_stream_vulnerabilities{streamName=\"prod\",severity=\"HIGH\"} 7\n";
/// let exposition = parse(body.as_bytes(), Format::Prometheus, &Limits::default()).unwrap();
/// let family = &exposition.families[0];
/// assert_eq!(family.samples[0].label("severity"), Some("HIGH"));
/// assert_eq!(family.samples[0].value, 7.0);
/// ```
pub fn parse(body: &[u8], format: Format, limits: &Limits) -> Result<Exposition, ParseError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ParseError { line: 0, kind: ParseErrorKind::NotUtf8(e.valid_up_to()) })?;
    if text.is_empty() {
        return Err(ParseError { line: 0, kind: ParseErrorKind::Empty });
    }
    match format {
        Format::Prometheus => prometheus::parse(text, limits),
        Format::OpenMetrics => openmetrics::parse(text, limits),
    }
}

/// Shares equal strings among all samples of one payload.
///
/// Scout repeats the same few label names and many label values (stream
/// names, severities, policy names) on every line; keeping one copy of each
/// is what makes a large snapshot small. The last string seen at each
/// label position is remembered, so runs of equal values skip the hash.
#[derive(Default)]
pub(crate) struct Interner {
    set: HashSet<Arc<str>>,
    recent: Vec<Arc<str>>,
}

impl Interner {
    /// Returns the shared copy of `s`, using `slot` as a hint of where the
    /// same string was seen last.
    pub(crate) fn intern(&mut self, slot: usize, s: &str) -> Arc<str> {
        if let Some(recent) = self.recent.get(slot)
            && **recent == *s
        {
            return recent.clone();
        }
        let shared = match self.set.get(s) {
            Some(found) => found.clone(),
            None => {
                let fresh: Arc<str> = Arc::from(s);
                self.set.insert(fresh.clone());
                fresh
            }
        };
        if slot < 64 {
            if self.recent.len() <= slot {
                self.recent.resize(slot + 1, shared.clone());
            }
            self.recent[slot] = shared.clone();
        }
        shared
    }
}

/// Whether `name` is a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Shortens `s` to a quote fit for an error message.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 40;
    if s.is_empty() {
        return "end of line".to_string();
    }
    let mut end = s.len().min(MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() { format!("`{}…`", &s[..end]) } else { format!("`{s}`") }
}

/// Undoes the escapes of HELP text: `\\` and `\n`, and `\"` in OpenMetrics.
/// Any other escape stays as written.
pub(crate) fn unescape_help(text: &str, dialect: line::Dialect) -> String {
    if !text.contains('\\') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if dialect == line::Dialect::OpenMetrics => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Splits a body into numbered lines without their `\n`.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text;
    let mut number = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        number += 1;
        let (line, next) = match memchr::memchr(b'\n', rest.as_bytes()) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = next;
        Some((number, line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_selects_format() {
        let ok = [
            (None, Format::Prometheus),
            (Some("text/plain"), Format::Prometheus),
            (Some("text/plain; version=0.0.4"), Format::Prometheus),
            (Some("text/plain; version=0.0.4; charset=utf-8"), Format::Prometheus),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
        ];
        for (header, format) in ok {
            assert_eq!(Format::from_content_type(header), Ok(format), "{header:?}");
        }
    }

    #[test]
    fn unknown_content_type_is_named_in_the_error() {
        let err = Format::from_content_type(Some("application/json")).unwrap_err();
        assert!(err.to_string().contains("application/json"), "{err}");
        assert!(Format::from_content_type(Some("text/plain; version=1.0.0")).is_err());
        assert!(
            Format::from_content_type(Some("application/openmetrics-text; version=2.0.0")).is_err()
        );
    }

    #[test]
    fn names_are_checked_by_their_grammar() {
        assert!(is_valid_metric_name("scout_stream_vulnerabilities"));
        assert!(is_valid_metric_name("a:b_c"));
        assert!(!is_valid_metric_name("0a"));
        assert!(!is_valid_metric_name("a.b"));
        assert!(!is_valid_metric_name(""));
        assert!(is_valid_label_name("streamName"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_label_name("1a"));
    }

    #[test]
    fn body_that_is_not_utf8_is_rejected_with_its_offset() {
        let err = parse(b"a 1\n\xff\n", Format::Prometheus, &Limits::default()).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::NotUtf8(4));
    }

    #[test]
    fn interner_shares_equal_strings() {
        let mut interner = Interner::default();
        let a = interner.intern(0, "production");
        let b = interner.intern(1, "production");
        let c = interner.intern(0, "staging");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*c, "staging");
    }

    #[test]
    fn quote_cuts_long_text_on_a_char_boundary() {
        let long = "é".repeat(50);
        let q = quote(&long);
        assert!(q.ends_with("…`"));
        assert_eq!(quote(""), "end of line");
    }
}
