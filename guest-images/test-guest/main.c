/*
 * cpushare test guest, ring 3 part (IOPL 3: port I/O works from here).
 *
 * The kernel command line (from the PVH start_info, or from boot_params
 * when booted by the Linux 64-bit protocol) is a list of commands run in
 * order, then the guest powers off with status 0:
 *   hello          print "hello from cpushare test guest"
 *   spin N         N rounds of a xorshift loop; prints result and TSC cycles
 *   blk            find virtio-blk (PCI 1af4:1042), read sectors 0..7 and
 *                  print "blk: capacity=<sectors> fnv1a=<hex of 4096 bytes>"
 *   smp N          wake the other N-1 vCPUs (INIT-SIPI-SIPI through the
 *                  LAPIC), each runs spin work in ring 3 and checks in;
 *                  prints "smp: N vCPUs up" (status 3 if some stay down)
 *   initrd         print "initrd: size=<bytes> fnv1a=<hex>" of the initrd
 *                  (PVH module 0, or boot_params ramdisk_image/size)
 *   read           read one line from COM1 and print "input: <line>"
 *   net IP [N]     virtio-net (PCI 1af4:1041): answer ARP for IP and ICMP
 *                  (IP `auto`: the `cpushare.ip=` the seller appends)
 *                  echo to it, N echo replies (or until a frame of
 *                  ethertype 0x88b5), then "net: arp=.. echo=.. ..."
 *                  (status 9 on failure)
 *   membomb N      write one byte in every 4 KiB page of N MiB of guest
 *                  RAM from 16 MiB up, from ring 3, printing progress
 *                  every 16 MiB, then "membomb: touched N MiB"
 *   sleep N        wait N seconds in ring 3 by the TSC, its rate measured
 *                  against PIT channel 2; then "sleep: N s"
 *                  (status 6 if the PIT does not count)
 *   exit N         power off now with status N
 *   fault          triple-fault (ring-3 #UD with no IDT)
 * An empty command line means "hello".
 *
 * Power off: a 32-bit write of the status to I/O port 0xf4 (cpushare-vmm's
 * debug-exit port; QEMU's isa-debug-exit at iobase 0xf4 exits with
 * status*2+1). If that returns, the i8042 reset (0xfe to port 0x64).
 */
#include "spin.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3f8
#define EXIT_PORT 0xf4

static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }
#define barrier() __asm__ volatile("" ::: "memory")

static void putc_(char c) {
	while (!(inb(COM1 + 5) & 0x20))
		;
	outb(COM1, (u8)c);
}
static void puts_(const char *s) { while (*s) { if (*s == '\n') putc_('\r'); putc_(*s++); } }
static void putu(u64 v) {
	char b[21]; int i = 20; b[i] = 0;
	do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
	puts_(&b[i]);
}
static void puthex(u64 v, int digits) {
	for (int i = digits - 1; i >= 0; i--) putc_("0123456789abcdef"[(v >> (i * 4)) & 0xf]);
}

static __attribute__((noreturn)) void power_off(u32 status) {
	outl(EXIT_PORT, status);
	outb(0x64, 0xfe);
	for (;;) __asm__ volatile("ud2");
}

/* ---- PCI configuration mechanism #1 ---- */
static u32 pci_read(u32 dev, u32 off) { outl(0xcf8, 0x80000000u | dev << 11 | (off & 0xfc)); return inl(0xcfc); }
static void pci_write(u32 dev, u32 off, u32 v) { outl(0xcf8, 0x80000000u | dev << 11 | (off & 0xfc)); outl(0xcfc, v); }
static u8 pci_read8(u32 dev, u32 off) { return (u8)(pci_read(dev, off) >> ((off & 3) * 8)); }

static u64 bar_addr(u32 dev, u32 bar) {
	u32 lo = pci_read(dev, 0x10 + bar * 4);
	u64 a = lo & ~0xfu;
	if ((lo & 0x6) == 0x4) a |= (u64)pci_read(dev, 0x14 + bar * 4) << 32;
	return a;
}

/* ---- virtio 1.x over PCI (modern), polled, one request ---- */
#define QSZ 8
struct desc { u64 addr; u32 len; u16 flags, next; };
struct avail { u16 flags, idx, ring[QSZ]; };
struct used { u16 flags, idx; struct { u32 id, len; } ring[QSZ]; };
static struct desc vq_desc[QSZ] __attribute__((aligned(16)));
static struct avail vq_avail __attribute__((aligned(4)));
static struct used vq_used __attribute__((aligned(4096)));
static struct { u32 type, reserved; u64 sector; } req;
static u8 data[4096] __attribute__((aligned(4096)));
static volatile u8 req_status;

