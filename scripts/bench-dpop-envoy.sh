#!/usr/bin/env bash
# DPoP through Envoy, both shapes, the replay store in memory and in Redis: what the shared store
# costs where it is paid. Envoy --concurrency 1 pinned to CPU 0; certbound (the service shape),
# redis-server and the load generator (examples/dpop_load.rs) on CPU 1. Every request carries a
# fresh proof (made up front, sent once), so each one is verified and recorded against replay.
# Configs, interleaved REPS times:
#   none                            the same Envoy without the module (no auth: the baseline)
#   module-memory / module-redis    deploy/envoy/module.yaml, dpop.replay.store memory / redis
#   service-memory / service-redis  deploy/envoy/self-signed.yaml + certbound serve, likewise
#   module-*-baseline               the same as module-*, with the module MODULE_BASELINE names (the
#                                   directory of another build's libcertbound_envoy.so): A/B runs
#                                   side by side
# For each: a closed loop (CONC in flight) for throughput, then a fixed RATE req/s for latency,
# over HTTP/2 (HTTP=2) or HTTP/1.1 (HTTP=1). CPU per request of Envoy and certbound from /proc,
# Envoy's by thread (the worker, the module's certbound-redis) with the threads' context switches,
# and the batch size Redis saw (SET calls per read from a client). The last lines: the module's
# Redis-over-memory ratio of Envoy CPU per request and p99 difference, and the target's verdict.
# Results: benches/results/dpop-envoy-*.jsonl, and a table on stdout.
#
# With none and module-memory among CONFIGS, the last line is issue 30's "DPoP checks through the
# module against openssl": `openssl speed ecdsap256` runs on Envoy's core (CPU 0) in each
# repetition, and its µs per verify (user CPU time; openssl counts no kernel time) is divided by
# the Envoy CPU-µs (user + sys) that module-memory adds per request over none in the same
# repetition; the median of the repetitions against TARGET (0.85), met or not.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
REPS=${REPS:-2}
CONC=${CONC:-32}
RATE=${RATE:-2000}
HTTP=${HTTP:-2}
CONFIGS=${CONFIGS:-"none module-memory module-redis service-memory service-redis"}

