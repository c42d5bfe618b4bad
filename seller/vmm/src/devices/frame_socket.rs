//! The virtio-net backend: one end of a `SOCK_SEQPACKET` unix socket pair,
//! one Ethernet frame per message. It needs no network, so the VMM can run
//! in a jail without one; the seller daemon holds the other end and bridges
//! it to the buyer's vnet (tests hold it themselves).
//!
//! Sends never block (a vCPU thread transmits); the receive side is a loop
//! for one thread that waits on the socket and a stop event together.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::virtio::net::{FrameSink, NetCounters, RxError};

/// Errors setting up a frame socket.
#[derive(Debug, thiserror::Error)]
pub enum FrameSocketError {
    /// `socketpair` failed.
    #[error("creating a SOCK_SEQPACKET socket pair: {0}")]
    Create(#[source] io::Error),
    /// `getsockopt` on the given fd failed (not a socket?).
    #[error(
        "inspecting the frame socket fd: {0}; pass one end of a unix SOCK_SEQPACKET socketpair"
    )]
    Inspect(#[source] io::Error),
    /// The fd is a socket of another kind, which would merge or split frames.
    #[error("the frame socket is domain {domain}, type {kind}; pass one end of a unix SOCK_SEQPACKET socketpair")]
    WrongKind {
        /// `SO_DOMAIN`.
        domain: i32,
        /// `SO_TYPE`.
        kind: i32,
    },
}

/// One end of a frame socket pair. Clones share the descriptor.
#[derive(Clone, Debug)]
pub struct FrameSocket {
    fd: Arc<OwnedFd>,
}

/// What one receive got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A frame of this length, in the buffer.
    Frame(usize),
    /// A frame of this length, larger than the buffer; it was discarded.
    TooLarge(usize),
    /// Nothing arrived in time.
    Nothing,
    /// The peer closed its end.
    Closed,
}

fn sockopt(fd: &OwnedFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes and `len` is v's size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Waits until one of `fds` is readable or `timeout` passes; returns the
/// `revents` of each (all zero on timeout).
fn poll_readable<const N: usize>(
    fds: [RawFd; N],
    timeout: Option<Duration>,
) -> io::Result<[i16; N]> {
    let mut p = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: `p` is an array of N initialised pollfds that outlives the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.map(|x| x.revents))
}

impl FrameSocket {
    /// A connected pair (close-on-exec): one end for the VMM, one for the
    /// daemon or test.
    pub fn pair() -> Result<(Self, Self), FrameSocketError> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(FrameSocketError::Create(io::Error::last_os_error()));
        }
        // SAFETY: socketpair succeeded, so both are fresh descriptors that
        // nothing else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Self { fd: Arc::new(a) }, Self { fd: Arc::new(b) }))
    }

    /// Wraps a descriptor handed over by the daemon, checking that it is a
    /// unix `SOCK_SEQPACKET` socket (the only kind that keeps frames whole).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, FrameSocketError> {
        let domain = sockopt(&fd, libc::SO_DOMAIN).map_err(FrameSocketError::Inspect)?;
        let kind = sockopt(&fd, libc::SO_TYPE).map_err(FrameSocketError::Inspect)?;
        if domain != libc::AF_UNIX || kind != libc::SOCK_SEQPACKET {
            return Err(FrameSocketError::WrongKind { domain, kind });
        }
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Sends one frame without blocking; `WouldBlock` when the peer is not
    /// keeping up, `BrokenPipe` when it is gone (never SIGPIPE).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for `frame.len()` bytes of reads.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame into `buf`, waiting at most `timeout` (forever
    /// with `None`). A frame larger than `buf` is discarded and reported
    /// with its real length.
    pub fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<Received> {
        loop {
            match self.try_recv(buf)? {
                Received::Nothing => {}
                r => return Ok(r),
            }
            let [rev] = poll_readable([self.fd.as_raw_fd()], timeout)?;
            if rev == 0 {
                return Ok(Received::Nothing);
            }
        }
    }

    /// Receives one frame if one is queued; never blocks.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes; MSG_TRUNC
        // makes the kernel report the real length but still write at most
        // `buf.len()` bytes.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Received::Nothing),
                _ => Err(e),
            };
        }
        let n = n as usize;
        // A zero-length read on SOCK_SEQPACKET is end of stream (an empty
        // frame would read the same; no backend sends one).
        Ok(match n {
            0 => Received::Closed,
            n if n > buf.len() => Received::TooLarge(n),
            n => Received::Frame(n),
        })
    }
}

