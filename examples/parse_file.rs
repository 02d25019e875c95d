//! Parses one payload file and reports time, samples and memory as JSON.
//!
//! `bench/parser.sh` runs it on the benchmark payloads to learn how much
//! memory a parse takes on top of the body it reads: the process's resident
//! size just before parsing (the body already read) and its high-water mark
//! just after are taken from `/proc/self/status`, and their difference is the
//! parse's own peak, result included. Elsewhere than Linux the memory fields
//! are null. It is also a quick way to check a captured Scout response:
//!
//! ```text
//! cargo run --release --example parse_file -- response.txt [prometheus|openmetrics]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use scout_exporter::parse::{Format, Limits, parse};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, format) = match args.as_slice() {
        [path] => (path, Format::Prometheus),
        [path, f] if f == "prometheus" => (path, Format::Prometheus),
        [path, f] if f == "openmetrics" => (path, Format::OpenMetrics),
        _ => {
            eprintln!("usage: parse_file FILE [prometheus|openmetrics]");
            return ExitCode::from(2);
        }
    };
    let body = match std::fs::read(path) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            return ExitCode::FAILURE;
        }
    };

    let rss_before = status_kib("VmRSS");
    let start = Instant::now();
    let result = parse(&body, format, &Limits::default());
    let seconds = start.elapsed().as_secs_f64();
    let hwm_after = status_kib("VmHWM");

    let exposition = match result {
        Ok(exposition) => exposition,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    println!(
        "{{\"bytes\":{},\"samples\":{},\"families\":{},\"seconds\":{seconds},\
         \"rss_before_kib\":{},\"hwm_after_kib\":{},\"parse_peak_kib\":{}}}",
        body.len(),
        exposition.sample_count(),
        exposition.families.len(),
        json(rss_before),
        json(hwm_after),
        json(rss_before.zip(hwm_after).map(|(before, after)| after.saturating_sub(before))),
    );
    // Dropped only after the high-water mark was read, so the result counts.
    drop(exposition);
    ExitCode::SUCCESS
}

/// A `kB` field of `/proc/self/status`, if the platform has one.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line =
        status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}
