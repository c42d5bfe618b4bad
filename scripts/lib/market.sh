# A market on loopback for scripts: sourced, not run. Needs $bin (the
# directory of the cpushare binaries) and $work (a scratch directory);
# every process it starts is added to the array `pids`.

# Starts a broker on SQLite under $work/broker, on a free loopback port.
market_broker() {
    RUST_LOG=warn "$bin/cpushare-broker" --data "$work/broker" serve --listen 127.0.0.1:0 \
        >"$work/broker.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [[ -s "$work/broker/endpoints.json" ]] && break; sleep 0.1; done
}

# market_seller NAME PRICE [RUN-ARGS...]: enrols a seller with the broker and
# runs it in the background (home $work/NAME, log $work/NAME.log).
market_seller() {
    local name=$1 price=$2
    shift 2
    local token
    token=$("$bin/cpushare-broker" --data "$work/broker" account add "$name" --role seller 2>/dev/null | tail -n 1)
    "$bin/cpushare-seller" --home "$work/$name" enroll "$token"
    RUST_LOG=warn "$bin/cpushare-seller" --home "$work/$name" run --price "$price" "$@" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
}

# market_wait_offering NAME: waits until the seller offers its machine.
market_wait_offering() {
    for _ in $(seq 100); do grep -q offering "$work/$1.log" && break; sleep 0.1; done
}

# market_buyer NAME CREDITS: a buyer account with credits, logged in at
# home $work/NAME.
market_buyer() {
    local token
    token=$("$bin/cpushare-broker" --data "$work/broker" account add "$1" --role buyer 2>/dev/null | tail -n 1)
    "$bin/cpushare-broker" --data "$work/broker" credit "$1" "$2"
    "$bin/cpushare" --home "$work/$1" login "$token"
}

# Stops what the market started.
market_stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
