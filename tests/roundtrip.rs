//! Property tests of the payload parser: what we render, it reads back.
//!
//! A random snapshot (gauge and untyped families, label values drawn from
//! all of Unicode with the three escaped characters made likely, finite
//! floats over the whole exponent range) is written out by a small renderer
//! kept here, independent of the parser, in both text formats. Parsing must
//! return the same families, the same label strings and the same value bits.
//! The other properties are about hostile input: no string may make the
//! parser panic, and an OpenMetrics body cut anywhere before its `# EOF` must
//! be refused, since that is how a truncated response is told from a whole
//! one. Nothing here checks error messages; the unit tests in `src/parse` do.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use proptest::prelude::*;
use scout_exporter::parse::{Exposition, Format, Limits, MetricKind, parse};

/// One family as the generator builds it, before rendering.
#[derive(Clone, Debug)]
struct GenFamily {
    name: String,
    gauge: bool,
    help: Option<String>,
    samples: Vec<GenSample>,
}

#[derive(Clone, Debug)]
struct GenSample {
    labels: Vec<(String, String)>,
    value: f64,
}

fn metric_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_:][a-zA-Z0-9_:]{0,24}"
}

fn label_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,12}"
}

/// Any character, with the ones that need escaping drawn far more often
/// than their share of Unicode would give.
fn value_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => any::<char>(),
        1 => Just('"'),
        1 => Just('\\'),
        1 => Just('\n'),
        1 => Just(' '),
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop::collection::vec(value_char(), 0..16).prop_map(|chars| chars.into_iter().collect())
}

/// HELP text. It starts with a visible character because Prometheus text
/// lets any run of blanks separate the name from the text, so leading
/// blanks cannot survive a round trip; control characters other than the
/// newline are left out for the same reason (a final `\r` is a line end).
fn help_text() -> impl Strategy<Value = String> {
    let rest = prop::collection::vec(
        prop_oneof![
            6 => any::<char>().prop_filter("no control characters", |c| !c.is_control()),
            1 => Just('"'),
            1 => Just('\\'),
            1 => Just('\n'),
        ],
        0..24,
    );
    ("[a-zA-Z0-9é€]", rest).prop_map(|(first, rest)| {
        let rest: String = rest.into_iter().collect();
        first + &rest
    })
}

/// Finite values of every sign and magnitude: zeros, subnormals, and
/// normals from about 1e-308 to 1e308.
fn value() -> impl Strategy<Value = f64> {
    use prop::num::f64;
    f64::POSITIVE | f64::NEGATIVE | f64::NORMAL | f64::SUBNORMAL | f64::ZERO
}

/// A label set with distinct names.
fn label_set() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((label_name(), label_value()), 0..5).prop_map(|pairs| {
        let mut seen = BTreeSet::new();
        pairs.into_iter().filter(|(name, _)| seen.insert(name.clone())).collect()
    })
}

fn family(name: String) -> impl Strategy<Value = GenFamily> {
    let samples = prop::collection::vec((label_set(), value()), 0..8).prop_map(|raw| {
        // OpenMetrics wants all samples of one label set together, and a
        // repeat of a series is not what this test is about: keep the first
        // of each set, compared regardless of label order.
        let mut seen = BTreeSet::new();
        raw.into_iter()
            .filter(|(labels, _)| {
                let mut key = labels.clone();
                key.sort();
                seen.insert(key)
            })
            .map(|(labels, value)| GenSample { labels, value })
            .collect::<Vec<_>>()
    });
    (any::<bool>(), prop::option::of(help_text()), samples).prop_map(
        move |(gauge, help, samples)| GenFamily { name: name.clone(), gauge, help, samples },
    )
}

fn snapshot() -> impl Strategy<Value = Vec<GenFamily>> {
    prop::collection::btree_set(metric_name(), 1..6)
        .prop_flat_map(|names| names.into_iter().map(family).collect::<Vec<_>>())
}

fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP escapes only the backslash and the newline in both formats; a
/// quote is written as is.
fn escape_help(help: &str, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn render(families: &[GenFamily], format: Format) -> String {
    let mut out = String::new();
    for f in families {
        if let Some(help) = &f.help {
            write!(out, "# HELP {} ", f.name).unwrap();
            escape_help(help, &mut out);
            out.push('\n');
        }
        let kind = match (f.gauge, format) {
            (true, _) => "gauge",
            (false, Format::Prometheus) => "untyped",
            (false, Format::OpenMetrics) => "unknown",
        };
        writeln!(out, "# TYPE {} {kind}", f.name).unwrap();
        for s in &f.samples {
            out.push_str(&f.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write!(out, "{name}=\"").unwrap();
                    escape_label_value(value, &mut out);
                    out.push('"');
                }
                out.push('}');
            }
            // `{:?}` prints the shortest text that reads back to the same
            // bits, switching to an exponent for very large or small values.
            writeln!(out, " {:?}", s.value).unwrap();
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// Asserts that `parsed` holds exactly the generated families.
fn assert_same(expected: &[GenFamily], parsed: &Exposition, body: &str) {
    let names: Vec<&str> = parsed.families.iter().map(|f| f.name.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, want, "family names\n{body}");
    for (want, got) in expected.iter().zip(&parsed.families) {
        let kind = if want.gauge { MetricKind::Gauge } else { MetricKind::Unknown };
        assert_eq!(got.kind, kind, "kind of {}\n{body}", want.name);
        assert_eq!(got.help, want.help, "help of {}\n{body}", want.name);
        assert_eq!(got.samples.len(), want.samples.len(), "samples of {}\n{body}", want.name);
        for (ws, gs) in want.samples.iter().zip(&got.samples) {
            assert_eq!(&*gs.name, want.name);
            let labels: Vec<(&str, &str)> =
                gs.labels.iter().map(|l| (&*l.name, &*l.value)).collect();
            let wanted: Vec<(&str, &str)> =
                ws.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            assert_eq!(labels, wanted, "labels in {}\n{body}", want.name);
            assert_eq!(
                gs.value.to_bits(),
                ws.value.to_bits(),
                "value {:?} read back as {:?}\n{body}",
                ws.value,
                gs.value
            );
            assert_eq!(gs.timestamp, None);
        }
    }
}

/// Text made of the formats' own tokens, so that random input reaches past
/// the first character of a line far more often than random Unicode does.
fn token_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("# "),
        Just("#"),
        Just("HELP "),
        Just("TYPE "),
        Just("UNIT "),
        Just("EOF"),
        Just("# EOF\n"),
        Just("gauge"),
        Just("counter"),
        Just("histogram"),
        Just("summary"),
        Just("stateset"),
        Just("info"),
        Just("a"),
        Just("a_total"),
        Just("a_bucket"),
        Just("a_count"),
        Just("a_sum"),
        Just("a_created"),
        Just("le"),
        Just("quantile"),
        Just("{"),
        Just("}"),
        Just("=\""),
        Just("\""),
        Just(","),
        Just("\\"),
        Just(" "),
        Just("\t"),
        Just("\n"),
        Just("\r"),
        Just("1"),
        Just("-1.5e3"),
        Just("+Inf"),
        Just("NaN"),
        Just(" # {"),
        Just("é"),
    ];
    prop::collection::vec(token, 0..64).prop_map(|tokens| tokens.concat())
}

fn small_limits() -> Limits {
    Limits {
        max_line_bytes: 24,
        max_labels: 2,
        max_label_name_bytes: 3,
        max_label_value_bytes: 4,
        max_series: 3,
    }
}

/// Runs the parser in every format and limit setting, discarding results:
/// only a panic fails.
fn parse_everywhere(body: &[u8]) {
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let _ = parse(body, format, &Limits::default());
        let _ = parse(body, format, &small_limits());
    }
}

proptest! {
    #[test]
    fn prometheus_text_round_trips(families in snapshot()) {
        let body = render(&families, Format::Prometheus);
        let parsed = parse(body.as_bytes(), Format::Prometheus, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert_same(&families, &parsed, &body);
    }

    #[test]
    fn openmetrics_text_round_trips(families in snapshot()) {
        let body = render(&families, Format::OpenMetrics);
        let parsed = parse(body.as_bytes(), Format::OpenMetrics, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert_same(&families, &parsed, &body);
    }

    #[test]
    fn openmetrics_cut_before_eof_is_refused(
        families in snapshot(),
        at in any::<prop::sample::Index>(),
    ) {
        let body = render(&families, Format::OpenMetrics);
        // Any cut that leaves out part of the final `# EOF` marker; a cut
        // inside a multi-byte character is also a cut, and must fail too.
        let eof = body.len() - "# EOF\n".len();
        let cut = at.index(eof + "# EOF".len());
        let result = parse(&body.as_bytes()[..cut], Format::OpenMetrics, &Limits::default());
        prop_assert!(result.is_err(), "accepted a cut at byte {cut} of {}:\n{body}", body.len());
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        parse_everywhere(text.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_everywhere(&bytes);
    }

    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        parse_everywhere(text.as_bytes());
    }

    #[test]
    fn edited_valid_bodies_never_panic(
        families in snapshot(),
        at in any::<prop::sample::Index>(),
        insert in token_soup(),
        remove in 0usize..8,
    ) {
        // A valid body with a stretch replaced by tokens: close to what a
        // buggy or hostile server sends, and deep into the grammar.
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let body = render(&families, format).into_bytes();
            let start = at.index(body.len() + 1);
            let end = (start + remove).min(body.len());
            let mut edited = body[..start].to_vec();
            edited.extend_from_slice(insert.as_bytes());
            edited.extend_from_slice(&body[end..]);
            parse_everywhere(&edited);
        }
    }
}

#[test]
fn renderer_escapes_what_the_formats_require() {
    // Pins the renderer itself, so a round trip cannot pass because both
    // sides forgot the same escape.
    let families = vec![GenFamily {
        name: "scout_x".into(),
        gauge: true,
        help: Some("a\\b\n\"c\"".into()),
        samples: vec![GenSample {
            labels: vec![("v".into(), "q\"b\\n\nz".into())],
            value: -1.5e-300,
        }],
    }];
    let body = render(&families, Format::OpenMetrics);
    assert_eq!(
        body,
        "# HELP scout_x a\\\\b\\n\"c\"\n# TYPE scout_x gauge\n\
         scout_x{v=\"q\\\"b\\\\n\\nz\"} -1.5e-300\n# EOF\n"
    );
}
