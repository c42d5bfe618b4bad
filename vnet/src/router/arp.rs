//! The Ethernet side for guests on virtio-net: answers ARP for every subnet
//! address with one fixed virtual MAC, so guest frames become IP packets and
//! IP packets become frames, with no L2 crossing the vnet.

use super::Subnet;
use std::net::Ipv4Addr;

/// The MAC every subnet address resolves to (locally administered, unicast).
pub const VIRTUAL_MAC: [u8; 6] = [0x02, 0x63, 0x70, 0x75, 0x73, 0x68];
/// Ethernet header length.
pub const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

/// What to do with a frame from the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameAction<'a> {
    /// Send this ARP reply frame back to the guest (written into the out buffer).
    Reply,
    /// Route this IPv4 packet (the frame's payload).
    Ip(&'a [u8]),
    /// Refused by egress isolation: ARP for an address outside the subnet,
    /// or a protocol the vnet does not carry (IPv6, VLAN tags, ...). The
    /// caller counts it as [`super::DropReason::EgressDenied`].
    Denied,
    /// Nothing to do (junk, ARP replies, gratuitous ARP, address probes).
    Ignore,
}

/// Per-guest Ethernet adapter; learns the guest's MAC from its frames.
#[derive(Debug, Clone)]
pub struct EthernetAdapter {
    subnet: Subnet,
    guest_mac: Option<[u8; 6]>,
}

impl EthernetAdapter {
    /// An adapter for a guest in `subnet`.
    pub fn new(subnet: Subnet) -> Self {
        Self {
            subnet,
            guest_mac: None,
        }
    }

    /// An adapter for a guest whose NIC's MAC is known up front (the VMM
    /// assigned it), so packets reach a guest that has not sent anything
    /// yet; a guest that changes its MAC is learnt again from its frames.
    pub fn with_guest_mac(subnet: Subnet, mac: [u8; 6]) -> Self {
        Self {
            subnet,
            guest_mac: (mac[0] & 1 == 0).then_some(mac),
        }
    }

    /// The guest MAC learnt so far.
    pub fn guest_mac(&self) -> Option<[u8; 6]> {
        self.guest_mac
    }

