//! The sandbox's filesystem: an empty, read-only tmpfs root holding only
//! the lease's scratch directory (bind-mounted, writable, no exec, no
//! devices) and an empty private directory for the wasm runtime. The host
//! tree is unmounted after `pivot_root`, so no host path is reachable.

use super::error::{check, JailError};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where the lease's scratch directory appears inside the jail.
pub const SCRATCH: &str = "/scratch";

/// The runtime's (empty) compiled-module directory inside the jail.
pub const COMPILED: &str = "/compiled";

/// Size of the root tmpfs: it only holds a few empty directories.
const ROOT_TMPFS_OPTIONS: &str = "size=64k,nr_inodes=32,mode=0755";

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("jail paths come from the daemon and hold no NUL")
}

fn mount(
    src: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    data: Option<&CString>,
    step: &'static str,
) -> Result<(), JailError> {
    let ptr = |c: Option<&CString>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // across the call; mount(2) only reads them.
    let ret = unsafe {
        libc::mount(
            ptr(src),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    check(ret, step).map(drop)
}

fn mkdir_owned(path: &CString, mode: libc::mode_t, uid: u32) -> Result<(), JailError> {
    // SAFETY: `path` is a valid C string.
    check(
        unsafe { libc::mkdir(path.as_ptr(), mode) },
        "mkdir in the jail root",
    )?;
    // SAFETY: as above; uid/gid are plain integers.
    check(
        unsafe { libc::chown(path.as_ptr(), uid, uid) },
        "chown in the jail root",
    )?;
    Ok(())
}

/// Builds the jail root on `mountpoint` (an empty host directory), binds
/// `scratch` into it and pivots into it. Must run in a fresh mount
/// namespace with mount rights; `uid` will own the runtime's directory.
pub fn enter(mountpoint: &Path, scratch: &Path, uid: u32) -> Result<(), JailError> {
    let root = cstr(mountpoint);
    let slash = CString::new("/").expect("no NUL");
    // Nothing mounted from here on may leak back to the host.
    mount(
        None,
        &slash,
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        "making / private",
    )?;
    let tmpfs = CString::new("tmpfs").expect("no NUL");
    let opts = CString::new(ROOT_TMPFS_OPTIONS).expect("no NUL");
    mount(
        Some(&tmpfs),
        &root,
        Some(&tmpfs),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&opts),
        "mounting the jail root tmpfs",
    )?;
    let inside = |p: &str| cstr(&mountpoint.join(p.trim_start_matches('/')));
    let scratch_in = inside(SCRATCH);
    mkdir_owned(&scratch_in, 0o700, uid)?;
    mkdir_owned(&inside(COMPILED), 0o700, uid)?;
    mount(
        Some(&cstr(scratch)),
        &scratch_in,
        None,
        libc::MS_BIND,
        None,
        "bind-mounting the scratch directory",
    )?;
    mount(
        None,
        &scratch_in,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
        "remounting scratch nosuid,nodev,noexec",
    )?;
    let old = inside("/old");
    // SAFETY: valid C string.
    check(unsafe { libc::mkdir(old.as_ptr(), 0o700) }, "mkdir /old")?;
    // SAFETY: both are valid C strings; pivot_root has no libc wrapper.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, root.as_ptr(), old.as_ptr()) };
    check(ret as libc::c_int, "pivot_root")?;
    // SAFETY: valid C string.
    check(unsafe { libc::chdir(slash.as_ptr()) }, "chdir /")?;
    let old_in = CString::new("/old").expect("no NUL");
    // SAFETY: valid C string; MNT_DETACH unmounts the whole host tree lazily.
    check(
        unsafe { libc::umount2(old_in.as_ptr(), libc::MNT_DETACH) },
        "unmounting the host tree",
    )?;
    // SAFETY: valid C string.
    check(unsafe { libc::rmdir(old_in.as_ptr()) }, "rmdir /old")?;
    mount(
        None,
        &slash,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&opts),
        "remounting the jail root read-only",
    )?;
    Ok(())
}
