//! The seller's microVMM: boots buyers' live ISOs as KVM guests built from
//! rust-vmm crates, with a 16550 console and virtio-pci block devices that a
//! stock distribution kernel finds on its own.
//!
//! Flow: [`iso`] finds the kernel in the buyer's ISO, [`builder`] makes the
//! VM ([`vstate`] memory/VM/vCPUs, [`arch`] boot protocol, [`devices`]) and
//! runs it until the guest powers off or the lease is stopped.

#![warn(missing_docs)]

pub mod arch;
pub mod builder;
pub mod confine;
pub mod devices;
pub mod iso;
pub mod kvm_kind;
pub mod vstate;

pub use builder::{
    from_iso, from_iso_file, HostHandoff, IsoBoot, NetConfig, Payload, Vm, VmConfig, VmExit,
    VmHandle, VmmError,
};
pub use kvm_kind::{kvm_kind, KvmKind};
pub use vstate::vm::{CpuidWords, HostCpuid};
