#!/usr/bin/env bash
# Through-Envoy benchmark: the same mTLS listener, certificates and tokens, Envoy --concurrency 1
# pinned to CPU 0 (oha and certbound share CPU 1), configs interleaved, REPS repetitions:
#   none            Envoy without auth
#   lua-nocache     Envoy + jwt_authn + Lua binding check (benches/envoy/jwt-authn-lua.yaml)
#   lua-cache       ... with jwt_authn's jwt_cache_config
#   certbound-nocache / certbound-cache   Envoy + ext_authz to certbound (deploy/envoy/self-signed.yaml)
#   module-nocache / module-cache   Envoy + certbound's dynamic module (deploy/envoy/module.yaml,
#                   keys from the demo JWKS file; token_cache off / on)
#   module-cache-logged   ... cache on, the metadata fields deploy/envoy/module.yaml sets (those its
#                   access log reads: decision, reason, iss, rule; module-cache sets all of them)
#   module-cache-nometa   ... cache on, `module: {dynamic_metadata: false}` (nothing here reads it)
#   module-cache-bare   ... and `upstream: {claim_headers: {}}` (no header set for the upstream)
#   module-*-baseline   the same configuration with the module built in $MODULE_BASELINE (A/B)
#   floor-grpc / floor-http   reference, not a contender: the same ext_authz filter (gRPC, or
#                   Envoy's HTTP ext_authz) in front of examples/ext_authz_floor.rs, which allows
#                   everything at once: the least any ext_authz server can cost Envoy
# Each contender is first checked for correctness (200 for the bound token, the three 401s). Then
# oha measures throughput (closed loop, -c CONC) and latency at a fixed 2,000 req/s; Envoy's and
# certbound's CPU time per request comes from /proc. Results: benches/results/envoy-*.jsonl and
# a Markdown table + SVG chart (scripts/bench_report.py).
#
# The report ends with Envoy's CPU-µs per request added over no auth for each configuration,
# and whether the module's cached check meets issue 30's target (at most +5).
# PROFILE='module-*' also profiles Envoy with perf (see profile() below).
#
# CERTBOUND_CPU (default 1) moves certbound to Envoy's core instead of oha's. CERTBOUND_BIN runs
# another certbound build (default: this tree's release build), for A/B runs of two builds.
#
# Needs: oha (`cargo install oha`), Envoy (scripts/install-tools.sh), curl, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
REPS=${REPS:-2}
CONC=${CONC:-32}
RATE=${RATE:-2000}
PROTOCOLS=${PROTOCOLS:-"http1 http2"}
CONFIGS=${CONFIGS:-"none lua-nocache lua-cache module-nocache module-cache certbound-nocache certbound-cache floor-grpc floor-http"}

command -v oha >/dev/null || { echo "oha not found: cargo install oha" >&2; exit 1; }
scripts/install-tools.sh >/dev/null
# Only what the chosen configurations need is built and started (an authorization server on
# CPU 1 would otherwise idle beside oha).
wants() { for c in $CONFIGS; do case $c in $1) return 0;; esac; done; return 1; }
servers=""; wants 'certbound-*' && servers=1; wants 'floor-*' && servers=1
if [ -n "$servers" ]; then
  cargo build --release --quiet --bin certbound --example demo_material --example ext_authz_floor
else
  cargo build --release --quiet --example demo_material
