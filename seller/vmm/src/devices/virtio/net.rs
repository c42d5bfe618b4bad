//! virtio-net (virtio 1.2, 5.1): Ethernet frames between the guest and a
//! frame backend over one receive and one transmit queue, the MAC and MTU
//! in the device configuration, no offloads. Sans-IO: frames the guest
//! transmits go to a [`FrameSink`]; frames for the guest come in through
//! [`Net::receive`] (the shell reads them from its backend).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::pci::VirtioPci;
use super::{VirtioDevice, VIRTIO_F_VERSION_1};

/// Virtio device type of a network device.
pub const DEVICE_TYPE: u16 = 1;
/// Index of the receive queue (device to guest).
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue (guest to device).
pub const TX_QUEUE: u16 = 1;
/// Largest size of either queue.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// `VIRTIO_NET_F_MTU`: the configuration holds the MTU.
pub const F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC`: the configuration holds the MAC.
pub const F_MAC: u64 = 1 << 5;
/// Length of `struct virtio_net_hdr` with `VIRTIO_F_VERSION_1` (virtio 1.2,
/// 5.1.6): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const NET_HDR_LEN: usize = 12;
/// Length of an Ethernet header (no VLAN tag).
pub const ETH_HEADER_LEN: usize = 14;
/// The vnet's default inner MTU (`vnet::wire::DEFAULT_INNER_MTU`, sized for
/// the worst relayed path); the VMM does not depend on vnet, so it is
/// repeated here.
pub const DEFAULT_MTU: u16 = 1340;
/// Smallest MTU accepted (the IPv4 minimum, RFC 791).
pub const MIN_MTU: u16 = 68;
/// Largest MTU accepted (`vnet::wire::MAX_INNER_MTU`).
pub const MAX_MTU: u16 = 9000;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// Length of `struct virtio_net_config` up to and including `mtu`.
const CONFIG_LEN: usize = 12;

/// Why a transmit descriptor chain from the guest was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// A transmit chain holds a device-writable descriptor; transmit
    /// buffers are read by the device only.
    #[error("transmit descriptor {index} of the chain is device-writable")]
    WriteOnlyDescriptor {
        /// Position in the chain.
        index: usize,
    },
    /// The chain is shorter than the 12-byte `virtio_net_hdr`.
    #[error("transmit chain of {len} bytes is shorter than the {NET_HDR_LEN}-byte virtio_net_hdr")]
    HeaderTooShort {
        /// Bytes in the chain.
        len: usize,
    },
    /// The header asks for a checksum or segmentation offload that the
    /// device did not offer.
    #[error(
        "virtio_net_hdr asks for an offload not offered (flags {flags:#x}, gso_type {gso_type})"
    )]
    UnsupportedOffload {
        /// `flags`.
        flags: u8,
        /// `gso_type`.
        gso_type: u8,
    },
    /// The frame is shorter than an Ethernet header.
    #[error("frame of {len} bytes is shorter than an Ethernet header")]
    FrameTooShort {
        /// Frame length.
        len: usize,
    },
    /// The frame is larger than the MTU allows.
    #[error("frame of {len} bytes exceeds the {max}-byte maximum for the MTU")]
    FrameTooLarge {
        /// Frame length (chain length minus the header).
        len: usize,
        /// Largest frame accepted.
        max: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor at {addr:#x}, {len} bytes, is outside guest memory")]
    BadAddress {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
}

/// Why a frame for the guest was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// The frame is larger than the MTU allows.
    #[error("frame of {len} bytes exceeds the {max}-byte maximum for the MTU")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
        /// Largest frame accepted.
        max: usize,
    },
    /// The frame is shorter than an Ethernet header.
    #[error("frame of {len} bytes is shorter than an Ethernet header")]
    FrameTooShort {
        /// Frame length.
        len: usize,
    },
    /// The guest has no receive buffer posted.
    #[error("the guest has no receive buffer posted")]
    NoBuffers,
    /// The guest's receive chain holds a device-readable descriptor.
    #[error("receive descriptor {index} of the chain is not device-writable")]
    ReadOnlyDescriptor {
        /// Position in the chain.
        index: usize,
    },
    /// The guest's receive chain cannot hold header and frame.
    #[error("receive chain of {have} bytes cannot hold the {need} bytes of header and frame")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes in the chain.
        have: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor at {addr:#x}, {len} bytes, is outside guest memory")]
    BadAddress {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The driver has not set up the receive queue yet.
    #[error("the guest driver has not set up the receive queue")]
    NotReady,
}

/// A configuration the device cannot offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// The MTU is outside what the device accepts.
    #[error("MTU {mtu} is outside {min}..={max}")]
    MtuOutOfRange {
        /// Requested.
        mtu: u16,
        /// Smallest.
        min: u16,
        /// Largest.
        max: u16,
    },
    /// A multicast MAC cannot be a station address.
    #[error("MAC {mac:02x?} is multicast; give a unicast address (first octet even)")]
    MulticastMac {
        /// Requested.
        mac: [u8; 6],
    },
}

/// Where transmitted frames go. Must not block: it runs on a vCPU thread.
pub trait FrameSink: Send {
    /// Hands one Ethernet frame (without the virtio header) to the backend.
    fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()>;
}

/// Frame and drop counters, shared between the device, the shell's
/// receive thread and whoever reports on the VM.
#[derive(Debug, Default)]
pub struct NetCounters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_malformed: AtomicU64,
    tx_backend_dropped: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_too_large: AtomicU64,
    rx_too_short: AtomicU64,
    rx_no_buffer: AtomicU64,
    rx_bad_buffer: AtomicU64,
    rx_not_ready: AtomicU64,
}

/// A snapshot of [`NetCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Their bytes (Ethernet frames, no virtio header).
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed ([`TxError`]).
    pub tx_malformed: u64,
    /// Frames the backend refused (full or gone).
    pub tx_backend_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames for the guest dropped for exceeding the MTU.
    pub rx_too_large: u64,
    /// Frames for the guest dropped for being shorter than an Ethernet header.
    pub rx_too_short: u64,
    /// Frames dropped because the guest had no receive buffer posted.
    pub rx_no_buffer: u64,
    /// Frames dropped because the guest's receive chain was unusable.
    pub rx_bad_buffer: u64,
    /// Frames dropped before the driver set up the receive queue.
    pub rx_not_ready: u64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl NetCounters {
    /// The counts now.
    pub fn snapshot(&self) -> NetStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            tx_frames: g(&self.tx_frames),
            tx_bytes: g(&self.tx_bytes),
            tx_malformed: g(&self.tx_malformed),
            tx_backend_dropped: g(&self.tx_backend_dropped),
            rx_frames: g(&self.rx_frames),
            rx_bytes: g(&self.rx_bytes),
            rx_too_large: g(&self.rx_too_large),
            rx_too_short: g(&self.rx_too_short),
            rx_no_buffer: g(&self.rx_no_buffer),
            rx_bad_buffer: g(&self.rx_bad_buffer),
            rx_not_ready: g(&self.rx_not_ready),
        }
    }

    /// Counts a frame for the guest dropped by the shell before reaching
    /// the device (too large to read, or the queue not live).
    pub fn count_rx_drop(&self, why: &RxError) {
        let c = match why {
            RxError::FrameTooLarge { .. } => &self.rx_too_large,
            RxError::FrameTooShort { .. } => &self.rx_too_short,
            RxError::NoBuffers => &self.rx_no_buffer,
            RxError::NotReady => &self.rx_not_ready,
            RxError::ReadOnlyDescriptor { .. }
            | RxError::BufferTooSmall { .. }
            | RxError::BadAddress { .. } => &self.rx_bad_buffer,
        };
        bump(c, 1);
    }
}

