#!/usr/bin/env bash
# Static checks for the monitoring files under otel/.
#
#   bash otel/check.sh
#
# Needs promtool (Debian/Ubuntu: apt-get install prometheus) and python3.
# PyYAML is used when installed (pip install pyyaml); without it the YAML
# parse step is skipped with a message. The Datadog dashboard is checked
# against the official API client's models when datadog-api-client is
# installed, and the Kubernetes manifests against the kubernetes client's
# models when that package is installed; both are skipped otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: install Prometheus (Debian/Ubuntu: apt-get install prometheus)" >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "python3 not found" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== $(promtool --version 2>&1 | head -n 1)"

echo "== promtool check config"
promtool check config otel/prometheus/prometheus.yml

echo "== promtool check rules"
promtool check rules otel/prometheus/alerts.yml

echo "== promtool test rules"
promtool test rules otel/prometheus/alerts_test.yml

echo "== JSON"
while IFS= read -r -d '' f; do
  python3 -m json.tool "$f" >/dev/null
  echo "ok   $f"
done < <(find otel -name '*.json' -print0 | sort -z)

echo "== YAML"
if python3 -c 'import yaml' 2>/dev/null; then
  while IFS= read -r -d '' f; do
    python3 -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$f"
    echo "ok   $f"
  done < <(find otel \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z)
else
  echo "skipped: PyYAML is not installed (pip install pyyaml)"
fi

# Every Grafana panel expression, with the dashboard variables replaced the
# way Grafana would, must be valid PromQL: wrap them in a rules file and let
# promtool parse it. Also checks that each dashboard has the expected
# template variables and uses the provisioned data source.
echo "== Grafana dashboard expressions"
python3 - "$tmp/dashboards.rules.yml" otel/grafana/dashboards/*.json <<'PY'
import json, sys
out, files = sys.argv[1], sys.argv[2:]
subst = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$org": ".*", "$stream": ".*"}
rules, errors = [], []
for path in files:
    d = json.load(open(path))
    names = {v["name"] for v in d["templating"]["list"]}
    if "org" not in names or "datasource" not in names:
        errors.append("%s: needs template variables org and datasource" % path)
    n = 0
    for panel in d["panels"]:
        for t in panel.get("targets", []):
            ds = (t.get("datasource") or panel.get("datasource") or {}).get("uid")
            if ds not in ("${datasource}", "prometheus"):
                errors.append("%s: panel %r uses data source %r" % (path, panel.get("title"), ds))
            e = t["expr"]
            for k in sorted(subst, key=len, reverse=True):
                e = e.replace(k, subst[k])
            if "$" in e:
                errors.append("%s: panel %r: unknown variable in %s" % (path, panel.get("title"), t["expr"]))
            rules.append({"record": "dashboard:check:%d" % len(rules), "expr": e})
            n += 1
    print("ok   %s (%d expressions)" % (path, n))
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
# JSON is valid YAML, so no YAML library is needed to write the rules file.
json.dump({"groups": [{"name": "dashboards", "rules": rules}]}, open(out, "w"), indent=1)
PY
promtool check rules "$tmp/dashboards.rules.yml" | sed "/^$/d" | tail -n 1

echo "== Datadog dashboard"
if python3 -c 'import datadog_api_client' 2>/dev/null; then
  python3 - otel/datadog/dashboard.json <<'PY'
import json, sys
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.model_utils import UnparsedObject
from datadog_api_client.v1.model.dashboard import Dashboard
raw = open(sys.argv[1]).read()
with ApiClient(Configuration()) as api:
    dash = api.deserialize(raw, (Dashboard,), True)
problems = []
def walk(o, path):
    if isinstance(o, UnparsedObject) or getattr(o, "_unparsed", False):
        problems.append("does not match the API model: " + path)
    composed = getattr(o, "_composed_instances", None)
    if composed:
        for c in composed:
            walk(c, path)
        return
    if hasattr(o, "_data_store"):
        known = getattr(o, "attribute_map", {})
        for k, v in o._data_store.items():
            if known and k not in known:
                problems.append("unknown key %s at %s" % (k, path or "/"))
            walk(v, path + "/" + k)
    if isinstance(o, list):
        for i, v in enumerate(o):
            walk(v, "%s[%d]" % (path, i))
walk(dash, "")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print("ok   %s (%d groups)" % (sys.argv[1], len(dash.widgets)))
PY
else
  echo "skipped: datadog-api-client is not installed (pip install datadog-api-client)"
fi

echo "== Kubernetes manifests"
if python3 -c 'import kubernetes, yaml' 2>/dev/null; then
  python3 - otel/kubernetes/deployment.yaml otel/kubernetes/service.yaml otel/kubernetes/secret.example.yaml <<'PY'
import sys, yaml
from kubernetes.client import ApiClient
models = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service", ("v1", "Secret"): "V1Secret"}
api = ApiClient()
def dropped(a, b, path=""):
    # Keys present in the manifest but lost in a round trip through the model
    # are unknown fields (typos, wrong nesting).
    out = []
    if isinstance(a, dict):
        for k, v in a.items():
            if v is not None:
                out += ["%s/%s" % (path, k)] if k not in (b or {}) else dropped(v, b[k], "%s/%s" % (path, k))
    elif isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b or [])):
            out += dropped(x, y, "%s[%d]" % (path, i))
    return out
failed = False
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        model = models[(doc["apiVersion"], doc["kind"])]
        back = api.sanitize_for_serialization(api._ApiClient__deserialize(doc, model))
        bad = dropped(doc, back)
        if bad:
            failed = True
            print("%s: unknown fields %s" % (path, ", ".join(bad)), file=sys.stderr)
        else:
            print("ok   %s (%s)" % (path, doc["kind"]))
sys.exit(1 if failed else 0)
PY
else
  echo "skipped: the kubernetes Python client is not installed (pip install kubernetes)"
fi

echo "== all checks passed"
