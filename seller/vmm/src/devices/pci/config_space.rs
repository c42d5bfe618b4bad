//! A type-0 PCI configuration header (PCI Local Bus 3.0, 6.1) with
//! write masks, BAR sizing, and a capability list.

/// Size of conventional configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Offset of the first BAR.
const BAR0: usize = 0x10;
/// Offset of the capabilities pointer.
const CAP_PTR: usize = 0x34;
/// Status register bit: a capability list is present.
const STATUS_CAP_LIST: u16 = 0x10;
/// Offset where capabilities start.
const CAP_START: usize = 0x40;

/// A 64-bit memory BAR (the only kind our devices use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR index of the low half (the high half is `index + 1`).
    pub index: usize,
    /// Size in bytes, a power of two of at least 16.
    pub size: u64,
}

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciId {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code (class, subclass, prog-if) in the low 24 bits.
    pub class: u32,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
}

/// Configuration space bytes plus which bits the guest may write.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    bars: Vec<Bar>,
    next_cap: usize,
    last_cap: Option<usize>,
}

impl ConfigSpace {
    /// A header with the given identity, command/status, and interrupt pin
    /// (`Some((line, pin))`, pin 1 = INTA#).
    pub fn new(id: PciId, interrupt: Option<(u8, u8)>) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bars: Vec::new(),
            next_cap: CAP_START,
            last_cap: None,
        };
        c.put16(0x00, id.vendor);
        c.put16(0x02, id.device);
        c.bytes[0x08] = id.revision;
        c.bytes[0x09..0x0c].copy_from_slice(&id.class.to_le_bytes()[..3]);
        c.put16(0x2c, id.subsystem_vendor);
        c.put16(0x2e, id.subsystem);
        // Command: I/O, memory, bus master, INTx disable are writable.
        c.writable[0x04] = 0x07;
        c.writable[0x05] = 0x04;
        c.writable[0x0c] = 0xff; // cache line size
        if let Some((line, pin)) = interrupt {
            c.bytes[0x3c] = line;
            c.bytes[0x3d] = pin;
            c.writable[0x3c] = 0xff;
        }
        c
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Adds a 64-bit memory BAR at `index` placed at `addr`.
    pub fn add_bar64(&mut self, index: usize, addr: u64, size: u64) {
        debug_assert!(size.is_power_of_two() && size >= 16 && index < 5);
        let off = BAR0 + 4 * index;
        let v = (addr & !(size - 1)) | 0x4; // 64-bit, non-prefetchable
        self.bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
        let mask = !(size - 1) & !0xf;
        self.writable[off..off + 8].copy_from_slice(&mask.to_le_bytes());
        self.bars.push(Bar { index, size });
    }

    /// Appends a capability: `body` starts with the capability id; the
    /// next-pointer byte is filled in. Returns the capability's offset.
    pub fn add_capability(&mut self, body: &[u8]) -> usize {
        let off = self.next_cap;
        self.bytes[off..off + body.len()].copy_from_slice(body);
        self.bytes[off + 1] = 0;
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = off as u8,
            None => self.bytes[CAP_PTR] = off as u8,
        }
        let status = u16::from_le_bytes([self.bytes[6], self.bytes[7]]) | STATUS_CAP_LIST;
        self.put16(0x06, status);
        self.last_cap = Some(off);
        self.next_cap = (off + body.len() + 3) & !3;
        off
    }

    /// Marks bytes of a capability as guest-writable.
    pub fn set_writable(&mut self, off: usize, len: usize) {
        self.writable[off..off + len].fill(0xff);
    }

    /// Current address of a BAR (as the guest programmed it).
    pub fn bar_addr(&self, bar: &Bar) -> u64 {
        let off = BAR0 + 4 * bar.index;
        u64::from_le_bytes(self.bytes[off..off + 8].try_into().unwrap_or([0; 8])) & !0xf
    }

    /// The BARs.
    pub fn bars(&self) -> &[Bar] {
        &self.bars
    }

    /// Whether the guest enabled memory decoding (command bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.bytes[0x04] & 0x2 != 0
    }

    /// Reads `data.len()` bytes at `offset`; out of range reads all ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Writes through the write mask. Writing all ones to a BAR and reading
    /// it back yields its size mask, as the sizing protocol requires.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let o = offset + i;
            if o >= CONFIG_SIZE {
                return;
            }
            let m = self.writable[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
        }
    }

    /// Raw access for the device model (e.g. to read back a capability).
    pub fn bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PciId {
        PciId {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x018000,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }
    }

    fn r32(c: &ConfigSpace, off: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn header_fields_sit_at_spec_offsets() {
        let c = ConfigSpace::new(id(), Some((10, 1)));
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        assert_eq!(r32(&c, 8), 0x0180_0001);
        assert_eq!(r32(&c, 0x3c) & 0xffff, 0x010a);
        assert_eq!(c.bytes()[0x0e], 0, "header type 0");
    }

    #[test]
    fn bar_sizing_returns_size_mask_and_readonly_type_bits() {
        let mut c = ConfigSpace::new(id(), None);
        c.add_bar64(0, 0xc000_0000, 0x4000);
        assert_eq!(r32(&c, 0x10), 0xc000_0004);
        c.write(0x10, &[0xff; 4]);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(r32(&c, 0x10), 0xffff_c004);
        assert_eq!(r32(&c, 0x14), 0xffff_ffff);
        c.write(0x10, &0xd000_0000u32.to_le_bytes());
        c.write(0x14, &0u32.to_le_bytes());
        assert_eq!(c.bar_addr(&c.bars()[0]), 0xd000_0000);
    }

    #[test]
    fn capabilities_chain_and_identity_is_read_only() {
        let mut c = ConfigSpace::new(id(), None);
        let a = c.add_capability(&[0x09, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let b = c.add_capability(&[
            0x09, 0, 20, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        assert_eq!(c.bytes()[0x34] as usize, a);
        assert_eq!(c.bytes()[a + 1] as usize, b);
        assert_eq!(c.bytes()[b + 1], 0);
        assert_ne!(c.bytes()[6] & 0x10, 0);
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        let mut x = [0u8; 4];
        c.read(254, &mut x);
        assert_eq!(x[2..], [0xff, 0xff]);
    }
}
