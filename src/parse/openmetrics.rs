//! OpenMetrics 1.0 text: the family rules on top of the line grammar.
//!
//! A family is open from its first metadata line or sample until a line
//! names another family. When it closes, the whole-family rules run: name
//! clashes with earlier families, `UNIT` agreement, and histogram bucket
//! consistency. Grouping (all samples of one label set together) and
//! timestamp order are checked as samples arrive.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashSet, HashTable};

use super::line::{self, Dialect, RawLabel};
use super::{
    Exposition, Family, Interner, Label, Limits, MetricKind, ParseError, ParseErrorKind, Sample,
    is_valid_metric_name, lines, quote, unescape_help,
};

pub(super) fn parse(text: &str, limits: &Limits) -> Result<Exposition, ParseError> {
    let mut state = State::new(limits);
    // Reused for every line's labels; borrows from `text`.
    let mut raw: Vec<RawLabel<'_>> = Vec::new();
    let mut eof_at = None;
    let mut last_line = 0;
    for (number, line) in lines(text) {
        last_line = number;
        let at = |kind| ParseError { line: number, kind };
        if eof_at.is_some() {
            return Err(at(ParseErrorKind::TextAfterEof));
        }
        if line.len() > limits.max_line_bytes {
            return Err(at(ParseErrorKind::Limit {
                what: "line length in bytes",
                limit: limits.max_line_bytes,
            }));
        }
        if line == "# EOF" {
            eof_at = Some(number);
        } else if line.is_empty() {
            return Err(at(ParseErrorKind::Rule(
                "blank lines are not allowed in OpenMetrics".to_string(),
            )));
        } else if line.starts_with('#') {
            state.metadata(number, line)?;
        } else {
            state.sample(number, line, &mut raw).map_err(at)?;
        }
    }
    if eof_at.is_none() {
        return Err(ParseError { line: last_line, kind: ParseErrorKind::MissingEof });
    }
    state.close_family()?;
    Ok(Exposition { families: state.families })
}

/// The sample-name suffixes each type allows, the empty suffix being the
/// family name itself.
fn suffixes(kind: MetricKind) -> &'static [&'static str] {
    match kind {
        MetricKind::Counter => &["_total", "_created"],
        MetricKind::Summary => &["", "_count", "_sum", "_created"],
        MetricKind::Histogram => &["_count", "_sum", "_bucket", "_created"],
        MetricKind::GaugeHistogram => &["_gcount", "_gsum", "_bucket"],
        MetricKind::Info => &["_info"],
        MetricKind::Gauge | MetricKind::StateSet | MetricKind::Unknown => &[""],
    }
}

/// The family being read.
struct Open {
    name: String,
    first_line: usize,
    kind: Option<MetricKind>,
    help: Option<String>,
    unit: Option<String>,
    samples: Vec<Sample>,
    /// Hash and sample index of the current group.
    group: Option<(u64, usize)>,
    group_timestamp: Option<f64>,
    /// Every group seen so far: its hash and the index of one of its
    /// samples. One flat table: every Scout sample is a group of its own,
    /// and a list per group cost a third of the parse in allocations.
    seen_groups: HashTable<(u64, usize)>,
}

impl Open {
    fn new(name: &str, first_line: usize) -> Open {
        Open {
            name: name.to_string(),
            first_line,
            kind: None,
            help: None,
            unit: None,
            samples: Vec::new(),
            group: None,
            group_timestamp: None,
            seen_groups: HashTable::new(),
        }
    }

    fn kind(&self) -> MetricKind {
        self.kind.unwrap_or(MetricKind::Unknown)
    }

    fn allows(&self, sample_name: &str) -> bool {
        sample_name
            .strip_prefix(self.name.as_str())
            .is_some_and(|suffix| suffixes(self.kind()).contains(&suffix))
    }

