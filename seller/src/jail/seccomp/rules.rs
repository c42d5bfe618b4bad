//! The syscalls each thread role may make, and on what arguments. Every
//! entry is justified in `docs/SECCOMP.md`; keep the two in step.

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::BTreeMap;

/// Syscall number to the rules allowing it (empty: allowed on any arguments).
pub type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

fn any(map: &mut RuleMap, calls: &[libc::c_long]) {
    for &nr in calls {
        map.insert(nr, Vec::new());
    }
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .expect("argument index below 6 is always valid")
}

fn only_if(map: &mut RuleMap, nr: libc::c_long, conditions: Vec<Vec<SeccompCondition>>) {
    let rules = conditions
        .into_iter()
        .map(|c| SeccompRule::new(c).expect("conditions are non-empty"))
        .collect();
    map.insert(nr, rules);
}

/// What every thread of a sandbox needs to live and die: memory, locks,
/// time, signal return, exit.
fn thread_basics(map: &mut RuleMap) {
    any(
        map,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_gettid,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
}

/// The thread that runs the guest: WASI calls on its scratch directory,
/// wasmtime's code loading and trap handling, and starting the two
/// helper threads of a job.
pub fn wasm_job() -> RuleMap {
    let mut map = RuleMap::new();
    thread_basics(&mut map);
    any(
        &mut map,
        &[
            // WASI file I/O on scratch files and the stdin/stdout pipes.
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_close,
            libc::SYS_lseek,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fstatfs,
            libc::SYS_getdents64,
            libc::SYS_fcntl,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_utimensat,
            libc::SYS_readlinkat,
            libc::SYS_mkdirat,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_linkat,
            libc::SYS_symlinkat,
            // cap-std resolves every guest path beneath the scratch dir
            // with openat2(RESOLVE_BENEATH); plain openat stays denied.
            libc::SYS_openat2,
            libc::SYS_mremap,
            libc::SYS_clock_getres,
            libc::SYS_getrandom,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_sched_getaffinity,
            // wasmtime-wasi drives its host calls on a small tokio runtime:
            // an epoll instance woken by an eventfd.
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_eventfd2,
            // wasmtime's copy-on-write memory images.
            libc::SYS_memfd_create,
            // Thread start-up inside glibc's pthread_create.
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
        ],
    );
    // Threads only: a new process (fork, vfork) is refused.
    only_if(
        &mut map,
        libc::SYS_clone,
        vec![vec![cond(
            0,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )]],
    );
    // The preopened scratch directory is opened by path; files beneath it
    // go through openat2. So openat only for directories.
    only_if(
        &mut map,
        libc::SYS_openat,
        vec![vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::O_DIRECTORY as u64),
            libc::O_DIRECTORY as u64,
        )
        .expect("argument 2 is valid")]],
    );
    // tokio's wakeup pair: local (AF_UNIX) sockets only, never a network family.
    only_if(
        &mut map,
        libc::SYS_socketpair,
        vec![vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )
        .expect("argument 0 is valid")]],
    );
    // A new helper thread adds its own, smaller filter: a filter only ever
    // takes rights away. No flags (no TSYNC, no user-notification fd).
    only_if(
        &mut map,
        libc::SYS_seccomp,
        vec![vec![
            cond(0, SeccompCmpOp::Eq, 1), // SECCOMP_SET_MODE_FILTER
            cond(1, SeccompCmpOp::Eq, 0),
        ]],
    );
    // Naming its own threads; no other prctl.
    only_if(
        &mut map,
        libc::SYS_prctl,
        vec![vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::PR_SET_NAME as u64,
        )
        .expect("argument 0 is valid")]],
    );
    map
}

/// Helper threads of a wasm job (epoch ticker, output forwarder, control
/// reader): sleep, wake, move bytes through pipes, allocate.
pub fn wasm_helper() -> RuleMap {
    let mut map = RuleMap::new();
    thread_basics(&mut map);
    any(&mut map, &[libc::SYS_close, libc::SYS_getrandom]);
    map
}

/// The outer jail process, which only waits for the inner one and exits
/// with its status.
pub fn waiter() -> RuleMap {
    let mut map = RuleMap::new();
    any(
        &mut map,
        &[
            libc::SYS_wait4,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_rt_sigreturn,
            libc::SYS_exit_group,
            libc::SYS_exit,
        ],
    );
    map
}
