//! Tokenizes one sample line, in either format's grammar.
//!
//! This is the hot loop of the parser: it borrows from the input and
//! allocates only for a label value that holds an escape sequence. Family
//! rules (which names a type allows, grouping, value ranges) are not its
//! business; the format modules apply them to what it returns.

use std::borrow::Cow;

use super::{Limits, ParseErrorKind, is_valid_label_name, is_valid_metric_name, quote};

/// Which grammar to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Prometheus text 0.0.4: spaces or tabs, trailing comma, trailing blanks.
    Prometheus,
    /// OpenMetrics 1.0: single spaces, exemplars, float timestamps.
    OpenMetrics,
}

/// A label pair as read from the line: the name borrowed, the value
/// borrowed unless it had to be unescaped.
pub(crate) type RawLabel<'a> = (&'a str, Cow<'a, str>);

/// The parts of a sample line other than its labels.
#[derive(Debug)]
pub(crate) struct SampleLine<'a> {
    pub name: &'a str,
    pub value: f64,
    pub timestamp: Option<f64>,
    pub has_exemplar: bool,
}

/// Reads `line` as a sample, filling `labels` (cleared first).
pub(crate) fn parse_sample<'a>(
    line: &'a str,
    dialect: Dialect,
    limits: &Limits,
    labels: &mut Vec<RawLabel<'a>>,
) -> Result<SampleLine<'a>, ParseErrorKind> {
    labels.clear();
    let mut cur = Cursor { text: line, pos: 0 };

    let name = cur.take_while(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    let ends_well = matches!(cur.peek(), None | Some(b' ' | b'\t' | b'{'));
    if !ends_well || !is_valid_metric_name(name) {
        let token = line.split([' ', '{', '\t']).next().unwrap_or("");
        return Err(ParseErrorKind::InvalidName { what: "metric", name: token.to_string() });
    }

    if dialect == Dialect::Prometheus {
        cur.skip_blanks();
    }
    if cur.peek() == Some(b'{') {
        cur.pos += 1;
        read_labels(&mut cur, dialect, limits, labels, false)?;
        if dialect == Dialect::Prometheus {
            cur.skip_blanks();
        } else {
            cur.expect(b' ', "a space after the label set")?;
        }
    } else if dialect == Dialect::OpenMetrics {
        cur.expect(b' ', "`{` or a space after the metric name")?;
    }

    let value_text = cur.token(dialect);
    let value = parse_value(value_text, "value")?;

    let mut timestamp = None;
    let mut has_exemplar = false;
    match dialect {
        Dialect::Prometheus => {
            cur.skip_blanks();
            let ts = cur.token(dialect);
            if !ts.is_empty() {
                let millis: i64 = ts.parse().map_err(|_| ParseErrorKind::InvalidNumber {
                    what: "timestamp (integer milliseconds)",
                    text: ts.to_string(),
                })?;
                timestamp = Some(millis as f64 / 1000.0);
                cur.skip_blanks();
            }
            if !cur.at_end() {
                return Err(expected("end of line", cur.rest()));
            }
        }
        Dialect::OpenMetrics => {
            if cur.at_end() {
                return Ok(SampleLine { name, value, timestamp, has_exemplar });
            }
            cur.expect(b' ', "a space or end of line after the value")?;
            if cur.peek() != Some(b'#') {
                let ts = cur.token(dialect);
                timestamp = Some(parse_timestamp(ts, "timestamp")?);
                if cur.at_end() {
                    return Ok(SampleLine { name, value, timestamp, has_exemplar });
                }
                cur.expect(b' ', "a space or end of line after the timestamp")?;
            }
            read_exemplar(&mut cur, limits)?;
            has_exemplar = true;
        }
    }
    Ok(SampleLine { name, value, timestamp, has_exemplar })
}

/// Reads ` # {labels} value [timestamp]` after a sample, the leading space
/// already consumed.
fn read_exemplar(cur: &mut Cursor<'_>, limits: &Limits) -> Result<(), ParseErrorKind> {
    cur.expect(b'#', "`#` before an exemplar")?;
    cur.expect(b' ', "a space after `#`")?;
    cur.expect(b'{', "`{` opening the exemplar's labels")?;
    let mut labels = Vec::new();
    read_labels(cur, Dialect::OpenMetrics, limits, &mut labels, true)?;
    let length: usize = labels.iter().map(|(n, v)| n.chars().count() + v.chars().count()).sum();
    if length > 128 {
        return Err(ParseErrorKind::Rule(format!(
            "exemplar labels hold {length} characters; at most 128 are allowed"
        )));
    }
    cur.expect(b' ', "a space after the exemplar's labels")?;
    let value = cur.token(Dialect::OpenMetrics);
    parse_value(value, "exemplar value")?;
    if cur.at_end() {
        return Ok(());
    }
    cur.expect(b' ', "a space or end of line after the exemplar value")?;
    let ts = cur.token(Dialect::OpenMetrics);
    parse_timestamp(ts, "exemplar timestamp")?;
    if !cur.at_end() {
        return Err(expected("end of line after the exemplar", cur.rest()));
    }
    Ok(())
}