    /// The label left out of the group key for this sample, if any.
    fn group_exclusion<'s>(&'s self, suffix: &str) -> GroupKey<'s> {
        match self.kind() {
            MetricKind::Info => GroupKey::Whole,
            MetricKind::Summary if suffix.is_empty() => GroupKey::Except("quantile"),
            MetricKind::StateSet => GroupKey::Except(&self.name),
            MetricKind::Histogram | MetricKind::GaugeHistogram if suffix == "_bucket" => {
                GroupKey::Except("le")
            }
            _ => GroupKey::All,
        }
    }
}

/// Which labels make up a sample's group.
#[derive(Clone, Copy)]
enum GroupKey<'s> {
    /// Every sample is in one group (info).
    Whole,
    /// All labels.
    All,
    /// All labels but this one.
    Except(&'s str),
}

impl GroupKey<'_> {
    fn includes(self, name: &str) -> bool {
        match self {
            GroupKey::Whole => false,
            GroupKey::All => true,
            GroupKey::Except(skip) => name != skip,
        }
    }

    fn hash(self, hasher: &DefaultHashBuilder, labels: &[Label]) -> u64 {
        labels
            .iter()
            .filter(|l| self.includes(&l.name))
            .fold(0u64, |acc, l| acc.wrapping_add(hasher.hash_one((&*l.name, &*l.value))))
    }

    fn same(self, a: &[Label], b: &[Label]) -> bool {
        same_group(self, a, self, b)
    }
}

/// Whether two samples, each with its own group key, are in one group.
fn same_group(key_a: GroupKey<'_>, a: &[Label], key_b: GroupKey<'_>, b: &[Label]) -> bool {
    let in_a = || a.iter().filter(|l| key_a.includes(&l.name));
    let in_b = || b.iter().filter(|l| key_b.includes(&l.name));
    in_a().count() == in_b().count() && in_a().all(|l| in_b().any(|m| m == l))
}

struct State<'l> {
    limits: &'l Limits,
    families: Vec<Family>,
    open: Option<Open>,
    /// Every sample name claimed by a closed family, to catch clashes.
    claimed: HashSet<String>,
    interner: Interner,
    hasher: DefaultHashBuilder,
    sample_count: usize,
}

