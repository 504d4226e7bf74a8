#!/bin/bash
# Where the switch's added latency goes at one open-loop rate: the three paths side by side,
# on the real binaries, with the CPU each process spent.
#
# One issuer simulator and one switch (on a copy of the e2e bench's cards), then ROUNDS
# rounds of three SECONDS-long open loops at RATE requests/s, in turn: loadgen straight to
# the simulator (direct), through the switch on cards it does not hold (passthrough: no
# card, no journal), and through the switch on virtual-card approvals (journal on). Each
# line gives loadgen's latency and the share of one core the switch, the simulator and
# loadgen each used over the run's SECONDS (user and system time; the machine's own idle
# counters lag too much to read over a few seconds).
#
#   E2E_PREPARE_ONLY=/tmp/e2e-hand cargo bench --bench e2e     # once: cards and traffic
#   benches/paths_at_rate.sh target/release/vpan 10000 4 2 /tmp [/tmp/e2e-hand]
#
# Ports 18610-18613 on 127.0.0.1 must be free. DATA_PARENT (the fifth argument) picks the
# disk under test (/dev/shm for none).
set -euo pipefail
BIN=$(realpath "$1"); RATE=$2; SECS=$3; ROUNDS=$4; PARENT=${5:-/tmp}; PREP=${6:-/tmp/e2e-hand}
D=$(mktemp -d -p "$PARENT" vpan-paths.XXXX)
source "$(dirname "$0")/common/rig.sh"
trap 'stop_rig; rm -rf "$D"' EXIT
start_rig "$BIN" "$PREP" "$D" 18610

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # user + system, in clock ticks
run() { # name port traffic
    sw0=$(ticks $SW); sim0=$(ticks $SIM)
    if ! /usr/bin/time -f "%U %S" -o "$D/loadgen.cpu" "$BIN" loadgen --target "127.0.0.1:$2" \
        --traffic "$3" --connections 4 --in-flight 64 --rate "$RATE" --duration "${SECS}s" \
        --json > "$D/run.json" 2> "$D/loadgen.log"; then
        echo "loadgen failed on $1:" >&2; tail -5 "$D/loadgen.log" >&2; exit 1
    fi
    sw1=$(ticks $SW); sim1=$(ticks $SIM)
    python3 - "$D/run.json" "$1" \
        "$(( (sw1 - sw0) * 100 / $(getconf CLK_TCK) / SECS ))" \
        "$(( (sim1 - sim0) * 100 / $(getconf CLK_TCK) / SECS ))" "$(tail -1 "$D/loadgen.cpu")" \
        "$SECS" <<'PY'
import json, sys
o = json.load(open(sys.argv[1])); l = o["latency_us"]
name, switch, sim, loadgen_times, secs = sys.argv[2:]
loadgen = f"{100 * sum(map(float, loadgen_times.split())) / float(secs):.0f}%"
print(f"{name:<12} p50 {l['p50']:>6} us  p90 {l['p90']:>6} us  p99 {l['p99']:>6} us  "
      f"| of one core: switch {switch:>3}%  sim {sim:>3}%  loadgen {loadgen:>4}")
PY
}
for _ in $(seq "$ROUNDS"); do
    run direct 18610 "$PREP/traffic.jsonl"
    run passthrough 18611 "$PREP/passthrough.jsonl"
    run approvals 18611 "$PREP/traffic.jsonl"
done
