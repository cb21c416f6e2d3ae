#!/usr/bin/env bash
# One-command local demo: certbound (deploy/local) behind a real Envoy (deploy/envoy/self-signed.yaml)
# in front of a tiny upstream, all on 127.0.0.1. Shows with curl a 200 with the demo certificate
# and token, then the three 401s, then certbound's decision lines, and stops everything it
# started (at the end, on Ctrl-C, or when a part fails to start: then it exits 1 and says why).
#
#   scripts/demo.sh            the ext_authz service behind Envoy
#   scripts/demo.sh --module   the same inside Envoy: the dynamic module (deploy/envoy/module.yaml
#                              with the deploy/local keys and certificates), no certbound process;
#                              shows Envoy's certbound counters at the end. CERTBOUND_MODULE_DIR: a
#                              folder with libcertbound_envoy.so already built (else a release build).
#   scripts/demo.sh --dpop     DPoP (RFC 9449) with the service: fresh demo material
#                              (examples/dpop_demo.rs: an IdP key, a client key, a cnf.jkt token,
#                              proofs): allowed, the proof replayed, the token downgraded to
#                              Bearer, a proof for another URL.
#
# Ports (override with the environment): Envoy LISTEN_PORT=8443 (its admin ADMIN_PORT=9901),
# certbound CERTBOUND_PORT=50051 (its admin listener CERTBOUND_ADMIN_PORT=9090: /metrics,
# /readyz), upstream UPSTREAM_PORT=8080.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=service
case "${1:-}" in
  "") ;;
  --module) MODE=module ;;
  --dpop) MODE=dpop ;;
  *) echo "usage: scripts/demo.sh [--module | --dpop]" >&2; exit 64 ;;
esac
# A port variable set by the caller is used as given; a default that is busy (the service the
# README's first command started holds 50051 and 9090) is replaced by the next free port.
explicit=" "
for name in LISTEN_PORT ADMIN_PORT CERTBOUND_PORT CERTBOUND_ADMIN_PORT UPSTREAM_PORT; do
  if [ -n "${!name:-}" ]; then explicit+="$name "; fi
done
LISTEN_PORT=${LISTEN_PORT:-8443}
ADMIN_PORT=${ADMIN_PORT:-9901}
CERTBOUND_PORT=${CERTBOUND_PORT:-50051}
CERTBOUND_ADMIN_PORT=${CERTBOUND_ADMIN_PORT:-9090}
UPSTREAM_PORT=${UPSTREAM_PORT:-8080}

fail() {
  echo "demo: $*" >&2
  exit 1
}
# Progress on stderr: which step the demo is on (a release build takes minutes the first time).
SECONDS=0
step() {
  echo "demo: [${SECONDS}s] $*" >&2
}

# Every port must be free: a busy one would silently turn the demo into a row of 503s.
specs=("LISTEN_PORT:$LISTEN_PORT" "ADMIN_PORT:$ADMIN_PORT" "UPSTREAM_PORT:$UPSTREAM_PORT")
if [ "$MODE" != module ]; then
  specs+=("CERTBOUND_PORT:$CERTBOUND_PORT" "CERTBOUND_ADMIN_PORT:$CERTBOUND_ADMIN_PORT")
