//! `cpushare-seller doctor`: checks what confinement and VM leases need
//! from this host, and says how to fix what is missing.

use super::cgroup;
use serde::Serialize;
use std::fs;

/// One finding.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`kvm`, `cgroups`, ...).
    pub name: &'static str,
    /// Whether leases can rely on it.
    pub ok: bool,
    /// What was found.
    pub found: String,
    /// What to do when not ok (empty when ok).
    pub fix: String,
}

fn check(name: &'static str, ok: bool, found: String, fix: &str) -> Check {
    Check {
        name,
        ok,
        found,
        fix: if ok { String::new() } else { fix.to_string() },
    }
}

/// Runs `probe` in a forked child (so namespace and scheduler changes do
/// not touch this process) and says whether it returned true. Call only
/// while single-threaded.
fn in_child(probe: fn() -> bool) -> bool {
    // SAFETY: the doctor runs before any thread is started; the child
    // only makes raw syscalls and leaves with _exit.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(if probe() { 0 } else { 1 });
        }
        if pid < 0 {
            return false;
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0) == pid
            && libc::WIFEXITED(status)
            && libc::WEXITSTATUS(status) == 0
    }
}

fn probe_userns() -> bool {
    // SAFETY: in a throwaway child: drop to an unprivileged uid as the
    // sandbox does, then try to make a user namespace.
    unsafe {
        libc::setresgid(65534, 65534, 65534) == 0
            && libc::setresuid(65534, 65534, 65534) == 0
            && libc::unshare(libc::CLONE_NEWUSER) == 0
    }
}

fn probe_seccomp() -> bool {
    // SAFETY: in a throwaway child: no_new_privs then a filter allowing all.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    super::seccomp::enter(super::seccomp::Role::Waiter).is_ok()
}

fn probe_sched_idle() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: in a throwaway child; `param` is valid.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

fn probe_namespaces() -> bool {
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET;
    // SAFETY: in a throwaway child.
    unsafe { libc::unshare(flags) == 0 }
}

/// Runs every check. Must be called before any thread is started.
pub fn run() -> Vec<Check> {
    let mut out = Vec::new();
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    out.push(check(
        "root",
        euid == 0,
        format!("euid {euid}"),
        "run the seller as root (the sandbox builds its jail as root, then drops to an unprivileged uid)",
    ));
    let kvm = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = fs::metadata("/sys/module/kvm_pvm").is_ok();
    let kind = match (kvm, hw, pvm) {
        (false, _, _) => "no usable /dev/kvm".to_string(),
        (true, _, true) => {
            "software KVM (PVM): guests run, ring 0 is slow; VM leases are not offered".into()
        }
        (true, true, false) => "hardware KVM (VT-x/AMD-V)".into(),
        (true, false, false) => "/dev/kvm without vmx/svm (nested or software)".into(),
    };
    out.push(check(
        "kvm",
        kvm && hw && !pvm,
        kind,
        "for VM leases: enable VT-x/AMD-V in firmware, `modprobe kvm_intel` or `kvm_amd`, and give the seller access to /dev/kvm; wasm leases work without it",
    ));
    let v2 = cgroup::v2_mount();
    let v1: Vec<&str> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| cgroup::v1_mount(c).is_some())
        .collect();
    let (ok, found) = match (&v2, v1.len()) {
        (Some(m), _) => (
            true,
            format!("cgroup v2 at {} with memory, pids, cpu", m.display()),
        ),
        (None, 3) => (true, "cgroup v1 memory, pids, cpu".to_string()),
        (None, _) => (
            false,
            format!("no cgroup v2 controllers; v1 has {}", v1.join(", ")),
        ),
    };
    out.push(check(
        "cgroups",
        ok,
        found,
        "on cgroup v2 run the seller as a systemd service with Delegate=yes (or as root in a cgroup whose parent enables memory, pids and cpu); on v1 mount the memory, pids and cpu controllers",
    ));
    out.push(check(
        "namespaces",
        euid == 0 && in_child(probe_namespaces),
        "mount, pid, ipc, uts, net".into(),
        "run as root on a kernel with CONFIG_NAMESPACES, PID_NS, NET_NS, IPC_NS, UTS_NS",
    ));
    out.push(check(
        "user namespaces",
        in_child(probe_userns),
        format!(
            "max_user_namespaces {}",
            fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default().trim()
        ),
        "sysctl user.max_user_namespaces=10000 (and kernel.unprivileged_userns_clone=1 on Debian kernels before 6.x, or kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu)",
    ));
    out.push(check(
        "seccomp",
        in_child(probe_seccomp),
        "seccomp-BPF filters".into(),
        "use a kernel built with CONFIG_SECCOMP_FILTER",
    ));
    out.push(check(
        "sched_idle",
        in_child(probe_sched_idle),
        "SCHED_IDLE for sandbox threads".into(),
        "use a kernel with SCHED_IDLE (any Linux since 2.6.23); without it sandboxes compete with the owner's work",
    ));
    out
}

/// Renders the findings for people.
pub fn human(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let mark = if c.ok { "ok  " } else { "MISSING" };
        s.push_str(&format!("{mark:8} {:16} {}\n", c.name, c.found));
        if !c.ok {
            s.push_str(&format!("{:8} {:16} fix: {}\n", "", "", c.fix));
        }
    }
    s
}
