//! KVM state: guest memory, the VM (irqchip, PIT) and vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;
