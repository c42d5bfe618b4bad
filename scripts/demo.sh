#!/usr/bin/env bash
# The cpushare demo on one machine, from nothing: installs what is missing,
# builds, then starts a broker (SQLite), two sellers and a buyer on
# loopback, and runs WebAssembly jobs through the market, showing their
# output and their bills. Everything lives in a temp dir, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

scripts/install-deps.sh
echo "== building (first time: a few minutes)"
cargo build --workspace --bins -q
bin=${CARGO_TARGET_DIR:-$repo/target}/debug
work=$(mktemp -d /tmp/cpushare-demo.XXXXXX)
pids=()
# shellcheck source=scripts/lib/market.sh
source scripts/lib/market.sh
cleanup() {
    market_stop
    rm -rf "$work"
}
trap cleanup EXIT
bash guest-images/wasm/build.sh "$work/wasm" >/dev/null
# A live ISO for the VM lease: the freestanding test guest (its work runs in
# ring 3, so it also runs fast where /dev/kvm is a software hypervisor).
bash guest-images/test-guest/build.sh "$work/guest" >/dev/null
bash guest-images/test-guest/mkiso.sh "$work/guest/guest.elf" "$work/guest.iso" "hello blk smp 2 exit 0" >/dev/null 2>&1

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
broker() { "$bin/cpushare-broker" --data "$work/broker" "$@"; }
buyer() { "$bin/cpushare" --home "$work/alice" "$@"; }

say "cpushare-broker serve --listen 127.0.0.1:0 &"
market_broker
cat "$work/broker.log"

for s in seller-a:0.002 seller-b:0.001; do
    name=${s%%:*} price=${s##*:}
    say "cpushare-broker account add $name --role seller"
    say "cpushare-seller enroll TOKEN && cpushare-seller run --cpus 2 --mem 1G --price $price --kinds wasm,vm &"
    # Both offer wasm and vm leases; --allow-software-kvm lets a host whose
    # /dev/kvm is a software hypervisor offer VMs too (for this demo's guest).
    market_seller "$name" "$price" --cpus 2 --mem 1G --kinds wasm,vm --allow-software-kvm
done
for name in seller-a seller-b; do
    market_wait_offering "$name"
    cat "$work/$name.log"
done

say "cpushare-broker account add alice --role buyer && cpushare-broker credit alice 5"
say "cpushare login TOKEN"
market_buyer alice 5
say "cpushare book"
buyer book
say "cpushare run hello.wasm --env GREETING=hi -- from the demo"
buyer run "$work/wasm/hello.wasm" --env GREETING=hi -- from the demo
say "cpushare run primes.wasm --cpus 1 --minutes 1 --max-price 0.005 -- 2000000"
buyer run "$work/wasm/primes.wasm" --cpus 1 --minutes 1 --max-price 0.005 -- 2000000
say "cpushare image inspect guest.iso   (what a seller would boot)"
buyer image inspect "$work/guest.iso"
say "cpushare run guest.iso --cpus 2 --mem 64M   (a VM lease: the guest's console is our stdout)"
buyer run "$work/guest.iso" --cpus 2 --mem 64M
say "cpushare run exitcode.wasm -- 3   (the job's exit code becomes ours)"
set +e
buyer run "$work/wasm/exitcode.wasm" -- 3
echo "exit code: $?"
set -e
say "cpushare leases"
buyer leases
say "cpushare balance"
buyer balance
say "cpushare-broker ledger   (every account; the sum is always 0)"
broker ledger
