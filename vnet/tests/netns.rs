//! Real vnet nodes in real network namespaces joined by veth pairs.
//!
//! Needs root (namespaces, veth, TUN); fails rather than skips without it.
//! Every namespace is deleted on drop, so a failing test cleans up too.

use cpushare_vnet::node::{NodeStatus, Output, Outputs, PeerConfig};
use cpushare_vnet::shell::config::Config;
use cpushare_vnet::{Node, NodeConfig, SecretKey};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn command");
    assert!(st.success(), "command failed: {args:?}");
}

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "vnet integration tests need root (network namespaces, veth, TUN); run them as root"
    );
}

/// Namespaces, veths and node processes of one test; torn down on drop.
struct Lab {
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(test: &str) -> Self {
        assert_root();
        Self {
            tag: format!("vt{}{}", std::process::id() % 100_000, test),
            namespaces: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn ns(&mut self, name: &str) -> String {
        let ns = format!("{}{}", self.tag, name);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between two namespaces with /24 addresses `a_ip`, `b_ip`.
    fn link(&self, a: &str, a_ip: &str, b: &str, b_ip: &str) {
        let (an, bn) = (
            format!("v{}", &b[b.len() - 1..]),
            format!("v{}", &a[a.len() - 1..]),
        );
        sh(&[
            "ip", "link", "add", &an, "netns", a, "type", "veth", "peer", "name", &bn, "netns", b,
        ]);
        sh(&[
            "ip",
            "-n",
            a,
            "addr",
            "add",
            &format!("{a_ip}/24"),
            "dev",
            &an,
        ]);
        sh(&[
            "ip",
            "-n",
            b,
            "addr",
            "add",
            &format!("{b_ip}/24"),
            "dev",
            &bn,
        ]);
        sh(&["ip", "-n", a, "link", "set", &an, "up"]);
        sh(&["ip", "-n", b, "link", "set", &bn, "up"]);
    }

    fn start(&mut self, ns: &str, cfg: &Config) {
        let name = format!("{}.json", cfg.address);
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(cfg).expect("config serializes"),
        )
        .expect("write config");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_vnet-node"), "run"])
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn vnet-node");
        self.children.push(child);
    }

    fn status_path(&self, addr: Ipv4Addr) -> std::path::PathBuf {
        self.dir.path().join(format!("{addr}.status.json"))
    }

    fn status(&self, addr: Ipv4Addr) -> NodeStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(b) = std::fs::read(self.status_path(addr)) {
                if let Ok(s) = serde_json::from_slice(&b) {
                    return s;
                }
            }
            assert!(Instant::now() < deadline, "no status from {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Status of `addr` once `ok` holds (the file is rewritten every 250 ms).
    fn status_when(&self, addr: Ipv4Addr, ok: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = self.status(addr);
            if ok(&st) || Instant::now() > deadline {
                return st;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_alive(&mut self) {
        for c in &mut self.children {
            assert!(c.try_wait().expect("wait").is_none(), "a vnet-node exited");
        }
    }

    /// Pings until one reply arrives (nodes starting, handshakes), then `count` more must all succeed.
    fn ping(&self, ns: &str, dst: Ipv4Addr, count: u32) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let dst = dst.to_string();
        while !Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", &dst])
            .stdout(Stdio::null())
            .status()
            .expect("ping")
            .success()
        {
            assert!(Instant::now() < deadline, "{dst} never answered from {ns}");
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.1",
                "-W",
                "2",
                &dst,
            ])
            .output()
            .expect("ping");
        assert!(
            out.status.success(),
            "ping {dst} from {ns}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let f_ns = std::fs::File::open(&path).expect("open netns");
        // SAFETY: valid namespace fd; setns only changes this thread's network namespace.
        let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
}

struct Member {
    key: SecretKey,
    addr: Ipv4Addr,
    endpoint: SocketAddr,
}

fn member(last: u8, endpoint: &str) -> Member {
    Member {
        key: SecretKey::generate(),
        addr: Ipv4Addr::new(10, 77, 0, last),
        endpoint: endpoint.parse().expect("endpoint"),
    }
}

fn config(
    lab: &Lab,
    me: &Member,
    peers: &[(&Member, Vec<SocketAddr>)],
    relay: Option<&Member>,
    relay_for_others: bool,
) -> Config {
    Config {
        private_key: me.key.clone(),
        psk: None,
        listen: me.endpoint,
        tun: "vnet0".into(),
        subnet: "10.77.0.0/16".parse().expect("subnet"),
        address: me.addr,
        mtu: cpushare_vnet::wire::DEFAULT_INNER_MTU,
        relay: relay.map(|r| r.key.public_key()),
        relay_for_others,
        peers: peers
            .iter()
            .map(|(m, eps)| PeerConfig {
                public_key: m.key.public_key(),
                address: m.addr,
                endpoints: eps.clone(),
            })
            .collect(),
        status_file: Some(lab.status_path(me.addr)),
        gso: true,
    }
}

/// Sends `len` bytes over TCP from `from_ns` to `to`:5001 in `to_ns` and checks they all arrive intact.
fn tcp_transfer(from_ns: &str, to_ns: &str, to: Ipv4Addr, len: usize) {
    let listener = in_ns(to_ns, move || {
        std::net::TcpListener::bind((to, 5001)).expect("bind in ns")
    })
    .join()
    .expect("bind thread");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got
    });
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let expect = payload.clone();
    in_ns(from_ns, move || {
        let mut c = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((to, 5001)),
            Duration::from_secs(10),
        )
        .expect("connect");
        c.write_all(&payload).expect("write");
    })
    .join()
    .expect("client thread");
    let got = server.join().expect("server thread");
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "TCP payload corrupted across vnet");
}

#[test]
fn two_namespaces_ping_and_tcp_across_vnet() {
    let mut lab = Lab::new("d");
    let (na, nb) = (lab.ns("a"), lab.ns("b"));
    lab.link(&na, "172.31.0.1", &nb, "172.31.0.2");
    let a = member(1, "172.31.0.1:51820");
    let b = member(2, "172.31.0.2:51820");
    lab.start(
        &na,
        &config(&lab, &a, &[(&b, vec![b.endpoint])], None, false),
    );
    lab.start(
        &nb,
        &config(&lab, &b, &[(&a, vec![a.endpoint])], None, false),
    );
    lab.ping(&na, b.addr, 5);
    lab.ping(&nb, a.addr, 5);
    tcp_transfer(&na, &nb, b.addr, 8 << 20);
    let st = lab.status_when(a.addr, |s| s.peers[0].bytes_out > 8 << 20);
    assert_eq!(serde_json::to_value(st.peers[0].path).unwrap(), "direct");
    assert!(st.peers[0].bytes_out > 8 << 20);
    lab.assert_alive();
}

#[test]
fn third_node_reachable_only_through_relay_goes_relayed() {
    let mut lab = Lab::new("r");
    let (nr, nb, nc) = (lab.ns("r"), lab.ns("b"), lab.ns("c"));
    lab.link(&nr, "172.31.1.1", &nb, "172.31.1.2");
    lab.link(&nr, "172.31.2.1", &nc, "172.31.2.3");
    let r = member(1, "0.0.0.0:51820");
    let b = member(2, "172.31.1.2:51820");
    let c = member(3, "172.31.2.3:51820");
    let r_for_b: SocketAddr = "172.31.1.1:51820".parse().unwrap();
    let r_for_c: SocketAddr = "172.31.2.1:51820".parse().unwrap();
    lab.start(
        &nr,
        &config(
            &lab,
            &r,
            &[(&b, vec![b.endpoint]), (&c, vec![c.endpoint])],
            None,
            true,
        ),
    );
    // B and C know each other's real endpoints, but no route joins them.
    lab.start(
        &nb,
        &config(
            &lab,
            &b,
            &[(&r, vec![r_for_b]), (&c, vec![c.endpoint])],
            Some(&r),
            false,
        ),
    );
    lab.start(
        &nc,
        &config(
            &lab,
            &c,
            &[(&r, vec![r_for_c]), (&b, vec![b.endpoint])],
            Some(&r),
            false,
        ),
    );
    lab.ping(&nb, r.addr, 3);
    lab.ping(&nc, r.addr, 3);
    lab.ping(&nb, c.addr, 5);
    tcp_transfer(&nb, &nc, c.addr, 2 << 20);
    let st = lab.status(b.addr);
    let to_c = st
        .peers
        .iter()
        .find(|p| p.address == c.addr.to_string())
        .expect("peer c");
    assert_eq!(serde_json::to_value(to_c.path).unwrap(), "relayed");
    assert!(lab.status_when(r.addr, |s| s.relayed > 100).relayed > 100);
    lab.assert_alive();
}

#[test]
fn injected_garbage_replayed_and_forged_packets_are_counted_not_fatal() {
    let mut lab = Lab::new("g");
    let (na, nb) = (lab.ns("a"), lab.ns("b"));
    lab.link(&na, "172.31.0.1", &nb, "172.31.0.2");
    let a = member(1, "172.31.0.1:51820");
    let b = member(2, "172.31.0.2:51820");
    // The test itself plays member M from namespace A, and lies about its address.
    let m = member(3, "172.31.0.1:51999");
    lab.start(
        &na,
        &config(&lab, &a, &[(&b, vec![b.endpoint])], None, false),
    );
    lab.start(
        &nb,
        &config(
            &lab,
            &b,
            &[(&a, vec![a.endpoint]), (&m, vec![m.endpoint])],
            None,
            false,
        ),
    );
    lab.ping(&na, b.addr, 2);

    let (m_key, b_pub, b_ep, m_ep) = (m.key.clone(), b.key.public_key(), b.endpoint, m.endpoint);
    in_ns(&na, move || {
        let sock = UdpSocket::bind(m_ep).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let now = Instant::now();
        let spoofed_self = Ipv4Addr::new(10, 77, 0, 1); // A's address, not M's
        let cfg = NodeConfig::new(
            m_key,
            "10.77.0.0/16".parse().unwrap(),
            spoofed_self,
            Duration::from_secs(2_000_000_000),
        );
        let mut node = Node::new(cfg, now).expect("node");
        node.add_peer(
            PeerConfig {
                public_key: b_pub,
                address: Ipv4Addr::new(10, 77, 0, 2),
                endpoints: vec![b_ep],
            },
            now,
        )
        .unwrap();
        let mut out = Outputs::new();
        let mut ping = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2, 8, 0, 0xf7, 0xff,
            0, 0, 0, 0,
        ];
        let c = ip_checksum(&ping[..20]);
        ping[10..12].copy_from_slice(&c.to_be_bytes());
        node.handle_tun_packet(now, &ping, &mut out);
        let mut sent_data = Vec::new();
        let mut buf = vec![0u8; 2048];
        for _ in 0..4 {
            for o in out.iter() {
                if let Output::Transmit { dst, bytes } = o {
                    sock.send_to(bytes.as_slice(), dst).expect("send");
                    if bytes.as_slice()[0] == 4 {
                        sent_data.push(bytes.as_slice().to_vec());
                    }
                }
            }
            out.clear();
            if !sent_data.is_empty() {
                break;
            }
            let (n, from) = sock.recv_from(&mut buf).expect("handshake response from B");
            node.handle_udp(Instant::now(), from, &buf[..n], &mut out);
        }
        let data = sent_data.pop().expect("M sent a data packet");
        // Replays of a valid packet.
        for _ in 0..3 {
            sock.send_to(&data, b_ep).unwrap();
        }
        // Forgeries: flipped ciphertext with fresh counters.
        for i in 0..5u64 {
            let mut f = data.clone();
            f[8..16].copy_from_slice(&(1_000 + i).to_le_bytes());
            f[20] ^= 0x55;
            sock.send_to(&f, b_ep).unwrap();
        }
        // Garbage and truncation.
        for len in [0usize, 1, 3, 15, 31, 100, 1400] {
            let g: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            sock.send_to(&g, b_ep).unwrap();
            sock.send_to(&data[..len.min(data.len())], b_ep).unwrap();
        }
    })
    .join()
    .expect("injector");
    let st = lab.status_when(b.addr, |s| {
        s.drops.get("malformed").copied().unwrap_or(0) >= 8
    });
    let d = |k: &str| st.drops.get(k).copied().unwrap_or(0);
    assert_eq!(d("spoofed_source"), 1, "{:?}", st.drops);
    assert!(d("replay") >= 3, "{:?}", st.drops);
    assert!(d("forged") >= 5, "{:?}", st.drops);
    assert!(d("malformed") >= 8, "{:?}", st.drops);
    lab.assert_alive();
    // Still serving.
    lab.ping(&na, b.addr, 3);
    tcp_transfer(&na, &nb, b.addr, 1 << 20);
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Builds one Ethernet frame from the guest's MAC to the vnet's virtual MAC.
fn guest_frame(guest_mac: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = cpushare_vnet::router::arp::VIRTUAL_MAC.to_vec();
    f.extend_from_slice(&guest_mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn guest_frames_on_a_seqpacket_link_reach_a_tun_peer_and_get_answers() {
    use cpushare_vnet::shell::{self, frames::FrameLink, Local};
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut lab = Lab::new("f");
    let (na, nb) = (lab.ns("a"), lab.ns("b"));
    lab.link(&na, "172.31.0.1", &nb, "172.31.0.2");
    let a = member(1, "172.31.0.1:51820");
    let b = member(2, "172.31.0.2:51820");
    lab.start(
        &na,
        &config(&lab, &a, &[(&b, vec![b.endpoint])], None, false),
    );
    // Member B is a guest on a frame link (as a VMM's virtio-net would give),
    // its node run by the shell in this process, inside namespace B.
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: socketpair returned two fresh descriptors, each owned once here.
    let (ours, guest) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (b_key, b_addr, b_ep, a_pub, a_addr, a_ep) = (
        b.key.clone(),
        b.addr,
        b.endpoint,
        a.key.public_key(),
        a.addr,
        a.endpoint,
    );
    let running = in_ns(&nb, move || {
        let subnet: cpushare_vnet::router::Subnet = "10.77.0.0/16".parse().unwrap();
        let cfg = NodeConfig::new(b_key, subnet, b_addr, shell::unix_now());
        let mut node = Node::new(cfg, Instant::now()).expect("node");
        node.add_peer(
            PeerConfig {
                public_key: a_pub,
                address: a_addr,
                endpoints: vec![a_ep],
            },
            Instant::now(),
        )
        .expect("peer");
        let sock = shell::bind(b_ep).expect("bind");
        shell::run(
            node,
            sock,
            Local::Frames(FrameLink::new(ours, subnet)),
            true,
            None,
        )
        .expect("shell")
    })
    .join()
    .expect("node thread");
    let guest = std::os::unix::net::UnixDatagram::from(guest);
    guest
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mac = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
    // ARP: who has A's address?
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&b_addr.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&a_addr.octets());
    let mut f = guest_frame(mac, 0x0806, &arp);
    f[..6].copy_from_slice(&[0xff; 6]);
    guest.send(&f).expect("send arp");
    let mut buf = vec![0u8; 4096];
    let n = guest.recv(&mut buf).expect("ARP reply");
    assert_eq!(&buf[12..14], &[8, 6]);
    assert_eq!(&buf[28..32], &a_addr.octets(), "reply names A's address");
    assert_eq!(n, 42);
    // ICMP echo to A's kernel, until the handshake is done and it answers.
    let mut ping = vec![
        0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0x12, 0x34,
        0, 1,
    ];
    ping[12..16].copy_from_slice(&b_addr.octets());
    ping[16..20].copy_from_slice(&a_addr.octets());
    let c = ip_checksum(&ping[..20]);
    ping[10..12].copy_from_slice(&c.to_be_bytes());
    let c = ip_checksum(&ping[20..]);
    ping[22..24].copy_from_slice(&c.to_be_bytes());
    let deadline = Instant::now() + Duration::from_secs(15);
    let reply = loop {
        assert!(Instant::now() < deadline, "no echo reply reached the guest");
        guest
            .send(&guest_frame(mac, 0x0800, &ping))
            .expect("send echo");
        let Ok(n) = guest.recv(&mut buf) else {
            continue;
        };
        let ip = &buf[14..n];
        if buf[12..14] == [8, 0] && ip.len() >= 28 && ip[9] == 1 && ip[20] == 0 {
            break ip.to_vec();
        }
    };
    assert_eq!(&buf[..6], &mac, "the frame is addressed to the guest");
    assert_eq!(&reply[12..16], &a_addr.octets());
    assert_eq!(&reply[16..20], &b_addr.octets());
    assert_eq!(&reply[24..26], &[0x12, 0x34], "our echo id came back");
    let st = running.status();
    assert!(st.peers[0].bytes_in > 0 && st.peers[0].bytes_out > 0);
    lab.assert_alive();
}

/// The ICMP echo requests namespace `ns` has received so far.
fn icmp_in_echos(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .expect("read snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (
        icmp.next().expect("Icmp names"),
        icmp.next().expect("values"),
    );
    let i = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .expect("InEchos column");
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .expect("InEchos value")
}

/// Pings `dst` from `ns` (optionally from source `src`) and says whether any reply came.
fn ping_answered(ns: &str, src: Option<&str>, dst: &str, count: u32) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "ping", "-c", &count.to_string()]);
    cmd.args(["-i", "0.2", "-W", "1"]);
    if let Some(s) = src {
        cmd.args(["-I", s]);
    }
    cmd.arg(dst)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ping")
        .success()
}