fi
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
taken=" "
busy=()
for spec in "${specs[@]}"; do
  name=${spec%%:*} port=${spec#*:}
  if ! in_use "$port"; then taken+="$port "; continue; fi
  if [[ "$explicit" == *" $name "* ]]; then
    busy+=("port $port ($name) is already in use on 127.0.0.1")
    continue
  fi
  next=$port
  while in_use "$next" || [[ "$taken" == *" $next "* ]]; do
    next=$((next + 1))
    if [ "$next" -gt $((port + 200)) ]; then fail "no free port near $port for $name; set $name"; fi
  done
  echo "demo: port $port ($name) is in use; using $next (set $name to choose)" >&2
  printf -v "$name" '%s' "$next"
  taken+="$next "
done
if [ ${#busy[@]} -gt 0 ]; then
  printf 'demo: %s\n' "${busy[@]}" >&2
  fail "set those variables to free ports"
fi

step "checking the tools (scripts/install-tools.sh: Envoy, curl; installs what is missing)"
# Its progress lines (what it installs, how long it took) are shown; its summary is not.
scripts/install-tools.sh | { grep --line-buffered '^install-tools:' || true; } >&2
# CERTBOUND_BIN: a certbound binary already built (the tests pass theirs); else a release build.
# CERTBOUND_MODULE_DIR likewise for the module.
if [ "$MODE" != module ] && [ -z "${CERTBOUND_BIN:-}" ]; then
  step "building certbound (cargo build --release: a few minutes the first time, seconds after)"
  cargo build --release --quiet --bin certbound
  CERTBOUND_BIN=target/release/certbound
elif [ "$MODE" != module ]; then
  step "using $CERTBOUND_BIN (CERTBOUND_BIN): no build"
fi
if [ "$MODE" = module ] && [ -z "${CERTBOUND_MODULE_DIR:-}" ]; then
  step "building the Envoy module libcertbound_envoy.so (cargo build --release: a few minutes the first time)"
  cargo build --release --quiet -p certbound-envoy
  CERTBOUND_MODULE_DIR=$PWD/target/release
elif [ "$MODE" = module ]; then
  step "using the module in $CERTBOUND_MODULE_DIR (CERTBOUND_MODULE_DIR): no build"
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for NAME PID LOG CHECK...: until CHECK succeeds; fails with the log's tail if the process
# exits or 10 s pass.
wait_for() {
  local name=$1 pid=$2 log=$3; shift 3
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "--- $name log:" >&2; tail -n 20 "$log" >&2 || true
      fail "$name exited at start"
    fi
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "--- $name log:" >&2; tail -n 20 "$log" >&2 || true
  fail "$name did not become ready within 10 s"
}

# The upstream: answers 200 with the headers it received.
step "starting the upstream (python3, echoes the headers it receives) on 127.0.0.1:$UPSTREAM_PORT"
python3 - "$UPSTREAM_PORT" >"$work/upstream.log" 2>&1 <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"upstream": "reached", "headers": dict(self.headers)}, indent=1).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
PY
upstream=$!
pids+=("$upstream")
wait_for upstream "$upstream" "$work/upstream.log" curl -fs "http://127.0.0.1:$UPSTREAM_PORT/"

config=deploy/local/certbound.yaml
if [ "$MODE" = dpop ]; then
  step "making fresh DPoP material (cargo run --example dpop_demo: builds it the first time, about a minute)"
  cargo run --quiet --example dpop_demo -- "$work/dpop" "https://127.0.0.1:$LISTEN_PORT/items" >/dev/null
  sed -e "s#jwks_file: deploy/local/jwks.json#jwks_file: $work/dpop/jwks.json#" \
    deploy/local/certbound.yaml >"$work/certbound.yaml"
  printf 'dpop:\n  enabled: true\n' >>"$work/certbound.yaml"
  config=$work/certbound.yaml
fi
if [ "$MODE" != module ]; then
  step "starting certbound on 127.0.0.1:$CERTBOUND_PORT (admin 127.0.0.1:$CERTBOUND_ADMIN_PORT), waiting for /readyz"
  CERTBOUND_ADMIN_LISTEN="127.0.0.1:$CERTBOUND_ADMIN_PORT" \
    "$CERTBOUND_BIN" serve --config "$config" \
    --listen "127.0.0.1:$CERTBOUND_PORT" 2>"$work/certbound.log" &
  certbound=$!
  pids+=("$certbound")
  # /readyz: serving, with the issuer's keys loaded.
  wait_for certbound "$certbound" "$work/certbound.log" \
    curl -fs "http://127.0.0.1:$CERTBOUND_ADMIN_PORT/readyz"
  envoy_source=deploy/envoy/self-signed.yaml
else
  # The shipped module config with the local setup's policy (deploy/local/certbound.yaml's
  # issuer, keys from its JWKS file instead of the idp cluster) in its filter_config.
  python3 - "$PWD" >"$work/module.yaml" <<'PY'
import re, sys
root = sys.argv[1]
text = open(f"{root}/deploy/envoy/module.yaml").read()
local = f"""issuers:
  - issuer: https://idp.example.com
    audiences: [https://api.example.com]
    jwks_file: {root}/deploy/local/jwks.json
    algorithms: [ES256]
    require_typ: at+jwt
certificate:
  sources: [peer]
upstream:
  claim_headers:
    sub: x-certbound-subject
    client_id: x-certbound-client-id
  remove_authorization: true
"""
block = re.compile(r"(\n( +)value: \|\n)((?:\2  .*\n)+)")
match = block.search(text)
assert match, "no filter_config value block in deploy/envoy/module.yaml"
indent = match.group(2) + "  "
body = "".join(indent + line + "\n" for line in local.splitlines())
text = text[:match.start(3)] + body + text[match.end(3):]
text = text.replace("/etc/ssl/certs/ca-certificates.crt", f"{root}/deploy/local/demo-ca.pem")
print(text, end="")
PY
  envoy_source=$work/module.yaml
fi

sed -e "s#port_value: 8443#port_value: $LISTEN_PORT#" \
    -e "s#port_value: 9901#port_value: $ADMIN_PORT#" \
    -e "s#port_value: 50051#port_value: $CERTBOUND_PORT#" \
    -e "s#port_value: 8080#port_value: $UPSTREAM_PORT#" \
    -e "s#/etc/envoy/tls/server.crt#$PWD/deploy/local/demo-server.pem#" \
    -e "s#/etc/envoy/tls/server.key#$PWD/deploy/local/demo-server.key#" \
    "$envoy_source" >"$work/envoy.yaml"
step "starting Envoy on https://127.0.0.1:$LISTEN_PORT (admin 127.0.0.1:$ADMIN_PORT), waiting until ready"
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="${CERTBOUND_MODULE_DIR:-}" \
  .venv/bin/envoy -c "$work/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level warn \
  >"$work/envoy.log" 2>&1 &
envoy=$!
pids+=("$envoy")
wait_for envoy "$envoy" "$work/envoy.log" curl -fs "http://127.0.0.1:$ADMIN_PORT/ready"

step "ready: four requests with curl"
token=$(cat deploy/local/demo-token.jwt)
unbound=$(cat deploy/local/demo-token-unbound.jwt)
failures=0
call() { # title, expected status, cert name, curl args...
  local title=$1 expected=$2 cert=$3; shift 3
  echo
  echo "== $title"
  local out
  out=$(curl -s -i --cacert deploy/local/demo-ca.pem \
    --cert "deploy/local/$cert.pem" --key "deploy/local/$cert.key" \
    "$@" "https://127.0.0.1:$LISTEN_PORT/items" | tr -d '\r') || true
  grep -iE '^(HTTP/|content-type|www-authenticate)|^\{|"upstream"|x-certbound' <<<"$out" || true
  if ! head -n 1 <<<"$out" | grep -q " $expected"; then
    echo "   (expected $expected)"
    failures=$((failures + 1))
  fi
}
if [ "$MODE" = dpop ]; then
  dpop_token=$(cat "$work/dpop/token.jwt")
  proof=$(cat "$work/dpop/proof.jwt")
  other_url=$(cat "$work/dpop/proof-other-url.jwt")
  call "1. DPoP-bound token + a proof for this request: allowed (200 from the upstream)" 200 demo-client \
    -H "authorization: DPoP $dpop_token" -H "dpop: $proof"
  call "2. the same proof again (replayed): 401" 401 demo-client \
    -H "authorization: DPoP $dpop_token" -H "dpop: $proof"
  call "3. the DPoP-bound token sent as a Bearer token (downgrade): 401" 401 demo-client \
    -H "authorization: Bearer $dpop_token"
  call "4. a proof made for another URL: 401" 401 demo-client \
    -H "authorization: DPoP $dpop_token" -H "dpop: $other_url"
else
  call "1. demo certificate + bound token: allowed (200 from the upstream)" 200 demo-client \
    -H "authorization: Bearer $token"
  call "2. no token: 401" 401 demo-client
  call "3. token not bound to a certificate: 401" 401 demo-client -H "authorization: Bearer $unbound"
  call "4. another client's certificate (thumbprint mismatch): 401" 401 demo-other-client \
    -H "authorization: Bearer $token"
fi

if [ "$MODE" != module ]; then
  # Stop certbound gracefully: its log writer flushes every line before it exits.
  kill -TERM "$certbound"
  wait "$certbound" 2>/dev/null || true
  echo
  echo "== certbound's decisions"
  grep -oE "decision=[^ ]+ reason=[^ ]+" "$work/certbound.log" || true
else
  echo
  echo "== certbound's decisions, as Envoy counts them (the module's stats)"
  curl -s "http://127.0.0.1:$ADMIN_PORT/stats?filter=dynamicmodulescustom.checks" \
    | grep -E ": [1-9]" | sed 's/^dynamicmodulescustom\.//' || true
fi
if [ "$failures" -gt 0 ]; then
  fail "$failures of 4 answers were not the expected ones (logs: certbound and Envoy above)"
fi
