#!/bin/bash
# The switch's own instructions per approval, counted by callgrind: the same figure for the
# same binary and traffic whatever else this machine is doing (two runs of one build agree
# within 0.1 %), so builds can be compared where wall-clock runs drift by tens of percent.
#
# For each binary: a fresh switch (on a copy of the e2e bench's cards) under
# `valgrind --tool=callgrind`, a fresh issuer simulator (not counted), and COUNT closed-loop
# approvals (4 connections x 64 in flight); then the same with one approval. The difference
# over COUNT - 1 is what an approval costs in user space: every thread of the switch (the
# connection tasks, the issuer link, the journal's writer), without the start, and without
# the kernel's share (system calls, TCP, fdatasync), which callgrind does not see.
#
#   E2E_PREPARE_ONLY=/tmp/e2e-hand cargo bench --bench e2e     # once: cards and traffic
#   benches/instructions.sh 30000 target/release/vpan [/tmp/other-build/vpan ...]
#
# PREP (default /tmp/e2e-hand) is where the cards and traffic are; TRAFFIC (default
# $PREP/traffic.jsonl) the traffic: TRAFFIC=$PREP/passthrough.jsonl counts the forwarding
# path alone (every answer is still an approval, from the issuer). Needs valgrind. About
# 20 s per binary at COUNT 30000.
set -euo pipefail
COUNT=$1; shift
PREP=${PREP:-/tmp/e2e-hand}
TRAFFIC=${TRAFFIC:-$PREP/traffic.jsonl}
[ -f "$TRAFFIC" ] || { echo "no $TRAFFIC: run E2E_PREPARE_ONLY=$PREP cargo bench --bench e2e first" >&2; exit 2; }

# Instructions the switch ran in a life with N approvals.
count() {
  local bin=$1 n=$2 d sim sw addr simaddr
  d=$(mktemp -d)
  cp -r "$PREP/data" "$d/data"
  "$bin" issuer-sim --listen 127.0.0.1:0 2> "$d/sim.log" & sim=$!
  # -s: the log may not exist yet when the first look comes.
  for _ in $(seq 50); do grep -qs 'listening on ' "$d/sim.log" && break; sleep 0.1; done
  simaddr=$(grep -o 'listening on [0-9.:]*' "$d/sim.log" | awk '{print $3}')
  VPAN_NETWORK_LISTEN=127.0.0.1:0 VPAN_METRICS_LISTEN=127.0.0.1:0 VPAN_API_LISTEN=127.0.0.1:0 \
  VPAN_ISSUER_CONNECT="$simaddr" VPAN_STORE_DATA_DIR="$d/data" VPAN_NETWORK_MAX_IN_FLIGHT=4096 \
  RUST_LOG=warn,vpan::app=info \
    valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" "$bin" serve 2> "$d/serve.log" & sw=$!
  for _ in $(seq 600); do grep -qs 'issuer link up' "$d/serve.log" && break; sleep 0.1; done
  addr=$(grep 'network listener bound' "$d/serve.log" | grep -o 'addr=[0-9.:]*' | cut -d= -f2)
  "$bin" loadgen --target "$addr" --traffic "$TRAFFIC" --connections 4 \
    --in-flight 64 --count "$n" --timeout-ms 60000 --json 2>/dev/null > "$d/load.json"
  kill -INT $sw; wait $sw || true
  kill $sim; wait $sim 2>/dev/null || true
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["answered"]==d["sent"]==int(sys.argv[2]) and list(d["response_codes"])==["00"], d' \
    "$d/load.json" "$n" >&2 || { echo "$bin: not every request approved" >&2; exit 1; }
  callgrind_annotate "$d/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'
  rm -rf "$d"
}

first=""
for bin in "$@"; do
  many=$(count "$bin" "$COUNT")
  one=$(count "$bin" 1)
  per=$(( (many - one) / (COUNT - 1) ))
  if [ -z "$first" ]; then
    first=$per
    printf '%s: %d instructions per approval\n' "$bin" "$per"
  else
    printf '%s: %d instructions per approval (%.3fx the first)\n' "$bin" "$per" \
      "$(echo "$per / $first" | bc -l)"
  fi
done
