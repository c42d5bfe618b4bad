//! `cpushare run image.iso --share ./out:/out:rw` across the buyer's vnet,
//! with every part real: a broker, two VM seller daemons and the buyer,
//! each in its own network namespace. The buyer's `net up` gives its host
//! a vnet address; `cpushare run` serves the share over NFSv3 there, to
//! its leases only. Each seller's lease node is attached to a TUN
//! interface in the seller's namespace standing in for the guest NIC
//! (`CPUSHARE_SELLER_VNET_TUN=1`): the lease's guests here are ring-3 test
//! guests without a network stack, so a real NFS client (libnfs's
//! `nfs-cp`, `nfs-ls`, `nfs-cat`) in the seller's namespace plays the
//! guest's side, from the lease's vnet address.
//!
//! ```text
//!            broker (172.30.255.1, on inet's lo)
//!   alice ──── inet (router) ──┬── seller s1
//!                              └── seller s2
//! ```
//!
//! The seller hosting the lease is SIGKILLed while its stand-in writes
//! files; the run places the VM again on the other seller, whose stand-in
//! writes the rest. Needs root, iptables (the lab checks), /dev/kvm and
//! libnfs-utils; fails (does not skip) without them.

use cpushare_tests::netlab::*;
use cpushare_tests::{bin, test_guest_iso};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The port `cpushare run` serves shares on when it is free (a fresh
/// namespace: always).
const NFS_PORT: u16 = 2049;

/// Bytes of each file the stand-in guests write.
const FILE_LEN: usize = 256 << 10;

fn url(addr: Ipv4Addr, path: &str) -> String {
    format!("nfs://{addr}{path}?version=3&nfsport={NFS_PORT}&mountport={NFS_PORT}")
}

/// Runs a libnfs tool in namespace `ns`, for at most 60 s (a connection
/// whose route vanished with its seller would otherwise retransmit for
/// minutes); (success, stdout, stderr).
fn nfs_tool(ns: &str, tool: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Lab::cmd(ns, Path::new("/usr/bin/timeout"))
        .args(["60", tool])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}; install libnfs-utils"));
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(data)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Deterministic contents of file number `i`.
fn contents(i: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64);
    (0..FILE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Copies file `i` (from `src`) into the share from `ns` with `nfs-cp`;
/// true once it is written and closed.
fn write_file(ns: &str, src: &Path, addr: Ipv4Addr, i: usize) -> bool {
    let local = src.join(format!("f{i:03}"));
    if !local.exists() {
        std::fs::write(&local, contents(i)).expect("write source file");
    }
    let (ok, _, err) = nfs_tool(
        ns,
        "nfs-cp",
        &[
            local.to_str().expect("utf8"),
            &url(addr, &format!("/out/f{i:03}")),
        ],
    );
    if !ok {
        eprintln!("nfs-cp of f{i:03} from {ns}: {}", err.trim());
    }
    ok
}

/// The leases in alice's `net status`: (vnet address, lease id).
fn lease_peers(home: &Path) -> Vec<(Ipv4Addr, String)> {
    net_status(home)
        .and_then(|st| {
            st["peers"].as_array().map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some((
                            p["address"].as_str()?.parse().ok()?,
                            p["lease"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// alice's leases as the broker lists them.
fn leases(cpushare: &dyn Fn() -> Command) -> Value {
    let out = run_ok(cpushare().args(["--json", "leases"]));
    serde_json::from_str(&out).expect("leases json")
}

/// Times a sequential `nfs-cp` of `len` bytes from `from` to `to`; MiB/s.
fn throughput(ns: &str, from: &str, to: &str, len: usize) -> f64 {
    let t = Instant::now();
    let (ok, _, err) = nfs_tool(ns, "nfs-cp", &[from, to]);
    assert!(ok, "nfs-cp {from} {to}: {err}");
    len as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

#[test]
fn a_vm_share_is_served_on_the_buyers_vnet_to_its_leases_only_and_survives_a_killed_seller() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: VM lease tests must run on a KVM host"
    );
    for t in ["nfs-cp", "nfs-ls", "nfs-cat"] {
        assert!(
            Path::new("/usr/bin").join(t).exists(),
            "{t} is missing; install libnfs-utils (scripts/apt-packages.txt)"
        );
    }
    // The guest prints its banner and waits for a line on its console, so
    // it runs until the test types one.
    let iso = test_guest_iso("share-vnet", "hello read exit 0");
    let mut lab = Lab::new();
    let inet = lab.ns("inet");
    let na = lab.ns("alice");
    let (s1, s2) = (lab.ns("s1"), lab.ns("s2"));
    lab.forward(&inet);
    lab.link(&inet, "ia", "172.30.1.1", &na, "wan", "172.30.1.2");
    lab.link(&inet, "i1", "172.30.2.1", &s1, "wan", "172.30.2.2");
    lab.link(&inet, "i2", "172.30.3.1", &s2, "wan", "172.30.3.2");
    for (ns, via) in [
        (&na, "172.30.1.1"),
        (&s1, "172.30.2.1"),
        (&s2, "172.30.3.1"),
    ] {
        lab.route_default(ns, via);
    }

    // Broker (missed heartbeats end a seller's leases after ~3 s), sellers.
    let broker = lab.broker(&inet, BROKER_IP);
    let admin = |args: &[&str]| broker.admin(args);
    let token = |name: &str, role: &str| broker.token(name, role);
    let mut seller_idx = Vec::new();
    for (ns, name) in [(&s1, "s1"), (&s2, "s2")] {
        let run = ["--cpus", "1", "--mem", "2G", "--price", "0.001"];
        let run = [&run[..], &["--kinds", "vm", "--allow-software-kvm"]].concat();
        lab.seller(&broker, ns, name, true, &run);
        seller_idx.push((name, lab.procs.len() - 1, (*ns).clone()));
    }
    let alice = lab.home("alice");
    let t = token("alice", "buyer");
    admin(&["credit", "alice", "100"]);
    let (na2, alice2) = (na.clone(), alice.clone());
    let cpushare = move || {
        let mut c = Lab::cmd(&na2, &bin("cpushare"));
        c.arg("--home").arg(&alice2);
        c
    };
    run_ok(cpushare().args(["login", &t]));

    // Without `net up`, a VM share says what to start.
    let out = cpushare()
        .args(["run", iso.to_str().expect("utf8"), "--share", "/tmp:/x"])
        .output()
        .expect("cpushare run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cpushare net up"),
        "a VM --share without the vnet must say to start it: {err}"
    );

    let mut cmd = cpushare();
    cmd.args(["--json", "net", "up"]);
    let up: Value =
        serde_json::from_str(&lab.spawn("alice net up", cmd).wait_for("\"tun\"", LAB_WAIT))
            .expect("net up prints JSON");
    let host: Ipv4Addr = up["address"].as_str().expect("address").parse().unwrap();

    // The run, with its share directory in alice's home.
    let out_dir = alice.join("out");
    let mut run = cpushare()
        .current_dir(&alice)
        .args(["--json", "run", iso.to_str().expect("utf8")])
        .args(["--mem", "64M", "--minutes", "10", "--retries", "1"])
        .args(["--share", "./out:/out:rw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpushare run");
    let mut typing = run.stdin.take().expect("stdin");
    let (tx, console) = mpsc::channel();
    let stdout = run.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let stderr = run.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("alice run: {l}");
            all += &l;
            all.push('\n');
        }
        all
    });
    let banner = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match console.recv_timeout(left) {
                Ok(l) if l.contains("hello from cpushare test guest") => break,
                Ok(_) => {}
                Err(_) => panic!("the {what} guest never printed its banner"),
            }
        }
    };
    banner("first");
    let (guest1, lease1) = eventually(60, "alice's lease in her net status", || {
        lease_peers(&alice).into_iter().next()
    });
    let l = leases(&cpushare);
    let first_seller = l[0]["seller"].as_str().expect("seller").to_string();
    let (_, victim, ns1) = seller_idx
        .iter()
        .find(|(n, _, _)| *n == first_seller)
        .cloned()
        .expect("a lease on s1 or s2");
    let (_, _, ns2) = seller_idx
        .iter()
        .find(|(n, _, _)| *n != first_seller)
        .cloned()
        .expect("the other seller");
    println!("lease {lease1} on {first_seller} at {guest1}; alice's host {host}");

    // The first guest writes files until its seller dies under it.
    let src = tempfile::tempdir().expect("tempdir");
    let src_path = src.path().to_path_buf();
    eventually(30, "the first file across the vnet", || {
        write_file(&ns1, &src_path, host, 0).then_some(())
    });
    let (ns1b, srcb) = (ns1.clone(), src_path.clone());
    let writer = std::thread::spawn(move || {
        let mut done = vec![0];
        let mut i = 1;
        while i < 200 {
            if !write_file(&ns1b, &srcb, host, i) {
                break;
            }
            done.push(i);
            i += 1;
        }
        (done, i)
    });
    // Kill once a few files are in, while the writer is mid-way.
    eventually(60, "four files written before the kill", || {
        (std::fs::read_dir(&out_dir).ok()?.count() >= 4).then_some(())
    });
    let killed = Instant::now();
    lab.procs[victim].kill();

    // Placed again on the other seller: a new lease (its vnet address may
    // be the old one again).
    let (guest2, lease2) = eventually(60, "a second lease in alice's net status", || {
        lease_peers(&alice).into_iter().find(|(_, l)| *l != lease1)
    });
    banner("second");
    println!(
        "lease {lease2} at {guest2}: running again {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    // The writer's last copy dies with the route (nfs-cp gives up).
    let (written, next) = writer.join().expect("writer thread");
    println!(
        "{} files closed before {first_seller} was killed",
        written.len()
    );
    assert!(written.len() >= 4, "{written:?}");
    // File `next` was open when the seller died (and may exist, cut
    // short); the second guest goes on with new files, like a job that
    // rewrites only what it had not finished.
    let (first2, total) = (next + 1, next + 9);
    eventually(30, "the second guest's first file", || {
        write_file(&ns2, &src_path, host, first2).then_some(())
    });
    for i in first2 + 1..total {
        assert!(write_file(&ns2, &src_path, host, i), "file {i} from {ns2}");
    }

    // Every file closed before the kill is intact, and so are the rest.
    for i in written.iter().copied().chain(first2..total) {
        let got = std::fs::read(out_dir.join(format!("f{i:03}"))).expect("file in ./out");
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&contents(i)),
            "f{i:03} corrupted"
        );
    }
    // And the second guest reads them back through the share.
    let (ok, listing, err) = nfs_tool(&ns2, "nfs-ls", &[&url(host, "/out")]);
    assert!(ok, "nfs-ls from the second guest: {err}");
    let listing = String::from_utf8_lossy(&listing);
    for i in &written {
        assert!(listing.contains(&format!("f{i:03}")), "{listing}");
    }

    // Not alice's guests: the internet has no route into her vnet, and her
    // host's own address is not a lease.
    let (ok, _, _) = nfs_tool(&inet, "nfs-ls", &[&url(host, "/out")]);
    assert!(!ok, "a client outside alice's vnet listed her share");
    let (ok, _, _) = nfs_tool(&na, "nfs-ls", &[&url(host, "/out")]);
    assert!(
        !ok,
        "an address that is not one of alice's leases mounted her share"
    );
    // Path escapes from a guest: a symlink in the share pointing out of it,
    // and `..` past the export.
    std::os::unix::fs::symlink("/etc", out_dir.join("escape")).expect("symlink");
    let (ok, data, _) = nfs_tool(&ns2, "nfs-cat", &[&url(host, "/out/escape/passwd")]);
    assert!(
        !ok && data.is_empty(),
        "a symlink let a guest read outside the share"
    );
    let (ok, data, _) = nfs_tool(&ns2, "nfs-cat", &[&url(host, "/out/../../etc/passwd")]);
    assert!(!ok && data.is_empty(), "`..` let a guest out of the share");

    // Throughput across the vnet (printed, not asserted).
    let big = src.path().join("big.bin");
    let mut f = std::fs::File::create(&big).expect("big file");
    for i in 0..64 {
        // 4 x 256 KiB: one MiB per round.
        f.write_all(&contents(1000 + i).repeat(4))
            .expect("write big");
    }
    drop(f);
    let len = std::fs::metadata(&big).expect("big").len() as usize;
    let to = url(host, "/out/big.bin");
    let w = throughput(&ns2, big.to_str().expect("utf8"), &to, len);
    let back = src.path().join("back.bin");
    let r = throughput(&ns2, &to, back.to_str().expect("utf8"), len);
    assert_eq!(
        std::fs::read(&back).expect("read back"),
        std::fs::read(&big).expect("big"),
        "the 64 MiB file came back different"
    );
    println!(
        "nfs-cp across the vnet, {} MiB: write {w:.1} MiB/s, read {r:.1} MiB/s",
        len >> 20
    );

    // The guest exits; the run ends well and the ledger balances.
    typing.write_all(b"done\n").expect("type");
    drop(typing);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = run.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the run never ended");
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = stderr.join().expect("stderr thread");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("cpushare.nfs=") && err.contains(&format!("{host}:{NFS_PORT}")),
        "the run names its NFS server and the guest's mounts: {err}"
    );
    assert!(err.contains("placing the work again"), "{err}");
    let l = leases(&cpushare);
    let rows = l.as_array().expect("leases");
    assert_eq!(rows.len(), 2, "{l}");
    let mut paid = 0;
    for row in rows {
        assert_eq!(row["state"], "ended", "{row}");
        let cost = row["cost"].as_i64().expect("cost");
        let settled = row["settled_minutes"].as_i64().expect("settled")
            * row["cpus"].as_i64().expect("cpus")
            * row["price"].as_i64().expect("price");
        assert_eq!(cost, settled, "billed other than the minutes served: {row}");
        paid += cost;
    }
    assert!(
        rows.iter().any(|r| r["end"] == "seller lost"),
        "the killed seller's lease ends as lost: {l}"
    );
    let ledger: Value = serde_json::from_str(&admin(&["ledger", "--json"])).expect("ledger json");
    assert_eq!(ledger["sum"], "0", "ledger must balance: {ledger}");
    let alice_balance = ledger["balances"]
        .as_array()
        .expect("balances")
        .iter()
        .find(|b| b[0] == "user:alice")
        .and_then(|b| b[1].as_i64())
        .expect("alice's balance");
    assert_eq!(
        alice_balance,
        100_000_000 - paid,
        "alice paid exactly the minutes served: {ledger}"
    );
}
