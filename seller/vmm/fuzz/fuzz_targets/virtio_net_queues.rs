//! Random bytes as a guest's virtio-net queues: descriptor table, available
//! ring and buffers. The transmit path parses guest-chosen descriptor chains
//! and `virtio_net_hdr`s; the receive path writes into guest-chosen chains.
//! Neither may panic, allocate without bound, or write outside its chains'
//! guest memory.
#![no_main]

use cpushare_vmm::devices::virtio::net::{FrameSink, Net, DEFAULT_MTU};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: descriptor table at 0 (16 entries), available ring at
/// 0x100, used ring at 0x200, the rest buffers.
const MEM: usize = 0x10000;
const QSIZE: u16 = 16;

struct Discard;

impl FrameSink for Discard {
    fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        assert!(frame.len() <= usize::from(DEFAULT_MTU) + 14);
        Ok(())
    }
}

fn queue() -> Queue {
    let mut q = Queue::new(QSIZE).expect("16 is a valid queue size");
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x100), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    let Some((&rx_len, bytes)) = data.split_first() else {
        return;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let n = bytes.len().min(MEM);
    mem.write_slice(&bytes[..n], GuestAddress(0))
        .expect("within guest memory");
    let Ok(mut net) = Net::new([2, 0, 0, 0, 0, 1], DEFAULT_MTU, Box::new(Discard)) else {
        return;
    };
    let mut tx = queue();
    let _ = net.transmit(&mut tx, &mem);
    // The same bytes as a receive queue, fed frames of a fuzzed length.
    let frame = vec![0x5a; usize::from(rx_len) * 8];
    let mut rx = queue();
    for _ in 0..=QSIZE {
        let _ = net.receive(&mut rx, &mem, &frame);
    }
});
