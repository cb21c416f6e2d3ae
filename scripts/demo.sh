#!/usr/bin/env bash
# One-command local demo: certbound (deploy/local) behind a real Envoy (deploy/envoy/self-signed.yaml)
# in front of a tiny upstream, all on 127.0.0.1. Shows with curl a 200 with the demo certificate
# and token, then the three 401s, and stops everything it started (at the end or on Ctrl-C).
#
# Ports (override with the environment): Envoy 8443 (admin 9901), certbound 50051, upstream 8080.
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN_PORT=${LISTEN_PORT:-8443}
ADMIN_PORT=${ADMIN_PORT:-9901}
CERTBOUND_PORT=${CERTBOUND_PORT:-50051}
UPSTREAM_PORT=${UPSTREAM_PORT:-8080}

scripts/install-tools.sh >/dev/null
cargo build --release --quiet --bin certbound
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The upstream: answers 200 with the headers it received.
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
pids+=($!)

target/release/certbound serve --config deploy/local/certbound.yaml \
  --listen "127.0.0.1:$CERTBOUND_PORT" 2>"$work/certbound.log" &
pids+=($!)

sed -e "s#port_value: 8443#port_value: $LISTEN_PORT#" \
    -e "s#port_value: 9901#port_value: $ADMIN_PORT#" \
    -e "s#port_value: 50051#port_value: $CERTBOUND_PORT#" \
    -e "s#port_value: 8080#port_value: $UPSTREAM_PORT#" \
    -e "s#/etc/envoy/tls/server.crt#$PWD/deploy/local/demo-server.pem#" \
    -e "s#/etc/envoy/tls/server.key#$PWD/deploy/local/demo-server.key#" \
    deploy/envoy/self-signed.yaml >"$work/envoy.yaml"
.venv/bin/envoy -c "$work/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level warn \
  >"$work/envoy.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
sleep 0.3

token=$(cat deploy/local/demo-token.jwt)
unbound=$(cat deploy/local/demo-token-unbound.jwt)
call() { # title, cert name, curl args...
  local title=$1 cert=$2; shift 2
  echo
  echo "== $title"
  curl -s -i --cacert deploy/local/demo-ca.pem \
    --cert "deploy/local/$cert.pem" --key "deploy/local/$cert.key" \
    "$@" "https://127.0.0.1:$LISTEN_PORT/items" | tr -d '\r' |
    grep -iE '^(HTTP/|content-type|www-authenticate)|^\{|"upstream"|x-certbound' || true
}
call "1. demo certificate + bound token: allowed (200 from the upstream)" demo-client \
  -H "authorization: Bearer $token"
call "2. no token: 401" demo-client
call "3. token not bound to a certificate: 401" demo-client -H "authorization: Bearer $unbound"
call "4. another client's certificate (thumbprint mismatch): 401" demo-other-client \
  -H "authorization: Bearer $token"
echo
echo "== certbound's decisions"
grep -oE "decision=[^ ]+ reason=[^ ]+" "$work/certbound.log" || true
