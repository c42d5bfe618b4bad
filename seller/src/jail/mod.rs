//! Confinement of lease sandboxes. The network-facing daemon never runs
//! guest code: each lease runs in a child process (`cpushare-seller
//! sandbox`) that the daemon starts in the lease's [`cgroup`] and drives
//! through its [`supervisor`]; the child ([`child`]) builds its own jail
//! (namespaces, an empty root, an unprivileged uid, no capabilities,
//! rlimits, SCHED_IDLE) and puts every thread under the [`seccomp`]
//! filter of its role before it reads the job. [`verdict`] names how a
//! lease ended; [`doctor`] tells a seller what the host lacks. Wasm
//! sandboxes are forked by a [`zygote`] the daemon starts once.

#[cfg(debug_assertions)]
pub mod attack;
pub mod cgroup;
pub mod child;
pub mod doctor;
mod error;
pub mod fd_passing;
pub mod frame_link;
mod namespaces;
pub mod pidfd_child;
mod privileges;
pub mod rootfs;
pub mod seccomp;
pub mod supervisor;
pub mod verdict;
pub mod vm_child;
pub mod vm_supervisor;
pub mod zygote;

pub use error::JailError;
