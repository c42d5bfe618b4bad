//! virtio-blk (virtio 1.2, 5.2): requests from one queue served from a
//! [`Disk`]. The model is sans-IO except for the disk it is given.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::VIRTIO_F_VERSION_1;

/// Virtio device type of a block device.
pub const DEVICE_TYPE: u16 = 2;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Largest queue we offer.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// `VIRTIO_BLK_F_SEG_MAX`.
const F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_RO`.
const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
const F_FLUSH: u64 = 1 << 9;
/// Most data segments per request (advertised as `seg_max`).
const SEG_MAX: u32 = 126;
/// Largest request payload served, so one request cannot make us allocate
/// without bound (Linux's default max is 1280 KiB per request on virtio).
const MAX_REQUEST_BYTES: u64 = 4 << 20;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Length of `virtio_blk_req` header: type, reserved, sector.
const HEADER_LEN: u32 = 16;
/// Length of the id string for `GET_ID`.
const ID_LEN: usize = 20;

/// Storage behind a block device.
pub trait Disk: Send {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the disk is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Makes writes durable.
    fn flush(&mut self) -> std::io::Result<()>;
}

/// A disk backed by a file.
pub struct FileDisk {
    file: File,
    len: u64,
}

impl FileDisk {
    /// Wraps an open file.
    pub fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

impl Disk for FileDisk {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// A disk in memory (tests, and small generated images).
pub struct MemDisk(pub Vec<u8>);

impl Disk for MemDisk {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let s = self
            .0
            .get(offset as usize..offset as usize + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(s);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let s = self
            .0
            .get_mut(offset as usize..offset as usize + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        s.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The block device model.
pub struct Block {
    disk: Box<dyn Disk>,
    read_only: bool,
    id: [u8; ID_LEN],
}

impl Block {
    /// A block device over `disk`; `id` is what `GET_ID` returns (truncated
    /// to 20 bytes).
    pub fn new(disk: Box<dyn Disk>, read_only: bool, id: &str) -> Self {
        let mut idb = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            disk,
            read_only,
            id: idb,
        }
    }

    /// Feature bits offered.
    pub fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_SEG_MAX | if self.read_only { F_RO } else { F_FLUSH }
    }

    /// Capacity in 512-byte sectors (a trailing partial sector is hidden).
    pub fn capacity(&self) -> u64 {
        self.disk.len() / SECTOR_SIZE
    }

    /// `struct virtio_blk_config` (capacity at 0, seg_max at 12, blk_size at 20).
    pub fn config(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.capacity().to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Serves every available request; returns whether the driver should be
    /// interrupted.
    pub fn process_queue(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let written = self.serve(&descs, mem);
            if queue.add_used(mem, head, written).is_err() {
                break;
            }
            used_any = true;
        }
        used_any && queue.needs_notification(mem).unwrap_or(true)
    }

    /// Serves one request; returns the number of bytes written to the
    /// driver's buffers (data plus status byte).
    fn serve(
        &mut self,
        descs: &[virtio_queue::desc::split::Descriptor],
        mem: &GuestMemoryMmap,
    ) -> u32 {
        let Some((last, middle)) = descs.split_last() else {
            return 0;
        };
        let Some((first, data)) = middle.split_first() else {
            return 0;
        };
        if !last.is_write_only() || last.len() < 1 {
            return 0;
        }
        let status_addr = last.addr();
        let mut status = S_OK;
        let mut written = 0u32;
        let header = if first.is_write_only() || first.len() < HEADER_LEN {
            None
        } else {
            let mut h = [0u8; 16];
            mem.read_slice(&mut h, first.addr()).ok().map(|_| h)
        };
        match header {
            None => status = S_IOERR,
            Some(h) => {
                let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                let sector = u64::from_le_bytes(h[8..16].try_into().unwrap_or([0; 8]));
                match self.data_request(kind, sector, data, mem) {
                    Ok(n) => written = n,
                    Err(s) => status = s,
                }
            }
        }
        if mem.write_obj(status, status_addr).is_err() {
            return written;
        }
        written + 1
    }

    fn data_request(
        &mut self,
        kind: u32,
        sector: u64,
        data: &[virtio_queue::desc::split::Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<u32, u8> {
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        if total > MAX_REQUEST_BYTES {
            return Err(S_IOERR);
        }
        let start = sector.checked_mul(SECTOR_SIZE).ok_or(S_IOERR)?;
        let in_range = |len: u64| start.checked_add(len).is_some_and(|e| e <= self.disk.len());
        match kind {
            T_IN => {
                if !in_range(total) || data.iter().any(|d| !d.is_write_only()) {
                    return Err(S_IOERR);
                }
                let mut off = start;
                for d in data {
                    let mut buf = vec![0u8; d.len() as usize];
                    self.disk.read_at(&mut buf, off).map_err(|_| S_IOERR)?;
                    mem.write_slice(&buf, d.addr()).map_err(|_| S_IOERR)?;
                    off += u64::from(d.len());
                }
                Ok(total as u32)
            }
            T_OUT => {
                if self.read_only {
                    return Err(S_IOERR);
                }
                if !in_range(total) || data.iter().any(|d| d.is_write_only()) {
                    return Err(S_IOERR);
                }
                let mut off = start;
                for d in data {
                    let mut buf = vec![0u8; d.len() as usize];
                    mem.read_slice(&mut buf, d.addr()).map_err(|_| S_IOERR)?;
                    self.disk.write_at(&buf, off).map_err(|_| S_IOERR)?;
                    off += u64::from(d.len());
                }
                Ok(0)
            }
            T_FLUSH => {
                if !self.read_only {
                    self.disk.flush().map_err(|_| S_IOERR)?;
                }
                Ok(0)
            }
            T_GET_ID => {
                let d = data.first().ok_or(S_IOERR)?;
                let n = (d.len() as usize).min(ID_LEN);
                mem.write_slice(&self.id[..n], d.addr())
                    .map_err(|_| S_IOERR)?;
                Ok(n as u32)
            }
            _ => Err(S_UNSUPP),
        }
    }
}

impl super::VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }
    fn pci_class(&self) -> u32 {
        0x01_80_00 // mass storage, other
    }
    fn features(&self) -> u64 {
        Block::features(self)
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config(), offset, data);
    }
    fn queue_notify(&mut self, index: u16, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        index == 0 && self.process_queue(queue, mem)
    }
}

/// Address helper for tests and the transport.
pub fn ga(a: u64) -> GuestAddress {
    GuestAddress(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn disk() -> Vec<u8> {
        (0..8192u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Drives one request as a guest driver would: header, data, status.
    fn request(
        blk: &mut Block,
        m: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data_len: u32,
        data_flags: u16,
    ) -> (u8, u32) {
        let vq = MockSplitQueue::new(m, 16);
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&hdr, GuestAddress(0x8000)).unwrap();
        m.write_obj(0xffu8, GuestAddress(0xa000)).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, 16, F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(
                0x9000,
                data_len,
                data_flags | F_NEXT,
                2,
            )),
            RawDescriptor::from(SplitDescriptor::new(0xa000, 1, F_WRITE, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(blk.process_queue(&mut q, m));
        let used_len = vq.used().ring().ref_at(0).unwrap().load().len();
        (m.read_obj(GuestAddress(0xa000)).unwrap(), used_len)
    }

    #[test]
    fn read_returns_disk_bytes_and_used_length() {
        let m = mem();
        let d = disk();
        let mut b = Block::new(Box::new(MemDisk(d.clone())), true, "iso");
        let (status, used) = request(&mut b, &m, T_IN, 1, 1024, F_WRITE);
        assert_eq!(status, S_OK);
        assert_eq!(used, 1025);
        let mut got = vec![0u8; 1024];
        m.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_eq!(got, d[512..1536]);
    }

    #[test]
    fn read_past_the_end_is_an_io_error() {
        let m = mem();
        let mut b = Block::new(Box::new(MemDisk(disk())), true, "iso");
        assert_eq!(request(&mut b, &m, T_IN, 15, 1024, F_WRITE).0, S_IOERR);
        assert_eq!(request(&mut b, &m, T_IN, u64::MAX, 512, F_WRITE).0, S_IOERR);
    }

    #[test]
    fn writes_fail_on_read_only_and_land_on_writable() {
        let m = mem();
        m.write_slice(&[0xab; 512], GuestAddress(0x9000)).unwrap();
        let mut ro = Block::new(Box::new(MemDisk(disk())), true, "iso");
        assert_eq!(request(&mut ro, &m, T_OUT, 0, 512, 0).0, S_IOERR);
        let mut rw = Block::new(Box::new(MemDisk(vec![0; 4096])), false, "scratch");
        assert_eq!(request(&mut rw, &m, T_OUT, 2, 512, 0), (S_OK, 1));
        assert_eq!(request(&mut rw, &m, T_IN, 2, 512, F_WRITE).0, S_OK);
        let mut got = [0u8; 4];
        m.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_eq!(got, [0xab; 4]);
        assert_eq!(request(&mut rw, &m, T_FLUSH, 0, 0, 0).0, S_OK);
    }

    #[test]
    fn get_id_and_unknown_types() {
        let m = mem();
        let mut b = Block::new(Box::new(MemDisk(disk())), true, "cpushare-iso");
        assert_eq!(request(&mut b, &m, T_GET_ID, 0, 20, F_WRITE), (S_OK, 21));
        let mut id = [0u8; 12];
        m.read_slice(&mut id, GuestAddress(0x9000)).unwrap();
        assert_eq!(&id, b"cpushare-iso");
        assert_eq!(request(&mut b, &m, 99, 0, 512, F_WRITE).0, S_UNSUPP);
    }

    #[test]
    fn config_and_features_follow_the_spec() {
        let b = Block::new(Box::new(MemDisk(vec![0; 4096 + 100])), true, "x");
        let c = b.config();
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 8);
        assert_ne!(b.features() & F_RO, 0);
        assert_ne!(b.features() & VIRTIO_F_VERSION_1, 0);
    }
}
