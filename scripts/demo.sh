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
#   scripts/demo.sh --proxy nginx|traefik|caddy|haproxy|envoy-http
#                              the HTTP authorization API (forward auth) behind that proxy, each on
#                              its shipped files (deploy/forward-auth/, deploy/envoy/http-service.yaml)
#                              with certbound on the deploy/forward-auth/certbound*.yaml they name;
#                              only the swaps the files' comments allow (ports, certificate paths,
#                              dpop.public_base_url) plus the JWKS of the fresh DPoP demo key beside
#                              deploy/local's. Shows the allow with the claim header at the upstream,
#                              the three 401s, a 403 (/admin without the admin scope), a DPoP allow
#                              and its replay refused. Tools from where scripts/install-tools.sh puts
#                              them: .venv/bin (traefik, caddy, envoy), Debian (nginx, haproxy).
#
# Ports (override with the environment): Envoy LISTEN_PORT=8443 (its admin ADMIN_PORT=9901),
# certbound CERTBOUND_PORT=50051 (its admin listener CERTBOUND_ADMIN_PORT=9090: /metrics,
# /readyz), upstream UPSTREAM_PORT=8080. With --proxy: the proxy LISTEN_PORT=8443 (Envoy's admin
# ADMIN_PORT=9901), certbound CERTBOUND_PORT=50052, CERTBOUND_ADMIN_PORT=9091, its HTTP
# authorization API FORWARD_AUTH_PORT=9292 (the shipped files' ports), upstream UPSTREAM_PORT=8080.
# DEMO_KEEP=1 keeps the work folder (the configs as started, every log) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=service
PROXY=
usage="usage: scripts/demo.sh [--module | --dpop | --proxy nginx|traefik|caddy|haproxy|envoy-http]"
case "${1:-}" in
  "") ;;
  --module) MODE=module ;;
  --dpop) MODE=dpop ;;
  --proxy)
    MODE=proxy PROXY=${2:-}
    case "$PROXY" in
      nginx | traefik | caddy | haproxy | envoy-http) ;;
      *) echo "$usage" >&2; exit 64 ;;
    esac
    ;;
  *) echo "$usage" >&2; exit 64 ;;
esac
# A port variable set by the caller is used as given; a default that is busy (the service the
# README's first command started holds 50051 and 9090) is replaced by the next free port.
explicit=" "
for name in LISTEN_PORT ADMIN_PORT CERTBOUND_PORT CERTBOUND_ADMIN_PORT UPSTREAM_PORT FORWARD_AUTH_PORT; do
  if [ -n "${!name:-}" ]; then explicit+="$name "; fi
done
LISTEN_PORT=${LISTEN_PORT:-8443}
ADMIN_PORT=${ADMIN_PORT:-9901}
if [ "$MODE" = proxy ]; then
  # The ports deploy/forward-auth/certbound*.yaml name (beside the README's first command's).
  CERTBOUND_PORT=${CERTBOUND_PORT:-50052}
  CERTBOUND_ADMIN_PORT=${CERTBOUND_ADMIN_PORT:-9091}
else
  CERTBOUND_PORT=${CERTBOUND_PORT:-50051}
  CERTBOUND_ADMIN_PORT=${CERTBOUND_ADMIN_PORT:-9090}
fi
FORWARD_AUTH_PORT=${FORWARD_AUTH_PORT:-9292}
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
specs=("LISTEN_PORT:$LISTEN_PORT" "UPSTREAM_PORT:$UPSTREAM_PORT")
if [ "$MODE" != proxy ] || [ "$PROXY" = envoy-http ]; then
  specs+=("ADMIN_PORT:$ADMIN_PORT")
fi
if [ "$MODE" != module ]; then
  specs+=("CERTBOUND_PORT:$CERTBOUND_PORT" "CERTBOUND_ADMIN_PORT:$CERTBOUND_ADMIN_PORT")
fi
if [ "$MODE" = proxy ]; then
  specs+=("FORWARD_AUTH_PORT:$FORWARD_AUTH_PORT")
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

