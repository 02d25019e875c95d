//! Prometheus text format 0.0.4, read the way the Prometheus server reads
//! a scrape.
//!
//! Families are keyed by name. A sample joins the family of its own name,
//! or the histogram or summary it is a `_bucket`, `_sum` or `_count` of;
//! otherwise it opens an untyped family. `TYPE` may therefore come before or
//! after the samples it describes, but only once per family; so may `HELP`.
//! Duplicate series are kept here; the snapshot decides which one counts.

use hashbrown::HashMap;

use super::line::{self, Dialect, RawLabel};
use super::{
    Exposition, Family, Interner, Label, Limits, MetricKind, ParseError, ParseErrorKind, Sample,
    is_valid_metric_name, lines, quote, unescape_help,
};

pub(super) fn parse(text: &str, limits: &Limits) -> Result<Exposition, ParseError> {
    let mut families = Families::default();
    let mut interner = Interner::default();
    let mut raw: Vec<RawLabel<'_>> = Vec::new();
    let mut current: Option<usize> = None;
    let mut sample_count = 0usize;

    for (number, line) in lines(text) {
        let at = |kind| ParseError { line: number, kind };
        if line.len() > limits.max_line_bytes {
            return Err(at(ParseErrorKind::Limit {
                what: "line length in bytes",
                limit: limits.max_line_bytes,
            }));
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        let body = line.trim_start_matches([' ', '\t']);
        if body.is_empty() {
            continue;
        }

        if let Some(comment) = body.strip_prefix('#') {
            let Some((keyword, name, rest)) = metadata(comment) else {
                continue; // a free comment
            };
            if !is_valid_metric_name(name) {
                return Err(at(ParseErrorKind::InvalidName {
                    what: "metric",
                    name: name.to_string(),
                }));
            }
            let i = families.get_or_open(name);
            let family = &mut families.list[i];
            if keyword == "HELP" {
                if family.help.is_some() {
                    return Err(at(ParseErrorKind::Rule(format!("second HELP line for `{name}`"))));
                }
                family.help = Some(unescape_help(rest, Dialect::Prometheus));
            } else {
                if families.declared[i] {
                    return Err(at(ParseErrorKind::Rule(format!("second TYPE line for `{name}`"))));
                }
                let word = rest.trim_end_matches([' ', '\t']).to_ascii_lowercase();
                family.kind = MetricKind::from_prometheus(&word).ok_or_else(|| {
                    at(ParseErrorKind::Expected {
                        expected: "one of counter, gauge, histogram, summary, untyped",
                        found: quote(rest),
                    })
                })?;
                families.declared[i] = true;
            }
            continue;
        }

        let parsed = line::parse_sample(body, Dialect::Prometheus, limits, &mut raw).map_err(at)?;
        sample_count += 1;
        if sample_count > limits.max_series {
            return Err(at(ParseErrorKind::Limit {
                what: "samples per payload",
                limit: limits.max_series,
            }));
        }
        let i = match current {
            Some(i) if owns(&families.list[i], parsed.name) => i,
            _ => families.for_sample(parsed.name),
        };
        current = Some(i);

        let mut labels = Vec::with_capacity(raw.len());
        for (slot, (name, value)) in raw.iter().enumerate() {
            labels.push(Label {
                name: interner.intern(1 + 2 * slot, name),
                value: interner.intern(2 + 2 * slot, value),
            });
        }
        let name = interner.intern(0, parsed.name);
        families.list[i].samples.push(Sample {
            name,
            labels: labels.into_boxed_slice(),
            value: parsed.value,
            timestamp: parsed.timestamp,
        });
    }
    Ok(Exposition { families: families.list })
}

/// The families read so far, by name.
#[derive(Default)]
struct Families {
    list: Vec<Family>,
    /// Whether each family has had its `TYPE` line.
    declared: Vec<bool>,
    by_name: HashMap<String, usize>,
}

impl Families {
    fn get_or_open(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        self.list.push(Family {
            name: name.to_string(),
            kind: MetricKind::Unknown,
            help: None,
            unit: None,
            samples: Vec::new(),
        });
        self.declared.push(false);
        self.by_name.insert(name.to_string(), self.list.len() - 1);
        self.list.len() - 1
    }

    /// The family a sample named `name` joins: its own, the histogram or
    /// summary it is a part of, or a new untyped one.
    fn for_sample(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let parent = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            let &i = self.by_name.get(base)?;
            suffix_fits(self.list[i].kind, suffix).then_some(i)
        });
        parent.unwrap_or_else(|| self.get_or_open(name))
    }
}

