#!/usr/bin/env bash
# Side-by-side throughput/latency of bare veth, vnet (direct and relayed),
# boringtun and wireguard-go over the same veth pair between two network
# namespaces this script creates (and always deletes). Needs root, iperf3,
# ping, gcc, wg (wireguard-tools), wireguard-go, boringtun-cli, and a
# release build of vnet-node (cargo build --release -p cpushare-vnet).
# It also runs floor_forwarder.c, a plain TUN<->UDP forwarder with no
# crypto: the RTT a userspace tunnel cannot beat here without spinning.
#
# Usage: vnet/bench/compare.sh [seconds-per-run]   (default 5)
# Environment: PING_INTERVAL (seconds between pings, default 0.005);
# PING_COUNT (pings per path, default 200); QUICK=1 measures only the bare
# veth and direct vnet (no relay, no WireGuard); NO_WG=1 skips WireGuard;
# RTT_ONLY=1 skips iperf3.
set -euo pipefail

DUR=${1:-5}
PING_INTERVAL=${PING_INTERVAL:-0.005}
QUICK=${QUICK:-0}
PING_COUNT=${PING_COUNT:-200}
RTT_ONLY=${RTT_ONLY:-0}
NO_WG=${NO_WG:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VNET=${VNET_NODE:-$ROOT/target/release/vnet-node}
BT=${BORINGTUN:-$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")}
P=vb$$
A=${P}a B=${P}b R=${P}r
TMP=$(mktemp -d)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for ns in $A $B $R; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
    sleep 0.2
    for ns in $A $B $R; do ip netns del "$ns" 2>/dev/null || true; done
    rm -f /var/run/wireguard/${P}*.sock
    rm -rf "$TMP"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "compare.sh needs root (namespaces, veth, TUN)" >&2; exit 1; }
NEEDED=(iperf3 jq gcc "$VNET")
[ "$QUICK" = 1 ] || NEEDED+=(wg wireguard-go "$BT")
for t in "${NEEDED[@]}"; do
    command -v "$t" >/dev/null || [ -x "$t" ] || { echo "missing $t" >&2; exit 1; }
done

for ns in $A $B $R; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
# Direct pair A <-> B, and A <-> R <-> B for the relayed run.
ip link add vab netns $A type veth peer name vba netns $B
ip -n $A addr add 10.99.0.1/24 dev vab; ip -n $B addr add 10.99.0.2/24 dev vba
ip link add var netns $A type veth peer name vra netns $R
ip -n $A addr add 10.98.1.1/24 dev var; ip -n $R addr add 10.98.1.2/24 dev vra
ip link add vbr netns $B type veth peer name vrb netns $R
ip -n $B addr add 10.98.2.1/24 dev vbr; ip -n $R addr add 10.98.2.2/24 dev vrb
for l in "$A vab" "$B vba" "$A var" "$R vra" "$B vbr" "$R vrb"; do set -- $l; ip -n "$1" link set "$2" up; done

IPERF_PID=
start_iperf_server() { ip netns exec $B iperf3 -s >/dev/null 2>&1 & IPERF_PID=$!; sleep 0.4; }
stop_iperf_server() { kill "$IPERF_PID" 2>/dev/null || true; wait "$IPERF_PID" 2>/dev/null || true; sleep 0.2; }

tput_gbps() { # dst streams
    ip netns exec $A iperf3 -c "$1" -t "$DUR" -P "$2" -J 2>/dev/null \
        | jq -r '.end.sum_received.bits_per_second / 1e9' 2>/dev/null || echo 0
}
rtt_us() { # dst -> "p50/avg" in microseconds (p50 resists scheduler outliers on a busy box)
    ip netns exec $A ping -c "$PING_COUNT" -i "$PING_INTERVAL" -W 1 "$1" 2>/dev/null | grep -o 'time=[0-9.]*' | cut -d= -f2 | sort -n \
        | awk '{ a[NR] = $1; s += $1 } END { printf "%.0f/%.0f", a[int(NR / 2) + 1] * 1000, s / NR * 1000 }'
}
wait_ping() { for _ in $(seq 1 50); do ip netns exec $A ping -c1 -W1 "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "no path to $1" >&2; return 1; }

declare -A T1 T4 RTT
measure() { # name dst
    wait_ping "$2"
    T1[$1]=0 T4[$1]=0
    if [ "$RTT_ONLY" != 1 ]; then
        start_iperf_server
        T1[$1]=$(tput_gbps "$2" 1)
        T4[$1]=$(tput_gbps "$2" 4)
        stop_iperf_server
    fi
    RTT[$1]=$(rtt_us "$2")
    printf '  %-14s 1 stream %6.2f Gbit/s   4 streams %6.2f Gbit/s   rtt p50/avg %9s us\n' "$1" "${T1[$1]}" "${T4[$1]}" "${RTT[$1]}" >&2
}

echo "measuring ${DUR}s per run..." >&2
measure bare 10.99.0.2

# ---- the floor: a plain forwarder, no crypto, one packet per syscall -------
gcc -O2 -o "$TMP/floor" "$ROOT/vnet/bench/floor_forwarder.c"
ip netns exec $A "$TMP/floor" fl0 51840 10.99.0.2 51840 2>"$TMP/fa.log" & PIDS+=($!)
ip netns exec $B "$TMP/floor" fl0 51840 10.99.0.1 51840 2>"$TMP/fb.log" & PIDS+=($!)
for _ in $(seq 1 50); do ip -n $A link show fl0 >/dev/null 2>&1 && ip -n $B link show fl0 >/dev/null 2>&1 && break; sleep 0.1; done
ip -n $A addr add 10.55.0.1/24 dev fl0; ip -n $A link set fl0 mtu 1420 up
ip -n $B addr add 10.55.0.2/24 dev fl0; ip -n $B link set fl0 mtu 1420 up
measure floor 10.55.0.2
kill "${PIDS[-1]}" "${PIDS[-2]}"; wait "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true; PIDS=(); sleep 0.3

# ---- vnet ----------------------------------------------------------------
KA=$("$VNET" genkey); KB=$("$VNET" genkey); KR=$("$VNET" genkey)
PA=$("$VNET" pubkey "$KA"); PB=$("$VNET" pubkey "$KB"); PR=$("$VNET" pubkey "$KR")
vnet_cfg() { # key listen addr tun relay relay_for_others peers-json
    cat <<JSON
{"private_key":"$1","listen":"$2","address":"$3","tun":"$4","subnet":"10.77.0.0/16",
 "relay":$5,"relay_for_others":$6,"peers":$7,"status_file":"$TMP/$3.status"}
JSON
}
vnet_cfg "$KA" 10.99.0.1:51820 10.77.0.1 vn0 null false \
    "[{\"public_key\":\"$PB\",\"address\":\"10.77.0.2\",\"endpoints\":[\"10.99.0.2:51820\"]}]" > "$TMP/a.json"
vnet_cfg "$KB" 10.99.0.2:51820 10.77.0.2 vn0 null false \
    "[{\"public_key\":\"$PA\",\"address\":\"10.77.0.1\",\"endpoints\":[\"10.99.0.1:51820\"]}]" > "$TMP/b.json"
ip netns exec $A "$VNET" run "$TMP/a.json" 2>"$TMP/a.log" & PIDS+=($!)
ip netns exec $B "$VNET" run "$TMP/b.json" 2>"$TMP/b.log" & PIDS+=($!)
measure vnet 10.77.0.2
kill "${PIDS[-1]}" "${PIDS[-2]}"; wait "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true; PIDS=(); sleep 0.3
if [ "$QUICK" = 1 ]; then
    echo
    echo "quick run: ${DUR}s iperf3 TCP per run, $PING_COUNT pings every ${PING_INTERVAL}s; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
    awk -v r="${RTT[vnet]}" -v br="${RTT[bare]}" -v fr="${RTT[floor]}" -v t1="${T1[vnet]}" -v t4="${T4[vnet]}" \
        'BEGIN { split(r, x, "/"); split(br, y, "/"); split(fr, f, "/"); printf "vnet - bare: %+d us p50, %+d us avg (floor - bare: %+d us p50); vnet %.2f / %.2f Gbit/s (1/4 streams)\n", x[1]-y[1], x[2]-y[2], f[1]-y[1], t1, t4 }'
    exit 0
fi

# vnet relayed: A and B only know each other's addresses on the R links,
# which have no route between them; R relays.
vnet_cfg "$KR" 0.0.0.0:51820 10.77.0.9 vn0 null true \
    "[{\"public_key\":\"$PA\",\"address\":\"10.77.0.1\",\"endpoints\":[\"10.98.1.1:51821\"]},{\"public_key\":\"$PB\",\"address\":\"10.77.0.2\",\"endpoints\":[\"10.98.2.1:51821\"]}]" > "$TMP/r.json"
vnet_cfg "$KA" 10.98.1.1:51821 10.77.0.1 vn1 "\"$PR\"" false \
    "[{\"public_key\":\"$PR\",\"address\":\"10.77.0.9\",\"endpoints\":[\"10.98.1.2:51820\"]},{\"public_key\":\"$PB\",\"address\":\"10.77.0.2\",\"endpoints\":[\"10.98.2.1:51821\"]}]" > "$TMP/a.json"
vnet_cfg "$KB" 10.98.2.1:51821 10.77.0.2 vn1 "\"$PR\"" false \
    "[{\"public_key\":\"$PR\",\"address\":\"10.77.0.9\",\"endpoints\":[\"10.98.2.2:51820\"]},{\"public_key\":\"$PA\",\"address\":\"10.77.0.1\",\"endpoints\":[\"10.98.1.1:51821\"]}]" > "$TMP/b.json"
ip netns exec $R "$VNET" run "$TMP/r.json" 2>"$TMP/r.log" & PIDS+=($!)
ip netns exec $A "$VNET" run "$TMP/a.json" 2>>"$TMP/a.log" & PIDS+=($!)
ip netns exec $B "$VNET" run "$TMP/b.json" 2>>"$TMP/b.log" & PIDS+=($!)
sleep 1
measure vnet-relayed 10.77.0.2
jq -r '.peers[] | select(.address=="10.77.0.2") | "  (path to B: \(.path))"' "$TMP/10.77.0.1.status" >&2 || true
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); sleep 0.3
if [ "$NO_WG" = 1 ]; then
    awk -v v="${T1[vnet]}" -v r="${T1[vnet-relayed]}" -v a="${RTT[vnet]}" -v b="${RTT[bare]}" -v fr="${RTT[floor]}" \
        'BEGIN { split(a, x, "/"); split(b, y, "/"); split(fr, f, "/"); printf "vnet - bare: %+d us p50 (floor - bare: %+d); vnet %.2f Gbit/s, relayed %.2f; relayed/direct (1 stream): %.2f\n", x[1]-y[1], f[1]-y[1], v, r, r/v }'
    exit 0
fi

# ---- WireGuard implementations (same keys, MTU 1420 as wg-quick) ---------------
wg_up() { # impl ns ifname myaddr peerpub endpoint peeraddr key port
    local impl=$1 ns=$2 ifn=$3
    if [ "$impl" = boringtun ]; then
        ip netns exec "$ns" env WG_SUDO=1 "$BT" --disable-drop-privileges -f -t 2 "$ifn" >"$TMP/$ifn.log" 2>&1 & PIDS+=($!)
    else
        ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$ifn" >"$TMP/$ifn.log" 2>&1 & PIDS+=($!)
    fi
    for _ in $(seq 1 50); do ip -n "$ns" link show "$ifn" >/dev/null 2>&1 && [ -S /var/run/wireguard/$ifn.sock ] && break; sleep 0.1; done
    echo "$8" > "$TMP/$ifn.key"
    ip netns exec "$ns" wg set "$ifn" private-key "$TMP/$ifn.key" listen-port "$9" \
        peer "$5" endpoint "$6" allowed-ips "$7/32"
    ip -n "$ns" addr add "$4/24" dev "$ifn"
    ip -n "$ns" link set "$ifn" mtu 1420 up
}
for impl in boringtun wireguard-go; do
    ka=$(wg genkey); kb=$(wg genkey); pa=$(echo "$ka" | wg pubkey); pb=$(echo "$kb" | wg pubkey)
    wg_up $impl $A ${P}w1 10.66.0.1 "$pb" 10.99.0.2:51830 10.66.0.2 "$ka" 51830
    wg_up $impl $B ${P}w2 10.66.0.2 "$pa" 10.99.0.1:51830 10.66.0.1 "$kb" 51830
    measure $impl 10.66.0.2
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=()
    ip -n $A link del ${P}w1 2>/dev/null || true; ip -n $B link del ${P}w2 2>/dev/null || true
    rm -f /var/run/wireguard/${P}w*.sock; sleep 0.3
done

# ---- table ---------------------------------------------------------------------
best=boringtun
awk -v a="${T1[wireguard-go]}" -v b="${T1[boringtun]}" 'BEGIN { exit !(a > b) }' && best=wireguard-go
echo
echo "vnet benchmark: ${DUR}s iperf3 TCP per run, $PING_COUNT pings every ${PING_INTERVAL}s; $(nproc) cores; $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-14s %10s %10s %12s %9s %9s %9s %9s\n' path "1-str Gb/s" "4-str Gb/s" "rtt p50/avg" "1s/bare" "1s/best" "4s/best" "+p50 us"
for k in bare floor vnet vnet-relayed boringtun wireguard-go; do
    awk -v n="$k" -v t1="${T1[$k]}" -v t4="${T4[$k]}" -v r="${RTT[$k]}" -v b1="${T1[bare]}" -v w1="${T1[$best]}" -v w4="${T4[$best]}" -v br="${RTT[bare]}" \
        'BEGIN { split(r, x, "/"); split(br, y, "/"); printf "%-14s %10.2f %10.2f %12s %8.2fx %8.2fx %8.2fx %+9d\n", n, t1, t4, r, t1/b1, t1/w1, t4/w4, x[1]-y[1] }'
done
echo "(best WireGuard by 1-stream throughput: $best; floor: plain TUN<->UDP forwarder, no crypto, see floor_forwarder.c)"
awk -v v="${T1[vnet]}" -v r="${T1[vnet-relayed]}" -v v4="${T4[vnet]}" -v w4="${T4[$best]}" \
    'BEGIN { printf "\nrelayed/direct (1 stream): %.2f   vnet/%s (4 streams): %.2fx\n", r/v, "'$best'", v4/w4 }'