impl<'l> State<'l> {
    fn new(limits: &'l Limits) -> State<'l> {
        State {
            limits,
            families: Vec::new(),
            open: None,
            claimed: HashSet::new(),
            interner: Interner::default(),
            hasher: DefaultHashBuilder::default(),
            sample_count: 0,
        }
    }

    fn metadata(&mut self, number: usize, line: &str) -> Result<(), ParseError> {
        let at = |kind| ParseError { line: number, kind };
        let mut parts = line.splitn(4, ' ');
        let (Some("#"), Some(keyword), Some(name), Some(rest)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(at(ParseErrorKind::Expected {
                expected: "`# HELP name text`, `# TYPE name type`, `# UNIT name unit` or `# EOF`",
                found: quote(line),
            }));
        };
        if !is_valid_metric_name(name) {
            return Err(at(ParseErrorKind::InvalidName { what: "metric", name: name.to_string() }));
        }
        let same_family = self.open.as_ref().is_some_and(|f| f.name == name);
        if same_family {
            if self.open.as_ref().is_some_and(|f| !f.samples.is_empty()) {
                return Err(at(ParseErrorKind::Rule(format!(
                    "{keyword} for `{name}` comes after its samples"
                ))));
            }
        } else {
            self.close_family()?;
            self.open = Some(Open::new(name, number));
        }
        let family = self.open.as_mut().expect("a family was just opened");
        let repeated = || at(ParseErrorKind::Rule(format!("second {keyword} line for `{name}`")));
        match keyword {
            "HELP" => {
                if family.help.is_some() {
                    return Err(repeated());
                }
                family.help = Some(unescape_help(rest, Dialect::OpenMetrics));
            }
            "TYPE" => {
                if family.kind.is_some() {
                    return Err(repeated());
                }
                let kind = MetricKind::from_openmetrics(rest).ok_or_else(|| {
                    at(ParseErrorKind::Expected {
                        expected: "one of counter, gauge, histogram, gaugehistogram, \
                                   summary, info, stateset, unknown",
                        found: quote(rest),
                    })
                })?;
                family.kind = Some(kind);
            }
            "UNIT" => {
                if family.unit.is_some() {
                    return Err(repeated());
                }
                family.unit = Some(rest.to_string());
            }
            _ => {
                return Err(at(ParseErrorKind::Expected {
                    expected: "HELP, TYPE, UNIT or EOF after `#`",
                    found: quote(keyword),
                }));
            }
        }
        Ok(())
    }

    fn sample<'t>(
        &mut self,
        number: usize,
        text: &'t str,
        raw: &mut Vec<RawLabel<'t>>,
    ) -> Result<(), ParseErrorKind> {
        let parsed = line::parse_sample(text, Dialect::OpenMetrics, self.limits, raw)?;
        self.sample_count += 1;
        if self.sample_count > self.limits.max_series {
            return Err(ParseErrorKind::Limit {
                what: "samples per payload",
                limit: self.limits.max_series,
            });
        }
        if !self.open.as_ref().is_some_and(|f| f.allows(parsed.name)) {
            self.close_family().map_err(|e| e.kind)?;
            self.open = Some(Open::new(parsed.name, number));
        }

        let mut interned = Vec::with_capacity(raw.len());
        for (i, (name, value)) in raw.iter().enumerate() {
            interned.push(Label {
                name: self.interner.intern(1 + 2 * i, name),
                value: self.interner.intern(2 + 2 * i, value),
            });
        }
        let sample = Sample {
            name: self.interner.intern(0, parsed.name),
            labels: interned.into_boxed_slice(),
            value: parsed.value,
            timestamp: parsed.timestamp,
        };

        let family = self.open.as_mut().expect("a family is open");
        let kind = family.kind();
        let suffix = &parsed.name[family.name.len()..];
        let rule = |msg: String| Err(ParseErrorKind::Rule(msg));

        if kind == MetricKind::StateSet && sample.label(&family.name).is_none() {
            return rule(format!(
                "stateset sample lacks the label `{}` naming its state",
                family.name
            ));
        }
        if suffix == "_bucket" {
            match sample.label("le") {
                Some(le) if canonical_float(le).is_some_and(|b| !b.is_nan()) => {}
                Some(le) => return rule(format!("invalid `le` label `{le}`")),
                None => return rule("bucket sample lacks the `le` label".to_string()),
            }
        }
        if matches!(suffix, "_bucket" | "_count" | "_gcount") && !is_integer(sample.value) {
            return rule(format!("`{}` must be an integer", sample.name));
        }
        if kind == MetricKind::Summary && suffix.is_empty() {
            let q = sample.label("quantile");
            if !q.and_then(canonical_float).is_some_and(|q| (0.0..=1.0).contains(&q)) {
                return rule(format!(
                    "summary sample needs a `quantile` label from 0 to 1, found {}",
                    q.map_or("none".to_string(), quote)
                ));
            }
        }

        let key = family.group_exclusion(suffix);
        let hash = key.hash(&self.hasher, &sample.labels);
        let index = family.samples.len();
        let same_group = family
            .group
            .is_some_and(|(h, i)| h == hash && key.same(&family.samples[i].labels, &sample.labels));
        if same_group {
            if sample.timestamp.is_some() != family.group_timestamp.is_some() {
                return rule("samples of one group mix timestamps and no timestamps".to_string());
            }
            if let (Some(prev), Some(ts)) = (family.group_timestamp, sample.timestamp)
                && prev > ts
                && kind != MetricKind::Info
            {
                return rule(format!("timestamp {ts} goes back from {prev} within a group"));
            }
        } else {
            let samples = &family.samples;
            let earlier = family
                .seen_groups
                .find(hash, |&(h, i)| h == hash && key.same(&samples[i].labels, &sample.labels))
                .is_some();
            if earlier {
                return rule(format!(
                    "samples of `{}` with these labels must be together; the group appeared earlier",
                    family.name
                ));
            }
            family.seen_groups.insert_unique(hash, (hash, index), |&(h, _)| h);
        }
        family.group = Some((hash, index));
        family.group_timestamp = sample.timestamp;

        let v = sample.value;
        if kind == MetricKind::StateSet && v != 0.0 && v != 1.0 {
            return rule(format!("stateset values are 0 or 1, found {v}"));
        }
        if kind == MetricKind::Info && v != 1.0 {
            return rule(format!("info values are 1, found {v}"));
        }
        if kind == MetricKind::Summary && suffix.is_empty() && v < 0.0 {
            return rule(format!("quantile values cannot be negative, found {v}"));
        }
        let counter_like =
            matches!(suffix, "_total" | "_sum" | "_count" | "_bucket" | "_gcount" | "_gsum");
        if counter_like && v.is_nan() {
            return rule(format!("`{}` cannot be NaN", sample.name));
        }
        if counter_like && suffix != "_gsum" && v < 0.0 {
            return rule(format!("`{}` cannot be negative, found {v}", sample.name));
        }
        if parsed.has_exemplar {
            let allowed = match kind {
                MetricKind::Histogram | MetricKind::GaugeHistogram => suffix == "_bucket",
                MetricKind::Counter => suffix == "_total",
                _ => false,
            };
            if !allowed {
                return rule(format!(
                    "exemplars are allowed only on counter totals and histogram buckets, not on `{}`",
                    sample.name
                ));
            }
        }
        family.samples.push(sample);
        Ok(())
    }

