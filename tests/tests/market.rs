//! The market loop end to end with real processes: broker (SQLite), sellers,
//! buyers, real wasm modules, real QUIC with mutual TLS.

use cpushare_tests::{spawn_run, wait_output, wait_running, wasm_modules, Broker, Buyer, Seller};
use std::time::Duration;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The cost the buyer was told, in micro-credits, from `--json` output.
fn cost_micros(o: &std::process::Output) -> i64 {
    let line = stderr(o)
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON result line in: {}", stderr(o)))
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).expect("result json");
    v["cost_micros"].as_i64().expect("cost_micros")
}

#[test]
fn wasm_job_runs_end_to_end_and_the_bill_balances() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let _s1 = Seller::start(&broker, "seller-a", 2, "0.002");
    let _s2 = Seller::start(&broker, "seller-b", 2, "0.001");
    let buyer = Buyer::login(&broker, "alice", "10");
    let out = buyer.run(&[
        "--json",
        "run",
        wasm.join("hello.wasm").to_str().unwrap(),
        "--env",
        "GREETING=hi",
        "--max-price",
        "0.01",
        "--",
        "one",
        "two",
    ]);
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("hello from wasm"), "stdout: {text}");
    assert!(
        text.contains("one") && text.contains("two"),
        "args missing: {text}"
    );
    assert!(text.contains("hi"), "env missing: {text}");
    // Cheapest seller wins (pay-as-ask): 1 vCPU x 1 minute x 0.001 = 1000 micro-credits.
    let cost = cost_micros(&out);
    assert_eq!(cost, 1000);
    // Every hold and escrow is empty once the order closed, and the cost
    // went to the seller and the fee account.
    let ledger = broker.assert_settled("seller-b", cost);
    let get = |a: &str| {
        ledger
            .iter()
            .find(|(n, _)| n == a)
            .map(|(_, b)| *b)
            .unwrap_or(0)
    };
    assert_eq!(get("user:alice"), 10_000_000 - cost);
    // 2% fee, floored: 20 micro-credits to the broker, the rest to the seller.
    assert_eq!(get("broker:fees"), 20);
    assert_eq!(get("user:seller-b"), 980);
    assert_eq!(get("user:seller-a"), 0);
    let leases = buyer.json("leases");
    assert_eq!(leases[0]["seller"], "seller-b");
    assert_eq!(leases[0]["state"], "ended");
    let orders = buyer.json("orders");
    assert_eq!(orders[0]["state"], "filled");
}

