#!/usr/bin/env bash
# What OpenTelemetry traces cost a Check: raw closed-loop checks/s and certbound's CPU per check
# with traces off, sampled out (ratio 0.01: one trace in a hundred exported) and fully sampled
# (ratio 1), interleaved, REPS times. examples/loadgen.rs runs certbound on CPU 0 and an OTLP
# receiver beside the generator on CPU 1. Results: benches/results/traces-*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
REPS=${REPS:-3}
CACHE=${CACHE:-on}
cargo build --release --quiet --bin certbound --example loadgen
out=benches/results/traces-$(date -u +%Y%m%dT%H%M%SZ).jsonl
: >"$out"
for rep in $(seq "$REPS"); do
  for traces in off 0.01 1; do
    taskset -c 1 target/release/examples/loadgen --server-cpu 0 --duration "$DURATION" \
      --mode closed --concurrency 64 --tokens 1 --cache "$CACHE" --traces "$traces" \
      --label "traces $traces, cache $CACHE, rep $rep" | tee -a "$out"
  done
done
echo "results: $out"
