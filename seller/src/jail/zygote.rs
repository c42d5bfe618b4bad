//! The sandbox zygote: one root process, started once by the daemon, that
//! forks wasm sandboxes on request.
//!
//! Exec'ing the seller binary for every lease costs about a millisecond
//! of CPU (mapping a large binary, dynamic relocation, page faults), and a
//! fresh network namespace per sandbox about as much again, plus its
//! teardown in a kernel worker. The zygote pays both once: it is exec'd
//! once, builds every seccomp filter once, and moves itself into one empty
//! network namespace (an unconfigured loopback) that all the sandboxes it
//! forks share. Each sandbox still makes its own mount, pid, ipc, uts and
//! user namespaces, and has its own uid, cgroup and filters. Sharing the
//! empty network namespace opens no path between sandboxes: no sandbox
//! filter allows `socket` (only unnamed `AF_UNIX` pairs), and the loopback
//! is down and belongs to the host's root.
//!
//! Each sandbox is cloned with `CLONE_PARENT`, so it is the daemon's own
//! child (its exit status, reaping and parent-death signal are the
//! daemon's, as for a spawned sandbox), and with `CLONE_PIDFD`: the pidfd
//! goes back to the daemon, which waits on and kills the sandbox through
//! it, free of pid-reuse races.
//!
//! The zygote's stdin is a private `SOCK_SEQPACKET` socket to the daemon.
//! The daemon sends one [`ForkRequest`] (postcard, at most [`MAX_REQUEST`]
//! bytes) with the sandbox's stdin, stdout and stderr attached; the zygote
//! answers one `ForkReply`, with the pidfd attached when it forked.

use super::child::{self, ChildArgs};
use super::error::{check, JailError};
use super::fd_passing;
use super::seccomp;
use super::verdict::EXIT_JAIL_FAILED;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Largest request the zygote reads.
pub const MAX_REQUEST: usize = 64 << 10;

/// Largest reply the daemon reads.
const MAX_REPLY: usize = 4 << 10;

/// `CLONE_PIDFD` (linux/sched.h); the libc crate does not name it.
const CLONE_PIDFD: u64 = 0x1000;

/// What one wasm sandbox is started with (the fields of [`ChildArgs`]
/// that vary; a zygote's sandboxes are always jailed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkRequest {
    /// Unprivileged uid (and gid) the sandbox runs as.
    pub uid: u32,
    /// Empty host directory the jail root is mounted on.
    pub root: PathBuf,
    /// The lease's scratch directory, owned by `uid`.
    pub scratch: PathBuf,
    /// Largest guest memory, bytes.
    pub max_memory_bytes: u64,
    /// Install the seccomp filters (off only for measurements).
    pub seccomp: bool,
    /// `cgroup.procs` files the sandbox joins first.
    pub cgroup_procs: Vec<PathBuf>,
    /// Environment of the sandbox (empty in release builds).
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum ForkReply {
    /// Forked; the pidfd is attached.
    Forked { pid: u32 },
    /// Not forked, and why.
    Failed { reason: String },
}

/// `struct clone_args` of clone3(2), first version (64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Runs the zygote (`cpushare-seller zygote`) until the daemon closes its
/// socket; returns the process exit status.
pub fn main(daemon_pid: u32) -> i32 {
    match serve(daemon_pid) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cpushare zygote: {e}");
            EXIT_JAIL_FAILED
        }
    }
}