/// Reads `name="value",...}` after the opening brace.
fn read_labels<'a>(
    cur: &mut Cursor<'a>,
    dialect: Dialect,
    limits: &Limits,
    labels: &mut Vec<RawLabel<'a>>,
    exemplar: bool,
) -> Result<(), ParseErrorKind> {
    let lenient = dialect == Dialect::Prometheus;
    if lenient {
        cur.skip_blanks();
    }
    if cur.peek() == Some(b'}') {
        cur.pos += 1;
        return Ok(());
    }
    loop {
        let name = cur.take_while(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !is_valid_label_name(name) {
            let shown = if name.is_empty() {
                cur.rest().split(['=', ',', '}']).next().unwrap_or("")
            } else {
                name
            };
            return Err(ParseErrorKind::InvalidName { what: "label", name: shown.to_string() });
        }
        if name.len() > limits.max_label_name_bytes {
            return Err(ParseErrorKind::Limit {
                what: "label name length in bytes",
                limit: limits.max_label_name_bytes,
            });
        }
        if lenient {
            cur.skip_blanks();
        }
        cur.expect(b'=', "`=` after the label name")?;
        if lenient {
            cur.skip_blanks();
        }
        cur.expect(b'"', "`\"` opening the label value")?;
        let value = read_quoted(cur, limits)?;
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(ParseErrorKind::DuplicateLabel(name.to_string()));
        }
        if !exemplar && labels.len() >= limits.max_labels {
            return Err(ParseErrorKind::Limit {
                what: "labels per series",
                limit: limits.max_labels,
            });
        }
        labels.push((name, value));
        if lenient {
            cur.skip_blanks();
        }
        match cur.peek() {
            Some(b',') => {
                cur.pos += 1;
                if lenient {
                    cur.skip_blanks();
                    if cur.peek() == Some(b'}') {
                        cur.pos += 1;
                        return Ok(());
                    }
                }
            }
            Some(b'}') => {
                cur.pos += 1;
                return Ok(());
            }
            _ => return Err(expected("`,` or `}` after a label value", cur.rest())),
        }
    }
}

/// Reads a label value up to its closing quote, unescaping `\\`, `\"` and
/// `\n`; any other escape is kept as written.
fn read_quoted<'a>(cur: &mut Cursor<'a>, limits: &Limits) -> Result<Cow<'a, str>, ParseErrorKind> {
    let start = cur.pos;
    let bytes = cur.text.as_bytes();
    let mut owned: Option<String> = None;
    let mut segment = start;
    let mut at = start;
    loop {
        let Some(offset) = memchr::memchr2(b'"', b'\\', &bytes[at..]) else {
            return Err(ParseErrorKind::Expected {
                expected: "`\"` closing the label value",
                found: "end of line".to_string(),
            });
        };
        let hit = at + offset;
        if hit - start > limits.max_label_value_bytes {
            return Err(ParseErrorKind::Limit {
                what: "label value length in bytes",
                limit: limits.max_label_value_bytes,
            });
        }
        if bytes[hit] == b'"' {
            cur.pos = hit + 1;
            return Ok(match owned {
                None => Cow::Borrowed(&cur.text[start..hit]),
                Some(mut s) => {
                    s.push_str(&cur.text[segment..hit]);
                    Cow::Owned(s)
                }
            });
        }
        let buf = owned.get_or_insert_with(String::new);
        buf.push_str(&cur.text[segment..hit]);
        match bytes.get(hit + 1) {
            Some(b'\\') => buf.push('\\'),
            Some(b'"') => buf.push('"'),
            Some(b'n') => buf.push('\n'),
            Some(_) => {
                // Unknown escape: keep the backslash; the next character is
                // copied with the following segment.
                buf.push('\\');
                segment = hit + 1;
                at = hit + 1;
                continue;
            }
            None => {
                return Err(ParseErrorKind::Expected {
                    expected: "`\"` closing the label value",
                    found: "end of line".to_string(),
                });
            }
        }
        segment = hit + 2;
        at = hit + 2;
    }
}

/// Parses a sample or exemplar value: a decimal float, `NaN` or an
/// infinity. Hexadecimal, binary, octal and `_` separators are refused.
pub(crate) fn parse_value(text: &str, what: &'static str) -> Result<f64, ParseErrorKind> {
    let invalid = || ParseErrorKind::InvalidNumber { what, text: text.to_string() };
    if text.is_empty() {
        return Err(ParseErrorKind::Expected {
            expected: if what == "value" { "a value" } else { "an exemplar value" },
            found: "end of line".to_string(),
        });
    }
    // Rust's float grammar is decimal only, like Python's `float()` that
    // the OpenMetrics reference parser uses: it refuses 0x1, 1_2 and 0b1.
    text.parse::<f64>().map_err(|_| invalid())
}

