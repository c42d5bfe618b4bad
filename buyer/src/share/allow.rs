//! Which client addresses may talk to the share server at all. Checked on
//! every accepted connection, before a single byte is read.

use std::net::IpAddr;

/// A set of client addresses and networks allowed to mount and use handles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Allows exactly these addresses (the buyer's guests' vnet addresses).
    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let nets = addrs
            .into_iter()
            .map(|a| (a, if a.is_ipv4() { 32 } else { 128 }))
            .collect();
        Self { nets }
    }

    /// Allows only the loopback address `127.0.0.1` (and `::1`).
    pub fn loopback() -> Self {
        Self::from_addrs([
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ])
    }

    /// Adds a whole network, e.g. the buyer's vnet subnet `10.77.0.0/16`.
    /// Prefix lengths past the address width are clamped.
    pub fn allow_net(&mut self, net: IpAddr, prefix: u8) {
        let max = if net.is_ipv4() { 32 } else { 128 };
        self.nets.push((net, prefix.min(max)));
    }

    /// Whether a connection from `addr` may be served. IPv4-mapped IPv6
    /// addresses are treated as the IPv4 address they carry.
    pub fn allows(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.nets
            .iter()
            .any(|&(net, prefix)| in_net(addr, net, prefix))
    }
}

fn in_net(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_addresses_and_networks() {
        let mut a = AllowList::from_addrs(["10.0.0.2".parse().unwrap()]);
        assert!(a.allows("10.0.0.2".parse().unwrap()));
        assert!(!a.allows("10.0.0.3".parse().unwrap()));
        a.allow_net("10.9.0.0".parse().unwrap(), 16);
        assert!(a.allows("10.9.200.1".parse().unwrap()));
        assert!(a.allows("::ffff:10.9.1.1".parse().unwrap()));
        assert!(!a.allows("10.10.0.1".parse().unwrap()));
    }

    #[test]
    fn empty_list_allows_nobody_and_zero_prefix_allows_all() {
        assert!(!AllowList::default().allows("127.0.0.1".parse().unwrap()));
        let mut a = AllowList::default();
        a.allow_net("0.0.0.0".parse().unwrap(), 0);
        assert!(a.allows("192.0.2.1".parse().unwrap()));
    }
}
