//! VM leases end to end: a live ISO through `cpushare run`, the broker and
//! a seller's microVMM on real KVM. The guest is the freestanding test
//! guest (its work runs in ring 3, so it runs at native speed even on this
//! machine's software KVM); stock-Linux ISOs are tested in seller/vmm where
//! hardware KVM exists.

use cpushare_tests::{test_guest_iso, Broker, Buyer, Seller};

#[test]
fn a_live_iso_boots_on_a_seller_and_its_power_off_ends_the_lease_and_the_bill() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: VM lease tests must run on a KVM host"
    );
    let iso = test_guest_iso("e2e-hello", "hello blk smp 2 exit 3");
    let broker = Broker::start(None);
    let _seller = Seller::start_with(
        &broker,
        "vm-seller",
        2,
        "0.001",
        &["--kinds", "wasm,vm", "--allow-software-kvm"],
    );
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
    let _seller = Seller::start_with(
        &broker,
        "console-seller",
        1,
        "0.001",
        &["--kinds", "vm", "--allow-software-kvm"],
    );
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
