//! `--share` for wasm jobs, end to end with real processes: a read-only
//! directory uploaded by content id and staged into the guest, a writable
//! one shipped back and placed only when the job ends well, once, even
//! when the work is placed again after its seller is SIGKILLed.

use cpushare_tests::{spawn_run, wait_output, wait_running, wasm_modules, Broker, Buyer, Seller};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One test's market: sellers offering one CPU at 0.001 a minute, a
/// buyer `b` with 1 credit, the example modules, and a base directory
/// holding `in/x` (the input share).
struct Market {
    base: tempfile::TempDir,
    buyer: Buyer,
    sellers: Vec<Seller>,
    broker: Broker,
    /// Directory of the example `.wasm` modules.
    wasm: PathBuf,
}

/// A broker with one seller per name in `sellers`, and the rest of [`Market`].
fn market(sellers: &[&str]) -> Market {
    let wasm = wasm_modules();
    let broker = Broker::start(None);
    let sellers = sellers
        .iter()
        .map(|name| Seller::start(&broker, name, 1, "0.001"))
        .collect();
    let buyer = Buyer::login(&broker, "b", "1");
    Market {
        base: input_dir(),
        buyer,
        sellers,
        broker,
        wasm,
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A directory holding `in/x`.
fn input_dir() -> tempfile::TempDir {
    let base = tempfile::tempdir().unwrap();
    std::fs::create_dir(base.path().join("in")).unwrap();
    std::fs::write(base.path().join("in/x"), b"hello share\n").unwrap();
    base
}

fn share(dir: &Path, guest: &str, rw: bool) -> String {
    format!("{}:{guest}{}", dir.display(), if rw { ":rw" } else { "" })
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn inputs_reach_the_guest_read_only_and_outputs_come_back_only_from_a_job_that_ended_well() {
    let m = market(&["s"]);
    let (inp, out) = (m.base.path().join("in"), m.base.path().join("out"));
    let module = m.wasm.join("share.wasm");
    let out_run = m.buyer.run(&[
        "run",
        module.to_str().unwrap(),
        "--share",
        &share(&inp, "/in", false),
        "--share",
        &share(&out, "/out", true),
    ]);
    assert!(out_run.status.success(), "{}", stderr(&out_run));
    let text = stdout(&out_run);
    assert!(text.contains("write into /in: refused"), "{text}");
    assert!(text.contains("escape from /in: refused"), "{text}");
    assert_eq!(
        std::fs::read_to_string(out.join("y")).unwrap(),
        "seen: hello share\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sub/z")).unwrap(),
        "deep\n"
    );
    assert_eq!(names(&inp), ["x"], "the input directory is untouched");
    assert_eq!(
        names(m.base.path()),
        ["in", "out"],
        "no temporary directory is left behind"
    );

    // A job that fails places nothing.
    let failed_out = m.base.path().join("failed-out");
    let o = m.buyer.run(&[
        "run",
        m.wasm.join("exitcode.wasm").to_str().unwrap(),
        "--share",
        &share(&failed_out, "/out", true),
        "--",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        !failed_out.exists(),
        "a failed job's outputs must not appear"
    );

    // Outputs never overwrite: a non-empty output directory is refused
    // before anything is bought.
    let spent = m.broker.balance("user:b");
    let o = m.buyer.run(&[
        "run",
        module.to_str().unwrap(),
        "--share",
        &share(&inp, "/in", false),
        "--share",
        &share(&out, "/out", true),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not empty"), "{}", stderr(&o));
    assert_eq!(m.broker.balance("user:b"), spent);
    m.broker.ledger();
}

#[test]
fn links_and_bad_guest_paths_are_refused_before_anything_is_bought() {
    let m = market(&["s"]);
    let inp = m.base.path().join("in");
    std::os::unix::fs::symlink("/etc/passwd", inp.join("passwd")).unwrap();
    let module = m.wasm.join("share.wasm");
    let o = m.buyer.run(&[
        "run",
        module.to_str().unwrap(),
        "--share",
        &share(&inp, "/in", false),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    for bad in ["/in/../etc", "relative", "/scratch/x", "/"] {
        let o = m.buyer.run(&[
            "run",
            module.to_str().unwrap(),
            "--share",
            &format!("{}:{bad}", m.base.path().display()),
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("guest path"), "{bad}: {}", stderr(&o));
    }
    assert_eq!(m.broker.balance("user:b"), 1_000_000);
    assert!(m.buyer.json("orders").as_array().unwrap().is_empty());
}

#[test]
fn a_job_rerun_after_its_seller_is_killed_places_its_outputs_once() {
    let mut m = market(&["seller-a", "seller-b"]);
    let (inp, out) = (m.base.path().join("in"), m.base.path().join("out"));
    let module = m.wasm.join("share.wasm");
    // The guest writes its outputs at once, then works for 6 s: the first
    // seller dies holding outputs that must never reach the buyer.
    let mut run = spawn_run(
        &m.buyer,
        &[
            module.to_str().unwrap(),
            "--share",
            &share(&inp, "/in", false),
            "--share",
            &share(&out, "/out", true),
            "--",
            "6",
        ],
    );
    let first = wait_running(&m.buyer, 1, Duration::from_secs(30))[0]["seller"]
        .as_str()
        .unwrap()
        .to_string();
    match first.as_str() {
        "seller-a" => m.sellers[0].proc.kill(),
        _ => m.sellers[1].proc.kill(),
    }
    let leases = wait_running(&m.buyer, 2, Duration::from_secs(60));
    assert_ne!(leases[0]["seller"], first.as_str());
    let o = wait_output(&mut run, Duration::from_secs(120));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("placing the work again"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o).matches("done").count(), 1, "{}", stdout(&o));
    assert_eq!(names(&out), ["sub", "y"]);
    assert_eq!(
        std::fs::read_to_string(out.join("y")).unwrap(),
        "seen: hello share\n"
    );
    assert_eq!(names(m.base.path()), ["in", "out"]);
    // Two started minutes: the lost lease's and the rerun's.
    assert_eq!(m.broker.balance("user:b"), 1_000_000 - 2000);
    m.broker.ledger();
}

#[test]
fn a_guest_that_swaps_its_share_for_a_host_symlink_ships_nothing() {
    // The guest owns its scratch directory: it moves the seller's share
    // layout away and leaves a symlink to the host's /etc where its
    // writable share was. The seller must not pack what that points at.
    let m = market(&["s"]);
    let out = m.base.path().join("out");
    let module = m.wasm.join("sharejack.wasm");
    let run = m.buyer.run(&[
        "run",
        module.to_str().unwrap(),
        "--share",
        &share(&out, "/out", true),
    ]);
    assert!(
        stdout(&run).contains("share layout swapped"),
        "{}{}",
        stdout(&run),
        stderr(&run)
    );
    assert!(!run.status.success(), "the run must fail: {}", stderr(&run));
    assert!(stderr(&run).contains("tampered"), "{}", stderr(&run));
    assert!(
        !out.exists() || names(&out).is_empty(),
        "nothing may be placed: {:?}",
        names(&out)
    );
    m.broker.ledger();
}