fn serve(daemon_pid: u32) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        "PR_SET_PDEATHSIG",
    )?;
    // SAFETY: getppid cannot fail.
    if u32::try_from(unsafe { libc::getppid() }).ok() != Some(daemon_pid) {
        return Err(JailError::ParentGone { daemon: daemon_pid });
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(JailError::NotRoot { euid });
    }
    // SAFETY: unshare changes only this single-threaded process's namespace.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        "unshare(net) for the sandboxes' shared empty network namespace",
    )?;
    seccomp::prepare()?;
    // SAFETY: fd 0 is the daemon's socket for this process's whole life.
    let control = unsafe { BorrowedFd::borrow_raw(0) };
    loop {
        let (bytes, fds) = match fd_passing::recv(control, MAX_REQUEST) {
            Ok(Some(m)) => m,
            // The daemon closed its end: it is going away.
            Ok(None) => return Ok(()),
            Err(e) => {
                reply(control, &failed(format!("bad request: {e}")), None)?;
                continue;
            }
        };
        let outcome = match (
            postcard::from_bytes::<ForkRequest>(&bytes),
            <[OwnedFd; 3]>::try_from(fds),
        ) {
            (Ok(req), Ok(stdio)) => fork_one(req, stdio, daemon_pid),
            (Err(e), _) => Err(format!("request does not decode: {e}")),
            (_, Err(fds)) => Err(format!("request carried {} descriptors, not 3", fds.len())),
        };
        match outcome {
            Ok((pid, pidfd)) => reply(control, &ForkReply::Forked { pid }, Some(pidfd.as_fd()))?,
            Err(reason) => reply(control, &ForkReply::Failed { reason }, None)?,
        }
    }
}

fn failed(reason: String) -> ForkReply {
    ForkReply::Failed { reason }
}

fn reply(
    control: BorrowedFd<'_>,
    r: &ForkReply,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), JailError> {
    let bytes = postcard::to_stdvec(r).expect("a reply always encodes");
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    fd_passing::send(control, &bytes, &fds).map_err(|source| JailError::Syscall {
        step: "answering the daemon",
        source,
    })
}

/// Clones one sandbox; in the parent returns its pid and pidfd.
fn fork_one(
    req: ForkRequest,
    stdio: [OwnedFd; 3],
    daemon_pid: u32,
) -> Result<(u32, OwnedFd), String> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PARENT as u64 | CLONE_PIDFD,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        // With CLONE_PARENT the child signals the daemon as this process
        // would; clone3 wants 0 here.
        exit_signal: 0,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed. This process
    // is single-threaded, so the child (a copy of it, on its own copy of
    // this stack, as with fork) may run any code.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        0 => run_child(req, stdio, daemon_pid),
        -1 => Err(format!("clone3: {}", std::io::Error::last_os_error())),
        pid => {
            // SAFETY: the kernel stored a new pidfd this process owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok((pid as u32, pidfd))
        }
    }
}

/// The new sandbox: its stdio in place, nothing else of the zygote's
/// open, then the same code a spawned sandbox runs.
fn run_child(req: ForkRequest, stdio: [OwnedFd; 3], daemon_pid: u32) -> ! {
    for (target, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 onto 0..=2; `fd` is open. This replaces the
        // zygote's socket (fd 0) and its stdout and stderr.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(fd), target as libc::c_int) } == -1 {
            // SAFETY: _exit ends this child without touching the zygote's state.
            unsafe { libc::_exit(EXIT_JAIL_FAILED) };
        }
    }
    // Everything else the zygote holds (the received originals among them).
    // SAFETY: close_range with integer arguments.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    std::mem::forget(stdio);
    for (k, v) in &req.env {
        std::env::set_var(k, v);
    }
    let args = ChildArgs {
        uid: req.uid,
        root: req.root,
        scratch: req.scratch,
        max_memory_bytes: req.max_memory_bytes,
        jail: true,
        seccomp: req.seccomp,
        daemon_pid: Some(daemon_pid),
        cgroup_procs: req.cgroup_procs,
        vm_iso: None,
        vm_net_socket: None,
        new_netns: false,
    };
    std::process::exit(child::main(args))
}

