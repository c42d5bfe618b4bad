//! Building and running a VM from a [`VmConfig`]: the small public API the
//! seller uses.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{boot, layout, mptable, regs::RegsError};
use crate::confine::VmmThread;
use crate::devices::bus::{Bus, SerialCoalescing};
use crate::devices::frame_socket::{self, FrameSocket};
use crate::devices::pci::PciRoot;
use crate::devices::serial;
use crate::devices::virtio::block::{Block, FileDisk};
use crate::devices::virtio::net::{Net, NetConfigError, NetCounters, NetStats, VirtioPciNet};
use crate::devices::virtio::pci::{VirtioPciBlock, BAR_SIZE};
use crate::iso::{self, IsoError, IsoReader};
use crate::vstate::coalesced::CoalescedRing;
use crate::vstate::vcpu::{self, VcpuError, VcpuOutcome};
use crate::vstate::vm::HostCpuid;
use crate::vstate::{memory, vm};

/// Where a boot file comes from.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A file on the host.
    Path(PathBuf),
    /// Bytes already in memory (e.g. extracted from an ISO).
    Bytes(Vec<u8>),
}

/// What to boot and with which resources.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Number of vCPUs (1..=32).
    pub vcpus: u8,
    /// Guest RAM in bytes (multiple of 4 KiB, at least 16 MiB).
    pub mem_bytes: u64,
    /// Kernel: PVH ELF, plain ELF vmlinux, or bzImage.
    pub kernel: Payload,
    /// Initrd, if any.
    pub initrd: Option<Payload>,
    /// Kernel command line.
    pub cmdline: String,
    /// Read-only disk (the buyer's ISO), the first virtio-blk device.
    pub disk_ro: Option<PathBuf>,
    /// Writable scratch disk, the second virtio-blk device.
    pub scratch: Option<PathBuf>,
    /// The guest's network interface, if any.
    pub net: Option<NetConfig>,
}

/// A virtio-net device whose frames go through a socket, not a TAP device.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The guest's MAC address (unicast).
    pub mac: [u8; 6],
    /// MTU offered to the guest; frames above it plus the Ethernet header
    /// are dropped both ways. The vnet's is
    /// [`DEFAULT_MTU`](crate::devices::virtio::net::DEFAULT_MTU).
    pub mtu: u16,
    /// The VMM's end of the frame socket pair.
    pub socket: FrameSocket,
}

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off with this status (debug-exit port; 0 for an
    /// ACPI-style shutdown event).
    PowerOff {
        /// Status the guest wrote.
        status: u32,
    },
    /// The guest asked for a reset; we do not reboot it.
    Reset,
    /// A vCPU triple-faulted.
    TripleFault,
    /// [`VmHandle::stop`] ended it.
    Stopped,
}

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// vCPU count out of range.
    #[error("{vcpus} vCPUs requested; give 1 to {max}")]
    BadVcpuCount {
        /// Requested.
        vcpus: u8,
        /// Limit.
        max: u8,
    },
    /// Reading a boot file failed.
    #[error("reading {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A boot file is larger than guest memory.
    #[error("{path} is {size} bytes, more than the guest's {mem} bytes of memory")]
    FileLargerThanMemory {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Guest memory.
        mem: u64,
    },
    /// Opening a disk image failed.
    #[error("opening disk {path}: {source}")]
    OpenDisk {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// The VM could not be created.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// Loading kernel/initrd/cmdline failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The MP table could not be built.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Boot structures could not be written.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// The ISO could not be read or has no usable boot config.
    #[error("ISO {path}: {source}")]
    Iso {
        /// The ISO.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: IsoError,
    },
    /// An eventfd or irqfd could not be set up.
    #[error("setting up interrupt {irq}: {reason}")]
    Irq {
        /// The IRQ.
        irq: u32,
        /// What failed.
        reason: String,
    },
    /// A thread could not be spawned.
    #[error("spawning a vCPU thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The network device configuration is unusable.
    #[error("network device: {0}")]
    Net(#[from] NetConfigError),
}

/// Stops a running VM from another thread (end of lease).
#[derive(Clone)]
pub struct VmHandle {
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<libc::pthread_t>>>,
    net: Option<Arc<NetCounters>>,
}

impl VmHandle {
    /// Asks every vCPU to leave the guest; [`Vm::run`] then returns
    /// [`VmExit::Stopped`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        kick(&self.threads);
    }

    /// Frame and drop counts of the network device, if the VM has one.
    pub fn net_stats(&self) -> Option<NetStats> {
        self.net.as_ref().map(|c| c.snapshot())
    }
}

