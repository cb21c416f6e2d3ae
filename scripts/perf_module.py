#!/usr/bin/env python3
"""Where Envoy's CPU goes with the dynamic module, from `perf report --children --sort dso,symbol`
on stdin (bench-envoy.sh PROFILE=...): each callback and hook of the module's ABI with its share of
Envoy's samples, converted to CPU-µs per request with the median Envoy CPU-µs per request of the
same configuration's measured closed-loop runs (bench-envoy.sh's JSONL).

Usage: perf report ... | perf_module.py CONFIG PROTOCOL RESULTS.jsonl
"""
import json
import re
import statistics
import sys

config, protocol, results = sys.argv[1:]
runs = [json.loads(line) for line in open(results) if line.strip()]
cpu = [r["envoy_cpu_us"] for r in runs
       if r["config"] == config and r["protocol"] == protocol and r["kind"] == "throughput"]
per_request = statistics.median(cpu) if cpu else None

line_re = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+(\S+)\s+\[.\]\s+(\S+)")
rows = []
dso_self = {}
for line in sys.stdin:
    m = line_re.match(line)
    if not m:
        continue
    children, self_, dso, symbol = float(m[1]), float(m[2]), m[3], m[4]
    dso_self[dso] = dso_self.get(dso, 0.0) + self_
    rows.append((children, self_, dso, symbol))


def us(percent):
    return f"{percent / 100 * per_request:.2f}" if per_request is not None else "-"


print(f"# Where Envoy's CPU goes: {config}, {protocol}\n")
print(f"Envoy CPU-µs per request (median of the measured closed-loop runs): "
      f"{per_request if per_request is not None else 'unknown'}\n")
print("Children: the function and everything it calls (for a callback: Envoy's work for that "
      "call); self: the function's own instructions. Shares of all of Envoy's samples.\n")
print("| function | children % | self % | children µs/request |")
print("|---|---:|---:|---:|")
for children, self_, dso, symbol in sorted(rows, reverse=True):
    if symbol.startswith("envoy_dynamic_module_"):
        print(f"| `{symbol}` | {children:.2f} | {self_:.2f} | {us(children)} |")
print("\n| shared object (self) | self % | µs/request |")
print("|---|---:|---:|")
for dso, self_ in sorted(dso_self.items(), key=lambda kv: -kv[1])[:8]:
    print(f"| `{dso}` | {self_:.2f} | {us(self_)} |")
