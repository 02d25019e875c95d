//! Parser throughput on Scout-shaped payloads of 1, 10 and 50 MB.
//!
//! The payloads come from `bench/gen_payload.py` as files in
//! `target/bench-data/`, so that the Python baseline in
//! `bench/parse_python.py` reads the very same bytes; a missing file is
//! generated first. Each size is parsed as Prometheus text, and, with the
//! closing `# EOF` appended, as OpenMetrics, whose family rules cost more.
//! Throughput is in decimal MB/s; `bench/parser.sh` turns these results
//! into the comparison table. This file only measures: correctness is the
//! business of the tests.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use scout_exporter::parse::{Format, Limits, parse};

/// Payload sizes in MB (1,000,000 bytes).
const SIZES_MB: [u32; 3] = [1, 10, 50];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data")
}

/// Reads the payload of `mb` MB, generating the set if it is missing.
fn payload(mb: u32) -> Vec<u8> {
    let path = data_dir().join(format!("scout-{mb}mb.prom"));
    if !path.is_file() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen_payload.py");
        let status = Command::new("python3")
            .arg(&script)
            .arg(data_dir())
            .args(SIZES_MB.map(|s| s.to_string()))
            .status()
            .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
        assert!(status.success(), "{} failed: {status}", script.display());
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn bench_parse(c: &mut Criterion) {
    // The limits the exporter runs with: a 50 MB body holds about 390,000
    // samples, well inside the default one million.
    let limits = Limits::default();
    let mut group = c.benchmark_group("parse");
    // Each 50 MB iteration takes a fraction of a second; flat sampling with
    // ten samples keeps the whole run near a minute on two cores.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    for mb in SIZES_MB {
        let prometheus = payload(mb);
        let mut openmetrics = prometheus.clone();
        openmetrics.extend_from_slice(b"# EOF\n");
        let samples = parse(&prometheus, Format::Prometheus, &limits)
            .expect("the generated payload parses")
            .sample_count();
        assert!(samples > 0);
        group.measurement_time(Duration::from_secs(u64::from(2 + mb / 5)));

        for (format, body, label) in [
            (Format::Prometheus, &prometheus, "prometheus"),
            (Format::OpenMetrics, &openmetrics, "openmetrics"),
        ] {
            group.throughput(Throughput::BytesDecimal(body.len() as u64));
            group.bench_with_input(BenchmarkId::new(label, format!("{mb}MB")), body, |b, body| {
                b.iter(|| parse(black_box(body), format, &limits).expect("payload parses"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