/// Signal used to kick vCPU threads out of `KVM_RUN`.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick(threads: &Mutex<Vec<libc::pthread_t>>) {
    let list = threads
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for &t in list.iter() {
        // SAFETY: `Vm::run` removes a thread's id from the list, under this
        // lock, before joining it, so `t` names a thread not yet joined.
        unsafe {
            libc::pthread_kill(t, kick_signal());
        }
    }
}

/// A VM ready to run.
pub struct Vm {
    kvm: kvm_ioctls::Kvm,
    vmfd: Arc<kvm_ioctls::VmFd>,
    /// Whether COM1 transmit writes are coalesced (see [`Bus::coalesced`]).
    serial_coalesced: bool,
    mem: vm_memory::GuestMemoryMmap,
    cfg_vcpus: u8,
    entry: crate::arch::x86_64::regs::EntryMode,
    bus: Arc<Mutex<Bus>>,
    console_in: Option<Box<dyn Read + Send>>,
    handle: VmHandle,
    net_rx: Option<NetRx>,
    /// KVM's CPUID list if the host handed it in.
    host_cpuid: Option<HostCpuid>,
}

/// IOAPIC pins for the virtio-blk devices in slots 1 and 2.
const VIRTIO_IRQS: [u8; 2] = [10, 11];
/// IOAPIC pin of the virtio-net device.
const VIRTIO_NET_IRQ: u8 = 5;

fn read_payload(p: Payload, mem: u64) -> Result<Vec<u8>, VmmError> {
    match p {
        Payload::Bytes(b) => Ok(b),
        Payload::Path(path) => {
            let err = |source| VmmError::ReadFile {
                path: path.clone(),
                source,
            };
            let f = File::open(&path).map_err(err)?;
            let size = f.metadata().map_err(err)?.len();
            if size > mem {
                return Err(VmmError::FileLargerThanMemory {
                    path: path.clone(),
                    size,
                    mem,
                });
            }
            let mut v = Vec::with_capacity(size as usize);
            f.take(mem).read_to_end(&mut v).map_err(err)?;
            Ok(v)
        }
    }
}

fn open_disk(path: &Path, writable: bool) -> Result<FileDisk, VmmError> {
    let err = |source| VmmError::OpenDisk {
        path: path.to_owned(),
        source,
    };
    let f = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(err)?;
    FileDisk::new(f).map_err(err)
}

/// What the host hands a VM ready-made: files already open, for a VMM
/// that cannot open paths (a confined one: its root is empty), and facts
/// read once per host rather than once per VM.
#[derive(Debug, Default)]
pub struct HostHandoff {
    /// An open `/dev/kvm`; `None` opens it.
    pub kvm: Option<File>,
    /// The read-only disk, used in place of [`VmConfig::disk_ro`].
    pub disk_ro: Option<File>,
    /// KVM's supported CPUID list; `None` reads it.
    pub cpuid: Option<HostCpuid>,
}

impl Vm {
    /// Builds the VM: memory, KVM VM and vCPUs, devices, loaded payload.
    pub fn new(
        cfg: VmConfig,
        console_out: Box<dyn Write + Send>,
        console_in: Option<Box<dyn Read + Send>>,
    ) -> Result<Self, VmmError> {
        Self::with_files(cfg, HostHandoff::default(), console_out, console_in)
    }

