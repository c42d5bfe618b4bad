//! VM mode of the sandbox process (`cpushare-seller sandbox --vm-iso ISO`):
//! a VM lease's VMM runs here, never in the daemon.
//!
//! 1. outer process (root, still seeing the host's files): opens
//!    `/dev/kvm` and the lease's ISO ([`open_host_files`]), then builds
//!    the jail as for wasm; the empty root holds neither, the inner
//!    process inherits the two open files;
//! 2. inner process ([`inner`]): the same confinement as a wasm sandbox
//!    (unprivileged uid in its own user namespace, no capabilities,
//!    no_new_privs, rlimits, SCHED_IDLE), then the `vmm-boot` filter,
//!    then `Ready`. Only then does it read the job, parse the buyer's ISO
//!    and build the VM. Each VMM thread narrows itself to its role's
//!    filter when it starts (the VMM's thread hook), and the main thread
//!    to `vmm-control` once the vCPUs run.
//!
//! The guest's serial console goes to the daemon as [`FromSandbox::Output`],
//! the buyer's input comes in as [`ToSandbox::ConsoleInput`], and
//! [`ToSandbox::Stop`] stops the VM.

use super::child::ChildArgs;
use super::error::JailError;
use super::seccomp::{self, sigsys, Role};
use super::verdict::EXIT_JAIL_FAILED;
use super::{namespaces, privileges};
use cpushare_proto::msg::StdStream;
use cpushare_proto::sandbox::{
    read_blocking, write_blocking, FromSandbox, SandboxEnd, SandboxVmJob, ToSandbox,
};
use cpushare_vmm::confine::VmmThread;
use cpushare_vmm::devices::frame_socket::FrameSocket;
use cpushare_vmm::devices::virtio::net::DEFAULT_MTU;
use cpushare_vmm::{from_iso_file, HostCpuid, HostHandoff, NetConfig, Vm, VmExit};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

/// Where the KVM device is on the host.
const KVM_PATH: &str = "/dev/kvm";

/// `/dev/kvm` and the ISO, opened by the outer process before the pivot.
static HOST_FILES: Mutex<Option<(File, File)>> = Mutex::new(None);

/// The guest NIC's connection to the daemon, made by the outer process
/// before the pivot (VM leases on a vnet only).
static HOST_NET: Mutex<Option<FrameSocket>> = Mutex::new(None);

/// Whether VMM threads enter their filters (off only with `--no-seccomp`).
static FILTERED: AtomicBool = AtomicBool::new(false);

/// The `/dev/kvm` fd, for the debug-only attacks.
static KVM_FD: AtomicI32 = AtomicI32::new(-1);

fn open_both(args: &ChildArgs) -> Result<(File, File), JailError> {
    let iso = args.vm_iso.as_ref().expect("VM mode has an ISO");
    let open = |path: &std::path::Path, write: bool, step: &'static str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|source| JailError::Syscall { step, source })
    };
    let kvm = open(std::path::Path::new(KVM_PATH), true, "opening /dev/kvm")?;
    let iso = open(iso, false, "opening the lease's ISO")?;
    Ok((kvm, iso))
}

/// Opens `/dev/kvm` and the lease's ISO while the host's files are still
/// visible (the outer process, root, before `pivot_root`). Both are
/// close-on-exec; the inner process inherits them through `fork`.
pub(super) fn open_host_files(args: &ChildArgs) -> Result<(), JailError> {
    let files = open_both(args)?;
    *HOST_FILES.lock().unwrap_or_else(|p| p.into_inner()) = Some(files);
    if let Some(path) = &args.vm_net_socket {
        let fd = super::frame_link::connect(path).map_err(|source| JailError::Syscall {
            step: "connecting the guest NIC to the daemon",
            source,
        })?;
        // Checked here (a `getsockopt`), before any filter is in place.
        let net = FrameSocket::from_fd(fd).map_err(|e| JailError::Syscall {
            step: "checking the guest NIC's link",
            source: std::io::Error::other(e.to_string()),
        })?;
        *HOST_NET.lock().unwrap_or_else(|p| p.into_inner()) = Some(net);
    }
    Ok(())
}

