#!/usr/bin/env bash
# Runs every check and test of the workspace, as CI does: formatting,
# clippy with warnings as errors, unit, property and integration tests
# (real broker/seller/buyer processes, real KVM test guests, network
# namespaces), with the store tests on SQLite and on a throwaway
# PostgreSQL server started here on loopback.
#
# Run as root on a machine with /dev/kvm (tests of KVM guests and network
# namespaces must not be skipped; only stock-Linux guest boots may skip,
# where /dev/kvm is not hardware KVM, and they say why).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== PostgreSQL for the store tests"
urlfile=$(mktemp)
start_out=$(scripts/pg-test-server.sh start "$urlfile")
pgdir=$(sed -n 's/^# stop with: .* stop //p' <<<"$start_out")
trap 'scripts/pg-test-server.sh stop "$pgdir" >/dev/null 2>&1 || true; rm -f "$urlfile"' EXIT
CPUSHARE_TEST_PG=$(cat "$urlfile")
export CPUSHARE_TEST_PG
echo "PostgreSQL at $CPUSHARE_TEST_PG"

echo "== build"
cargo build --workspace --all-targets

echo "== tests"
log=$(mktemp)
# --test-threads keeps the process-heavy integration tests from starving
# each other on a 2-core machine; unit tests are fast either way.
set +e
cargo test --workspace --no-fail-fast -- --test-threads=4 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

echo "== the minimal live ISO boots under QEMU TCG (independently of our VMM)"
live=$(mktemp -d)
if bash guest-images/live/build.sh "$live" >"$live/build.log" 2>&1 &&
    bash guest-images/live/check.sh "$live/cpushare-live.iso"; then
    echo "test live_iso_boots_under_qemu_tcg ... ok"
else
    echo "test live_iso_boots_under_qemu_tcg ... FAILED"
    tail -20 "$live/build.log" >&2
    status=1
fi
rm -rf "$live"

# Tests that could not run here print a line starting `SKIPPED` with the
# reason; only stock-Linux boots may do that. Anything else skipping (KVM
# test guests, network namespaces, PostgreSQL) is a failure.
skipped=$(grep -c '^SKIPPED' "$log" || true)
bad_skips=$(grep '^SKIPPED' "$log" | grep -v 'stock-Linux' || true)
echo "== skipped tests: $skipped"
grep '^SKIPPED' "$log" || true
if [[ -n "$bad_skips" ]]; then
    echo "error: tests skipped that must run here:" >&2
    echo "$bad_skips" >&2
    status=1
fi
passed=$(grep -Eo '^test result: .*' "$log" | awk '{p+=$4; f+=$6} END {print p+0, f+0}')
read -r p f <<<"$passed"
echo "$p passed, $f failed, $skipped skipped"
rm -f "$log"
exit "$status"
