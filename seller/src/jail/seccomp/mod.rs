//! seccomp-BPF filters per thread role, built once with seccompiler and
//! installed by each thread on itself before it handles anything a buyer
//! sent. A syscall outside its role's list raises SIGSYS ([`sigsys`]),
//! which ends the sandbox and names the call to the daemon.
//!
//! Filters stack: a thread started by a filtered thread keeps its parent's
//! filter and adds its own, so a helper is held to the intersection (its
//! own list, which is a subset of the job thread's).

mod names;
mod rules;
pub mod sigsys;

pub use names::name as syscall_name;

use super::JailError;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::sync::OnceLock;

/// What a thread does, which decides the syscalls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The outer jail process: waits for the inner one.
    Waiter,
    /// The thread that runs wasm guest code.
    WasmJob,
    /// A wasm job's helper thread (epoch ticker, output forwarder, control reader).
    WasmHelper,
    /// A VM sandbox's main thread until its vCPUs run: ISO, guest memory,
    /// KVM setup ioctls, thread start. Every other VMM role stacks on it.
    VmmBoot,
    /// A VMM vCPU thread: `KVM_RUN` and the device work of its exits.
    VmmVcpu,
    /// The VMM's device/event thread (console input into the serial port).
    VmmDevice,
    /// The VMM's control threads: wait, kick and join the vCPUs; read the
    /// daemon's messages.
    VmmControl,
}

impl Role {
    /// Every role, for building all filters at once and for the docs test.
    pub const ALL: [Role; 7] = [
        Role::Waiter,
        Role::WasmJob,
        Role::WasmHelper,
        Role::VmmBoot,
        Role::VmmVcpu,
        Role::VmmDevice,
        Role::VmmControl,
    ];

    /// Name used in errors and in `docs/SECCOMP.md`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Waiter => "waiter",
            Role::WasmJob => "wasm-job",
            Role::WasmHelper => "wasm-helper",
            Role::VmmBoot => "vmm-boot",
            Role::VmmVcpu => "vmm-vcpu",
            Role::VmmDevice => "vmm-device",
            Role::VmmControl => "vmm-control",
        }
    }

    fn rules(self) -> rules::RuleMap {
        match self {
            Role::Waiter => rules::waiter(),
            Role::WasmJob => rules::wasm_job(),
            Role::WasmHelper => rules::wasm_helper(),
            Role::VmmBoot => rules::vmm_boot(),
            Role::VmmVcpu => rules::vmm_vcpu(),
            Role::VmmDevice => rules::vmm_device(),
            Role::VmmControl => rules::vmm_control(),
        }
    }
}

/// `clone3` passes its flags in memory a filter cannot read, so instead
/// of allowing it blindly every filter answers ENOSYS, and glibc falls
/// back to `clone`, whose flags the job filter checks. These BPF
/// instructions go before seccompiler's program (which starts with its
/// own architecture check).
fn clone3_enosys() -> BpfProgram {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    vec![
        // A = seccomp_data.nr (offset 0)
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_clone3 as u32,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ]
}

