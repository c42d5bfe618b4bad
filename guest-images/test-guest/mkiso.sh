#!/bin/sh
# Packs the test guest into an ISO with a /cpushare.toml naming it.
# Usage: mkiso.sh GUEST_ELF OUT_ISO [CMDLINE]
set -eu
elf=$1; iso=$2; cmdline=${3:-hello}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/boot"
cp "$elf" "$tmp/boot/guest.elf"
printf 'kernel = "/boot/guest.elf"\ncmdline = "%s"\n' "$cmdline" > "$tmp/cpushare.toml"
xorriso -as mkisofs -quiet -R -J -V CPUSHARE_TEST -o "$iso" "$tmp"
echo "$iso"