#define R8(a) (*(volatile u8 *)(a))
#define R16(a) (*(volatile u16 *)(a))
#define R32(a) (*(volatile u32 *)(a))

static int blk(void) {
	u32 dev = 0;
	for (dev = 0; dev < 32; dev++)
		if (pci_read(dev, 0) == 0x10421af4u) break;
	if (dev == 32) { puts_("blk: no virtio-blk device\n"); return 1; }
	pci_write(dev, 0x04, pci_read(dev, 0x04) | 0x6); /* memory space + bus master */
	u64 common = 0, notify = 0, devcfg = 0; u32 mult = 0;
	for (u8 cap = pci_read8(dev, 0x34); cap; cap = pci_read8(dev, cap + 1)) {
		if (pci_read8(dev, cap) != 0x09) continue; /* vendor-specific */
		u8 type = pci_read8(dev, cap + 3);
		u64 a = bar_addr(dev, pci_read8(dev, cap + 4)) + pci_read(dev, cap + 8);
		if (type == 1) common = a;
		else if (type == 2) { notify = a; mult = pci_read(dev, cap + 16); }
		else if (type == 4) devcfg = a;
	}
	if (!common || !notify || !devcfg) { puts_("blk: missing virtio capability\n"); return 1; }
	R8(common + 0x14) = 0;
	R8(common + 0x14) = 1 | 2; /* ACKNOWLEDGE | DRIVER */
	R32(common + 0x08) = 1; R32(common + 0x0c) = 1; /* VIRTIO_F_VERSION_1 (bit 32) */
	R32(common + 0x08) = 0; R32(common + 0x0c) = 0;
	R8(common + 0x14) = 1 | 2 | 8; /* FEATURES_OK */
	if (!(R8(common + 0x14) & 8)) { puts_("blk: features refused\n"); return 1; }
	R16(common + 0x16) = 0;
	if (R16(common + 0x18) < QSZ) { puts_("blk: queue too small\n"); return 1; }
	R16(common + 0x18) = QSZ;
	R32(common + 0x20) = (u32)(u64)vq_desc; R32(common + 0x24) = 0;
	R32(common + 0x28) = (u32)(u64)&vq_avail; R32(common + 0x2c) = 0;
	R32(common + 0x30) = (u32)(u64)&vq_used; R32(common + 0x34) = 0;
	u16 noff = R16(common + 0x1e);
	R16(common + 0x1c) = 1;
	R8(common + 0x14) = 1 | 2 | 8 | 4; /* DRIVER_OK */

	req.type = 0; req.sector = 0; req_status = 0xff;
	vq_desc[0] = (struct desc){ (u64)&req, 16, 1, 1 };
	vq_desc[1] = (struct desc){ (u64)data, sizeof data, 1 | 2, 2 };
	vq_desc[2] = (struct desc){ (u64)&req_status, 1, 2, 0 };
	vq_avail.ring[0] = 0;
	barrier();
	vq_avail.idx = 1;
	barrier();
	R16(notify + (u64)noff * mult) = 0;
	for (u64 n = 0; *(volatile u16 *)&vq_used.idx != 1; n++)
		if (n > 100000000ul) { puts_("blk: no completion\n"); return 1; }
	barrier();
	if (req_status != 0) { puts_("blk: request failed\n"); return 1; }
	u32 h = 2166136261u;
	for (unsigned i = 0; i < sizeof data; i++) { h ^= data[i]; h *= 16777619u; }
	u64 cap = R32(devcfg) | (u64)R32(devcfg + 4) << 32;
	puts_("blk: capacity="); putu(cap); puts_(" fnv1a="); puthex(h, 8); puts_("\n");
	return 0;
}

/* ---- application processors ---- */
#define AP_TRAMP_ADDR 0x8000
#define LAPIC_ICR_LO 0xfee00300ul
#define LAPIC_ICR_HI 0xfee00310ul
static volatile u32 aps_up;
static volatile u64 ap_results[32];

