#!/usr/bin/env bash
# Installs what building and testing cpushare needs on a fresh Debian 12
# machine: the Debian packages in scripts/apt-packages.txt (clang + wasi-libc
# for the example wasm modules, PostgreSQL for the store tests, xorriso and
# QEMU for guest images, ...) and the Rust toolchain components. Idempotent;
# quick when everything is already there.
#
#   scripts/install-deps.sh            test and demo dependencies
#   scripts/install-deps.sh --bench    also the tools benchmarks compare against
set -euo pipefail
cd "$(dirname "$0")/.."

want=()
while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || want+=("$pkg")
done < scripts/apt-packages.txt

if ((${#want[@]})); then
    echo "install-deps: apt-get install ${want[*]}" >&2
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

if [[ "${1:-}" == "--bench" ]]; then
    while read -r tool; do
        [[ -z "$tool" || "$tool" == \#* ]] && continue
        command -v "${tool%-cli}" >/dev/null || cargo install --locked "$tool"
    done < scripts/cargo-tools.txt
fi