/// The fields of a transmit `virtio_net_hdr` the device acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetHdr {
    /// `flags`.
    pub flags: u8,
    /// `gso_type`.
    pub gso_type: u8,
}

impl NetHdr {
    /// Parses a transmit header, refusing the checksum and segmentation
    /// offloads this device does not offer (the frame would go out wrong).
    pub fn parse(b: &[u8]) -> Result<Self, TxError> {
        let (&flags, &gso_type) = match b {
            [f, g, ..] if b.len() >= NET_HDR_LEN => (f, g),
            _ => return Err(TxError::HeaderTooShort { len: b.len() }),
        };
        if flags & HDR_F_NEEDS_CSUM != 0 || gso_type != GSO_NONE {
            return Err(TxError::UnsupportedOffload { flags, gso_type });
        }
        Ok(Self { flags, gso_type })
    }
}

/// Reads a transmit chain into `out` (header then frame), checking it
/// before copying: read-only descriptors, at least a header, at most a
/// header plus `max_frame`, a frame of at least an Ethernet header.
pub fn gather_tx_chain(
    descs: &[Descriptor],
    mem: &GuestMemoryMmap,
    max_frame: usize,
    out: &mut Vec<u8>,
) -> Result<(), TxError> {
    let mut total = 0usize;
    for (index, d) in descs.iter().enumerate() {
        if d.is_write_only() {
            return Err(TxError::WriteOnlyDescriptor { index });
        }
        total = total.saturating_add(d.len() as usize);
    }
    if total < NET_HDR_LEN {
        return Err(TxError::HeaderTooShort { len: total });
    }
    let len = total - NET_HDR_LEN;
    if len > max_frame {
        return Err(TxError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    out.clear();
    out.resize(total, 0);
    let mut at = 0;
    for d in descs {
        let n = d.len() as usize;
        mem.read_slice(&mut out[at..at + n], d.addr())
            .map_err(|_| TxError::BadAddress {
                addr: d.addr().0,
                len: d.len(),
            })?;
        at += n;
    }
    NetHdr::parse(&out[..NET_HDR_LEN])?;
    if len < ETH_HEADER_LEN {
        return Err(TxError::FrameTooShort { len });
    }
    Ok(())
}

/// Writes header and `frame` across a receive chain; returns the bytes
/// written.
fn scatter_rx_chain(
    descs: &[Descriptor],
    mem: &GuestMemoryMmap,
    frame: &[u8],
) -> Result<usize, RxError> {
    let mut have = 0usize;
    for (index, d) in descs.iter().enumerate() {
        if !d.is_write_only() {
            return Err(RxError::ReadOnlyDescriptor { index });
        }
        have = have.saturating_add(d.len() as usize);
    }
    let need = NET_HDR_LEN + frame.len();
    if have < need {
        return Err(RxError::BufferTooSmall { need, have });
    }
    // No offloads and no mergeable buffers: an all-zero header but for
    // num_buffers = 1 (virtio 1.2, 5.1.6.4.1).
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[10] = 1;
    let mut src = hdr.iter().chain(frame).copied();
    let mut chunk = Vec::new();
    let mut left = need;
    for d in descs {
        if left == 0 {
            break;
        }
        let n = (d.len() as usize).min(left);
        chunk.clear();
        chunk.extend(src.by_ref().take(n));
        mem.write_slice(&chunk, d.addr())
            .map_err(|_| RxError::BadAddress {
                addr: d.addr().0,
                len: d.len(),
            })?;
        left -= n;
    }
    Ok(need)
}

/// The network device model.
pub struct Net {
    mac: [u8; 6],
    mtu: u16,
    sink: Box<dyn FrameSink>,
    counters: Arc<NetCounters>,
    descs: Vec<Descriptor>,
    tx_buf: Vec<u8>,
    last_tx_error: Option<TxError>,
}

impl Net {
    /// A device with station address `mac` and `mtu`, sending to `sink`.
    pub fn new(mac: [u8; 6], mtu: u16, sink: Box<dyn FrameSink>) -> Result<Self, NetConfigError> {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(NetConfigError::MtuOutOfRange {
                mtu,
                min: MIN_MTU,
                max: MAX_MTU,
            });
        }
        if mac[0] & 1 != 0 {
            return Err(NetConfigError::MulticastMac { mac });
        }
        Ok(Self {
            mac,
            mtu,
            sink,
            counters: Arc::default(),
            descs: Vec::new(),
            tx_buf: Vec::new(),
            last_tx_error: None,
        })
    }

    /// The counters, to share with the shell and the VM's handle.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// Largest Ethernet frame either way: MTU plus the Ethernet header.
    pub fn max_frame_len(&self) -> usize {
        usize::from(self.mtu) + ETH_HEADER_LEN
    }

    /// Why the last dropped transmit chain was dropped.
    pub fn last_tx_error(&self) -> Option<&TxError> {
        self.last_tx_error.as_ref()
    }

    /// `struct virtio_net_config`: mac, status, max_virtqueue_pairs, mtu.
    pub fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..6].copy_from_slice(&self.mac);
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    /// Sends every frame the guest made available on the transmit queue;
    /// returns whether the driver should be interrupted.
    pub fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let max = self.max_frame_len();
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            self.descs.clear();
            self.descs.extend(chain);
            match gather_tx_chain(&self.descs, mem, max, &mut self.tx_buf) {
                Ok(()) => {
                    let frame = &self.tx_buf[NET_HDR_LEN..];
                    match self.sink.send_frame(frame) {
                        Ok(()) => {
                            bump(&self.counters.tx_frames, 1);
                            bump(&self.counters.tx_bytes, frame.len() as u64);
                        }
                        Err(_) => bump(&self.counters.tx_backend_dropped, 1),
                    }
                }
                Err(e) => {
                    bump(&self.counters.tx_malformed, 1);
                    self.last_tx_error = Some(e);
                }
            }
            // Transmit buffers are returned with nothing written to them.
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used_any = true;
        }
        used_any && queue.needs_notification(mem).unwrap_or(true)
    }

    /// Puts `frame` into the next receive buffer. Returns whether it was
    /// delivered, and whether the driver should be interrupted (a chain
    /// was used, even an unusable one returned empty).
    pub fn receive(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        frame: &[u8],
    ) -> (Result<(), RxError>, bool) {
        let max = self.max_frame_len();
        let early = if frame.len() > max {
            Some(RxError::FrameTooLarge {
                len: frame.len(),
                max,
            })
        } else if frame.len() < ETH_HEADER_LEN {
            Some(RxError::FrameTooShort { len: frame.len() })
        } else {
            None
        };
        if let Some(e) = early {
            self.counters.count_rx_drop(&e);
            return (Err(e), false);
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            self.counters.count_rx_drop(&RxError::NoBuffers);
            return (Err(RxError::NoBuffers), false);
        };
        let head = chain.head_index();
        self.descs.clear();
        self.descs.extend(chain);
        let r = scatter_rx_chain(&self.descs, mem, frame);
        // An unusable chain goes back empty, so the driver can recycle it.
        let used_len = *r.as_ref().unwrap_or(&0) as u32;
        match &r {
            Ok(_) => {
                bump(&self.counters.rx_frames, 1);
                bump(&self.counters.rx_bytes, frame.len() as u64);
            }
            Err(e) => self.counters.count_rx_drop(e),
        }
        if queue.add_used(mem, head, used_len).is_err() {
            return (r.map(|_| ()), false);
        }
        (r.map(|_| ()), queue.needs_notification(mem).unwrap_or(true))
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }
    fn pci_class(&self) -> u32 {
        0x02_00_00 // network, Ethernet
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MAC | F_MTU
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config(), offset, data);
    }
    fn queue_notify(&mut self, index: u16, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        // Receive buffers are taken when a frame arrives; nothing to do
        // when the driver adds some.
        index == TX_QUEUE && self.transmit(queue, mem)
    }
}

