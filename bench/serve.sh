#!/usr/bin/env bash
# /metrics throughput and memory against nginx serving the same bytes.
#
#   bash bench/serve.sh            # 84 and 10,000 series, 5 rounds of 10 s
#   ROUNDS=3 DURATION=5s SIZES="84 10000 100000" bash bench/serve.sh
#
# For each size it starts the fake Scout (examples/fake_scout.rs) with that
# many series, the release exporter against it, and nginx serving a copy of
# the exporter's /metrics body as a static file. Both servers are pinned to
# CPU 0 and wrk (2 threads, 16 connections) to CPU 1; rounds alternate
# between the two servers after a 3 s warm-up each, and the medians are
# compared. It also reports the exporter's idle memory with --demo, its
# memory under load, and the time of a scrape that must collect and encode
# afresh. Needs wrk,
# nginx and taskset (Debian: apt-get install wrk nginx-light util-linux).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
SIZES=${SIZES:-"84 10000"}
for tool in wrk nginx taskset curl; do
  command -v "$tool" >/dev/null || { echo "bench/serve.sh needs $tool" >&2; exit 1; }
done

cargo build --release --quiet --bin scout-exporter --example fake_scout
bin=target/release/scout-exporter
fake=target/release/examples/fake_scout
work=$(mktemp -d)
chmod 755 "$work"  # nginx workers run as an unprivileged user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
wait_http() {
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no answer from $1" >&2; return 1
}
# wrk, pinned to CPU 1: prints "requests_per_second p99_ms".
load() {
  taskset -c 1 wrk -t2 -c16 -d3s "$1" >/dev/null
  taskset -c 1 wrk -t2 -c16 -d"$DURATION" --latency "$1" | awk '
    /Requests\/sec/ { rps = $2 }
    /^ +99%/ { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 }
               else if (v ~ /ms$/) { sub(/ms/, "", v) }
               else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 }
               p99 = v }
    END { printf "%s %s\n", rps, p99 }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# Idle memory with --demo.
port_demo=$((20000 + RANDOM % 10000))
OTEL_METRICS_EXPORTER=prometheus taskset -c 0 "$bin" --demo --listen "127.0.0.1:$port_demo" 2>"$work/demo.log" &
pids+=($!); demo_pid=$!
wait_http "http://127.0.0.1:$port_demo/metrics"
sleep 2
curl -fsS -o /dev/null "http://127.0.0.1:$port_demo/metrics"
sleep 1
echo "idle RSS with --demo: $(rss_kib "$demo_pid") KiB"
kill "$demo_pid"

printf '\n%-8s %-10s %12s %12s %10s %10s %8s\n' series body exporter_rps nginx_rps ratio p99_ratio rss_kib
for size in $SIZES; do
  p_fake=$((30000 + RANDOM % 5000)); p_exp=$((35000 + RANDOM % 5000)); p_ngx=$((40000 + RANDOM % 5000))
  "$fake" --port "$p_fake" --token bench --org acme --series "$size" >"$work/fake.log" 2>&1 &
  pids+=($!)
  sleep 0.5
  DOCKER_SCOUT_API_KEY=bench OTEL_METRICS_EXPORTER=prometheus \
    taskset -c 0 "$bin" --org acme --scout-url "http://127.0.0.1:$p_fake" \
    --listen "127.0.0.1:$p_exp" --refresh-interval 1h 2>"$work/exp.log" &
  pids+=($!); exp_pid=$!
  wait_http "http://127.0.0.1:$p_exp/readyz"
  mkdir -p "$work/www"
  # The first scrape after the data arrived waits for a full collection
  # and encoding: the scrape time of a Prometheus that comes right after a
  # refresh.
  collect_ms=$(curl -fsS -o "$work/www/metrics" -w '%{time_total}' "http://127.0.0.1:$p_exp/metrics" | awk '{ printf "%.1f", $1 * 1000 }')
  bytes=$(wc -c <"$work/www/metrics")

  cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile off;
  output_buffers 2 1m;
  open_file_cache max=16 inactive=60s;
  open_file_cache_valid 60s;
  default_type text/plain;
  server { listen 127.0.0.1:$p_ngx; root $work/www; }
}
EOF
  taskset -c 0 nginx -c "$work/nginx.conf" &
  pids+=($!); ngx_pid=$!
  wait_http "http://127.0.0.1:$p_ngx/metrics"

  : >"$work/exp.rps"; : >"$work/ngx.rps"; : >"$work/exp.p99"; : >"$work/ngx.p99"
  rss_load=0
  for _ in $(seq 1 "$ROUNDS"); do
    read -r rps p99 < <(load "http://127.0.0.1:$p_exp/metrics")
    echo "$rps" >>"$work/exp.rps"; echo "$p99" >>"$work/exp.p99"
    r=$(rss_kib "$exp_pid"); [ "$r" -gt "$rss_load" ] && rss_load=$r
    read -r rps p99 < <(load "http://127.0.0.1:$p_ngx/metrics")
    echo "$rps" >>"$work/ngx.rps"; echo "$p99" >>"$work/ngx.p99"
  done
  e=$(median <"$work/exp.rps"); n=$(median <"$work/ngx.rps")
  ep=$(median <"$work/exp.p99"); np=$(median <"$work/ngx.p99")
  printf '%-8s %-10s %12.0f %12.0f %10.2f %10.2f %8s\n' "$size" "$bytes" "$e" "$n" \
    "$(echo "$e / $n" | bc -l)" "$(echo "$ep / $np" | bc -l)" "$rss_load"
  echo "         p99 exporter ${ep} ms, nginx ${np} ms; first scrape after a refresh ${collect_ms} ms"
  kill "$exp_pid" "$ngx_pid" 2>/dev/null || true
  wait "$exp_pid" "$ngx_pid" 2>/dev/null || true
done
