#!/bin/sh
# Builds the cpushare test guest:
#   OUTDIR/guest.elf        ELF64 with a PVH note (PVH 32-bit entry)
#   OUTDIR/guest-nopvh.elf  the same without the note (Linux 64-bit entry)
#   OUTDIR/guest.bzImage    the same wrapped as a minimal bzImage (boot
#                           protocol 2.15, 64-bit entry at 0x200)
#   OUTDIR/spin-host        the guest's spin loop built for the host
# Usage: build.sh [OUTDIR]   (default: ./out)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
CFLAGS="-O2 -ffreestanding -fno-pic -fno-pie -fno-stack-protector -mno-red-zone \
 -mgeneral-regs-only -mcmodel=kernel -fno-asynchronous-unwind-tables -nostdlib -Wall -Wextra"
# -mcmodel=kernel wants the image in the top 2 GiB; we load at 1 MiB, so use small.
CFLAGS=$(echo "$CFLAGS" | sed 's/-mcmodel=kernel/-mcmodel=small/')
gcc $CFLAGS -c "$here/start.S" -o "$out/start.o"
gcc $CFLAGS -c "$here/main.c" -o "$out/main.o"
ld -nostdlib -static -no-pie -z noexecstack -z max-page-size=4096 -T "$here/linker.ld" \
   -o "$out/guest.elf" "$out/start.o" "$out/main.o"
gcc -O2 -o "$out/spin-host" "$here/spin-host.c"
objcopy --remove-section .note.Xen "$out/guest.elf" "$out/guest-nopvh.elf"

# bzImage: one boot sector plus one setup sector holding the setup header
# (Documentation/arch/x86/boot.rst), then the image loaded at 1 MiB.
objcopy -O binary "$out/guest.elf" "$out/guest.bin"
hdr="$out/setup.bin"
dd if=/dev/zero of="$hdr" bs=512 count=2 status=none
put() { printf "$2" | dd of="$hdr" bs=1 seek=$(($1)) conv=notrunc status=none; }
put 0x1f1 '\001'                 # setup_sects
put 0x1fe '\125\252'             # boot_flag 0xaa55
put 0x202 'HdrS'                 # header magic
put 0x206 '\017\002'             # version 2.15
put 0x211 '\001'                 # loadflags: LOADED_HIGH
put 0x214 '\000\000\020\000'     # code32_start 0x100000
put 0x22c '\377\377\377\067'     # initrd_addr_max 0x37ffffff
put 0x236 '\001\000'             # xloadflags: XLF_KERNEL_64
cat "$hdr" "$out/guest.bin" > "$out/guest.bzImage"
rm -f "$out/start.o" "$out/main.o" "$out/guest.bin" "$hdr"
echo "$out/guest.elf"
