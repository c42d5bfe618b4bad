//! Routes vCPU port and MMIO exits to the device models, and turns what
//! the guest asks for (power off, reset) into [`BusEvent`]s.

use super::pci::root::{CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};
use super::pci::PciRoot;
use super::serial::{Console, COM1_LEN, COM1_PORT};
use super::{debug_exit, i8042};

/// What the guest asked of the machine through a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// Power off with a status (debug-exit port).
    PowerOff(u32),
    /// Reset (i8042 command 0xfe).
    Reset,
}

/// All devices on the guest's buses.
pub struct Bus {
    /// COM1.
    pub serial: Console,
    /// PCI bus 0.
    pub pci: PciRoot,
}

impl Bus {
    /// Port read. Unclaimed ports read as all ones, like an empty ISA bus.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1_PORT..COM1_PORT + COM1_LEN).contains(&p) && data.len() == 1 => {
                data[0] = self.serial.read((p - COM1_PORT) as u8);
            }
            i8042::DATA_PORT | i8042::COMMAND_PORT => data.fill(i8042::read(port)),
            CONFIG_ADDRESS_PORT | CONFIG_DATA_PORT..=0xcff => self.pci.pio_read(port, data),
            _ => data.fill(0xff),
        }
    }

    /// Port write.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<BusEvent> {
        match port {
            p if (COM1_PORT..COM1_PORT + COM1_LEN).contains(&p) && data.len() == 1 => {
                // A failing console sink must not stop the guest.
                let _ = self.serial.write((p - COM1_PORT) as u8, data[0]);
            }
            i8042::DATA_PORT | i8042::COMMAND_PORT
                if data.len() == 1 && i8042::write(port, data[0]) == i8042::I8042Action::Reset =>
            {
                return Some(BusEvent::Reset);
            }
            p if (debug_exit::PORT..debug_exit::PORT + debug_exit::LEN).contains(&p) => {
                return debug_exit::status(p - debug_exit::PORT, data).map(BusEvent::PowerOff);
            }
            CONFIG_ADDRESS_PORT | CONFIG_DATA_PORT..=0xcff => self.pci.pio_write(port, data),
            _ => {}
        }
        None
    }

    /// MMIO read; unclaimed addresses read as all ones.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        if !self.pci.mmio_read(addr, data) {
            data.fill(0xff);
        }
    }

    /// MMIO write; unclaimed writes are dropped.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        let _ = self.pci.mmio_write(addr, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn bus() -> Bus {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Bus {
            serial: super::super::serial::console(irq, Box::new(std::io::sink())),
            pci: PciRoot::new(),
        }
    }

    #[test]
    fn exit_ports_become_events() {
        let mut b = bus();
        assert_eq!(
            b.pio_write(0xf4, &9u32.to_le_bytes()),
            Some(BusEvent::PowerOff(9))
        );
        assert_eq!(b.pio_write(0x64, &[0xfe]), Some(BusEvent::Reset));
        assert_eq!(b.pio_write(0x64, &[0x20]), None);
        assert_eq!(b.pio_write(0x80, &[1]), None);
    }

    #[test]
    fn unclaimed_ports_and_mmio_read_all_ones() {
        let mut b = bus();
        let mut d = [0u8; 2];
        b.pio_read(0x1234, &mut d);
        assert_eq!(d, [0xff; 2]);
        let mut m = [0u8; 4];
        b.mmio_read(0xc000_0000, &mut m);
        assert_eq!(m, [0xff; 4]);
    }

    #[test]
    fn pci_type1_probe_sees_the_address_register() {
        // Linux's pci_check_type1(): write 0x80000000 to 0xcf8, read it back.
        let mut b = bus();
        b.pio_write(0xcfb, &[1]);
        b.pio_write(0xcf8, &0x8000_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        b.pio_read(0xcf8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        b.pio_read(0xcfc, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
    }

    #[test]
    fn serial_registers_are_routed() {
        let mut b = bus();
        let mut d = [0u8; 1];
        b.pio_read(0x3fd, &mut d);
        assert_ne!(d[0] & 0x20, 0, "THR empty");
    }
}
