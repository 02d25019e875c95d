#!/usr/bin/env python3
"""Times prometheus_client's text parser on payload files: the Python baseline for our parser.

For each file, a fresh child process reads the body, then times
`text_string_to_metric_families` over it, keeping every family and touching
every sample, as our parser keeps the whole result. The child reports its
resident size before the parse and its high-water mark after, from
/proc/self/status (ru_maxrss where that is missing), so the memory figure is
the parse's own and is not inflated by an earlier, larger file. The best
time over REPEAT children is kept; decoding the bytes to text is not timed,
which favours Python slightly.

Usage: parse_python.py [--repeat N] FILE...   prints one JSON object a line.
"""

import json
import os
import resource
import subprocess
import sys
import time


def status_kib(field):
    """A kB field of /proc/self/status, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_kib():
    hwm = status_kib("VmHWM")
    if hwm is not None:
        return hwm
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def child(path):
    from prometheus_client.parser import text_string_to_metric_families

    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    size = len(raw)
    del raw
    before = status_kib("VmRSS") or peak_kib()
    start = time.perf_counter()
    families = list(text_string_to_metric_families(text))
    samples = 0
    for family in families:
        for sample in family.samples:
            samples += 1 if sample.value is not None else 0
    seconds = time.perf_counter() - start
    after = peak_kib()
    print(
        json.dumps(
            {
                "bytes": size,
                "samples": samples,
                "families": len(families),
                "seconds": seconds,
                "rss_before_kib": before,
                "hwm_after_kib": after,
                "parse_peak_kib": max(0, after - before),
            }
        )
    )


def main(argv):
    if len(argv) >= 3 and argv[1] == "--child":
        child(argv[2])
        return 0
    args = argv[1:]
    repeat = 3
    if len(args) >= 2 and args[0] == "--repeat":
        repeat = int(args[1])
        args = args[2:]
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in args:
        best = None
        for _ in range(repeat):
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", path],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(out)
            if best is None or result["seconds"] < best["seconds"]:
                best = result
        best["file"] = path
        best["runs"] = repeat
        print(json.dumps(best), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
