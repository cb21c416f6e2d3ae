#!/usr/bin/env bash
# A/B of two certbound builds on the raw Check load, runs interleaved (A, B, A, B, ...) so that
# both see the same phases of this machine's drifting speed; reports each pair's ratio and the
# median ratio. Same setup as scripts/bench-grpc.sh (certbound on CPU 0, loadgen on CPU 1).
#
# Usage: scripts/ab-grpc.sh BASELINE_BINARY [CANDIDATE_BINARY]    (candidate: this tree's build)
#   e.g. git worktree add /tmp/base <commit> && cargo build --release --manifest-path /tmp/base/Cargo.toml
#        scripts/ab-grpc.sh /tmp/base/target/release/certbound
# Env: REPS (5), DURATION (6 s), CACHE (on), MODE (closed | rate), RATE (2000).
# Results: benches/results/ab-*.jsonl, summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINE=$(realpath "$1")
REPS=${REPS:-5}
DURATION=${DURATION:-6}
CACHE=${CACHE:-on}
MODE=${MODE:-closed}
RATE=${RATE:-2000}
cargo build --release --quiet --bin certbound --example loadgen
CANDIDATE=$(realpath "${2:-target/release/certbound}")
out=benches/results/ab-$(date -u +%Y%m%dT%H%M%SZ).jsonl
: >"$out"
for rep in $(seq 1 "$REPS"); do
  for side in baseline candidate; do
    bin=$BASELINE; [ "$side" = candidate ] && bin=$CANDIDATE
    CERTBOUND_BIN=$bin taskset -c 1 target/release/examples/loadgen --server-cpu 0 \
      --duration "$DURATION" --mode "$MODE" --rate "$RATE" --concurrency 64 --tokens 1 \
      --cache "$CACHE" --label "$side, rep $rep, $MODE, cache $CACHE" | tee -a "$out"
  done
done
python3 - "$out" "$BASELINE" "$CANDIDATE" <<'PY'
import json, statistics, sys
path, baseline, candidate = sys.argv[1:]
rows = [json.loads(line) for line in open(path)]
base = [r for r in rows if r["label"].startswith("baseline")]
cand = [r for r in rows if r["label"].startswith("candidate")]
def show(key, better):
    pairs = [c[key] / b[key] for b, c in zip(base, cand)]
    print(f"{key}: baseline {[b[key] for b in base]}, candidate {[c[key] for c in cand]}")
    print(f"  candidate/baseline per pair {[round(p, 3) for p in pairs]}, median {statistics.median(pairs):.3f} ({better})")
print(f"baseline {baseline}\ncandidate {candidate}")
show("checks_per_s", "higher is better")
show("cpu_us_per_check", "lower is better")
if rows[0]["mode"] == "rate":
    show("p99_ms", "lower is better")
PY
echo "results: $out"