void ap_main(u64 id) {
	u64 r = spin(1000000 + id);
	if (id < 32) ap_results[id] = r;
	__atomic_fetch_add(&aps_up, 1, __ATOMIC_SEQ_CST);
	for (;;) __asm__ volatile("pause");
}

static void delay(u64 n) { for (volatile u64 i = 0; i < n; i++); }

static int smp(u64 n) {
	extern char ap_tramp_start[], ap_tramp_end[];
	char *dst = (char *)AP_TRAMP_ADDR;
	for (char *p = ap_tramp_start; p < ap_tramp_end; p++) *dst++ = *p;
	/* All-excluding-self shorthand: INIT, then SIPI twice (MP spec B.4). */
	R32(LAPIC_ICR_HI) = 0; R32(LAPIC_ICR_LO) = 0xc4500;
	delay(10000);
	for (int i = 0; i < 2; i++) {
		R32(LAPIC_ICR_HI) = 0; R32(LAPIC_ICR_LO) = 0xc4600 | (AP_TRAMP_ADDR >> 12);
		delay(10000);
	}
	for (u64 t = 0; aps_up < n - 1 && t < 2000000000ul; t++) __asm__ volatile("pause");
	u64 up = aps_up + 1;
	puts_("smp: "); putu(up); puts_(" vCPUs up\n");
	return up == n ? 0 : 3;
}

static int read_line(void) {
	char line[80]; unsigned n = 0;
	for (u64 t = 0; t < 4000000000ul; t++) {
		if (!(inb(COM1 + 5) & 1)) { __asm__ volatile("pause"); continue; }
		char c = (char)inb(COM1);
		if (c == '\n' || c == '\r') break;
		if (n < sizeof line - 1) line[n++] = c;
	}
	line[n] = 0;
	puts_("input: "); puts_(line); puts_("\n");
	return n ? 0 : 5;
}

static const char *skip_ws(const char *s) { while (*s == ' ') s++; return s; }
static int word_is(const char *s, const char *w) {
	while (*w) if (*s++ != *w++) return 0;
	return *s == ' ' || *s == 0;
}
static const char *parse_u64(const char *s, u64 *out) {
	u64 v = 0; s = skip_ws(s);
	while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
	*out = v; return s;
}
static const char *next_word(const char *s) { while (*s && *s != ' ') s++; return s; }

static u64 initrd_addr, initrd_size;

static int initrd(void) {
	if (!initrd_size) { puts_("initrd: none\n"); return 1; }
	u32 h = 2166136261u;
	for (u64 i = 0; i < initrd_size; i++) { h ^= ((volatile u8 *)initrd_addr)[i]; h *= 16777619u; }
	puts_("initrd: size="); putu(initrd_size); puts_(" fnv1a="); puthex(h, 8); puts_("\n");
	return 0;
}

/* ---- virtio-net (PCI 1af4:1041): answer ARP and ICMP echo ----
 * `net IP [N]`: find the device, negotiate VERSION_1 | MAC | MTU, post
 * NQ receive buffers, then poll the receive ring from ring 3 and answer
 * ARP requests for IP and ICMP echo requests to it. Ends after N echo
 * replies (N > 0), or on a frame of ethertype 0x88b5 (IEEE local
 * experimental, the test's "stop"), printing
 * "net: arp=A echo=E other=O rx=R tx=T". Receive buffers are recycled
 * without a notify: the device looks for them when a frame arrives. */
#define NQ 16
#define NBUF 2048
#define NET_HDR 12
#define ETH_STOP 0x88b5
struct vq_avail { u16 flags, idx, ring[NQ]; };
struct vq_used { u16 flags, idx; struct { u32 id, len; } ring[NQ]; };
static struct desc rx_desc[NQ] __attribute__((aligned(16)));
static struct vq_avail rx_avail __attribute__((aligned(4)));
static struct vq_used rx_used __attribute__((aligned(4096)));
static struct desc tx_desc[NQ] __attribute__((aligned(16)));
static struct vq_avail tx_avail __attribute__((aligned(4)));
static struct vq_used tx_used __attribute__((aligned(4096)));
static u8 rx_buf[NQ][NBUF] __attribute__((aligned(4096)));
static u8 tx_buf[NQ][NBUF] __attribute__((aligned(4096)));
static u8 net_mac[6];
static u32 net_ip; /* network byte order, as in packets */
static u64 tx_notify;
static struct { u64 arp, echo, other, rx, tx; } net_count;

