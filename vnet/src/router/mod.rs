//! The virtual subnet of one buyer: address -> member table and the
//! isolation rules every packet passes before it is sent or delivered.
//!
//! Rules: a member sends only from its own assigned address, only to another
//! member's address inside the subnet ([`EgressPolicy::SubnetOnly`]); the
//! host's own address, its LAN, the internet, other buyers' subnets, IPv6,
//! multicast and limited broadcast are refused as `egress_denied`; the rest
//! (subnet broadcast, unknown members, malformed packets) are dropped and
//! counted per reason.

pub mod arp;
pub mod egress;
pub mod ipv4;
pub mod mtu;

use crate::keys::PeerId;
pub use egress::EgressPolicy;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Errors building a subnet or assigning addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// Subnet text is not `a.b.c.d/len` with len 8..=30.
    #[error("subnet {0:?} is not a.b.c.d/len with a prefix length between 8 and 30")]
    BadSubnet(String),
    /// The address lies outside the subnet, or is its network/broadcast address.
    #[error("address {addr} is not a host address of subnet {subnet}")]
    NotInSubnet {
        /// Offending address.
        addr: Ipv4Addr,
        /// The subnet.
        subnet: Subnet,
    },
    /// Two members were given the same address.
    #[error("address {0} is already assigned to another member")]
    AddressTaken(Ipv4Addr),
}

/// An IPv4 subnet such as 10.77.0.0/16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// A subnet from a network address and prefix length (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, RouterError> {
        if !(8..=30).contains(&prefix) {
            return Err(RouterError::BadSubnet(format!("{addr}/{prefix}")));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// Netmask as an address.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - self.prefix))
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The subnet's directed broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !(u32::MAX << (32 - self.prefix)))
    }

    /// Whether `a` is inside the subnet (including network and broadcast).
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & (u32::MAX << (32 - self.prefix)) == u32::from(self.network)
    }

    /// Whether `a` is a usable host address of the subnet.
    pub fn is_host(&self, a: Ipv4Addr) -> bool {
        self.contains(a) && a != self.network && a != self.broadcast()
    }
}

impl FromStr for Subnet {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Self, RouterError> {
        let bad = || RouterError::BadSubnet(s.to_owned());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        Subnet::new(a.parse().map_err(|_| bad())?, p.parse().map_err(|_| bad())?)
    }
}

impl TryFrom<String> for Subnet {
    type Error = RouterError;
    fn try_from(s: String) -> Result<Self, RouterError> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why a packet was dropped; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Not a well-formed IPv4 packet (IPv6 is not carried).
    NotIpv4,
    /// Inbound packet whose destination is outside the buyer's subnet
    /// (outbound ones are [`DropReason::EgressDenied`]).
    OutsideSubnet,
    /// Broadcast or multicast destination.
    Broadcast,
    /// Source address is not the sender's assigned address.
    SpoofedSource,
    /// No member has the destination address.
    UnknownDestination,
    /// Inbound packet addressed to someone other than this member.
    NotForUs,
    /// Datagram from a peer we do not know, or for a session we do not have.
    UnknownPeer,
    /// Malformed vnet message (bad type, truncated, oversize).
    Malformed,
    /// AEAD authentication or handshake verification failed.
    Forged,
    /// Counter already seen or too old.
    Replay,
    /// Handshake initiation with a stale timestamp.
    StaleHandshake,
    /// Inner packet larger than the MTU (an ICMP error went back).
    TooBig,
    /// No usable path or session and the queue was full.
    NoPath,
    /// Relay request while relaying is disabled or to an unknown member.
    RelayRefused,
    /// The local side (guest or TUN) sent somewhere its [`EgressPolicy`]
    /// forbids: outside the subnet, IPv6, multicast, limited broadcast, or
    /// ARP for an address outside the subnet.
    EgressDenied,
}

/// Number of [`DropReason`] variants.
pub const DROP_REASONS: usize = 15;

impl DropReason {
    /// All reasons, for reports.
    pub const ALL: [DropReason; DROP_REASONS] = [
        Self::NotIpv4,
        Self::OutsideSubnet,
        Self::Broadcast,
        Self::SpoofedSource,
        Self::UnknownDestination,
        Self::NotForUs,
        Self::UnknownPeer,
        Self::Malformed,
        Self::Forged,
        Self::Replay,
        Self::StaleHandshake,
        Self::TooBig,
        Self::NoPath,
        Self::RelayRefused,
        Self::EgressDenied,
    ];
}

