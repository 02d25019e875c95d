#!/usr/bin/env bash
# Fuzzes the payload parser for SECONDS (default 60) with cargo-fuzz and
# libFuzzer, and exits non-zero if an input crashes it, if one input runs
# longer than FUZZ_TIMEOUT seconds (default 10), or if the process grows past
# FUZZ_RSS_MB of memory (default 2048).
#
# Only a stable toolchain is available, so RUSTC_BOOTSTRAP=1 lets it accept
# the -Z flags cargo-fuzz passes. The parser is safe Rust, so the default
# sanitizer is none, which runs several times more inputs a second than
# AddressSanitizer; FUZZ_SANITIZER=address turns ASan on. The corpus is
# seeded on every run from the OpenMetrics parser test vectors (read from
# OPENMETRICS_TESTDATA or the shared copy beside the repository, never
# committed here) and from the Scout-shaped payloads in seeds/. It grows in
# fuzz/corpus between runs on one machine. A failing input is saved under
# fuzz/artifacts/parse/; replay it with `cargo fuzz run parse FILE`.
set -euo pipefail

seconds="${1:-60}"
timeout_s="${FUZZ_TIMEOUT:-10}"
rss_mb="${FUZZ_RSS_MB:-2048}"
sanitizer="${FUZZ_SANITIZER:-none}"
cargo_fuzz_version=0.13.2

# Resolve a relative OPENMETRICS_TESTDATA against the caller's directory.
vectors="${OPENMETRICS_TESTDATA:-}"
if [ -n "$vectors" ] && [ -d "$vectors" ]; then
  vectors="$(cd "$vectors" && pwd)"
fi
cd "$(dirname "${BASH_SOURCE[0]}")"
vectors="${vectors:-../../shared/conformance/openmetrics/parsers}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version (about a minute)"
  cargo install --locked --version "$cargo_fuzz_version" cargo-fuzz
fi

corpus=corpus/parse
mkdir -p "$corpus" artifacts/parse
seeded=0
if [ -d "$vectors" ]; then
  for metrics in "$vectors"/*/metrics; do
    [ -f "$metrics" ] || continue
    case_name="$(basename "$(dirname "$metrics")")"
    cp "$metrics" "$corpus/om-$case_name"
    seeded=$((seeded + 1))
  done
else
  echo "fuzz: no OpenMetrics vectors at $vectors; seeding from seeds/ only" >&2
fi
for seed in seeds/*; do
  cp "$seed" "$corpus/seed-$(basename "$seed")"
  seeded=$((seeded + 1))
done
echo "fuzz: seeded $seeded inputs; corpus holds $(find "$corpus" -type f | wc -l)"

# Pin the parser's dependencies to the exporter's versions; cargo adds the
# fuzzer's own and drops the rest.
cp ../Cargo.lock Cargo.lock
start=$(date +%s)
cargo fuzz build -s "$sanitizer" parse
echo "fuzz: build took $(($(date +%s) - start)) s"

log=artifacts/parse/last-run.log
# -max_len covers every vector and seed with room to grow lines past the
# tiny limits the target also parses under. The progress lines for each new
# input are kept in the log only.
set +e
cargo fuzz run -s "$sanitizer" parse "$corpus" -- \
  -max_total_time="$seconds" \
  -timeout="$timeout_s" \
  -rss_limit_mb="$rss_mb" \
  -malloc_limit_mb="$rss_mb" \
  -max_len=16384 \
  -dict=parse.dict \
  -print_final_stats=1 \
  2>&1 | tee "$log" | grep -v -E '^(#[0-9]+[[:space:]]+(NEW|REDUCE)|"|###### )'
status="${PIPESTATUS[0]}"
set -e

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
echo "fuzz: ${runs:-?} inputs run, ${rate:-?} a second, exit status $status"
if [ "$status" -ne 0 ]; then
  echo "fuzz: FAILED; the failing input is in fuzz/artifacts/parse/, the log in fuzz/$log" >&2
  exit "$status"
fi
