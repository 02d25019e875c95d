#!/usr/bin/env python3
"""Writes Scout-shaped Prometheus text payloads of given sizes for the parser benchmarks.

A payload holds the three families Scout serves: vulnerabilities by stream
and severity (five severities), and images compliant with and evaluated
against each of ten policies by stream, whose display names have spaces.
Stream names are distinct, so the label values are as varied as a large
organization's. The output is the same on every run (fixed seed), so the
Rust and Python figures are taken on byte-identical files, and a size is
reached by adding streams until the body is at least that many bytes.

Usage: gen_payload.py OUT_DIR [SIZE_MB ...]   (sizes default to 1 10 50;
1 MB is 1,000,000 bytes). Existing files of the right size are kept.
"""

import os
import random
import sys

SEVERITIES = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNSPECIFIED"]

# Ten policies in the style Scout names them; the ids are made up.
POLICIES = [
    ("No fixable critical or high vulnerabilities", "fixable-critical-high"),
    ("No high-profile vulnerabilities", "high-profile"),
    ("Supply chain attestations", "supply-chain"),
    ("Default non-root user", "non-root"),
    ("No outdated base images", "outdated-base"),
    ("No AGPL v3 licenses", "copyleft"),
    ("Approved base images", "approved-base"),
    ("No embedded secrets", "secrets"),
    ("SonarQube quality gates passed", "quality-gates"),
    ("Valid Docker Hub image tags", "hub-tags"),
]

TEAMS = ["payments", "search", "identity", "checkout", "platform", "data", "mobile", "edge"]
SERVICES = ["api", "worker", "web", "gateway", "scheduler", "indexer", "auth", "billing"]
ENVS = ["production", "staging", "development", "qa"]

FAMILIES = [
    (
        "scout_stream_vulnerabilities",
        "Number of vulnerabilities in the images of a stream, by severity",
    ),
    ("scout_policy_compliant_images", "Number of images of a stream compliant with a policy"),
    ("scout_policy_evaluated_images", "Number of images of a stream evaluated against a policy"),
]


def stream_lines(rng, index):
    """The sample lines of one stream, one list per family."""
    stream = f"{rng.choice(TEAMS)}-{rng.choice(SERVICES)}-{rng.choice(ENVS)}-{index:06d}"
    vulns = [
        f'scout_stream_vulnerabilities{{streamName="{stream}",severity="{sev}"}} '
        f"{rng.randrange(0, 600)}\n"
        for sev in SEVERITIES
    ]
    compliant, evaluated = [], []
    for n, (name, slug) in enumerate(POLICIES):
        policy_id = f"{n:02d}-{slug}"
        total = rng.randrange(0, 250)
        labels = f'id="{policy_id}",displayName="{name}",streamName="{stream}"'
        passed = rng.randrange(0, total + 1)
        compliant.append(f"scout_policy_compliant_images{{{labels}}} {passed}\n")
        evaluated.append(f"scout_policy_evaluated_images{{{labels}}} {total}\n")
    return [vulns, compliant, evaluated]


def payload(target_bytes, seed=20240601):
    """A Scout-shaped body of at least `target_bytes` bytes."""
    rng = random.Random(seed)
    per_family = [[] for _ in FAMILIES]
    size = 0
    for name, help_text in FAMILIES:
        size += len(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
    index = 0
    while size < target_bytes:
        for bucket, lines in zip(per_family, stream_lines(rng, index)):
            bucket.extend(lines)
            size += sum(len(line) for line in lines)
        index += 1
    parts = []
    for (name, help_text), lines in zip(FAMILIES, per_family):
        parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
        parts.extend(lines)
    return "".join(parts).encode("ascii"), index


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out_dir = argv[1]
    sizes = [int(s) for s in argv[2:]] or [1, 10, 50]
    os.makedirs(out_dir, exist_ok=True)
    for mb in sizes:
        path = os.path.join(out_dir, f"scout-{mb}mb.prom")
        target = mb * 1_000_000
        # A file from an earlier run is reused: the generator is
        # deterministic, and the size check catches a half-written one.
        if os.path.exists(path) and target <= os.path.getsize(path) < target + 10_000:
            continue
        body, streams = payload(target)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        print(f"wrote {path}: {len(body)} bytes, {streams} streams", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
