//! VM leases in their sandbox, with real processes: the real
//! `cpushare-seller sandbox --vm-iso` binary, real namespaces, cgroups,
//! seccomp and KVM, booting the freestanding test guest
//! (`guest-images/test-guest`, its work in ring 3, so it runs at native
//! speed even on a software KVM). Every test needs root and /dev/kvm; none
//! skips: without them they fail and say what is missing.

mod support;

use cpushare_proto::msg::LeaseEnd;
use cpushare_proto::sandbox::{SandboxEnd, SandboxVmJob};
use cpushare_seller::jail::cgroup::OVERHEAD_BYTES;
use cpushare_seller::jail::supervisor::{self, Sandbox};
use cpushare_seller::jail::verdict;
use cpushare_seller::jail::vm_supervisor::{self, Event};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::{status_field, TestHost, TestLease, MIB};
use tokio::sync::mpsc;

/// The daemon's side, as a test sees it: a home and cgroups, and the
/// built test guest.
struct Host {
    host: TestHost,
    guest_dir: PathBuf,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let host = TestHost::new("VM confinement", "vmtest");
        assert!(
            Path::new("/dev/kvm").exists(),
            "/dev/kvm is missing: VM sandbox tests must run on a KVM host"
        );
        Host {
            host,
            guest_dir: build_test_guest(),
        }
    })
}

/// Builds the test guest ELF (once per test process, into cargo's test
/// tmpdir). Fails loudly without gcc: these tests never pass by skipping.
fn build_test_guest() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/test-guest");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("vm-confinement-guest-{}", std::process::id()));
    let status = Command::new("sh")
        .arg(src.join("build.sh"))
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run guest-images/test-guest/build.sh");
    assert!(
        status.success(),
        "building the test guest failed; install gcc and binutils"
    );
    out
}

/// An ISO booting the test guest with `cmdline`.
fn iso(name: &str, cmdline: &str) -> PathBuf {
    let h = host();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/test-guest");
    let iso = h.guest_dir.join(format!("{name}.iso"));
    let status = Command::new("sh")
        .arg(src.join("mkiso.sh"))
        .arg(h.guest_dir.join("guest.elf"))
        .arg(&iso)
        .arg(cmdline)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run guest-images/test-guest/mkiso.sh");
    assert!(status.success(), "packing the ISO failed; install xorriso");
    iso
}

/// KVM's CPUID list, read once for all tests.
fn host_cpuid() -> Vec<[u32; 7]> {
    static CPUID: OnceLock<Vec<[u32; 7]>> = OnceLock::new();
    CPUID
        .get_or_init(|| {
            cpushare_vmm::HostCpuid::read_host()
                .expect("read KVM's CPUID list")
                .to_words()
        })
        .clone()
}

/// How to start one VM sandbox.
struct Setup<'a> {
    cmdline: &'a str,
    vcpus: u8,
    guest_mib: u64,
    /// Guest memory the cgroup is sized for (normally `guest_mib`).
    cgroup_guest_mib: u64,
    attack: Option<&'a str>,
    /// The CPUID list handed in; `None` hands in the host's, read once,
    /// as the daemon does.
    cpuid: Option<Vec<[u32; 7]>>,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            cmdline: "hello",
            vcpus: 1,
            guest_mib: 32,
            cgroup_guest_mib: 32,
            attack: None,
            cpuid: None,
        }
    }
}

/// What a finished VM sandbox produced.
#[derive(Debug)]
struct Run {
    end: LeaseEnd,
    reported: Option<SandboxEnd>,
    console: String,
}

/// A running VM sandbox and the handles a test drives it with.
struct Running {
    sandbox: Sandbox,
    job: SandboxVmJob,
    console_tx: mpsc::UnboundedSender<Vec<u8>>,
    console_rx: mpsc::UnboundedReceiver<Vec<u8>>,
    mem_mib: u64,
}

fn start(setup: &Setup<'_>) -> Running {
    let h = host();
    let iso = iso(&h.host.lease_name(), setup.cmdline);
    let TestLease { cgroup, spec, .. } = h.host.lease(
        vm_supervisor::limits(setup.cgroup_guest_mib * MIB, u32::from(setup.vcpus)),
        setup.guest_mib * MIB,
        setup.attack,
    );
    let sandbox = vm_supervisor::spawn(&spec, &iso, None, cgroup).unwrap();
    let (console_tx, console_rx) = mpsc::unbounded_channel();
    Running {
        sandbox,
        job: SandboxVmJob {
            vcpus: setup.vcpus,
            mem_bytes: setup.guest_mib * MIB,
            cmdline: Vec::new(),
            host_cpuid: setup.cpuid.clone().unwrap_or_else(host_cpuid),
        },
        console_tx,
        console_rx,
        mem_mib: setup.guest_mib,
    }
}

