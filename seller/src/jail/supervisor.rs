//! The daemon's side of a sandbox: start `cpushare-seller sandbox` in the
//! lease's cgroup, hand it the job over its stdin, turn its stdout into
//! events, stop or kill it, reap it and gather the facts of its death.

use super::cgroup::LeaseCgroup;
use super::seccomp::sigsys;
use super::verdict::Death;
use super::JailError;
use cpushare_proto::frame;
use cpushare_proto::sandbox::{FromSandbox, SandboxJob, ToSandbox, CHUNK_BYTES};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// First uid handed to sandboxes; each sandbox gets its own, so
/// RLIMIT_NPROC and file ownership never mix two leases.
pub const UID_BASE: u32 = 600_000;

/// How many distinct sandbox uids are cycled through.
const UID_SPAN: u32 = 65_536;

static NEXT_UID: AtomicU32 = AtomicU32::new(0);

/// A fresh uid for the next sandbox.
pub fn next_uid() -> u32 {
    UID_BASE + NEXT_UID.fetch_add(1, Ordering::Relaxed) % UID_SPAN
}

/// How to start one sandbox.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The seller binary (`/proc/self/exe` in the daemon).
    pub exe: PathBuf,
    /// Empty directory the jail root is mounted on (inside the sandbox's own mount namespace).
    pub jail_root: PathBuf,
    /// The lease's scratch directory; must exist and be owned by `uid`.
    pub scratch: PathBuf,
    /// The sandbox's uid.
    pub uid: u32,
    /// Largest guest memory, bytes.
    pub max_memory_bytes: u64,
    /// Build the jail; off only for measurements.
    pub jail: bool,
    /// Install seccomp filters; off only for measurements.
    pub seccomp: bool,
    /// Extra environment for the sandbox (its environment is otherwise empty).
    pub env: Vec<(String, String)>,
}

/// A running sandbox process.
#[derive(Debug)]
pub struct Sandbox {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<FromSandbox>,
    report: Option<std::fs::File>,
    cgroup: Option<LeaseCgroup>,
    stopped: bool,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    super::error::check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe2",
    )?;
    // SAFETY: both were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Sandbox {
    /// Starts the sandbox process, in `cgroup` from its first instruction.
    pub fn spawn(spec: &SpawnSpec, cgroup: Option<LeaseCgroup>) -> Result<Sandbox, JailError> {
        let (report_r, report_w) = pipe()?;
        let procs = match &cgroup {
            Some(cg) => cg.procs_files()?,
            None => Vec::new(),
        };
        let mut cmd = Command::new(&spec.exe);
        cmd.arg("sandbox")
            .arg("--uid")
            .arg(spec.uid.to_string())
            .arg("--root")
            .arg(&spec.jail_root)
            .arg("--scratch")
            .arg(&spec.scratch)
            .arg("--max-memory")
            .arg(spec.max_memory_bytes.to_string());
        if !spec.jail {
            cmd.arg("--no-jail");
        }
        if !spec.seccomp {
            cmd.arg("--no-seccomp");
        }
        cmd.env_clear()
            .envs(spec.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let report_fd = report_w.as_raw_fd();
        let proc_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let daemon = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid, write, dup2, fcntl)
        // on fds opened above; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // A daemon killed outright takes its sandboxes with it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1
                    || libc::getppid() != daemon
                {
                    return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
                }
                for &fd in &proc_fds {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if report_fd == sigsys::REPORT_FD {
                    libc::fcntl(report_fd, libc::F_SETFD, 0);
                } else if libc::dup2(report_fd, sigsys::REPORT_FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| JailError::Spawn {
            exe: spec.exe.clone(),
            source,
        })?;
        drop(report_w);
        drop(procs);
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout was piped");
        let (tx, events) = mpsc::channel(64);
        tokio::spawn(async move {
            // A read error means the sandbox died mid-frame; its death
            // tells the rest.
            while let Ok(Some(msg)) = frame::read::<FromSandbox, _>(&mut stdout).await {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        Ok(Sandbox {
            child,
            stdin,
            events,
            report: Some(std::fs::File::from(report_r)),
            cgroup,
            stopped: false,
        })
    }

    /// Pid of the outer sandbox process.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Host pid of the inner (confined, guest-running) process, once forked.
    pub fn inner_pid(&self) -> Option<u32> {
        let pid = self.child.id()?;
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The lease's cgroup, if it has one.
    pub fn cgroup(&self) -> Option<&LeaseCgroup> {
        self.cgroup.as_ref()
    }

    async fn send(&mut self, msg: &ToSandbox) -> Result<(), JailError> {
        match self.stdin.as_mut() {
            Some(w) => Ok(frame::write(w, msg).await?),
            None => Ok(()),
        }
    }

    /// Sends the module, its compiled form (from the daemon's engine) and the job.
    pub async fn send_job(
        &mut self,
        wasm: &[u8],
        compiled: &[u8],
        job: SandboxJob,
    ) -> Result<(), JailError> {
        for c in wasm.chunks(CHUNK_BYTES) {
            self.send(&ToSandbox::WasmChunk(c.to_vec())).await?;
        }
        for c in compiled.chunks(CHUNK_BYTES) {
            self.send(&ToSandbox::CompiledChunk(c.to_vec())).await?;
        }
        self.send(&ToSandbox::Job(job)).await
    }

    /// The next event; `None` once the sandbox closed its output.
    pub async fn next(&mut self) -> Option<FromSandbox> {
        self.events.recv().await
    }

    /// Asks the guest to stop at its next epoch tick.
    pub async fn stop(&mut self) {
        self.stopped = true;
        let _ = self.send(&ToSandbox::Stop).await;
    }

    /// Kills every process of the sandbox now.
    pub fn kill(&mut self) {
        self.stopped = true;
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        let _ = self.child.start_kill();
    }

    /// Waits for the sandbox to exit and gathers what its death says.
    pub async fn reap(mut self, reported: Option<cpushare_proto::sandbox::SandboxEnd>) -> Death {
        drop(self.stdin.take());
        let status = self.child.wait().await.ok().map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        });
        let seccomp_syscall = self
            .report
            .take()
            .filter(set_nonblocking)
            .and_then(sigsys::read_report);
        let oom_killed = self.cgroup.as_ref().is_some_and(LeaseCgroup::oom_killed);
        Death {
            reported,
            status,
            seccomp_syscall,
            oom_killed,
            stopped: self.stopped,
        }
    }
}

fn set_nonblocking(f: &std::fs::File) -> bool {
    // SAFETY: fcntl on an fd this process owns.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) != -1 }
}
