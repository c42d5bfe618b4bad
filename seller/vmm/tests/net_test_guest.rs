//! Boots the test guest with a virtio-net device on a socket pair and plays
//! the vnet's side of the link: ARP and ICMP echo frames built here are
//! answered by the guest from ring 3, and frames above the MTU are dropped
//! and counted by the VMM, never delivered.

mod support;

use std::time::{Duration, Instant};

use cpushare_vmm::devices::frame_socket::{FrameSocket, Received};
use cpushare_vmm::devices::virtio::net::DEFAULT_MTU;
use cpushare_vmm::{NetConfig, Payload, Vm, VmConfig, VmExit, VmHandle, VmmError};
use support::{guest_elf, require_kvm, Sink};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The MAC the vnet answers ARP with (`vnet::router::arp::VIRTUAL_MAC`).
const VNET_MAC: [u8; 6] = [0x02, 0x63, 0x70, 0x75, 0x73, 0x68];
const HOST_IP: [u8; 4] = [10, 77, 0, 1];
/// Hang guard only: how long to wait for the guest before failing with its
/// console output. Guest ring 0 is slow here (PVM), its ring 3 is not.
const PATIENCE: Duration = Duration::from_secs(300);
/// Largest frame: the MTU plus the Ethernet header.
const MAX_FRAME: usize = DEFAULT_MTU as usize + 14;

/// A guest running on its own thread, stopped on drop if it is still up
/// (a failing test must not leave a spinning VM behind).
struct Running {
    handle: VmHandle,
    sink: Sink,
    peer: FrameSocket,
    thread: Option<std::thread::JoinHandle<Result<VmExit, VmmError>>>,
}

impl Running {
    fn boot(cmdline: &str) -> Self {
        require_kvm();
        let (vmm_end, peer) = FrameSocket::pair().unwrap();
        let sink = Sink::default();
        let cfg = VmConfig {
            vcpus: 1,
            mem_bytes: 64 << 20,
            kernel: Payload::Path(guest_elf()),
            initrd: None,
            cmdline: cmdline.into(),
            disk_ro: None,
            scratch: None,
            net: Some(NetConfig {
                mac: GUEST_MAC,
                mtu: DEFAULT_MTU,
                socket: vmm_end,
            }),
        };
        let vm = Vm::new(cfg, Box::new(sink.clone()), None).unwrap();
        let handle = vm.handle();
        let thread = Some(std::thread::spawn(move || vm.run()));
        let r = Self {
            handle,
            sink,
            peer,
            thread,
        };
        r.wait_for_console(" ready");
        r
    }

    fn wait_for_console(&self, what: &str) {
        let t0 = Instant::now();
        while !self.sink.text().contains(what) {
            let done = self.thread.as_ref().is_some_and(|t| t.is_finished());
            assert!(
                !done && t0.elapsed() < PATIENCE,
                "guest never printed {what:?}; console: {}",
                self.sink.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn send(&self, frame: &[u8]) {
        self.peer.send(frame).unwrap();
    }

    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        match self.peer.recv(&mut buf, Some(PATIENCE)).unwrap() {
            Received::Frame(n) => buf[..n].to_vec(),
            other => panic!(
                "no reply from the guest ({other:?}); console: {}",
                self.sink.text()
            ),
        }
    }

    /// Waits for the guest to power off; returns how and its console.
    fn finish(mut self) -> (VmExit, String) {
        let r = self.thread.take().unwrap().join().unwrap();
        (r.unwrap(), self.sink.text())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.stop();
            let _ = t.join();
        }
    }
}

/// RFC 1071 checksum; 0 when `data` carries a valid one.
fn inet_csum(data: &[u8]) -> u16 {
    let mut s: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&VNET_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&VNET_MAC);
    a.extend_from_slice(&HOST_IP);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target);
    eth([0xff; 6], 0x0806, &a)
}

