//! Dropping privileges in the inner sandbox process: an unprivileged uid,
//! no capabilities in any set, no way to gain them back (no_new_privs),
//! resource limits, the lowest CPU priority, and death with the parent.

use super::error::{check, JailError};

/// Open files a sandbox may hold (the wasm runtime needs a handful).
const MAX_FILES: u64 = 64;

/// Threads a sandbox may run (job, epoch ticker, output, control + slack).
/// RLIMIT_NPROC counts per real uid, and every sandbox has its own uid.
const MAX_THREADS: u64 = 16;

/// Largest file a guest may write in its scratch directory.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// Highest capability number to drop from the bounding set; newer kernels
/// may know more, which `PR_CAPBSET_DROP` rejects with EINVAL (ignored).
const LAST_CAP: libc::c_ulong = 63;

/// Drops the bounding set (needs CAP_SETPCAP, so first), then becomes
/// `uid`:`uid` with no supplementary groups; the kernel clears the
/// permitted and effective sets on leaving uid 0.
pub fn become_user(uid: u32) -> Result<(), JailError> {
    for cap in 0..=LAST_CAP {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: an empty group list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
    // SAFETY: integer arguments.
    check(unsafe { libc::setresgid(uid, uid, uid) }, "setresgid")?;
    // SAFETY: integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) }, "setresuid")?;
    Ok(())
}

/// Clears every capability set of this thread (a fresh user namespace
/// grants a full set inside it, bounding set included) and forbids
/// regaining privileges.
pub fn drop_capabilities() -> Result<(), JailError> {
    for cap in 0..=LAST_CAP {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: prctl with integer arguments.
    check(
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        },
        "clearing ambient capabilities",
    )?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data words as capset(2) version 3 expects.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check(ret as libc::c_int, "capset(0)")?;
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "PR_SET_NO_NEW_PRIVS",
    )?;
    Ok(())
}

fn set_limit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    step: &'static str,
) -> Result<(), JailError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a valid rlimit.
    check(unsafe { libc::setrlimit(resource, &lim) }, step).map(drop)
}

/// Resource limits: open files, threads, file size, no core dumps.
pub fn set_rlimits(extra_threads: u64) -> Result<(), JailError> {
    set_limit(libc::RLIMIT_NOFILE, MAX_FILES, "RLIMIT_NOFILE")?;
    set_limit(
        libc::RLIMIT_NPROC,
        MAX_THREADS + extra_threads,
        "RLIMIT_NPROC",
    )?;
    set_limit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    set_limit(libc::RLIMIT_FSIZE, MAX_FILE_BYTES, "RLIMIT_FSIZE")?;
    Ok(())
}

/// SCHED_IDLE for this thread and every thread it starts later: the
/// owner's work always wins the CPU.
pub fn lowest_priority() -> Result<(), JailError> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is valid; pid 0 is this thread.
    check(
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) },
        "sched_setscheduler(SCHED_IDLE)",
    )
    .map(drop)
}

/// SIGKILL this process when its parent (the outer jail process) dies.
/// Set after the uid change, which clears it.
pub fn die_with_parent() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        "PR_SET_PDEATHSIG",
    )
    .map(drop)
}
