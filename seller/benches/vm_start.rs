//! What a VM sandbox costs to start, printed side by side (needs root and
//! /dev/kvm, like the seller): the time from starting a VM lease to the
//! guest's first console byte,
//!
//! 1. in a sandbox child with the full jail and seccomp filters (how the
//!    daemon runs VM leases now);
//! 2. in a sandbox child with the jail but no seccomp;
//! 3. in this process, as the daemon used to (ISO parse, `Vm::new`, `run`
//!    on a thread);
//!
//! each booting the test guest (`hello`, then power off), median of ROUNDS;
//! and the CPU time of the whole run (every sandbox process and thread,
//! from `getrusage(RUSAGE_CHILDREN)`; this process's for the old path),
//! the figure that stays put when other work competes for the cores (the
//! sandbox runs at SCHED_IDLE, so its wall time stretches under load).
//!
//!   cargo bench -p cpushare-seller --bench vm_start [-- ROUNDS]

use cpushare_proto::sandbox::SandboxVmJob;
use cpushare_seller::jail::cgroup::{Hierarchy, LeaseCgroup};
use cpushare_seller::jail::supervisor::{self, SpawnSpec};
use cpushare_seller::jail::vm_supervisor::{self, Event};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GUEST_MIB: u64 = 64;

fn build_iso(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/test-guest");
    let ok = Command::new("sh")
        .arg(src.join("build.sh"))
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run build.sh")
        .success();
    assert!(
        ok,
        "building the test guest failed; install gcc and binutils"
    );
    let iso = dir.join("hello.iso");
    let ok = Command::new("sh")
        .arg(src.join("mkiso.sh"))
        .arg(dir.join("guest.elf"))
        .arg(&iso)
        .arg("hello")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run mkiso.sh")
        .success();
    assert!(ok, "packing the ISO failed; install xorriso");
    iso
}

/// CPU time (user + system) of `who` so far.
fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: a zeroed rusage is a valid out buffer.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is valid for writing.
    unsafe { libc::getrusage(who, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// Spawn of a VM sandbox to the guest's first console byte, and the CPU
/// time of the sandbox's whole life.
async fn sandboxed(
    home: &Path,
    cgroups: &Hierarchy,
    iso: &Path,
    seq: u32,
    seccomp: bool,
) -> (Duration, Duration) {
    let name = format!("{}-vmbench{seq}", std::process::id());
    let uid = supervisor::next_uid();
    let scratch = home.join("scratch").join(&name);
    std::fs::create_dir_all(&scratch).unwrap();
    std::os::unix::fs::chown(&scratch, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cgroup =
        LeaseCgroup::create(cgroups, &name, vm_supervisor::limits(GUEST_MIB * MIB, 1)).unwrap();
    let spec = SpawnSpec {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_cpushare-seller")),
        jail_root: home.join("jail"),
        scratch,
        uid,
        max_memory_bytes: GUEST_MIB * MIB,
        jail: true,
        seccomp,
        env: Vec::new(),
    };
    let cpu0 = cpu(libc::RUSAGE_CHILDREN);
    let t0 = Instant::now();
    let mut sandbox = vm_supervisor::spawn(&spec, iso, None, cgroup).unwrap();
    let mut first: Option<Duration> = None;
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut on_event = |e: Event| {
        if matches!(e, Event::Console(_)) && first.is_none() {
            first = Some(t0.elapsed());
        }
    };
    let job = SandboxVmJob {
        vcpus: 1,
        mem_bytes: GUEST_MIB * MIB,
        cmdline: Vec::new(),
        // As the daemon does: KVM's CPUID list read once, handed in.
        host_cpuid: cpushare_vmm::HostCpuid::read_host()
            .map(|c| c.to_words())
            .unwrap_or_default(),
    };
    let (reported, _) = vm_supervisor::drive(
        &mut sandbox,
        job,
        std::future::pending(),
        Duration::from_secs(60),
        rx,
        &mut on_event,
    )
    .await;
    let _ = sandbox.reap(reported.clone()).await;
    let used = cpu(libc::RUSAGE_CHILDREN) - cpu0;
    let first = first.unwrap_or_else(|| panic!("no console output; ended {reported:?}"));
    (first, used)
}

/// The old in-daemon path: parse, build and run in this process.
fn in_process(iso: &Path) -> (Duration, Duration) {
    struct First(Instant, mpsc::Sender<Duration>);
    impl Write for First {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.1.send(self.0.elapsed());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let cpu0 = cpu(libc::RUSAGE_SELF);
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    let iso = iso.to_owned();
    let run = std::thread::spawn(move || {
        let boot = cpushare_vmm::from_iso(&iso, 1, GUEST_MIB * MIB).unwrap();
        let vm = cpushare_vmm::Vm::new(boot.config, Box::new(First(t0, tx)), None).unwrap();
        vm.run().unwrap()
    });
    let first = rx.recv().expect("console output");
    run.join().unwrap();
    (first, cpu(libc::RUSAGE_SELF) - cpu0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root, like the seller"
    );
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("jail")).unwrap();
    let iso = build_iso(&home.path().join("guest"));
    let cgroups = Hierarchy::detect().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut full, mut no_seccomp, mut old) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds as u32 {
        full.push(rt.block_on(sandboxed(home.path(), &cgroups, &iso, 2 * i, true)));
        no_seccomp.push(rt.block_on(sandboxed(home.path(), &cgroups, &iso, 2 * i + 1, false)));
        old.push(in_process(&iso));
    }
    println!(
        "VM lease, {GUEST_MIB} MiB, 1 vCPU, median of {rounds}: start to first console byte (wall), whole run (CPU)"
    );
    let row = |name: &str, v: &[(Duration, Duration)]| {
        let wall = median(v.iter().map(|x| x.0).collect());
        let cpu = median(v.iter().map(|x| x.1).collect());
        println!("  {name:<26} {wall:>9.2?} {cpu:>9.2?}");
        (wall, cpu)
    };
    let (fw, fc) = row("sandbox, jail + seccomp", &full);
    row("sandbox, jail only", &no_seccomp);
    let (ow, oc) = row("in the daemon (old path)", &old);
    println!(
        "  {:<26} {:>9.2?} {:>9.2?}",
        "added by the sandbox",
        fw.saturating_sub(ow),
        fc.saturating_sub(oc)
    );
}