/// Drives the sandbox to its end; `stop` resolves to stop it. The console
/// text so far is shared with the caller through `console`.
async fn finish(
    r: Running,
    stop: impl std::future::Future<Output = ()>,
    console: Arc<Mutex<String>>,
) -> Run {
    let Running {
        mut sandbox,
        job,
        console_tx,
        console_rx,
        mem_mib,
    } = r;
    drop(console_tx);
    let sink = console.clone();
    let mut on_event = move |e: Event| {
        if let Event::Console(data) = e {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&data));
        }
    };
    let (reported, _) = tokio::time::timeout(
        Duration::from_secs(120),
        vm_supervisor::drive(
            &mut sandbox,
            job,
            stop,
            Duration::from_secs(100),
            console_rx,
            &mut on_event,
        ),
    )
    .await
    .expect("the VM sandbox ended in time");
    let death = sandbox.reap(reported.clone()).await;
    let text = console.lock().unwrap().clone();
    Run {
        end: verdict::lease_end(&death, mem_mib),
        reported,
        console: text,
    }
}

async fn run(setup: &Setup<'_>) -> Run {
    let r = start(setup);
    finish(r, std::future::pending(), Arc::default()).await
}

#[tokio::test]
async fn a_confined_vm_boots_its_iso_and_reports_its_power_off() {
    let r = run(&Setup {
        cmdline: "hello blk smp 2 exit 7",
        vcpus: 2,
        ..Setup::default()
    })
    .await;
    assert_eq!(r.end, LeaseEnd::PowerOff { status: 7 }, "{r:?}");
    assert!(
        r.console.contains("hello from cpushare test guest"),
        "{r:?}"
    );
    assert!(
        r.console.contains("blk: capacity="),
        "the guest must read its ISO through the inherited fd: {r:?}"
    );
    assert!(r.console.contains("smp: 2 vCPUs up"), "{r:?}");
}

#[tokio::test]
async fn a_bad_cpuid_list_from_the_daemon_fails_the_lease_and_names_it() {
    let r = run(&Setup {
        cpuid: Some(vec![[0; 7]; 1000]),
        ..Setup::default()
    })
    .await;
    match &r.end {
        LeaseEnd::Failed { message } => {
            assert!(message.contains("CPUID list of 1000 entries"), "{r:?}")
        }
        other => panic!("expected a failed lease, got {other:?}"),
    }
    assert!(!r.console.contains("hello"), "{r:?}");
}

#[tokio::test]
async fn console_input_reaches_the_confined_guest() {
    let r = start(&Setup {
        cmdline: "hello read exit 0",
        ..Setup::default()
    });
    r.console_tx
        .send(b"typed into the jail\n".to_vec())
        .unwrap();
    let run = finish(r, std::future::pending(), Arc::default()).await;
    assert!(
        run.console.contains("input: typed into the jail"),
        "{run:?}"
    );
    assert_eq!(run.end, LeaseEnd::PowerOff { status: 0 });
}

/// Threads of `pid` by name.
fn threads(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, comm.trim().to_string()))
        })
        .collect()
}