/// Builds the BPF program of `role`.
pub fn build(role: Role) -> Result<BpfProgram, JailError> {
    let err = |e: seccompiler::BackendError| JailError::Filter {
        role: role.name(),
        reason: e.to_string(),
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(err)?;
    let filter = SeccompFilter::new(
        role.rules(),
        SeccompAction::Trap,
        SeccompAction::Allow,
        arch,
    )
    .map_err(err)?;
    let program: BpfProgram = filter.try_into().map_err(err)?;
    let mut full = clone3_enosys();
    full.extend(program);
    Ok(full)
}

/// Number of allowed syscalls and BPF instructions of `role`, for docs and reports.
pub fn size(role: Role) -> Result<(usize, usize), JailError> {
    Ok((role.rules().len(), build(role)?.len()))
}

/// Filters built once per process, before confinement, for the helper
/// thread hook (which cannot allocate errors or carry state).
static BUILT: OnceLock<Vec<(Role, BpfProgram)>> = OnceLock::new();

/// Builds every role's filter now (allocation and errors happen here, not
/// on a thread that must confine itself with no way to report).
pub fn prepare() -> Result<(), JailError> {
    if BUILT.get().is_none() {
        let all = Role::ALL
            .iter()
            .map(|&r| build(r).map(|p| (r, p)))
            .collect::<Result<Vec<_>, _>>()?;
        let _ = BUILT.set(all);
    }
    Ok(())
}

/// Installs `role`'s filter on the calling thread (needs no_new_privs).
pub fn enter(role: Role) -> Result<(), JailError> {
    prepare()?;
    let program = BUILT
        .get()
        .and_then(|all| all.iter().find(|(r, _)| *r == role))
        .map(|(_, p)| p)
        .expect("prepare built every role");
    install(program).map_err(|e| JailError::Filter {
        role: role.name(),
        reason: e.to_string(),
    })
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)` on the calling thread.
/// Unlike seccompiler's `apply_filter` this does not set no_new_privs
/// first (the sandbox already did, process-wide), so a thread started
/// under the job filter can add its own with only `seccomp` allowed.
fn install(program: &[seccompiler::sock_filter]) -> std::io::Result<()> {
    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        // The kernel only reads the program; seccompiler's sock_filter has
        // the kernel's layout.
        filter: program.as_ptr().cast_mut().cast(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the
    // kernel copies the filter before returning.
    let ret = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The wasm runtime's helper-thread hook: enter [`Role::WasmHelper`] or die
/// (a helper running unfiltered must never happen).
pub fn enter_wasm_helper() {
    if enter(Role::WasmHelper).is_err() {
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(sigsys::EXIT_SECCOMP) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_builds_and_helpers_are_a_subset_of_the_job() {
        for role in Role::ALL {
            let (calls, insns) = size(role).unwrap();
            assert!(calls > 0 && insns > calls, "{role:?}");
        }
        let job = rules::wasm_job();
        for nr in rules::wasm_helper().keys() {
            assert!(
                job.contains_key(nr),
                "helper may call {}",
                syscall_name(*nr)
            );
        }
    }

    #[test]
    fn filters_stay_small() {
        // Sizes quoted in docs/SECCOMP.md; growing a list needs a reason there.
        for (role, max_calls) in [
            (Role::Waiter, 6),
            (Role::WasmJob, 64),
            (Role::WasmHelper, 20),
            (Role::VmmBoot, 43),
            (Role::VmmVcpu, 23),
            (Role::VmmDevice, 23),
            (Role::VmmControl, 23),
        ] {
            let (calls, insns) = size(role).unwrap();
            println!(
                "{}: {calls} syscalls, {insns} BPF instructions",
                role.name()
            );
            assert!(
                calls <= max_calls,
                "{} allows {calls} syscalls",
                role.name()
            );
        }
    }

    #[test]
    fn vmm_roles_stack_on_the_boot_filter() {
        // A VMM thread inherits the boot filter and adds its own: every
        // call its role needs must pass the boot filter too.
        let boot = rules::vmm_boot();
        for role in [Role::VmmVcpu, Role::VmmDevice, Role::VmmControl] {
            for nr in role.rules().keys() {
                assert!(
                    boot.contains_key(nr),
                    "{} may call {} but vmm-boot refuses it",
                    role.name(),
                    syscall_name(*nr)
                );
            }
        }
        // Only the vCPU and boot roles touch KVM at all.
        assert!(!rules::vmm_control().contains_key(&libc::SYS_ioctl));
        assert!(!rules::vmm_device().contains_key(&libc::SYS_ioctl));
    }

    #[test]
    fn no_vmm_role_may_open_files_sockets_exec_or_mount() {
        for role in [
            Role::VmmBoot,
            Role::VmmVcpu,
            Role::VmmDevice,
            Role::VmmControl,
        ] {
            let map = role.rules();
            for nr in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_openat2,
                libc::SYS_socket,
                libc::SYS_execve,
                libc::SYS_mount,
                libc::SYS_ptrace,
                libc::SYS_kexec_load,
            ] {
                assert!(
                    !map.contains_key(&nr),
                    "{} allows {}",
                    role.name(),
                    syscall_name(nr)
                );
            }
        }
    }

    #[test]
    fn the_job_may_not_open_sockets_exec_or_mount() {
        let job = rules::wasm_job();
        for nr in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_mount,
            libc::SYS_ptrace,
            libc::SYS_kexec_load,
        ] {
            assert!(!job.contains_key(&nr), "{} allowed", syscall_name(nr));
        }
    }
}

#[cfg(test)]
mod live_tests {
    use super::*;

    /// Runs `body` in a forked child under `role`'s filter; returns its exit status.
    fn under(role: Role, body: fn() -> i32) -> i32 {
        let program = build(role).unwrap();
        // SAFETY: the child only makes raw syscalls and leaves with _exit.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install(&program).is_err() {
                    libc::_exit(90);
                }
                libc::_exit(body());
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            }
        }
    }

    /// 0 when a syscall result says success, 1 otherwise.
    fn ok(r: i32) -> i32 {
        i32::from(r < 0)
    }

    #[test]
    fn argument_filters_allow_what_they_name_and_trap_the_rest() {
        let trapped = 128 + libc::SIGSYS;
        // SAFETY (all bodies): plain syscalls with valid C strings, in the forked child.
        let set_name = || ok(unsafe { libc::prctl(libc::PR_SET_NAME, c"x".as_ptr(), 0, 0, 0) });
        assert_eq!(under(Role::WasmJob, set_name), 0);
        let open_dir = || {
            let flags = libc::O_DIRECTORY | libc::O_PATH | libc::O_CLOEXEC;
            ok(unsafe { libc::openat(libc::AT_FDCWD, c"/".as_ptr(), flags) })
        };
        assert_eq!(under(Role::WasmJob, open_dir), 0);
        let open_file = || {
            ok(unsafe { libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY) })
        };
        assert_eq!(under(Role::WasmJob, open_file), trapped);
        let inet = || ok(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) });
        assert_eq!(under(Role::WasmJob, inet), trapped);
        let getpid = || ok(unsafe { libc::getpid() });
        assert_eq!(under(Role::WasmHelper, getpid), trapped);
    }
}
