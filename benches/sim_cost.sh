#!/bin/bash
# The issuer simulator's CPU per answer, for builds side by side: each BIN runs
# `vpan issuer-sim` with the sample accounts and `vpan loadgen` against it (4 connections x
# 32 in flight, closed loop, SECONDS_EACH s), and prints the answers, the throughput and
# the simulator's user + system CPU per answer (from /proc). Run from the repository.
#
#   benches/sim_cost.sh TRAFFIC SECONDS_EACH BIN [BIN ...]
#
# TRAFFIC is a traffic file, or `reversals`: the sample's first purchase followed by a
# reversal without DE 90, 200 times (the simulator looks each reversal's original up under
# three keys; what made it the bottleneck of such traffic before its bookings were indexed).
set -euo pipefail
traffic=$1 seconds=$2
shift 2
made="" sim=""
# Whatever ends the script, no simulator is left behind.
trap '[ -n "$sim" ] && kill $sim 2>/dev/null; [ -n "$made" ] && rm -f "$made"' EXIT
if [ "$traffic" = reversals ]; then
    traffic=$(mktemp --suffix=.jsonl)
    made=$traffic
    python3 - "$traffic" <<'PY'
import json, sys
purchase = next(json.loads(l) for l in open("fixtures/traffic/sample.jsonl")
                if l.startswith("{") and json.loads(l)["fields"]["t"] == "0100")
fields = purchase["fields"]
with open(sys.argv[1], "w") as out:
    for _ in range(200):
        out.write(json.dumps({"fields": fields}) + "\n")
        out.write(json.dumps({"fields": dict(fields, t="0400")}) + "\n")
PY
fi
port=19380
for bin in "$@"; do
    port=$((port + 1))
    "$bin" issuer-sim --listen 127.0.0.1:$port --accounts fixtures/traffic/accounts.json >/dev/null 2>&1 &
    sim=$!
    sleep 0.5
    before=$(awk '{print $14 + $15}' /proc/$sim/stat)
    summary=$("$bin" loadgen --target 127.0.0.1:$port --traffic "$traffic" --connections 4 \
        --in-flight 32 --duration "${seconds}s" --json)
    after=$(awk '{print $14 + $15}' /proc/$sim/stat)
    kill $sim
    wait $sim 2>/dev/null || true
    sim=""
    SUMMARY=$summary python3 -c "
import json, os
o = json.loads(os.environ['SUMMARY'])
ticks = $after - $before
per = ticks / os.sysconf('SC_CLK_TCK') * 1e6 / max(o['answered'], 1)
print(f\"$bin: {o['answered']} answers, {o['throughput_per_s']:.0f}/s, simulator {per:.2f} us of CPU per answer\")"
done
