#!/bin/sh
# Boots the live ISO's kernel and initrd under QEMU TCG (no KVM needed) with
# the ISO as a virtio-blk disk, and checks the banner and that vda appears.
# Usage: check.sh ISO
set -eu
iso=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
xorriso -osirrox on -indev "$iso" -extract /boot/vmlinuz "$work/vmlinuz" \
	-extract /boot/initrd.img "$work/initrd.img" >/dev/null 2>&1
start=$(date +%s)
timeout 120 qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nodefaults -nographic \
	-serial stdio -no-reboot -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
	-append "console=ttyS0 quiet panic=-1 cpushare.job=true" \
	-drive file="$iso",if=virtio,format=raw,readonly=on > "$work/console.txt" 2>&1 || true
end=$(date +%s)
grep -a "cpushare live" "$work/console.txt" || { cat "$work/console.txt"; exit 1; }
grep -aq "disks: .*vda" "$work/console.txt" || { echo "virtio disk not found"; exit 1; }
echo "boot to banner and virtio disk under TCG: ok ($((end - start)) s)"
