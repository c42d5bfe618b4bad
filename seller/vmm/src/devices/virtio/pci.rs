//! Virtio over PCI, modern transport only (virtio 1.2, 4.1): vendor 0x1af4,
//! device 0x1040 + type, one 64-bit memory BAR holding the common, ISR,
//! device-specific and notification structures, each found through a
//! vendor-specific capability. Interrupts are INTx (no MSI-X yet).

use std::any::Any;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::block::Block;
use super::{status, VirtioDevice};
use crate::devices::pci::config_space::{ConfigSpace, PciId};
use crate::devices::pci::PciDevice;

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x4000;
/// Offsets of the structures in BAR 0.
const COMMON_OFF: u64 = 0x0000;
const COMMON_LEN: u32 = 0x38;
const ISR_OFF: u64 = 0x1000;
const DEVICE_OFF: u64 = 0x2000;
const DEVICE_LEN: u32 = 0x1000;
const NOTIFY_OFF: u64 = 0x3000;
/// Bytes between queue notify addresses.
const NOTIFY_MULTIPLIER: u32 = 4;
/// Capability id for vendor-specific capabilities.
const CAP_VENDOR: u8 = 0x09;
/// `cfg_type` values (virtio 1.2, 4.1.4).
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;
/// "No MSI-X vector".
const NO_VECTOR: u16 = 0xffff;

/// Raises the device's interrupt line (an irqfd in the VMM, a counter in tests).
pub type IrqLine = Box<dyn Fn() + Send>;

/// A virtio function on the PCI bus, driving device model `D`.
pub struct VirtioPci<D> {
    config: ConfigSpace,
    device: D,
    queues: Vec<Queue>,
    mem: GuestMemoryMmap,
    irq: IrqLine,
    device_status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    isr: u8,
    config_generation: u8,
    /// Offset of the `VIRTIO_PCI_CAP_PCI_CFG` capability in config space.
    pci_cfg_cap: usize,
}

/// A virtio-blk function on the PCI bus.
pub type VirtioPciBlock = VirtioPci<Block>;

impl<D: VirtioDevice> VirtioPci<D> {
    /// Builds the function with BAR 0 at `bar_addr` and INTx on `irq_line`.
    pub fn new(device: D, mem: GuestMemoryMmap, bar_addr: u64, irq_line: u8, irq: IrqLine) -> Self {
        let mut config = ConfigSpace::new(
            PciId {
                vendor: 0x1af4,
                device: 0x1040 + device.device_type(),
                revision: 1,
                class: device.pci_class(),
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
            },
            Some((irq_line, 1)),
        );
        config.add_bar64(0, bar_addr, BAR_SIZE);
        let cap = |cfg_type: u8, offset: u64, length: u32, extra: &[u8]| {
            let mut c = vec![CAP_VENDOR, 0, 16 + extra.len() as u8, cfg_type, 0, 0, 0, 0];
            c.extend_from_slice(&(offset as u32).to_le_bytes());
            c.extend_from_slice(&length.to_le_bytes());
            c.extend_from_slice(extra);
            c
        };
        config.add_capability(&cap(CFG_COMMON, COMMON_OFF, COMMON_LEN, &[]));
        config.add_capability(&cap(CFG_ISR, ISR_OFF, 4, &[]));
        config.add_capability(&cap(CFG_DEVICE, DEVICE_OFF, DEVICE_LEN, &[]));
        config.add_capability(&cap(
            CFG_NOTIFY,
            NOTIFY_OFF,
            NOTIFY_MULTIPLIER,
            &NOTIFY_MULTIPLIER.to_le_bytes(),
        ));
        // Access to the BAR through config space (virtio 1.2, 4.1.4.9): the
        // driver writes bar, offset and length, then uses pci_cfg_data.
        let pci_cfg_cap = config.add_capability(&cap(CFG_PCI, 0, 0, &[0; 4]));
        config.set_writable(pci_cfg_cap + 4, 1);
        config.set_writable(pci_cfg_cap + 8, 8);
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device models offer power-of-two queue sizes"))
            .collect();
        Self {
            config,
            device,
            queues,
            mem,
            irq,
            device_status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            isr: 0,
            config_generation: 0,
            pci_cfg_cap,
        }
    }

