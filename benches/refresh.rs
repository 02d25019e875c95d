//! The refresh path after the fetch: parse the payload and build the
//! snapshot, which is then swapped in with one atomic store. Issue target:
//! at most 20 ms for 10,000 series, linear in series.
//!
//! ```sh
//! cargo bench --bench refresh
//! ```

use std::time::SystemTime;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scout_exporter::demo::scaled_payload;
use scout_exporter::parse::{Format, Limits, parse};
use scout_exporter::snapshot::Snapshot;

fn refresh(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_and_build");
    group.sample_size(20);
    for series in [1_000usize, 10_000, 100_000] {
        let body = scaled_payload(series, 0);
        group.throughput(Throughput::Elements(series as u64));
        group.bench_with_input(BenchmarkId::from_parameter(series), &body, |b, body| {
            b.iter(|| {
                let e = parse(body.as_bytes(), Format::Prometheus, &Limits::default()).unwrap();
                Snapshot::build("acme", e, SystemTime::now())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, refresh);
criterion_main!(benches);