/// The daemon's handle on its zygote.
///
/// The zygote and the sandboxes it clones are children of one keeper
/// thread that lives as long as this handle: a parent-death signal fires
/// when the parent *thread* exits, so starting them from a short-lived
/// thread would kill them with it. The keeper outlives a crashed zygote
/// too, so running sandboxes survive it (new ones are then spawned).
#[derive(Debug)]
pub struct Zygote {
    control: Mutex<Option<OwnedFd>>,
    alive: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

/// A sandbox the zygote forked: the daemon's child, known by its pidfd.
#[derive(Debug)]
pub struct Forked {
    /// Its pid.
    pub pid: u32,
    /// Its pidfd.
    pub pidfd: OwnedFd,
}

impl Zygote {
    /// Starts the zygote from the seller binary `exe`. Needs root.
    pub fn start(exe: &Path) -> Result<Zygote, JailError> {
        let (ours, theirs) = fd_passing::seqpacket_pair().map_err(|source| JailError::Syscall {
            step: "socketpair for the zygote",
            source,
        })?;
        let mut cmd = Command::new(exe);
        cmd.arg("zygote")
            .arg("--daemon-pid")
            .arg(std::process::id().to_string())
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let alive = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = std::sync::mpsc::channel();
        let (alive2, stop2) = (alive.clone(), stop.clone());
        let keeper = std::thread::Builder::new()
            .name("sandbox-zygote".into())
            .spawn(move || {
                let spawned = cmd.spawn();
                let mut child = match spawned {
                    Ok(c) => {
                        let _ = started_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                drop(cmd);
                let status = child.wait();
                alive2.store(false, Ordering::Release);
                if !stop2.load(Ordering::Acquire) {
                    tracing::warn!(
                        ?status,
                        "the sandbox zygote exited; sandboxes are spawned from now on"
                    );
                }
                // Stay: the sandboxes it cloned are this thread's children.
                while !stop2.load(Ordering::Acquire) {
                    std::thread::park();
                }
            })
            .map_err(|source| JailError::Spawn {
                exe: exe.to_path_buf(),
                source,
            })?;
        let spawn_error = |source| JailError::Spawn {
            exe: exe.to_path_buf(),
            source,
        };
        started
            .recv()
            .map_err(|_| spawn_error(std::io::Error::other("the keeper thread died")))?
            .map_err(spawn_error)?;
        Ok(Zygote {
            control: Mutex::new(Some(ours)),
            alive,
            stop,
            keeper: Some(keeper),
        })
    }

    /// Forks a sandbox for `req` with `stdio` (its stdin, stdout and stderr).
    pub fn fork(&self, req: &ForkRequest, stdio: [BorrowedFd<'_>; 3]) -> Result<Forked, JailError> {
        let bytes = postcard::to_stdvec(req).map_err(|e| zygote_error(format!("encoding: {e}")))?;
        if bytes.len() > MAX_REQUEST {
            return Err(zygote_error(format!(
                "request of {} bytes is over the {MAX_REQUEST}-byte limit",
                bytes.len()
            )));
        }
        let control = self.control.lock().expect("zygote lock");
        let control = control.as_ref().expect("open until drop");
        fd_passing::send(control.as_fd(), &bytes, &stdio)
            .map_err(|e| zygote_error(format!("sending a request: {e}")))?;
        let (answer, mut fds) = fd_passing::recv(control.as_fd(), MAX_REPLY)
            .map_err(|e| zygote_error(format!("reading its answer: {e}")))?
            .ok_or_else(|| zygote_error("it exited".into()))?;
        match postcard::from_bytes::<ForkReply>(&answer) {
            Ok(ForkReply::Forked { pid }) if fds.len() == 1 => Ok(Forked {
                pid,
                pidfd: fds.pop().expect("one"),
            }),
            Ok(ForkReply::Failed { reason }) => Err(zygote_error(reason)),
            other => Err(zygote_error(format!("unexpected answer {other:?}"))),
        }
    }

    /// Whether the zygote process is still running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // The keeper may go once the zygote ends, which closing its
        // socket makes it do.
        self.stop.store(true, Ordering::Release);
        drop(self.control.get_mut().expect("zygote lock").take());
        if let Some(keeper) = self.keeper.take() {
            keeper.thread().unpark();
            let _ = keeper.join();
        }
    }
}

fn zygote_error(reason: String) -> JailError {
    JailError::Zygote { reason }
}
