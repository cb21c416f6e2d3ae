#!/usr/bin/env bash
# The HTTP authorization API, measured. Results: benches/results/forward-auth-*.jsonl.
# 1. Raw: checks/s and latency of the HTTP API beside the gRPC API, the same certbound build and
#    tokens, cache on and off, interleaved, REPS times (examples/loadgen.rs --api http|grpc;
#    certbound pinned to CPU 0, the generator to CPU 1).
# 2. Through NGINX and Traefik, their shipped configs (deploy/forward-auth): oha at a fixed
#    RATE (default 2,000 req/s) over HTTP/1.1 with the demo client certificate and the demo bound
#    token, against the same proxy config with the certbound step removed ("none"); every
#    response must be 200. The difference in p50/p99 is what the check adds. The upstream is
#    examples/ext_authz_floor's HTTP port (answers 200 at once).
# Needs: oha (`cargo install oha`), scripts/install-tools.sh (NGINX, Traefik), taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
REPS=${REPS:-3}
RATE=${RATE:-2000}
CONC=${CONC:-32}
command -v oha >/dev/null || { echo "oha not found: cargo install oha" >&2; exit 1; }
scripts/install-tools.sh >/dev/null
cargo build --release --quiet --bin certbound --example loadgen --example ext_authz_floor
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=benches/results/forward-auth-$stamp.jsonl
: >"$out"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# 1. Raw.
raw() { taskset -c 1 target/release/examples/loadgen --server-cpu 0 --duration "$DURATION" "$@" | tee -a "$out"; }
for rep in $(seq "$REPS"); do
  for api in grpc http; do
    raw --label "raw $api, closed, 1 token, cache on, rep $rep" --api "$api" --mode closed --concurrency 64 --tokens 1 --cache on
    raw --label "raw $api, closed, 1 token, cache off, rep $rep" --api "$api" --mode closed --concurrency 64 --tokens 1 --cache off
    raw --label "raw $api, fixed 2000/s, cache on, rep $rep" --api "$api" --mode rate --rate 2000 --tokens 1 --cache on
  done
done

# 2. Through NGINX and Traefik.
root=$PWD
UP=$(port); FA=$(port); GRPC=$(port); PUBLIC=$(port)
target/release/examples/ext_authz_floor --http "$UP" --grpc "$(port)" >/dev/null 2>&1 &
pids+=($!)
start_certbound() { # config
  sed -e "s#127.0.0.1:9292#127.0.0.1:$FA#" "deploy/forward-auth/$1" >"$work/certbound.yaml"
  CERTBOUND_ADMIN_LISTEN='' RUST_LOG=warn taskset -c 1 target/release/certbound serve --config "$work/certbound.yaml" --listen "127.0.0.1:$GRPC" >/dev/null 2>&1 &
  certbound_pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$FA/" && return; sleep 0.1; done
  echo "certbound did not start" >&2; exit 1
}
point() { # file -> stdout, local addresses and paths swapped
  sed -e "s#127.0.0.1:8443#127.0.0.1:$PUBLIC#; s#127.0.0.1:9292#127.0.0.1:$FA#; s#127.0.0.1:8080#127.0.0.1:$UP#" \
      -e "s#deploy/local/#$root/deploy/local/#g; s#deploy/forward-auth/traefik-dynamic.yml#$work/traefik-dynamic.yml#" "$1"
}
start_proxy() { # proxy with|none
  case $1 in
    nginx)
      mkdir -p "$work/nginx"
      point deploy/forward-auth/nginx.conf >"$work/nginx.conf"
      [ "$2" = none ] && sed -i '/auth_request \/_certbound;/d' "$work/nginx.conf"
      taskset -c 0 nginx -p "$work/nginx" -e stderr -c "$work/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
      ;;
    traefik)
      point deploy/forward-auth/traefik-dynamic.yml >"$work/traefik-dynamic.yml"
      [ "$2" = none ] && sed -i 's/middlewares: \[client-certificate, certbound\]/middlewares: [client-certificate]/' "$work/traefik-dynamic.yml"
      point deploy/forward-auth/traefik.yml >"$work/traefik.yml"
      taskset -c 0 .venv/bin/traefik --configFile="$work/traefik.yml" >/dev/null 2>&1 &
      ;;
  esac
  proxy_pid=$!
  for _ in $(seq 100); do
    curl -sk -o /dev/null "https://127.0.0.1:$PUBLIC/" && return
    sleep 0.1
  done
  echo "$1 did not start" >&2; exit 1
}
token=$(cat deploy/local/demo-token.jwt)
measure() { # proxy with|none rep
  local status
  # A proxy may accept connections before its routes and TLS options are all loaded.
  for _ in $(seq 50); do
    status=$(curl -sk -o /dev/null -w '%{http_code}' --cert deploy/local/demo-client.pem --key deploy/local/demo-client.key \
      -H "authorization: Bearer $token" "https://127.0.0.1:$PUBLIC/items")
    [ "$status" = 200 ] && break
    sleep 0.1
  done
  [ "$status" = 200 ] || { echo "$1 $2: the demo request got $status" >&2; exit 1; }
  if [ "$2" = with ]; then
    status=$(curl -sk -o /dev/null -w '%{http_code}' --cert deploy/local/demo-client.pem --key deploy/local/demo-client.key "https://127.0.0.1:$PUBLIC/items")
    [ "$status" = 401 ] || { echo "$1: no token got $status, not 401" >&2; exit 1; }
  fi
  taskset -c 1 oha -z "${DURATION}s" -q "$RATE" -c "$CONC" --latency-correction --no-tui --insecure --http-version 1.1 \
    --cert deploy/local/demo-client.pem --key deploy/local/demo-client.key -H "authorization: Bearer $token" \
    --output-format json "https://127.0.0.1:$PUBLIC/items" >"$work/oha.json"
  python3 - "$work/oha.json" "$1" "$2" "$3" "$RATE" <<'PY' | tee -a "$out"
import json, sys
path, proxy, auth, rep, rate = sys.argv[1:]
r = json.load(open(path))
codes = r.get("statusCodeDistribution", {})
ms = lambda q: round(r["latencyPercentiles"][q] * 1000, 3)
print(json.dumps({"label": f"{proxy} {auth} certbound, fixed {rate}/s, rep {rep}", "proxy": proxy,
                  "check": auth, "rate": int(rate), "requests_per_s": round(r["summary"]["requestsPerSec"]),
                  "p50_ms": ms("p50"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
                  "status": codes,
                  # In-flight requests cut off at the end of the run are not failures.
                  "errors": {k: v for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k}}))
PY
}
for proxy in nginx traefik; do
  case $proxy in nginx) config=certbound-nginx.yaml ;; *) config=certbound.yaml ;; esac
  start_certbound "$config"
  for rep in $(seq "$REPS"); do
    for auth in none with; do
      start_proxy "$proxy" "$auth"
      measure "$proxy" "$auth" "$rep"
      kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
    done
  done
  kill "$certbound_pid"; wait "$certbound_pid" 2>/dev/null || true
done
echo "results: $out"