/// Splits `# HELP name text` or `# TYPE name type` (the `#` already
/// removed) into its parts; `None` for any other comment.
fn metadata(comment: &str) -> Option<(&str, &str, &str)> {
    let blanks = [' ', '\t'];
    let rest = comment.strip_prefix(blanks)?.trim_start_matches(blanks);
    let (keyword, rest) = rest.split_once(blanks)?;
    if keyword != "HELP" && keyword != "TYPE" {
        return None;
    }
    let rest = rest.trim_start_matches(blanks);
    let (name, text) = match rest.split_once(blanks) {
        Some((name, text)) => (name, text.trim_start_matches(blanks)),
        None => (rest, ""),
    };
    Some((keyword, name, text))
}

/// Whether a sample named `name` belongs to `family`.
fn owns(family: &Family, name: &str) -> bool {
    match name.strip_prefix(family.name.as_str()) {
        Some("") => true,
        Some(suffix) => suffix_fits(family.kind, suffix),
        None => false,
    }
}

fn suffix_fits(kind: MetricKind, suffix: &str) -> bool {
    match kind {
        MetricKind::Histogram => matches!(suffix, "_bucket" | "_sum" | "_count"),
        MetricKind::Summary => matches!(suffix, "_sum" | "_count"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    //! One test per rule of the Prometheus text format that Scout's
    //! payloads may exercise.

    use super::super::{Format, parse as parse_body};
    use super::*;

    fn prom(text: &str) -> Exposition {
        parse_body(text.as_bytes(), Format::Prometheus, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn prom_err(text: &str) -> ParseError {
        parse_body(text.as_bytes(), Format::Prometheus, &Limits::default()).unwrap_err()
    }

    fn only_sample(e: &Exposition) -> &Sample {
        assert_eq!(e.sample_count(), 1, "{e:?}");
        e.families.iter().find_map(|f| f.samples.first()).unwrap()
    }

    #[test]
    fn label_value_escapes_backslash_quote_newline() {
        let e = prom("a{v=\"back\\\\slash \\\"quoted\\\" new\\nline\"} 1\n");
        assert_eq!(only_sample(&e).label("v"), Some("back\\slash \"quoted\" new\nline"));
    }

    #[test]
    fn help_escapes_backslash_and_newline_only() {
        let e = prom("# HELP a one\\\\two\\nthree \\\"kept\\\"\na 1\n");
        assert_eq!(e.families[0].help.as_deref(), Some("one\\two\nthree \\\"kept\\\""));
    }

    #[test]
    fn optional_timestamp_in_milliseconds() {
        let e = prom("a 1 1712345678901\nb 2\n");
        assert_eq!(e.families[0].samples[0].timestamp, Some(1_712_345_678.901));
        assert_eq!(e.families[1].samples[0].timestamp, None);
        let err = prom_err("a 1 12.5\n");
        assert!(err.to_string().contains("timestamp"), "{err}");
    }

    #[test]
    fn nan_and_infinities() {
        let e = prom("a{x=\"1\"} NaN\na{x=\"2\"} +Inf\na{x=\"3\"} -Inf\n");
        let v: Vec<f64> = e.families[0].samples.iter().map(|s| s.value).collect();
        assert!(v[0].is_nan());
        assert_eq!(v[1], f64::INFINITY);
        assert_eq!(v[2], f64::NEG_INFINITY);
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let e = prom("# just a comment\n\n   \n#another\na 1\n\n# TYPEX a gauge\n");
        assert_eq!(e.families.len(), 1);
        assert_eq!(e.families[0].kind, MetricKind::Unknown);
    }

    #[test]
    fn untyped_samples_without_type() {
        let e = prom("scout_new_metric{k=\"v\"} 3\n");
        assert_eq!(e.families[0].name, "scout_new_metric");
        assert_eq!(e.families[0].kind, MetricKind::Unknown);
        let e = prom("# TYPE a untyped\na 1\n");
        assert_eq!(e.families[0].kind, MetricKind::Unknown);
    }

    #[test]
    fn help_and_type_in_either_order() {
        for text in ["# HELP a h\n# TYPE a gauge\na 1\n", "# TYPE a gauge\n# HELP a h\na 1\n"] {
            let e = prom(text);
            assert_eq!(e.families.len(), 1);
            assert_eq!(e.families[0].kind, MetricKind::Gauge);
            assert_eq!(e.families[0].help.as_deref(), Some("h"));
        }
    }

    #[test]
    fn type_after_its_samples_applies_to_the_family() {
        let e = prom("a{x=\"1\"} 1\na{x=\"2\"} 2\n# TYPE a gauge\n");
        assert_eq!(e.families.len(), 1);
        assert_eq!(e.families[0].kind, MetricKind::Gauge);
        assert_eq!(e.families[0].samples.len(), 2);
    }

    #[test]
    fn second_type_or_help_for_a_family_is_an_error() {
        let err = prom_err("# TYPE a gauge\n# TYPE a counter\n");
        assert_eq!(err.line, 2);
        assert!(err.to_string().contains("second TYPE"), "{err}");
        let err = prom_err("# HELP a x\na 1\n# HELP a y\n");
        assert_eq!(err.line, 3);
    }

    #[test]
    fn duplicate_series_are_kept_for_the_snapshot_to_resolve() {
        let e = prom("a{x=\"1\"} 1\na{x=\"1\"} 2\n");
        assert_eq!(e.families[0].samples.len(), 2);
    }

    #[test]
    fn trailing_whitespace_is_ignored() {
        let e = prom("a{x=\"1\"} 5 \t\n# TYPE b gauge  \nb 6\t\r\n");
        assert_eq!(e.families[0].samples[0].value, 5.0);
        assert_eq!(e.families[1].kind, MetricKind::Gauge);
    }

    #[test]
    fn body_without_final_newline() {
        let e = prom("a 1\nb 2");
        assert_eq!(e.families[1].samples[0].value, 2.0);
    }

    #[test]
    fn histogram_and_summary_samples_join_their_family() {
        let e = prom(
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\
             # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n",
        );
        assert_eq!(e.families.len(), 2);
        assert_eq!(e.families[0].samples.len(), 4);
        assert_eq!(e.families[1].samples.len(), 3);
    }

    #[test]
    fn errors_name_the_line_and_what_was_expected() {
        let err = prom_err("a 1\nb{x=\"1\" 2\n");
        assert_eq!(err.line, 2);
        assert_eq!(err.to_string(), "line 2: expected `,` or `}` after a label value, found `2`");
        let err = prom_err("a 1\nb one\n");
        assert_eq!(err.to_string(), "line 2: invalid value `one`");
        let err = prom_err("# TYPE a gauges\n");
        assert!(err.to_string().starts_with("line 1: expected one of counter"), "{err}");
        let err = prom_err("a.b 1\n");
        assert_eq!(err.to_string(), "line 1: invalid metric name `a.b`");
    }

    #[test]
    fn limits_fail_with_a_named_limit() {
        let limits = Limits { max_series: 2, max_line_bytes: 30, ..Limits::default() };
        let err = parse_body(b"a 1\nb 2\nc 3\n", Format::Prometheus, &limits).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.to_string().contains("samples per payload"), "{err}");
        let long = format!("a{{x=\"{}\"}} 1\n", "y".repeat(40));
        let err = parse_body(long.as_bytes(), Format::Prometheus, &limits).unwrap_err();
        assert!(err.to_string().contains("line length"), "{err}");
    }

    #[test]
    fn empty_body_is_an_error() {
        let err = parse_body(b"", Format::Prometheus, &Limits::default()).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::Empty);
    }
}