static u16 be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static void put_be16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void copy(u8 *d, const u8 *s, u32 n) { while (n--) *d++ = *s++; }
static int same(const u8 *a, const u8 *b, u32 n) { while (n--) if (*a++ != *b++) return 0; return 1; }

/* RFC 1071 Internet checksum; 0 over data that carries a valid one. */
static u16 inet_csum(const u8 *p, u32 n) {
	u32 s = 0;
	for (; n > 1; p += 2, n -= 2) s += be16(p);
	if (n) s += (u32)p[0] << 8;
	while (s >> 16) s = (s & 0xffff) + (s >> 16);
	return (u16)~s;
}

static void vq_setup(u64 common, u16 q, struct desc *d, struct vq_avail *a, struct vq_used *u) {
	R16(common + 0x16) = q;
	R16(common + 0x18) = NQ;
	R32(common + 0x20) = (u32)(u64)d; R32(common + 0x24) = 0;
	R32(common + 0x28) = (u32)(u64)a; R32(common + 0x2c) = 0;
	R32(common + 0x30) = (u32)(u64)u; R32(common + 0x34) = 0;
	R16(common + 0x1c) = 1;
}

/* Queues one frame (copied after a zero virtio_net_hdr) and notifies. */
static void net_send(const u8 *frame, u32 len) {
	u16 slot = tx_avail.idx % NQ;
	/* Reuse a slot only once the device returned it. */
	for (u64 n = 0; (u16)(tx_avail.idx - *(volatile u16 *)&tx_used.idx) >= NQ; n++)
		if (n > 100000000ul) return;
	u8 *b = tx_buf[slot];
	for (int i = 0; i < NET_HDR; i++) b[i] = 0;
	copy(b + NET_HDR, frame, len);
	tx_desc[slot] = (struct desc){ (u64)b, NET_HDR + len, 0, 0 };
	tx_avail.ring[slot] = slot;
	barrier();
	*(volatile u16 *)&tx_avail.idx = tx_avail.idx + 1;
	barrier();
	R16(tx_notify) = 1;
	net_count.tx++;
}

static void answer_arp(const u8 *f, u32 len) {
	const u8 *a = f + 14;
	static const u8 req[8] = { 0, 1, 8, 0, 6, 4, 0, 1 };
	if (len < 42 || !same(a, req, 8) || !same(a + 24, (const u8 *)&net_ip, 4)) { net_count.other++; return; }
	u8 r[42];
	copy(r, f + 6, 6); copy(r + 6, net_mac, 6); put_be16(r + 12, 0x0806);
	copy(r + 14, req, 7); r[21] = 2;             /* op: reply */
	copy(r + 22, net_mac, 6); copy(r + 28, (const u8 *)&net_ip, 4);
	copy(r + 32, a + 8, 6); copy(r + 38, a + 14, 4); /* to the asker */
	net_send(r, sizeof r);
	net_count.arp++;
}

static void answer_echo(const u8 *f, u32 len) {
	const u8 *ip = f + 14;
	u32 iplen = len - 14;
	if (iplen < 20 || ip[0] >> 4 != 4) { net_count.other++; return; }
	u32 ihl = (ip[0] & 15) * 4u, total = be16(ip + 2);
	if (ihl < 20 || total > iplen || total < ihl + 8 || inet_csum(ip, ihl) != 0
	    || (be16(ip + 6) & 0x3fff) /* a fragment */ || ip[9] != 1
	    || !same(ip + 16, (const u8 *)&net_ip, 4)) { net_count.other++; return; }
	const u8 *icmp = ip + ihl;
	u32 icmplen = total - ihl;
	if (icmp[0] != 8 || icmp[1] != 0 || inet_csum(icmp, icmplen) != 0) { net_count.other++; return; }
	static u8 r[NBUF];
	if (14 + 20 + icmplen > sizeof r) { net_count.other++; return; }
	copy(r, f + 6, 6); copy(r + 6, net_mac, 6); put_be16(r + 12, 0x0800);
	u8 *rip = r + 14;
	rip[0] = 0x45; rip[1] = 0; put_be16(rip + 2, (u16)(20 + icmplen));
	copy(rip + 4, ip + 4, 2); put_be16(rip + 6, 0); rip[8] = 64; rip[9] = 1;
	put_be16(rip + 10, 0);
	copy(rip + 12, (const u8 *)&net_ip, 4); copy(rip + 16, ip + 12, 4);
	put_be16(rip + 10, inet_csum(rip, 20));
	u8 *ric = rip + 20;
	copy(ric, icmp, icmplen);
	ric[0] = 0; put_be16(ric + 2, 0);
	put_be16(ric + 2, inet_csum(ric, icmplen));
	net_send(r, 14 + 20 + icmplen);
	net_count.echo++;
}

