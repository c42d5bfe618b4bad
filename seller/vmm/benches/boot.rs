//! Boot benchmark: the test guest (64 MiB, 1 vCPU, `hello`, power off)
//! booted N times by this VMM and by `qemu-system-x86_64 -M microvm`, each
//! as a child process measured with wait4 (wall, user+sys CPU, peak RSS);
//! then the guest's ring-3 spin loop against the same loop on the host.
//! Prints figures only; it asserts nothing about timings.
//!
//! `cargo bench -p cpushare-vmm --bench boot` (BENCH_N=20 by default).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cpushare_vmm::{CpuidWords, HostCpuid, HostHandoff, Payload, Vm, VmConfig, VmExit};

/// One child run.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: i64,
    ok: bool,
}

fn main() {
    // Child mode: boot one VM and exit with its status.
    if let Ok(kernel) = std::env::var("CPUSHARE_BENCH_CHILD_KERNEL") {
        let cmdline = std::env::var("CPUSHARE_BENCH_CHILD_CMDLINE").unwrap_or_default();
        let cfg = VmConfig {
            vcpus: 1,
            mem_bytes: 64 << 20,
            kernel: Payload::Path(kernel.into()),
            initrd: None,
            cmdline,
            disk_ro: None,
            scratch: None,
            net: None,
        };
        // The host's CPUID list, when the parent read it once and handed
        // it in, as the seller daemon does for its VM sandboxes.
        let cpuid = std::env::var("CPUSHARE_BENCH_CHILD_CPUID")
            .ok()
            .map(|w| HostCpuid::from_words(&parse_cpuid(&w)).expect("CPUID words"));
        let files = HostHandoff {
            cpuid,
            ..HostHandoff::default()
        };
        let vm = Vm::with_files(cfg, files, Box::new(std::io::stdout()), None);
        let code = match vm.and_then(Vm::run) {
            Ok(VmExit::PowerOff { status }) => status as i32,
            Ok(other) => {
                eprintln!("child: {other:?}");
                100
            }
            Err(e) => {
                eprintln!("child: {e}");
                101
            }
        };
        std::process::exit(code);
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-guest");
    let st = Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-images/test-guest/build.sh"))
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("run guest-images/test-guest/build.sh");
    assert!(st.success(), "building the test guest failed");
    let elf = dir.join("guest.elf");
    let me = std::env::current_exe().expect("own path");
    let has_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();

    println!("kvm: {:?}", cpushare_vmm::kvm_kind());
    println!("boot: test guest, 64 MiB, 1 vCPU, `hello` then power off; {n} runs each, medians");
    // Read once here and handed to every VM, as the seller daemon does.
    let cpuid = HostCpuid::read_host()
        .map(|c| format_cpuid(&c.to_words()))
        .expect("read KVM's CPUID list");
    let mut ours = Vec::new();
    let mut cold = Vec::new();
    let mut qemu = Vec::new();
    for _ in 0..n {
        let mut c = vmm_cmd(&me, &elf, "hello");
        c.env("CPUSHARE_BENCH_CHILD_CPUID", &cpuid);
        ours.push(run_child(c, "hello from cpushare"));
        cold.push(run_child(
            vmm_cmd(&me, &elf, "hello"),
            "hello from cpushare",
        ));
        if has_qemu {
            qemu.push(run_child(qemu_cmd(&elf, "hello"), "hello from cpushare"));
        }
    }
    let o = summarize("cpushare-vmm", &ours);
    println!("  (as the seller runs it: KVM's CPUID list read once per host and handed in)");
    summarize("  reading CPUID", &cold);
    if has_qemu {
        let q = summarize("qemu microvm", &qemu);
        println!(
            "ratio qemu/cpushare-vmm: wall {:.2}x, cpu {:.2}x, peak rss {:.2}x",
            q.0.as_secs_f64() / o.0.as_secs_f64(),
            q.1.as_secs_f64() / o.1.as_secs_f64().max(1e-9),
            q.2 as f64 / o.2 as f64
        );
    } else {
        println!(
            "qemu-system-x86_64 not installed; apt-get install qemu-system-x86 for the comparison"
        );
    }
    println!("reference (this machine, from the brief): firecracker 25 ms wall, 4 ms cpu, ~4 MiB; qemu 35 ms, 27 ms, 34 MiB");

    // CPU-bound ring-3 loop: guest vs host, by TSC cycles around the loop.
    let spins: u64 = std::env::var("BENCH_SPIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000_000);
    let mut guest_cycles = Vec::new();
    let mut host_cycles = Vec::new();
    for _ in 0..5 {
        let out = Command::new(&me)
            .env("CPUSHARE_BENCH_CHILD_KERNEL", &elf)
            .env("CPUSHARE_BENCH_CHILD_CMDLINE", format!("spin {spins}"))
            .output()
            .expect("spawn vmm child");
        guest_cycles.extend(cycles(&String::from_utf8_lossy(&out.stdout)));
        let out = Command::new(dir.join("spin-host"))
            .arg(spins.to_string())
            .output()
            .expect("spawn spin-host");
        host_cycles.extend(cycles(&String::from_utf8_lossy(&out.stdout)));
    }
    if let (Some(g), Some(h)) = (median(&mut guest_cycles), median(&mut host_cycles)) {
        println!(
            "spin {spins}: guest ring 3 {g} cycles, host {h} cycles, guest/host {:.3} ({:+.1}%)",
            g as f64 / h as f64,
            (g as f64 / h as f64 - 1.0) * 100.0
        );
    } else {
        println!("spin: no cycle counts parsed (guest {guest_cycles:?}, host {host_cycles:?})");
    }
}

fn vmm_cmd(me: &Path, elf: &Path, cmdline: &str) -> Command {
    let mut c = Command::new(me);
    c.env("CPUSHARE_BENCH_CHILD_KERNEL", elf)
        .env("CPUSHARE_BENCH_CHILD_CMDLINE", cmdline);
    c
}

fn qemu_cmd(elf: &PathBuf, cmdline: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "64",
        "-smp",
        "1",
    ])
    .arg("-kernel")
    .arg(elf)
    .args([
        "-append",
        cmdline,
        "-nodefaults",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    c
}

/// Spawns, waits with wait4, and returns wall/CPU/peak RSS; `ok` when the
/// console shows `expect`.
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_child(mut cmd: Command, expect: &str) -> Sample {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("piped stdout");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).ok();
    let mut status = 0;
    // SAFETY: all-zero is a valid `rusage`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unwaited child; `status` and `ru` are valid
    // out-pointers for the duration of the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Sample {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss,
        ok: r == pid && out.contains(expect),
    }
}

