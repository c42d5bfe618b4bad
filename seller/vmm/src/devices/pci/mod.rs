//! PCI: type-0 configuration space and the host bridge reached through
//! configuration mechanism #1 (ports 0xcf8/0xcfc).

pub mod config_space;
pub mod root;

pub use config_space::{Bar, ConfigSpace};
pub use root::{PciDevice, PciRoot};
