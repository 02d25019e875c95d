#!/usr/bin/env bash
# Compares our parser with prometheus_client's on Scout-shaped payloads of
# 1, 10 and 50 MB and prints one table; exits 1 if a target is missed (see
# bench/table.py). Everything it makes stays under target/: the payloads in
# target/bench-data/, a virtual environment with prometheus_client in
# target/bench-venv/, and the results in target/bench-results/. About three
# minutes on two cores, plus a release build the first time.
#
# BENCH_PYTHON_REPEAT sets how many child processes time each Python run
# (best kept; default 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

data=target/bench-data
results=target/bench-results
venv=target/bench-venv
mkdir -p "$results"

if ! "$venv/bin/python" -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "bench: installing prometheus_client into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check prometheus_client
fi
echo "bench: prometheus_client $("$venv/bin/python" -c \
  'import importlib.metadata as m; print(m.version("prometheus_client"))')" >&2

python3 bench/gen_payload.py "$data" 1 10 50

echo "bench: Rust (criterion, benches/parse.rs)" >&2
cargo bench --bench parse -- --noplot >&2

echo "bench: Rust memory (examples/parse_file.rs)" >&2
cargo build --release --example parse_file >&2
: > "$results/rust-memory.jsonl"
for mb in 1 10 50; do
  target/release/examples/parse_file "$data/scout-${mb}mb.prom" >> "$results/rust-memory.jsonl"
done

echo "bench: Python (prometheus_client)" >&2
"$venv/bin/python" bench/parse_python.py --repeat "${BENCH_PYTHON_REPEAT:-3}" \
  "$data/scout-1mb.prom" "$data/scout-10mb.prom" "$data/scout-50mb.prom" \
  > "$results/python.jsonl"

echo >&2
python3 bench/table.py target/criterion "$results/rust-memory.jsonl" "$results/python.jsonl"
