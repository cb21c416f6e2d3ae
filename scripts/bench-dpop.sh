#!/usr/bin/env bash
# DPoP Check benchmark (no Envoy): certbound pinned to CPU 0 (one worker thread, the default), the
# load generator (examples/loadgen.rs) on CPU 1, closed loop with 64 in flight. Each DPoP Check
# carries a proof of its own (made up front and sent once), so every Check verifies a proof and
# records it against replay; the token comes from the verified-token cache. Interleaved, REPS
# times: the mTLS-bound Bearer baseline, DPoP with the in-memory replay store, DPoP with a real
# redis-server (started here on 127.0.0.1, on CPU 1 with the generator); then DPoP at a fixed
# 2000/s with each store (latency). Results: benches/results/dpop-*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
REPS=${REPS:-2}
# Enough proofs for warm-up + run at the highest rate seen here, with room to spare.
PROOFS=${PROOFS:-250000}
cargo build --release --quiet --bin certbound --example loadgen
command -v redis-server >/dev/null || scripts/install-tools.sh
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=benches/results/dpop-$stamp.jsonl
: >"$out"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 1 redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
redis=$!
trap 'kill $redis 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
url="redis://127.0.0.1:$port"
run() { taskset -c 1 target/release/examples/loadgen --server-cpu 0 --duration "$DURATION" "$@" | tee -a "$out"; }
for rep in $(seq 1 "$REPS"); do
  run --label "closed, Bearer + mTLS binding, cache on, rep $rep" --mode closed --concurrency 64 --tokens 1 --cache on
  run --label "closed, DPoP, replay memory, rep $rep" --mode closed --concurrency 64 --tokens 1 \
    --cache on --dpop on --replay memory --proofs "$PROOFS"
  run --label "closed, DPoP, replay redis, rep $rep" --mode closed --concurrency 64 --tokens 1 \
    --cache on --dpop on --replay redis --redis-url "$url" --proofs "$PROOFS"
done
run --label "fixed 2000/s, DPoP, replay memory" --mode rate --rate 2000 --tokens 1 --cache on \
  --dpop on --replay memory --proofs 40000
run --label "fixed 2000/s, DPoP, replay redis" --mode rate --rate 2000 --tokens 1 --cache on \
  --dpop on --replay redis --redis-url "$url" --proofs 40000
echo "results: $out"