impl FrameSink for FrameSocket {
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.send(frame)
    }
}

/// Moves frames from `socket` to `deliver` until `stop` is signalled or
/// the peer closes its end. Frames longer than `max_frame` are dropped and
/// counted without reaching `deliver`. Runs on the VMM's receive thread.
pub fn pump_rx(
    socket: &FrameSocket,
    stop: &EventFd,
    max_frame: usize,
    counters: &NetCounters,
    mut deliver: impl FnMut(&[u8]),
) -> io::Result<()> {
    // One spare byte is not needed: MSG_TRUNC reports the real length.
    let mut buf = vec![0u8; max_frame];
    loop {
        let [sock, st] = poll_readable([socket.fd.as_raw_fd(), stop.as_raw_fd()], None)?;
        if st != 0 {
            return Ok(());
        }
        if sock == 0 {
            continue;
        }
        // Drain what is queued, then wait again.
        loop {
            match socket.try_recv(&mut buf)? {
                Received::Frame(n) => deliver(&buf[..n]),
                Received::TooLarge(len) => counters.count_rx_drop(&RxError::FrameTooLarge {
                    len,
                    max: max_frame,
                }),
                Received::Nothing => break,
                Received::Closed => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn frames_keep_their_boundaries_and_oversize_ones_report_their_length() {
        let (a, b) = FrameSocket::pair().unwrap();
        a.send(&[1; 60]).unwrap();
        a.send(&[2; 1000]).unwrap();
        a.send(&[3; 100]).unwrap();
        let mut buf = [0u8; 200];
        assert_eq!(b.recv(&mut buf, None).unwrap(), Received::Frame(60));
        assert_eq!(b.recv(&mut buf, None).unwrap(), Received::TooLarge(1000));
        assert_eq!(b.recv(&mut buf, None).unwrap(), Received::Frame(100));
        assert_eq!(buf[..100], [3; 100]);
        assert_eq!(b.try_recv(&mut buf).unwrap(), Received::Nothing);
        assert_eq!(
            b.recv(&mut buf, Some(Duration::from_millis(1))).unwrap(),
            Received::Nothing
        );
        drop(a);
        assert_eq!(b.recv(&mut buf, None).unwrap(), Received::Closed);
        let e = b.send(&[0; 60]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn only_seqpacket_unix_sockets_are_accepted() {
        let (d, _) = UnixDatagram::pair().unwrap();
        let e = FrameSocket::from_fd(d.into()).unwrap_err();
        assert!(e.to_string().contains("SOCK_SEQPACKET"), "{e}");
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            FrameSocket::from_fd(f.into()),
            Err(FrameSocketError::Inspect(_))
        ));
        let (a, _b) = FrameSocket::pair().unwrap();
        let fd = a.fd.try_clone().unwrap();
        assert!(FrameSocket::from_fd(fd).is_ok());
    }

    #[test]
    fn a_full_peer_makes_send_fail_instead_of_blocking() {
        let (a, _b) = FrameSocket::pair().unwrap();
        let e = (0..100_000)
            .find_map(|_| a.send(&[0; 1500]).err())
            .expect("the socket buffer fills");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn the_pump_delivers_drops_oversize_and_ends_on_stop_or_close() {
        let (vmm, peer) = FrameSocket::pair().unwrap();
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let counters = NetCounters::default();
        peer.send(&[7; 64]).unwrap();
        peer.send(&[8; 65]).unwrap();
        peer.send(&[9; 20]).unwrap();
        drop(peer);
        let mut got = Vec::new();
        pump_rx(&vmm, &stop, 64, &counters, |f| got.push(f.to_vec())).unwrap();
        assert_eq!(got, vec![vec![7; 64], vec![9; 20]]);
        assert_eq!(counters.snapshot().rx_too_large, 1);
        // Stop ends it while the peer is still open.
        let (vmm, _peer) = FrameSocket::pair().unwrap();
        stop.write(1).unwrap();
        pump_rx(&vmm, &stop, 64, &counters, |_| panic!("no frames")).unwrap();
    }
}
