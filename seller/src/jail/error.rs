//! What can go wrong while confining or supervising a sandbox.

use std::path::PathBuf;

/// Why a sandbox could not be confined, started or supervised.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// the sandbox must start as root to build its jail (euid is {euid}); run the seller as root
    #[error(
        "the sandbox must start as root to build its jail (euid is {euid}); run the seller as root"
    )]
    NotRoot {
        /// The effective uid found.
        euid: u32,
    },
    /// {step} failed: {source}
    #[error("{step} failed: {source}")]
    Syscall {
        /// What the jail was doing (`unshare(mount, net, ...)`, `pivot_root`...).
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// cannot use cgroup file {path}: {source}
    #[error("cannot use cgroup file {path}: {source}")]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// no usable cgroup controllers: {detail}; run `cpushare-seller doctor`
    #[error("no usable cgroup controllers: {detail}; run `cpushare-seller doctor`")]
    NoCgroups {
        /// What is missing.
        detail: String,
    },
    /// seccomp filter for role {role} could not be built: {reason}
    #[error("seccomp filter for role {role} could not be built: {reason}")]
    Filter {
        /// The thread role.
        role: &'static str,
        /// seccompiler's message.
        reason: String,
    },
    /// cannot start the sandbox process {exe}: {source}
    #[error("cannot start the sandbox process {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// the daemon (pid {daemon}) exited before the sandbox could tie its life to it
    #[error("the daemon (pid {daemon}) exited before the sandbox could tie its life to it")]
    ParentGone {
        /// The daemon's pid, as passed on the command line.
        daemon: u32,
    },
    /// the sandbox zygote failed: {reason}
    #[error("the sandbox zygote failed: {reason}")]
    Zygote {
        /// What went wrong.
        reason: String,
    },
    /// the sandbox pipe broke: {0}
    #[error("the sandbox pipe broke: {0}")]
    Pipe(#[from] cpushare_proto::frame::FrameError),
}

impl JailError {
    /// The last OS error, tagged with the step that failed.
    pub(crate) fn last_os(step: &'static str) -> JailError {
        JailError::Syscall {
            step,
            source: std::io::Error::last_os_error(),
        }
    }
}

/// Turns a libc return value into a result: `-1` means the step failed.
pub(crate) fn check(ret: libc::c_int, step: &'static str) -> Result<libc::c_int, JailError> {
    if ret == -1 {
        Err(JailError::last_os(step))
    } else {
        Ok(ret)
    }
}