    /// [`Vm::new`] with what the host hands in ready-made ([`HostHandoff`]).
    pub fn with_files(
        cfg: VmConfig,
        files: HostHandoff,
        console_out: Box<dyn Write + Send>,
        console_in: Option<Box<dyn Read + Send>>,
    ) -> Result<Self, VmmError> {
        if cfg.vcpus == 0 || cfg.vcpus > mptable::MAX_VCPUS {
            return Err(VmmError::BadVcpuCount {
                vcpus: cfg.vcpus,
                max: mptable::MAX_VCPUS,
            });
        }
        let mem = memory::create(cfg.mem_bytes)?;
        // Taken, not copied: a live ISO's initrd may be tens of MiB.
        let kernel = read_payload(cfg.kernel, cfg.mem_bytes)?;
        let initrd = cfg
            .initrd
            .map(|p| read_payload(p, cfg.mem_bytes))
            .transpose()?;
        let loaded = boot::load(
            &mem,
            cfg.mem_bytes,
            &kernel,
            initrd.as_deref(),
            &cfg.cmdline,
        )?;
        drop((kernel, initrd));
        let created = match files.kvm {
            // SAFETY: the caller opened this file on /dev/kvm and gives up
            // its ownership here.
            Some(f) => vm::create_with(
                unsafe { kvm_ioctls::Kvm::from_raw_fd(f.into_raw_fd()) },
                &mem,
            )?,
            None => vm::create(&mem)?,
        };
        let (kvm, vmfd) = (created.kvm, Arc::new(created.vm));
        let mut disk_ro_file = files.disk_ro;

        let irqfd = |irq: u32| -> Result<EventFd, VmmError> {
            let e = |r: String| VmmError::Irq { irq, reason: r };
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|x| e(x.to_string()))?;
            vmfd.register_irqfd(&fd, irq)
                .map_err(|x| e(x.to_string()))?;
            Ok(fd)
        };
        let serial = serial::console(irqfd(serial::COM1_IRQ)?, console_out);
        let mut pci = PciRoot::new();
        let mut pci_irqs = Vec::new();
        let disks = [
            (cfg.disk_ro.as_ref(), false, "cpushare-ro"),
            (cfg.scratch.as_ref(), true, "cpushare-scratch"),
        ];
        let mut bar = layout::PCI_MMIO_START;
        for (i, (path, writable, id)) in disks.iter().enumerate() {
            let disk = match (i, disk_ro_file.take(), path) {
                (0, Some(f), _) => FileDisk::new(f).map_err(|source| VmmError::OpenDisk {
                    path: PathBuf::from("(inherited disk)"),
                    source,
                })?,
                (_, _, Some(path)) => open_disk(path, *writable)?,
                _ => continue,
            };
            let line = VIRTIO_IRQS[i];
            let fd = irqfd(u32::from(line))?;
            let dev = VirtioPciBlock::new(
                Block::new(Box::new(disk), !writable, id),
                mem.clone(),
                bar,
                line,
                Box::new(move || {
                    // A full eventfd counter still means "interrupt pending".
                    let _ = fd.write(1);
                }),
            );
            bar += BAR_SIZE;
            if let Some(slot) = pci.add(Box::new(dev)) {
                pci_irqs.push((slot, line));
            }
        }
        let mut net_rx = None;
        if let Some(n) = cfg.net {
            let net = Net::new(n.mac, n.mtu, Box::new(n.socket.clone()))?;
            let fd = irqfd(u32::from(VIRTIO_NET_IRQ))?;
            let rx = NetRx {
                socket: n.socket,
                slot: 0,
                max_frame: net.max_frame_len(),
                counters: net.counters(),
                stop: EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Irq {
                    irq: u32::from(VIRTIO_NET_IRQ),
                    reason: format!("stop event of the network thread: {e}"),
                })?,
            };
            let dev = VirtioPciNet::new(
                net,
                mem.clone(),
                bar,
                VIRTIO_NET_IRQ,
                Box::new(move || {
                    let _ = fd.write(1);
                }),
            );
            if let Some(slot) = pci.add(Box::new(dev)) {
                pci_irqs.push((slot, VIRTIO_NET_IRQ));
                net_rx = Some(NetRx { slot, ..rx });
            }
        }
        let table = mptable::build(cfg.vcpus, &pci_irqs)?;
        mem.write_slice(&table, GuestAddress(layout::MPTABLE_START))
            .map_err(|_| boot::BootError::GuestWrite { what: "MP table" })?;

        Ok(Self {
            kvm,
            vmfd,
            serial_coalesced: created.serial_coalesced,
            mem,
            cfg_vcpus: cfg.vcpus,
            entry: loaded.entry,
            bus: Arc::new(Mutex::new(Bus {
                serial,
                pci,
                coalesced: None,
            })),
            console_in,
            handle: VmHandle {
                stop: Arc::new(AtomicBool::new(false)),
                threads: Arc::new(Mutex::new(Vec::new())),
                net: net_rx.as_ref().map(|n| n.counters.clone()),
            },
            net_rx,
            host_cpuid: files.cpuid,
        })
    }

    /// A handle to stop the VM from another thread.
    pub fn handle(&self) -> VmHandle {
        self.handle.clone()
    }

    /// Builds and runs a VM to its end.
    pub fn boot(
        cfg: VmConfig,
        console_out: Box<dyn Write + Send>,
        console_in: Option<Box<dyn Read + Send>>,
    ) -> Result<VmExit, VmmError> {
        Self::new(cfg, console_out, console_in)?.run()
    }

    /// Runs the vCPUs (one thread each) until the guest powers off, resets,
    /// faults, or the VM is stopped.
    pub fn run(mut self) -> Result<VmExit, VmmError> {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            // Failure leaves the default action (terminate) for a signal
            // nobody else sends; stop() would then kill the process, so
            // report it loudly instead of ignoring it.
            if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
                eprintln!("cpushare-vmm: cannot install vCPU kick handler: {e}");
            }
        });
        let (tx, rx) = mpsc::channel::<Result<VcpuOutcome, VcpuError>>();
        let mut joins = Vec::new();
        let mut vcpus = Vec::new();
        let supported = match self.host_cpuid.take() {
            Some(c) => c,
            None => HostCpuid::read(&self.kvm)?,
        };
        for id in 0..self.cfg_vcpus {
            vcpus.push(vcpu::create(
                &self.vmfd,
                supported.cpuid(),
                &self.mem,
                id,
                self.cfg_vcpus,
                self.entry,
            )?);
        }
        self.start_coalescing(&vcpus)?;
        for (id, mut fd) in vcpus.into_iter().enumerate() {
            let bus = self.bus.clone();
            let stop = self.handle.stop.clone();
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    crate::confine::enter(VmmThread::Vcpu);
                    let r = vcpu::run(id as u8, &mut fd, &bus, &stop);
                    let _ = tx.send(r);
                });
            let j = match spawned {
                Ok(j) => j,
                Err(e) => {
                    // Do not leave the vCPUs already started running.
                    self.handle.stop.store(true, Ordering::Release);
                    let pending = joins.len();
                    self.stop_and_join(joins, &rx, pending);
                    return Err(VmmError::Spawn(e));
                }
            };
            self.handle
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(j.as_pthread_t());
            joins.push(j);
        }
        drop(tx);
        if let Some(input) = self.console_in.take() {
            spawn_console_input(input, self.bus.clone(), self.handle.stop.clone());
        }
        let net_thread = match self.net_rx.take() {
            Some(n) => match n.spawn(self.bus.clone()) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.handle.stop.store(true, Ordering::Release);
                    let pending = joins.len();
                    self.stop_and_join(joins, &rx, pending);
                    return Err(VmmError::Spawn(e));
                }
            },
            None => None,
        };
        // From here this thread only waits, kicks and joins.
        crate::confine::enter(VmmThread::Control);

        // The first vCPU to finish decides the outcome; the rest are kicked.
        let first = self.wait_first(&rx);
        self.handle.stop.store(true, Ordering::Release);
        let pending = joins.len().saturating_sub(1);
        self.stop_and_join(joins, &rx, pending);
        if let Some((stop, t)) = net_thread {
            // Nothing reaches the guest's memory once run() returns.
            let _ = stop.write(1);
            let _ = t.join();
        }
        match first? {
            VcpuOutcome::PowerOff(status) => Ok(VmExit::PowerOff { status }),
            VcpuOutcome::Reset => Ok(VmExit::Reset),
            VcpuOutcome::TripleFault => Ok(VmExit::TripleFault),
            VcpuOutcome::Stopped => Ok(VmExit::Stopped),
        }
    }
}

