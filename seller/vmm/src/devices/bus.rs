//! Routes vCPU port and MMIO exits to the device models, and turns what
//! the guest asks for (power off, reset) into [`BusEvent`]s.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, VmFd};

use super::pci::root::{CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};
use super::pci::PciRoot;
use super::serial::{Console, COM1_LEN, COM1_PORT};
use super::{debug_exit, i8042};
use crate::vstate::coalesced::CoalescedRing;

/// UART register offsets and bits that decide whether COM1's transmit
/// writes may be coalesced.
const UART_IER: u16 = 1;
const UART_LCR: u8 = 3;
const UART_MCR: u16 = 4;
const LCR_DLAB: u8 = 0x80;
const IER_ANY: u8 = 0x0f;
const MCR_LOOP: u8 = 0x10;

/// What the guest asked of the machine through a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// Power off with a status (debug-exit port).
    PowerOff(u32),
    /// Reset (i8042 command 0xfe).
    Reset,
}

/// COM1's transmit register taken without exits: KVM queues the guest's
/// writes to it in the coalesced ring (see [`crate::vstate::coalesced`])
/// and the bus replays them on the UART before each exit it handles.
///
/// Only while the guest polls the UART: a transmit write then raises no
/// interrupt and the guest reads the line status (an exit, so a replay)
/// before its next byte. The first time it enables a UART interrupt or
/// loopback, the bus replays what is queued and removes the zone, so an
/// interrupt-driven driver sees every write at once, as before.
pub struct SerialCoalescing {
    ring: CoalescedRing,
    vm: Arc<VmFd>,
}

impl SerialCoalescing {
    /// Coalescing over `ring`, for the zone registered on `vm` by
    /// [`crate::vstate::vm::coalesce_serial_output`].
    pub fn new(ring: CoalescedRing, vm: Arc<VmFd>) -> Self {
        Self { ring, vm }
    }
}

/// All devices on the guest's buses.
pub struct Bus {
    /// COM1.
    pub serial: Console,
    /// PCI bus 0.
    pub pci: PciRoot,
    /// COM1 transmit writes queued by KVM, while the guest polls the UART.
    pub coalesced: Option<SerialCoalescing>,
}

impl Bus {
    /// Replays on COM1 the transmit writes KVM queued since the last call.
    /// Every bus access starts with it, so the devices see the guest's
    /// writes in order.
    pub fn flush_coalesced(&mut self) {
        if let Some(c) = self.coalesced.as_mut() {
            replay(&mut c.ring, &mut self.serial);
        }
        self.serial.writer_mut().drain();
    }

    /// Whether COM1 writes are being coalesced.
    pub fn coalescing(&self) -> bool {
        self.coalesced.is_some()
    }

    /// Whether queued writes wait for [`Bus::flush_coalesced`].
    pub fn coalesced_pending(&self) -> bool {
        self.coalesced.as_ref().is_some_and(|c| c.ring.pending())
    }

    /// Ends coalescing for good: replays the queue, removes the zone, and
    /// replays what other vCPUs queued meanwhile. If KVM refuses, writes
    /// keep being queued and replayed (late, but none lost).
    fn stop_coalescing(&mut self) {
        let Some(mut c) = self.coalesced.take() else {
            return;
        };
        replay(&mut c.ring, &mut self.serial);
        let zone = IoEventAddress::Pio(u64::from(COM1_PORT));
        if c.vm.unregister_coalesced_mmio(zone, 1).is_err() {
            self.coalesced = Some(c);
            return;
        }
        replay(&mut c.ring, &mut self.serial);
    }

    /// Port read. Unclaimed ports read as all ones, like an empty ISA bus.
    ///
    /// A COM1 read leaves queued transmit writes queued: while they are
    /// coalesced the UART has no interrupt enabled and no loopback, so a
    /// transmitted byte changes no register a read returns. A guest that
    /// polls the line status before each byte then has its whole line
    /// replayed at once, at its next other exit or kick.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        let com1 = (COM1_PORT..COM1_PORT + COM1_LEN).contains(&port) && data.len() == 1;
        if !com1 {
            self.flush_coalesced();
        }
        match port {
            p if com1 => {
                data[0] = self.serial.read((p - COM1_PORT) as u8);
            }
            i8042::DATA_PORT | i8042::COMMAND_PORT => data.fill(i8042::read(port)),
            CONFIG_ADDRESS_PORT | CONFIG_DATA_PORT..=0xcff => self.pci.pio_read(port, data),
            _ => data.fill(0xff),
        }
    }

    /// Port write.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<BusEvent> {
        self.flush_coalesced();
        match port {
            p if (COM1_PORT..COM1_PORT + COM1_LEN).contains(&p) && data.len() == 1 => {
                let off = p - COM1_PORT;
                let dlab = self.serial.read(UART_LCR) & LCR_DLAB != 0;
                // A failing console sink must not stop the guest.
                let _ = self.serial.write(off as u8, data[0]);
                let interrupts = off == UART_IER && !dlab && data[0] & IER_ANY != 0;
                let loopback = off == UART_MCR && data[0] & MCR_LOOP != 0;
                if (interrupts || loopback) && self.coalesced.is_some() {
                    self.stop_coalescing();
                }
                self.serial.writer_mut().drain();
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
        self.flush_coalesced();
        if !self.pci.mmio_read(addr, data) {
            data.fill(0xff);
        }
    }

    /// MMIO write; unclaimed writes are dropped.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.flush_coalesced();
        let _ = self.pci.mmio_write(addr, data);
    }
}