    /// Applies the whole-family rules to the open family and stores it.
    fn close_family(&mut self) -> Result<(), ParseError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let at =
            |msg: String| ParseError { line: open.first_line, kind: ParseErrorKind::Rule(msg) };
        let kind = open.kind();
        let mut names: Vec<&str> = suffixes(kind).to_vec();
        if !names.contains(&"") {
            names.push("");
        }
        for suffix in names {
            let claimed = format!("{}{suffix}", open.name);
            if self.claimed.contains(&claimed) {
                return Err(at(format!(
                    "`{claimed}` clashes with a name used by an earlier family"
                )));
            }
            self.claimed.insert(claimed);
        }
        let unit = open.unit.filter(|u| !u.is_empty());
        if let Some(unit) = &unit {
            if !open.name.ends_with(&format!("_{unit}")) {
                return Err(at(format!("family `{}` must end in its unit `_{unit}`", open.name)));
            }
            if matches!(kind, MetricKind::Info | MetricKind::StateSet) {
                return Err(at(format!(
                    "{} family `{}` cannot have a unit",
                    kind.as_str(),
                    open.name
                )));
            }
        }
        if matches!(kind, MetricKind::Histogram | MetricKind::GaugeHistogram) {
            check_histogram(&open.name, &open.samples).map_err(at)?;
        }
        self.families.push(Family {
            name: open.name,
            kind,
            help: open.help,
            unit,
            samples: open.samples,
        });
        Ok(())
    }
}

