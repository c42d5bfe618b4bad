//! vCPUs: initial state (CPUID, MSRs, LAPIC, registers) and the run loop
//! that hands port and MMIO exits to the [`Bus`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::regs::{self, EntryMode};
use crate::arch::x86_64::{cpuid, msr};
use crate::devices::bus::{Bus, BusEvent};

/// `KVM_SYSTEM_EVENT_SHUTDOWN`.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// `KVM_SYSTEM_EVENT_RESET`.
const SYSTEM_EVENT_RESET: u32 = 2;
/// LAPIC register offsets of LVT LINT0 and LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// LVT delivery modes.
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// Errors configuring or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {id}: KVM {what} failed: {source}")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// Which ioctl.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("vCPU {id}: KVM set {set} of {wanted} boot MSRs")]
    MsrsRejected {
        /// vCPU index.
        id: u8,
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// Writing boot structures failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// KVM could not enter the guest.
    #[error(
        "vCPU {id}: KVM could not enter the guest (hardware entry failure reason {reason:#x})"
    )]
    FailEntry {
        /// vCPU index.
        id: u8,
        /// `hardware_entry_failure_reason`.
        reason: u64,
    },
    /// KVM hit an internal error emulating the guest.
    #[error("vCPU {id}: KVM internal error (instruction it could not emulate?)")]
    InternalError {
        /// vCPU index.
        id: u8,
    },
    /// An exit we do not handle.
    #[error("vCPU {id}: unexpected exit {exit}")]
    UnexpectedExit {
        /// vCPU index.
        id: u8,
        /// Debug form of the exit.
        exit: String,
    },
}

/// How a vCPU's run loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuOutcome {
    /// The guest asked for power off with a status.
    PowerOff(u32),
    /// The guest asked for a reset.
    Reset,
    /// The vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// Stopped from outside.
    Stopped,
}

/// Creates vCPU `id` of `count` and gives it its boot state: `supported`
/// (what KVM offers, a [`HostCpuid`](crate::vstate::vm::HostCpuid)) filtered for
/// this vCPU, MSRs, LAPIC; only the boot vCPU (0) gets `entry`, the others
/// wait for INIT/SIPI in the LAPIC.
pub fn create(
    vm: &VmFd,
    supported: &CpuId,
    mem: &GuestMemoryMmap,
    id: u8,
    count: u8,
    entry: EntryMode,
) -> Result<VcpuFd, VcpuError> {
    let e = |what| move |source| VcpuError::Kvm { id, what, source };
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(e("KVM_CREATE_VCPU"))?;
    let mut cpuid = supported.clone();
    cpuid::filter_entries(cpuid.as_mut_slice(), id, count);
    vcpu.set_cpuid2(&cpuid).map_err(e("KVM_SET_CPUID2"))?;

    let entries = msr::boot_msrs();
    let msrs = Msrs::from_entries(&entries).expect("fewer boot MSRs than the FAM limit");
    let set = vcpu.set_msrs(&msrs).map_err(e("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(VcpuError::MsrsRejected {
            id,
            set,
            wanted: entries.len(),
        });
    }

    let mut lapic = vcpu.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(e("KVM_SET_LAPIC"))?;

    if id == 0 {
        let mut sregs = vcpu.get_sregs().map_err(e("KVM_GET_SREGS"))?;
        regs::setup_sregs(mem, entry, &mut sregs)?;
        vcpu.set_sregs(&sregs).map_err(e("KVM_SET_SREGS"))?;
        vcpu.set_regs(&regs::regs(entry))
            .map_err(e("KVM_SET_REGS"))?;
        vcpu.set_fpu(&regs::fpu()).map_err(e("KVM_SET_FPU"))?;
    }
    Ok(vcpu)
}

/// Sets the delivery mode (bits 8..11) of an LVT register.
fn set_lvt_mode(regs: &mut [std::os::raw::c_char], off: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[off + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *x as std::os::raw::c_char;
    }
}

/// Runs a vCPU until the guest powers off, resets, faults, or `stop` is set.
/// Console writes KVM queued are replayed at each exit (by the bus), when
/// the thread is kicked, and once more when it ends.
pub fn run(
    id: u8,
    vcpu: &mut VcpuFd,
    bus: &Mutex<Bus>,
    stop: &AtomicBool,
) -> Result<VcpuOutcome, VcpuError> {
    let r = run_loop(id, vcpu, bus, stop);
    lock(bus).flush_coalesced();
    r
}

fn run_loop(
    id: u8,
    vcpu: &mut VcpuFd,
    bus: &Mutex<Bus>,
    stop: &AtomicBool,
) -> Result<VcpuOutcome, VcpuError> {
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(VcpuOutcome::Stopped);
        }
        match vcpu.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => lock(bus).pio_read(port, data),
                VcpuExit::IoOut(port, data) => match lock(bus).pio_write(port, data) {
                    Some(BusEvent::PowerOff(s)) => return Ok(VcpuOutcome::PowerOff(s)),
                    Some(BusEvent::Reset) => return Ok(VcpuOutcome::Reset),
                    None => {}
                },
                VcpuExit::MmioRead(addr, data) => lock(bus).mmio_read(addr, data),
                VcpuExit::MmioWrite(addr, data) => lock(bus).mmio_write(addr, data),
                VcpuExit::Hlt => {}
                VcpuExit::Shutdown => {
                    if std::env::var_os("CPUSHARE_VMM_DEBUG").is_some() {
                        eprintln!(
                            "vcpu{id} shutdown: {:x?}\n{:x?}",
                            vcpu.get_regs(),
                            vcpu.get_sregs()
                        );
                    }
                    return Ok(VcpuOutcome::TripleFault);
                }
                VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _) => {
                    return Ok(VcpuOutcome::PowerOff(0))
                }
                VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _) => return Ok(VcpuOutcome::Reset),
                VcpuExit::FailEntry(reason, _) => return Err(VcpuError::FailEntry { id, reason }),
                VcpuExit::InternalError => return Err(VcpuError::InternalError { id }),
                other => {
                    return Err(VcpuError::UnexpectedExit {
                        id,
                        exit: format!("{other:?}"),
                    })
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                lock(bus).flush_coalesced();
            }
            Err(source) => {
                return Err(VcpuError::Kvm {
                    id,
                    what: "KVM_RUN",
                    source,
                })
            }
        }
    }
}

/// Locks the bus; a device model that panicked leaves it usable, since
/// every device keeps its state consistent between register accesses.
fn lock(bus: &Mutex<Bus>) -> std::sync::MutexGuard<'_, Bus> {
    bus.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Shared by vCPU threads.
pub type SharedBus = Arc<Mutex<Bus>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_changes_only_delivery_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x20;
        regs[APIC_LVT0 + 2] = 1; // masked bit 16
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x20);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 1);
    }
}
