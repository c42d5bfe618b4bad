//! The PCI host bridge: configuration mechanism #1 (an address register at
//! 0xcf8, a data window at 0xcfc..0xcff) on bus 0, and MMIO routing to the
//! devices' BARs.

use super::config_space::{ConfigSpace, PciId};

/// Address register port.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Data window port.
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// Devices per bus.
const SLOTS: usize = 32;

/// A PCI function on bus 0.
pub trait PciDevice: Send {
    /// Its configuration space.
    fn config(&self) -> &ConfigSpace;
    /// Its configuration space, for writes.
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// Configuration read; devices with windows in config space override it.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// Configuration write through the write masks.
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }
    /// Reads within BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes within BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The concrete device, for the shell to hand it device-side events
    /// (e.g. a received frame); `None` for devices that take none.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// The host bridge itself, device 0 (a Red Hat "QEMU PCIe host bridge" id
/// that Linux knows needs no quirks).
struct HostBridge(ConfigSpace);

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

/// Bus 0 with its devices.
pub struct PciRoot {
    address: u32,
    slots: Vec<Option<Box<dyn PciDevice>>>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A bus with only the host bridge at device 0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<Box<dyn PciDevice>>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Box::new(HostBridge(ConfigSpace::new(
            PciId {
                vendor: 0x1b36,
                device: 0x0008,
                revision: 0,
                class: 0x06_00_00,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
            },
            None,
        ))));
        Self { address: 0, slots }
    }

    /// Plugs a device into the first free slot; returns the device number.
    pub fn add(&mut self, dev: Box<dyn PciDevice>) -> Option<u8> {
        let slot = self.slots.iter().position(Option::is_none)?;
        self.slots[slot] = Some(dev);
        Some(slot as u8)
    }

    /// Port read at 0xcf8..0xcff.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        if port == CONFIG_ADDRESS_PORT && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        data.fill(0xff);
        if !(CONFIG_DATA_PORT..CONFIG_DATA_PORT + 4).contains(&port) {
            return;
        }
        if let Some((dev, off)) = self.target(port) {
            if let Some(d) = self.slots[dev].as_mut() {
                d.config_read(off, data);
            }
        }
    }

    /// Port write at 0xcf8..0xcff.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) {
        if port == CONFIG_ADDRESS_PORT && data.len() == 4 {
            self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return;
        }
        if !(CONFIG_DATA_PORT..CONFIG_DATA_PORT + 4).contains(&port) {
            return;
        }
        if let Some((dev, off)) = self.target(port) {
            if let Some(d) = self.slots[dev].as_mut() {
                d.config_write(off, data);
            }
        }
    }

    /// Decodes the address register: enabled, bus 0, function 0 only.
    fn target(&self, port: u16) -> Option<(usize, usize)> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        let bus = (a >> 16) & 0xff;
        let dev = ((a >> 11) & 0x1f) as usize;
        let func = (a >> 8) & 0x7;
        if !enabled || bus != 0 || func != 0 {
            return None;
        }
        let off = (a & 0xfc) as usize + usize::from(port - CONFIG_DATA_PORT);
        Some((dev, off))
    }

    /// Routes an MMIO access to the BAR containing `addr`, if any.
    fn find_bar(&self, addr: u64, len: usize) -> Option<(usize, usize, u64)> {
        for (slot, d) in self.slots.iter().enumerate() {
            let Some(d) = d else { continue };
            let cfg = d.config();
            if !cfg.memory_enabled() {
                continue;
            }
            for bar in cfg.bars() {
                let base = cfg.bar_addr(bar);
                if addr >= base && addr + len as u64 <= base + bar.size {
                    return Some((slot, bar.index, addr - base));
                }
            }
        }
        None
    }

    /// MMIO read; returns false when no BAR claims the address.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find_bar(addr, data.len()) {
            Some((slot, bar, off)) => {
                if let Some(d) = self.slots[slot].as_mut() {
                    d.bar_read(bar, off, data);
                }
                true
            }
            None => false,
        }
    }

    /// MMIO write; returns false when no BAR claims the address.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.find_bar(addr, data.len()) {
            Some((slot, bar, off)) => {
                if let Some(d) = self.slots[slot].as_mut() {
                    d.bar_write(bar, off, data);
                }
                true
            }
            None => false,
        }
    }

    /// The device in a slot, for the shell to reach its model.
    pub fn device_mut(&mut self, slot: u8) -> Option<&mut (dyn PciDevice + 'static)> {
        self.slots.get_mut(usize::from(slot))?.as_deref_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_read(r: &mut PciRoot, dev: u32, off: u32) -> u32 {
        r.pio_write(
            CONFIG_ADDRESS_PORT,
            &(0x8000_0000 | dev << 11 | off).to_le_bytes(),
        );
        let mut b = [0u8; 4];
        r.pio_read(CONFIG_DATA_PORT, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn host_bridge_answers_and_empty_slots_read_all_ones() {
        let mut r = PciRoot::new();
        assert_eq!(cfg_read(&mut r, 0, 0), 0x0008_1b36);
        assert_eq!(cfg_read(&mut r, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(cfg_read(&mut r, 5, 0), 0xffff_ffff);
        // Disabled address register: all ones.
        r.pio_write(CONFIG_ADDRESS_PORT, &0u32.to_le_bytes());
        let mut b = [0u8; 4];
        r.pio_read(CONFIG_DATA_PORT, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn byte_reads_through_the_data_window_pick_the_right_lane() {
        let mut r = PciRoot::new();
        r.pio_write(CONFIG_ADDRESS_PORT, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 1];
        r.pio_read(CONFIG_DATA_PORT + 2, &mut b);
        assert_eq!(b[0], 0x08);
    }
}
