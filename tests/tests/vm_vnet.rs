//! A VM lease's guest NIC on its buyer's vnet, every part real: a broker,
//! the buyer's `cpushare net up`, a seller running the test guest in a
//! confined VM sandbox (its virtio-net frames go over the sandbox's link
//! to the lease's vnet node in the seller daemon), and a second seller
//! whose wasm lease has a TUN stand-in for a guest NIC. The test guest
//! takes its address from the `cpushare.ip=` the seller appends to its
//! command line and answers ARP and ICMP echo from ring 3: pings from the
//! buyer's host and from the peer on the other seller reach it; the buyer
//! then cancels the lease.
//!
//! ```text
//!   broker (172.31.255.1, on inet's lo)
//!   alice ──┐
//!   vm ─────┼── inet (router)
//!   peer ───┘
//! ```
//!
//! Needs root and /dev/kvm; fails (does not skip) without them.

use cpushare_tests::netlab::*;
use cpushare_tests::{bin, test_guest_iso, wasm_modules};
use serde_json::Value;
use std::net::Ipv4Addr;

const BROKER: &str = "172.31.255.1";

#[test]
fn a_vm_guest_answers_the_buyer_and_a_peer_on_another_seller_over_the_vnet() {
    let wasm = wasm_modules();
    let iso = test_guest_iso("vnet-net", "hello net auto");
    let mut lab = Lab::new();
    let inet = lab.ns("vinet");
    let (na, nv, np) = (lab.ns("valice"), lab.ns("vvm"), lab.ns("vpeer"));
    lab.forward(&inet);
    lab.link(&inet, "ia", "172.31.1.1", &na, "wan", "172.31.1.2");
    lab.link(&inet, "iv", "172.31.2.1", &nv, "wan", "172.31.2.2");
    lab.link(&inet, "ip", "172.31.3.1", &np, "wan", "172.31.3.2");
    for (ns, via) in [
        (&na, "172.31.1.1"),
        (&nv, "172.31.2.1"),
        (&np, "172.31.3.1"),
    ] {
        lab.route_default(ns, via);
    }

    let broker = lab.broker(&inet, BROKER);
    let admin = |args: &[&str]| broker.admin(args);
    // The VM seller (cheaper, so the VM order and the wasm order cannot
    // cross: each seller offers one kind) and the stand-in seller.
    for (ns, name, kinds, standin) in [
        (&nv, "vmseller", "vm", false),
        (&np, "peerseller", "wasm", true),
    ] {
        let run = [
            "--cpus",
            "1",
            "--mem",
            "1G",
            "--price",
            "0.001",
            "--kinds",
            kinds,
            "--allow-software-kvm",
        ];
        lab.seller(&broker, ns, name, standin, &run);
    }
    let alice = lab.buyer(&broker, &na, "alice");
    let mut cmd = Lab::cmd(&na, &bin("cpushare"));
    cmd.arg("--home").arg(&alice).args(["--json", "net", "up"]);
    lab.spawn("alice net up", cmd).wait_for("\"tun\"", LAB_WAIT);

    // The peer's lease first (a TUN stand-in on the other seller), then the VM.
    let mut cmd = Lab::cmd(&na, &bin("cpushare"));
    cmd.arg("--home").arg(&alice).args([
        "run",
        wasm.join("spin.wasm").to_str().expect("utf8 path"),
        "--minutes",
        "5",
        "--max-price",
        "0.01",
        "--wait",
        "60",
    ]);
    lab.spawn("alice peer run", cmd);
    eventually(60, "the peer lease in alice's net status", || {
        let st = net_status(&alice)?;
        (st["peers"].as_array()?.len() == 1).then_some(())
    });
    let mut vm_run = Lab::cmd(&na, &bin("cpushare"));
    vm_run.arg("--home").arg(&alice).args([
        "run",
        iso.to_str().expect("utf8 path"),
        "--cpus",
        "1",
        "--mem",
        "64M",
        "--minutes",
        "5",
        "--max-price",
        "0.01",
        "--wait",
        "60",
    ]);
    let console = lab.home("vm-console").join("console.txt");
    let vm_run = vm_run
        .stdout(std::fs::File::create(&console).expect("console file"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cpushare run");
    let diag_console = console.clone();
    let diag_homes = [lab.home("vmseller"), lab.home("peerseller")];
    DIAG.with(|d| {
        *d.borrow_mut() = Some(Box::new(move || {
            format!(
                "guest console:\n{}\nnodes: {:?}",
                std::fs::read_to_string(&diag_console).unwrap_or_default(),
                diag_homes
                    .iter()
                    .map(|h| lease_status(h))
                    .collect::<Vec<_>>()
            )
        }))
    });
    let guest: Ipv4Addr = eventually(90, "the VM lease in alice's net status", || {
        let st: Value = net_status(&alice)?;
        let peers = st["peers"].as_array()?;
        (peers.len() == 2).then_some(())?;
        // The VM is the lease the stand-in seller's node does not own.
        let standin = lease_status(&lab.home("peerseller"))?.address;
        peers
            .iter()
            .filter_map(|p| p["address"].as_str()?.parse::<Ipv4Addr>().ok())
            .find(|a| *a != standin)
    });

    // Echoes from the buyer's host, and from the other seller's stand-in
    // guest, answered by the test guest's ring-3 code through the jailed
    // VMM's virtio-net device and the seller's vnet node.
    ping(&na, guest, 3);
    ping(&np, guest, 3);

    // The buyer ends the VM lease.
    let orders: Value = serde_json::from_str(&run_ok(
        Lab::cmd(&na, &bin("cpushare"))
            .arg("--home")
            .arg(&alice)
            .args(["--json", "orders"]),
    ))
    .expect("orders JSON");
    let vm_order = orders
        .as_array()
        .expect("order rows")
        .iter()
        .find(|o| o["side"] == "buy" && o["kind"] == "vm")
        .and_then(|o| o["id"].as_str())
        .expect("the VM order")
        .to_string();
    run_ok(
        Lab::cmd(&na, &bin("cpushare"))
            .arg("--home")
            .arg(&alice)
            .args(["cancel", &vm_order]),
    );
    let out = vm_run.wait_with_output().expect("cpushare run ends");
    let stdout = std::fs::read_to_string(&console).expect("console");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("net: vnet address from the command line"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("net: mac=02:63:73:67:00:02"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "cancelled: {stdout}\n{stderr}"
    );
    let ledger: Value = serde_json::from_str(&admin(&["ledger", "--json"])).expect("ledger JSON");
    assert_eq!(ledger["sum"], "0", "the ledger must balance: {ledger}");
}
