//! Device models (sans-IO where they can be) and the bus that routes port
//! and MMIO exits of the vCPUs to them.

pub mod bus;
pub mod debug_exit;
pub mod frame_socket;
pub mod i8042;
pub mod pci;
pub mod serial;
pub mod virtio;
