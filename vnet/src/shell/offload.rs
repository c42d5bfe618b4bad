//! TUN offload (IFF_VNET_HDR + TUNSETOFFLOAD): the kernel hands us TCP
//! super-segments of up to 64 KiB with one `virtio_net_hdr` in front, so one
//! `read` replaces ~45; we cut them into MTU-sized segments here (what a NIC
//! does for TSO) and finish partial checksums. Pure functions, no I/O.

use crate::router::ipv4::Header;

/// Size of `struct virtio_net_hdr` (no mergeable buffers).
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_ECN: u8 = 0x80;

/// Errors splitting an offloaded packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Shorter than the virtio header.
    #[error("offloaded read of {0} bytes has no virtio_net_hdr")]
    NoHeader(usize),
    /// A GSO type we did not enable (UDP, IPv6).
    #[error("unsupported GSO type {0:#x}")]
    GsoType(u8),
    /// Headers inconsistent with the virtio header.
    #[error("malformed offloaded packet: {0}")]
    Malformed(&'static str),
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Splits one read from an offloading TUN (virtio header + packet) into
/// ordinary IPv4 packets, calling `emit` for each with a fully checksummed packet
/// written into `scratch`.
pub fn split(
    read: &[u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    if read.len() < VNET_HDR_LEN {
        return Err(OffloadError::NoHeader(read.len()));
    }
    let flags = read[0];
    let gso_type = read[1] & !GSO_ECN;
    let gso_size = usize::from(u16::from_le_bytes([read[4], read[5]]));
    let csum_start = usize::from(u16::from_le_bytes([read[6], read[7]]));
    let csum_offset = usize::from(u16::from_le_bytes([read[8], read[9]]));
    let pkt = &read[VNET_HDR_LEN..];
    match gso_type {
        GSO_NONE => {
            if flags & F_NEEDS_CSUM == 0 {
                emit(pkt);
                return Ok(());
            }
            if csum_start + csum_offset + 2 > pkt.len() {
                return Err(OffloadError::Malformed("checksum offset past end"));
            }
            scratch.clear();
            scratch.extend_from_slice(pkt);
            // The field holds the pseudo-header sum; sum from csum_start over it.
            let c = !fold(sum16(&scratch[csum_start..], 0));
            scratch[csum_start + csum_offset..csum_start + csum_offset + 2]
                .copy_from_slice(&c.to_be_bytes());
            emit(scratch);
            Ok(())
        }
        GSO_TCPV4 => split_tcp4(pkt, gso_size, scratch, &mut emit),
        t => Err(OffloadError::GsoType(t)),
    }
}

fn split_tcp4(
    pkt: &[u8],
    mss: usize,
    scratch: &mut Vec<u8>,
    emit: &mut impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    let h = Header::parse(pkt).map_err(|_| OffloadError::Malformed("bad IPv4 header"))?;
    if h.protocol != 6 || mss == 0 {
        return Err(OffloadError::Malformed("TCPv4 GSO without TCP"));
    }
    let tcp_off = h.ihl;
    let pkt = &pkt[..h.total_len];
    if pkt.len() < tcp_off + 20 {
        return Err(OffloadError::Malformed("truncated TCP header"));
    }
    let thl = usize::from(pkt[tcp_off + 12] >> 4) * 4;
    let hdr_len = tcp_off + thl;
    if thl < 20 || hdr_len > pkt.len() {
        return Err(OffloadError::Malformed("bad TCP header length"));
    }
    let payload = &pkt[hdr_len..];
    let seq0 = u32::from_be_bytes([
        pkt[tcp_off + 4],
        pkt[tcp_off + 5],
        pkt[tcp_off + 6],
        pkt[tcp_off + 7],
    ]);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let flags0 = pkt[tcp_off + 13];
    let n = payload.len().div_ceil(mss).max(1);
    let pseudo = sum16(&pkt[12..20], 6);
    for i in 0..n {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        scratch.clear();
        scratch.extend_from_slice(&pkt[..hdr_len]);
        scratch.extend_from_slice(chunk);
        let total = scratch.len() as u16;
        scratch[2..4].copy_from_slice(&total.to_be_bytes());
        scratch[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        scratch[10..12].copy_from_slice(&[0, 0]);
        let ipc = !fold(sum16(&scratch[..tcp_off], 0));
        scratch[10..12].copy_from_slice(&ipc.to_be_bytes());
        let seq = seq0.wrapping_add((i * mss) as u32);
        scratch[tcp_off + 4..tcp_off + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags0;
        if i + 1 < n {
            f &= !(0x01 | 0x08); // FIN and PSH only on the last segment
        }
        if i > 0 {
            f &= !0x80; // CWR only on the first
        }
        scratch[tcp_off + 13] = f;
        scratch[tcp_off + 16..tcp_off + 18].copy_from_slice(&[0, 0]);
        let tcp_len = (scratch.len() - tcp_off) as u32;
        let c = !fold(sum16(&scratch[tcp_off..], pseudo + tcp_len));
        scratch[tcp_off + 16..tcp_off + 18].copy_from_slice(&c.to_be_bytes());
        emit(scratch);
    }
    Ok(())
}

/// Most segments merged into one TUN write.
const MAX_COALESCE: usize = 64;

/// Coalesces the longest prefix of `packets` that forms one in-order run of
/// a TCPv4 flow into a single GSO write for an offloading TUN (userspace GRO,
/// so the receiver pays one `write` per run instead of one per segment).
/// Writes virtio_net_hdr + packet into `out` and returns how many packets
/// it consumed (at least 1; a lone packet goes out unchanged).
pub fn coalesce(packets: &[&[u8]], out: &mut Vec<u8>) -> usize {
    out.clear();
    out.extend_from_slice(&[0u8; VNET_HDR_LEN]);
    let Some(first) = packets.first() else {
        return 0;
    };
    let single = |out: &mut Vec<u8>| {
        out.extend_from_slice(first);
        1
    };
    let Some((hdr_len, seq0, len0)) = mergeable_head(first) else {
        return single(out);
    };
    if first[20 + 13] != 0x10 {
        return single(out); // only pure ACK segments start a run
    }
    let mut n = 1;
    let mut next_seq = seq0.wrapping_add(len0 as u32);
    let mut total = first.len();
    let mut psh = false;
    while n < packets.len() && n < MAX_COALESCE && !psh {
        let p = packets[n];
        let Some((h, seq, len)) = mergeable_head(p) else {
            break;
        };
        if h != hdr_len
            || seq != next_seq
            || len > len0
            || total + len > 65_535
            || !same_flow(first, p, hdr_len)
        {
            break;
        }
        match p[20 + 13] {
            0x10 => {}
            0x18 => psh = true,
            _ => break,
        }
        total += len;
        next_seq = seq.wrapping_add(len as u32);
        n += 1;
        if len < len0 {
            break; // a short segment ends the run
        }
    }
    if n == 1 {
        return single(out);
    }
    out.extend_from_slice(&first[..hdr_len]);
    for p in &packets[..n] {
        out.extend_from_slice(&p[hdr_len..]);
    }
    let pkt = &mut out[VNET_HDR_LEN..];
    pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    pkt[10..12].copy_from_slice(&[0, 0]);
    let ipc = !fold(sum16(&pkt[..20], 0));
    pkt[10..12].copy_from_slice(&ipc.to_be_bytes());
    if psh {
        pkt[20 + 13] |= 0x08;
    }
    // CHECKSUM_PARTIAL convention: the field holds the pseudo-header sum.
    let pseudo = fold(sum16(&pkt[12..20], 6 + (total - 20) as u32));
    pkt[20 + 16..20 + 18].copy_from_slice(&pseudo.to_be_bytes());
    let hdr = &mut out[..VNET_HDR_LEN];
    hdr[0] = F_NEEDS_CSUM;
    hdr[1] = GSO_TCPV4;
    hdr[2..4].copy_from_slice(&(hdr_len as u16).to_le_bytes());
    hdr[4..6].copy_from_slice(&(len0 as u16).to_le_bytes());
    hdr[6..8].copy_from_slice(&20u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    n
}

/// (header length, sequence number, payload length) of a plain IPv4 (no
/// options, unfragmented) TCP segment with payload.
fn mergeable_head(p: &[u8]) -> Option<(usize, u32, usize)> {
    let h = Header::parse(p).ok()?;
    if h.protocol != 6
        || h.ihl != 20
        || p[6] & 0x3f != 0
        || p[7] != 0
        || h.total_len != p.len()
        || p.len() < 40
    {
        return None;
    }
    let thl = usize::from(p[32] >> 4) * 4;
    let hdr_len = 20 + thl;
    if thl < 20 || hdr_len >= p.len() {
        return None;
    }
    let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
    Some((hdr_len, seq, p.len() - hdr_len))
}

/// Same addresses, TOS, TTL, flags, ports, ack, window and options.
fn same_flow(a: &[u8], b: &[u8], hdr_len: usize) -> bool {
    a[0..2] == b[0..2]
        && a[6..10] == b[6..10]
        && a[12..20] == b[12..20]
        && a[20..24] == b[20..24]
        && a[28..33] == b[28..33]
        && a[34..36] == b[34..36]
        && a[38..hdr_len] == b[38..hdr_len]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::ipv4::checksum;
    use proptest::prelude::*;

    fn tcp_ok(p: &[u8]) -> bool {
        let h = Header::parse(p).unwrap();
        let mut ph = p[12..20].to_vec();
        ph.extend_from_slice(&[0, 6]);
        ph.extend_from_slice(&((h.total_len - h.ihl) as u16).to_be_bytes());
        ph.extend_from_slice(&p[h.ihl..h.total_len]);
        checksum(&p[..20]) == 0 && checksum(&ph) == 0
    }

    fn super_segment(payload: usize, mss: u16) -> Vec<u8> {
        let mut v = vec![1u8, GSO_TCPV4, 52, 0];
        v.extend_from_slice(&mss.to_le_bytes());
        v.extend_from_slice(&20u16.to_le_bytes());
        v.extend_from_slice(&16u16.to_le_bytes());
        let total = 20 + 32 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((total as u16).to_be_bytes()));
        p[4..6].copy_from_slice(&[0xff, 0xfe]);
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 77, 0, 1]);
        p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        p[24..28].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        p[32] = 8 << 4;
        p[33] = 0x18 | 0x01 | 0x80; // PSH ACK FIN CWR
        for (i, b) in p[52..].iter_mut().enumerate() {
            *b = i as u8;
        }
        v.extend_from_slice(&p);
        v
    }

    #[test]
    fn tso_super_segment_splits_into_valid_segments() {
        let read = super_segment(4000, 1300);
        let mut scratch = Vec::new();
        let mut segs = Vec::new();
        split(&read, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 4);
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(tcp_ok(s), "segment {i}");
            assert!(s.len() <= 20 + 32 + 1300);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1300 * i as u32));
            assert_eq!(s[33] & 0x09 != 0, i == 3, "FIN/PSH only last");
            assert_eq!(s[33] & 0x80 != 0, i == 0, "CWR only first");
            payload.extend_from_slice(&s[52..]);
        }
        assert_eq!(payload, read[10 + 52..].to_vec());
    }

    #[test]
    fn plain_packet_passes_and_bad_gso_is_named() {
        let mut scratch = Vec::new();
        let mut n = 0;
        split(&[0u8; 30], &mut scratch, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            split(&[0u8; 3], &mut scratch, |_| {}),
            Err(OffloadError::NoHeader(3))
        );
        let mut udp = vec![0u8; 40];
        udp[1] = 3;
        assert_eq!(
            split(&udp, &mut scratch, |_| {}),
            Err(OffloadError::GsoType(3))
        );
    }

    #[test]
    fn coalesce_then_split_round_trips_segments() {
        let mut read = super_segment(5000, 1300);
        read[10 + 33] = 0x10; // plain ACK run
        let mut scratch = Vec::new();
        let mut segs = Vec::new();
        split(&read, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        let refs: Vec<&[u8]> = segs.iter().map(|s| s.as_slice()).collect();
        let mut merged = Vec::new();
        assert_eq!(coalesce(&refs, &mut merged), 4);
        assert_eq!(merged[1], GSO_TCPV4);
        let mut again = Vec::new();
        split(&merged, &mut scratch, |s| again.push(s.to_vec())).unwrap();
        assert_eq!(again.len(), 4);
        for (a, b) in again.iter().zip(&segs) {
            assert_eq!(a[20..], b[20..], "TCP part identical");
            assert!(tcp_ok(a));
        }
    }

    #[test]
    fn coalesce_stops_at_gaps_and_foreign_packets() {
        let mut read = super_segment(3900, 1300);
        read[10 + 33] = 0x10;
        let mut scratch = Vec::new();
        let mut segs = Vec::new();
        split(&read, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        let mut merged = Vec::new();
        // Gap: segment 1 missing.
        assert_eq!(coalesce(&[&segs[0], &segs[2]], &mut merged), 1);
        assert_eq!(merged[..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
        assert_eq!(&merged[VNET_HDR_LEN..], &segs[0][..]);
        // Another flow (different port).
        let mut other = segs[1].clone();
        other[21] ^= 1;
        assert_eq!(coalesce(&[&segs[0], &other], &mut merged), 1);
        // Non-TCP.
        let junk = [0x45u8; 10];
        assert_eq!(coalesce(&[&junk[..], &segs[0]], &mut merged), 1);
        assert_eq!(coalesce(&[&segs[0], &segs[1], &segs[2]], &mut merged), 3);
    }

    proptest! {
        #[test]
        fn coalesce_never_panics(a in proptest::collection::vec(any::<u8>(), 0..120), b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut out = Vec::new();
            prop_assert!(coalesce(&[&a, &b], &mut out) >= 1);
        }

        #[test]
        fn split_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut scratch = Vec::new();
            let _ = split(&b, &mut scratch, |_| {});
        }
    }
}