static int net_run(u64 echoes) {
	u32 dev;
	for (dev = 0; dev < 32; dev++)
		if (pci_read(dev, 0) == 0x10411af4u) break;
	if (dev == 32) { puts_("net: no virtio-net device\n"); return 1; }
	pci_write(dev, 0x04, pci_read(dev, 0x04) | 0x6);
	u64 common = 0, notify = 0, devcfg = 0; u32 mult = 0;
	for (u8 cap = pci_read8(dev, 0x34); cap; cap = pci_read8(dev, cap + 1)) {
		if (pci_read8(dev, cap) != 0x09) continue;
		u8 type = pci_read8(dev, cap + 3);
		u64 a = bar_addr(dev, pci_read8(dev, cap + 4)) + pci_read(dev, cap + 8);
		if (type == 1) common = a;
		else if (type == 2) { notify = a; mult = pci_read(dev, cap + 16); }
		else if (type == 4) devcfg = a;
	}
	if (!common || !notify || !devcfg) { puts_("net: missing virtio capability\n"); return 1; }
	R8(common + 0x14) = 0;
	R8(common + 0x14) = 1 | 2;
	R32(common + 0x00) = 0;
	u32 offered = R32(common + 0x04);
	if ((offered & 0x28) != 0x28) { puts_("net: no MAC/MTU feature\n"); return 1; }
	R32(common + 0x08) = 0; R32(common + 0x0c) = 0x28; /* VIRTIO_NET_F_MTU | _MAC */
	R32(common + 0x08) = 1; R32(common + 0x0c) = 1;    /* VIRTIO_F_VERSION_1 */
	R8(common + 0x14) = 1 | 2 | 8;
	if (!(R8(common + 0x14) & 8)) { puts_("net: features refused\n"); return 1; }
	for (int i = 0; i < 6; i++) net_mac[i] = R8(devcfg + i);
	u16 mtu = R16(devcfg + 10);
	R16(common + 0x16) = 0;
	if (R16(common + 0x18) < NQ) { puts_("net: queue too small\n"); return 1; }
	vq_setup(common, 0, rx_desc, &rx_avail, &rx_used);
	u64 rx_notify = notify + (u64)R16(common + 0x1e) * mult;
	vq_setup(common, 1, tx_desc, &tx_avail, &tx_used);
	tx_notify = notify + (u64)R16(common + 0x1e) * mult;
	R8(common + 0x14) = 1 | 2 | 8 | 4;
	for (u16 i = 0; i < NQ; i++) {
		rx_desc[i] = (struct desc){ (u64)rx_buf[i], NBUF, 2, 0 };
		rx_avail.ring[i] = i;
	}
	barrier();
	*(volatile u16 *)&rx_avail.idx = NQ;
	barrier();
	R16(rx_notify) = 0;

	const u8 *ipb = (const u8 *)&net_ip;
	puts_("net: mac=");
	for (int i = 0; i < 6; i++) { puthex(net_mac[i], 2); if (i < 5) putc_(':'); }
	puts_(" ip="); putu(ipb[0]); putc_('.'); putu(ipb[1]); putc_('.'); putu(ipb[2]); putc_('.'); putu(ipb[3]);
	puts_(" mtu="); putu(mtu); puts_(" ready\n");

	u16 seen = 0;
	int status = 0;
	while (!echoes || net_count.echo < echoes) {
		u64 t0 = rdtsc();
		while (*(volatile u16 *)&rx_used.idx == seen) {
			__asm__ volatile("pause");
			/* A safety net of ~10 minutes at 3 GHz, not a test timeout. */
			if (rdtsc() - t0 > 1800000000000ul) { puts_("net: no frames\n"); return 1; }
		}
		barrier();
		u16 id = (u16)rx_used.ring[seen % NQ].id, len = (u16)rx_used.ring[seen % NQ].len;
		seen++;
		net_count.rx++;
		if (id < NQ && len >= NET_HDR + 14 && len <= NBUF) {
			const u8 *f = rx_buf[id] + NET_HDR;
			u32 flen = len - NET_HDR;
			u16 type = be16(f + 12);
			if (type == ETH_STOP) break;
			if (type == 0x0806) answer_arp(f, flen);
			else if (type == 0x0800) answer_echo(f, flen);
			else net_count.other++;
		} else {
			net_count.other++;
		}
		if (id < NQ) {
			rx_avail.ring[rx_avail.idx % NQ] = id;
			barrier();
			*(volatile u16 *)&rx_avail.idx = rx_avail.idx + 1;
		}
	}
	/* Let the last reply leave before powering off. */
	for (u64 n = 0; *(volatile u16 *)&tx_used.idx != tx_avail.idx; n++)
		if (n > 100000000ul) { puts_("net: transmit stuck\n"); status = 1; break; }
	puts_("net: arp="); putu(net_count.arp); puts_(" echo="); putu(net_count.echo);
	puts_(" other="); putu(net_count.other); puts_(" rx="); putu(net_count.rx);
	puts_(" tx="); putu(net_count.tx); puts_("\n");
	return status;
}