fn median<T: Ord + Copy>(v: &mut [T]) -> Option<T> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn summarize(name: &str, s: &[Sample]) -> (Duration, Duration, i64) {
    let ok = s.iter().filter(|x| x.ok).count();
    let mut wall: Vec<_> = s.iter().map(|x| x.wall).collect();
    let mut cpu: Vec<_> = s.iter().map(|x| x.cpu).collect();
    let mut rss: Vec<_> = s.iter().map(|x| x.max_rss_kib).collect();
    let (w, c, r) = (
        median(&mut wall).unwrap_or_default(),
        median(&mut cpu).unwrap_or_default(),
        median(&mut rss).unwrap_or_default(),
    );
    println!(
        "{name:>14}: wall {:6.1} ms  cpu {:6.1} ms  peak rss {:6.1} MiB  ({ok}/{} runs printed hello)",
        w.as_secs_f64() * 1e3,
        c.as_secs_f64() * 1e3,
        r as f64 / 1024.0,
        s.len()
    );
    (w, c, r)
}

fn cycles(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.split("cycles=").nth(1))
        .and_then(|c| c.trim().parse().ok())
}

/// CPUID words as hex, `,` between words and `;` between entries.
fn format_cpuid(words: &[CpuidWords]) -> String {
    words
        .iter()
        .map(|e| {
            e.iter()
                .map(|w| format!("{w:x}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_cpuid(s: &str) -> Vec<CpuidWords> {
    s.split(';')
        .map(|e| {
            let mut out = [0u32; 7];
            for (o, w) in out.iter_mut().zip(e.split(',')) {
                *o = u32::from_str_radix(w, 16).expect("hex CPUID word");
            }
            out
        })
        .collect()
}
