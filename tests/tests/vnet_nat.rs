//! A buyer's virtual network across NATs, with every part real: a broker,
//! two buyers and three seller daemons, each in its own network namespace,
//! the sellers behind an easy NAT (MASQUERADE), a hard NAT (MASQUERADE
//! --random-fully) and no NAT. Each seller runs a real wasm lease of the
//! buyer; its vnet node registers through the broker with the seller's
//! broker-issued identity, and is attached to a TUN interface in the
//! seller's namespace standing in for the lease's guest NIC
//! (`CPUSHARE_SELLER_VNET_TUN=1`).
//!
//! ```text
//!            broker (172.30.255.1, on inet's lo)
//!   alice ──┐                 ┌── nat-easy ── seller E (192.168.2.2)
//!  mallory ─┼── inet (router) ┼── nat-hard ── seller H (192.168.3.2)
//!           │                 └── seller N (172.30.4.2, no NAT)
//! ```
//!
//! Needs root and iptables; fails (does not skip) without them. Every
//! namespace and process is removed on drop, so a failing test cleans up.

use cpushare_tests::netlab::*;
use cpushare_tests::{bin, wasm_modules};
use cpushare_vnet::node::{NodeStatus, Output, Outputs, PeerConfig};
use cpushare_vnet::{Node, NodeConfig, PublicKey, SecretKey};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_buyers_vnet_crosses_nats_relays_only_the_hard_pair_and_keeps_strangers_out() {
    let wasm = wasm_modules();
    let mut lab = Lab::new();
    let inet = lab.ns("inet");
    let (na, nm) = (lab.ns("alice"), lab.ns("mal"));
    let (nat_e, nat_h) = (lab.ns("nate"), lab.ns("nath"));
    let (se, sh_, sn) = (lab.ns("se"), lab.ns("sh"), lab.ns("sn"));
    // The internet: one router namespace, the broker on its loopback.
    lab.forward(&inet);
    lab.link(&inet, "ia", "172.30.1.1", &na, "wan", "172.30.1.2");
    lab.link(&inet, "ie", "172.30.2.1", &nat_e, "wan", "172.30.2.2");
    lab.link(&inet, "ih", "172.30.3.1", &nat_h, "wan", "172.30.3.2");
    lab.link(&inet, "in", "172.30.4.1", &sn, "wan", "172.30.4.2");
    lab.link(&inet, "im", "172.30.5.1", &nm, "wan", "172.30.5.2");
    lab.link(&nat_e, "lan", "192.168.2.1", &se, "eth", "192.168.2.2");
    lab.link(&nat_h, "lan", "192.168.3.1", &sh_, "eth", "192.168.3.2");
    for (ns, via) in [
        (&na, "172.30.1.1"),
        (&nat_e, "172.30.2.1"),
        (&nat_h, "172.30.3.1"),
        (&sn, "172.30.4.1"),
        (&nm, "172.30.5.1"),
        (&se, "192.168.2.1"),
        (&sh_, "192.168.3.1"),
    ] {
        lab.route_default(ns, via);
    }
    lab.forward(&nat_e);
    lab.forward(&nat_h);
    lab.masquerade(&nat_e, "wan", false);
    lab.masquerade(&nat_h, "wan", true);

    // Broker, accounts, sellers.
    let broker = lab.broker(&inet, BROKER_IP);
    let mut seller_homes = Vec::new();
    for (ns, name) in [(&se, "easy"), (&sh_, "hard"), (&sn, "open")] {
        let run = ["--cpus", "1", "--mem", "2G", "--price", "0.001"];
        seller_homes.push(lab.seller(&broker, ns, name, true, &run));
    }
    let alice = lab.buyer(&broker, &na, "alice");
    let mallory = lab.buyer(&broker, &nm, "mallory");

    // Alice's host joins her network, then her leases start on all three sellers.
    let mut cmd = Lab::cmd(&na, &bin("cpushare"));
    cmd.arg("--home").arg(&alice).args(["--json", "net", "up"]);
    let up: Value =
        serde_json::from_str(&lab.spawn("alice net up", cmd).wait_for("\"tun\"", LAB_WAIT))
            .expect("net up prints JSON");
    let alice_addr: Ipv4Addr = up["address"].as_str().expect("address").parse().unwrap();
    let mut cmd = Lab::cmd(&na, &bin("cpushare"));
    cmd.arg("--home").arg(&alice).args([
        "run",
        wasm.join("spin.wasm").to_str().expect("utf8 path"),
        "--instances",
        "3",
        "--cpus",
        "1",
        "--minutes",
        "10",
        "--max-price",
        "0.01",
        "--wait",
        "60",
    ]);
    lab.spawn("alice run", cmd);
    let st = eventually(90, "three leases in alice's net status", || {
        let st = net_status(&alice)?;
        let peers = st["peers"].as_array()?;
        (peers.len() == 3 && peers.iter().all(|p| p["lease"].is_string())).then_some(st)
    });
    assert_eq!(st["address"], alice_addr.to_string());
    let statuses: Vec<NodeStatus> = seller_homes
        .iter()
        .map(|h| eventually(30, "a lease node status", || lease_status(h)))
        .collect();
    let (e, h, n) = (
        statuses[0].address,
        statuses[1].address,
        statuses[2].address,
    );
    for s in &statuses {
        assert_eq!(s.subnet.to_string(), st["subnet"], "one subnet per buyer");
    }
    let (diag_alice, diag_sellers) = (alice.clone(), seller_homes.clone());
    DIAG.with(|d| {
        *d.borrow_mut() = Some(Box::new(move || {
            let mut out = format!("alice: {:?}\n", net_status(&diag_alice));
            for h in &diag_sellers {
                out += &format!("{:?}\n", lease_status(h));
            }
            out
        }))
    });

    // Every member reaches every other, and TCP flows on each kind of path.
    for (ns, dst) in [(&na, e), (&na, h), (&na, n), (&se, n), (&sh_, n), (&sn, e)] {
        ping(ns, dst, 3);
    }
    ping(&se, h, 3); // the hard pair: through alice's host
    ping(&sh_, e, 3);
    tcp_transfer(&na, &sh_, h, 5001, 1 << 20);
    tcp_transfer(&se, &sh_, h, 5002, 1 << 20);
    tcp_transfer(&sn, &se, e, 5003, 1 << 20);

    // Paths: only the pair behind two NATs, one of them hard, is relayed.
    let want = |home: &Path, expect: &[(Ipv4Addr, &str)]| {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let s = lease_status(home).expect("lease status");
            let got: Vec<(Ipv4Addr, String)> =
                expect.iter().map(|(a, _)| (*a, path_to(&s, *a))).collect();
            if expect.iter().zip(&got).all(|((_, want), (_, g))| g == want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: paths {got:?}, expected {expect:?}",
                s.address
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    want(
        &seller_homes[0],
        &[(h, "relayed"), (n, "direct"), (alice_addr, "direct")],
    );
    want(
        &seller_homes[1],
        &[(e, "relayed"), (n, "direct"), (alice_addr, "direct")],
    );
    want(
        &seller_homes[2],
        &[(e, "direct"), (h, "direct"), (alice_addr, "direct")],
    );
    let st = eventually(30, "alice's host direct to every lease", || {
        let st = net_status(&alice)?;
        let peers = st["peers"].as_array()?;
        peers
            .iter()
            .all(|p| p["path"] == "direct" && p["rtt_us"].is_u64())
            .then_some(st)
    });
    eprintln!("alice's net status: {st:#}");
    for (name, home) in ["easy", "hard", "open"].iter().zip(&seller_homes) {
        let s = lease_status(home).expect("lease status");
        let paths: Vec<String> = s
            .peers
            .iter()
            .map(|p| format!("{} {:?} {:?}", p.address, p.path, p.endpoint))
            .collect();
        eprintln!("{name} lease {}: {paths:?}", s.address);
    }
    assert!(
        st["relayed"].as_u64().expect("relayed count") > 0,
        "alice's host relayed the hard pair: {st}"
    );
    for p in st["peers"].as_array().expect("peers") {
        assert!(p["bytes_in"].as_u64().unwrap() > 0 && p["bytes_out"].as_u64().unwrap() > 0);
    }
    // The human table names every lease and its path.
    let table = run_ok(
        Command::new(bin("cpushare"))
            .arg("--home")
            .arg(&alice)
            .args(["net", "status"]),
    );
    for p in st["peers"].as_array().expect("peers") {
        let lease = p["lease"].as_str().expect("lease id");
        let line = table
            .lines()
            .find(|l| l.contains(lease))
            .unwrap_or_else(|| panic!("{lease} missing from:\n{table}"));
        assert!(line.contains("direct") && line.contains("ms"), "{line}");
    }

    // Another buyer: its own subnet, no peers, no route into alice's.
    let mut cmd = Lab::cmd(&nm, &bin("cpushare"));
    cmd.arg("--home").arg(&mallory).args(["net", "up"]);
    lab.spawn("mallory net up", cmd)
        .wait_for("vnet up", LAB_WAIT);
    let mst = net_status(&mallory).expect("mallory's status");
    assert_ne!(mst["subnet"], st["subnet"], "one subnet per buyer");
    assert_eq!(mst["peers"].as_array().map(Vec::len), Some(0), "{mst}");
    assert!(ping_fails(&nm, n), "mallory reached alice's lease {n}");
    // Mallory talks vnet to the open seller's lease node directly: a valid
    // handshake from a key the broker never bound to alice's network,
    // forgeries and garbage. All are dropped and counted; nothing crashes.
    let open = st["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["address"] == n.to_string())
        .expect("open seller's lease in alice's status")
        .clone();
    let n_key = PublicKey::from_hex(open["key"].as_str().expect("key")).expect("hex key");
    let n_ep: SocketAddr = open["endpoint"]
        .as_str()
        .expect("endpoint")
        .parse()
        .unwrap();
    let before = lease_status(&seller_homes[2]).expect("status");
    let subnet = statuses[2].subnet;
    let sent = in_ns(&nm, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let now = Instant::now();
        let me = Ipv4Addr::from(u32::from(n) ^ 0x70);
        let cfg = NodeConfig::new(
            SecretKey::generate(),
            subnet,
            me,
            Duration::from_secs(2_000_000_000),
        );
        let mut node = Node::new(cfg, now).expect("node");
        node.add_peer(
            PeerConfig {
                public_key: n_key,
                address: n,
                endpoints: vec![n_ep],
            },
            now,
        )
        .expect("peer");
        let mut out = Outputs::new();
        // A ping for the lease starts the handshake.
        let mut icmp = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0];
        icmp.extend_from_slice(&me.octets());
        icmp.extend_from_slice(&n.octets());
        icmp.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
        let sum = ip_checksum(&icmp[..20]);
        icmp[10..12].copy_from_slice(&sum.to_be_bytes());
        node.handle_tun_packet(now, &icmp, &mut out);
        let mut sent = 0;
        for _ in 0..3 {
            for o in out.iter() {
                if let Output::Transmit { bytes, .. } = o {
                    sock.send_to(bytes.as_slice(), n_ep).expect("send");
                    sent += 1;
                    let mut forged = bytes.as_slice().to_vec();
                    let last = forged.len() - 1;
                    forged[last] ^= 1;
                    sock.send_to(&forged, n_ep).expect("send");
                    sent += 1;
                }
            }
            out.clear();
            node.handle_timeout(now + Duration::from_secs(6), &mut out);
        }
        for len in [1usize, 4, 31, 148, 1400] {
            let g: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
            sock.send_to(&g, n_ep).expect("send");
            sent += 1;
        }
        sent
    })
    .join()
    .expect("injector");
    let after = eventually(10, "the injected packets counted", || {
        let s = lease_status(&seller_homes[2])?;
        (drops_total(&s) >= drops_total(&before) + sent as u64).then_some(s)
    });
    eprintln!(
        "open lease drops before {:?} after {:?} ({sent} injected)",
        before.drops, after.drops
    );
    let d = |k: &str| after.drops.get(k).copied().unwrap_or(0);
    assert!(d("unknown_peer") > 0, "{:?}", after.drops);
    assert!(d("malformed") > 0, "{:?}", after.drops);
    assert_eq!(after.peers.len(), 3, "a stranger became a peer");
    assert!(sent >= 7, "the injector sent {sent} datagrams");
    ping(&na, n, 2); // still serving

    // The relay dies: the broker drops alice's host from the network and
    // names the lease without NAT as the relay; the hard pair moves there.
    let relayed_by_n = lease_status(&seller_homes[2]).expect("status").relayed;
    let relay_idx = lab
        .procs
        .iter()
        .position(|p| p.name == "alice net up")
        .expect("alice's net up");
    lab.procs[relay_idx].kill();
    let moved = eventually(90, "the easy seller's view without alice's host", || {
        let s = lease_status(&seller_homes[0])?;
        (path_to(&s, alice_addr) == "absent").then_some(s)
    });
    eprintln!("after the relay died, easy lease sees: {:?}", moved.peers);
    ping(&se, h, 3);
    ping(&sh_, e, 3);
    tcp_transfer(&se, &sh_, h, 5004, 256 << 10);
    let s = lease_status(&seller_homes[0]).expect("status");
    assert_eq!(path_to(&s, h), "relayed", "{:?}", s.peers);
    // The status file is rewritten every 250 ms: wait for the transfer to show.
    let n_now = eventually(
        10,
        "the open seller's lease to count the relayed transfer",
        || {
            let st = lease_status(&seller_homes[2])?;
            (st.relayed > relayed_by_n + 100).then_some(st)
        },
    );
    eprintln!("open lease relayed {} messages", n_now.relayed);
    ping(&se, n, 3); // direct pairs do not need the relay
    ping(&sn, h, 3);

    // Ctrl-C on `net up` tears its interface and status socket down.
    let m = lab
        .procs
        .iter()
        .position(|p| p.name == "mallory net up")
        .expect("mallory's net up");
    // SAFETY: kill on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(lab.procs[m].child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    lab.procs[m].wait_for("vnet down", LAB_WAIT);
    eventually(10, "mallory's TUN removed", || {
        let out = Command::new("ip")
            .args(["-n", &nm, "link", "show", "cpushare0"])
            .output()
            .ok()?;
        (!out.status.success()).then_some(())
    });
    assert!(!mallory.join("net.sock").exists());
    // Every other process lives on: mallory's net up was just stopped (it
    // may or may not have exited yet), and alice's was killed as the relay.
    for p in &mut lab.procs {
        if p.name != "alice net up" && p.name != "mallory net up" {
            assert!(
                p.child.try_wait().expect("wait").is_none() || p.name == "alice run",
                "{} exited",
                p.name
            );
        }
    }
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

#[test]
fn net_up_without_cap_net_admin_says_what_to_do() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-net_admin", "--"])
        .arg(bin("cpushare"))
        .arg("--home")
        .arg(home.path())
        .args(["net", "up"])
        .output()
        .expect("run setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs root or CAP_NET_ADMIN") && err.contains("setcap"),
        "{err}"
    );
}
