#!/usr/bin/env bash
# Long fuzz runs with cargo-fuzz (libFuzzer), on this machine's stable toolchain through
# RUSTC_BOOTSTRAP=1. Each target runs FUZZ_SECONDS (default 120), or FUZZ_RUNS executions when
# that is set, from a copy of its corpus in fuzz/corpus/; findings land in fuzz/artifacts/.
# Writes the figures to fuzz/RESULTS.md.
# CI does not run this: tests/fuzz_replay.rs replays the corpus as an ordinary test.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-120}
TARGETS=${TARGETS:-"xfcc certificate bearer jwt check_request dpop_proof htu path forward_auth"}
FUZZ_RUNS=${FUZZ_RUNS:-}
# address (the default) or none: without a sanitizer the safe-Rust targets run about twice as
# fast, and panics and failed assertions (the properties) are still caught.
FUZZ_SANITIZER=${FUZZ_SANITIZER:-address}
# Longest input tried (a certificate or CheckRequest needs room; a path does not).
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-70000}
if [ -n "$FUZZ_RUNS" ]; then limit="-runs=$FUZZ_RUNS"; else limit="-max_total_time=$FUZZ_SECONDS"; fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=${FUZZ_RESULTS:-fuzz/RESULTS.md}
[ -f "$results" ] || printf '# Fuzzing results\n\nEach run appends a section. Crashes are kept in fuzz/artifacts/<target>/ and replayed\nin CI by adding them to fuzz/corpus/<target>/ (tests/fuzz_replay.rs).\n' >"$results"
{
  echo
  if [ -n "$FUZZ_RUNS" ]; then
    echo "## $(date -u +%Y-%m-%dT%H:%MZ): $FUZZ_RUNS executions per target"
  else
    echo "## $(date -u +%Y-%m-%dT%H:%MZ): $FUZZ_SECONDS s per target"
  fi
  echo
  echo "\`scripts/fuzz.sh\`, cargo-fuzz $(cargo fuzz --version 2>/dev/null | awk '{print $2}'), libFuzzer, sanitizer: $FUZZ_SANITIZER, $(nproc) shared cores."
  echo
  echo "| target | seconds | executions | exec/s | corpus at end | coverage | crashes |"
  echo "|---|---|---|---|---|---|---|"
} >>"$results"
for target in $TARGETS; do
  cp -r "fuzz/corpus/$target" "$work/$target"
  log="$work/$target.log"
  status=0
  # Built before the clock starts, so the seconds are the run's.
  (cd fuzz && cargo fuzz build -s "$FUZZ_SANITIZER" "$target") >"$log" 2>&1 || true
  started=$(date +%s)
  (cd fuzz && cargo fuzz run -s "$FUZZ_SANITIZER" "$target" "$work/$target" -- "$limit" \
    -max_len="$FUZZ_MAX_LEN" -print_final_stats=1) >>"$log" 2>&1 || status=$?
  seconds=$(( $(date +%s) - started ))
  [ "$seconds" -gt 0 ] || seconds=1
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
  rate=$(( ${execs:-0} / seconds ))
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  corpus=$(ls "$work/$target" | wc -l)
  crashes=$(ls "fuzz/artifacts/$target" 2>/dev/null | wc -l)
  echo "| $target | $seconds | ${execs:-?} | ${rate:-?} | $corpus | ${cov:-?} | $crashes |" | tee -a "$results"
  if [ "$status" -ne 0 ]; then echo "fuzz target $target stopped with status $status (see artifacts)"; tail -30 "$log"; fi
done

