//! COM1: a 16550A UART from `vm-superio`, its interrupt raised through an
//! eventfd registered as KVM irqfd for IRQ 4.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Ports used by a 16550.
pub const COM1_LEN: u16 = 8;
/// ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// An eventfd that raises an interrupt when written.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// The guest console.
pub type Console = Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>;

/// Creates COM1 writing guest output to `out`.
pub fn console(irq: EventFd, out: Box<dyn Write + Send>) -> Console {
    Serial::new(IrqTrigger(irq), ConsoleSink::new(out))
}

/// Most bytes held between drains: a full coalesced ring is about 170.
const SINK_HOLD_MAX: usize = 4096;

/// The UART's output side. The UART flushes after every byte; the sink
/// holds the bytes instead until the bus [drains](ConsoleSink::drain) it
/// at the end of the exit that produced them, so a burst replayed from
/// the coalesced ring leaves in one write (one message to the buyer)
/// rather than one per byte, and no byte waits past its exit.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    held: Vec<u8>,
}

impl ConsoleSink {
    /// A sink in front of `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            held: Vec::new(),
        }
    }

    /// Writes what is held to `out` and flushes it. A failing sink must
    /// not stop the guest: its bytes are dropped.
    pub fn drain(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let _ = self.out.write_all(&self.held);
        let _ = self.out.flush();
        self.held.clear();
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.held.extend_from_slice(buf);
        if self.held.len() >= SINK_HOLD_MAX {
            self.drain();
        }
        Ok(buf.len())
    }

    /// Keeps holding: bytes leave at the next [`ConsoleSink::drain`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_sink_and_input_is_readable() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = console(irq.try_clone().unwrap(), Box::new(Shared(buf.clone())));
        for b in b"hi" {
            s.write(0, *b).unwrap();
        }
        assert!(buf.lock().unwrap().is_empty(), "held until drained");
        s.writer_mut().drain();
        assert_eq!(&*buf.lock().unwrap(), b"hi");
        // LSR: transmitter empty.
        assert_ne!(s.read(5) & 0x20, 0);
        s.write(1, 1).unwrap(); // IER: received-data interrupt
        s.enqueue_raw_bytes(b"x").unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert_ne!(s.read(5) & 1, 0, "data ready");
        assert_eq!(s.read(0), b'x');
    }

    #[test]
    fn a_long_burst_is_drained_before_it_grows_past_the_bound() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = console(irq, Box::new(Shared(buf.clone())));
        for _ in 0..SINK_HOLD_MAX + 10 {
            s.write(0, b'.').unwrap();
        }
        assert_eq!(buf.lock().unwrap().len(), SINK_HOLD_MAX);
        s.writer_mut().drain();
        assert_eq!(buf.lock().unwrap().len(), SINK_HOLD_MAX + 10);
    }
}
