#!/usr/bin/env bash
# Instructions per 401 (decision and answer, the challenge included), without and with a
# protected resource: callgrind counts examples/deny_cost.rs deciding SHORT and LONG requests;
# (Ir_long - Ir_short) / (LONG - SHORT) cancels the setup. Deterministic, unlike wall-clock on
# this machine. Needs: valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
SHORT=${SHORT:-1000}
LONG=${LONG:-11000}
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --quiet --example deny_cost
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
count() { # config scenario n
  valgrind --tool=callgrind --callgrind-out-file="$work/out" target/release/examples/deny_cost "$1" "$2" "$3" >/dev/null 2>&1
  awk '/^(summary|totals):/ {print $2; exit}' "$work/out"
}
for scenario in no_token malformed; do
  for config in plain resource; do
    short=$(count "$config" "$scenario" "$SHORT")
    long=$(count "$config" "$scenario" "$LONG")
    echo "{\"scenario\":\"$scenario\",\"config\":\"$config\",\"instructions_per_401\":$(( (long - short) / (LONG - SHORT) ))}"
  done
done