tools="Envoy, curl"
if [ "$MODE" = proxy ]; then tools="$PROXY, curl"; fi
step "checking the tools (scripts/install-tools.sh: $tools; installs what is missing)"
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
  if [ -n "${DEMO_KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
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
        headers = {}
        for name, value in self.headers.items():  # a repeated header: its values joined
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = json.dumps({"upstream": "reached", "headers": headers}, indent=1).encode()
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

# point SOURCE DEST FROM TO [FROM TO]...: DEST is SOURCE with each FROM replaced by its TO; a
# FROM missing from SOURCE stops the demo (the shipped file changed: the demo must follow).
point() {
  python3 - "$@" <<'PY'
import sys
source, dest, *pairs = sys.argv[1:]
text = open(source).read()
for old, new in zip(pairs[::2], pairs[1::2]):
    if old not in text:
        sys.exit(f"demo: {source} no longer has {old!r}")
    text = text.replace(old, new)
open(dest, "w").write(text)
PY
}

config=deploy/local/certbound.yaml
if [ "$MODE" = proxy ]; then
  # The public origin clients use (dpop.public_base_url): the proxy's port, by name.
  public="https://localhost:$LISTEN_PORT"
  step "making fresh DPoP material (cargo run --example dpop_demo: builds it the first time, about a minute)"
  cargo run --quiet --example dpop_demo -- "$work/dpop" "$public/items" >/dev/null
  # One JWKS: deploy/local's key (the demo token's) and the fresh DPoP demo key.
  python3 - deploy/local/jwks.json "$work/dpop/jwks.json" >"$work/jwks.json" <<'PY'
import json, sys
print(json.dumps({"keys": [k for f in sys.argv[1:] for k in json.load(open(f))["keys"]]}))
PY
  case "$PROXY" in
    nginx) shipped=deploy/forward-auth/certbound-nginx.yaml ;;
    envoy-http) shipped=deploy/forward-auth/certbound-envoy.yaml ;;
    *) shipped=deploy/forward-auth/certbound.yaml ;;
  esac
  config=$work/certbound.yaml
  step "certbound's config: $shipped with ports 50052, 9091, 9292 -> $CERTBOUND_PORT, $CERTBOUND_ADMIN_PORT, $FORWARD_AUTH_PORT, public_base_url $public, jwks_file deploy/local's key + the DPoP demo key"
  point "$shipped" "$config" \
    127.0.0.1:50052 "127.0.0.1:$CERTBOUND_PORT" \
    127.0.0.1:9091 "127.0.0.1:$CERTBOUND_ADMIN_PORT" \
    127.0.0.1:9292 "127.0.0.1:$FORWARD_AUTH_PORT" \
    https://localhost:8443 "$public" \
    "jwks_file: deploy/local/jwks.json" "jwks_file: $work/jwks.json"
fi
if [ "$MODE" = dpop ]; then
  step "making fresh DPoP material (cargo run --example dpop_demo: builds it the first time, about a minute)"
  cargo run --quiet --example dpop_demo -- "$work/dpop" "https://127.0.0.1:$LISTEN_PORT/items" >/dev/null
  sed -e "s#jwks_file: deploy/local/jwks.json#jwks_file: $work/dpop/jwks.json#" \
    deploy/local/certbound.yaml >"$work/certbound.yaml"
  printf 'dpop:\n  enabled: true\n' >>"$work/certbound.yaml"
  config=$work/certbound.yaml
