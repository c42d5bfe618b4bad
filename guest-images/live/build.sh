#!/bin/sh
# Builds a minimal Debian live ISO for cpushare:
#   /boot/vmlinuz      Debian's stock kernel (linux-image-amd64)
#   /boot/initrd.img   busybox-static initramfs that loads the virtio-pci
#                      and virtio-blk modules, prints a banner, lists the
#                      disks, then runs /job.sh from the initramfs (or the
#                      `cpushare.job=` script given on the command line is
#                      absent: a shell on the console)
#   /cpushare.toml     kernel, initrd and command line for cpushare-vmm
# Packages are fetched with `apt-get download` and unpacked locally; nothing
# is installed on the build host. Prints the ISO path and its sha256.
# Usage: build.sh [OUTDIR]     (default: ./out)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
[ -n "$kpkg" ] || { echo "cannot resolve linux-image-amd64; run apt-get update" >&2; exit 1; }
(cd "$work" && apt-get download -q "$kpkg" busybox-static >/dev/null 2>&1)
mkdir -p "$work/pkg"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/pkg"; done
kver=${kpkg#linux-image-}
moddir="$work/pkg/lib/modules/$kver"
# The package ships no modules.dep (postinst runs depmod); make one.
depmod -b "$work/pkg" "$kver"

# initramfs
rd="$work/rd"
mkdir -p "$rd/bin" "$rd/dev" "$rd/proc" "$rd/sys" "$rd/mnt" "$rd/lib/modules"
cp "$work/pkg/bin/busybox" "$rd/bin/busybox"
ln -s busybox "$rd/bin/sh"
# Modules in dependency order (modules.dep lists a module's dependencies
# after it, so the reversed list of each line loads dependencies first).
order=""
for m in virtio_blk virtio_pci virtio_net nfsv3; do
	line=$(grep -E "/$m\.ko(\.xz|\.zst)?:" "$moddir/modules.dep")
	for dep in $(echo "$line" | tr -d ':' | tr ' ' '\n' | tac); do
		case " $order " in *" $dep "*) ;; *) order="$order $dep" ;; esac
	done
done
: > "$rd/lib/modules/order"
for rel in $order; do
	name=$(basename "$rel")
	case "$name" in
		*.xz) xz -dc "$moddir/$rel" > "$rd/lib/modules/${name%.xz}"; name=${name%.xz} ;;
		*.zst) zstd -qdc "$moddir/$rel" > "$rd/lib/modules/${name%.zst}"; name=${name%.zst} ;;
		*) cp "$moddir/$rel" "$rd/lib/modules/$name" ;;
	esac
	echo "$name" >> "$rd/lib/modules/order"
done
cat > "$rd/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
sleep 1
echo "cpushare live: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPUs"
echo "cpushare live: disks: $(ls /sys/block | tr '\n' ' ')"
job=""
for a in $(cat /proc/cmdline); do case "$a" in cpushare.job=*) job=${a#cpushare.job=} ;; esac; done
# The buyer's --share directories, served over NFSv3 on its vnet address:
# cpushare.nfs=HOST_IP:EXPORT:GUEST_PATH[:rw], cpushare.nfsport=PORT
# (the seller's cpushare.ip=ADDR/PREFIX, the lease's vnet address, configures eth0).
nfsport=2049
for a in $(cat /proc/cmdline); do
	case "$a" in
	cpushare.nfsport=*) nfsport=${a#cpushare.nfsport=} ;;
	cpushare.ip=*) ip link set eth0 up && ip addr add "${a#cpushare.ip=}" dev eth0 ;;
	esac
done
for a in $(cat /proc/cmdline); do
	case "$a" in cpushare.nfs=*) ;; *) continue ;; esac
	set -- $(echo "${a#cpushare.nfs=}" | tr : ' ')
	if [ "$4" = rw ]; then rw=rw; else rw=ro; fi
	mkdir -p "$3"
	if mount -t nfs -o vers=3,nolock,proto=tcp,mountproto=tcp,port=$nfsport,mountport=$nfsport,$rw "$1:$2" "$3"; then
		echo "cpushare live: mounted $1:$2 at $3 ($rw)"
	else
		echo "cpushare live: cannot mount $1:$2 at $3"
	fi
done
if [ -x /job.sh ]; then /job.sh; elif [ -n "$job" ]; then sh -c "$job"; else setsid cttyhack sh; fi
echo "cpushare live: done"
poweroff -f
INIT
chmod +x "$rd/init"
(cd "$rd" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/initrd.img"

# ISO
iso="$work/iso"
mkdir -p "$iso/boot"
cp "$work/pkg/boot/vmlinuz-$kver" "$iso/boot/vmlinuz"
cp "$work/initrd.img" "$iso/boot/initrd.img"
cat > "$iso/cpushare.toml" <<TOML
kernel = "/boot/vmlinuz"
initrd = "/boot/initrd.img"
cmdline = "quiet panic=-1"
TOML
xorriso -as mkisofs -quiet -R -J -V CPUSHARE_LIVE -o "$out/cpushare-live.iso" "$iso"
echo "$out/cpushare-live.iso"
sha256sum "$out/cpushare-live.iso"
