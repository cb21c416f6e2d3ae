"""Sums `perf report --no-children --sort comm,dso,sym` self time of certbound's threads by
component. Input on stdin; argv: the loadgen JSON result file, the cache setting."""

import json
import re
import sys

# First match wins; checked against "dso symbol".
COMPONENTS = [
    ("kernel: TCP send (loopback delivery included)", r"\[kernel|\[k\]", r"tcp_(send|write|push|transmit)|__tcp_transmit|ip_|dev_|loopback|netif|__netif|skb|net_rx|do_softirq|__do_softirq|napi"),
    ("kernel: TCP receive", r"\[kernel|\[k\]", r"tcp_(v4_rcv|rcv|recv|ack|data)|sock_recv|recvfrom|__skb_datagram|copy_to"),
    ("kernel: scheduling, epoll, other syscalls", r"\[kernel|\[k\]", r".*"),
    ("allocator (malloc/free)", r"libc", r"malloc|free|_int_|realloc|calloc|tcache|unlink_chunk"),
    ("memcpy/memmove", r"libc", r"mem(cpy|move|set|cmp)"),
    ("libc, other", r"libc", r".*"),
    ("logging (tracing formatting)", r"", r"tracing_subscriber|tracing_appender|tracing_core|nu_ansi_term|core::fmt|crossbeam"),
    ("decision: signature (aws-lc)", r"", r"aws_lc|nistz256|p256_|bn_mul|bn_sqr|bn_mod|ecdsa|ECDSA|EVP_|BN_|ec_GFp|ec_point|ec_scalar|fiat_"),
    ("decision: certbound logic, JSON, X.509, SHA-256", r"", r"certbound::(authz|keys|check|cache)|serde_json|x509|asn1|nom::|sha2|base64|percent_encoding|subtle|jsonwebtoken|serde::"),
    ("protobuf (prost) and the Check handler", r"", r"prost|certbound::grpc|certbound::metrics|prometheus"),
    ("HTTP/2 + gRPC stack (h2, hyper, tonic, tower, http)", r"", r"h2::|hyper|tonic|tower|http::|http_body|bytes::|axum|matchit"),
    ("tokio runtime", r"", r"tokio|mio::|parking_lot|std::sys|futures"),
    ("other", r"", r".*"),
]

LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+(?:\[[.k]\]\s+)?(.*)$")


def main() -> None:
    result = json.load(open(sys.argv[1]))
    cache = sys.argv[2]
    totals = {name: 0.0 for name, _, _ in COMPONENTS}
    all_samples = 0.0
    symbols = []
    for raw in sys.stdin:
        m = LINE.match(raw)
        if not m:
            continue
        pct, comm, dso, sym = float(m[1]), m[2], m[3], m[4]
        if comm in ("loadgen", "taskset", "getconf", "perf", "perf-exec"):
            continue
        all_samples += pct
        kernel = "[k]" in raw or dso.startswith("[kernel")
        key = f"{dso} {sym}"
        symbols.append((pct, comm, sym.strip()))
        for name, dso_re, sym_re in COMPONENTS:
            if name.startswith("kernel") != kernel:
                continue
            if dso_re and not kernel and not re.search(dso_re, key):
                continue
            if re.search(sym_re, key):
                totals[name] += pct
                break
    us = result["cpu_us_per_check"]
    print(f"# Profile of a Check, cache {cache}\n")
    print(
        f"loadgen: {result['checks_per_s']:.0f} checks/s, {us} certbound CPU-µs per check "
        f"(closed loop, 64 in flight, one token, certbound on one core).\n"
    )
    print("| component | share of certbound's CPU | ≈ µs per check |")
    print("|---|---|---|")
    for name, _, _ in COMPONENTS:
        share = totals[name] / all_samples if all_samples else 0.0
        if share >= 0.005:
            print(f"| {name} | {share * 100:.1f} % | {share * us:.1f} |")
    print("\nHottest symbols (self time):\n")
    print("| share | thread | symbol |")
    print("|---|---|---|")
    for pct, comm, sym in sorted(symbols, reverse=True)[:15]:
        short = sym if len(sym) <= 110 else sym[:107] + "..."
        short = short.replace("|", "\\|")
        print(f"| {pct / all_samples * 100:.1f} % | {comm} | `{short}` |")


if __name__ == "__main__":
    main()