#[test]
fn exit_code_and_stdin_reach_the_buyer() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let _s = Seller::start(&broker, "s", 2, "0.001");
    let buyer = Buyer::login(&broker, "b", "1");
    let out = buyer.run(&[
        "run",
        wasm.join("exitcode.wasm").to_str().unwrap(),
        "--",
        "7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), b"piped through the market\n").unwrap();
    let out = buyer.run(&[
        "run",
        wasm.join("cat.wasm").to_str().unwrap(),
        "--stdin",
        input.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "piped through the market\n");
}

#[test]
fn an_order_the_buyer_cannot_afford_is_refused_and_leaves_nothing() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let _s = Seller::start(&broker, "s", 1, "0.001");
    let buyer = Buyer::login(&broker, "poor", "0.001");
    let out = buyer.run(&[
        "run",
        wasm.join("hello.wasm").to_str().unwrap(),
        "--minutes",
        "10",
        "--max-price",
        "0.01",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("balance"), "{}", stderr(&out));
    assert_eq!(broker.balance("user:poor"), 1000);
    assert_eq!(
        buyer.json("orders").as_array().unwrap().len(),
        0,
        "no order may remain"
    );
}

#[test]
fn tokens_are_single_use_and_expire() {
    let broker = Broker::start(None);
    let token = broker.account("once", "buyer");
    let home = tempfile::tempdir().unwrap();
    let login = |home: &std::path::Path| {
        std::process::Command::new(cpushare_tests::bin("cpushare"))
            .arg("--home")
            .arg(home)
            .args(["login", &token])
            .output()
            .unwrap()
    };
    assert!(login(home.path()).status.success());
    let again = tempfile::tempdir().unwrap();
    let out = login(again.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));

    let out = broker
        .admin()
        .args([
            "account",
            "add",
            "late",
            "--role",
            "buyer",
            "--expires-hours",
            "0",
        ])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let out = std::process::Command::new(cpushare_tests::bin("cpushare"))
        .arg("--home")
        .arg(tempfile::tempdir().unwrap().path())
        .args(["login", &token])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    let out = std::process::Command::new(cpushare_tests::bin("cpushare"))
        .arg("--home")
        .arg(tempfile::tempdir().unwrap().path())
        .args(["login", "cpst1-AAAA"])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
}

#[test]
fn invalid_modules_fail_cleanly_and_cost_nothing() {
    let broker = Broker::start(None);
    let _s = Seller::start(&broker, "s", 1, "0.001");
    let buyer = Buyer::login(&broker, "b", "1");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0garbage that is not a module").unwrap();
    let out = buyer.run(&["--json", "run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failed on the seller"),
        "{}",
        stderr(&out)
    );
    assert_eq!(cost_micros(&out), 0);
    assert_eq!(broker.balance("user:b"), 1_000_000);

    let not_wasm = dir.path().join("notes.txt");
    std::fs::write(&not_wasm, b"just text").unwrap();
    let out = buyer.run(&["run", not_wasm.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("neither a WebAssembly module"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn traps_and_memory_limits_are_reported_by_name() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let _s = Seller::start(&broker, "s", 1, "0.001");
    let buyer = Buyer::login(&broker, "b", "1");
    let out = buyer.run(&["run", wasm.join("trap.wasm").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("trapped"), "{}", stderr(&out));
    let out = buyer.run(&[
        "run",
        wasm.join("membomb.wasm").to_str().unwrap(),
        "--mem",
        "16M",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("out of memory (limit 16 MiB)"),
        "{}",
        stderr(&out)
    );
    broker.ledger();
}

#[test]
fn a_seller_that_vanishes_mid_lease_is_paid_its_minute_and_the_rest_is_refunded() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let mut seller = Seller::start(&broker, "flaky", 1, "0.001");
    let buyer = Buyer::login(&broker, "b", "1");
    let spin = wasm.join("spin.wasm");
    let mut run = spawn_run(
        &buyer,
        &[spin.to_str().unwrap(), "--minutes", "3", "--retries", "0"],
    );
    // Wait until the lease runs, then kill the seller without warning.
    wait_running(&buyer, 1, Duration::from_secs(30));
    seller.proc.kill();
    let out = wait_output(&mut run, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("seller lost"), "{}", stderr(&out));
    // A minute started is a minute billed: 1 of 3 minutes.
    assert_eq!(cost_micros(&out), 1000);
    assert_eq!(broker.balance("user:b"), 1_000_000 - 1000);
    let leases = buyer.json("leases");
    assert_eq!(leases[0]["end"], "seller lost");
}

#[test]
fn cancelling_a_running_job_stops_it_and_bills_the_started_minute() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let _s = Seller::start(&broker, "s", 1, "0.001");
    let buyer = Buyer::login(&broker, "b", "1");
    let spin = wasm.join("spin.wasm");
    let mut run = spawn_run(&buyer, &[spin.to_str().unwrap(), "--minutes", "5"]);
    let order = wait_running(&buyer, 1, Duration::from_secs(30))[0]["order"]
        .as_str()
        .unwrap()
        .to_string();
    let out = buyer.run(&["cancel", &order]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = wait_output(&mut run, Duration::from_secs(30));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    assert_eq!(cost_micros(&out), 1000);
    assert_eq!(broker.balance("user:b"), 1_000_000 - 1000);
}

#[test]
fn work_whose_seller_vanishes_is_placed_again_on_another_seller() {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let mut a = Seller::start(&broker, "seller-a", 1, "0.001");
    let mut b = Seller::start(&broker, "seller-b", 1, "0.001");
    let buyer = Buyer::login(&broker, "b", "1");
    let busy = wasm.join("busy.wasm");
    let mut run = spawn_run(&buyer, &[busy.to_str().unwrap(), "--", "4"]);
    let first = wait_running(&buyer, 1, Duration::from_secs(30))[0]["seller"]
        .as_str()
        .unwrap()
        .to_string();
    let killed_at = std::time::Instant::now();
    match first.as_str() {
        "seller-a" => a.proc.kill(),
        _ => b.proc.kill(),
    }
    let rerun = wait_running(&buyer, 2, Duration::from_secs(30))[0]["seller"]
        .as_str()
        .unwrap()
        .to_string();
    println!(
        "seller loss to job running again elsewhere: {:.1} s",
        killed_at.elapsed().as_secs_f64()
    );
    assert_ne!(rerun, first, "the work must move to the other seller");
    let out = wait_output(&mut run, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("done"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("placing the work again"),
        "{}",
        stderr(&out)
    );
    // Each lease billed its started minute: the lost one and the rerun.
    assert_eq!(cost_micros(&out), 2000);
    assert_eq!(broker.balance("user:b"), 1_000_000 - 2000);
}

#[test]
fn the_market_runs_on_postgresql_too() {
    let Ok(admin) = std::env::var("CPUSHARE_TEST_PG") else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED market on PostgreSQL: CPUSHARE_TEST_PG is unset (scripts/test.sh starts a server)"
        );
        return;
    };
    let db = format!("cpushare_e2e_{}", std::process::id());
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .arg(&admin)
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql (apt-get install postgresql-client)");
        assert!(out.status.success(), "psql {sql}: {}", stderr(&out));
    };
    psql(&format!("CREATE DATABASE {db}"));
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => panic!("CPUSHARE_TEST_PG has no database part: {admin}"),
    };
    {
        let wasm = wasm_modules();
        let broker = Broker::start(Some(&url));
        let _s = Seller::start(&broker, "pg-seller", 1, "0.001");
        let buyer = Buyer::login(&broker, "pg-buyer", "1");
        let out = buyer.run(&["--json", "run", wasm.join("hello.wasm").to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("hello from wasm"));
        assert_eq!(cost_micros(&out), 1000);
        assert_eq!(broker.balance("user:pg-buyer"), 1_000_000 - 1000);
    }
    psql(&format!("DROP DATABASE {db} WITH (FORCE)"));
}

#[test]
fn two_buyers_uploading_the_same_new_module_at_once_both_run_it() {
    // Uploads of one content id take turns at the broker; before they did,
    // both appended to one partial file and the stored image was wrong.
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let _seller = Seller::start(&broker, "s1", 2, "0.001");
    let buyers = [
        Buyer::login(&broker, "b1", "10"),
        Buyer::login(&broker, "b2", "10"),
    ];
    let module = wasm.join("primes.wasm");
    let mut runs: Vec<_> = buyers
        .iter()
        .map(|b| spawn_run(b, &[module.to_str().unwrap(), "--wait", "60", "--", "1000"]))
        .collect();
    for run in &mut runs {
        let out = wait_output(run, Duration::from_secs(120));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    broker.ledger();
}
