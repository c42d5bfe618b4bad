//! The daemon's side of a sandbox: start `cpushare-seller sandbox` in the
//! lease's cgroup, hand it the job over its stdin, turn its stdout into
//! events, stop or kill it, reap it and gather the facts of its death.

use super::cgroup::LeaseCgroup;
use super::pidfd_child::PidfdChild;
use super::seccomp::sigsys;
use super::verdict::Death;
use super::zygote::{ForkRequest, Zygote};
use super::JailError;
use cpushare_proto::frame;
use cpushare_proto::sandbox::{FromSandbox, SandboxJob, ToSandbox, CHUNK_BYTES};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{Child, Command};
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

/// The sandbox's outer process: spawned by this process, or forked by
/// the zygote into this process's family.
#[derive(Debug)]
enum Process {
    Spawned(Child),
    Forked(PidfdChild),
}

impl Process {
    fn id(&self) -> Option<u32> {
        match self {
            Process::Spawned(c) => c.id(),
            Process::Forked(c) => c.id(),
        }
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self {
            Process::Spawned(c) => c.try_wait(),
            Process::Forked(c) => c.try_wait(),
        }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Process::Spawned(c) => c.wait().await,
            Process::Forked(c) => c.wait().await,
        }
    }

    fn start_kill(&mut self) -> std::io::Result<()> {
        match self {
            Process::Spawned(c) => c.start_kill(),
            Process::Forked(c) => c.start_kill(),
        }
    }
}

/// The daemon's end of the sandbox's stdin.
type StdinPipe = Box<dyn AsyncWrite + Send + Unpin>;

/// A running sandbox process.
#[derive(Debug)]
pub struct Sandbox {
    child: Process,
    stdin: Option<DebugPipe>,
    events: mpsc::Receiver<FromSandbox>,
    report: Option<tokio::task::JoinHandle<Option<i64>>>,
    cgroup: Option<LeaseCgroup>,
    stopped: bool,
    /// The sandbox said `Ready` (it is confined and waits for its job).
    ready: bool,
}

impl Sandbox {
    /// Starts the sandbox process. It joins `cgroup` and arms its
    /// parent-death signal as its first acts, before it reads anything.
    ///
    /// No code runs in the daemon between fork and exec, so the standard
    /// library spawns with `posix_spawn` (a vfork that shares the daemon's
    /// memory): a fork would copy the page tables of a daemon that maps
    /// gigabytes of wasm pool reservations, for every lease.
    pub fn spawn(spec: &SpawnSpec, cgroup: Option<LeaseCgroup>) -> Result<Sandbox, JailError> {
        Self::spawn_with_args(spec, cgroup, &[])
    }

