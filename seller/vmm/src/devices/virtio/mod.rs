//! Virtio 1.x devices over the modern PCI transport.

pub mod block;
pub mod net;
pub mod pci;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// `VIRTIO_F_VERSION_1`: the device speaks virtio 1.x (modern only).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The guest gave up on the device.
    pub const FAILED: u8 = 128;
}

/// A virtio device model as the PCI transport drives it: identity, features,
/// configuration bytes, and what to do when the driver notifies a queue.
pub trait VirtioDevice: Send {
    /// Virtio device type (1 network, 2 block).
    fn device_type(&self) -> u16;
    /// PCI class code (class, subclass, prog-if) in the low 24 bits.
    fn pci_class(&self) -> u32;
    /// Feature bits offered.
    fn features(&self) -> u64;
    /// Largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration at `offset`; bytes past its
    /// end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Serves what the driver made available on queue `index`; returns
    /// whether the driver should be interrupted.
    fn queue_notify(&mut self, index: u16, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
}

/// Copies `config[offset..]` into `data`, zero past the end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o.checked_add(i)?))
            .copied()
            .unwrap_or(0);
    }
}
