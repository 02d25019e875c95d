//! Fuzz target for `parse`: any byte string, both formats, two sets of limits.
//!
//! A panic, a hang or runaway memory is a failure, and so is an accepted
//! payload that breaks a limit it was parsed under: the limits are what keep
//! a hostile Scout response from taking the exporter down, so the fuzzer
//! checks that they hold, not only that the parser returns. The tiny limits
//! are chosen so that inputs the fuzzer finds quickly already cross them.
//!
//! The parser's source is compiled into this target directly rather than
//! through the `scout-exporter` crate: it does no I/O and uses only
//! `hashbrown`, `memchr` and `thiserror`, and building the whole exporter
//! (gRPC, TLS, HTTP) with coverage instrumentation would cost CI minutes for
//! code the fuzzer never reaches. Should `src/parse` ever reach into the rest
//! of the crate, this build fails to compile; it cannot fuzz stale code.

#![no_main]

// Most of the parser's public surface (content types, names) is not used
// by this target.
#[allow(dead_code)]
#[path = "../../src/parse/mod.rs"]
mod parse;

use libfuzzer_sys::fuzz_target;
use parse::{Exposition, Format, Limits, parse};

fuzz_target!(|body: &[u8]| {
    let tiny = Limits {
        max_line_bytes: 64,
        max_labels: 2,
        max_label_name_bytes: 4,
        max_label_value_bytes: 8,
        max_series: 4,
    };
    for format in [Format::Prometheus, Format::OpenMetrics] {
        for limits in [&Limits::default(), &tiny] {
            if let Ok(exposition) = parse(body, format, limits) {
                check_limits(&exposition, limits);
                if format == Format::OpenMetrics {
                    let end = body.strip_suffix(b"\n").unwrap_or(body);
                    assert!(end.ends_with(b"# EOF"), "OpenMetrics body accepted without # EOF");
                }
            }
        }
    }
});

/// Asserts that an accepted payload is within `limits`. A label value's
/// limit counts the bytes as written, and unescaping never makes a value
/// longer, so the parsed value is bounded too.
fn check_limits(exposition: &Exposition, limits: &Limits) {
    assert!(exposition.sample_count() <= limits.max_series, "too many samples");
    for sample in exposition.families.iter().flat_map(|f| &f.samples) {
        assert!(sample.labels.len() <= limits.max_labels, "too many labels");
        for label in &sample.labels {
            assert!(label.name.len() <= limits.max_label_name_bytes, "label name too long");
            assert!(label.value.len() <= limits.max_label_value_bytes, "label value too long");
        }
    }
}
