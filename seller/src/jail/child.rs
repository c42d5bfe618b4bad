//! The sandbox process (`cpushare-seller sandbox`, started by the daemon
//! for one lease). It runs single-threaded until confined:
//!
//! 1. outer process (root): new mount, pid, ipc, uts and net namespaces;
//!    pivot into the empty jail root; fork the inner process, then only
//!    wait for it under the `waiter` filter and exit with its status;
//! 2. inner process (pid 1 of its namespace): bounding set dropped, an
//!    unprivileged uid, its own user namespace, no capabilities,
//!    no_new_privs, rlimits, SCHED_IDLE, SIGSYS reporter, the wasm runtime,
//!    the `wasm-job` filter; then `Ready`, and only then the job.

use super::error::JailError;
use super::seccomp::{self, sigsys, Role};
use super::verdict::EXIT_JAIL_FAILED;
use super::{namespaces, privileges, rootfs};
use crate::wasm::{self, JobOutcome, JobSpec, Limits, OutputSink, RuntimeConfig, StdStream};
use cpushare_proto::msg;
use cpushare_proto::sandbox::{
    read_blocking, write_blocking, FromSandbox, SandboxEnd, SandboxJob, ToSandbox,
};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the daemon tells the sandbox on its command line.
#[derive(Debug, Clone)]
pub struct ChildArgs {
    /// Unprivileged uid (and gid) the sandbox runs as.
    pub uid: u32,
    /// Empty host directory the jail root is mounted on.
    pub root: PathBuf,
    /// Host scratch directory of the lease, owned by `uid`.
    pub scratch: PathBuf,
    /// Largest guest memory, bytes (sizes the runtime's one pool slot).
    pub max_memory_bytes: u64,
    /// Build the jail (namespaces, root, uid, caps, rlimits); off only to
    /// measure what it costs.
    pub jail: bool,
    /// Install the seccomp filters; off only to measure what they cost.
    pub seccomp: bool,
    /// The daemon that started this sandbox: if it is not the parent any
    /// more (it died before the death signal was armed), give up.
    pub daemon_pid: Option<u32>,
    /// `cgroup.procs` files of the lease's cgroup, joined first of all.
    pub cgroup_procs: Vec<PathBuf>,
    /// VM mode: the lease's ISO, opened with `/dev/kvm` before the pivot;
    /// the inner process then runs [`super::vm_child`] instead of wasm.
    pub vm_iso: Option<PathBuf>,
    /// VM mode: the daemon's listening socket for the guest NIC's frames
    /// ([`super::frame_link`]), connected before the pivot.
    pub vm_net_socket: Option<PathBuf>,
    /// Make a network namespace of its own (only an unconfigured
    /// loopback); off for sandboxes the zygote forks, which share the
    /// zygote's empty one.
    pub new_netns: bool,
}

/// Runs the sandbox; returns the process exit status.
pub fn main(args: ChildArgs) -> i32 {
    if let Err(e) = adopt(&args) {
        eprintln!("cpushare sandbox: {e}");
        return EXIT_JAIL_FAILED;
    }
    match outer(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cpushare sandbox: {e}");
            EXIT_JAIL_FAILED
        }
    }
}

