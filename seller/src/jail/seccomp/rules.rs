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

/// `clone` for threads only: a new process (fork, vfork) is refused.
fn threads_only(map: &mut RuleMap) {
    only_if(
        map,
        libc::SYS_clone,
        vec![vec![cond(
            0,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )]],
    );
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, ..)`: a new thread adds its own,
/// smaller filter (a filter only ever takes rights away). No flags: no
/// TSYNC, no user-notification fd.
fn narrow_own_filter(map: &mut RuleMap) {
    only_if(
        map,
        libc::SYS_seccomp,
        vec![vec![
            cond(0, SeccompCmpOp::Eq, 1), // SECCOMP_SET_MODE_FILTER
            cond(1, SeccompCmpOp::Eq, 0),
        ]],
    );
}

/// `prctl(PR_SET_NAME)`: naming its own threads; no other prctl.
fn name_threads(map: &mut RuleMap) {
    only_if(
        map,
        libc::SYS_prctl,
        vec![vec![int_is(0, libc::PR_SET_NAME)]],
    );
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
    threads_only(&mut map);
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
    narrow_own_filter(&mut map);
    name_threads(&mut map);
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

/// An `int` argument (only its low 32 bits are defined) equal to `value`.
fn int_is(arg: u8, value: libc::c_int) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value as u64)
        .expect("argument index below 6 is always valid")
}

/// `ioctl` on the given request numbers only (argument 1); the fd is not
/// checked (KVM fds are made at run time), the request is.
fn ioctls(map: &mut RuleMap, requests: &[(&'static str, u64)]) {
    only_if(
        map,
        libc::SYS_ioctl,
        requests
            .iter()
            .map(|&(_, nr)| vec![cond(1, SeccompCmpOp::Eq, nr)])
            .collect(),
    );
}

/// What every VMM thread needs to live and die: memory (glibc arenas grow
/// with `mprotect`), locks, time, frames to the daemon, signal return,
/// exit. Thread exit unmaps the alternate signal stack.
fn vmm_basics(map: &mut RuleMap) {
    any(
        map,
        &[
            libc::SYS_write,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_brk,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_gettid,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
}

/// Closing a file; debug builds of std first check the fd with
/// `fcntl(F_GETFD)`, the only `fcntl` allowed.
fn close_fds(map: &mut RuleMap) {
    any(map, &[libc::SYS_close]);
    only_if(map, libc::SYS_fcntl, vec![vec![int_is(1, libc::F_GETFD)]]);
}

/// A vCPU thread: `KVM_RUN`, and on its exits the device models' work:
/// disk reads and writes at offsets, interrupt eventfd writes, console
/// frames to the daemon.
pub fn vmm_vcpu() -> RuleMap {
    let mut map = RuleMap::new();
    vmm_basics(&mut map);
    any(
        &mut map,
        &[
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            // The guest NIC's transmitted frames, one `send` each on the
            // link the sandbox was given (it cannot make sockets).
            libc::SYS_sendto,
        ],
    );
    // Its vCPU fd, closed when the thread ends.
    close_fds(&mut map);
    ioctls(&mut map, &cpushare_vmm::confine::vcpu_ioctls());
    map
}

/// The console-input thread: waits for the buyer's bytes, puts them in
/// the serial FIFO as it drains (sleeping between tries) and raises the
/// serial interrupt through its eventfd.
pub fn vmm_device() -> RuleMap {
    let mut map = RuleMap::new();
    vmm_basics(&mut map);
    any(
        &mut map,
        &[
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            // The NIC's receive thread: waits on its link and stop event,
            // takes one frame per `recv`.
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_recvfrom,
        ],
    );
    // The last holder of the device bus, once input ends, closes the
    // devices' eventfds and the disk.
    close_fds(&mut map);
    map
}

/// The control threads: the one that ran the VM's setup waits for the
/// first vCPU to end, kicks the others and joins them, closes the VM;
/// the reader of the daemon's messages forwards console input and stops
/// the VM.
pub fn vmm_control() -> RuleMap {
    let mut map = RuleMap::new();
    vmm_basics(&mut map);
    any(
        &mut map,
        &[
            libc::SYS_read,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getpid,
        ],
    );
    close_fds(&mut map);
    kick(&mut map);
    map
}

/// `tgkill` with the vCPU kick signal (`SIGRTMIN`, the VMM's) only:
/// glibc's `pthread_kill`, kicking a vCPU out of `KVM_RUN`.
fn kick(map: &mut RuleMap) {
    only_if(
        map,
        libc::SYS_tgkill,
        vec![vec![int_is(2, libc::SIGRTMIN())]],
    );
}

/// The VMM's main thread from confinement until its vCPUs run: reads the
/// ISO's boot files, maps guest memory, builds the VM through KVM's setup
/// ioctls, starts the threads (which then narrow to their own role). It
/// holds every other VMM role's calls, since their filters stack on it.
pub fn vmm_boot() -> RuleMap {
    let mut map = RuleMap::new();
    vmm_basics(&mut map);
    any(
        &mut map,
        &[
            // The ISO: its boot config and files, then the disk at offsets.
            libc::SYS_read,
            libc::SYS_lseek,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_fstat,
            libc::SYS_statx,
            // Interrupts: one eventfd per device line, registered as irqfd.
            libc::SYS_eventfd2,
            // The vCPU kick handler.
            libc::SYS_rt_sigaction,
            // Thread start-up inside glibc's pthread_create.
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getpid,
            libc::SYS_getrandom,
            // The NIC's threads (their own roles stack on this one).
            libc::SYS_sendto,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_recvfrom,
        ],
    );
    // Closing fds (`F_GETFD` in debug builds), and duplicating one: the
    // NIC's receive thread gets its own handle on its stop eventfd
    // (`File::try_clone` is `F_DUPFD_CLOEXEC`).
    only_if(
        &mut map,
        libc::SYS_fcntl,
        vec![
            vec![int_is(1, libc::F_GETFD)],
            vec![int_is(1, libc::F_DUPFD_CLOEXEC)],
        ],
    );
    any(&mut map, &[libc::SYS_close]);
    kick(&mut map);
    let mut requests = cpushare_vmm::confine::setup_ioctls();
    requests.extend(cpushare_vmm::confine::vcpu_ioctls());
    ioctls(&mut map, &requests);
    threads_only(&mut map);
    narrow_own_filter(&mut map);
    name_threads(&mut map);
    map
}
