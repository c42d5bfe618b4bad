//! Keeping inner packets within the vnet MTU: ICMP "fragmentation needed"
//! (RFC 792 / RFC 1191) for oversize packets, and TCP MSS clamping so TCP
//! never produces them in the first place.

use super::ipv4::{checksum, Header};

/// Writes into `out` an ICMP destination-unreachable/fragmentation-needed
/// reply to `original`, advertising `mtu`. Returns false (writing nothing)
/// for packets that must not get ICMP errors (ICMP errors themselves,
/// non-first fragments, unparsable packets).
pub fn fragmentation_needed(original: &[u8], mtu: u16, out: &mut Vec<u8>) -> bool {
    let Ok(h) = Header::parse(original) else {
        return false;
    };
    if !h.first_fragment {
        return false;
    }
    if h.protocol == 1
        && original
            .get(h.ihl)
            .is_some_and(|t| ![0u8, 8, 13, 15, 17].contains(t))
    {
        return false; // never answer an ICMP error with an ICMP error
    }
    let quoted = &original[..(h.ihl + 8).min(h.total_len)];
    let total = 20 + 8 + quoted.len();
    out.clear();
    out.resize(total, 0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    // From the unreachable destination: the kernel takes PMTU hints from any
    // source, and the destination is the only subnet address we may speak for.
    out[12..16].copy_from_slice(&h.dst.octets());
    out[16..20].copy_from_slice(&h.src.octets());
    let c = checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out[20] = 3;
    out[21] = 4;
    out[26..28].copy_from_slice(&mtu.to_be_bytes());
    out[28..].copy_from_slice(quoted);
    let c = checksum(&out[20..]);
    out[22..24].copy_from_slice(&c.to_be_bytes());
    true
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Lowers the MSS option of a TCP SYN to `max_mss`, fixing the TCP checksum
/// incrementally (RFC 1624). Returns true if the packet was changed.
pub fn clamp_mss(packet: &mut [u8], max_mss: u16) -> bool {
    let Ok(h) = Header::parse(packet) else {
        return false;
    };
    if h.protocol != 6 || !h.first_fragment {
        return false;
    }
    let tcp = &mut packet[h.ihl..h.total_len];
    if tcp.len() < 20 || tcp[13] & 0x02 == 0 {
        return false;
    }
    let data_off = usize::from(tcp[12] >> 4) * 4;
    if data_off < 20 || data_off > tcp.len() {
        return false;
    }
    let mut i = 20;
    while i < data_off {
        match tcp[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { break };
                let len = usize::from(len);
                if len < 2 || i + len > data_off {
                    break;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    let sum = u16::from_be_bytes([tcp[16], tcp[17]]);
                    // HC' = ~(~HC + ~m + m')
                    let new = !fold(u32::from(!sum) + u32::from(!old) + u32::from(max_mss));
                    tcp[16..18].copy_from_slice(&new.to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::test_utils::udp_packet;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn tcp_checksum(p: &[u8]) -> u16 {
        let h = Header::parse(p).unwrap();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&h.src.octets());
        pseudo.extend_from_slice(&h.dst.octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((h.total_len - h.ihl) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[h.ihl..h.total_len]);
        checksum(&pseudo)
    }

    fn syn(mss: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&48u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 77, 0, 1]);
        p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        let t = &mut p[20..];
        t[12] = 7 << 4;
        t[13] = 0x02;
        t[20..24].copy_from_slice(&[1, 1, 4, 2]); // nop nop sackok
        t[24..28].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        let c = tcp_checksum(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        assert_eq!(tcp_checksum(&p), 0);
        p
    }

    #[test]
    fn syn_mss_is_clamped_with_valid_checksum() {
        let mut p = syn(1460);
        assert!(clamp_mss(&mut p, 1300));
        assert_eq!(u16::from_be_bytes([p[46], p[47]]), 1300);
        assert_eq!(tcp_checksum(&p), 0);
        assert!(!clamp_mss(&mut p, 1300));
        let mut small = syn(1200);
        assert!(!clamp_mss(&mut small, 1300));
    }

    #[test]
    fn fragmentation_needed_quotes_header_and_reports_mtu() {
        let src = Ipv4Addr::new(10, 77, 0, 1);
        let dst = Ipv4Addr::new(10, 77, 0, 2);
        let big = udp_packet(src, dst, 2000);
        let mut out = Vec::new();
        assert!(fragmentation_needed(&big, 1340, &mut out));
        let h = Header::parse(&out).unwrap();
        assert_eq!((h.src, h.dst, h.protocol), (dst, src, 1));
        assert_eq!((out[20], out[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1340);
        assert_eq!(checksum(&out[20..]), 0);
        assert_eq!(&out[28..], &big[..28]);
        // ...but never for an ICMP error.
        let mut again = Vec::new();
        assert!(!fragmentation_needed(&out, 1340, &mut again));
    }

    proptest! {
        #[test]
        fn helpers_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut out = Vec::new();
            let _ = fragmentation_needed(&b, 1340, &mut out);
            let _ = clamp_mss(&mut b, 1300);
        }
    }
}
