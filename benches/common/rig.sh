# Sourced by the bench scripts: an issuer simulator and a switch on a copy of the e2e
# bench's cards (`E2E_PREPARE_ONLY=DIR cargo bench --bench e2e` writes them), on fixed
# loopback ports so that a script can name them.

SIM= SW=

# start_rig BIN PREP D BASE: copies PREP/data into D/data, starts the simulator on port
# BASE and the switch toward it (network BASE+1, metrics BASE+2, API BASE+3), logs in D,
# and returns once the issuer link is up (exits with the switch's log if it never comes).
# VPAN_* settings in the caller's environment reach the switch. Sets SIM and SW.
start_rig() {
    local bin=$1 prep=$2 d=$3 base=$4
    cp -r "$prep/data" "$d/data"
    "$bin" issuer-sim --listen "127.0.0.1:$base" > "$d/sim.log" 2>&1 & SIM=$!
    sleep 0.5
    VPAN_NETWORK_LISTEN="127.0.0.1:$((base + 1))" VPAN_METRICS_LISTEN="127.0.0.1:$((base + 2))" \
    VPAN_API_LISTEN="127.0.0.1:$((base + 3))" VPAN_ISSUER_CONNECT="127.0.0.1:$base" \
    VPAN_STORE_DATA_DIR="$d/data" VPAN_NETWORK_MAX_IN_FLIGHT=4096 \
        "$bin" serve > "$d/serve.log" 2>&1 & SW=$!
    for _ in $(seq 100); do grep -qs "issuer link up" "$d/serve.log" && return; sleep 0.2; done
    echo "the switch did not come up:" >&2; cat "$d/serve.log" >&2; exit 1
}

# stop_rig: stops both and waits for them, so that their data directory can go.
stop_rig() {
    kill $SW $SIM 2>/dev/null || true
    wait $SW $SIM 2>/dev/null || true
}