#[test]
fn a_lease_guest_reaches_members_but_not_the_seller_or_outside_the_subnet() {
    let mut lab = Lab::new("e");
    // S: the seller's host; B: another member; G: the lease's guest, whose
    // only interface is the lease node's TUN (moved out of S, the node stays in S).
    let (ns, nb, ng) = (lab.ns("s"), lab.ns("b"), lab.ns("g"));
    lab.link(&ns, "172.31.5.1", &nb, "172.31.5.2");
    let g = member(1, "172.31.5.1:51820");
    let b = member(2, "172.31.5.2:51820");
    lab.start(
        &ns,
        &config(&lab, &g, &[(&b, vec![b.endpoint])], None, false),
    );
    lab.start(
        &nb,
        &config(&lab, &b, &[(&g, vec![g.endpoint])], None, false),
    );
    lab.status(g.addr); // written once the TUN exists
    sh(&["ip", "-n", &ns, "link", "set", "vnet0", "netns", &ng]);
    let guest_ip = format!("{}/16", g.addr);
    sh(&["ip", "-n", &ng, "addr", "add", &guest_ip, "dev", "vnet0"]);
    sh(&[
        "ip",
        "-n",
        &ng,
        "addr",
        "add",
        "10.77.0.9/16",
        "dev",
        "vnet0",
    ]);
    sh(&["ip", "-n", &ng, "link", "set", "vnet0", "up"]);
    sh(&["ip", "-n", &ng, "route", "add", "default", "dev", "vnet0"]);

    // A member inside the subnet answers.
    lab.ping(&ng, b.addr, 3);

    let denied = |lab: &Lab| {
        lab.status(g.addr)
            .drops
            .get("egress_denied")
            .copied()
            .unwrap_or(0)
    };
    let before = denied(&lab);
    let echos_before = icmp_in_echos(&ns);
    for dst in ["172.31.5.1", "172.31.5.2", "10.78.0.2", "192.0.2.1"] {
        assert!(
            !ping_answered(&ng, None, dst, 3),
            "the guest reached {dst} outside its subnet"
        );
    }
    let st = lab.status_when(g.addr, |s| {
        s.drops.get("egress_denied").copied().unwrap_or(0) >= before + 12
    });
    let after = st.drops.get("egress_denied").copied().unwrap_or(0);
    assert!(
        after >= before + 12,
        "12 denied echo requests, counter went {before} -> {after}"
    );
    assert_eq!(
        icmp_in_echos(&ns),
        echos_before,
        "the seller's host saw none of them"
    );

    // Posing as another address of the subnet is refused too.
    let spoofed_before = st.drops.get("spoofed_source").copied().unwrap_or(0);
    assert!(!ping_answered(
        &ng,
        Some("10.77.0.9"),
        &b.addr.to_string(),
        3
    ));
    let st = lab.status_when(g.addr, |s| {
        s.drops.get("spoofed_source").copied().unwrap_or(0) >= spoofed_before + 3
    });
    assert!(st.drops.get("spoofed_source").copied().unwrap_or(0) >= spoofed_before + 3);

    // And the member is still reachable afterwards.
    lab.ping(&ng, b.addr, 2);
    lab.assert_alive();
}
