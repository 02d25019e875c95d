#!/usr/bin/env python3
"""Prints the parser comparison table from the results bench/parser.sh gathered.

Inputs: Criterion's estimates for `benches/parse.rs` (the median time of
each size and format), the JSON lines of `examples/parse_file.rs` (memory)
and of `bench/parse_python.py` (the Python baseline). MB are 1,000,000
bytes. Exits 1 if a target is missed:

- Rust parses Prometheus text at least 30 times as fast as prometheus_client;
- the 50 MB parse takes at most 60 times as long as the 1 MB one, in both
  formats (50 would be exactly linear; this is wall-clock time, so the
  1 MB run's warm caches count against the larger sizes);
- the parse's own peak memory on 50 MB is under twice the payload.

Usage: table.py CRITERION_DIR RUST_MEMORY_JSONL PYTHON_JSONL
"""

import json
import os
import sys

SIZES = [1, 10, 50]
MIN_SPEEDUP = 30
MAX_GROWTH = 60
MAX_MEMORY_FACTOR = 2


def criterion_seconds(root, fmt, mb):
    path = os.path.join(root, "parse", fmt, f"{mb}MB", "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"] / 1e9


def json_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def by_size(rows):
    return {round(r["bytes"] / 1e6): r for r in rows}


def main(argv):
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    criterion, rust_mem_path, python_path = argv[1:]
    rust_mem = by_size(json_lines(rust_mem_path))
    python = by_size(json_lines(python_path))

    missed = []
    rows = []
    times = {}
    for mb in SIZES:
        size = python[mb]["bytes"]
        prom = criterion_seconds(criterion, "prometheus", mb)
        om = criterion_seconds(criterion, "openmetrics", mb)
        times[mb] = (prom, om)
        rust_rate = size / 1e6 / prom
        om_rate = (size + len("# EOF\n")) / 1e6 / om
        py_rate = size / 1e6 / python[mb]["seconds"]
        speedup = rust_rate / py_rate
        growth = prom / times[1][0]
        om_growth = om / times[1][1]
        rows.append(
            [
                f"{mb} MB",
                f"{rust_rate:.1f}",
                f"{om_rate:.1f}",
                f"{py_rate:.2f}",
                f"{speedup:.0f}x",
                f"{growth:.1f} / {om_growth:.1f}",
            ]
        )
        if speedup < MIN_SPEEDUP:
            missed.append(f"{mb} MB: Rust is {speedup:.1f}x Python, under {MIN_SPEEDUP}x")
        if mb == SIZES[-1]:
            for name, g in (("Prometheus", growth), ("OpenMetrics", om_growth)):
                if g > MAX_GROWTH:
                    missed.append(f"{name}: {mb} MB takes {g:.1f}x the 1 MB time (> {MAX_GROWTH})")

    header = [
        "size",
        "Rust MB/s",
        "Rust OM MB/s",
        "Python MB/s",
        "Rust/Python",
        "time vs 1 MB (prom / OM)",
    ]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))

    big = SIZES[-1]
    mem = rust_mem[big]
    payload_mib = mem["bytes"] / 2**20
    own = mem["parse_peak_kib"] / 1024 if mem["parse_peak_kib"] is not None else None
    total = mem["hwm_after_kib"] / 1024 if mem["hwm_after_kib"] is not None else None
    py = python[big]
    print()
    print(f"Peak memory parsing {big} MB ({payload_mib:.1f} MiB, {mem['samples']} samples):")
    if own is None:
        print("  Rust: not measured (no /proc/self/status)")
    else:
        print(
            f"  Rust:   parse's own peak {own:.1f} MiB ({own / payload_mib:.2f}x the payload), "
            f"process total {total:.1f} MiB ({total / payload_mib:.2f}x)"
        )
        if own >= MAX_MEMORY_FACTOR * payload_mib:
            missed.append(f"Rust parse peak {own:.1f} MiB is not < {MAX_MEMORY_FACTOR}x payload")
    print(
        f"  Python: parse's own peak {py['parse_peak_kib'] / 1024:.1f} MiB, "
        f"process total {py['hwm_after_kib'] / 1024:.1f} MiB"
    )
    print()
    if missed:
        for m in missed:
            print(f"MISSED: {m}")
        return 1
    print(
        f"All targets met: >= {MIN_SPEEDUP}x Python, 50 MB within {MAX_GROWTH}x the 1 MB time, "
        f"parse peak < {MAX_MEMORY_FACTOR}x the payload."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