/// How long coalesced console output may wait for a vCPU exit before the
/// vCPUs are kicked to replay it (a guest that prints, then computes).
const COALESCED_FLUSH_PERIOD: Duration = Duration::from_millis(10);

impl Vm {
    /// Hands the coalesced ring to the bus, mapped through the first vCPU;
    /// if it cannot be mapped, removes the zone so writes exit again.
    fn start_coalescing(&self, vcpus: &[kvm_ioctls::VcpuFd]) -> Result<(), VmmError> {
        if !self.serial_coalesced {
            return Ok(());
        }
        let ring = match vcpus.first().map(CoalescedRing::map) {
            Some(Ok(ring)) => ring,
            _ => {
                let zone = kvm_ioctls::IoEventAddress::Pio(u64::from(serial::COM1_PORT));
                return self
                    .vmfd
                    .unregister_coalesced_mmio(zone, 1)
                    .map_err(|source| {
                        VmmError::Vm(vm::VmError::Kvm {
                            what: "KVM_UNREGISTER_COALESCED_MMIO",
                            source,
                        })
                    });
            }
        };
        lock_bus(&self.bus).coalesced = Some(SerialCoalescing::new(ring, self.vmfd.clone()));
        Ok(())
    }

    /// Waits for the first vCPU to end. Meanwhile, while console writes
    /// are coalesced, kicks the vCPUs when some wait, so that output a
    /// guest printed before a long computation without exits shows.
    fn wait_first(
        &self,
        done: &mpsc::Receiver<Result<VcpuOutcome, VcpuError>>,
    ) -> Result<VcpuOutcome, VcpuError> {
        loop {
            if !lock_bus(&self.bus).coalescing() {
                return done.recv().unwrap_or(Ok(VcpuOutcome::Stopped));
            }
            match done.recv_timeout(COALESCED_FLUSH_PERIOD) {
                Ok(r) => return r,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(VcpuOutcome::Stopped),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if lock_bus(&self.bus).coalesced_pending() {
                        kick(&self.handle.threads);
                    }
                }
            }
        }
    }

    /// Kicks the vCPU threads until the `pending` ones that have not yet
    /// reported on `done` have left their run loop (the stop flag must
    /// already be set), then joins them all. Each thread reports as its
    /// last act, so the wait ends as soon as the last one leaves, not on
    /// a polling tick.
    fn stop_and_join(
        &self,
        joins: Vec<std::thread::JoinHandle<()>>,
        done: &mpsc::Receiver<Result<VcpuOutcome, VcpuError>>,
        mut pending: usize,
    ) {
        // A thread that panicked never reports: finished threads count too.
        while pending > 0 && joins.iter().any(|j| !j.is_finished()) {
            kick(&self.handle.threads);
            match done.recv_timeout(Duration::from_millis(1)) {
                Ok(_) => pending -= 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.handle
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        for j in joins {
            let _ = j.join();
        }
    }
}

/// Locks the bus; see [`vcpu::run`] on why a poisoned lock is still used.
fn lock_bus(bus: &Mutex<Bus>) -> std::sync::MutexGuard<'_, Bus> {
    bus.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The network device's receive side: frames from the socket into the
/// device in `slot`, on a thread of its own.
struct NetRx {
    socket: FrameSocket,
    slot: u8,
    max_frame: usize,
    counters: Arc<NetCounters>,
    stop: EventFd,
}

impl NetRx {
    /// Starts the thread; returns its stop event and handle.
    fn spawn(
        self,
        bus: Arc<Mutex<Bus>>,
    ) -> std::io::Result<(EventFd, std::thread::JoinHandle<()>)> {
        let stop = self.stop.try_clone()?;
        let t = std::thread::Builder::new()
            .name("net-rx".into())
            .spawn(move || {
                crate::confine::enter(VmmThread::Device);
                let deliver = |frame: &[u8]| {
                    let mut b = bus
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let dev = b
                        .pci
                        .device_mut(self.slot)
                        .and_then(|d| d.as_any_mut())
                        .and_then(|d| d.downcast_mut::<VirtioPciNet>());
                    if let Some(dev) = dev {
                        // Drops are counted by the device.
                        let _ = dev.receive_frame(frame);
                    }
                };
                // An error here (poll or recv failing) ends the receive
                // side only; the guest sees a silent link.
                let _ = frame_socket::pump_rx(
                    &self.socket,
                    &self.stop,
                    self.max_frame,
                    &self.counters,
                    deliver,
                );
            })?;
        Ok((stop, t))
    }
}

/// Feeds console input into COM1 as its FIFO drains. The thread ends at
/// EOF, on a read error, or after the VM stopped (at its next read).
fn spawn_console_input(
    mut input: Box<dyn Read + Send>,
    bus: Arc<Mutex<Bus>>,
    stop: Arc<AtomicBool>,
) {
    let _ = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            crate::confine::enter(VmmThread::Device);
            let mut buf = [0u8; 64];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let done = {
                        let mut b = bus
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let room = b.serial.fifo_capacity().min(rest.len());
                        b.serial.enqueue_raw_bytes(&rest[..room]).unwrap_or(0)
                    };
                    rest = &rest[done..];
                    if done == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        });
}