/* Parses "a.b.c.d" into net_ip; returns the rest, or 0 if malformed. */
static const char *parse_ip(const char *s) {
	u8 *ipb = (u8 *)&net_ip;
	for (int i = 0; i < 4; i++) {
		u64 v;
		const char *e = parse_u64(s, &v);
		if (e == skip_ws(s) || v > 255 || (i < 3 && *e != '.')) return 0;
		ipb[i] = (u8)v;
		s = i < 3 ? e + 1 : e;
	}
	return s;
}

/* The whole kernel command line, for words that look beyond their own. */
static const char *full_cmdline = "";

/* The address after "cpushare.ip=" anywhere on the command line (the
 * seller appends it: the lease's vnet address), or 0. */
static const char *vnet_ip(void) {
	static const char key[] = "cpushare.ip=";
	for (const char *p = full_cmdline; *p; p++) {
		int i = 0;
		while (key[i] && p[i] == key[i]) i++;
		if (!key[i]) return p + i;
	}
	return 0;
}

/* `net IP [N]` or `net auto [N]` (the vnet address the seller appended);
 * sets *status to 9 on failure. Returns the rest of the line. */
static const char *net_cmd(const char *s, u32 *status) {
	s = skip_ws(s);
	if (word_is(s, "auto")) {
		const char *ip = vnet_ip();
		if (!ip || !parse_ip(ip)) { puts_("net: no cpushare.ip= on the command line\n"); *status = 9; return ""; }
		s = next_word(s);
		puts_("net: vnet address from the command line\n");
	} else {
		s = parse_ip(s);
	}
	if (!s) { puts_("net: usage: net A.B.C.D [ECHOES]\n"); *status = 9; return ""; }
	u64 n = 0;
	s = skip_ws(s);
	if (*s >= '0' && *s <= '9') s = parse_u64(s, &n);
	if (net_run(n)) *status = 9;
	return s;
}

/* Every page the guest touches becomes host memory of the VMM process,
 * charged to the lease's cgroup. */
static void membomb(u64 mib) {
	volatile u8 *base = (volatile u8 *)(16ul << 20);
	for (u64 page = 0; page < (mib << 8); page++) {
		base[page << 12] = (u8)page;
		if ((page & 4095) == 4095) { puts_("membomb: "); putu((page + 1) >> 8); puts_(" MiB\n"); }
	}
	puts_("membomb: touched "); putu(mib); puts_(" MiB\n");
}

/* ---- sleep: wall time by the TSC, its rate measured on the PIT ----
 * PIT channel 2 (1.193182 MHz, gate and OUT through port 0x61, no
 * interrupt) counts down PIT_CAL ticks in mode 0; OUT rises at zero. The
 * TSC cycles that took, least of PIT_ROUNDS tries (a preempted try only
 * comes out longer), give the TSC's rate; the wait itself reads only the
 * TSC, so no preemption makes it shorter or lose time. */
#define PIT_HZ 1193182ul
#define PIT_CAL 59659u /* 50 ms */
#define PIT_ROUNDS 5
#define PIT_CMD 0x43
#define PIT_CH2 0x42
#define PORT_B 0x61