/// Parses an OpenMetrics timestamp: a finite decimal number of seconds.
fn parse_timestamp(text: &str, what: &'static str) -> Result<f64, ParseErrorKind> {
    let invalid = || ParseErrorKind::InvalidNumber { what, text: text.to_string() };
    if text.is_empty() {
        return Err(ParseErrorKind::Expected {
            expected: "a timestamp",
            found: "end of line".to_string(),
        });
    }
    let ts: f64 = text.parse().map_err(|_| invalid())?;
    if !ts.is_finite() {
        return Err(invalid());
    }
    Ok(ts)
}

fn expected(what: &'static str, rest: &str) -> ParseErrorKind {
    ParseErrorKind::Expected { expected: what, found: quote(rest) }
}

/// A read position in one line.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), ParseErrorKind> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(expected(what, self.rest()))
        }
    }

    /// ASCII-only predicate, so the slice always ends on a char boundary.
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        while self.pos < bytes.len() && pred(bytes[self.pos]) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn skip_blanks(&mut self) {
        self.take_while(|b| b == b' ' || b == b'\t');
    }

    /// The next token: up to a space (OpenMetrics) or a space or tab
    /// (Prometheus), or the end of the line.
    fn token(&mut self, dialect: Dialect) -> &'a str {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        let end = match dialect {
            Dialect::OpenMetrics => memchr::memchr(b' ', &bytes[start..]),
            Dialect::Prometheus => memchr::memchr2(b' ', b'\t', &bytes[start..]),
        }
        .map_or(bytes.len(), |i| start + i);
        self.pos = end;
        &self.text[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Read = (String, Vec<(String, String)>, f64, Option<f64>);

    fn sample(line: &str, dialect: Dialect) -> Result<Read, ParseErrorKind> {
        let mut labels = Vec::new();
        let s = parse_sample(line, dialect, &Limits::default(), &mut labels)?;
        let labels = labels.into_iter().map(|(n, v)| (n.to_string(), v.into_owned())).collect();
        Ok((s.name.to_string(), labels, s.value, s.timestamp))
    }

    #[test]
    fn escapes_in_label_values_are_unescaped() {
        let (_, labels, _, _) = sample(r#"a{l="x\\y\"z\nw"} 1"#, Dialect::Prometheus).unwrap();
        assert_eq!(labels, vec![("l".into(), "x\\y\"z\nw".into())]);
    }

    #[test]
    fn unknown_escape_is_kept_as_written() {
        let (_, labels, _, _) = sample(r#"a{l="b\\a\z"} 1"#, Dialect::OpenMetrics).unwrap();
        assert_eq!(labels[0].1, "b\\a\\z");
    }

    #[test]
    fn prometheus_timestamps_are_milliseconds() {
        let (_, _, v, ts) = sample("a 1 1700000000123", Dialect::Prometheus).unwrap();
        assert_eq!(v, 1.0);
        assert_eq!(ts, Some(1_700_000_000.123));
        assert!(sample("a 1 1.5", Dialect::Prometheus).is_err());
    }

    #[test]
    fn special_values_parse() {
        assert!(sample("a NaN", Dialect::Prometheus).unwrap().2.is_nan());
        assert_eq!(sample("a +Inf", Dialect::Prometheus).unwrap().2, f64::INFINITY);
        assert_eq!(sample("a -Inf", Dialect::Prometheus).unwrap().2, f64::NEG_INFINITY);
    }

    #[test]
    fn prometheus_allows_blanks_and_trailing_comma() {
        let (name, labels, v, _) =
            sample("a { b = \"1\" , c=\"2\", }\t3 \t", Dialect::Prometheus).unwrap();
        assert_eq!(name, "a");
        assert_eq!(labels.len(), 2);
        assert_eq!(v, 3.0);
    }

    #[test]
    fn openmetrics_refuses_double_space_and_trailing_space() {
        assert!(sample("a  1", Dialect::OpenMetrics).is_err());
        assert!(sample("a 1 ", Dialect::OpenMetrics).is_err());
        assert!(sample("a{b=\"1\",} 1", Dialect::OpenMetrics).is_err());
    }

    #[test]
    fn errors_say_what_was_expected() {
        let err = sample("a{b} 1", Dialect::Prometheus).unwrap_err();
        assert_eq!(err.to_string(), "expected `=` after the label name, found `} 1`");
        let err = sample("a{b=\"1\" 1", Dialect::Prometheus).unwrap_err();
        assert!(err.to_string().contains("`,` or `}`"), "{err}");
    }

    #[test]
    fn label_limits_are_enforced() {
        let limits = Limits { max_labels: 2, max_label_value_bytes: 4, ..Limits::default() };
        let mut labels = Vec::new();
        let err =
            parse_sample(r#"a{a="1",b="2",c="3"} 1"#, Dialect::Prometheus, &limits, &mut labels)
                .unwrap_err();
        assert!(matches!(err, ParseErrorKind::Limit { what: "labels per series", .. }));
        let err = parse_sample(r#"a{a="12345"} 1"#, Dialect::Prometheus, &limits, &mut labels)
            .unwrap_err();
        assert!(matches!(err, ParseErrorKind::Limit { .. }));
    }
}
