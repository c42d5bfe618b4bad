//! Failover with real processes: a broker SIGKILLed mid-lease and started
//! again on its database, and a VM lease whose seller is SIGKILLed and
//! which boots again on another seller.

use cpushare_tests::{
    spawn_run, test_guest_iso, wait_output, wait_running, wasm_modules, Broker, Buyer, Seller,
};
use serde_json::Value;
use std::time::{Duration, Instant};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The buyer's order `id` in its `orders` listing.
fn order(buyer: &Buyer, id: &str) -> Value {
    buyer
        .json("orders")
        .as_array()
        .expect("orders")
        .iter()
        .find(|o| o["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("order {id} is gone"))
}

/// Checks every lease of `buyer` was billed exactly its settled minutes,
/// and that the buyer paid exactly the sum; returns that sum.
fn billed_exactly_the_settled_minutes(
    broker: &Broker,
    buyer: &Buyer,
    name: &str,
    credit: i64,
) -> i64 {
    let leases = buyer.json("leases");
    let mut total = 0;
    for l in leases.as_array().expect("leases") {
        assert_eq!(l["state"], "ended", "every lease must be over: {l}");
        let cost = l["cost"].as_i64().expect("cost");
        let settled = l["settled_minutes"].as_i64().unwrap()
            * l["cpus"].as_i64().unwrap()
            * l["price"].as_i64().unwrap();
        assert_eq!(
            cost, settled,
            "a lease billed other than its settled minutes: {l}"
        );
        total += cost;
    }
    assert_eq!(
        broker.balance(&format!("user:{name}")),
        credit - total,
        "{name} must have paid exactly its leases' settled minutes: {leases}"
    );
    total
}

#[test]
fn a_broker_killed_mid_lease_recovers_its_leases_and_orders_and_the_ledger_balances() {
    let wasm = wasm_modules();
    let mut broker = Broker::start(None);
    let seller = Seller::start(&broker, "steady", 1, "0.001");
    let alice = Buyer::login(&broker, "alice", "1");
    let bob = Buyer::login(&broker, "bob", "1");
    let busy = wasm.join("busy.wasm");
    let hello = wasm.join("hello.wasm");

    // Alice's job holds the seller's only vCPU...
    let mut alice_run = spawn_run(
        &alice,
        &[busy.to_str().unwrap(), "--retries", "1", "--", "8"],
    );
    wait_running(&alice, 1, Duration::from_secs(30));
    // ... so Bob's order rests on the book, acknowledged (it is listed).
    let mut bob_run = spawn_run(&bob, &[hello.to_str().unwrap(), "--wait", "300"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let bob_order = loop {
        let orders = bob.json("orders");
        if let Some(id) = orders[0]["id"].as_str() {
            assert_eq!(orders[0]["state"], "open", "{orders}");
            break id.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "Bob's order was never acknowledged"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    broker.kill_and_restart();

    // Recovery ended Alice's running lease as lost (her seller was
    // unsupervised), and kept Bob's acknowledged order.
    let leases = alice.json("leases");
    let lost = leases
        .as_array()
        .unwrap()
        .last()
        .expect("Alice's first lease");
    assert_eq!(lost["end"], "seller lost", "{lost}");
    let rested = order(&bob, &bob_order);
    assert!(
        rested["state"] == "open" || rested["state"] == "filled",
        "Bob's acknowledged order must survive the restart: {rested}"
    );

    // The seller comes back by itself; both jobs then complete: Alice's
    // placed again by her `run`, Bob's matched from the recovered book.
    let alice_out = wait_output(&mut alice_run, Duration::from_secs(180));
    assert!(alice_out.status.success(), "{}", stderr(&alice_out));
    assert!(
        stderr(&alice_out).contains("lost the broker"),
        "{}",
        stderr(&alice_out)
    );
    assert!(
        stderr(&alice_out).contains("placing the work again"),
        "{}",
        stderr(&alice_out)
    );
    assert!(
        stdout(&alice_out).contains("done"),
        "{}",
        stdout(&alice_out)
    );
    let bob_out = wait_output(&mut bob_run, Duration::from_secs(180));
    assert!(bob_out.status.success(), "{}", stderr(&bob_out));
    assert_eq!(order(&bob, &bob_order)["state"], "filled");
    let bob_leases = bob.json("leases");
    assert_eq!(bob_leases.as_array().unwrap().len(), 1, "{bob_leases}");
    assert_eq!(bob_leases[0]["order"], bob_order.as_str());
    assert_eq!(bob_leases[0]["end"], "exited with code 0");
    assert!(
        seller.proc.lines.try_iter().any(|l| l.contains("offering")),
        "the seller must have posted its offer again"
    );

    // The ledger balances, no hold or escrow is left behind, and each
    // buyer paid exactly the minutes settled to the seller.
    let paid = billed_exactly_the_settled_minutes(&broker, &alice, "alice", 1_000_000)
        + billed_exactly_the_settled_minutes(&broker, &bob, "bob", 1_000_000);
    broker.assert_settled("steady", paid);
}

#[test]
fn a_vm_lease_whose_seller_is_killed_boots_again_on_another_seller() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: VM lease tests must run on a KVM host"
    );
    // The guest prints its banner, then waits for a line on its console
    // (so it is surely running when its seller dies, however busy this
    // machine is), echoes it and powers off with status 4.
    let iso = test_guest_iso("failover-read", "hello read exit 4");
    // The broker's default heartbeat (2 s, 3 missed), as deployed.
    let broker = Broker::start_with_heartbeat(None, 2);
    let vm = ["--kinds", "vm", "--allow-software-kvm"];
    let mut a = Seller::start_with(&broker, "vm-a", 1, "0.001", &vm);
    let mut b = Seller::start_with(&broker, "vm-b", 1, "0.001", &vm);
    let buyer = Buyer::login(&broker, "vm-buyer", "1");
    let mut run = buyer
        .cmd()
        .args(["--json", "run", iso.to_str().unwrap(), "--mem", "64M"])
        .args(["--retries", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut typing = run.stdin.take().unwrap();
    // Follow the console as it comes.
    let console = run.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(console)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    let banner = "hello from cpushare test guest";
    let wait_banner = || {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(banner) => break,
                Ok(_) => {}
                Err(_) => panic!("the guest never printed its banner"),
            }
        }
    };
    wait_banner();
    let first = wait_running(&buyer, 1, Duration::from_secs(30))[0]["seller"]
        .as_str()
        .unwrap()
        .to_string();
    let killed = Instant::now();
    match first.as_str() {
        "vm-a" => a.proc.kill(),
        _ => b.proc.kill(),
    }
    let leases = wait_running(&buyer, 2, Duration::from_secs(60));
    let again = killed.elapsed();
    println!(
        "VM lease: seller killed to the guest running again elsewhere: {:.1} s (heartbeat 2 s x 3)",
        again.as_secs_f64()
    );
    assert_ne!(leases[0]["seller"], first.as_str(), "{leases}");
    assert_eq!(leases[1]["end"], "seller lost", "{leases}");
    // Booted again: what the buyer types now reaches the new guest.
    wait_banner();
    use std::io::Write;
    typing.write_all(b"after failover\n").unwrap();
    drop(typing);

    let out = wait_output(&mut run, Duration::from_secs(300));
    let console = reader.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "the guest's status is the exit code; console:\n{console}\nstderr:\n{}",
        stderr(&out)
    );
    assert_eq!(
        console.matches(banner).count(),
        2,
        "the guest must boot twice: {console}"
    );
    assert_eq!(
        console.matches("input: after failover").count(),
        1,
        "{console}"
    );
    assert!(
        stderr(&out).contains("placing the work again"),
        "{}",
        stderr(&out)
    );
    let leases = buyer.json("leases");
    assert_eq!(leases[0]["end"], "powered off with status 4", "{leases}");
    billed_exactly_the_settled_minutes(&broker, &buyer, "vm-buyer", 1_000_000);
}
