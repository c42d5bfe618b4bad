//! This host's own UDP endpoint candidates for the rendezvous: every
//! up, non-loopback, non-tunnel IPv4 address with the node's port. The broker adds the
//! address it observes (server-reflexive) for members behind a NAT.

use std::net::{Ipv4Addr, SocketAddr};

/// Most candidates reported (the broker accepts at most 16, and adds its own).
pub const MAX_LOCAL: usize = 8;

/// Local IPv4 candidates for a socket bound to `port` on every address.
pub fn local_candidates(port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() && out.len() < MAX_LOCAL {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        // TUN devices (ours among them) are point-to-point: a vnet address
        // must never become an underlay candidate.
        let tunnel = ifa.ifa_flags & libc::IFF_POINTOPOINT as u32 != 0;
        if !up || loopback || tunnel || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: for AF_INET the address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let ep = SocketAddr::from((ip, port));
        if !out.contains(&ep) {
            out.push(ep);
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_never_include_loopback_and_carry_the_port() {
        for c in local_candidates(4242) {
            assert_eq!(c.port(), 4242);
            assert!(!c.ip().is_loopback());
        }
    }
}
