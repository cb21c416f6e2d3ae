#!/usr/bin/env bash
# Soak: fixed-rate load through Envoy (self-signed config) for SOAK_SECONDS (default 600), a mix
# of allowed (bound token + matching certificate) and denied (unbound token) requests, while the
# IdP rotates its signing key every SEGMENT seconds (new key published, tokens re-minted with
# it, the key before last withdrawn). Reports per segment: unexpected answers (must be 0),
# certbound's RSS (must stay flat) and latency percentiles. Record: benches/results/soak-*.md.
#
# Needs: oha (`cargo install oha`), Envoy (scripts/install-tools.sh), curl.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS=${SOAK_SECONDS:-600}
SEGMENT=${SEGMENT:-60}
RATE_ALLOW=${RATE_ALLOW:-400}
RATE_DENY=${RATE_DENY:-100}

command -v oha >/dev/null || { echo "oha not found: cargo install oha" >&2; exit 1; }
scripts/install-tools.sh >/dev/null
cargo build --release --quiet --bin certbound --example demo_material --example mint
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
target/release/examples/demo_material "$work" >/dev/null
mkdir -p "$work/idp"
mint() { target/release/examples/mint --dir "$work/idp" --cert "$work/demo-client.pem" "$@"; }
mint --kid k0 >/dev/null

IDP=$(port); CB=$(port); LISTEN=$(port); ADMIN=$(port)
python3 -m http.server "$IDP" --bind 127.0.0.1 --directory "$work/idp" >/dev/null 2>&1 &
pids+=($!)
cat >"$work/certbound.yaml" <<YAML
listen: 127.0.0.1:$CB
admin_listen: ''
log_format: json
issuers:
  - issuer: https://idp.example.com
    audiences: [https://api.example.com]
    jwks_uri: http://127.0.0.1:$IDP/jwks.json
    algorithms: [ES256]
keys:
  refresh_interval_seconds: 30
  refetch_min_interval_seconds: 5
YAML
sleep 0.5
target/release/certbound serve --config "$work/certbound.yaml" 2>"$work/certbound.log" &
cb_pid=$!
pids+=($cb_pid)
python3 - "$work" "$LISTEN" "$ADMIN" "$CB" <<'PY'
import re, sys
work, listen, admin, cb = sys.argv[1:]
t = open("deploy/envoy/self-signed.yaml").read()
t = t.replace("port_value: 8443", f"port_value: {listen}").replace("port_value: 9901", f"port_value: {admin}")
t = t.replace("port_value: 50051", f"port_value: {cb}")
t = t.replace("/etc/envoy/tls/server.crt", f"{work}/demo-server.pem").replace("/etc/envoy/tls/server.key", f"{work}/demo-server.key")
t = re.sub(r"route: \{ cluster: upstream \}", 'direct_response: { status: 200, body: { inline_string: "ok" } }', t)
open(f"{work}/envoy.yaml", "w").write(t)
PY
.venv/bin/envoy -c "$work/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level error >"$work/envoy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && break; sleep 0.1; done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=benches/results/soak-$stamp.md
url="https://127.0.0.1:$LISTEN/items"
tls=(--cacert "$work/demo-ca.pem" --cert "$work/demo-client.pem" --key "$work/demo-client.key")
{
  echo "# Soak run $stamp"
  echo
  echo "$SOAK_SECONDS s through Envoy 1.40 (self-signed config) to certbound (release build), key rotated every $SEGMENT s;"
  echo "allowed load $RATE_ALLOW req/s (bound token, matching certificate), denied load $RATE_DENY req/s (unbound token)."
  echo
  echo "| segment | kid | allowed: 200 / answered | denied: 401 / answered | unexpected | cut by the segment's end | p50 / p99 ms (allowed) | certbound RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$out"
segments=$((SOAK_SECONDS / SEGMENT))
total_unexpected=0
for i in $(seq 1 "$segments"); do
  kid="k$i"
  token=$(mint --kid "$kid")
  unbound=$(mint --kid "$kid" --unbound)
  oha --no-tui --output-format json -z "${SEGMENT}s" -q "$RATE_ALLOW" --latency-correction -c 16 "${tls[@]}" \
    -H "authorization: Bearer $token" "$url" >"$work/allow.json" &
  a=$!
  oha --no-tui --output-format json -z "${SEGMENT}s" -q "$RATE_DENY" --latency-correction -c 4 "${tls[@]}" \
    -H "authorization: Bearer $unbound" "$url" >"$work/deny.json" &
  d=$!
  wait $a $d
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$cb_pid/status")
  row=$(python3 - "$work/allow.json" "$work/deny.json" "$i" "$kid" "$rss" <<'PY'
import json, sys
a, d = (json.load(open(p)) for p in sys.argv[1:3])
seg, kid, rss = sys.argv[3:]
ad, dd = a.get("statusCodeDistribution", {}), d.get("statusCodeDistribution", {})
asent, dsent = sum(ad.values()), sum(dd.values())
aok, dok = ad.get("200", 0), dd.get("401", 0)
# Requests still in flight when oha's -z deadline hits are reported as "aborted due to deadline":
# they got no answer because the run ended, so they are counted apart, not as unexpected.
def split(dist):
    aborted = sum(v for k, v in dist.items() if "deadline" in k)
    return aborted, sum(dist.values()) - aborted
a_abort, a_err = split(a.get("errorDistribution", {}))
d_abort, d_err = split(d.get("errorDistribution", {}))
errors = a_err + d_err
unexpected = (asent - aok) + (dsent - dok) + errors
p = a.get("latencyPercentiles", {})
print(f"{unexpected}||| {seg} | {kid} | {aok} / {asent} | {dok} / {dsent} | {unexpected} | {a_abort + d_abort} | {p.get('p50', 0)*1000:.2f} / {p.get('p99', 0)*1000:.2f} | {rss} |")
PY
)
  unexpected=${row%%||*}
  total_unexpected=$((total_unexpected + unexpected))
  echo "${row#*||}" | tee -a "$out"
done
{
  echo
  echo "Unexpected answers in total: **$total_unexpected**. Key sets loaded or changed, as logged by certbound: $(grep -cE 'keys (loaded|changed)' "$work/certbound.log")."
} | tee -a "$out"
[ "$total_unexpected" -eq 0 ]
