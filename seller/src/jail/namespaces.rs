//! Namespaces of a sandbox: mount, pid, ipc, uts and network (only an
//! unconfigured loopback) made by the root outer process, then a user
//! namespace the unprivileged inner process makes for itself.
//!
//! The order matters: mount, network and the rest are owned by the host's
//! user namespace, so the capabilities the inner process holds in its own
//! user namespace give it no power over them (it cannot mount, configure
//! interfaces or set the hostname even before it drops them).

use super::error::{check, JailError};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Host name inside every sandbox.
const HOSTNAME: &[u8] = b"sandbox";

/// Namespaces the outer process enters; `CLONE_NEWPID` applies to the
/// inner process it forks next, which becomes pid 1 there. Without
/// `new_netns` the process stays in its network namespace: one the zygote
/// made empty for all its sandboxes ([`super::zygote`]).
pub fn unshare_outer(new_netns: bool) -> Result<(), JailError> {
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if new_netns {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare only changes this (single-threaded) process's namespaces.
    check(
        unsafe { libc::unshare(flags) },
        "unshare(mount, pid, ipc, uts, net)",
    )?;
    // SAFETY: HOSTNAME is a valid buffer of the given length.
    check(
        unsafe { libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) },
        "sethostname",
    )?;
    Ok(())
}

/// An `O_PATH` handle on the host's `/proc`, kept across `pivot_root` only
/// so the inner process can write its own id maps; closed right after.
pub fn host_proc() -> Result<OwnedFd, JailError> {
    let path = CString::new("/proc").expect("no NUL");
    // SAFETY: valid C string; the returned fd is owned below.
    let fd = check(
        unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        },
        "open /proc",
    )?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn write_at(dir: &OwnedFd, name: &str, data: &str, step: &'static str) -> Result<(), JailError> {
    let name = CString::new(name).expect("no NUL");
    // SAFETY: valid dirfd and C string.
    let fd = check(
        unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        },
        step,
    )?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n != data.len() as isize {
        return Err(JailError::last_os(step));
    }
    Ok(())
}

/// Enters a new user namespace in which `uid` (already this process's
/// only uid and gid) maps to itself, so files it creates in scratch keep
/// their owner. Must be called after dropping to `uid`.
pub fn enter_user(proc_dir: OwnedFd, uid: u32) -> Result<(), JailError> {
    // SAFETY: this process is single-threaded here.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWUSER) },
        "unshare(user)",
    )?;
    // Leaving uid 0 made the process non-dumpable, which hands its /proc
    // files to root; it must own them for a moment to write its maps.
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) },
        "PR_SET_DUMPABLE",
    )?;
    let map = format!("{uid} {uid} 1\n");
    // An unprivileged writer may map only its own ids, and only once
    // setgroups is denied (user_namespaces(7)).
    write_at(&proc_dir, "self/setgroups", "deny", "writing setgroups")?;
    write_at(&proc_dir, "self/uid_map", &map, "writing uid_map")?;
    write_at(&proc_dir, "self/gid_map", &map, "writing gid_map")?;
    drop(proc_dir);
    // Non-dumpable again: no ptrace by a same-uid process, /proc files root's.
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) },
        "PR_SET_DUMPABLE",
    )?;
    Ok(())
}
