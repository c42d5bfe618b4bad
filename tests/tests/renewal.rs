//! Sticky renewal with real processes: a wasm job that outlives its one
//! paid minute renews with its seller (`--renew-up-to 2`) and runs to its
//! end in the same sandbox, billed exactly the minutes it ran; the same
//! job without the flag is cut at its paid minute as before.

use cpushare_tests::{spawn_run, wait_output, wait_running, wasm_modules, Broker, Buyer, Seller};
use serde_json::Value;
use std::time::Duration;

/// Seconds `busy.wasm` works: past one minute (plus the seller's 5 s of
/// slack), well inside two.
const WORK_SECS: &str = "75";

/// The seller's price, micro-credits per vCPU-minute (`0.001`).
const PRICE: i64 = 1_000;

/// Credits each buyer starts with (`1`), in micro-credits.
const CREDIT: i64 = 1_000_000;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The buyer's only lease, checked to be the only one.
fn only_lease(buyer: &Buyer) -> Value {
    let leases = buyer.json("leases");
    let all = leases.as_array().expect("leases");
    assert_eq!(all.len(), 1, "one lease, never placed again: {leases}");
    all[0].clone()
}

#[test]
fn a_renewed_lease_runs_past_its_first_minute_and_an_unrenewed_one_is_cut() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let _seller = Seller::start(&broker, "steady", 2, "0.001");
    let renewing = Buyer::login(&broker, "rene", "1");
    let plain = Buyer::login(&broker, "paula", "1");
    let busy = wasm.join("busy.wasm");
    let busy = busy.to_str().expect("utf-8 path");
    let common = ["--minutes", "1", "--retries", "0", "--wait", "120"];

    let mut renewed_run = spawn_run(
        &renewing,
        &[
            &[busy, "--renew-up-to", "2"],
            &common[..],
            &["--", WORK_SECS],
        ]
        .concat(),
    );
    // One upload of the module at a time: the broker's blob store does not
    // yet take two concurrent uploads of the same content id.
    wait_running(&renewing, 1, Duration::from_secs(60));
    let mut plain_run = spawn_run(&plain, &[&[busy], &common[..], &["--", WORK_SECS]].concat());
    let renewed = wait_output(&mut renewed_run, Duration::from_secs(240));
    let cut = wait_output(&mut plain_run, Duration::from_secs(240));

    // Renewed: the job ran to its end in its one lease, which the buyer
    // saw renewed to two minutes and paid exactly two minutes for.
    let (out, err) = (text(&renewed.stdout), text(&renewed.stderr));
    assert!(renewed.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("done"), "the job finished: {out}");
    let lease = only_lease(&renewing);
    let id = lease["id"].as_str().expect("lease id");
    assert!(
        err.contains(&format!("renewed lease {id} to 2 minutes")),
        "the buyer is told of the renewal: {err}"
    );
    assert_eq!(lease["end"], "exited with code 0", "{lease}");
    assert_eq!(lease["minutes"], 2, "{lease}");
    assert_eq!(lease["settled_minutes"], 2, "{lease}");
    assert_eq!(lease["cost"].as_i64(), Some(2 * PRICE), "{lease}");
    assert_eq!(broker.balance("user:rene"), CREDIT - 2 * PRICE);

    // Not renewed: cut by its sandbox's budgets at its paid minute (the
    // broker's overrun stop, 30 s later, is the backstop), billed one.
    let (out, err) = (text(&cut.stdout), text(&cut.stderr));
    assert!(!cut.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("done"), "the job was cut: {out}");
    assert!(!err.contains("renewed lease"), "{err}");
    let lease = only_lease(&plain);
    let end = lease["end"].as_str().expect("ended");
    assert!(
        end == "killed: wall-clock time exceeded" || end == "killed: CPU time exceeded",
        "cut at its minute: {lease}"
    );
    assert_eq!(lease["minutes"], 1, "{lease}");
    assert_eq!(lease["settled_minutes"], 1, "{lease}");
    assert_eq!(lease["cost"].as_i64(), Some(PRICE), "{lease}");
    assert_eq!(broker.balance("user:paula"), CREDIT - PRICE);

    // Every credit is accounted for: the ledger sums to zero, the seller
    // and the broker's fee hold exactly what the buyers paid, and no
    // escrow or hold is left behind.
    broker.assert_settled("steady", 3 * PRICE);
}

#[test]
fn a_buyer_who_cannot_pay_a_renewal_is_told_why_and_its_lease_ends_at_its_minute() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let _seller = Seller::start(&broker, "steady", 1, "0.001");
    // One paid minute held at the cap, half a minute's price left over:
    // the renewal, 20 s before the minute's end, cannot be paid.
    let buyer = Buyer::login(&broker, "poor", "0.0015");
    let busy = wasm.join("busy.wasm");
    let busy = busy.to_str().expect("utf-8 path");
    let o = buyer.run(&[
        "run",
        busy,
        "--renew-up-to",
        "2",
        "--max-price",
        "0.001",
        "--minutes",
        "1",
        "--retries",
        "0",
        "--wait",
        "120",
        "--",
        WORK_SECS,
    ]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(!o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("done"), "the job was cut: {out}");
    let lease = only_lease(&buyer);
    let id = lease["id"].as_str().expect("lease id");
    let told = err
        .lines()
        .find(|l| l.contains(&format!("lease {id} will not be renewed")))
        .unwrap_or_else(|| panic!("the buyer is told its lease is not renewed: {err}"));
    assert!(
        told.contains("balance of 0.0005 credits") && told.contains("(1 min)"),
        "{told}"
    );
    assert!(!err.contains("renewed lease"), "{err}");
    let end = lease["end"].as_str().expect("ended");
    assert!(
        end == "killed: wall-clock time exceeded" || end == "killed: CPU time exceeded",
        "cut at its minute, as a lease without renewals: {lease}"
    );
    assert_eq!(lease["minutes"], 1, "{lease}");
    assert_eq!(lease["cost"].as_i64(), Some(PRICE), "{lease}");
    assert_eq!(broker.balance("user:poor"), 1_500 - PRICE);
    broker.ledger();
}
