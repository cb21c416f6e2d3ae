#!/usr/bin/env bash
# Raw Check benchmark (no Envoy): certbound pinned to CPU 0 with one worker thread (the default), the load
# generator (examples/loadgen.rs) on CPU 1. Workloads: one repeated token and 100,000 distinct
# tokens, cache on and off, closed loop (throughput) and fixed rate (latency, coordinated-omission
# corrected); plus `openssl speed ecdsap256` in the same run as the verify-rate yardstick.
# Results: benches/results/grpc-*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
cargo build --release --quiet --bin certbound --example loadgen
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=benches/results/grpc-$stamp.jsonl
: >"$out"
run() { taskset -c 1 target/release/examples/loadgen --server-cpu 0 --duration "$DURATION" "$@" | tee -a "$out"; }
# The yardstick is measured right before each uncached run, on the same core: this machine's
# speed drifts by tens of percent within minutes, so only adjacent measurements compare.
openssl_verify() {
  local rate
  rate=$(taskset -c 0 openssl speed -seconds 4 ecdsap256 2>/dev/null | awk '/nistp256/ {print $NF}')
  echo "{\"label\": \"openssl speed ecdsap256 (CPU 0), rep $1\", \"verify_per_s\": $rate}" | tee -a "$out"
}
for rep in 1 2 3; do
  run --label "closed, 1 token, cache on, rep $rep" --mode closed --concurrency 64 --tokens 1 --cache on
  openssl_verify "$rep"
  run --label "closed, 1 token, cache off (uncached ES256), rep $rep" --mode closed --concurrency 64 --tokens 1 --cache off
  run --label "closed, 1 token, cache on, logs at warn, rep $rep" --mode closed --concurrency 64 --tokens 1 --cache on --log warn
done
# The runtime default: one worker = the current-thread scheduler; two work-stealing workers on
# the same core for comparison.
run --label "closed, 1 token, cache on, 2 work-stealing workers on CPU 0" --mode closed --concurrency 64 --tokens 1 --cache on --workers 2
run --label "closed, 1 token, cache off, 2 work-stealing workers on CPU 0" --mode closed --concurrency 64 --tokens 1 --cache off --workers 2
run --label "closed, 100k distinct tokens, cache on" --mode closed --concurrency 64 --tokens 100000 --cache on --duration 30 --warmup 25
run --label "fixed 2000/s, 1 token, cache on" --mode rate --rate 2000 --tokens 1 --cache on
run --label "fixed 2000/s, 1 token, cache off" --mode rate --rate 2000 --tokens 1 --cache off
echo "results: $out"