/// Confines the inner process, boots the VM and runs it to its end;
/// returns the process exit status.
pub(super) fn inner(args: &ChildArgs, proc_dir: Option<OwnedFd>) -> i32 {
    let opened = HOST_FILES.lock().unwrap_or_else(|p| p.into_inner()).take();
    // Without the jail (measurements only) nothing opened them yet.
    let files = match opened {
        Some(f) => Ok(f),
        None => open_both(args),
    };
    let confined = files.and_then(|f| confine(args, proc_dir).map(|()| f));
    let (kvm, iso) = match confined {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cpushare sandbox: {e}");
            return EXIT_JAIL_FAILED;
        }
    };
    KVM_FD.store(kvm.as_raw_fd(), Ordering::Relaxed);
    #[cfg(debug_assertions)]
    {
        attack_kvm_if_asked(kvm.as_raw_fd());
        super::attack::from_env();
    }
    send(&FromSandbox::Ready);
    let (input_tx, input_rx) = std::sync::mpsc::channel();
    let job = match wait_for_job(&input_tx) {
        Ok(job) => job,
        Err(end) => {
            send(&FromSandbox::Ended(end));
            return 0;
        }
    };
    let end = run_vm(job, kvm, iso, input_tx, input_rx);
    send(&FromSandbox::Ended(end));
    0
}

fn confine(args: &ChildArgs, proc_dir: Option<OwnedFd>) -> Result<(), JailError> {
    if let Some(proc_dir) = proc_dir {
        privileges::become_user(args.uid)?;
        namespaces::enter_user(proc_dir, args.uid)?;
        privileges::drop_capabilities()?;
        // One thread per vCPU beyond the VMM's own; the lease's cgroup
        // bounds the total by its vCPUs.
        privileges::set_rlimits(u64::from(cpushare_vmm::arch::x86_64::mptable::MAX_VCPUS))?;
        privileges::die_with_parent()?;
        privileges::lowest_priority()?;
    }
    sigsys::install_handler()?;
    if args.seccomp {
        seccomp::prepare()?;
        FILTERED.store(true, Ordering::Relaxed);
        cpushare_vmm::confine::set_thread_hook(enter_vmm_thread);
        seccomp::enter(Role::VmmBoot)?;
    }
    Ok(())
}

/// The VMM's thread hook: enter the role's filter or die (a VMM thread
/// running unfiltered must never happen).
fn enter_vmm_thread(thread: VmmThread) {
    if !FILTERED.load(Ordering::Relaxed) {
        return;
    }
    let role = match thread {
        VmmThread::Vcpu => Role::VmmVcpu,
        VmmThread::Device => Role::VmmDevice,
        VmmThread::Control => Role::VmmControl,
    };
    if seccomp::enter(role).is_err() {
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(sigsys::EXIT_SECCOMP) };
    }
    #[cfg(debug_assertions)]
    if thread == VmmThread::Vcpu {
        attack_from_vcpu_if_asked();
    }
}

/// Reads the daemon's messages until the job; console input that comes
/// first is kept for the guest. `Err` is the end to report instead.
fn wait_for_job(input: &std::sync::mpsc::Sender<Vec<u8>>) -> Result<SandboxVmJob, SandboxEnd> {
    let mut stdin = std::io::stdin().lock();
    loop {
        match read_blocking::<ToSandbox, _>(&mut stdin) {
            Ok(Some(ToSandbox::VmJob(job))) => return Ok(job),
            Ok(Some(ToSandbox::ConsoleInput(data))) => {
                let _ = input.send(data);
            }
            Ok(Some(ToSandbox::Stop)) | Ok(None) => return Err(SandboxEnd::Interrupted),
            Ok(Some(other)) => {
                return Err(failed(format!(
                    "a VM sandbox got a wasm message ({})",
                    message_name(&other)
                )))
            }
            Err(e) => return Err(failed(format!("bad message from the daemon: {e}"))),
        }
    }
}

fn message_name(m: &ToSandbox) -> &'static str {
    match m {
        ToSandbox::WasmChunk(_) => "module chunk",
        ToSandbox::CompiledChunk(_) => "compiled chunk",
        ToSandbox::Job(_) => "wasm job",
        ToSandbox::Stop => "stop",
        ToSandbox::VmJob(_) => "VM job",
        ToSandbox::ConsoleInput(_) => "console input",
        ToSandbox::Extend { .. } => "extend",
    }
}

fn failed(message: impl Into<String>) -> SandboxEnd {
    SandboxEnd::Failed {
        message: message.into(),
    }
}

