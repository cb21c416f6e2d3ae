#!/usr/bin/env bash
# Where a Check's CPU goes: runs examples/loadgen.rs (closed loop, certbound pinned to CPU 0 with
# its default single-threaded runtime) under `perf record`, then sums certbound's own samples by
# component (kernel, HTTP/2 + gRPC stack, runtime, decision, logging, allocator, ...).
# Usage: scripts/profile-check.sh [cache on|off]   Needs: perf.
# Result: benches/results/profile-<cache>-*.md
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${1:-on}
DURATION=${DURATION:-6}
command -v perf >/dev/null || { echo "perf not found" >&2; exit 1; }
# Line tables only: symbols for inlined frames, same optimisation as a release build.
export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
cargo build --release --quiet --bin certbound --example loadgen
data=$(mktemp)
trap 'rm -f "$data"' EXIT
perf record -q -F 1999 -g -o "$data" -- taskset -c 1 target/release/examples/loadgen \
  --server-cpu 0 --duration "$DURATION" --mode closed --concurrency 64 --tokens 1 --cache "$CACHE" \
  >"$data.json"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=benches/results/profile-cache-$CACHE-$stamp.md
# certbound's threads: the runtime (main thread "certbound"/"tokio-rt-worker") and the log writer.
perf report -i "$data" --no-children --sort comm,dso,sym -g none --stdio --percent-limit 0 2>/dev/null \
  | python3 scripts/profile_report.py "$data.json" "$CACHE" >"$out"
rm -f "$data.json"
cat "$out"
echo "written: $out"