    /// The BAR window the `VIRTIO_PCI_CAP_PCI_CFG` fields select, if the
    /// access at `offset` hits `pci_cfg_data` and the fields are valid.
    fn pci_cfg_window(&self, offset: usize) -> Option<(u64, usize)> {
        let data = self.pci_cfg_cap + 16;
        if !(data..data + 4).contains(&offset) {
            return None;
        }
        let c = self.config.bytes();
        let at = |o: usize| u32::from_le_bytes([c[o], c[o + 1], c[o + 2], c[o + 3]]);
        let bar = c[self.pci_cfg_cap + 4];
        let off = u64::from(at(self.pci_cfg_cap + 8));
        let len = at(self.pci_cfg_cap + 12) as usize;
        (bar == 0 && matches!(len, 1 | 2 | 4) && off + len as u64 <= BAR_SIZE).then_some((off, len))
    }

    fn reset(&mut self) {
        self.device_status = 0;
        self.driver_features = 0;
        self.queues.iter_mut().for_each(Queue::reset);
        self.isr = 0;
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Runs `f` on queue `index` when the driver has set it up (DRIVER_OK,
    /// queue ready and valid), raising the interrupt if `f` returns true.
    /// Returns `None`, without calling `f`, when the queue is not live: how
    /// the shell hands device-side events (a received frame) to the model.
    pub fn with_live_queue<R>(
        &mut self,
        index: u16,
        f: impl FnOnce(&mut D, &mut Queue, &GuestMemoryMmap) -> (R, bool),
    ) -> Option<R> {
        if self.device_status & status::DRIVER_OK == 0 {
            return None;
        }
        let queue = self.queues.get_mut(usize::from(index))?;
        if !queue.ready() || !queue.is_valid(&self.mem) {
            return None;
        }
        let (r, interrupt) = f(&mut self.device, queue, &self.mem);
        if interrupt {
            self.isr |= 1;
            (self.irq)();
        }
        Some(r)
    }

    /// The value of common configuration register at `off` (by its start).
    fn common_read(&self, off: u64) -> u64 {
        let q = self.queues.get(usize::from(self.queue_select));
        match (off, q) {
            (0x00, _) => u64::from(self.device_feature_select),
            (0x04, _) => match self.device_feature_select {
                0 => self.device.features() & 0xffff_ffff,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            (0x08, _) => u64::from(self.driver_feature_select),
            (0x0c, _) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, _) => u64::from(NO_VECTOR),
            (0x12, _) => self.queues.len() as u64,
            (0x14, _) => u64::from(self.device_status),
            (0x15, _) => u64::from(self.config_generation),
            (0x16, _) => u64::from(self.queue_select),
            // A size of 0 tells the driver the selected queue does not exist.
            (0x18, Some(q)) => u64::from(q.size()),
            (0x1a, _) => u64::from(NO_VECTOR),
            (0x1c, Some(q)) => u64::from(q.ready()),
            (0x1e, _) => u64::from(self.queue_select),
            (0x20, Some(q)) => q.desc_table(),
            (0x28, Some(q)) => q.avail_ring(),
            (0x30, Some(q)) => q.used_ring(),
            _ => 0,
        }
    }

    fn common_write(&mut self, off: u64, v: u64, len: usize) {
        let lo = Some(v as u32);
        let hi = (len == 8).then_some((v >> 32) as u32);
        match off {
            0x00 => self.device_feature_select = v as u32,
            0x08 => self.driver_feature_select = v as u32,
            0x0c => match self.driver_feature_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | (v & 0xffff_ffff)
                }
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                _ => {}
            },
            0x14 => self.set_status(v as u8),
            0x16 => self.queue_select = v as u16,
            _ => {
                let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
                    return;
                };
                match off {
                    0x18 => q.set_size(v as u16),
                    0x1c => q.set_ready(v & 1 == 1),
                    0x20 => q.set_desc_table_address(lo, hi),
                    0x24 => q.set_desc_table_address(None, lo),
                    0x28 => q.set_avail_ring_address(lo, hi),
                    0x2c => q.set_avail_ring_address(None, lo),
                    0x30 => q.set_used_ring_address(lo, hi),
                    0x34 => q.set_used_ring_address(None, lo),
                    _ => {}
                }
            }
        }
    }

    fn set_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        // FEATURES_OK only sticks if the driver took a subset of our offer
        // that includes VERSION_1 (virtio 1.2, 3.1.1).
        if v & status::FEATURES_OK != 0 && self.device_status & status::FEATURES_OK == 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & super::VIRTIO_F_VERSION_1 == 0
            {
                v &= !status::FEATURES_OK;
            }
        }
        self.device_status = v;
    }

    fn notify(&mut self, index: u16) {
        let Some(queue) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        if self.device_status & status::DRIVER_OK == 0 || !queue.ready() {
            return;
        }
        if !queue.is_valid(&self.mem) {
            self.device_status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        if self.device.queue_notify(index, queue, &self.mem) {
            self.isr |= 1;
            (self.irq)();
        }
    }
}

