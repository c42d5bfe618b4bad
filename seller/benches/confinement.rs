//! What confinement costs, printed side by side (needs root, like the
//! seller):
//!
//! 1. sandbox start: spawn to `Ready`, and spawn to the end of a tiny job,
//!    with the full jail + seccomp, with the jail only, and with neither;
//! 2. a syscall-heavy guest (`syscalls.wasm`) with and without seccomp;
//! 3. host impact: `sha256sum` of a large file alone, beside two busy
//!    guests run as plain processes (no jail, no cgroup, normal priority),
//!    and beside two busy confined leases (SCHED_IDLE, lowest CPU weight);
//!    the first comparison is what the hardware itself shares (caches,
//!    memory bandwidth, the host under this VM), the second what is left
//!    after confinement.
//!
//!   cargo bench -p cpushare-seller --bench confinement [-- ROUNDS]

#[path = "../tests/guest_modules/mod.rs"]
mod guest_modules;

use cpushare_proto::id::ContentId;
use cpushare_proto::sandbox::{FromSandbox, SandboxJob};
use cpushare_seller::jail::cgroup::{CgroupLimits, Hierarchy, LeaseCgroup};
use cpushare_seller::jail::supervisor::{self, Sandbox, SpawnSpec};
use cpushare_seller::wasm::{RuntimeConfig, WasmRuntime};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

struct Bench {
    home: tempfile::TempDir,
    runtime: WasmRuntime,
    cgroups: Hierarchy,
    seq: u32,
}

#[derive(Clone, Copy)]
struct Mode {
    jail: bool,
    seccomp: bool,
}

struct Timing {
    ready: Duration,
    started_to_end: Duration,
    total: Duration,
}

