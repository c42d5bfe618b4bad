//! Attacks on the lease sandbox with real processes: the real
//! `cpushare-seller sandbox` binary, real namespaces, cgroups and seccomp.
//! Every test needs root and a kernel with user namespaces, seccomp and
//! cgroups (CI has them); none skips: on a host without them they fail
//! and say what is missing (`cpushare-seller doctor` tells more).

mod guest_modules;
mod support;

use cpushare_proto::id::ContentId;
use cpushare_proto::msg::{LeaseEnd, StdStream};
use cpushare_proto::sandbox::{FromSandbox, SandboxJob};
use cpushare_seller::jail::cgroup::{CgroupLimits, MAX_TASKS, OVERHEAD_BYTES};
use cpushare_seller::jail::supervisor::{self, Sandbox};
use cpushare_seller::jail::verdict;
use cpushare_seller::jail::zygote::Zygote;
use cpushare_seller::wasm::WasmRuntime;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use support::{status_field, TestHost, TestLease, MIB};

/// What a finished sandbox produced.
struct Run {
    end: LeaseEnd,
    stdout: String,
    stderr: String,
}

/// The daemon's side, as a test sees it: a home and cgroups, a
/// compiling runtime and a sandbox zygote.
struct Host {
    host: TestHost,
    runtime: WasmRuntime,
    zygote: Zygote,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let host = TestHost::new("confinement", "test");
        let runtime = support::wasm_runtime(host.home(), 4, 1 << 30);
        let zygote = Zygote::start(&host.lease_exe()).expect("start the sandbox zygote");
        Host {
            host,
            runtime,
            zygote,
        }
    })
}

/// How a sandbox is started.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// Forked by the zygote, as the daemon starts wasm sandboxes.
    Zygote,
    /// Spawned from the binary (the daemon's fallback, and VM leases).
    Spawn,
}

/// A confined sandbox for a lease of `mem_mib`, not yet sent a job.
fn launch(via: Via, mem_mib: u64, attack: Option<&str>) -> Sandbox {
    let h = host();
    let TestLease { cgroup, spec, .. } = h.host.lease(
        CgroupLimits {
            guest_memory_bytes: mem_mib * MIB,
            code_bytes: 0,
            cpus: 1,
        },
        mem_mib * MIB,
        attack,
    );
    match via {
        Via::Zygote => Sandbox::fork(&h.zygote, &spec, Some(cgroup))
            .map_err(|(e, _)| e)
            .unwrap(),
        Via::Spawn => Sandbox::spawn(&spec, Some(cgroup)).unwrap(),
    }
}

/// A sandbox for `module` with `mem_mib` of guest memory, started and
/// sent its job; `attack` sets the debug-only attack hook.
async fn start(module: &str, args: &[&str], mem_mib: u64, attack: Option<&str>) -> (Sandbox, u64) {
    start_via(Via::Zygote, module, args, mem_mib, attack).await
}

async fn start_via(
    via: Via,
    module: &str,
    args: &[&str],
    mem_mib: u64,
    attack: Option<&str>,
) -> (Sandbox, u64) {
    let h = host();
    let wasm = guest_modules::bytes(module);
    let id = ContentId::of(&wasm).hex();
    let loaded = h.runtime.load(&id, &wasm).unwrap();
    let compiled = h.runtime.compiled_bytes(&loaded).unwrap();
    let mut sandbox = launch(via, mem_mib, attack);
    let job = SandboxJob {
        image_hex: id,
        args: args.iter().map(|s| s.to_string()).collect(),
        memory_bytes: mem_mib * MIB,
        cpu_time_ms: 60_000,
        wall_time_ms: 60_000,
        ..SandboxJob::default()
    };
    // The job goes only to a sandbox that said it is confined and ready.
    match tokio::time::timeout(Duration::from_secs(10), sandbox.next()).await {
        Ok(Some(FromSandbox::Ready)) => sandbox.send_job(&wasm, &compiled, job).await.unwrap(),
        Ok(other) => {
            // Died before ready (an attack right after confinement).
            assert!(other.is_none(), "unexpected first event {other:?}");
        }
        Err(_) => panic!("sandbox not ready within 10 s"),
    }
    (sandbox, mem_mib)
}

