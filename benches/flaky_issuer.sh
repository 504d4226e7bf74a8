#!/bin/bash
# The issuer link against a host that drops connections now and then under load: a
# simulator dropping one connection per thousand requests (and timing out 2 % of them), a
# switch with the default issuer settings, and loadgen's open loop at RATE/s for SECS s on
# the e2e bench's cards. Prints the answers by response code: what is not 00 is 91, the
# simulator's own timeouts (about 2 %) and whatever the link's redials cost.
#
#   E2E_PREPARE_ONLY=/tmp/e2e-hand cargo bench --bench e2e     # once: cards and traffic
#   benches/flaky_issuer.sh target/release/vpan [RATE] [SECS] [PREP]
set -euo pipefail
BIN=$(realpath "$1"); RATE=${2:-2000}; SECS=${3:-20}; PREP=${4:-/tmp/e2e-hand}
[ -f "$PREP/traffic.jsonl" ] || { echo "no $PREP/traffic.jsonl: run E2E_PREPARE_ONLY=$PREP cargo bench --bench e2e first" >&2; exit 2; }
D=$(mktemp -d)
SIM= SW=
trap 'kill $SW $SIM 2>/dev/null || true; wait $SW $SIM 2>/dev/null || true; rm -rf "$D"' EXIT
cp -r "$PREP/data" "$D/data"
"$BIN" issuer-sim --listen 127.0.0.1:18700 --seed 5 --timeout-share 0.02 --drop-share 0.001 \
    --latency-ms 2 > "$D/sim.log" 2>&1 & SIM=$!
sleep 0.5
VPAN_NETWORK_LISTEN=127.0.0.1:18701 VPAN_METRICS_LISTEN=127.0.0.1:18702 \
VPAN_API_LISTEN=127.0.0.1:18703 VPAN_ISSUER_CONNECT=127.0.0.1:18700 \
VPAN_STORE_DATA_DIR="$D/data" "$BIN" serve > "$D/serve.log" 2>&1 & SW=$!
for _ in $(seq 100); do grep -qs "issuer link up" "$D/serve.log" && break; sleep 0.2; done
"$BIN" loadgen --target 127.0.0.1:18701 --traffic "$PREP/traffic.jsonl" --connections 4 \
    --in-flight 64 --rate "$RATE" --duration "${SECS}s" --json 2>/dev/null |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print("sent", d["sent"], "answered by code", d["response_codes"])'
