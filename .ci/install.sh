#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine with Rust:
# Prometheus and promtool (Debian), and Python tools in a virtual
# environment under target/ci-venv. Safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting services: tests start their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

venv=target/ci-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check pyyaml
# Peers of tests/interop.rs: oteltest's otelsink (an OTLP gRPC receiver) and
# opentelemetry-proto, which tests/peers/otlp_http_sink.py decodes with.
# Pinned, so a new release changes CI only when this line does.
"$venv/bin/pip" install -q --disable-pip-version-check oteltest==0.49.0 opentelemetry-proto==1.45.2
