//! Rendezvous for the buyers' virtual networks: one subnet per buyer, whose
//! members are the buyer's host and one node per running lease.
//!
//! Sans-IO: the server glue tells the registry who joined or left (after it
//! authenticated them and checked the lease belongs to them) and pushes the
//! views the registry returns. A member's key is only ever put in views of
//! its own buyer's network, so another buyer never learns it.
//!
//! The relay is the buyer's host; while it is away, the first lease node
//! that registered from an address it holds itself (no NAT) relays.
//!
//! Subnets are derived, not stored: `10.a.b.0/24` with `a.b` from a hash of
//! the buyer's account name. Two buyers may hash to the same /24; that is
//! harmless because members only accept peers (keys) from their own view.

use cpushare_proto::msg::{VnetMember, VnetView, MAX_VNET_ENDPOINTS};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Prefix length of every buyer's subnet.
pub const PREFIX: u8 = 24;
/// The buyer host's address inside its subnet (`.1`).
const HOST_OCTET: u8 = 1;

/// Who a member is inside one buyer's network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberId {
    /// The buyer's own machine (`cpushare net up`); it also relays.
    Host,
    /// The node a seller runs for this lease.
    Lease(String),
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    /// Too many endpoint candidates.
    #[error("{n} endpoint candidates registered; at most {max} are allowed")]
    TooManyEndpoints {
        /// Candidates sent.
        n: usize,
        /// Limit.
        max: usize,
    },
    /// A candidate no peer could ever send to.
    #[error("endpoint candidate {0} is not a unicast address with a port")]
    BadEndpoint(SocketAddr),
    /// The all-zero key (a low-order point) cannot authenticate anyone.
    #[error("the all-zero vnet key is not a valid key")]
    ZeroKey,
    /// Another member (of any buyer) already registered this key.
    #[error(
        "this vnet key is already registered by another member; generate a fresh key per node"
    )]
    KeyInUse,
    /// Every address of the subnet is taken.
    #[error("the virtual network of `{buyer}` has no free address left")]
    Full {
        /// Buyer account.
        buyer: String,
    },
}

#[derive(Debug, Clone)]
struct Member {
    key: [u8; 32],
    address: Ipv4Addr,
    endpoints: Vec<SocketAddr>,
    /// Registered from an address it holds itself: no NAT in front of it,
    /// so every other member can reach it and it can relay.
    public: bool,
}

#[derive(Debug, Default)]
struct Net {
    members: BTreeMap<MemberId, Member>,
}

/// Every buyer's network and the keys bound to members.
#[derive(Debug, Default)]
pub struct Registry {
    nets: HashMap<String, Net>,
    keys: HashMap<[u8; 32], (String, MemberId)>,
}

/// A view to push to one member of `buyer`'s network.
pub type Update = (MemberId, VnetView);

/// The subnet (network address) of `buyer`'s virtual network.
pub fn subnet_of(buyer: &str) -> Ipv4Addr {
    let h = Sha256::digest(format!("cpushare vnet subnet v1\0{buyer}").as_bytes());
    Ipv4Addr::new(10, h[0], h[1], 0)
}

fn check_endpoint(e: &SocketAddr) -> Result<(), VnetError> {
    let bad = e.port() == 0
        || match e.ip() {
            IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
        };
    if bad {
        Err(VnetError::BadEndpoint(*e))
    } else {
        Ok(())
    }
}