    /// Handles one frame from the guest; ARP replies are written to `reply`.
    pub fn handle_frame<'a>(&mut self, frame: &'a [u8], reply: &mut Vec<u8>) -> FrameAction<'a> {
        if frame.len() < ETH_HEADER_LEN {
            return FrameAction::Ignore;
        }
        let mut src = [0u8; 6];
        src.copy_from_slice(&frame[6..12]);
        if src[0] & 1 != 0 {
            return FrameAction::Ignore; // multicast source: invalid
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let payload = &frame[ETH_HEADER_LEN..];
        match ethertype {
            ETHERTYPE_IPV4 => {
                self.guest_mac = Some(src);
                FrameAction::Ip(payload)
            }
            ETHERTYPE_ARP => self.handle_arp(src, payload, reply),
            _ => FrameAction::Denied,
        }
    }

    fn handle_arp(&mut self, src: [u8; 6], a: &[u8], reply: &mut Vec<u8>) -> FrameAction<'static> {
        // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request)
        if a.len() < 28 || a[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
            return FrameAction::Ignore;
        }
        let sender_ip = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
        let target_ip = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
        if target_ip == sender_ip || sender_ip.is_unspecified() {
            // Gratuitous ARP, or a duplicate address probe (RFC 5227): no
            // one else has the guest's address, so stay silent.
            return FrameAction::Ignore;
        }
        if !self.subnet.is_host(target_ip) {
            return FrameAction::Denied;
        }
        self.guest_mac = Some(src);
        reply.clear();
        reply.extend_from_slice(&src);
        reply.extend_from_slice(&VIRTUAL_MAC);
        reply.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        reply.extend_from_slice(&VIRTUAL_MAC);
        reply.extend_from_slice(&target_ip.octets());
        reply.extend_from_slice(&a[8..14]);
        reply.extend_from_slice(&sender_ip.octets());
        FrameAction::Reply
    }

    /// Wraps an IP packet for the guest into `out`; false before the guest's MAC is known.
    pub fn wrap_ip(&self, ip_packet: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(mac) = self.guest_mac else {
            return false;
        };
        out.clear();
        out.extend_from_slice(&mac);
        out.extend_from_slice(&VIRTUAL_MAC);
        out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        out.extend_from_slice(ip_packet);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GUEST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&GUEST);
        f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&GUEST);
        f.extend_from_slice(&[10, 77, 0, 5]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    }

    #[test]
    fn a_preset_mac_reaches_a_silent_guest_and_multicast_is_refused() {
        let subnet: Subnet = "10.77.0.0/16".parse().unwrap();
        let mut out = Vec::new();
        assert!(!EthernetAdapter::new(subnet).wrap_ip(&[0x45; 20], &mut out));
        let ad = EthernetAdapter::with_guest_mac(subnet, GUEST);
        assert!(ad.wrap_ip(&[0x45; 20], &mut out));
        assert_eq!(out[..6], GUEST);
        let multicast = EthernetAdapter::with_guest_mac(subnet, [1, 0, 0x5e, 0, 0, 1]);
        assert_eq!(multicast.guest_mac(), None);
    }

    #[test]
    fn arp_for_subnet_address_gets_virtual_mac() {
        let mut ad = EthernetAdapter::new("10.77.0.0/16".parse().unwrap());
        let mut reply = Vec::new();
        assert_eq!(
            ad.handle_frame(&arp_request([10, 77, 0, 9]), &mut reply),
            FrameAction::Reply
        );
        assert_eq!(&reply[0..6], &GUEST);
        assert_eq!(&reply[22..28], &VIRTUAL_MAC);
        assert_eq!(&reply[28..32], &[10, 77, 0, 9]);
        assert_eq!(&reply[38..42], &[10, 77, 0, 5]);
        assert_eq!(ad.guest_mac(), Some(GUEST));
        for outside in [
            [10, 78, 0, 9],
            [192, 168, 1, 1],
            [10, 77, 255, 255],
            [8, 8, 8, 8],
        ] {
            assert_eq!(
                ad.handle_frame(&arp_request(outside), &mut reply),
                FrameAction::Denied,
                "{outside:?}"
            );
        }
        assert_eq!(
            ad.handle_frame(&arp_request([10, 77, 0, 5]), &mut reply),
            FrameAction::Ignore
        );
    }

    #[test]
    fn address_probes_get_no_answer_and_other_protocols_are_denied() {
        let mut ad = EthernetAdapter::new("10.77.0.0/16".parse().unwrap());
        let mut probe = arp_request([10, 77, 0, 5]);
        probe[28..32].copy_from_slice(&[0, 0, 0, 0]);
        let mut reply = Vec::new();
        assert_eq!(ad.handle_frame(&probe, &mut reply), FrameAction::Ignore);
        for ethertype in [[0x86, 0xdd], [0x81, 0x00], [0x88, 0xcc]] {
            let mut f = VIRTUAL_MAC.to_vec();
            f.extend_from_slice(&GUEST);
            f.extend_from_slice(&ethertype);
            f.extend_from_slice(&[0x60; 40]);
            assert_eq!(ad.handle_frame(&f, &mut reply), FrameAction::Denied);
        }
    }

    #[test]
    fn ip_frames_unwrap_and_wrap() {
        let mut ad = EthernetAdapter::new("10.77.0.0/16".parse().unwrap());
        let mut out = Vec::new();
        assert!(!ad.wrap_ip(&[0x45; 20], &mut out));
        let mut f = VIRTUAL_MAC.to_vec();
        f.extend_from_slice(&GUEST);
        f.extend_from_slice(&[8, 0]);
        f.extend_from_slice(&[0x45; 20]);
        assert_eq!(ad.handle_frame(&f, &mut out), FrameAction::Ip(&[0x45; 20]));
        assert!(ad.wrap_ip(&[0x45; 20], &mut out));
        assert_eq!(&out[0..6], &GUEST);
        assert_eq!(&out[14..], &[0x45; 20]);
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut ad = EthernetAdapter::new("10.77.0.0/16".parse().unwrap());
            let mut out = Vec::new();
            let _ = ad.handle_frame(&b, &mut out);
        }
    }
}