fi
wants 'module-*' && cargo build --release --quiet -p certbound-envoy
module_dir=$PWD/target/release
envoy=.venv/bin/envoy
# BENCH_WORK=dir PREPARE_ONLY=1: only write the configurations, certificates and token there,
# and the ports in dir/ports (scripts/envoy-instructions.sh runs them under callgrind).
work=${BENCH_WORK:-$(mktemp -d)}
pids=()
envoy_pid=""
cleanup() { for p in "${pids[@]}" $envoy_pid; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${BENCH_WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

target/release/examples/demo_material "$work" >/dev/null
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk=$(getconf CLK_TCK)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
LISTEN=$(port); ADMIN=$(port); CB=$(port)

# certbound: one worker thread, pinned to CPU 1 (CERTBOUND_CPU), cache on or off (two processes, both idle when unused).
start_certbound() { # name cache_entries port
  cat >"$work/$1.yaml" <<YAML
listen: 127.0.0.1:$3
admin_listen: ''
issuers:
  - issuer: https://idp.example.com
    audiences: [https://api.example.com]
    jwks_file: $work/jwks.json
    algorithms: [ES256]
token_cache:
  max_entries: $2
runtime:
  worker_threads: 1
YAML
  RUST_LOG=info taskset -c "${CERTBOUND_CPU:-1}" "${CERTBOUND_BIN:-target/release/certbound}" serve --config "$work/$1.yaml" 2>/dev/null &
  pids+=($!)
  echo $! >"$work/$1.pid"
}
CB_CACHE=$(port)
FLOOR_GRPC=$(port); FLOOR_HTTP=$(port)
if wants 'certbound-*'; then
  start_certbound certbound-nocache 0 "$CB"
  start_certbound certbound-cache 100000 "$CB_CACHE"
fi
if wants 'floor-*'; then
  taskset -c "${CERTBOUND_CPU:-1}" target/release/examples/ext_authz_floor --grpc "$FLOOR_GRPC" --http "$FLOOR_HTTP" &
  pids+=($!)
  echo $! >"$work/floor.pid"
fi

# Envoy configs: every route answers 200 itself (direct_response), so only auth is measured.
python3 - "$work" "$LISTEN" "$ADMIN" "$CB" "$CB_CACHE" "$FLOOR_GRPC" "$FLOOR_HTTP" <<'PY'
import re, sys
work, listen, admin, cb, cb_cache, floor_grpc, floor_http = sys.argv[1:]
direct = 'direct_response: { status: 200, body: { inline_string: "ok" } }'
def common(text):
    # The shipped per-request stdout access log is not measured: the earlier rounds had none.
    text, n = re.subn(r"                # One line per request.*?request_id=%REQ\(X-REQUEST-ID\)%\\n\"\n", "", text, flags=re.S)
    assert n <= 1
    text = text.replace("port_value: 8443", f"port_value: {listen}").replace("port_value: 9901", f"port_value: {admin}")
    text = text.replace("/etc/envoy/tls/server.crt", f"{work}/demo-server.pem").replace("/etc/envoy/tls/server.key", f"{work}/demo-server.key")
    text = text.replace("/etc/envoy/jwks.json", f"{work}/jwks.json")
    text = re.sub(r"route: \{ cluster: upstream \}", direct, text)
    return timed(text)
# Envoy's own timing of each request, logged only while the runtime key bench.timing_log is
# 100 (the fixed-rate runs): microseconds from the first request byte to the last response
# byte, and for ext_authz the Check call as Envoy measured it (emit_filter_state_stats).
timing_log = """                stat_prefix: ingress
                access_log:
                  - name: envoy.access_loggers.file
                    filter:
                      runtime_filter:
                        runtime_key: bench.timing_log
                        percent_sampled: { numerator: 0, denominator: HUNDRED }
                        use_independent_randomness: true
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                      path: WORK/timing.log
                      log_format: { text_format_source: { inline_string: "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% %FILTER_STATE(envoy.filters.http.ext_authz:FIELD:latency_us)%\\n" } }
"""
def timed(text):
    out = text.replace("                stat_prefix: ingress\n", timing_log.replace("WORK", work), 1)
    assert out != text, "no stat_prefix to hang the timing log on"
    out = out.replace("failure_mode_allow: false", "failure_mode_allow: false\n                      emit_filter_state_stats: true")
    # runtime_modify needs an admin layer.
    assert "layered_runtime" not in out
    return out + "layered_runtime:\n  layers:\n    - name: admin\n      admin_layer: {}\n"
ext = common(open("deploy/envoy/self-signed.yaml").read())
open(f"{work}/certbound-nocache.envoy.yaml", "w").write(ext.replace("port_value: 50051", f"port_value: {cb}"))
open(f"{work}/certbound-cache.envoy.yaml", "w").write(ext.replace("port_value: 50051", f"port_value: {cb_cache}"))
open(f"{work}/floor-grpc.envoy.yaml", "w").write(ext.replace("port_value: 50051", f"port_value: {floor_grpc}"))
# The same filter over Envoy's HTTP ext_authz: a 200 from the server allows.
grpc_service = """                      grpc_service:
                        envoy_grpc: { cluster_name: certbound }
                        timeout: 0.25s
"""
assert grpc_service in ext
http = ext.replace(grpc_service, """                      http_service:
                        server_uri: { uri: "http://127.0.0.1:%s", cluster: floor_http, timeout: 0.25s }
""" % floor_http)
http = http.replace("  clusters:\n", """  clusters:
    - name: floor_http
      type: STATIC
      connect_timeout: 0.25s
      load_assignment:
        cluster_name: floor_http
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: 127.0.0.1, port_value: %s }
""" % floor_http, 1)
assert "floor_http" in http
open(f"{work}/floor-http.envoy.yaml", "w").write(http)
# No auth: the same listener without the ext_authz filter.
none = re.sub(r"\n                  - name: envoy.filters.http.ext_authz\n.*?(?=\n                  - name: envoy.filters.http.router)", "", ext, flags=re.S)
none = re.sub(r"\n                        # Per-route requirements.*?(?=\n                        - match: \{ prefix: \"/\" \})", "", none, flags=re.S)
assert "name: envoy.filters.http.ext_authz" not in none, none
open(f"{work}/none.envoy.yaml", "w").write(none)
# The module: the shipped config, keys from the demo JWKS file (no callouts), cache off or on.
module = common(open("deploy/envoy/module.yaml").read())
module = module.replace("address: idp.example.com, port_value: 443", "address: 127.0.0.1, port_value: 1")
module = module.replace("/etc/ssl/certs/ca-certificates.crt", f"{work}/demo-ca.pem")
start = module.index("                        value: |\n", module.index("filter_name: certbound"))
end = module.index("                  - name: envoy.filters.http.router")
def module_config(entries, metadata=True, claim_headers=True):
    yaml = f"""                        value: |
                          issuers:
                            - issuer: https://idp.example.com
                              audiences: [https://api.example.com]
                              jwks_file: {work}/jwks.json
                              algorithms: [ES256]
                          token_cache:
                            max_entries: {entries}
"""
    if metadata is not True:
        yaml += f"""                          module:
                            dynamic_metadata: {metadata}
"""
    if not claim_headers:
        yaml += """                          upstream:
                            claim_headers: {}
"""
    return module[:start] + yaml + module[end:]
open(f"{work}/module-nocache.envoy.yaml", "w").write(module_config(0))
open(f"{work}/module-cache.envoy.yaml", "w").write(module_config(100000))
# Without the dynamic metadata (nothing reads it here: the access log is left out above).
open(f"{work}/module-cache-nometa.envoy.yaml", "w").write(module_config(100000, metadata="false"))
# The fields deploy/envoy/module.yaml sets: those its access log reads.
open(f"{work}/module-cache-logged.envoy.yaml", "w").write(module_config(100000, metadata="[decision, reason, iss, rule]"))
# ... and no claim headers for the upstream either: the least this module asks of Envoy.
open(f"{work}/module-cache-bare.envoy.yaml", "w").write(module_config(100000, metadata="false", claim_headers=False))
lua = common(open("benches/envoy/jwt-authn-lua.yaml").read())
open(f"{work}/lua-cache.envoy.yaml", "w").write(lua)
nocache = re.sub(r"\n *jwt_cache_config:\n *jwt_cache_size: \d+", "", lua)
assert "jwt_cache_config:\n" not in nocache
open(f"{work}/lua-nocache.envoy.yaml", "w").write(nocache)
PY

if [ -n "${PREPARE_ONLY:-}" ]; then
  printf 'LISTEN=%s\nADMIN=%s\n' "$LISTEN" "$ADMIN" >"$work/ports"
  exit 0
fi
token=$(cat "$work/demo-token.jwt")
unbound=$(cat "$work/demo-token-unbound.jwt")
url="https://127.0.0.1:$LISTEN/items"
curl_as() { curl -s -o /dev/null -w '%{http_code}' --cacert "$work/demo-ca.pem" --cert "$work/$1.pem" --key "$work/$1.key" "${@:2}" "$url"; }
check_correct() { # name
  local ok no_token unbound_ mismatch
  ok=$(curl_as demo-client -H "authorization: Bearer $token")
  no_token=$(curl_as demo-client)
  unbound_=$(curl_as demo-client -H "authorization: Bearer $unbound")
  mismatch=$(curl_as demo-other-client -H "authorization: Bearer $token")
  if [ "$1" = none ] || [[ $1 = floor-* ]]; then
    # References: no auth, or a server that allows everything.
    [ "$ok$no_token$unbound_$mismatch" = 200200200200 ] || { echo "$1: reference does not answer 200 ($ok $no_token $unbound_ $mismatch)"; exit 1; }
  elif [ "$ok$no_token$unbound_$mismatch" != "200401401401" ]; then
    echo "$1 is not correct: allow=$ok no-token=$no_token unbound=$unbound_ mismatch=$mismatch"; exit 1
  fi
  echo "correct: $1 (allow $ok, no token $no_token, unbound $unbound_, mismatch $mismatch)"
}

# Envoy logs its own timing of each request only during the fixed-rate runs (runtime key
# bench.timing_log, flipped through the admin API; the file log flushes every second).
timing_on=""
timing() { # fixed-rate (log from now on) | off
  if [ "$1" = fixed-rate ]; then
    : >"$work/timing.log"
    curl -fs -X POST "http://127.0.0.1:$ADMIN/runtime_modify?bench.timing_log=100" >/dev/null
    timing_on=1
  elif [ -n "$timing_on" ]; then
    curl -fs -X POST "http://127.0.0.1:$ADMIN/runtime_modify?bench.timing_log=0" >/dev/null
    sleep 1.5
    timing_on=""
  fi
}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=benches/results/envoy-$stamp.jsonl
: >"$out"
oha_run() { # name proto rep kind extra-args...
  local name=$1 proto=$2 rep=$3 kind=$4; shift 4
  local http=(); [ "$proto" = http2 ] && http=(--http2)
  local cb_pid=""; case $name in certbound-*) cb_pid=$(cat "$work/$name.pid");; floor-*) cb_pid=$(cat "$work/floor.pid");; esac
  local e0 c0=0 e1 c1=0
  timing "$kind"
  e0=$(ticks "$envoy_pid"); [ -n "$cb_pid" ] && c0=$(ticks "$cb_pid")
  taskset -c 1 oha --no-tui --output-format json -z "${DURATION}s" "${http[@]}" "$@" \
    --cacert "$work/demo-ca.pem" --cert "$work/demo-client.pem" --key "$work/demo-client.key" \
    -H "authorization: Bearer $token" "$url" >"$work/oha.json"
  e1=$(ticks "$envoy_pid"); [ -n "$cb_pid" ] && c1=$(ticks "$cb_pid")
  timing off
  python3 - "$work/oha.json" "$name" "$proto" "$rep" "$kind" $((e1 - e0)) $((c1 - c0)) "$clk" "$work/timing.log" >>"$out" <<'PY'
import json, sys
path, name, proto, rep, kind, envoy_ticks, cb_ticks, clk, timing_path = sys.argv[1:]
def envoy_timing(kind, timing_path):
    """p50/p99 of Envoy's own per-request time and of its ext_authz call, in microseconds."""
    if kind != "fixed-rate":
        return {}
    rows = [line.split() for line in open(timing_path) if line.strip()]
    def quantiles(prefix, values):
        values = sorted(values)
        if not values:
            return {}
        pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
        return {f"{prefix}_p50_us": pick(0.50), f"{prefix}_p99_us": pick(0.99)}
    return {"envoy_timed": len(rows),
            **quantiles("envoy", [int(r[0]) for r in rows if r[0] != "-"]),
            **quantiles("ext_authz", [int(r[1]) for r in rows if len(r) > 1 and r[1] != "-"])}
r = json.load(open(path))
s = r["summary"]; p = r.get("latencyPercentiles", {})
total = sum(r.get("statusCodeDistribution", {}).values()) or 1
ok = r.get("statusCodeDistribution", {}).get("200", 0)
us = lambda ticks: int(ticks) * 1e6 / int(clk) / total
print(json.dumps({"config": name, "protocol": proto, "rep": int(rep), "kind": kind,
    "rps": round(s["requestsPerSec"]), "ok_ratio": round(ok / total, 4),
    "p50_ms": round(p.get("p50", 0) * 1000, 3), "p99_ms": round(p.get("p99", 0) * 1000, 3),
    "envoy_cpu_us": round(us(envoy_ticks), 1), "certbound_cpu_us": round(us(cb_ticks), 1),
    "cpu_us_per_req": round(us(envoy_ticks) + us(cb_ticks), 1), **envoy_timing(kind, timing_path)}))
PY
  tail -1 "$out"
}

# PROFILE=<config pattern> (e.g. 'module-*'): after the first repetition's measured runs, one
# more closed-loop run of each matching configuration under `perf record -g` (not in the table:
# sampling costs Envoy CPU), and where Envoy's samples went: every dynamic-module callback and
# hook with its share (children: the callback and all it calls inside Envoy). Envoy from PyPI is
# stripped, so its internals have no names; the exported callbacks (and the module's own
# symbols) do, which is what is attributed.
PROFILE=${PROFILE:-}
profile() { # name proto
  local data="$work/$1-$2.perf.data" report="${out%.jsonl}-$1-$2-perf.md"
  perf record -q -g -p "$envoy_pid" -o "$data" >/dev/null 2>&1 &
  local perf_pid=$!
  sleep 0.5
  taskset -c 1 oha --no-tui --output-format json -z "${DURATION}s" $([ "$2" = http2 ] && echo --http2) -c "$CONC" \
    --cacert "$work/demo-ca.pem" --cert "$work/demo-client.pem" --key "$work/demo-client.key" \
    -H "authorization: Bearer $token" "$url" >/dev/null
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  perf report -i "$data" --children --stdio -g none --sort dso,symbol --percent-limit 0 2>/dev/null \
    | python3 scripts/perf_module.py "$1" "$2" "$out" >"$report"
  echo "profile: $report"
}

for rep in $(seq 1 "$REPS"); do
  for name in $CONFIGS; do
    # module-*-baseline: the same configuration with the module in $MODULE_BASELINE (a folder
    # holding another build's libcertbound_envoy.so), for A/B runs of two builds side by side.
    dir=$module_dir; [[ $name = module-*-baseline ]] && dir=${MODULE_BASELINE:?MODULE_BASELINE: the folder of the baseline module}
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$dir taskset -c 0 "$envoy" -c "$work/${name%-baseline}.envoy.yaml" --concurrency 1 --disable-hot-restart --log-level error >"$work/envoy.log" 2>&1 &
    envoy_pid=$!
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && break; sleep 0.1; done
    check_correct "$name"
    for proto in $PROTOCOLS; do
      oha_run "$name" "$proto" "$rep" throughput -c "$CONC"
      oha_run "$name" "$proto" "$rep" fixed-rate -c "$CONC" -q "$RATE" --latency-correction
      [ "$rep" = 1 ] && [ -n "$PROFILE" ] && [[ $name = $PROFILE ]] && profile "$name" "$proto"
    done
    kill "$envoy_pid"; wait "$envoy_pid" 2>/dev/null || true
  done
done
python3 scripts/bench_report.py "$out"
