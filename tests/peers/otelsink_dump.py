"""Runs oteltest's otelsink gRPC receiver for the interop tests and writes
each ExportMetricsServiceRequest it receives to a file, one JSON line each
(see otlp_json.py).

The `otelsink` command itself always listens on port 4317 and prints Python
reprs of what it receives, which neither a parallel test run nor a parser can
use, so this script starts otelsink's GrpcSink class with its own handler on
the port it is given. otelsink's server listens on every interface; the
exporter under test only ever connects to 127.0.0.1.

    python otelsink_dump.py --port PORT --out FILE

It prints "listening PORT" once the server accepts calls, and runs until it
is killed.
"""

import argparse
import logging
import sys
import threading

from oteltest.sink import GrpcSink
from oteltest.sink.handler import RequestHandler
from otlp_json import request_line


class DumpHandler(RequestHandler):
    """Appends each metrics request to a file; ignores logs and traces."""

    def __init__(self, out):
        self.out = out
        # gRPC calls handlers from a thread pool: one writer at a time keeps
        # the lines whole.
        self.lock = threading.Lock()

    def handle_metrics(self, request, headers):  # noqa: ARG002
        line = request_line(request)
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def handle_logs(self, request, headers):  # noqa: ARG002
        pass

    def handle_trace(self, request, headers):  # noqa: ARG002
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with open(args.out, "a", encoding="utf-8") as out:
        sink = GrpcSink(DumpHandler(out), logging.getLogger("otelsink"), port=args.port)
        sink.start()
        print("listening", args.port, flush=True)
        sink.wait_for_termination()


if __name__ == "__main__":
    main()