    /// [`Sandbox::spawn`] with more `sandbox` arguments (a VM lease's `--vm-iso`).
    pub fn spawn_with_args(
        spec: &SpawnSpec,
        cgroup: Option<LeaseCgroup>,
        extra: &[std::ffi::OsString],
    ) -> Result<Sandbox, JailError> {
        let mut cmd = Command::new(&spec.exe);
        cmd.arg("sandbox")
            .arg("--uid")
            .arg(spec.uid.to_string())
            .arg("--root")
            .arg(&spec.jail_root)
            .arg("--scratch")
            .arg(&spec.scratch)
            .arg("--max-memory")
            .arg(spec.max_memory_bytes.to_string())
            .arg("--daemon-pid")
            .arg(std::process::id().to_string())
            .args(extra);
        if let Some(cg) = &cgroup {
            for procs in cg.procs_paths() {
                cmd.arg("--cgroup-procs").arg(procs);
            }
        }
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
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| JailError::Spawn {
            exe: spec.exe.clone(),
            source,
        })?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        Ok(Self::attach(
            Process::Spawned(child),
            Box::new(stdin),
            stdout,
            stderr,
            cgroup,
        ))
    }

    /// Starts a jailed wasm sandbox forked by `zygote` (see
    /// [`super::zygote`]): the same sandbox [`Sandbox::spawn`] starts,
    /// without the exec and in the zygote's empty network namespace. On
    /// failure the cgroup comes back, for a spawn to use instead.
    #[allow(clippy::result_large_err)]
    pub fn fork(
        zygote: &Zygote,
        spec: &SpawnSpec,
        cgroup: Option<LeaseCgroup>,
    ) -> Result<Sandbox, (JailError, Option<LeaseCgroup>)> {
        let pipe_error = |source| JailError::Syscall {
            step: "pipe for a sandbox",
            source,
        };
        let pipes = (|| Ok::<_, std::io::Error>((pipe()?, pipe()?, pipe()?)))();
        let ((stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w)) = match pipes {
            Ok(p) => p,
            Err(e) => return Err((pipe_error(e), cgroup)),
        };
        let req = ForkRequest {
            uid: spec.uid,
            root: spec.jail_root.clone(),
            scratch: spec.scratch.clone(),
            max_memory_bytes: spec.max_memory_bytes,
            seccomp: spec.seccomp,
            cgroup_procs: cgroup.iter().flat_map(|cg| cg.procs_paths()).collect(),
            env: spec.env.clone(),
        };
        let forked = match zygote.fork(&req, [stdin_r.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()])
        {
            Ok(f) => f,
            Err(e) => return Err((e, cgroup)),
        };
        // The sandbox holds its ends now.
        drop((stdin_r, stdout_w, stderr_w));
        // Dropped on a failure below, the child is killed and reaped.
        let child = match PidfdChild::new(forked.pid, forked.pidfd) {
            Ok(c) => c,
            Err(e) => return Err((pipe_error(e), cgroup)),
        };
        use tokio::net::unix::pipe as tpipe;
        let ends = (|| {
            Ok::<_, std::io::Error>((
                tpipe::Sender::from_owned_fd(stdin_w)?,
                tpipe::Receiver::from_owned_fd(stdout_r)?,
                tpipe::Receiver::from_owned_fd(stderr_r)?,
            ))
        })();
        match ends {
            Ok((stdin, stdout, stderr)) => Ok(Self::attach(
                Process::Forked(child),
                Box::new(stdin),
                stdout,
                stderr,
                cgroup,
            )),
            Err(e) => Err((pipe_error(e), cgroup)),
        }
    }

    /// Starts the readers of a new sandbox's stdout and stderr.
    fn attach(
        child: Process,
        stdin: StdinPipe,
        mut stdout: impl AsyncRead + Send + Unpin + 'static,
        stderr: impl AsyncRead + Send + Unpin + 'static,
        cgroup: Option<LeaseCgroup>,
    ) -> Sandbox {
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
        let report = tokio::spawn(read_stderr(stderr, child.id().unwrap_or(0)));
        Sandbox {
            child,
            stdin: Some(DebugPipe(stdin)),
            events,
            report: Some(report),
            cgroup,
            stopped: false,
            ready: false,
        }
    }

    /// Whether the sandbox process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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
            Some(w) => Ok(frame::write(&mut w.0, msg).await?),
            None => Ok(()),
        }
    }

    /// Sends one message (a VM lease's job or console input).
    pub async fn send_message(&mut self, msg: &ToSandbox) -> Result<(), JailError> {
        self.send(msg).await
    }

    /// Sends the module's compiled form (from the daemon's engine) and the
    /// job. The module's own bytes go only when there is no compiled form:
    /// the sandbox then validates and compiles them itself.
    pub async fn send_job(
        &mut self,
        wasm: &[u8],
        compiled: &[u8],
        job: SandboxJob,
    ) -> Result<(), JailError> {
        if compiled.is_empty() {
            for c in wasm.chunks(CHUNK_BYTES) {
                self.send(&ToSandbox::WasmChunk(c.to_vec())).await?;
            }
        }
        for c in compiled.chunks(CHUNK_BYTES) {
            self.send(&ToSandbox::CompiledChunk(c.to_vec())).await?;
        }
        self.send(&ToSandbox::Job(job)).await
    }

    /// The next event; `None` once the sandbox closed its output.
    pub async fn next(&mut self) -> Option<FromSandbox> {
        let event = self.events.recv().await;
        if matches!(event, Some(FromSandbox::Ready)) {
            self.ready = true;
        }
        event
    }

    /// Whether the sandbox has said `Ready` (a pooled one has, before
    /// its lease's supervisor sees it).
    pub fn is_ready(&self) -> bool {
        self.ready
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
        // The stderr pipe closes when the last sandbox process is gone; a
        // grandchild that somehow outlived it must not hold up the reaping.
        let seccomp_syscall = match self.report.take() {
            Some(report) => tokio::time::timeout(REPORT_WAIT, report)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
            None => None,
        };
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

/// The stdin pipe, printable (the boxed writer is not).
struct DebugPipe(StdinPipe);

impl std::fmt::Debug for DebugPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StdinPipe")
    }
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for both descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// How long reaping waits for the sandbox's stderr to close.
const REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest stderr line kept from a sandbox; the rest of a longer line is
/// dropped (a sandbox's own diagnostics are short).
const MAX_LINE: usize = 4096;

/// Passes a sandbox's diagnostics on to the daemon's log and returns the
/// syscall number of its SIGSYS record, if it wrote one.
async fn read_stderr<R: tokio::io::AsyncRead + Unpin>(stderr: R, pid: u32) -> Option<i64> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    let mut syscall = None;
    // Inside an over-long line: its tail is dropped, never read as a line
    // of its own (so it cannot pass for a record).
    let mut skipping = false;
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return syscall,
            Ok(_) => {}
        }
        let complete = line.ends_with(b"\n");
        let was_skipping = std::mem::replace(&mut skipping, !complete);
        if was_skipping {
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.is_empty() {
            continue;
        }
        match sigsys::parse_record(text).filter(|_| complete) {
            Some(nr) => syscall = nr,
            None => tracing::warn!(sandbox = pid, "{}", String::from_utf8_lossy(text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_record_counts_only_as_a_whole_line_of_its_own() {
        let record = b"cpushare-sigsys 41\n";
        assert_eq!(read_stderr(&record[..], 1).await, Some(41));
        let mut mixed = b"cpushare sandbox: some diagnostic\n".to_vec();
        mixed.extend_from_slice(b"\ncpushare-sigsys 101\n");
        assert_eq!(read_stderr(&mixed[..], 1).await, Some(101));
        // The tail of an over-long line is not a line of its own.
        let mut long = vec![b'x'; MAX_LINE];
        long.extend_from_slice(record);
        assert_eq!(read_stderr(&long[..], 1).await, None);
        // Cut off before its newline: not a record either.
        assert_eq!(read_stderr(&b"cpushare-sigsys 41"[..], 1).await, None);
    }
}