/// The registered candidates plus the server-reflexive guesses: the address
/// the broker observed on the member's control connection with each
/// registered port (NATs that preserve ports map the vnet socket there).
fn candidates(local: &[SocketAddr], observed: IpAddr) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(local.len() + 1);
    for e in local {
        let reflexive = SocketAddr::new(observed, e.port());
        for c in [reflexive, *e] {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or re-registers) member `id` of `buyer`'s network with
    /// `key` and its local `endpoints`, seen by the broker from `observed`.
    /// Returns the views every member of that network must now get.
    pub fn join(
        &mut self,
        buyer: &str,
        id: MemberId,
        key: [u8; 32],
        endpoints: &[SocketAddr],
        observed: IpAddr,
    ) -> Result<Vec<Update>, VnetError> {
        if endpoints.len() > MAX_VNET_ENDPOINTS {
            return Err(VnetError::TooManyEndpoints {
                n: endpoints.len(),
                max: MAX_VNET_ENDPOINTS,
            });
        }
        endpoints.iter().try_for_each(check_endpoint)?;
        if key == [0; 32] {
            return Err(VnetError::ZeroKey);
        }
        if let Some(owner) = self.keys.get(&key) {
            if owner.0 != buyer || owner.1 != id {
                return Err(VnetError::KeyInUse);
            }
        }
        let net = self.nets.entry(buyer.to_string()).or_default();
        let address = match net.members.get(&id) {
            Some(m) => m.address,
            None => Self::free_address(buyer, net, &id)?,
        };
        if let Some(old) = net.members.insert(
            id.clone(),
            Member {
                key,
                address,
                endpoints: candidates(endpoints, observed),
                public: endpoints.iter().any(|e| e.ip() == observed),
            },
        ) {
            if old.key != key {
                self.keys.remove(&old.key);
            }
        }
        self.keys.insert(key, (buyer.to_string(), id));
        Ok(self.views(buyer))
    }

    fn free_address(buyer: &str, net: &Net, id: &MemberId) -> Result<Ipv4Addr, VnetError> {
        let base = subnet_of(buyer).octets();
        let at = |last: u8| Ipv4Addr::new(base[0], base[1], base[2], last);
        if *id == MemberId::Host {
            return Ok(at(HOST_OCTET));
        }
        (HOST_OCTET + 1..=254)
            .map(at)
            .find(|a| net.members.values().all(|m| m.address != *a))
            .ok_or_else(|| VnetError::Full {
                buyer: buyer.to_string(),
            })
    }

    /// Removes member `id` of `buyer`'s network; returns the views the
    /// remaining members must get (none if it was not a member).
    pub fn leave(&mut self, buyer: &str, id: &MemberId) -> Vec<Update> {
        let Some(net) = self.nets.get_mut(buyer) else {
            return Vec::new();
        };
        let Some(old) = net.members.remove(id) else {
            return Vec::new();
        };
        self.keys.remove(&old.key);
        if net.members.is_empty() {
            self.nets.remove(buyer);
            return Vec::new();
        }
        self.views(buyer)
    }

    /// The current view of every member of `buyer`'s network.
    pub fn views(&self, buyer: &str) -> Vec<Update> {
        let Some(net) = self.nets.get(buyer) else {
            return Vec::new();
        };
        // The buyer's host relays; without it, the first lease node that is
        // not behind a NAT does.
        let host = net
            .members
            .get(&MemberId::Host)
            .map(|m| (MemberId::Host, m.key));
        let public = net
            .members
            .iter()
            .filter(|(id, m)| m.public && **id != MemberId::Host)
            .map(|(id, m)| (id.clone(), m.key))
            .next();
        let relay = host.or(public);
        net.members
            .iter()
            .map(|(id, me)| {
                let peers = net
                    .members
                    .iter()
                    .filter(|(other, _)| *other != id)
                    .map(|(other, m)| VnetMember {
                        address: m.address,
                        key: m.key,
                        lease: match other {
                            MemberId::Host => None,
                            MemberId::Lease(l) => Some(l.clone()),
                        },
                        endpoints: m.endpoints.clone(),
                    })
                    .collect();
                let view = VnetView {
                    subnet: subnet_of(buyer),
                    prefix: PREFIX,
                    address: me.address,
                    relay: relay
                        .as_ref()
                        .filter(|(relay_id, _)| relay_id != id)
                        .map(|(_, key)| *key),
                    peers,
                };
                (id.clone(), view)
            })
            .collect()
    }

    /// Members of `buyer`'s network.
    pub fn members(&self, buyer: &str) -> usize {
        self.nets.get(buyer).map_or(0, |n| n.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lease(l: &str) -> MemberId {
        MemberId::Lease(l.into())
    }

    #[test]
    fn host_is_dot_one_leases_get_the_lowest_free_address() {
        let mut r = Registry::new();
        let net = subnet_of("alice").octets();
        r.join("alice", lease("K-1"), [1; 32], &[], ip("1.1.1.1"))
            .unwrap();
        let u = r
            .join("alice", MemberId::Host, [2; 32], &[], ip("1.1.1.2"))
            .unwrap();
        let host = u.iter().find(|(id, _)| *id == MemberId::Host).unwrap();
        assert_eq!(host.1.address.octets()[3], 1);
        assert_eq!(host.1.address.octets()[..3], net[..3]);
        assert_eq!(host.1.relay, None, "the host relays; it has no relay");
        r.join("alice", lease("K-2"), [3; 32], &[], ip("1.1.1.3"))
            .unwrap();
        r.leave("alice", &lease("K-1"));
        let u = r
            .join("alice", lease("K-3"), [4; 32], &[], ip("1.1.1.4"))
            .unwrap();
        let k3 = u.iter().find(|(id, _)| *id == lease("K-3")).unwrap();
        assert_eq!(k3.1.address.octets()[3], 2, "K-1's address is reused");
        assert_eq!(k3.1.relay, Some([2; 32]));
        assert_eq!(k3.1.peers.len(), 2);
    }

    #[test]
    fn every_member_gets_every_other_member_with_reflexive_candidates() {
        let mut r = Registry::new();
        r.join(
            "alice",
            MemberId::Host,
            [2; 32],
            &[ep("192.168.1.5:4000")],
            ip("203.0.113.9"),
        )
        .unwrap();
        let u = r
            .join(
                "alice",
                lease("K-1"),
                [1; 32],
                &[ep("10.9.0.2:5000")],
                ip("198.51.100.7"),
            )
            .unwrap();
        assert_eq!(u.len(), 2);
        let (_, host_view) = u.iter().find(|(id, _)| *id == MemberId::Host).unwrap();
        assert_eq!(host_view.peers.len(), 1);
        let p = &host_view.peers[0];
        assert_eq!(p.key, [1; 32]);
        assert_eq!(p.lease.as_deref(), Some("K-1"));
        assert_eq!(
            p.endpoints,
            vec![ep("198.51.100.7:5000"), ep("10.9.0.2:5000")]
        );
        assert!(host_view.peers.iter().all(|p| p.key != [2; 32]));
    }

    #[test]
    fn other_buyers_never_see_a_key() {
        let mut r = Registry::new();
        r.join("alice", MemberId::Host, [2; 32], &[], ip("1.1.1.1"))
            .unwrap();
        r.join("alice", lease("K-1"), [1; 32], &[], ip("1.1.1.1"))
            .unwrap();
        let u = r
            .join("mallory", MemberId::Host, [9; 32], &[], ip("1.1.1.9"))
            .unwrap();
        assert_eq!(u.len(), 1, "only mallory's own member is told");
        assert!(u[0].1.peers.is_empty());
        for (_, v) in r.views("alice") {
            assert!(v.peers.iter().all(|p| p.key != [9; 32]));
        }
        assert_ne!(subnet_of("alice"), subnet_of("mallory"));
    }

    #[test]
    fn without_the_host_a_lease_without_nat_relays_for_the_others() {
        let mut r = Registry::new();
        r.join("a", MemberId::Host, [1; 32], &[], ip("1.1.1.1"))
            .unwrap();
        // K-1 is behind a NAT (observed address is not its own), K-2 is not.
        r.join(
            "a",
            lease("K-1"),
            [2; 32],
            &[ep("192.168.1.2:7")],
            ip("5.5.5.5"),
        )
        .unwrap();
        r.join(
            "a",
            lease("K-2"),
            [3; 32],
            &[ep("6.6.6.6:7")],
            ip("6.6.6.6"),
        )
        .unwrap();
        for (_, v) in r
            .views("a")
            .into_iter()
            .filter(|(id, _)| *id != MemberId::Host)
        {
            assert_eq!(v.relay, Some([1; 32]), "the host relays while it is there");
        }
        let u = r.leave("a", &MemberId::Host);
        let relay_of = |id: &str| u.iter().find(|(m, _)| *m == lease(id)).unwrap().1.relay;
        assert_eq!(relay_of("K-1"), Some([3; 32]));
        assert_eq!(relay_of("K-2"), None, "no relay for the relay itself");
        r.leave("a", &lease("K-2"));
        assert_eq!(r.views("a")[0].1.relay, None, "nobody left to relay");
    }

    #[test]
    fn a_key_cannot_be_claimed_twice_but_a_member_may_re_register() {
        let mut r = Registry::new();
        r.join("alice", lease("K-1"), [1; 32], &[], ip("1.1.1.1"))
            .unwrap();
        assert_eq!(
            r.join("bob", MemberId::Host, [1; 32], &[], ip("1.1.1.1")),
            Err(VnetError::KeyInUse)
        );
        assert_eq!(
            r.join("alice", lease("K-2"), [1; 32], &[], ip("1.1.1.1")),
            Err(VnetError::KeyInUse)
        );
        let u = r
            .join(
                "alice",
                lease("K-1"),
                [5; 32],
                &[ep("10.0.0.1:1")],
                ip("1.1.1.1"),
            )
            .unwrap();
        assert_eq!(u[0].1.address.octets()[3], 2, "address kept");
        // The old key is free again.
        r.join("bob", MemberId::Host, [1; 32], &[], ip("1.1.1.1"))
            .unwrap();
    }

    #[test]
    fn bad_registrations_are_refused_by_name() {
        let mut r = Registry::new();
        let many: Vec<SocketAddr> = (1..=17).map(|p| ep(&format!("10.0.0.1:{p}"))).collect();
        assert!(matches!(
            r.join("a", MemberId::Host, [1; 32], &many, ip("1.1.1.1")),
            Err(VnetError::TooManyEndpoints { n: 17, .. })
        ));
        for bad in [
            "0.0.0.0:5",
            "10.0.0.1:0",
            "224.0.0.1:5",
            "255.255.255.255:5",
        ] {
            assert_eq!(
                r.join("a", MemberId::Host, [1; 32], &[ep(bad)], ip("1.1.1.1")),
                Err(VnetError::BadEndpoint(ep(bad)))
            );
        }
        assert_eq!(
            r.join("a", MemberId::Host, [0; 32], &[], ip("1.1.1.1")),
            Err(VnetError::ZeroKey)
        );
        assert_eq!(r.members("a"), 0);
    }

    #[test]
    fn a_full_subnet_says_so_and_leaving_updates_the_rest() {
        let mut r = Registry::new();
        r.join("a", MemberId::Host, [255; 32], &[], ip("1.1.1.1"))
            .unwrap();
        for i in 0..253u32 {
            let mut k = [7; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            r.join("a", lease(&format!("K-{i}")), k, &[], ip("1.1.1.1"))
                .unwrap();
        }
        assert_eq!(
            r.join("a", lease("K-x"), [8; 32], &[], ip("1.1.1.1")),
            Err(VnetError::Full { buyer: "a".into() })
        );
        let u = r.leave("a", &MemberId::Host);
        assert_eq!(u.len(), 253);
        assert!(u.iter().all(|(_, v)| v.relay.is_none()));
        assert!(r.leave("a", &MemberId::Host).is_empty());
        assert!(r.leave("nobody", &MemberId::Host).is_empty());
    }
}