/// Per-reason drop counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DROP_REASONS]);

impl DropCounters {
    /// Counts one drop.
    pub fn count(&mut self, r: DropReason) {
        self.0[r as usize] += 1;
    }

    /// Drops counted for `r`.
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize]
    }

    /// Non-zero counters keyed by reason, for status reports.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        DropReason::ALL
            .iter()
            .filter(|r| self.get(**r) > 0)
            .map(|r| {
                (
                    serde_json::to_value(r)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    self.get(*r),
                )
            })
            .collect()
    }
}

/// The address table of one member's view of the subnet.
#[derive(Debug, Clone)]
pub struct Router {
    subnet: Subnet,
    local: Ipv4Addr,
    by_addr: HashMap<Ipv4Addr, PeerId>,
    by_peer: HashMap<PeerId, Ipv4Addr>,
}

impl Router {
    /// A router for the member at `local` in `subnet`.
    pub fn new(subnet: Subnet, local: Ipv4Addr) -> Result<Self, RouterError> {
        if !subnet.is_host(local) {
            return Err(RouterError::NotInSubnet {
                addr: local,
                subnet,
            });
        }
        Ok(Self {
            subnet,
            local,
            by_addr: HashMap::new(),
            by_peer: HashMap::new(),
        })
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// This member's address.
    pub fn local(&self) -> Ipv4Addr {
        self.local
    }

    /// Assigns `addr` to `peer` (replacing the peer's previous address).
    pub fn insert(&mut self, peer: PeerId, addr: Ipv4Addr) -> Result<(), RouterError> {
        if !self.subnet.is_host(addr) {
            return Err(RouterError::NotInSubnet {
                addr,
                subnet: self.subnet,
            });
        }
        if addr == self.local || self.by_addr.get(&addr).is_some_and(|p| *p != peer) {
            return Err(RouterError::AddressTaken(addr));
        }
        self.remove(&peer);
        self.by_addr.insert(addr, peer);
        self.by_peer.insert(peer, addr);
        Ok(())
    }

    /// Forgets a member.
    pub fn remove(&mut self, peer: &PeerId) {
        if let Some(a) = self.by_peer.remove(peer) {
            self.by_addr.remove(&a);
        }
    }

    /// The address of a member.
    pub fn address_of(&self, peer: &PeerId) -> Option<Ipv4Addr> {
        self.by_peer.get(peer).copied()
    }

    fn check_dst(&self, dst: Ipv4Addr) -> Result<(), DropReason> {
        if dst.is_multicast() || dst.is_broadcast() || dst == self.subnet.broadcast() {
            return Err(DropReason::Broadcast);
        }
        if !self.subnet.contains(dst) {
            return Err(DropReason::OutsideSubnet);
        }
        Ok(())
    }

    /// Picks the member an outbound packet from our interface goes to,
    /// enforcing [`EgressPolicy::SubnetOnly`] (see [`egress::classify`]).
    pub fn route_outbound(&self, packet: &[u8]) -> Result<PeerId, DropReason> {
        let dst = egress::classify(self.subnet, self.local, packet)?;
        self.by_addr
            .get(&dst)
            .copied()
            .ok_or(DropReason::UnknownDestination)
    }

    /// Checks an inbound packet decrypted from `from` before delivery.
    pub fn check_inbound(&self, from: &PeerId, packet: &[u8]) -> Result<(), DropReason> {
        let h = ipv4::Header::parse(packet).map_err(|_| DropReason::NotIpv4)?;
        let Some(src) = self.by_peer.get(from) else {
            return Err(DropReason::UnknownPeer);
        };
        if h.src != *src {
            return Err(DropReason::SpoofedSource);
        }
        self.check_dst(h.dst)?;
        if h.dst != self.local {
            return Err(DropReason::NotForUs);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_utils {
    use super::ipv4;
    use std::net::Ipv4Addr;

    /// A valid IPv4/UDP packet with the given addresses and payload size.
    pub fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
        let total = 20 + 8 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let c = ipv4::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&5678u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        for (i, b) in p[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::udp_packet;
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn router() -> (Router, PeerId, PeerId) {
        let mut r = Router::new("10.77.0.0/16".parse().unwrap(), ip("10.77.0.1")).unwrap();
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        r.insert(a, ip("10.77.0.2")).unwrap();
        r.insert(b, ip("10.77.1.3")).unwrap();
        (r, a, b)
    }

    #[test]
    fn subnet_parses_and_rejects() {
        let s: Subnet = "10.77.3.4/16".parse().unwrap();
        assert_eq!(s.to_string(), "10.77.0.0/16");
        assert_eq!(s.broadcast(), ip("10.77.255.255"));
        assert!(
            s.is_host(ip("10.77.0.1"))
                && !s.is_host(ip("10.77.0.0"))
                && !s.is_host(ip("10.78.0.1"))
        );
        for bad in ["10.77.0.0", "10.77.0.0/31", "x/16", "10.77.0.0/4"] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(RouterError::BadSubnet(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn outbound_routes_members_and_drops_each_violation() {
        let (r, a, b) = router();
        let me = ip("10.77.0.1");
        assert_eq!(
            r.route_outbound(&udp_packet(me, ip("10.77.0.2"), 10)),
            Ok(a)
        );
        assert_eq!(
            r.route_outbound(&udp_packet(me, ip("10.77.1.3"), 10)),
            Ok(b)
        );
        assert_eq!(
            r.route_outbound(&udp_packet(me, ip("10.78.0.2"), 10)),
            Err(DropReason::EgressDenied)
        );
        assert_eq!(
            r.route_outbound(&udp_packet(me, ip("8.8.8.8"), 10)),
            Err(DropReason::EgressDenied)
        );
        assert_eq!(
            r.route_outbound(&udp_packet(me, ip("10.77.255.255"), 10)),
            Err(DropReason::Broadcast)
        );
        assert_eq!(
            r.route_outbound(&udp_packet(me, ip("255.255.255.255"), 10)),
            Err(DropReason::EgressDenied)
        );
        assert_eq!(
            r.route_outbound(&udp_packet(me, ip("224.0.0.1"), 10)),
            Err(DropReason::EgressDenied)
        );
        assert_eq!(
            r.route_outbound(&udp_packet(ip("10.77.0.9"), ip("10.77.0.2"), 10)),
            Err(DropReason::SpoofedSource)
        );
        assert_eq!(
            r.route_outbound(&udp_packet(me, ip("10.77.0.99"), 10)),
            Err(DropReason::UnknownDestination)
        );
        assert_eq!(r.route_outbound(&[0x60; 40]), Err(DropReason::EgressDenied));
        assert_eq!(r.route_outbound(&[0x45; 10]), Err(DropReason::NotIpv4));
    }

    #[test]
    fn inbound_requires_sender_address_and_our_destination() {
        let (r, a, b) = router();
        let me = ip("10.77.0.1");
        assert_eq!(
            r.check_inbound(&a, &udp_packet(ip("10.77.0.2"), me, 5)),
            Ok(())
        );
        assert_eq!(
            r.check_inbound(&a, &udp_packet(ip("10.77.1.3"), me, 5)),
            Err(DropReason::SpoofedSource)
        );
        assert_eq!(
            r.check_inbound(&b, &udp_packet(ip("10.77.1.3"), ip("10.77.0.2"), 5)),
            Err(DropReason::NotForUs)
        );
        assert_eq!(
            r.check_inbound(&b, &udp_packet(ip("10.77.1.3"), ip("10.77.255.255"), 5)),
            Err(DropReason::Broadcast)
        );
        assert_eq!(
            r.check_inbound(&b, &udp_packet(ip("10.77.1.3"), ip("192.168.1.1"), 5)),
            Err(DropReason::OutsideSubnet)
        );
        assert_eq!(
            r.check_inbound(&PeerId([9; 32]), &udp_packet(ip("10.77.0.2"), me, 5)),
            Err(DropReason::UnknownPeer)
        );
    }

    #[test]
    fn addresses_must_be_unique_hosts() {
        let (mut r, a, b) = router();
        assert_eq!(
            r.insert(b, ip("10.77.0.2")),
            Err(RouterError::AddressTaken(ip("10.77.0.2")))
        );
        assert_eq!(
            r.insert(b, ip("10.77.0.1")),
            Err(RouterError::AddressTaken(ip("10.77.0.1")))
        );
        assert!(matches!(
            r.insert(b, ip("10.77.255.255")),
            Err(RouterError::NotInSubnet { .. })
        ));
        r.insert(a, ip("10.77.0.5")).unwrap();
        assert_eq!(r.address_of(&a), Some(ip("10.77.0.5")));
        r.insert(b, ip("10.77.0.2")).unwrap();
        r.remove(&a);
        assert_eq!(r.address_of(&a), None);
    }
}