/// Collects events until the end and reaps.
async fn finish(mut sandbox: Sandbox, mem_mib: u64) -> Run {
    let (mut stdout, mut stderr, mut reported) = (String::new(), String::new(), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, sandbox.next())
            .await
            .expect("sandbox ended in time")
        {
            Some(FromSandbox::Output { stream, data }) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                match stream {
                    StdStream::Stdout => stdout += &text,
                    StdStream::Stderr => stderr += &text,
                }
            }
            Some(FromSandbox::Ended(end)) => {
                reported = Some(end);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let death = sandbox.reap(reported).await;
    Run {
        end: verdict::lease_end(&death, mem_mib),
        stdout,
        stderr,
    }
}

async fn run(module: &str, args: &[&str], mem_mib: u64, attack: Option<&str>) -> Run {
    let (sandbox, mem) = start(module, args, mem_mib, attack).await;
    finish(sandbox, mem).await
}

#[tokio::test]
async fn a_confined_job_runs_and_streams_its_output() {
    let r = run("hello", &["one", "two"], 16, None).await;
    assert_eq!(r.end, LeaseEnd::Exited { code: 0 }, "stderr: {}", r.stderr);
    assert!(
        r.stdout.contains("one") && r.stdout.contains("two"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn a_spawned_sandbox_runs_like_a_forked_one() {
    let (sandbox, mem) = start_via(Via::Spawn, "hello", &["spawned"], 16, None).await;
    let r = finish(sandbox, mem).await;
    assert_eq!(r.end, LeaseEnd::Exited { code: 0 }, "stderr: {}", r.stderr);
    assert!(r.stdout.contains("spawned"), "{}", r.stdout);
}

/// The network namespace of a ready sandbox's confined process.
async fn ready_netns(sandbox: &mut Sandbox) -> std::path::PathBuf {
    match tokio::time::timeout(Duration::from_secs(10), sandbox.next()).await {
        Ok(Some(FromSandbox::Ready)) => {}
        other => panic!("sandbox not ready: {other:?}"),
    }
    let inner = sandbox.inner_pid().expect("the confined process");
    std::fs::read_link(format!("/proc/{inner}/ns/net")).unwrap()
}

#[tokio::test]
async fn forked_sandboxes_share_one_empty_network_namespace_apart_from_the_host() {
    let mut a = launch(Via::Zygote, 16, None);
    let mut b = launch(Via::Zygote, 16, None);
    let mut spawned = launch(Via::Spawn, 16, None);
    let (na, nb) = (ready_netns(&mut a).await, ready_netns(&mut b).await);
    let ns = ready_netns(&mut spawned).await;
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(na, nb, "the zygote's sandboxes share its namespace");
    assert_ne!(na, host_ns, "not the host's");
    assert_ne!(ns, host_ns, "a spawned sandbox makes its own");
    assert_ne!(ns, na);
    // Each is still the daemon's (here: this test's) own child.
    for s in [&a, &b] {
        let pid = s.pid().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid: u32 = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .expect("ppid field");
        assert_eq!(ppid, std::process::id(), "cloned with CLONE_PARENT");
    }
    for mut s in [a, b, spawned] {
        s.kill();
        let death = s.reap(None).await;
        assert_eq!(
            death.status,
            Some(128 + libc::SIGKILL),
            "reaped with its status"
        );
    }
}

#[tokio::test]
async fn guests_of_forked_sandboxes_draw_their_own_random_bytes() {
    let mut lines = Vec::new();
    for _ in 0..3 {
        let r = run("random", &[], 16, None).await;
        assert_eq!(r.end, LeaseEnd::Exited { code: 0 }, "stderr: {}", r.stderr);
        let line = r.stdout.trim().to_string();
        assert_eq!(line.len(), 32, "16 bytes in hex: {line}");
        lines.push(line);
    }
    lines.sort();
    lines.dedup();
    assert_eq!(
        lines.len(),
        3,
        "every sandbox drew different bytes: {lines:?}"
    );
}

#[tokio::test]
async fn forbidden_syscalls_kill_the_sandbox_and_are_named() {
    for (attack, syscall) in [
        ("openat", "openat"),
        ("socket", "socket"),
        ("execve", "execve"),
        ("ptrace", "ptrace"),
        ("mount", "mount"),
        ("kexec_load", "kexec_load"),
        ("fork", "clone"),
    ] {
        let r = run("hello", &[], 16, Some(attack)).await;
        assert_eq!(
            r.end.to_string(),
            format!("killed: seccomp (syscall {syscall})"),
            "attack {attack}"
        );
    }
}

#[tokio::test]
async fn the_escape_module_is_denied_everywhere() {
    let r = run("escape", &[], 16, None).await;
    assert!(!r.stdout.contains("ESCAPED"), "{}", r.stdout);
    assert_eq!(r.end, LeaseEnd::Exited { code: 0 }, "{}", r.stdout);
}

#[tokio::test]
async fn a_wasm_memory_bomb_stops_at_its_limit() {
    let r = run("membomb", &[], 16, None).await;
    assert_eq!(
        r.end,
        LeaseEnd::MemoryExceeded { limit_mib: 16 },
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn native_memory_past_the_cgroup_limit_is_an_oom_kill() {
    let r = run("hello", &[], 16, Some("memory")).await;
    assert_eq!(r.end.to_string(), "killed: out of memory");
    // The host goes on: the next sandbox runs normally.
    let r = run("hello", &[], 16, None).await;
    assert_eq!(r.end, LeaseEnd::Exited { code: 0 });
}

#[tokio::test]
async fn the_sandbox_sees_no_host_process_network_or_writable_path() {
    let r = run("hello", &[], 16, Some("look")).await;
    assert_eq!(r.end, LeaseEnd::Exited { code: 0 });
    let probe = |key: &str| {
        r.stderr
            .lines()
            .find_map(|l| l.strip_prefix(&format!("probe {key}: ")))
            .unwrap_or_else(|| panic!("no probe {key} in {}", r.stderr))
            .to_string()
    };
    let mut root: Vec<String> = probe("root").split(',').map(String::from).collect();
    root.sort();
    assert_eq!(
        root,
        ["compiled", "scratch"],
        "the jail root holds only these"
    );
    assert!(
        probe("proc").starts_with("error"),
        "no /proc: {}",
        probe("proc")
    );
    assert!(
        probe("net").starts_with("error"),
        "no /sys: {}",
        probe("net")
    );
    assert_eq!(probe("interfaces"), "lo", "only loopback");
    assert_eq!(
        probe("ppid"),
        "0",
        "the parent is outside the pid namespace"
    );
    assert_eq!(probe("pid"), "1", "pid 1 of its own namespace");
    assert_eq!(probe("write-root"), "false");
}

#[tokio::test]
async fn a_running_sandbox_is_filtered_unprivileged_and_limited() {
    let (mut sandbox, mem) = start("spin", &[], 32, None).await;
    // Wait until the guest runs.
    loop {
        match sandbox.next().await {
            Some(FromSandbox::Output { .. }) => break,
            Some(_) => {}
            None => panic!("spin ended early"),
        }
    }
    let pid = sandbox.inner_pid().expect("inner pid");
    assert_eq!(status_field(pid, pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, pid, "CapBnd"), "0000000000000000");
    let uid: u32 = status_field(pid, pid, "Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(uid >= supervisor::UID_BASE, "uid {uid}");
    let policy = std::fs::read_to_string(format!("/proc/{pid}/sched")).unwrap();
    assert!(
        policy
            .lines()
            .any(|l| l.starts_with("policy") && l.trim_end().ends_with(" 5")),
        "SCHED_IDLE: {policy}"
    );
    let cg = sandbox.cgroup().unwrap();
    let read = |dir: &PathBuf, f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let want_mem = (mem * MIB + OVERHEAD_BYTES).to_string();
    let dirs = cg.dirs().to_vec();
    if dirs.len() == 1 {
        assert_eq!(read(&dirs[0], "memory.max"), want_mem);
        assert_eq!(read(&dirs[0], "pids.max"), (MAX_TASKS + 1).to_string());
        assert_eq!(read(&dirs[0], "cpu.max"), "100000 100000");
        assert_eq!(read(&dirs[0], "cpu.weight"), "1");
    } else {
        assert_eq!(read(&dirs[0], "memory.limit_in_bytes"), want_mem);
        assert_eq!(read(&dirs[1], "pids.max"), (MAX_TASKS + 1).to_string());
        assert_eq!(read(&dirs[2], "cpu.cfs_quota_us"), "100000");
        assert_eq!(read(&dirs[2], "cpu.shares"), "2");
    }
    for d in &dirs {
        assert!(
            read(d, "cgroup.procs")
                .split_whitespace()
                .any(|p| p == pid.to_string()),
            "{}",
            d.display()
        );
    }
    // A stop ends it as cancelled, and the cgroup goes with the lease.
    sandbox.stop().await;
    let run = finish(sandbox, mem).await;
    assert_eq!(run.end, LeaseEnd::Cancelled);
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}
