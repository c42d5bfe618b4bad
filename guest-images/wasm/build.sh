#!/bin/sh
# Builds every example module in this folder to OUTDIR/NAME.wasm (default:
# guest-images/out/wasm) with Debian's clang + lld + wasi-libc.
# Needs: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../out/wasm}
cc=${CC:-clang}
sysroot=${WASI_SYSROOT:-/usr}

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "build.sh: '$cc' not found; run: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32" >&2
    exit 1
fi
if [ ! -e "$sysroot/lib/wasm32-wasi/libc.a" ]; then
    echo "build.sh: no wasi-libc under $sysroot/lib/wasm32-wasi; run: apt-get install wasi-libc" >&2
    exit 1
fi

mkdir -p "$out"
for src in "$here"/*.c; do
    name=$(basename "$src" .c)
    # Compile to a temporary name and rename, so a concurrent reader never
    # sees a half-written module.
    tmp="$out/.$name.wasm.$$"
    if ! "$cc" --target=wasm32-wasi --sysroot="$sysroot" -O2 -Wall -Werror -o "$tmp" "$src"; then
        rm -f "$tmp"
        echo "build.sh: compiling $src failed (is libclang-rt-14-dev-wasm32 installed?)" >&2
        exit 1
    fi
    mv -f "$tmp" "$out/$name.wasm"
done
