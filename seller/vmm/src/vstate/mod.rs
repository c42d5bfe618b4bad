//! KVM state: guest memory, the VM (irqchip, PIT), vCPUs, and the
//! coalesced write ring.

pub mod coalesced;
pub mod memory;
pub mod vcpu;
pub mod vm;