/// An ICMP echo request from the vnet's host address to `to`, in a frame.
fn echo_request(to: [u8; 4], id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = inet_csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 1, 0, 0]); // id, DF, ttl, ICMP
    ip.extend_from_slice(&HOST_IP);
    ip.extend_from_slice(&to);
    let c = inet_csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    eth(GUEST_MAC, 0x0800, &ip)
}

/// Checks every field of an echo reply from `from` to the request's
/// (`id`, `seq`, `payload`).
fn check_echo_reply(r: &[u8], from: [u8; 4], id: u16, seq: u16, payload: &[u8]) {
    assert_eq!(r.len(), 14 + 20 + 8 + payload.len(), "reply length");
    assert_eq!(&r[0..6], &VNET_MAC, "to the vnet");
    assert_eq!(&r[6..12], &GUEST_MAC, "from the guest's MAC");
    assert_eq!(&r[12..14], &[8, 0], "IPv4");
    let ip = &r[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        20 + 8 + payload.len()
    );
    assert_eq!(ip[8], 64, "TTL");
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(&ip[12..16], &from);
    assert_eq!(&ip[16..20], &HOST_IP);
    assert_eq!(inet_csum(ip), 0, "IP header checksum");
    let icmp = &r[34..];
    assert_eq!(&icmp[0..2], &[0, 0], "echo reply");
    assert_eq!(u16::from_be_bytes([icmp[4], icmp[5]]), id);
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), seq);
    assert_eq!(&icmp[8..], payload);
    assert_eq!(inet_csum(icmp), 0, "ICMP checksum");
}

#[test]
fn guest_answers_arp_and_icmp_echo_from_ring3_and_powers_off_cleanly() {
    const IP: [u8; 4] = [10, 77, 0, 2];
    const LOOP: u16 = 2000;
    const BURST: u16 = 8;
    let g = Running::boot(&format!("net 10.77.0.2 {}", 2 + LOOP));
    assert!(
        g.sink
            .text()
            .contains("net: mac=52:54:00:12:34:56 ip=10.77.0.2 mtu=1340 ready"),
        "{}",
        g.sink.text()
    );

    // ARP for someone else: ignored. Then for the guest: answered.
    g.send(&arp_request([10, 77, 0, 9]));
    g.send(&arp_request(IP));
    let r = g.recv();
    assert_eq!(r.len(), 42);
    assert_eq!(&r[0..6], &VNET_MAC);
    assert_eq!(&r[6..12], &GUEST_MAC);
    assert_eq!(&r[12..14], &[8, 6]);
    assert_eq!(&r[14..22], &[0, 1, 8, 0, 6, 4, 0, 2], "an ARP reply");
    assert_eq!(&r[22..28], &GUEST_MAC, "sender MAC");
    assert_eq!(&r[28..32], &IP, "sender IP");
    assert_eq!(&r[32..38], &VNET_MAC, "target MAC");
    assert_eq!(&r[38..42], &HOST_IP, "target IP");
    println!("arp reply: {r:02x?}");

    // An echo with a bad checksum: ignored. Then a small one and one of
    // exactly the MTU: answered.
    let mut bad = echo_request(IP, 0x77, 1, b"corrupted");
    bad[40] ^= 0xff;
    g.send(&bad);
    let small: Vec<u8> = (0..56u8).collect();
    g.send(&echo_request(IP, 0x77, 2, &small));
    let r = g.recv();
    check_echo_reply(&r, IP, 0x77, 2, &small);
    println!("echo reply: {r:02x?}");
    let big: Vec<u8> = (0..usize::from(DEFAULT_MTU) - 28)
        .map(|i| (i * 7) as u8)
        .collect();
    let req = echo_request(IP, 0x77, 3, &big);
    assert_eq!(req.len(), MAX_FRAME);
    g.send(&req);
    check_echo_reply(&g.recv(), IP, 0x77, 3, &big);

    // Throughput: bursts of echoes, each burst answered before the next.
    let t0 = Instant::now();
    let mut seq = 100u16;
    for _ in 0..LOOP / BURST {
        for i in 0..BURST {
            g.send(&echo_request(IP, 0x78, seq + i, &small));
        }
        for i in 0..BURST {
            check_echo_reply(&g.recv(), IP, 0x78, seq + i, &small);
        }
        seq += BURST;
    }
    let dt = t0.elapsed();
    println!(
        "net loop: {LOOP} echoes (98-byte frames, bursts of {BURST}) in {:.1} ms: \
         {:.0} echoes/s, {:.0} frames/s rx+tx",
        dt.as_secs_f64() * 1e3,
        f64::from(LOOP) / dt.as_secs_f64(),
        2.0 * f64::from(LOOP) / dt.as_secs_f64()
    );

    let handle = g.handle.clone();
    let (exit, out) = g.finish();
    assert_eq!(exit, VmExit::PowerOff { status: 0 }, "{out}");
    let echoes = 2 + u64::from(LOOP);
    let want = format!(
        "net: arp=1 echo={echoes} other=2 rx={} tx={}",
        echoes + 3,
        echoes + 1
    );
    assert!(out.contains(&want), "want {want:?} in {out:?}");
    let s = handle.net_stats().expect("the VM has a network device");
    println!("{s:?}");
    assert_eq!(s.rx_frames, echoes + 3);
    assert_eq!(s.tx_frames, echoes + 1);
    assert_eq!(s.tx_malformed + s.tx_backend_dropped, 0);
    assert_eq!(
        s.rx_too_large + s.rx_too_short + s.rx_no_buffer + s.rx_bad_buffer + s.rx_not_ready,
        0
    );
}

