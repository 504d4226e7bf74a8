#!/bin/bash
# What one request costs the process in the middle of the link, user and kernel apart, with
# the system calls and context switches behind the kernel's share: the do-nothing framing
# proxy and the switch side by side, on the real binaries, at one open-loop rate (or closed
# loop).
#
# One issuer simulator, one switch (on a copy of the e2e bench's cards) and one framing
# proxy (the e2e bench's, `benches/common/framing_proxy.rs`); then three SECONDS-long runs
# of `vpan loadgen` (4 connections, 64 in flight): through the proxy, through the switch on
# cards it does not hold (passthrough: no card, no journal), and through the switch on
# virtual-card approvals (journal on). `perf stat` counts the middle process's system calls
# and context switches over each run (kernel tracepoints: needs perf, and root, as the
# switch marks itself not dumpable); its user and system time come from /proc.
#
#   E2E_PREPARE_ONLY=/tmp/e2e-hand cargo bench --bench e2e     # once: cards, traffic, proxy
#   benches/cost_per_request.sh target/release/vpan 10000 6 /tmp [/tmp/e2e-hand]
#   benches/cost_per_request.sh target/release/vpan closed 6 /tmp
#
# RATE is requests a second, or `closed` for the closed loop. Ports 18620-18623 on
# 127.0.0.1 must be free. DATA_PARENT (the fourth argument) picks the disk under test.
# PROXY_BIN (default: the newest e2e bench binary under target/release/deps) is the bench
# binary, which runs as the proxy when E2E_PROXY_UPSTREAM is set.
set -euo pipefail
BIN=$(realpath "$1"); RATE=$2; SECS=$3; PARENT=${4:-/tmp}; PREP=${5:-/tmp/e2e-hand}
HERE=$(dirname "$0")
PROXY_BIN=${PROXY_BIN:-$(ls -t "$HERE"/../target/release/deps/e2e-* 2>/dev/null | grep -v '\.d$' | head -1)}
[ -x "$PROXY_BIN" ] || { echo "no e2e bench binary: run E2E_PREPARE_ONLY=$PREP cargo bench --bench e2e first" >&2; exit 2; }
command -v perf > /dev/null || { echo "needs perf (linux-perf)" >&2; exit 2; }
D=$(mktemp -d -p "$PARENT" vpan-cost.XXXX)
source "$HERE/common/rig.sh"
PROXY=
trap 'kill $PROXY 2>/dev/null || true; stop_rig; rm -rf "$D"' EXIT
start_rig "$BIN" "$PREP" "$D" 18620
E2E_PROXY_UPSTREAM=127.0.0.1:18620 "$PROXY_BIN" 2> "$D/proxy.log" & PROXY=$!
for _ in $(seq 50); do grep -qs 'listening on ' "$D/proxy.log" && break; sleep 0.1; done
PROXY_ADDR=$(grep -o 'listening on [0-9.:]*' "$D/proxy.log" | awk '{print $3}')

if [ "$RATE" = closed ]; then PACE=(); else PACE=(--rate "$RATE"); fi
CALLS=(writev recvfrom epoll_wait futex write pwrite64 fdatasync)
EVENTS=context-switches,raw_syscalls:sys_enter$(printf ',syscalls:sys_enter_%s' "${CALLS[@]}")
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }   # user, system, in clock ticks

run() { # name pid target traffic
    local t0 t1
    t0=$(ticks "$2")
    perf stat -x, -e "$EVENTS" -p "$2" -o "$D/perf.csv" & local perf=$!
    if ! "$BIN" loadgen --target "$3" --traffic "$4" --connections 4 --in-flight 64 \
        "${PACE[@]}" --duration "${SECS}s" --json > "$D/run.json" 2> "$D/loadgen.log"; then
        echo "loadgen failed on $1:" >&2; tail -5 "$D/loadgen.log" >&2; exit 1
    fi
    t1=$(ticks "$2")
    kill -INT $perf; wait $perf || true
    python3 - "$1" "$D/run.json" "$D/perf.csv" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
name, run, csv, t0, t1, hz = sys.argv[1:]
o = json.load(open(run)); n = o["answered"]
(u0, s0), (u1, s1) = map(int, t0.split()), map(int, t1.split())
per = lambda ticks: ticks / float(hz) / n * 1e6
counts = {}
for line in open(csv):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        counts[f[2].split(":")[-1].replace("sys_enter_", "") or f[2]] = float(f[0])
calls = " ".join(f"{k} {v / n:.2f}" for k, v in counts.items()
                 if k not in ("context-switches", "sys_enter") and v)
print(f"{name:<12} {o['throughput_per_s']:>9.0f}/s  p50 {o['latency_us']['p50']:>5} us | per request: "
      f"CPU {per(u1 - u0 + s1 - s0):5.1f} us (user {per(u1 - u0):4.1f}, system {per(s1 - s0):4.1f}), "
      f"context switches {counts.get('context-switches', 0) / n:.2f}, "
      f"system calls {counts.get('sys_enter', 0) / n:.2f}: {calls}")
PY
}
run proxy "$PROXY" "$PROXY_ADDR" "$PREP/passthrough.jsonl"
run passthrough "$SW" 127.0.0.1:18621 "$PREP/passthrough.jsonl"
run approvals "$SW" 127.0.0.1:18621 "$PREP/traffic.jsonl"
