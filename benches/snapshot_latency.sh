#!/bin/bash
# What a snapshot written while serving does to latency, on the real binaries.
#
# A fresh switch (on a copy of the e2e bench's cards) and issuer simulator; 600,000
# closed-loop approvals to fill the ledger; then 10 s of open loop at 10,000/s, during
# which the snapshot threshold is crossed (about 655,000 transactions to write) when
# SNAP is 1301000, and never when it is 0. Prints the open loop's latency and the
# snapshot's log line.
#
#   E2E_PREPARE_ONLY=/tmp/e2e-hand cargo bench --bench e2e     # once: cards and traffic
#   benches/snapshot_latency.sh target/release/vpan 1301000 /tmp [/tmp/e2e-hand]
#
# Ports 18600-18603 on 127.0.0.1 must be free. DATA_PARENT picks the disk under test
# (/dev/shm for none).
set -euo pipefail
BIN=$(realpath "$1"); SNAP=$2; PARENT=${3:-/tmp}; PREP=${4:-/tmp/e2e-hand}
D=$(mktemp -d -p "$PARENT" vpan-snaplat.XXXX)
source "$(dirname "$0")/common/rig.sh"
trap 'stop_rig; rm -rf "$D"' EXIT
VPAN_STORE_SNAPSHOT_EVERY_RECORDS="$SNAP" start_rig "$BIN" "$PREP" "$D" 18600
load() { "$BIN" loadgen --target 127.0.0.1:18601 --traffic "$PREP/traffic.jsonl" --json "$@" 2>/dev/null; }
load --connections 4 --in-flight 64 --count 600000 > /dev/null
load --connections 4 --in-flight 512 --rate 10000 --duration 10s > "$D/open.json"
kill $SW; wait $SW || true
python3 - "$D" <<'PY'
import json, re, sys
d = sys.argv[1]
o = json.load(open(d + "/open.json"))
snap = [re.sub(r"\x1b\[[0-9;]*m", "", l).split("snapshot written")[1].strip()
        for l in open(d + "/serve.log") if "snapshot written" in l]
l = o["latency_us"]
print(f"open loop p50 {l['p50']} us  p99 {l['p99']} us  max {l['max']} us  "
      f"answered {o['answered']}  snapshot: {snap[0] if snap else 'none'}")
PY