/// Writes the queued COM1 transmit bytes to the UART.
fn replay(ring: &mut CoalescedRing, serial: &mut Console) {
    ring.drain(|w| {
        if w.pio && w.addr == u64::from(COM1_PORT) && w.len == 1 {
            let _ = serial.write(0, w.data[0]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vmm_sys_util::eventfd::EventFd;

    fn bus() -> Bus {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Bus {
            serial: super::super::serial::console(irq, Box::new(std::io::sink())),
            pci: PciRoot::new(),
            coalesced: None,
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

    /// A bus whose COM1 transmit writes are coalesced on a real KVM VM;
    /// `None` without `/dev/kvm`.
    fn coalescing_bus() -> Option<Bus> {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no /dev/kvm");
            return None;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        assert!(crate::vstate::vm::coalesce_serial_output(&vm));
        let vcpu = vm.create_vcpu(0).unwrap();
        let ring = CoalescedRing::map(&vcpu).unwrap();
        let mut b = bus();
        b.coalesced = Some(SerialCoalescing::new(ring, vm));
        Some(b)
    }

    /// Records each write the console makes to its sink.
    struct Writes(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);
    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_polled_line_stays_queued_across_status_reads_and_leaves_in_one_write() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let mut page = [0u64; 512];
        for &c in b"hello\r\n" {
            crate::vstate::coalesced::produce(&mut page, 0x3f8, c);
        }
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut b = Bus {
            serial: super::super::serial::console(irq, Box::new(Writes(writes.clone()))),
            pci: PciRoot::new(),
            coalesced: Some(SerialCoalescing::new(CoalescedRing::over(&mut page), vm)),
        };
        for _ in 0..8 {
            let mut lsr = [0u8];
            b.pio_read(0x3fd, &mut lsr);
            assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        }
        assert!(
            writes.lock().unwrap().is_empty(),
            "status reads replay nothing"
        );
        assert!(b.coalesced_pending());
        // Any other exit replays the line, in one write.
        b.pio_write(0x80, &[0]);
        assert_eq!(*writes.lock().unwrap(), vec![b"hello\r\n".to_vec()]);
        // A byte written with an exit leaves at the end of that exit.
        b.coalesced = None;
        b.pio_write(0x3f8, b"!");
        assert_eq!(writes.lock().unwrap().last().unwrap(), b"!");
    }

    #[test]
    fn enabling_a_uart_interrupt_ends_coalescing() {
        let Some(mut b) = coalescing_bus() else {
            return;
        };
        assert!(!b.coalesced_pending());
        b.pio_write(0x3fb, &[0x80]); // DLAB on: offset 1 is the divisor
        b.pio_write(0x3f9, &[0x01]);
        b.pio_write(0x3fb, &[0x03]); // DLAB off
        b.pio_write(0x3f9, &[0x00]);
        assert!(b.coalescing(), "no interrupt enabled yet");
        b.pio_write(0x3f9, &[0x02]); // THR-empty interrupt
        assert!(!b.coalescing());
    }

    #[test]
    fn uart_loopback_ends_coalescing() {
        let Some(mut b) = coalescing_bus() else {
            return;
        };
        b.pio_write(0x3fc, &[0x0b]);
        assert!(b.coalescing());
        b.pio_write(0x3fc, &[0x1b]);
        assert!(!b.coalescing());
    }

    #[test]
    fn serial_registers_are_routed() {
        let mut b = bus();
        let mut d = [0u8; 1];
        b.pio_read(0x3fd, &mut d);
        assert_ne!(d[0] & 0x20, 0, "THR empty");
    }
}
