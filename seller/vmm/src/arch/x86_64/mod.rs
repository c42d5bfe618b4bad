//! x86_64: memory layout, vCPU registers, CPUID, MSRs, boot protocols and
//! the MP table.

pub mod boot;
pub mod cpuid;
pub mod kernel_image;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
