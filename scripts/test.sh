#!/usr/bin/env bash
# Runs every test: lints, the decision core's dependency boundary, unit, in-process gRPC,
# real-Envoy end-to-end, the grpcurl smoke, the offline validation of the deployment manifests,
# a replay of the Dockerfile's build stage, and the book (docs/: built, internal links checked).
# Installs what they drive first (scripts/install-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh
export ENVOY_BIN="$PWD/.venv/bin/envoy"
export GRPCURL_BIN="$PWD/.venv/bin/grpcurl"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The decision core runs inside Envoy's workers too: no async runtime, gRPC, HTTP client or socket
# may enter its dependency tree.
forbidden=$(cargo tree --locked -p certbound-core -e normal --prefix none --format '{p}' \
  | awk '{print $1}' | grep -xE 'tokio|tonic|prost|reqwest|hyper|h2|axum|mio|socket2' | sort -u || true)
if [ -n "$forbidden" ]; then
  echo "certbound-core must not depend on: $forbidden" >&2
  exit 1
fi
# The Envoy module the module end-to-end tests load (tests/module_e2e.rs finds it in target/debug).
cargo build --locked -p certbound-envoy
# --include-ignored: the end-to-end tests are #[ignore]d for a plain `cargo test` without Envoy.
# Every target but the criterion benches, which clippy above has compiled (run as tests they only
# print "Testing ... Success" blocks into the output).
cargo test --workspace --lib --bins --tests --examples --locked -- --include-ignored
scripts/grpcurl-smoke.sh
scripts/validate-deploy.sh
scripts/docker-build-replay.sh
# The book: built by mdBook, then no broken internal link in it or in the README.
.venv/bin/mdbook build docs
python3 scripts/check-doc-links.py docs/book