impl Bench {
    fn spec(&mut self, mode: Mode) -> (SpawnSpec, LeaseCgroup) {
        self.seq += 1;
        let name = format!("{}-bench{}", std::process::id(), self.seq);
        let uid = supervisor::next_uid();
        let scratch = self.home.path().join("scratch").join(&name);
        std::fs::create_dir_all(&scratch).unwrap();
        std::os::unix::fs::chown(&scratch, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
        let cg = LeaseCgroup::create(
            &self.cgroups,
            &name,
            CgroupLimits {
                guest_memory_bytes: 64 * MIB,
                code_bytes: 0,
                cpus: 1,
            },
        )
        .unwrap();
        let spec = SpawnSpec {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_cpushare-seller")),
            jail_root: self.home.path().join("jail"),
            scratch,
            uid,
            max_memory_bytes: 64 * MIB,
            jail: mode.jail,
            seccomp: mode.seccomp,
            env: Vec::new(),
        };
        (spec, cg)
    }

    async fn run(&mut self, module: &str, args: &[&str], mode: Mode) -> Timing {
        let wasm = guest_modules::bytes(module);
        let id = ContentId::of(&wasm).hex();
        let loaded = self.runtime.load(&id, &wasm).unwrap();
        let compiled = self.runtime.compiled_bytes(&loaded).unwrap();
        let (spec, cg) = self.spec(mode);
        let t0 = Instant::now();
        let mut sb = Sandbox::spawn(&spec, Some(cg)).unwrap();
        let (mut ready, mut started) = (Duration::ZERO, Duration::ZERO);
        let job = SandboxJob {
            image_hex: id,
            args: args.iter().map(|s| s.to_string()).collect(),
            memory_bytes: 64 * MIB,
            cpu_time_ms: 600_000,
            wall_time_ms: 600_000,
            ..SandboxJob::default()
        };
        let mut job = Some(job);
        while let Some(ev) = sb.next().await {
            match ev {
                FromSandbox::Ready => {
                    ready = t0.elapsed();
                    let job = job.take().expect("one Ready");
                    sb.send_job(&wasm, &compiled, job).await.unwrap();
                }
                FromSandbox::Started => started = t0.elapsed(),
                FromSandbox::Ended(end) => {
                    assert!(
                        matches!(end, cpushare_proto::sandbox::SandboxEnd::Exited { code: 0 }),
                        "{end:?}"
                    );
                    break;
                }
                FromSandbox::Output { .. } => {}
            }
        }
        let total = t0.elapsed();
        let _ = sb.reap(None).await;
        Timing {
            ready,
            started_to_end: total - started,
            total,
        }
    }
}

impl Bench {
    /// Starts two sandboxes that burn CPU for ten minutes (`busy.wasm`);
    /// without `cgroup`, and with `mode` off, they are plain processes at
    /// normal priority, as an unconfined runtime would be.
    async fn start_busy(&mut self, mode: Mode, cgroup: bool) -> Vec<Sandbox> {
        let mut busy = Vec::new();
        for _ in 0..2 {
            let wasm = guest_modules::bytes("busy");
            let id = ContentId::of(&wasm).hex();
            let loaded = self.runtime.load(&id, &wasm).unwrap();
            let compiled = self.runtime.compiled_bytes(&loaded).unwrap();
            let (spec, cg) = self.spec(mode);
            let mut sb = Sandbox::spawn(&spec, cgroup.then_some(cg)).unwrap();
            assert!(matches!(sb.next().await, Some(FromSandbox::Ready)));
            let job = SandboxJob {
                image_hex: id,
                args: vec!["600".into()],
                memory_bytes: 64 * MIB,
                cpu_time_ms: 600_000,
                wall_time_ms: 600_000,
                ..SandboxJob::default()
            };
            sb.send_job(&wasm, &compiled, job).await.unwrap();
            assert!(matches!(sb.next().await, Some(FromSandbox::Started)));
            busy.push(sb);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        busy
    }
}

async fn stop_all(busy: Vec<Sandbox>) {
    for mut sb in busy {
        sb.kill();
        let _ = sb.reap(None).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1e3)
}

/// Wall time of `sha256sum FILE`.
fn sha256sum(file: &Path) -> Duration {
    let t0 = Instant::now();
    let st = std::process::Command::new("sha256sum")
        .arg(file)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    t0.elapsed()
}

#[tokio::main]
async fn main() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root: the sandbox builds its jail as root"
    );
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("jail")).unwrap();
    let runtime = WasmRuntime::new(RuntimeConfig {
        compiled_cache_dir: home.path().join("compiled"),
        max_instances: 4,
        max_memory_bytes: 1 << 30,
    })
    .unwrap();
    let mut b = Bench {
        home,
        runtime,
        cgroups: Hierarchy::detect().unwrap(),
        seq: 0,
    };
    let full = Mode {
        jail: true,
        seccomp: true,
    };
    let jail_only = Mode {
        jail: true,
        seccomp: false,
    };
    let bare = Mode {
        jail: false,
        seccomp: false,
    };

    println!("== sandbox start ({rounds} runs of hello.wasm each, medians)");
    println!("{:24} {:>11} {:>11}", "", "to Ready", "to end");
    let mut totals = Vec::new();
    for (label, mode) in [
        ("no jail, no seccomp", bare),
        ("jail, no seccomp", jail_only),
        ("jail + seccomp", full),
    ] {
        let mut ready = Vec::new();
        let mut total = Vec::new();
        for _ in 0..rounds {
            let t = b.run("hello", &[], mode).await;
            ready.push(t.ready);
            total.push(t.total);
        }
        let (r, t) = (median(ready), median(total));
        println!("{label:24} {} {}", ms(r), ms(t));
        totals.push(t);
    }
    println!(
        "jail + seccomp adds {} per sandbox start ({:.2}x)",
        ms(totals[2].saturating_sub(totals[0])),
        totals[2].as_secs_f64() / totals[0].as_secs_f64()
    );

    println!(
        "\n== syscall-heavy guest (syscalls.wasm 20000 rounds, 5 runs, medians of guest run time)"
    );
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..5 {
        without.push(
            b.run("syscalls", &["20000"], jail_only)
                .await
                .started_to_end,
        );
        with.push(b.run("syscalls", &["20000"], full).await.started_to_end);
    }
    let (w, wo) = (median(with), median(without));
    println!("{:24} {}", "without seccomp", ms(wo));
    println!("{:24} {}", "with seccomp", ms(w));
    println!(
        "seccomp slowdown: {:+.1} %",
        (w.as_secs_f64() / wo.as_secs_f64() - 1.0) * 100.0
    );

    let rounds = 5;
    println!(
        "\n== host impact (sha256sum of a 512 MiB file, {rounds} interleaved rounds, medians)"
    );
    let file = b.home.path().join("big");
    std::fs::write(&file, vec![0x5au8; 512 << 20]).unwrap();
    sha256sum(&file);
    let (mut alone, mut plain, mut confined) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so drift in the shared host's speed hits all three alike.
    for _ in 0..rounds {
        alone.push(sha256sum(&file));
        let busy = b
            .start_busy(
                Mode {
                    jail: false,
                    seccomp: false,
                },
                false,
            )
            .await;
        plain.push(sha256sum(&file));
        stop_all(busy).await;
        let busy = b.start_busy(full, true).await;
        confined.push(sha256sum(&file));
        stop_all(busy).await;
    }
    let (alone, plain, confined) = (median(alone), median(plain), median(confined));
    let slowdown = |d: Duration| (d.as_secs_f64() / alone.as_secs_f64() - 1.0) * 100.0;
    println!("{:44} {}", "alone", ms(alone));
    println!(
        "{:44} {}  {:+.1} %",
        "beside 2 busy guests, no jail, no cgroup",
        ms(plain),
        slowdown(plain)
    );
    println!(
        "{:44} {}  {:+.1} %",
        "beside 2 busy confined leases",
        ms(confined),
        slowdown(confined)
    );
    println!("host slowdown: {:+.1} %", slowdown(confined));
}