/// The first acts of a new sandbox, before it reads anything: die with the
/// daemon, and move into the lease's cgroup (the daemon spawns with
/// `posix_spawn`, so it cannot do either between fork and exec).
fn adopt(args: &ChildArgs) -> Result<(), JailError> {
    if let Some(daemon) = args.daemon_pid {
        // SAFETY: prctl with integer arguments.
        super::error::check(
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
            "PR_SET_PDEATHSIG",
        )?;
        // SAFETY: getppid cannot fail.
        let parent = unsafe { libc::getppid() };
        if u32::try_from(parent).ok() != Some(daemon) {
            return Err(JailError::ParentGone { daemon });
        }
    }
    for path in &args.cgroup_procs {
        std::fs::write(path, b"0").map_err(|source| JailError::Cgroup {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Builds the jail and forks the inner process; in the outer process it
/// never returns (it exits with the inner one's status).
fn outer(args: &ChildArgs) -> Result<i32, JailError> {
    if !args.jail {
        return Ok(inner(args, None));
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(JailError::NotRoot { euid });
    }
    seccomp::prepare()?;
    let proc_dir = namespaces::host_proc()?;
    namespaces::unshare_outer(args.new_netns)?;
    if args.vm_iso.is_some() {
        super::vm_child::open_host_files(args)?;
    }
    rootfs::enter(&args.root, &args.scratch, args.uid)?;
    // SAFETY: this process is single-threaded, so the child may run anything.
    let pid = super::error::check(unsafe { libc::fork() }, "fork")?;
    if pid == 0 {
        let code = inner(args, Some(proc_dir));
        std::process::exit(code);
    }
    drop(proc_dir);
    for fd in [0, 1, sigsys::REPORT_FD] {
        // SAFETY: closing inherited fds this process no longer uses.
        unsafe { libc::close(fd) };
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if args.seccomp {
        seccomp::enter(Role::Waiter)?;
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(JailError::last_os("waitpid"));
        }
    }
    let code = if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    };
    // SAFETY: _exit skips exit handlers, which would make syscalls the
    // waiter filter does not allow.
    unsafe { libc::_exit(code) }
}

/// Confines the inner process, then runs the job; returns the exit status.
fn inner(args: &ChildArgs, proc_dir: Option<OwnedFd>) -> i32 {
    if args.vm_iso.is_some() {
        return super::vm_child::inner(args, proc_dir);
    }
    // One tokio worker for wasmtime-wasi's host calls, and tokio then does
    // not size itself by reading /proc/self/cgroup (an open the job filter
    // refuses). Set while this process is still single-threaded.
    std::env::set_var("TOKIO_WORKER_THREADS", "1");
    if let Err(e) = confine(args, proc_dir) {
        eprintln!("cpushare sandbox: {e}");
        return EXIT_JAIL_FAILED;
    }
    let scratch = if args.jail {
        PathBuf::from(rootfs::SCRATCH)
    } else {
        args.scratch.clone()
    };
    let compiled = if args.jail {
        PathBuf::from(rootfs::COMPILED)
    } else {
        args.scratch.join(".compiled")
    };
    let runtime = match wasm::WasmRuntime::new(RuntimeConfig {
        compiled_cache_dir: compiled,
        max_instances: 1,
        max_memory_bytes: args.max_memory_bytes,
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cpushare sandbox: wasm runtime: {e}");
            return EXIT_JAIL_FAILED;
        }
    };
    #[cfg(debug_assertions)]
    let seen = super::attack::look_if_asked();
    if args.seccomp {
        if let Err(e) = seccomp::enter(Role::WasmJob) {
            eprintln!("cpushare sandbox: {e}");
            return EXIT_JAIL_FAILED;
        }
    }
    // Start wasmtime-wasi's tokio runtime now, under the job filter, so its
    // threads inherit it (they would be unfiltered if made earlier).
    wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| ());
    #[cfg(debug_assertions)]
    super::attack::from_env();
    send(&FromSandbox::Ready);
    #[cfg(debug_assertions)]
    if let Some(seen) = seen {
        ToDaemon.write(StdStream::Stderr, seen.as_bytes());
    }
    let end = run_job(&runtime, scratch);
    send(&FromSandbox::Ended(end));
    0
}

fn confine(args: &ChildArgs, proc_dir: Option<OwnedFd>) -> Result<(), JailError> {
    if let Some(proc_dir) = proc_dir {
        privileges::become_user(args.uid)?;
        namespaces::enter_user(proc_dir, args.uid)?;
        privileges::drop_capabilities()?;
        privileges::set_rlimits(0)?;
        privileges::die_with_parent()?;
        privileges::lowest_priority()?;
    }
    sigsys::install_handler()?;
    if args.seccomp {
        seccomp::prepare()?;
        wasm::set_helper_thread_hook(seccomp::enter_wasm_helper);
        filter_helpers();
    }
    Ok(())
}

fn send(msg: &FromSandbox) {
    let mut out = std::io::stdout().lock();
    // A daemon that stopped reading is gone; the guest is stopped by the
    // interrupt below or by the kill that follows.
    let _ = write_blocking(&mut out, msg).map(|()| out.flush());
}

struct ToDaemon;

impl OutputSink for ToDaemon {
    fn write(&self, stream: StdStream, data: &[u8]) {
        let stream = match stream {
            StdStream::Stdout => msg::StdStream::Stdout,
            StdStream::Stderr => msg::StdStream::Stderr,
        };
        send(&FromSandbox::Output {
            stream,
            data: data.to_vec(),
        });
    }
}

fn failed(message: impl Into<String>) -> SandboxEnd {
    SandboxEnd::Failed {
        message: message.into(),
    }
}

fn run_job(runtime: &wasm::WasmRuntime, scratch: PathBuf) -> SandboxEnd {
    let mut input = std::io::stdin().lock();
    let (mut wasm_bytes, mut compiled) = (Vec::new(), Vec::new());
    let job: SandboxJob = loop {
        match read_blocking::<ToSandbox, _>(&mut input) {
            Ok(Some(ToSandbox::WasmChunk(c))) => wasm_bytes.extend_from_slice(&c),
            Ok(Some(ToSandbox::CompiledChunk(c))) => compiled.extend_from_slice(&c),
            Ok(Some(ToSandbox::Job(job))) => break job,
            Ok(Some(ToSandbox::Stop)) | Ok(None) => return SandboxEnd::Interrupted,
            Ok(Some(ToSandbox::VmJob(_) | ToSandbox::ConsoleInput(_))) => {
                return failed("a VM message sent to a wasm sandbox")
            }
            // A renewal before the job started: the job will carry its budgets.
            Ok(Some(ToSandbox::Extend { .. })) => {}
            Err(e) => return failed(format!("bad message from the daemon: {e}")),
        }
        if wasm_bytes.len() > wasm::MAX_MODULE_BYTES || compiled.len() > 4 * wasm::MAX_MODULE_BYTES
        {
            return failed("module larger than the seller accepts");
        }
    };
    drop(input);
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    let raise = Arc::new(wasm::BudgetRaise::default());
    let raiser = raise.clone();
    let control = std::thread::Builder::new()
        .name("sandbox-control".into())
        .spawn(move || {
            if seccomp_on_helpers() {
                seccomp::enter_wasm_helper();
            }
            let mut input = std::io::stdin().lock();
            // A renewal raises the budgets; any other message, or the
            // daemon going away, means stop.
            while let Ok(Some(ToSandbox::Extend {
                cpu_time_ms,
                wall_time_ms,
            })) = read_blocking::<ToSandbox, _>(&mut input)
            {
                raiser.raise_to(
                    Duration::from_millis(cpu_time_ms),
                    Duration::from_millis(wall_time_ms),
                );
            }
            flag.store(true, Ordering::Relaxed);
        });
    if let Err(e) = control {
        return failed(format!("cannot start the control thread: {e}"));
    }
    let loaded = if compiled.is_empty() {
        runtime.load(&job.image_hex, &wasm_bytes)
    } else {
        // SAFETY: `compiled` came from the daemon over the pipe it made,
        // produced by its own engine (`WasmRuntime::compiled_bytes`); the
        // guest has not run yet, so nothing untrusted could have written it.
        unsafe { runtime.load_trusted(&job.image_hex, &compiled) }
    };
    let module = match loaded {
        Ok(m) => m,
        Err(e) => return failed(e.to_string()),
    };
    drop((wasm_bytes, compiled));
    send(&FromSandbox::Started);
    let spec = JobSpec {
        args: job.args,
        env: job.env,
        stdin: job.stdin,
        scratch_dir: scratch,
        interrupt: Some(interrupt),
        raise: Some(raise),
    };
    let limits = Limits {
        memory_bytes: job.memory_bytes,
        cpu_time: Duration::from_millis(job.cpu_time_ms),
        wall_time: Duration::from_millis(job.wall_time_ms),
    };
    match runtime.run(&module, spec, limits, &ToDaemon) {
        Ok(JobOutcome::Exited(code)) => SandboxEnd::Exited { code },
        Ok(JobOutcome::Trapped { message }) => SandboxEnd::Trapped { message },
        Ok(JobOutcome::CpuTimeExceeded) => SandboxEnd::CpuTimeExceeded,
        Ok(JobOutcome::WallTimeExceeded) => SandboxEnd::WallTimeExceeded,
        Ok(JobOutcome::MemoryExceeded { limit }) => {
            SandboxEnd::MemoryExceeded { limit_bytes: limit }
        }
        Ok(JobOutcome::Interrupted) => SandboxEnd::Interrupted,
        Err(e) => failed(e.to_string()),
    }
}

/// Whether helper threads must confine themselves (set by `confine`).
fn seccomp_on_helpers() -> bool {
    HELPERS_FILTERED.load(Ordering::Relaxed)
}

static HELPERS_FILTERED: AtomicBool = AtomicBool::new(false);

/// Marks that helper threads enter the helper filter (called with `--seccomp`).
pub(crate) fn filter_helpers() {
    HELPERS_FILTERED.store(true, Ordering::Relaxed);
}