/// Boot inputs extracted from an ISO.
#[derive(Clone, Debug)]
pub struct IsoBoot {
    /// The plan found in the ISO.
    pub plan: iso::BootPlan,
    /// A config that boots it: kernel and initrd bytes (several initrds
    /// concatenated, as a boot loader hands them over), the config's command
    /// line framed by [`iso::guest_cmdline`], and the ISO as the read-only
    /// disk.
    pub config: VmConfig,
}

/// Reads an ISO's boot config and extracts its kernel and initrds, refusing
/// a kernel, or initrds together, larger than `mem_bytes`.
pub fn from_iso(iso_path: &Path, vcpus: u8, mem_bytes: u64) -> Result<IsoBoot, VmmError> {
    let err = |source| VmmError::Iso {
        path: iso_path.to_owned(),
        source,
    };
    let f = File::open(iso_path).map_err(|e| err(IsoError::Io(e)))?;
    let mut boot = boot_from_iso_reader(&f, vcpus, mem_bytes).map_err(err)?;
    boot.config.disk_ro = Some(iso_path.to_owned());
    Ok(boot)
}

/// [`from_iso`] on an ISO already open (a confined VMM has no paths); the
/// config has no `disk_ro`: hand the file to [`Vm::with_files`] for it.
pub fn from_iso_file(iso: &File, vcpus: u8, mem_bytes: u64) -> Result<IsoBoot, VmmError> {
    boot_from_iso_reader(iso, vcpus, mem_bytes).map_err(|source| VmmError::Iso {
        path: PathBuf::from("(inherited ISO)"),
        source,
    })
}

fn boot_from_iso_reader(f: &File, vcpus: u8, mem_bytes: u64) -> Result<IsoBoot, IsoError> {
    let mut r = IsoReader::new(std::io::BufReader::new(f))?;
    let plan = iso::inspect(&mut r)?;
    let kernel = r.read_path(&plan.kernel.path, mem_bytes)?;
    let initrd = iso::read_initrds(&mut r, &plan.initrds, mem_bytes)?.map(Payload::Bytes);
    let cmdline = iso::guest_cmdline(&plan.cmdline);
    Ok(IsoBoot {
        config: VmConfig {
            vcpus,
            mem_bytes,
            kernel: Payload::Bytes(kernel),
            initrd,
            cmdline,
            disk_ro: None,
            scratch: None,
            net: None,
        },
        plan,
    })
}