/// Bucket order, `+Inf` presence and `_count`/`_sum` agreement for each
/// group of a histogram or gauge histogram.
fn check_histogram(name: &str, samples: &[Sample]) -> Result<(), String> {
    #[derive(Default)]
    struct Group {
        bucket: Option<f64>,
        cumulative: f64,
        count: Option<f64>,
        has_sum: bool,
        has_gsum: bool,
        negative_buckets: bool,
        negative_gsum: bool,
    }
    let finish = |g: &Group| -> Result<(), String> {
        if g.bucket != Some(f64::INFINITY) {
            return Err(format!("histogram `{name}` lacks its `+Inf` bucket"));
        }
        if g.count.is_some_and(|c| c != g.cumulative) {
            return Err(format!("histogram `{name}`: the count does not match the `+Inf` bucket"));
        }
        if g.has_sum && g.count.is_none() {
            return Err(format!("histogram `{name}` has `_sum` but no `_count`"));
        }
        if g.has_gsum && g.count.is_none() {
            return Err(format!("histogram `{name}` has `_gsum` but no `_gcount`"));
        }
        if !(g.has_sum || g.has_gsum) && g.count.is_some() {
            return Err(format!("histogram `{name}` has a count but no sum"));
        }
        if g.negative_buckets && g.has_sum {
            return Err(format!("histogram `{name}` cannot have `_sum` with negative buckets"));
        }
        if !g.negative_buckets && g.negative_gsum {
            return Err(format!(
                "histogram `{name}` has a negative `_gsum` but no negative bucket"
            ));
        }
        Ok(())
    };

    let mut current: Option<(usize, Option<f64>)> = None;
    let mut group = Group::default();
    for (i, s) in samples.iter().enumerate() {
        let suffix = &s.name[name.len()..];
        let key = if suffix == "_bucket" { GroupKey::Except("le") } else { GroupKey::All };
        let same = current.is_some_and(|(j, ts)| {
            let prev_key = if &samples[j].name[name.len()..] == "_bucket" {
                GroupKey::Except("le")
            } else {
                GroupKey::All
            };
            ts == s.timestamp && same_group(key, &s.labels, prev_key, &samples[j].labels)
        });
        if !same {
            if current.is_some() {
                finish(&group)?;
            }
            group = Group::default();
        }
        current = Some((i, s.timestamp));
        match suffix {
            "_bucket" => {
                let le = s.label("le").and_then(canonical_float).unwrap_or(f64::NAN);
                if le < 0.0 {
                    group.negative_buckets = true;
                }
                if group.bucket.is_some_and(|b| le <= b) {
                    return Err(format!("histogram `{name}`: buckets are out of order"));
                }
                if s.value < group.cumulative {
                    return Err(format!("histogram `{name}`: bucket counts must not decrease"));
                }
                group.bucket = Some(le);
                group.cumulative = s.value;
            }
            "_count" | "_gcount" => group.count = Some(s.value),
            "_sum" => group.has_sum = true,
            "_gsum" => {
                group.has_gsum = true;
                group.negative_gsum |= s.value < 0.0;
            }
            _ => {}
        }
    }
    if current.is_some() {
        finish(&group)?;
    }
    Ok(())
}

/// Parses a number used as a label (`le`, `quantile`); infinities must be
/// written `+Inf` or `-Inf`.
fn canonical_float(text: &str) -> Option<f64> {
    let v: f64 = text.parse().ok()?;
    if v.is_infinite() && text != "+Inf" && text != "-Inf" {
        return None;
    }
    Some(v)
}

fn is_integer(v: f64) -> bool {
    v.is_finite() && v.fract() == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn om(text: &str) -> Result<Exposition, ParseError> {
        parse(text, &Limits::default())
    }

    #[test]
    fn gauge_family_reads_help_type_and_unit() {
        let e = om("# TYPE a_seconds gauge\n# UNIT a_seconds seconds\n# HELP a_seconds h\\n\na_seconds{x=\"1\"} 2.5\n# EOF\n").unwrap();
        let f = &e.families[0];
        assert_eq!(f.kind, MetricKind::Gauge);
        assert_eq!(f.unit.as_deref(), Some("seconds"));
        assert_eq!(f.help.as_deref(), Some("h\n"));
        assert_eq!(f.samples[0].value, 2.5);
    }

    #[test]
    fn missing_eof_is_a_truncated_body() {
        let err = om("# TYPE a gauge\na 1\n").unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::MissingEof);
        assert_eq!(err.line, 2);
    }

    #[test]
    fn interleaved_groups_are_refused_with_the_line() {
        let err = om("a{x=\"1\"} 1\na{x=\"2\"} 1\na{x=\"1\"} 1\n# EOF\n").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn family_rule_errors_point_at_the_family_start() {
        let err = om("# TYPE a histogram\na_bucket{le=\"1\"} 0\n# EOF\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.to_string().contains("+Inf"), "{err}");
    }
}
