"""An OTLP/HTTP metrics receiver for the interop tests that decodes what it
receives with the opentelemetry-proto package alone, independently of the
Rust code under test.

    python otlp_http_sink.py --port PORT --out FILE

It listens on 127.0.0.1 (PORT 0 picks a free port), prints "listening PORT"
once it accepts connections, and runs until it is killed. Each POST to
/v1/metrics with a binary protobuf body (gzip-compressed or not) is decoded
as an ExportMetricsServiceRequest, written to FILE as one JSON line (see
otlp_json.py), and answered as the OTLP specification says: 200 with an
empty ExportMetricsServiceResponse. A request that breaks
the protocol is answered with a 4xx status and written as {"error": "..."},
so the test that reads the file can name the fault.
"""

import argparse
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from otlp_json import request_line

PROTOBUF = "application/x-protobuf"


class Sink:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def write_line(self, line):
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()


def handler_for(sink):
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as OTLP clients reuse their connection.
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            length = self.headers.get("Content-Length")
            if length is None:
                return self.refuse(411, "no Content-Length")
            body = self.rfile.read(int(length))
            if self.path != "/v1/metrics":
                return self.refuse(404, "POST to %s, not /v1/metrics" % self.path)
            content_type = self.headers.get("Content-Type", "")
            if content_type.split(";")[0].strip().lower() != PROTOBUF:
                return self.refuse(415, "Content-Type %r" % content_type)
            encoding = self.headers.get("Content-Encoding", "identity").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding != "identity":
                return self.refuse(415, "Content-Encoding %r" % encoding)
            request = ExportMetricsServiceRequest()
            try:
                request.ParseFromString(body)
            except DecodeError as e:
                return self.refuse(400, "body is not an ExportMetricsServiceRequest: %s" % e)
            sink.write_line(request_line(request))
            self.answer(200, ExportMetricsServiceResponse().SerializeToString())

        def refuse(self, status, why):
            sink.write_line(json.dumps({"error": why}))
            self.answer(status, b"")

        def answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", PROTOBUF)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002
            # One line a request on stderr, which the test keeps for its
            # failure messages.
            sys.stderr.write("otlp_http_sink: " + (format % args) + "\n")

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    with open(args.out, "a", encoding="utf-8") as out:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(Sink(out)))
        print("listening", server.server_address[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
