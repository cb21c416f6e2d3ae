#!/usr/bin/env bash
# Instructions per Check, counted by callgrind: the cost measure that does not move with this
# machine's noise (wall-clock rates here drift by tens of percent within minutes).
#
# certbound runs under valgrind --tool=callgrind, all threads counted, while examples/loadgen.rs
# drives real gRPC Checks at it (closed loop, 64 in flight, one token). Two runs of different
# lengths cancel out startup: (Ir_long - Ir_short) / (checks_long - checks_short).
#
# Usage: scripts/instructions-per-check.sh [cache on|off] [BINARY]
#   BINARY defaults to target/release/certbound (built here); pass another build to compare.
#   LOADGEN_ARGS adds loadgen options: "--dpop on --proofs 20000" (DPoP checks, each with a
#   proof of its own), "--traces 0.01" (traces sampled out).
# Prints one JSON line, and the functions with the most instructions (self) of the long run.
#
# Caveat: valgrind hides SHA-NI, so sha2 runs its portable code under callgrind (~24k
# instructions per check for the token-cache key); natively the CPU's SHA instructions do it.
# Needs: valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${1:-on}
BIN=${2:-}
SHORT=${SHORT:-3}
LONG=${LONG:-9}
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
if [ -z "$BIN" ]; then
  cargo build --release --quiet --bin certbound
  BIN=target/release/certbound
fi
# LOADGEN: another build of the generator (built here when not given).
if [ -z "${LOADGEN:-}" ]; then
  cargo build --release --quiet --example loadgen
  LOADGEN=target/release/examples/loadgen
fi
BIN=$(realpath "$BIN")
work=$(mktemp -d)
trap 'pkill -TERM -f "valgrind.*$work" 2>/dev/null || true; rm -rf "$work"' EXIT

# loadgen starts "the server" through this wrapper and SIGKILLs the wrapper at the end; the
# valgrind child is then stopped with SIGTERM, so certbound shuts down and callgrind writes out.
cat >"$work/wrap.sh" <<SH
#!/usr/bin/env bash
valgrind --tool=callgrind --callgrind-out-file="$work/\$RUN.out" "$BIN" "\$@" </dev/null >/dev/null 2>"$work/\$RUN.log" &
wait
SH
chmod +x "$work/wrap.sh"

run() { # name seconds -> "checks instructions"
  RUN=$1 CERTBOUND_BIN="$work/wrap.sh" "$LOADGEN" --duration "$2" --warmup 0 \
    --mode closed --concurrency 64 --tokens 1 --cache "$CACHE" ${LOADGEN_ARGS:-} >"$work/$1.json"
  pkill -TERM -f "valgrind.*$work/$1.out" || true
  for _ in $(seq 1 300); do
    pgrep -f "valgrind.*$work/$1.out" >/dev/null || break
    sleep 0.1
  done
  python3 - "$work/$1.json" "$work/$1.out" "$2" <<'PY'
import json, sys
report, out = sys.argv[1], sys.argv[2]
# The measured Checks, +1 for loadgen's sanity Check before the run.
checks = int(json.load(open(report))["checks"]) + 1
total = next(int(l.split()[1]) for l in open(out) if l.startswith(("summary:", "totals:")))
print(f"{checks:.0f} {total}")
PY
}

read -r short_checks short_ir < <(run short "$SHORT")
read -r long_checks long_ir < <(run long "$LONG")
python3 - "$CACHE" "$BIN" "$short_checks" "$short_ir" "$long_checks" "$long_ir" <<'PY'
import json, os, sys
cache, binary, sc, si, lc, li = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
print(json.dumps({"cache": cache, "binary": binary, "loadgen_args": os.environ.get("LOADGEN_ARGS", ""),
                  "checks": [sc, lc],
                  "instructions_per_check": round((li - si) / (lc - sc)),
                  "startup_instructions": round(si - sc * (li - si) / (lc - sc))}))
PY
# The functions whose instructions grew most between the runs, per check (startup cancels).
python3 - "$work" "$short_checks" "$long_checks" <<'PY'
import re, subprocess, sys
work, sc, lc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def functions(name):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", f"{work}/{name}.out"],
                         capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)", line)
        if m and ":" in m.group(2):
            fn = m.group(2).split(":", 1)[1].split(" [")[0]
            found[fn] = found.get(fn, 0) + int(m.group(1).replace(",", ""))
    return found
short, long = functions("short"), functions("long")
per = {f: (long[f] - short.get(f, 0)) / (lc - sc) for f in long}
for f, ir in sorted(per.items(), key=lambda x: -x[1])[:30]:
    print(f"{ir:>10,.0f}  {f}")
PY
[ -n "${KEEP:-}" ] && cp "$work"/short.out "$work"/long.out "$KEEP"/ || true