#[tokio::test]
async fn the_vmm_and_every_vcpu_thread_are_filtered_and_unprivileged() {
    let r = start(&Setup {
        // Runs until stopped: thousands of seconds of ring-3 work.
        cmdline: "hello spin 100000000000000",
        vcpus: 2,
        guest_mib: 32,
        cgroup_guest_mib: 32,
        ..Setup::default()
    });
    let console = Arc::new(Mutex::new(String::new()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let outer = r.sandbox.pid().unwrap();
    // The lease's cgroup allows guest memory plus the VMM's stated overhead.
    let dirs = r.sandbox.cgroup().unwrap().dirs().to_vec();
    let limit_file = if dirs.len() == 1 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit = std::fs::read_to_string(dirs[0].join(limit_file)).unwrap();
    assert_eq!(
        limit.trim(),
        (32 * MIB + vm_supervisor::VMM_OVERHEAD_BYTES).to_string()
    );
    let watcher_console = console.clone();
    let checks = tokio::spawn(async move {
        // Wait until the guest prints, so the vCPU threads run.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !watcher_console.lock().unwrap().contains("hello") {
            assert!(Instant::now() < deadline, "guest never printed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
            .unwrap_or_default();
        let vmm: u32 = children
            .split_whitespace()
            .next()
            .expect("the outer sandbox has its inner VMM process")
            .parse()
            .unwrap();
        // The guest may print before the VMM started its last thread.
        let want = ["vcpu0", "vcpu1", "vmm-control", "console-in"];
        let list = loop {
            let list = threads(vmm);
            let missing: Vec<_> = want
                .iter()
                .filter(|w| !list.iter().any(|(_, n)| n == *w))
                .collect();
            if missing.is_empty() {
                break list;
            }
            assert!(
                Instant::now() < deadline,
                "no threads {missing:?} in {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let names: Vec<&str> = list.iter().map(|(_, n)| n.as_str()).collect();
        for (tid, name) in &list {
            assert_eq!(status_field(vmm, *tid, "Seccomp"), "2", "{name}");
            assert_eq!(status_field(vmm, *tid, "NoNewPrivs"), "1", "{name}");
            for caps in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
                assert_eq!(
                    status_field(vmm, *tid, caps),
                    "0000000000000000",
                    "{name} {caps}"
                );
            }
            // Every thread holds the boot filter plus its role's own.
            let filters: u32 = status_field(vmm, *tid, "Seccomp_filters").parse().unwrap();
            assert_eq!(filters, 2, "{name} has {filters} filters");
            let uid: u32 = status_field(vmm, *tid, "Uid")
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(uid >= supervisor::UID_BASE, "{name} uid {uid}");
        }
        // The VMM's memory is charged to the lease's cgroup, bounded at
        // guest memory plus the stated overhead.
        let cgroup_file = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
        assert!(cgroup_file.contains("vmtest-"), "{cgroup_file}");
        stop_tx.send(()).unwrap();
        names.len()
    });
    let stop = async {
        let _ = stop_rx.await;
    };
    let run = finish(r, stop, console).await;
    let thread_count = checks.await.unwrap();
    assert!(thread_count >= 4);
    assert_eq!(run.end, LeaseEnd::Cancelled, "{run:?}");
    assert_eq!(run.reported, Some(SandboxEnd::Interrupted));
}

#[tokio::test]
async fn forbidden_calls_in_a_vm_sandbox_are_killed_and_named() {
    for (attack, syscall) in [
        ("kvm_ioctl", "ioctl"),
        ("vcpu_create_vm", "ioctl"),
        ("vcpu_openat", "openat"),
        ("openat", "openat"),
        ("socket", "socket"),
        ("execve", "execve"),
        ("ptrace", "ptrace"),
        ("mount", "mount"),
        ("kexec_load", "kexec_load"),
        ("fork", "clone"),
    ] {
        let r = run(&Setup {
            cmdline: "hello",
            attack: Some(attack),
            ..Setup::default()
        })
        .await;
        assert_eq!(
            r.end.to_string(),
            format!("killed: seccomp (syscall {syscall})"),
            "attack {attack}: {r:?}"
        );
        assert!(
            !r.console.contains("hello"),
            "attack {attack}: the guest ran: {r:?}"
        );
    }
}

#[tokio::test]
async fn a_guest_touching_all_its_memory_fits_its_lease() {
    // 96 MiB of guest RAM, 64 of them written from ring 3 beside the image.
    let r = run(&Setup {
        cmdline: "membomb 64 exit 0",
        guest_mib: 96,
        cgroup_guest_mib: 96,
        ..Setup::default()
    })
    .await;
    assert!(r.console.contains("membomb: touched 64 MiB"), "{r:?}");
    assert_eq!(r.end, LeaseEnd::PowerOff { status: 0 }, "{r:?}");
}

#[tokio::test]
async fn guest_memory_past_the_cgroup_limit_is_an_oom_kill() {
    // Guest RAM is mapped by the VMM up front but becomes host memory only
    // as the guest touches it, charged to the sandbox's cgroup. A VMM
    // given more RAM than its lease's cgroup allows (here 320 MiB against
    // 16 MiB + the overhead) is stopped by the kernel at the limit.
    const _: () = assert!((16 + 288) * MIB > 16 * MIB + OVERHEAD_BYTES);
    let r = run(&Setup {
        cmdline: "membomb 288 exit 0",
        guest_mib: 320,
        cgroup_guest_mib: 16,
        ..Setup::default()
    })
    .await;
    assert_eq!(r.end.to_string(), "killed: out of memory", "{r:?}");
    assert!(!r.console.contains("membomb: touched"), "{r:?}");
    assert!(
        r.console.contains("membomb: 16 MiB"),
        "the guest ran before it hit the limit: {r:?}"
    );
    // The host goes on: the next VM sandbox runs normally.
    let r = run(&Setup::default()).await;
    assert_eq!(r.end, LeaseEnd::PowerOff { status: 0 }, "{r:?}");
}