fi
if [ "$MODE" = proxy ]; then
  step "starting certbound (HTTP authorization API on 127.0.0.1:$FORWARD_AUTH_PORT, admin 127.0.0.1:$CERTBOUND_ADMIN_PORT), waiting for /readyz"
  # (Without the demo's own CERTBOUND_* variables, which certbound would warn are no config keys.)
  env -u CERTBOUND_BIN -u CERTBOUND_MODULE_DIR "$CERTBOUND_BIN" serve --config "$config" \
    2>"$work/certbound.log" &
  certbound=$!
  pids+=("$certbound")
  wait_for certbound "$certbound" "$work/certbound.log" \
    curl -fs "http://127.0.0.1:$CERTBOUND_ADMIN_PORT/readyz"
  # The proxy's shipped files, with the proxy's, certbound's and the upstream's ports swapped.
  ports=(127.0.0.1:8443 "127.0.0.1:$LISTEN_PORT" 127.0.0.1:9292 "127.0.0.1:$FORWARD_AUTH_PORT"
    127.0.0.1:8080 "127.0.0.1:$UPSTREAM_PORT")
  proxy_env=()
  case "$PROXY" in
    nginx)
      # Written to $work, so the certificate paths (relative to the config's folder) are made
      # absolute; pid and temporary files under the -p prefix.
      point deploy/forward-auth/nginx.conf "$work/nginx.conf" "${ports[@]}" \
        ../local/demo-server.pem "$PWD/deploy/local/demo-server.pem" \
        ../local/demo-server.key "$PWD/deploy/local/demo-server.key"
      mkdir -p "$work/nginx"
      proxy_cmd=("$(command -v nginx || echo /usr/sbin/nginx)" -p "$work/nginx" -e stderr
        -c "$work/nginx.conf" -g "daemon off;")
      ;;
    traefik)
      point deploy/forward-auth/traefik-dynamic.yml "$work/traefik-dynamic.yml" "${ports[@]:2}"
      point deploy/forward-auth/traefik.yml "$work/traefik.yml" "${ports[@]:0:2}" \
        deploy/forward-auth/traefik-dynamic.yml "$work/traefik-dynamic.yml"
      proxy_cmd=(.venv/bin/traefik "--configFile=$work/traefik.yml")
      ;;
    caddy)
      point deploy/forward-auth/Caddyfile "$work/Caddyfile" "${ports[@]}" \
        localhost:8443 "localhost:$LISTEN_PORT"
      # Caddy's own files (autosaved config, storage) in $work, not in your home.
      proxy_env=("XDG_DATA_HOME=$work" "XDG_CONFIG_HOME=$work")
      proxy_cmd=(.venv/bin/caddy run --config "$work/Caddyfile" --adapter caddyfile)
      ;;
    haproxy)
      cat deploy/local/demo-server.pem deploy/local/demo-server.key >"$work/server.pem"
      point deploy/forward-auth/haproxy.cfg "$work/haproxy.cfg" "${ports[@]}"
      proxy_env=("CERTBOUND_SERVER_PEM=$work/server.pem")
      proxy_cmd=("$(command -v haproxy || echo /usr/sbin/haproxy)" -db -f "$work/haproxy.cfg")
      ;;
    envoy-http)
      point deploy/envoy/http-service.yaml "$work/envoy.yaml" \
        "port_value: 8443" "port_value: $LISTEN_PORT" \
        "port_value: 9901" "port_value: $ADMIN_PORT" \
        "port_value: 9292" "port_value: $FORWARD_AUTH_PORT" \
        "uri: http://127.0.0.1:9292" "uri: http://127.0.0.1:$FORWARD_AUTH_PORT" \
        "port_value: 8080" "port_value: $UPSTREAM_PORT" \
        /etc/envoy/tls/server.crt "$PWD/deploy/local/demo-server.pem" \
        /etc/envoy/tls/server.key "$PWD/deploy/local/demo-server.key"
      proxy_cmd=(.venv/bin/envoy -c "$work/envoy.yaml" --concurrency 1 --disable-hot-restart
        --log-level warn)
      ;;
  esac
  step "starting $PROXY on https://localhost:$LISTEN_PORT: ${proxy_cmd[*]}"
  env "${proxy_env[@]}" "${proxy_cmd[@]}" >"$work/proxy.log" 2>&1 &
  proxy=$!
  pids+=("$proxy")
  # Ready when an anonymous route (/public/) reaches the upstream through the proxy and certbound:
  # a proxy may listen before its routes are loaded (Traefik's file provider).
  public_route() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert deploy/local/demo-ca.pem \
      --resolve "localhost:$LISTEN_PORT:127.0.0.1" "$public/public/ready")" = 200 ]
  }
  wait_for "$PROXY" "$proxy" "$work/proxy.log" public_route
elif [ "$MODE" != module ]; then
  step "starting certbound on 127.0.0.1:$CERTBOUND_PORT (admin 127.0.0.1:$CERTBOUND_ADMIN_PORT), waiting for /readyz"
  env -u CERTBOUND_BIN -u CERTBOUND_MODULE_DIR CERTBOUND_ADMIN_LISTEN="127.0.0.1:$CERTBOUND_ADMIN_PORT" \
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

if [ "$MODE" != proxy ]; then
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
fi

token=$(cat deploy/local/demo-token.jwt)
unbound=$(cat deploy/local/demo-token-unbound.jwt)
failures=0
calls=0
base="https://127.0.0.1:$LISTEN_PORT"
resolve=()
if [ "$MODE" = proxy ]; then
  # By the public name (dpop.public_base_url, the server certificate's localhost), at 127.0.0.1.
  base=$public
  resolve=(--resolve "localhost:$LISTEN_PORT:127.0.0.1")