/// Parses the ISO, builds the VM and runs it; the daemon's later messages
/// are read on a control thread.
fn run_vm(
    job: SandboxVmJob,
    kvm: File,
    iso: File,
    input_tx: std::sync::mpsc::Sender<Vec<u8>>,
    input_rx: std::sync::mpsc::Receiver<Vec<u8>>,
) -> SandboxEnd {
    let mut boot = match from_iso_file(&iso, job.vcpus, job.mem_bytes) {
        Ok(b) => b,
        Err(e) => return failed(e.to_string()),
    };
    for item in &job.cmdline {
        if item.is_empty() || item.contains(|c: char| c.is_whitespace() || c == '\0') {
            return failed(format!(
                "kernel command line item {item:?} is empty or has spaces; pass one word per item"
            ));
        }
        boot.config.cmdline.push(' ');
        boot.config.cmdline.push_str(item);
    }
    let net = HOST_NET.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(socket) = net {
        boot.config.net = Some(NetConfig {
            mac: super::frame_link::GUEST_MAC,
            mtu: DEFAULT_MTU,
            socket,
        });
    }
    let cpuid = if job.host_cpuid.is_empty() {
        None
    } else {
        match HostCpuid::from_words(&job.host_cpuid) {
            Ok(c) => Some(c),
            Err(e) => return failed(e.to_string()),
        }
    };
    let files = HostHandoff {
        kvm: Some(kvm),
        disk_ro: Some(iso),
        cpuid,
    };
    let console_in = ConsoleIn {
        rx: input_rx,
        pending: Vec::new(),
    };
    let vm = match Vm::with_files(
        boot.config,
        files,
        Box::new(ConsoleOut),
        Some(Box::new(console_in)),
    ) {
        Ok(vm) => vm,
        Err(e) => return failed(e.to_string()),
    };
    let handle = vm.handle();
    let control = std::thread::Builder::new()
        .name("vmm-control".into())
        .spawn(move || {
            enter_vmm_thread(VmmThread::Control);
            let mut stdin = std::io::stdin().lock();
            loop {
                match read_blocking::<ToSandbox, _>(&mut stdin) {
                    Ok(Some(ToSandbox::ConsoleInput(data))) => {
                        let _ = input_tx.send(data);
                    }
                    // A stop, the daemon going away or garbage: stop.
                    Ok(Some(ToSandbox::Stop)) | Ok(None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
            handle.stop();
        });
    if let Err(e) = control {
        return failed(format!("cannot start the control thread: {e}"));
    }
    send(&FromSandbox::Started);
    match vm.run() {
        Ok(VmExit::PowerOff { status }) => SandboxEnd::PowerOff { status },
        Ok(VmExit::Reset) => SandboxEnd::GuestReset,
        Ok(VmExit::TripleFault) => SandboxEnd::TripleFault,
        Ok(VmExit::Stopped) => SandboxEnd::Interrupted,
        Err(e) => failed(e.to_string()),
    }
}

fn send(msg: &FromSandbox) {
    let mut out = std::io::stdout().lock();
    // A daemon that stopped reading is gone; the kill that follows ends us.
    let _ = write_blocking(&mut out, msg).map(|()| out.flush());
}

/// The guest's serial output, as frames to the daemon.
struct ConsoleOut;

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        send(&FromSandbox::Output {
            stream: StdStream::Stdout,
            data: buf.to_vec(),
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The buyer's typed input, read by the VMM's console thread; EOF when
/// the control thread is gone.
struct ConsoleIn {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl std::io::Read for ConsoleIn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            match self.rx.recv() {
                Ok(data) => self.pending = data,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

/// An ioctl request no VMM role allows (`_IO(KVMIO, 0xff)`).
#[cfg(debug_assertions)]
const UNKNOWN_KVM_IOCTL: libc::c_ulong = 0xaeff;

/// `CPUSHARE_SANDBOX_ATTACK=kvm_ioctl`: an unknown ioctl on `/dev/kvm`
/// under the boot filter (the widest VMM filter).
#[cfg(debug_assertions)]
fn attack_kvm_if_asked(kvm: libc::c_int) {
    if std::env::var(super::attack::ENV).as_deref() == Ok("kvm_ioctl") {
        // SAFETY: an ioctl the filter must refuse; the process is meant to die.
        let r = unsafe { libc::ioctl(kvm, UNKNOWN_KVM_IOCTL, 0) };
        eprintln!("probe kvm_ioctl: survived with {r}");
    }
}

/// `CPUSHARE_SANDBOX_ATTACK=vcpu_create_vm`: a vCPU thread, under its own
/// filter, issues `KVM_CREATE_VM`, which the boot filter allows but the
/// vCPU role does not; `vcpu_openat`: it opens a host path.
#[cfg(debug_assertions)]
fn attack_from_vcpu_if_asked() {
    let Ok(name) = std::env::var(super::attack::ENV) else {
        return;
    };
    // SAFETY: calls the filter must refuse, with valid arguments; the
    // process is meant to die.
    let r = unsafe {
        match name.as_str() {
            "vcpu_create_vm" => libc::ioctl(KVM_FD.load(Ordering::Relaxed), 0xae01, 0),
            "vcpu_openat" => libc::openat(libc::AT_FDCWD, c"/etc/passwd".as_ptr(), libc::O_RDONLY),
            _ => return,
        }
    };
    eprintln!("probe {name}: survived with {r}");
}
