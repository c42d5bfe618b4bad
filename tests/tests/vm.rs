//! VM leases end to end: a live ISO through `cpushare run`, the broker and
//! a seller's microVMM on real KVM. The guest is the freestanding test
//! guest (its work runs in ring 3, so it runs at native speed even on this
//! machine's software KVM); stock-Linux ISOs are tested in seller/vmm where
//! hardware KVM exists.

use cpushare_tests::{spawn_run, test_guest_iso, wait_output, Broker, Buyer, Seller};
use std::time::Duration;

/// VM lease tests need `/dev/kvm`; without it they fail rather than skip.
fn require_kvm() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: VM lease tests must run on a KVM host"
    );
}

/// A seller of `cpus` vCPUs at 0.001 per vCPU-minute offering `kinds`,
/// VM leases included even on this machine's software KVM.
fn vm_seller(broker: &Broker, name: &str, cpus: u32, kinds: &str) -> Seller {
    Seller::start_with(
        broker,
        name,
        cpus,
        "0.001",
        &["--kinds", kinds, "--allow-software-kvm"],
    )
}

#[test]
fn a_live_iso_boots_on_a_seller_and_its_power_off_ends_the_lease_and_the_bill() {
    require_kvm();
    let iso = test_guest_iso("e2e-hello", "hello blk smp 2 exit 3");
    let broker = Broker::start(None);
    let _seller = vm_seller(&broker, "vm-seller", 2, "wasm,vm");
    let buyer = Buyer::login(&broker, "vm-buyer", "1");
    let out = buyer.run(&[
        "--json",
        "run",
        iso.to_str().unwrap(),
        "--cpus",
        "2",
        "--mem",
        "64M",
        "--minutes",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The guest's serial console is the job's stdout.
    assert!(
        stdout.contains("hello"),
        "console: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("blk"),
        "the guest must find its ISO as a virtio disk: {stdout}"
    );
    // Its power-off status is our exit code.
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("powered off with status 3"), "{stderr}");
    let leases = buyer.json("leases");
    assert_eq!(leases[0]["kind"], "vm");
    assert_eq!(leases[0]["state"], "ended");
    // 2 vCPUs x 1 started minute x 0.001.
    assert_eq!(leases[0]["cost"], serde_json::json!(2000));
    assert_eq!(broker.balance("user:vm-buyer"), 1_000_000 - 2000);
}

#[test]
fn a_seller_on_software_kvm_does_not_offer_vm_leases_unless_told() {
    let broker = Broker::start(None);
    let token = broker.account("cautious", "seller");
    let home = tempfile::tempdir().unwrap();
    let seller = cpushare_tests::bin("cpushare-seller");
    let ok = std::process::Command::new(&seller)
        .arg("--home")
        .arg(home.path())
        .args(["enroll", &token])
        .status()
        .unwrap();
    assert!(ok.success());
    if matches!(cpushare_vmm_kind(), Kind::Hardware) {
        // Hardware KVM: vm leases are offered without the flag.
        return;
    }
    let out = std::process::Command::new(&seller)
        .arg("--home")
        .arg(home.path())
        .args(["run", "--price", "0.001", "--kinds", "wasm,vm"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-software-kvm"), "{err}");
}

enum Kind {
    Hardware,
    Other,
}

fn cpushare_vmm_kind() -> Kind {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if !pvm && (flags.contains(" vmx") || flags.contains(" svm")) {
        Kind::Hardware
    } else {
        Kind::Other
    }
}

#[test]
fn what_the_buyer_types_reaches_the_guest_console() {
    use std::io::Write;
    let iso = test_guest_iso("e2e-read", "hello read exit 0");
    let broker = Broker::start(None);
    let _seller = vm_seller(&broker, "console-seller", 1, "vm");
    let buyer = Buyer::login(&broker, "typist", "1");
    let mut child = buyer
        .cmd()
        .args(["run", iso.to_str().unwrap(), "--mem", "64M"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"typed by the buyer\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("typed by the buyer"),
        "the guest must echo the typed line: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

/// Seconds the renewed guest sleeps: past one minute (plus the seller's
/// 5 s of slack), well inside two.
const RENEWED_GUEST_SECS: u32 = 75;

#[test]
fn a_renewed_vm_lease_runs_past_its_first_minute_and_is_billed_the_minutes_it_ran() {
    require_kvm();
    // Price 0.001 per vCPU-minute, in micro-credits; the buyer's 1 credit.
    const PRICE: i64 = 1_000;
    const CREDIT: i64 = 1_000_000;
    const VCPUS: i64 = 2;
    let iso = test_guest_iso(
        "e2e-renewed",
        &format!("hello sleep {RENEWED_GUEST_SECS} exit 7"),
    );
    let broker = Broker::start(None);
    let _seller = vm_seller(&broker, "vm-steady", 2, "vm");
    let buyer = Buyer::login(&broker, "vm-rene", "1");
    let mut run = spawn_run(
        &buyer,
        &[
            iso.to_str().unwrap(),
            "--cpus",
            "2",
            "--mem",
            "64M",
            "--minutes",
            "1",
            "--renew-up-to",
            "2",
            "--retries",
            "0",
            "--wait",
            "120",
        ],
    );
    let out = wait_output(&mut run, Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    // The guest slept its seconds through in its one lease, past the
    // first paid minute, and powered off with its own status.
    assert!(
        stdout.contains(&format!("sleep: {RENEWED_GUEST_SECS} s")),
        "the guest finished its sleep: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let leases = buyer.json("leases");
    let all = leases.as_array().expect("leases");
    assert_eq!(all.len(), 1, "one lease, never placed again: {leases}");
    let lease = &all[0];
    let id = lease["id"].as_str().expect("lease id");
    assert!(
        stderr.contains(&format!("renewed lease {id} to 2 minutes")),
        "the buyer is told of the renewal: {stderr}"
    );
    assert_eq!(lease["kind"], "vm", "{lease}");
    assert_eq!(lease["state"], "ended", "{lease}");
    assert_eq!(lease["end"], "powered off with status 7", "{lease}");
    assert_eq!(lease["minutes"], 2, "{lease}");
    assert_eq!(lease["settled_minutes"], 2, "{lease}");
    // Priced per vCPU-minute: 2 vCPUs x 2 minutes x 0.001.
    assert_eq!(lease["cost"].as_i64(), Some(2 * VCPUS * PRICE), "{lease}");
    assert_eq!(broker.balance("user:vm-rene"), CREDIT - 2 * VCPUS * PRICE);

    // Every credit is accounted for: the ledger sums to zero, the seller
    // and the broker's fee hold exactly what the buyer paid, and no escrow
    // or hold is left behind.
    broker.assert_settled("vm-steady", 2 * VCPUS * PRICE);
}