#[test]
fn frames_above_the_mtu_from_the_host_are_dropped_and_counted_not_delivered() {
    const IP: [u8; 4] = [10, 77, 0, 3];
    // No echo count: the guest runs until the stop frame.
    let g = Running::boot("net 10.77.0.3");
    // One byte over the MTU, far over it, and the largest a socket carries:
    // all valid echo requests the guest would answer if it saw them.
    for extra in [1usize, 8000, 60000] {
        let payload = vec![0xa5; usize::from(DEFAULT_MTU) - 28 + extra];
        let f = echo_request(IP, 0x99, extra as u16, &payload);
        assert_eq!(f.len(), MAX_FRAME + extra);
        g.send(&f);
    }
    g.send(&echo_request(IP, 0x99, 7, b"fits"));
    check_echo_reply(&g.recv(), IP, 0x99, 7, b"fits");
    g.send(&eth(GUEST_MAC, 0x88b5, b"stop"));
    let handle = g.handle.clone();
    let (exit, out) = g.finish();
    assert_eq!(exit, VmExit::PowerOff { status: 0 }, "{out}");
    assert!(
        out.contains("net: arp=0 echo=1 other=0 rx=2 tx=1"),
        "the guest saw only the frame that fits: {out}"
    );
    let s = handle.net_stats().unwrap();
    assert_eq!(s.rx_too_large, 3, "{s:?}");
    assert_eq!((s.rx_frames, s.tx_frames), (2, 1), "{s:?}");
}

#[test]
fn net_without_a_device_or_with_a_bad_address_fails_clearly() {
    require_kvm();
    for (cmdline, want) in [
        ("net 10.77.0.2 1", "net: no virtio-net device"),
        ("net 10.77.0 1", "net: usage: net A.B.C.D [ECHOES]"),
    ] {
        let sink = Sink::default();
        let cfg = VmConfig {
            vcpus: 1,
            mem_bytes: 64 << 20,
            kernel: Payload::Path(guest_elf()),
            initrd: None,
            cmdline: cmdline.into(),
            disk_ro: None,
            scratch: None,
            net: None,
        };
        let exit = Vm::boot(cfg, Box::new(sink.clone()), None).unwrap();
        let out = sink.text();
        assert_eq!(exit, VmExit::PowerOff { status: 9 }, "{out}");
        assert!(out.contains(want), "want {want:?} in {out:?}");
    }
}
