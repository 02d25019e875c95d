"""How the receivers in this folder write an OTLP request for the tests:
protobuf's JSON mapping of the message, one object a line, with every
double written as its shortest exact decimal string.

The strings are there because the JSON mapping allows them and the reader
needs them: Rust's serde_json, without its float_roundtrip feature, may
round a 17-digit number one unit off, which would fail an exact comparison
for a reason that is not the exporter's.
"""

import json

from google.protobuf.json_format import MessageToDict


def _exact(value):
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value


def request_line(request):
    """The JSON line for one ExportMetricsServiceRequest."""
    return json.dumps(_exact(MessageToDict(request)))