scripts/install-tools.sh >/dev/null
cargo build --release --quiet --bin certbound --example demo_material --example dpop_load
cargo build --release --quiet -p certbound-envoy
module_dir=$PWD/target/release
envoy=.venv/bin/envoy
load=target/release/examples/dpop_load
work=$(mktemp -d)
pids=()
envoy_pid=""
cleanup() { for p in "${pids[@]}" $envoy_pid; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
LISTEN=$(port); ADMIN=$(port); REDIS=$(port); CB_MEMORY=$(port); CB_REDIS=$(port)
target/release/examples/demo_material "$work" >/dev/null
"$load" material "$work"

taskset -c 1 redis-server --bind 127.0.0.1 --port "$REDIS" --save "" --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$REDIS") 2>/dev/null && break; sleep 0.05; done

# The certbound settings both shapes share; $1 the replay store lines.
settings() {
  cat <<YAML
issuers:
  - issuer: https://idp.example.com
    audiences: [https://api.example.com]
    jwks_file: $work/jwks.json
    algorithms: [ES256]
dpop:
  enabled: true
  public_base_url: https://api.example.com
  replay:
$1
YAML
}
# The memory store sized for the closed loop's rate (the default 200,000 live proofs hold about
# 3,000 proofs/s; past it a full store answers 503, as it should).
memory="    store: memory
    max_entries: 2000000"
redis="    store: redis
    url: redis://127.0.0.1:$REDIS
    timeout_ms: 250"

start_certbound() { # name port replay-lines
  { echo "listen: 127.0.0.1:$2"; echo "admin_listen: ''"; settings "$3"; } >"$work/$1.yaml"
  taskset -c 1 target/release/certbound serve --config "$work/$1.yaml" 2>/dev/null &
  pids+=($!)
  echo $! >"$work/$1.pid"
}
start_certbound service-memory "$CB_MEMORY" "$memory"
start_certbound service-redis "$CB_REDIS" "$redis"

settings "$memory" >"$work/module-memory.filter.yaml"
settings "$redis" >"$work/module-redis.filter.yaml"
python3 - "$work" "$LISTEN" "$ADMIN" "$CB_MEMORY" "$CB_REDIS" <<'PY'
import re, sys
work, listen, admin, cb_memory, cb_redis = sys.argv[1:]
direct = 'direct_response: { status: 200, body: { inline_string: "ok" } }'
def common(text):
    # No per-request access log: it is not what is measured.
    text, n = re.subn(r"                # One line per request.*?request_id=%REQ\(X-REQUEST-ID\)%\\n\"\n", "", text, flags=re.S)
    assert n == 1, "no shipped access log to take out"
    text = text.replace("port_value: 8443", f"port_value: {listen}").replace("port_value: 9901", f"port_value: {admin}")
    text = text.replace("/etc/envoy/tls/server.crt", f"{work}/demo-server.pem").replace("/etc/envoy/tls/server.key", f"{work}/demo-server.key")
    return re.sub(r"route: \{ cluster: upstream \}", direct, text)
ext = common(open("deploy/envoy/self-signed.yaml").read())
open(f"{work}/service-memory.envoy.yaml", "w").write(ext.replace("port_value: 50051", f"port_value: {cb_memory}"))
open(f"{work}/service-redis.envoy.yaml", "w").write(ext.replace("port_value: 50051", f"port_value: {cb_redis}"))
module = common(open("deploy/envoy/module.yaml").read())
module = module.replace("address: idp.example.com, port_value: 443", "address: 127.0.0.1, port_value: 1")
module = module.replace("/etc/ssl/certs/ca-certificates.crt", f"{work}/demo-ca.pem")
start = module.index("                        value: |\n", module.index("filter_name: certbound"))
end = module.index("                  - name: envoy.filters.http.router")
for store in ["memory", "redis"]:
    lines = open(f"{work}/module-{store}.filter.yaml").read().splitlines()
    value = "                        value: |\n" + "".join(f"                          {l}\n" for l in lines)
    open(f"{work}/module-{store}.envoy.yaml", "w").write(module[:start] + value + module[end:])
# No auth: the module's filter and its per-route settings taken out, the rest (listener, TLS,
# routes) the same.
filters = module.index("                  - name: envoy.filters.http.dynamic_modules\n")
none = module[:filters] + module[end:]
none = re.sub(r"\n                        # Per-route requirements.*?(?=\n                        - match: \{ prefix: \"/\" \})", "", none, flags=re.S)
assert "filter_name: certbound" not in none, none
open(f"{work}/none.envoy.yaml", "w").write(none)
PY

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=benches/results/dpop-envoy-$stamp.jsonl
: >"$out"
url="https://127.0.0.1:$LISTEN/items"
# Redis' count of SET calls (proofs recorded, first uses and replays) and of reads from its
# clients: SETs per read is the batch size the store's clients sent (1 without pipelining).
sets() { redis-cli -p "$REDIS" info commandstats | grep -o 'cmdstat_set:calls=[0-9]*' | cut -d= -f2 || echo 0; }
reads() { redis-cli -p "$REDIS" info stats | grep -o 'total_reads_processed:[0-9]*' | cut -d: -f2 || echo 0; }
run() { # name rep mode extra...
  local name=$1 rep=$2 mode=$3; shift 3
  local cb_pid=""; [[ $name = service-* ]] && cb_pid=$(cat "$work/$name.pid")
  local sets0 reads0 line
  sets0=$(sets); reads0=$(reads)
  line=$(taskset -c 1 "$load" run --dir "$work" --url "$url" --htu https://api.example.com/items \
    --ca "$work/demo-ca.pem" --http "$HTTP" --mode "$mode" --duration "$DURATION" \
    --pids "$envoy_pid${cb_pid:+,$cb_pid}" --label "$name rep $rep" "$@")
  python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["redis_sets"], r["redis_reads"] = int(sys.argv[2]), int(sys.argv[3]); print(json.dumps(r))' \
    "$line" $(($(sets) - ${sets0:-0})) $(($(reads) - ${reads0:-0})) | tee -a "$out"
}

openssl_verify() { # on Envoy's core, between the configurations of a repetition
  local rate
  rate=$(taskset -c 0 openssl speed -seconds 4 ecdsap256 2>/dev/null | awk '/nistp256/ {print $NF}')
  echo "{\"label\": \"openssl speed ecdsap256 (CPU 0) rep $1\", \"verify_per_s\": $rate}" | tee -a "$out"
}

for rep in $(seq 1 "$REPS"); do
  openssl_verify "$rep"
  for name in $CONFIGS; do
    dir=$module_dir config=$name
    if [[ $name = module-*-baseline ]]; then
      dir=${MODULE_BASELINE:?module-*-baseline needs MODULE_BASELINE, the directory of another build\'s libcertbound_envoy.so}
      config=${name%-baseline}
    fi
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$dir taskset -c 0 "$envoy" -c "$work/$config.envoy.yaml" \
      --concurrency 1 --disable-hot-restart --log-level error >"$work/envoy.log" 2>&1 &
    envoy_pid=$!
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && break; sleep 0.1; done
    # Correct first: fresh proofs pass (and, with Redis, are recorded there: Redis' count of
    # SET calls, since keys alone drop as older proofs expire).
    before=$(sets)
    check=$(taskset -c 1 "$load" run --dir "$work" --url "$url" --htu https://api.example.com/items \
      --ca "$work/demo-ca.pem" --http "$HTTP" --mode rate --rate 50 --duration 1 --warmup 0)
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["ok"] == 50 and not r["other"], r' "$check" \
      || { echo "$name is not correct: $check"; tail -20 "$work/envoy.log"; exit 1; }
    after=$(sets)
    if [[ $name = *-redis* ]] && [ $((${after:-0} - ${before:-0})) -lt 50 ]; then
      echo "$name did not record its proofs in Redis (SET calls $before -> $after)"; exit 1
    fi
    echo "correct: $name (50 fresh proofs allowed; Redis SET calls $before -> $after)"
    run "$name" "$rep" closed --concurrency "$CONC"
    run "$name" "$rep" rate --rate "$RATE"
    kill "$envoy_pid"; wait "$envoy_pid" 2>/dev/null || true
    envoy_pid=""
  done
done

python3 - "$out" "${TARGET:-0.85}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
target = float(sys.argv[2])
openssl = [r for r in rows if "verify_per_s" in r]
rows = [r for r in rows if "verify_per_s" not in r]
print(f"\nresults: {sys.argv[1]}\n")
med = lambda xs: round(statistics.median(xs), 2) if xs else None
show = lambda x: "-" if x is None else x
thread = lambda r, name, key="first_pid_threads_cpu_us_per_req": r.get(key, {}).get(name)
batch = lambda r: r["redis_sets"] / r["redis_reads"] if r.get("redis_reads") else None
print("| config | closed loop req/s | Envoy CPU-µs/req (closed) | of which worker / certbound-redis | certbound-redis switches/req (vol / invol) | SETs per Redis read (closed ; rate) | certbound CPU-µs/req (closed) | p50 / p99 ms at fixed rate | Envoy CPU-µs/req at fixed rate | non-200 |")
print("|---|---|---|---|---|---|---|---|---|---|")
names = list(dict.fromkeys(r["label"].split(" rep ")[0] for r in rows))
runs = lambda name, mode: [r for r in rows if r["label"].startswith(name + " rep ") and r["mode"] == mode]
for name in names:
    closed, fixed = runs(name, "closed"), runs(name, "rate")
    rps = " / ".join(str(int(r["rps"])) for r in closed)
    envoy = med([r["cpu_us_per_req"][0] for r in closed])
    worker = med([x for r in closed if (x := thread(r, "wrk:worker_0")) is not None])
    redis = med([x for r in closed if (x := thread(r, "certbound-redis")) is not None])
    sw = [x for r in closed if (x := thread(r, "certbound-redis", "first_pid_threads_switches_per_req"))]
    switches = f"{med([v for v, _ in sw])} / {med([i for _, i in sw])}" if sw else "-"
    batches = " ; ".join(str(show(med([b for r in rs if (b := batch(r))]))) for rs in (closed, fixed)) if "-redis" in name else "-"
    cb = med([r["cpu_us_per_req"][1] for r in closed if len(r["cpu_us_per_req"]) > 1])
    lat = " ; ".join(f'{r["p50_ms"]} / {r["p99_ms"]}' for r in fixed)
    envoy_rate = " ; ".join(str(r["cpu_us_per_req"][0]) for r in fixed)
    bad = sum(sum(r["other"].values()) for r in closed + fixed)
    print(f"| {name} | {rps} | {show(envoy)} | {show(worker)} / {show(redis)} | {switches} | {batches} | {show(cb)} | {lat} | {envoy_rate} | {bad} |")
# The module's DPoP rate against openssl's verify, per repetition: Envoy CPU-µs that module-memory
# adds per request over none (closed loop; the fixed rate's in brackets), against openssl's µs per
# verify measured on the same core in the same repetition.
def envoy_us(name, rep, mode):
    found = [r["cpu_us_per_req"][0] for r in rows if r["label"] == f"{name} rep {rep}" and r["mode"] == mode]
    return found[0] if found else None
ratios, parts = [], []
for rep, o in enumerate(openssl, start=1):
    verify_us = 1e6 / o["verify_per_s"]
    closed = [envoy_us(n, rep, "closed") for n in ("module-memory", "none")]
    fixed = [envoy_us(n, rep, "rate") for n in ("module-memory", "none")]
    if None in closed:
        continue
    added = closed[0] - closed[1]
    ratios.append(verify_us / added)
    extra = f" [{verify_us / (fixed[0] - fixed[1]):.2f}x at {fixed[0] - fixed[1]:.1f}]" if None not in fixed else ""
    parts.append(f"{verify_us / added:.2f}x: +{added:.1f} µs vs {verify_us:.1f} µs{extra}")
if ratios:
    median = statistics.median(ratios)
    print(f"\nDPoP through the module (replay in memory): openssl µs per ES256 verify / Envoy CPU-µs added "
          f"per request over no auth: {median:.2f}x (reps: {'; '.join(parts)}; target >= {target}): "
          f"{'met' if median >= target else 'not met'}")

# The target (issue 30): the module with Redis at most 1.15x the in-memory store's Envoy CPU per
# request (closed loop), and its p99 at the fixed rate within +0.15 ms of it: each repetition's
# pair (measured one after the other), then the median of the pairs.
by_rep = lambda name, mode: {r["label"].split(" rep ")[1]: r for r in runs(name, mode)}
verdict = None
for redis in [n for n in ("module-redis-baseline", "module-redis") if n in names and "module-memory" in names]:
    mem_c, red_c = by_rep("module-memory", "closed"), by_rep(redis, "closed")
    mem_r, red_r = by_rep("module-memory", "rate"), by_rep(redis, "rate")
    ratios = [red_c[k]["cpu_us_per_req"][0] / mem_c[k]["cpu_us_per_req"][0] for k in mem_c if k in red_c]
    p99 = [red_r[k]["p99_ms"] - mem_r[k]["p99_ms"] for k in mem_r if k in red_r]
    p50 = [red_r[k]["p50_ms"] - mem_r[k]["p50_ms"] for k in mem_r if k in red_r]
    ratio, added = med(ratios), med(p99)
    print(f"\n{redis} / module-memory, Envoy CPU per request (closed loop), per repetition: "
          + " ".join(f"{x:.2f}x" for x in ratios) + f"; median {ratio}x (target <= 1.15x)")
    print(f"{redis} - module-memory, p99 at the fixed rate, per repetition: "
          + " ".join(f"{x:+.3f}" for x in p99) + f" ms; median {added:+.3f} ms (target <= +0.15 ms)")
    # The p50 too: on a shared machine the p99 is other tenants' scheduling more than ours.
    print(f"{redis} - module-memory, p50 at the fixed rate, per repetition: "
          + " ".join(f"{x:+.3f}" for x in p50) + f" ms; median {med(p50):+.3f} ms")
    verdict = ratio is not None and added is not None and ratio <= 1.15 and added <= 0.15
if verdict is not None:
    print(f"target (module with DPoP on Redis: <= 1.15x Envoy CPU per request, p99 within +0.15 ms): {'met' if verdict else 'not met'}")
PY