/* TSC cycles per second, or 0 if channel 2's OUT never moves. */
static u64 tsc_hz(void) {
	u64 best = ~0ul;
	for (int i = 0; i < PIT_ROUNDS; i++) {
		outb(PORT_B, (u8)((inb(PORT_B) & ~0x02) | 0x01)); /* gate on, speaker off */
		outb(PIT_CMD, 0xb0); /* channel 2, lobyte/hibyte, mode 0, binary */
		outb(PIT_CH2, PIT_CAL & 0xff);
		outb(PIT_CH2, PIT_CAL >> 8);
		u64 t0 = rdtsc();
		if (inb(PORT_B) & 0x20) return 0; /* OUT is low until zero */
		u64 n = 0;
		while (!(inb(PORT_B) & 0x20))
			if (++n > 1000000000ul) return 0;
		u64 d = rdtsc() - t0;
		if (d < best) best = d;
	}
	return best * PIT_HZ / PIT_CAL;
}

static int sleep_secs(u64 secs) {
	u64 hz = tsc_hz();
	if (!hz) { puts_("sleep: the PIT does not count\n"); return 6; }
	u64 t0 = rdtsc();
	while (rdtsc() - t0 < secs * hz) __asm__ volatile("pause");
	puts_("sleep: "); putu(secs); puts_(" s\n");
	return 0;
}

void user_main(u64 start_info, u64 boot_params) {
	const char *cmd = "";
	/* hvm_start_info: magic at 0, cmdline_paddr at 24. boot_params:
	 * "HdrS" at 0x202, cmd_line_ptr at 0x228. */
	if (start_info && R32(start_info) == 0x336ec578u && *(u64 *)(start_info + 24))
		cmd = (const char *)*(u64 *)(start_info + 24);
	else if (boot_params && R32(boot_params + 0x202) == 0x53726448u && R32(boot_params + 0x228))
		cmd = (const char *)(u64)R32(boot_params + 0x228);
	/* Initrd: PVH nr_modules at 12, modlist_paddr at 16 (entry: paddr, size);
	 * boot_params ramdisk_image at 0x218, ramdisk_size at 0x21c. */
	if (start_info && R32(start_info) == 0x336ec578u && R32(start_info + 12)) {
		u64 m = *(u64 *)(start_info + 16);
		initrd_addr = *(u64 *)m; initrd_size = *(u64 *)(m + 8);
	} else if (boot_params && R32(boot_params + 0x202) == 0x53726448u) {
		initrd_addr = R32(boot_params + 0x218); initrd_size = R32(boot_params + 0x21c);
	}
	cmd = skip_ws(cmd);
	if (!*cmd) cmd = "hello";
	full_cmdline = cmd;
	u32 status = 0;
	while (*(cmd = skip_ws(cmd))) {
		if (word_is(cmd, "hello")) {
			puts_("hello from cpushare test guest\n");
		} else if (word_is(cmd, "spin")) {
			u64 n; cmd = parse_u64(next_word(cmd), &n);
			u64 t0 = rdtsc(); u64 r = spin(n); u64 t1 = rdtsc();
			puts_("spin: n="); putu(n); puts_(" result="); puthex(r, 16);
			puts_(" cycles="); putu(t1 - t0); puts_("\n");
			continue;
		} else if (word_is(cmd, "read")) {
			if (read_line()) status = 5;
		} else if (word_is(cmd, "initrd")) {
			if (initrd()) status = 4;
		} else if (word_is(cmd, "blk")) {
			if (blk()) status = 2;
		} else if (word_is(cmd, "smp")) {
			u64 n; cmd = parse_u64(next_word(cmd), &n);
			if (n < 1 || n > 32 || smp(n)) status = 3;
			continue;
		} else if (word_is(cmd, "net")) {
			cmd = net_cmd(next_word(cmd), &status);
			continue;
		} else if (word_is(cmd, "sleep")) {
			u64 n; cmd = parse_u64(next_word(cmd), &n);
			if (sleep_secs(n)) status = 6;
			continue;
		} else if (word_is(cmd, "exit")) {
			u64 n; parse_u64(next_word(cmd), &n);
			power_off((u32)n);
		} else if (word_is(cmd, "membomb")) {
			u64 n; cmd = parse_u64(next_word(cmd), &n);
			membomb(n);
			continue;
		} else if (word_is(cmd, "fault")) {
			__asm__ volatile("ud2");
		}
		cmd = next_word(cmd);
	}
	power_off(status);
}
