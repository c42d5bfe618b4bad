//! A guest's Ethernet link as a `SOCK_SEQPACKET` socket: the VMM's
//! virtio-net device writes one frame per message and reads one frame per
//! message. The [`EthernetAdapter`] answers the guest's ARP and turns its
//! frames into IP packets for the node (and back), so no L2 crosses the vnet.

use crate::router::arp::{EthernetAdapter, FrameAction};
use crate::router::Subnet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

/// Largest frame read from the guest: an Ethernet header plus the largest
/// inner MTU, rounded up; longer messages are truncated and dropped.
pub const MAX_FRAME: usize = 14 + crate::wire::MAX_INNER_MTU + 18;

/// One guest link.
pub struct FrameLink {
    fd: OwnedFd,
    adapter: Mutex<EthernetAdapter>,
}

/// What reading one frame gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// An IPv4 packet was appended to the buffer.
    Ip,
    /// An ARP reply went back to the guest, or the frame was not for us.
    Handled,
    /// Refused by egress isolation (ARP outside the subnet, IPv6, ...);
    /// the caller counts it.
    Denied,
    /// The peer closed its end (the VMM is gone).
    Closed,
}

fn lock(m: &Mutex<EthernetAdapter>) -> std::sync::MutexGuard<'_, EthernetAdapter> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FrameLink {
    /// Wraps one end of a `SOCK_SEQPACKET` socketpair for a guest in `subnet`.
    pub fn new(fd: OwnedFd, subnet: Subnet) -> Self {
        Self {
            fd,
            adapter: Mutex::new(EthernetAdapter::new(subnet)),
        }
    }

    /// Like [`FrameLink::new`], for a guest whose NIC has `mac` (so the
    /// guest is reachable before it sends its first frame).
    pub fn with_guest_mac(fd: OwnedFd, subnet: Subnet, mac: [u8; 6]) -> Self {
        Self {
            fd,
            adapter: Mutex::new(EthernetAdapter::with_guest_mac(subnet, mac)),
        }
    }

    /// Blocks until a frame is readable or `timeout_ms` passes.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(rc > 0)
    }

    /// Reads one frame without blocking; an IPv4 payload is appended to
    /// `packet`, ARP is answered in place.
    pub fn read(&self, scratch: &mut Vec<u8>, packet: &mut Vec<u8>) -> io::Result<Frame> {
        scratch.clear();
        scratch.reserve(MAX_FRAME);
        // SAFETY: `scratch` has MAX_FRAME writable bytes of capacity; the
        // kernel writes at most that many and we set the length to what it
        // reports (MSG_TRUNC makes it report the full length, which we check).
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                MAX_FRAME,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(Frame::Closed);
        }
        let n = n as usize;
        if n > MAX_FRAME {
            return Ok(Frame::Handled); // oversize: dropped
        }
        // SAFETY: the kernel initialised the first `n <= MAX_FRAME` bytes.
        unsafe { scratch.set_len(n) };
        let mut reply = Vec::new();
        let mut adapter = lock(&self.adapter);
        match adapter.handle_frame(scratch, &mut reply) {
            FrameAction::Ip(ip) => {
                packet.extend_from_slice(ip);
                Ok(Frame::Ip)
            }
            FrameAction::Reply => {
                drop(adapter);
                self.send(&reply)?;
                Ok(Frame::Handled)
            }
            FrameAction::Denied => Ok(Frame::Denied),
            FrameAction::Ignore => Ok(Frame::Handled),
        }
    }

    /// Writes an IP packet to the guest as one frame (dropped until the
    /// guest's MAC is known from its first frame).
    pub fn write_ip(&self, ip_packet: &[u8], scratch: &mut Vec<u8>) -> io::Result<()> {
        if !lock(&self.adapter).wrap_ip(ip_packet, scratch) {
            return Ok(());
        }
        self.send(scratch)
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a valid readable slice for the whole call.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: socketpair returned two fresh descriptors we now own.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    const GUEST: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

    #[test]
    fn arp_is_answered_and_ip_frames_cross_both_ways() {
        let (ours, theirs) = pair();
        let link = FrameLink::new(ours, "10.9.8.0/24".parse().unwrap());
        let guest = std::os::unix::net::UnixDatagram::from(theirs);
        // ARP who-has 10.9.8.1 from the guest (10.9.8.2).
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&GUEST);
        arp.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&GUEST);
        arp.extend_from_slice(&[10, 9, 8, 2, 0, 0, 0, 0, 0, 0, 10, 9, 8, 1]);
        guest.send(&arp).unwrap();
        let (mut scratch, mut packet) = (Vec::new(), Vec::new());
        assert!(link.wait_readable(1000).unwrap());
        assert_eq!(
            link.read(&mut scratch, &mut packet).unwrap(),
            Frame::Handled
        );
        let mut buf = [0u8; 2048];
        let n = guest.recv(&mut buf).unwrap();
        assert_eq!(&buf[..6], &GUEST);
        assert_eq!(n, 42);
        // An IPv4 frame becomes its payload.
        let mut ip = GUEST.to_vec();
        ip.splice(0..0, crate::router::arp::VIRTUAL_MAC);
        ip.extend_from_slice(&[8, 0, 0x45, 0, 0, 20]);
        guest.send(&ip).unwrap();
        assert_eq!(link.read(&mut scratch, &mut packet).unwrap(), Frame::Ip);
        assert_eq!(packet, [0x45, 0, 0, 20]);
        // And a packet for the guest becomes one frame.
        link.write_ip(&[0x45, 1, 2, 3], &mut scratch).unwrap();
        let n = guest.recv(&mut buf).unwrap();
        assert_eq!(&buf[..6], &GUEST);
        assert_eq!(&buf[14..n], &[0x45, 1, 2, 3]);
        // Junk and a closed peer.
        guest.send(&[1, 2, 3]).unwrap();
        assert_eq!(
            link.read(&mut scratch, &mut packet).unwrap(),
            Frame::Handled
        );
        drop(guest);
        assert_eq!(link.read(&mut scratch, &mut packet).unwrap(), Frame::Closed);
    }
}
