#!/usr/bin/env bash
# grpcurl smoke test against a running certbound (deploy/local config on a free port):
# list, health, one allow and two deny Checks from tests/grpcurl (links to the request
# files of the grpcurl walk-through, docs/src/getting-started.md, in deploy/local/requests, so the walk-through cannot drift).
set -euo pipefail
cd "$(dirname "$0")/.."

grpcurl=${GRPCURL_BIN:-.venv/bin/grpcurl}
bin=${CERTBOUND_BIN:-target/debug/certbound}
[ -x "$bin" ] || cargo build --quiet --bin certbound
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
log=$(mktemp)
CERTBOUND_ADMIN_LISTEN=127.0.0.1:0 "$bin" serve --config deploy/local/certbound.yaml --listen "$addr" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT

fail() { echo "grpcurl smoke: FAIL: $*"; echo "--- certbound log"; cat "$log"; exit 1; }
for _ in $(seq 1 100); do
  if "$grpcurl" -plaintext "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then break; fi
  sleep 0.1
done

passed=0
expect() { # name, expected substring, command...
  local name=$1 want=$2; shift 2
  local out
  out=$("$@" 2>&1) || true
  if grep -qF -- "$want" <<<"$out"; then passed=$((passed + 1)); echo "ok: $name"; else fail "$name: wanted '$want', got: $out"; fi
}
expect "list shows Authorization" "envoy.service.auth.v3.Authorization" "$grpcurl" -plaintext "$addr" list
expect "list shows Health" "grpc.health.v1.Health" "$grpcurl" -plaintext "$addr" list
expect "health SERVING" '"status": "SERVING"' \
  "$grpcurl" -plaintext -d '{"service":"envoy.service.auth.v3.Authorization"}' "$addr" grpc.health.v1.Health/Check
expect "allow" '"okResponse"' \
  "$grpcurl" -plaintext -d @ "$addr" envoy.service.auth.v3.Authorization/Check <tests/grpcurl/allow.json
expect "deny wrong certificate" '"message": "binding_mismatch"' \
  "$grpcurl" -plaintext -d @ "$addr" envoy.service.auth.v3.Authorization/Check <tests/grpcurl/wrong-certificate.json
expect "deny body" '{\"message\":\"unauthorized\"}' \
  "$grpcurl" -plaintext -d @ "$addr" envoy.service.auth.v3.Authorization/Check <tests/grpcurl/no-token.json
# Tokens (base64url JSON starts "eyJ") and certificates must never be logged.
if grep -q -e "eyJ" -e "BEGIN" "$log"; then fail "a token or certificate appeared in the log"; fi
echo "grpcurl smoke: $passed passed, 0 failed"