fn to_le(v: u64, data: &mut [u8]) {
    let b = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
}

fn from_le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl<D: VirtioDevice + 'static> PciDevice for VirtioPci<D> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        match self.pci_cfg_window(offset) {
            Some((off, len)) => {
                let mut buf = [0u8; 4];
                self.bar_read(0, off, &mut buf[..len]);
                let n = data.len().min(4);
                data[..n].copy_from_slice(&buf[..n]);
            }
            None => self.config.read(offset, data),
        }
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        match self.pci_cfg_window(offset) {
            Some((off, len)) => {
                let n = len.min(data.len());
                self.bar_write(0, off, &data[..n]);
            }
            None => self.config.write(offset, data),
        }
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFF + u64::from(COMMON_LEN) => to_le(self.common_read(o), data),
            o if (ISR_OFF..ISR_OFF + 4).contains(&o) => {
                // Reading the ISR acknowledges the interrupt.
                data[0] = self.isr;
                self.isr = 0;
            }
            o if (DEVICE_OFF..DEVICE_OFF + u64::from(DEVICE_LEN)).contains(&o) => {
                self.device.read_config(o - DEVICE_OFF, data)
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFF + u64::from(COMMON_LEN) => {
                self.common_write(o, from_le(data), data.len())
            }
            o if (NOTIFY_OFF..NOTIFY_OFF + 0x1000).contains(&o) => {
                self.notify(((o - NOTIFY_OFF) / u64::from(NOTIFY_MULTIPLIER)) as u16)
            }
            _ => {}
        }
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::MemDisk;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress};

    const BAR: u64 = 0xc000_0000;

    fn device() -> (VirtioPciBlock, GuestMemoryMmap, Arc<AtomicUsize>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let disk: Vec<u8> = (0..4096u32).map(|i| (i % 256) as u8).collect();
        let irqs = Arc::new(AtomicUsize::new(0));
        let c = irqs.clone();
        let dev = VirtioPciBlock::new(
            Block::new(Box::new(MemDisk(disk)), true, "iso"),
            mem.clone(),
            BAR,
            10,
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (dev, mem, irqs)
    }

    fn w(d: &mut VirtioPciBlock, off: u64, v: u64, len: usize) {
        d.bar_write(0, off, &v.to_le_bytes()[..len]);
    }
    fn r(d: &mut VirtioPciBlock, off: u64, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        d.bar_read(0, off, &mut b);
        from_le(&b)
    }

    #[test]
    fn capabilities_describe_the_bar_layout() {
        let (d, _, _) = device();
        let c = d.config().bytes();
        assert_eq!(u16::from_le_bytes([c[0], c[1]]), 0x1af4);
        assert_eq!(u16::from_le_bytes([c[2], c[3]]), 0x1042);
        assert_eq!(c[0x3d], 1, "INTA#");
        let mut found = Vec::new();
        let mut p = c[0x34] as usize;
        while p != 0 {
            assert_eq!(c[p], CAP_VENDOR);
            let cap_len = c[p + 2] as usize;
            let cfg_type = c[p + 3];
            let bar = c[p + 4];
            let off = u32::from_le_bytes(c[p + 8..p + 12].try_into().unwrap());
            let len = u32::from_le_bytes(c[p + 12..p + 16].try_into().unwrap());
            assert_eq!(bar, 0);
            assert!(u64::from(off) + u64::from(len) <= BAR_SIZE);
            if cfg_type == CFG_NOTIFY {
                assert_eq!(cap_len, 20);
                assert_eq!(u32::from_le_bytes(c[p + 16..p + 20].try_into().unwrap()), 4);
            } else if cfg_type == CFG_PCI {
                assert_eq!(cap_len, 20);
            } else {
                assert_eq!(cap_len, 16);
            }
            found.push((cfg_type, off));
            p = c[p + 1] as usize;
        }
        assert_eq!(
            found,
            vec![
                (CFG_COMMON, 0),
                (CFG_ISR, 0x1000),
                (CFG_DEVICE, 0x2000),
                (CFG_NOTIFY, 0x3000),
                (CFG_PCI, 0),
            ]
        );
    }

    #[test]
    fn pci_cfg_capability_reaches_the_bar() {
        let (mut d, _, _) = device();
        let cap = d.pci_cfg_cap;
        // Select the device configuration (capacity, low dword) through it.
        d.config_write(cap + 4, &[0]);
        d.config_write(cap + 8, &(DEVICE_OFF as u32).to_le_bytes());
        d.config_write(cap + 12, &4u32.to_le_bytes());
        let mut v = [0u8; 4];
        d.config_read(cap + 16, &mut v);
        assert_eq!(u32::from_le_bytes(v), 8);
        // A write through the window sets device_status.
        d.config_write(cap + 8, &0x14u32.to_le_bytes());
        d.config_write(cap + 12, &1u32.to_le_bytes());
        d.config_write(cap + 16, &[1]);
        assert_eq!(r(&mut d, 0x14, 1), 1);
        // An invalid length reads plain config bytes instead.
        d.config_write(cap + 12, &3u32.to_le_bytes());
        d.config_read(cap + 16, &mut v);
        assert_eq!(v, [0; 4]);
    }

    #[test]
    fn feature_negotiation_rejects_unoffered_bits_and_needs_version_1() {
        let (mut d, _, _) = device();
        w(&mut d, 0x14, 3, 1);
        w(&mut d, 0x08, 0, 4);
        w(&mut d, 0x0c, 1 << 7, 4); // not offered
        w(&mut d, 0x14, 3 | 8, 1);
        assert_eq!(r(&mut d, 0x14, 1) & 8, 0);
        w(&mut d, 0x14, 0, 1);
        w(&mut d, 0x14, 3, 1);
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(&mut d, 0x14, 3 | 8, 1);
        assert_eq!(r(&mut d, 0x14, 1) & 8, 8);
        w(&mut d, 0x04 - 4, 1, 4);
        assert_eq!(r(&mut d, 0x04, 4), 1, "VERSION_1 in the high word");
    }

    #[test]
    fn a_driver_reads_a_sector_through_the_transport() {
        let (mut d, mem, irqs) = device();
        // Driver init sequence (virtio 1.2, 3.1.1).
        w(&mut d, 0x14, 1 | 2, 1);
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(&mut d, 0x14, 1 | 2 | 8, 1);
        w(&mut d, 0x16, 0, 2);
        assert_eq!(r(&mut d, 0x18, 2), 256);
        w(&mut d, 0x18, 8, 2);
        w(&mut d, 0x20, 0x1000, 8);
        w(&mut d, 0x28, 0x2000, 4);
        w(&mut d, 0x2c, 0, 4);
        w(&mut d, 0x30, 0x3000, 8);
        w(&mut d, 0x1c, 1, 2);
        w(&mut d, 0x14, 1 | 2 | 8 | 4, 1);
        assert_eq!(r(&mut d, 0x20, 8), 0x1000);
        // One read request: header at 0x5000, data 0x6000, status 0x7000.
        let hdr = [0u8; 16];
        mem.write_slice(&hdr, GuestAddress(0x5000)).unwrap();
        let desc = |a: u64, l: u32, f: u16, n: u16| {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&a.to_le_bytes());
            b[8..12].copy_from_slice(&l.to_le_bytes());
            b[12..14].copy_from_slice(&f.to_le_bytes());
            b[14..16].copy_from_slice(&n.to_le_bytes());
            b
        };
        mem.write_slice(&desc(0x5000, 16, 1, 1), GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(&desc(0x6000, 512, 3, 2), GuestAddress(0x1010))
            .unwrap();
        mem.write_slice(&desc(0x7000, 1, 2, 0), GuestAddress(0x1020))
            .unwrap();
        mem.write_obj(0u16, GuestAddress(0x2004)).unwrap(); // ring[0] = 0
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap(); // idx = 1
        w(&mut d, NOTIFY_OFF, 0, 2);
        assert_eq!(irqs.load(Ordering::SeqCst), 1);
        assert_eq!(r(&mut d, ISR_OFF, 1), 1);
        assert_eq!(r(&mut d, ISR_OFF, 1), 0, "ISR clears on read");
        let used_idx: u16 = mem.read_obj(GuestAddress(0x3002)).unwrap();
        assert_eq!(used_idx, 1);
        let st: u8 = mem.read_obj(GuestAddress(0x7000)).unwrap();
        assert_eq!(st, 0);
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x6000 + 256))
            .unwrap();
        assert_eq!(got, [0, 1, 2, 3]);
        // Capacity via the device-specific structure.
        assert_eq!(r(&mut d, DEVICE_OFF, 8), 8);
    }
}