fi
call() { # title, expected status, cert name, path, curl args...
  local title=$1 expected=$2 cert=$3 path=$4; shift 4
  calls=$((calls + 1))
  echo
  echo "== $title"
  echo "   curl --cert deploy/local/$cert.pem ... $base$path"
  local out
  out=$(curl -s -i --cacert deploy/local/demo-ca.pem "${resolve[@]}" \
    --cert "deploy/local/$cert.pem" --key "deploy/local/$cert.key" \
    "$@" "$base$path" | tr -d '\r') || true
  grep -iE '^(HTTP/|content-type|www-authenticate)|^\{|"upstream"|x-certbound' <<<"$out" || true
  if ! head -n 1 <<<"$out" | grep -q " $expected"; then
    echo "   (expected $expected)"
    failures=$((failures + 1))
  fi
}
if [ "$MODE" = proxy ]; then
  step "ready: seven requests with curl through $PROXY"
  dpop_token=$(cat "$work/dpop/token.jwt")
  proof=$(cat "$work/dpop/proof.jwt")
  call "1. demo certificate + bound token, and a client's own x-certbound-subject: mallory: allowed; the upstream sees certbound's claim headers" \
    200 demo-client /items -H "authorization: Bearer $token" -H "x-certbound-subject: mallory"
  call "2. no token: 401" 401 demo-client /items
  call "3. token not bound to a certificate: 401" 401 demo-client /items \
    -H "authorization: Bearer $unbound"
  call "4. another client's certificate (thumbprint mismatch): 401" 401 demo-other-client /items \
    -H "authorization: Bearer $token"
  call "5. /admin needs the admin scope, the token has items:read items:write: 403" 403 demo-client \
    /admin/users -H "authorization: Bearer $token"
  call "6. DPoP-bound token + a proof for $public/items: allowed" 200 demo-client /items \
    -H "authorization: DPoP $dpop_token" -H "dpop: $proof"
  call "7. the same proof again (replayed): 401" 401 demo-client /items \
    -H "authorization: DPoP $dpop_token" -H "dpop: $proof"
else
  step "ready: four requests with curl"
fi
if [ "$MODE" = dpop ]; then
  dpop_token=$(cat "$work/dpop/token.jwt")
  proof=$(cat "$work/dpop/proof.jwt")
  other_url=$(cat "$work/dpop/proof-other-url.jwt")
  call "1. DPoP-bound token + a proof for this request: allowed (200 from the upstream)" 200 demo-client /items \
    -H "authorization: DPoP $dpop_token" -H "dpop: $proof"
  call "2. the same proof again (replayed): 401" 401 demo-client /items \
    -H "authorization: DPoP $dpop_token" -H "dpop: $proof"
  call "3. the DPoP-bound token sent as a Bearer token (downgrade): 401" 401 demo-client /items \
    -H "authorization: Bearer $dpop_token"
  call "4. a proof made for another URL: 401" 401 demo-client /items \
    -H "authorization: DPoP $dpop_token" -H "dpop: $other_url"
elif [ "$MODE" != proxy ]; then
  call "1. demo certificate + bound token: allowed (200 from the upstream)" 200 demo-client /items \
    -H "authorization: Bearer $token"
  call "2. no token: 401" 401 demo-client /items
  call "3. token not bound to a certificate: 401" 401 demo-client /items -H "authorization: Bearer $unbound"
  call "4. another client's certificate (thumbprint mismatch): 401" 401 demo-other-client /items \
    -H "authorization: Bearer $token"
fi

if [ "$MODE" != module ]; then
  # Stop certbound gracefully: its log writer flushes every line before it exits.
  kill -TERM "$certbound"
  wait "$certbound" 2>/dev/null || true
  echo
  echo "== certbound's decisions"
  # (Not the readiness checks on /public/ready that --proxy made before the first request above.)
  grep -v 'path="/public/ready"' "$work/certbound.log" | grep -oE "decision=[^ ]+ reason=[^ ]+" || true
else
  echo
  echo "== certbound's decisions, as Envoy counts them (the module's stats)"
  # The module adds its counted checks to Envoy's counter in batches, within 100 ms.
  sleep 0.5
  curl -s "http://127.0.0.1:$ADMIN_PORT/stats?filter=dynamicmodulescustom.checks" \
    | grep -E ": [1-9]" | sed 's/^dynamicmodulescustom\.//' || true
fi
if [ "$failures" -gt 0 ] && [ "$MODE" = proxy ]; then
  echo "--- $PROXY log:" >&2; tail -n 20 "$work/proxy.log" >&2 || true
fi
if [ "$failures" -gt 0 ]; then
  fail "$failures of $calls answers were not the expected ones (logs: certbound and Envoy above)"
fi