/// A virtio-net function on the PCI bus.
pub type VirtioPciNet = VirtioPci<Net>;

impl VirtioPciNet {
    /// Hands a frame from the backend to the guest, counting it as dropped
    /// if the driver has not set up the receive queue.
    pub fn receive_frame(&mut self, frame: &[u8]) -> Result<(), RxError> {
        match self.with_live_queue(RX_QUEUE, |net, q, mem| net.receive(q, mem, frame)) {
            Some(r) => r,
            None => {
                self.device().counters.count_rx_drop(&RxError::NotReady);
                Err(RxError::NotReady)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A sink that keeps frames, or refuses them all.
    #[derive(Clone, Default)]
    struct Frames(Arc<Mutex<Vec<Vec<u8>>>>, bool);

    impl FrameSink for Frames {
        fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
            if self.1 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            self.0.lock().unwrap().push(frame.to_vec());
            Ok(())
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn net(sink: &Frames) -> Net {
        Net::new(MAC, DEFAULT_MTU, Box::new(sink.clone())).unwrap()
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 % 251) as u8).collect()
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// Posts `descs` as one chain on a fresh queue and runs the transmit
    /// path, as a driver's notify would.
    fn transmit(n: &mut Net, m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> bool {
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let irq = n.transmit(&mut q, m);
        assert_eq!(vq.used().idx().load(), 1, "the chain is always returned");
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
        irq
    }

    /// Posts one receive chain and delivers `f` into it; returns the result
    /// and the used length.
    fn receive(
        n: &mut Net,
        m: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        f: &[u8],
    ) -> (Result<(), RxError>, u32) {
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (r, _) = n.receive(&mut q, m, f);
        (r, vq.used().ring().ref_at(0).unwrap().load().len())
    }

    #[test]
    fn a_frame_split_over_descriptors_reaches_the_sink_without_its_header() {
        let m = mem();
        let sink = Frames::default();
        let mut n = net(&sink);
        let f = frame(600);
        m.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x8000))
            .unwrap();
        m.write_slice(&f[..100], GuestAddress(0x9000)).unwrap();
        m.write_slice(&f[100..], GuestAddress(0xa000)).unwrap();
        let irq = transmit(
            &mut n,
            &m,
            &[
                d(0x8000, 12, F_NEXT, 1),
                d(0x9000, 100, F_NEXT, 2),
                d(0xa000, 500, 0, 0),
            ],
        );
        assert!(irq);
        assert_eq!(*sink.0.lock().unwrap(), vec![f]);
        let s = n.counters().snapshot();
        assert_eq!((s.tx_frames, s.tx_bytes, s.tx_malformed), (1, 600, 0));
    }

    #[test]
    fn malformed_transmit_chains_are_dropped_counted_and_returned() {
        let m = mem();
        let max = usize::from(DEFAULT_MTU) + ETH_HEADER_LEN;
        let cases: Vec<(Vec<RawDescriptor>, TxError)> = vec![
            (vec![d(0x8000, 8, 0, 0)], TxError::HeaderTooShort { len: 8 }),
            (
                vec![d(0x8000, 12, F_NEXT, 1), d(0x9000, 100, F_WRITE, 0)],
                TxError::WriteOnlyDescriptor { index: 1 },
            ),
            (vec![d(0x8000, 12, 0, 0)], TxError::FrameTooShort { len: 0 }),
            (
                vec![d(0x8000, 12 + max as u32 + 1, 0, 0)],
                TxError::FrameTooLarge { len: max + 1, max },
            ),
            (
                // Near the 4 GiB a chain may hold (virtio-queue stops a
                // chain at 2^32 bytes): refused before any copy.
                vec![d(0x8000, 12, F_NEXT, 1), d(0x9000, u32::MAX - 12, 0, 0)],
                TxError::FrameTooLarge {
                    len: u32::MAX as usize - 12,
                    max,
                },
            ),
            (
                vec![d(0xff000, 12, F_NEXT, 1), d(0x10_0000 - 8, 60, 0, 0)],
                TxError::BadAddress {
                    addr: 0x10_0000 - 8,
                    len: 60,
                },
            ),
        ];
        for (i, (descs, want)) in cases.iter().enumerate() {
            let sink = Frames::default();
            let mut n = net(&sink);
            m.write_slice(&[0u8; 64], GuestAddress(0x8000)).unwrap();
            transmit(&mut n, &m, descs);
            assert_eq!(n.last_tx_error(), Some(want), "case {i}");
            assert!(sink.0.lock().unwrap().is_empty(), "case {i}");
            assert_eq!(n.counters().snapshot().tx_malformed, 1, "case {i}");
        }
    }

    #[test]
    fn offloads_not_offered_are_refused() {
        let m = mem();
        for (flags, gso) in [(HDR_F_NEEDS_CSUM, 0), (0, 1), (0, 4)] {
            let sink = Frames::default();
            let mut n = net(&sink);
            let mut h = [0u8; NET_HDR_LEN];
            h[0] = flags;
            h[1] = gso;
            m.write_slice(&h, GuestAddress(0x8000)).unwrap();
            transmit(&mut n, &m, &[d(0x8000, 12, F_NEXT, 1), d(0x9000, 60, 0, 0)]);
            assert_eq!(
                n.last_tx_error(),
                Some(&TxError::UnsupportedOffload {
                    flags,
                    gso_type: gso
                })
            );
        }
        assert!(NetHdr::parse(&[0; 12]).is_ok());
    }

    #[test]
    fn a_full_backend_drops_and_counts() {
        let m = mem();
        let sink = Frames(Arc::default(), true);
        let mut n = net(&sink);
        m.write_slice(&[0u8; 80], GuestAddress(0x8000)).unwrap();
        transmit(&mut n, &m, &[d(0x8000, 80, 0, 0)]);
        let s = n.counters().snapshot();
        assert_eq!((s.tx_frames, s.tx_backend_dropped), (0, 1));
    }

    #[test]
    fn a_received_frame_lands_after_a_header_with_num_buffers_one() {
        let m = mem();
        let mut n = net(&Frames::default());
        let f = frame(300);
        m.write_slice(&[0xee; 512], GuestAddress(0x8000)).unwrap();
        let (r, used) = receive(
            &mut n,
            &m,
            &[
                d(0x8000, 100, F_WRITE | F_NEXT, 1),
                d(0x9000, 2048, F_WRITE, 0),
            ],
            &f,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(used, 312);
        let mut hdr = [0u8; NET_HDR_LEN];
        m.read_slice(&mut hdr, GuestAddress(0x8000)).unwrap();
        assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let mut got = vec![0u8; 300];
        m.read_slice(&mut got[..88], GuestAddress(0x8000 + 12))
            .unwrap();
        m.read_slice(&mut got[88..], GuestAddress(0x9000)).unwrap();
        assert_eq!(got, f);
        let s = n.counters().snapshot();
        assert_eq!((s.rx_frames, s.rx_bytes), (1, 300));
    }

    #[test]
    fn received_frames_are_dropped_and_counted_when_they_cannot_be_delivered() {
        let m = mem();
        let mut n = net(&Frames::default());
        let max = n.max_frame_len();
        // No buffers posted at all.
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        assert_eq!(n.receive(&mut q, &m, &frame(60)).0, Err(RxError::NoBuffers));
        // Too large, too short: refused before any buffer is taken.
        let big = frame(max + 1);
        assert_eq!(
            n.receive(&mut q, &m, &big).0,
            Err(RxError::FrameTooLarge { len: max + 1, max })
        );
        assert_eq!(
            n.receive(&mut q, &m, &frame(13)).0,
            Err(RxError::FrameTooShort { len: 13 })
        );
        // The guest's chain is read-only, too small, or outside memory:
        // returned empty.
        let bad: [(Vec<RawDescriptor>, RxError); 3] = [
            (
                vec![d(0x8000, 12, F_WRITE | F_NEXT, 1), d(0x9000, 2048, 0, 0)],
                RxError::ReadOnlyDescriptor { index: 1 },
            ),
            (
                vec![d(0x8000, 50, F_WRITE, 0)],
                RxError::BufferTooSmall { need: 72, have: 50 },
            ),
            (
                vec![d(0x10_0000 - 4, 2048, F_WRITE, 0)],
                RxError::BadAddress {
                    addr: 0x10_0000 - 4,
                    len: 2048,
                },
            ),
        ];
        for (descs, want) in bad {
            assert_eq!(receive(&mut n, &m, &descs, &frame(60)), (Err(want), 0));
        }
        let s = n.counters().snapshot();
        assert_eq!(s.rx_no_buffer, 1);
        assert_eq!(s.rx_too_large, 1);
        assert_eq!(s.rx_too_short, 1);
        assert_eq!(s.rx_bad_buffer, 3);
        assert_eq!(s.rx_frames, 0);
    }

    #[test]
    fn config_holds_mac_pairs_and_mtu_and_bad_configs_are_refused() {
        let n = net(&Frames::default());
        let c = n.config();
        assert_eq!(&c[0..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), DEFAULT_MTU);
        assert_eq!(n.features(), VIRTIO_F_VERSION_1 | F_MAC | F_MTU);
        let mut part = [0xffu8; 4];
        n.read_config(10, &mut part);
        assert_eq!(part, [0x3c, 0x05, 0, 0]);
        assert!(matches!(
            Net::new(MAC, 20, Box::new(Frames::default())),
            Err(NetConfigError::MtuOutOfRange { mtu: 20, .. })
        ));
        assert!(matches!(
            Net::new([1, 0, 0, 0, 0, 0], 1500, Box::new(Frames::default())),
            Err(NetConfigError::MulticastMac { .. })
        ));
    }

    /// Drives the transport as a driver would: both queues set up, a frame
    /// sent, one received, an interrupt for each.
    #[test]
    fn a_driver_sends_and_receives_through_the_pci_transport() {
        use crate::devices::pci::PciDevice;
        use std::sync::atomic::AtomicUsize;
        let m = mem();
        let sink = Frames::default();
        let irqs = Arc::new(AtomicUsize::new(0));
        let c = irqs.clone();
        let mut dev = VirtioPciNet::new(
            net(&sink),
            m.clone(),
            0xc000_0000,
            5,
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let w = |dev: &mut VirtioPciNet, off: u64, v: u64, len: usize| {
            dev.bar_write(0, off, &v.to_le_bytes()[..len])
        };
        assert_eq!(dev.receive_frame(&frame(60)), Err(RxError::NotReady));
        let mut cls = [0u8; 4];
        dev.config_read(8, &mut cls);
        assert_eq!(u32::from_le_bytes(cls) >> 8, 0x02_00_00);
        w(&mut dev, 0x14, 3, 1);
        w(&mut dev, 0x08, 0, 4);
        w(&mut dev, 0x0c, F_MAC | F_MTU, 4);
        w(&mut dev, 0x08, 1, 4);
        w(&mut dev, 0x0c, 1, 4);
        w(&mut dev, 0x14, 3 | 8, 1);
        let mut num_queues = [0u8; 2];
        dev.bar_read(0, 0x12, &mut num_queues);
        assert_eq!(u16::from_le_bytes(num_queues), 2);
        // Queue q: desc at 0x1000 + q*0x4000, avail +0x1000, used +0x2000.
        for q in 0..2u64 {
            let base = 0x1000 + q * 0x4000;
            w(&mut dev, 0x16, q, 2);
            w(&mut dev, 0x18, 8, 2);
            w(&mut dev, 0x20, base, 8);
            w(&mut dev, 0x28, base + 0x1000, 8);
            w(&mut dev, 0x30, base + 0x2000, 8);
            w(&mut dev, 0x1c, 1, 2);
        }
        w(&mut dev, 0x16, 2, 2);
        let mut size = [0xffu8; 2];
        dev.bar_read(0, 0x18, &mut size);
        assert_eq!(size, [0, 0], "a third queue does not exist");
        w(&mut dev, 0x14, 3 | 8 | 4, 1);
        let put_desc = |at: u64, addr: u64, len: u32, flags: u16| {
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0));
            m.write_obj(raw, GuestAddress(at)).unwrap();
        };
        // Transmit: one descriptor with header and frame.
        let f = frame(64);
        m.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x20000))
            .unwrap();
        m.write_slice(&f, GuestAddress(0x20000 + 12)).unwrap();
        put_desc(0x5000, 0x20000, 76, 0);
        m.write_obj(0u16, GuestAddress(0x6004)).unwrap();
        m.write_obj(1u16, GuestAddress(0x6002)).unwrap();
        w(&mut dev, 0x3000 + 4, 0, 2); // notify queue 1
        assert_eq!(*sink.0.lock().unwrap(), vec![f.clone()]);
        assert_eq!(irqs.load(Ordering::SeqCst), 1);
        // Receive: one posted buffer, one frame.
        put_desc(0x1000, 0x30000, 2048, F_WRITE);
        m.write_obj(0u16, GuestAddress(0x2004)).unwrap();
        m.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        assert_eq!(dev.receive_frame(&f), Ok(()));
        assert_eq!(irqs.load(Ordering::SeqCst), 2);
        let used_len: u32 = m.read_obj(GuestAddress(0x3008)).unwrap();
        assert_eq!(used_len, 76);
        let mut got = vec![0u8; 64];
        m.read_slice(&mut got, GuestAddress(0x30000 + 12)).unwrap();
        assert_eq!(got, f);
        assert_eq!(dev.receive_frame(&f), Err(RxError::NoBuffers));
        let s = dev.device().counters().snapshot();
        assert_eq!(
            (s.tx_frames, s.rx_frames, s.rx_no_buffer, s.rx_not_ready),
            (1, 1, 1, 1)
        );
    }

    proptest! {
        /// Random bytes as the guest's descriptor table, rings and buffers:
        /// the transmit and receive paths never panic.
        #[test]
        fn random_queues_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
            avail_idx in 0u16..40,
            frame_len in 0usize..2000,
        ) {
            let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
            m.write_slice(&bytes, GuestAddress(0)).unwrap();
            let mut n = net(&Frames::default());
            for q in 0..2 {
                let mut queue = Queue::new(16).unwrap();
                queue.set_size(16);
                queue.set_desc_table_address(Some(0), Some(0));
                queue.set_avail_ring_address(Some(0x100), Some(0));
                queue.set_used_ring_address(Some(0x200), Some(0));
                queue.set_ready(true);
                m.write_obj(avail_idx, GuestAddress(0x102)).unwrap();
                if q == 0 {
                    let _ = n.transmit(&mut queue, &m);
                } else {
                    for _ in 0..avail_idx.min(17) {
                        let _ = n.receive(&mut queue, &m, &frame(frame_len));
                    }
                }
            }
        }
    }
}
