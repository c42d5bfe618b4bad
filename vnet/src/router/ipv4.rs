//! Just enough IPv4 parsing for routing decisions, and the Internet checksum.

use std::net::Ipv4Addr;

/// Errors parsing an IPv4 header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Error {
    /// Fewer bytes than a header, or than the header claims.
    #[error("IPv4 packet of {len} bytes is truncated")]
    Truncated {
        /// Received length.
        len: usize,
    },
    /// The version nibble is not 4.
    #[error("IP version {0} is not 4")]
    Version(u8),
    /// Header length field below 20 bytes or total length below header length.
    #[error("IPv4 header length {ihl} / total length {total} are inconsistent")]
    BadLength {
        /// Header length in bytes.
        ihl: usize,
        /// Total length field.
        total: usize,
    },
}

/// The routing-relevant fields of an IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Header length in bytes.
    pub ihl: usize,
    /// Total length field.
    pub total_len: usize,
    /// Don't-fragment flag.
    pub dont_fragment: bool,
    /// Fragment offset is zero (first or only fragment).
    pub first_fragment: bool,
    /// Protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub protocol: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
}

impl Header {
    /// Parses and sanity-checks the header; never panics.
    pub fn parse(p: &[u8]) -> Result<Self, Ipv4Error> {
        if p.len() < 20 {
            return Err(Ipv4Error::Truncated { len: p.len() });
        }
        if p[0] >> 4 != 4 {
            return Err(Ipv4Error::Version(p[0] >> 4));
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if ihl < 20 || total < ihl {
            return Err(Ipv4Error::BadLength { ihl, total });
        }
        if p.len() < total {
            return Err(Ipv4Error::Truncated { len: p.len() });
        }
        Ok(Self {
            ihl,
            total_len: total,
            dont_fragment: p[6] & 0x40 != 0,
            first_fragment: u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0,
            protocol: p[9],
            src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
            dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        })
    }
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn checksum_of_valid_header_verifies_to_zero() {
        let p = crate::router::test_utils::udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            3,
        );
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(Header::parse(&p).unwrap().protocol, 17);
    }

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(h) = Header::parse(&b) {
                prop_assert!(h.total_len <= b.len() && h.ihl >= 20);
            }
        }
    }
}
