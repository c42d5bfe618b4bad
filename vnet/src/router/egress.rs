//! Egress isolation: what a member's local side (a lease's guest, or a TUN)
//! may send into the vnet. A guest reaches the other members of its buyer's
//! subnet and nothing else: not the seller's own address, not its LAN, not the
//! internet, not another buyer's subnet. Such packets are never sealed, only
//! counted as [`DropReason::EgressDenied`].

use super::{ipv4, DropReason, Subnet};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Where a node's local side may send, set per node in
/// [`crate::NodeConfig::egress`].
///
/// Every lease's node uses [`EgressPolicy::SubnetOnly`]. A wider policy for
/// the buyer's own host (an exit to its LAN, say) would be a new variant here,
/// so each node's rule stays one explicit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EgressPolicy {
    /// Unicast IPv4 to addresses inside the buyer's subnet, from the node's
    /// own address; everything else is denied.
    #[default]
    SubnetOnly,
}

/// Checks an outbound packet from the local side of the member at `local`
/// in `subnet` against [`EgressPolicy::SubnetOnly`] and returns its
/// destination, which still has to be a member's address.
///
/// Refusals: IPv6 (the vnet carries no IPv6, so no IPv6 destination is inside
/// it), destinations outside the subnet, multicast and limited broadcast are
/// [`DropReason::EgressDenied`]; the subnet's own broadcast address is
/// [`DropReason::Broadcast`] (inside, but only unicast is carried); a source
/// other than `local` is [`DropReason::SpoofedSource`]; anything unparsable
/// is [`DropReason::NotIpv4`].
pub fn classify(subnet: Subnet, local: Ipv4Addr, packet: &[u8]) -> Result<Ipv4Addr, DropReason> {
    if packet.first().is_some_and(|b| b >> 4 == 6) {
        return Err(DropReason::EgressDenied);
    }
    let h = ipv4::Header::parse(packet).map_err(|_| DropReason::NotIpv4)?;
    if h.dst.is_multicast() || h.dst.is_broadcast() || !subnet.contains(h.dst) {
        return Err(DropReason::EgressDenied);
    }
    if h.dst == subnet.broadcast() {
        return Err(DropReason::Broadcast);
    }
    if h.src != local {
        return Err(DropReason::SpoofedSource);
    }
    Ok(h.dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::test_utils::udp_packet;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 5);

    fn subnet() -> Subnet {
        "10.77.0.0/16".parse().unwrap()
    }

    fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn every_destination_class_outside_the_subnet_is_denied() {
        let denied = [
            ("seller's own address", "192.168.1.10"),
            ("seller's LAN", "192.168.1.1"),
            ("seller's LAN broadcast", "192.168.1.255"),
            ("other private range", "172.16.0.1"),
            ("another buyer's subnet", "10.78.0.2"),
            ("just below the subnet", "10.76.255.255"),
            ("just above the subnet", "10.78.0.0"),
            ("the internet", "8.8.8.8"),
            ("the internet", "1.1.1.1"),
            ("loopback", "127.0.0.1"),
            ("unspecified", "0.0.0.0"),
            ("link-local / cloud metadata", "169.254.169.254"),
            ("carrier-grade NAT", "100.64.0.1"),
            ("link-local multicast", "224.0.0.1"),
            ("SSDP multicast", "239.255.255.250"),
            ("limited broadcast", "255.255.255.255"),
            ("reserved class E", "240.0.0.1"),
        ];
        for (class, dst) in denied {
            let p = udp_packet(ME, dst.parse().unwrap(), 16);
            assert_eq!(
                classify(subnet(), ME, &p),
                Err(DropReason::EgressDenied),
                "{class} ({dst})"
            );
        }
    }

    #[test]
    fn ipv6_of_every_kind_is_denied() {
        let me6: Ipv6Addr = "fe80::1".parse().unwrap();
        for dst in [
            "::1",
            "fe80::2",
            "ff02::1",
            "ff02::2",
            "2001:db8::1",
            "::ffff:10.77.0.2",
            "::",
        ] {
            let p = ipv6_packet(me6, dst.parse().unwrap());
            assert_eq!(
                classify(subnet(), ME, &p),
                Err(DropReason::EgressDenied),
                "{dst}"
            );
        }
        // Even a bare version nibble: never parsed as IPv4.
        assert_eq!(
            classify(subnet(), ME, &[0x60]),
            Err(DropReason::EgressDenied)
        );
    }

    #[test]
    fn inside_the_subnet_only_unicast_from_our_own_address_passes() {
        for dst in ["10.77.0.1", "10.77.0.2", "10.77.1.3", "10.77.255.254"] {
            let dst: Ipv4Addr = dst.parse().unwrap();
            assert_eq!(classify(subnet(), ME, &udp_packet(ME, dst, 1)), Ok(dst));
        }
        assert_eq!(
            classify(
                subnet(),
                ME,
                &udp_packet(ME, "10.77.255.255".parse().unwrap(), 1)
            ),
            Err(DropReason::Broadcast)
        );
        let member: Ipv4Addr = "10.77.0.2".parse().unwrap();
        for src in [
            "10.77.0.2",
            "10.77.0.6",
            "0.0.0.0",
            "192.168.1.10",
            "10.78.0.5",
            "255.255.255.255",
        ] {
            let p = udp_packet(src.parse().unwrap(), member, 1);
            assert_eq!(
                classify(subnet(), ME, &p),
                Err(DropReason::SpoofedSource),
                "{src}"
            );
        }
    }

    #[test]
    fn malformed_packets_are_not_ipv4() {
        for p in [&[][..], &[0x45; 10], &[0x00; 40], &[0x50; 40]] {
            assert_eq!(classify(subnet(), ME, p), Err(DropReason::NotIpv4));
        }
    }

    proptest! {
        #[test]
        fn passes_exactly_unicast_subnet_traffic_from_us(
            src in any::<u32>(), dst in any::<u32>(), own_src in any::<bool>()
        ) {
            let src = if own_src { ME } else { Ipv4Addr::from(src) };
            let dst = Ipv4Addr::from(dst);
            let got = classify(subnet(), ME, &udp_packet(src, dst, 4));
            let allowed = subnet().contains(dst) && dst != subnet().broadcast() && src == ME;
            prop_assert_eq!(got.is_ok(), allowed);
            if !subnet().contains(dst) {
                prop_assert_eq!(got, Err(DropReason::EgressDenied));
            }
        }
    }
}
