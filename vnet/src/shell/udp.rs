//! Batched UDP I/O: `recvmmsg`/`sendmmsg` so one syscall moves up to
//! [`BATCH`] datagrams, the main cost of a userspace tunnel being per-packet
//! syscalls rather than crypto.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per syscall.
pub const BATCH: usize = 64;
/// Receive buffer per datagram (vnet's hard maximum fits).
pub const RECV_BUF: usize = crate::wire::MAX_PACKET_LEN;

fn to_storage(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                sin.sin_addr.s_addr.to_ne_bytes().into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let s: libc::sockaddr_in6 =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                s.sin6_addr.s6_addr.into(),
                u16::from_be(s.sin6_port),
                s.sin6_flowinfo,
                s.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most segments one GSO send may carry (kernel UDP_MAX_SEGMENTS is 64 or more).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest total payload of one GSO send.
const MAX_GSO_BYTES: usize = 65_000;
/// Receive buffer per message: a whole GRO-coalesced train.
pub const RECV_BUF_GRO: usize = 65_536;
/// Messages per `recvmmsg`.
pub const RECV_BATCH: usize = 16;

fn setsockopt_int(
    sock: &UdpSocket,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: valid socket; pointer to a c_int of the advertised size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Asks the kernel to coalesce received datagrams of one flow (UDP_GRO,
/// Linux >= 5.0). Returns false when unsupported; reception still works.
pub fn enable_gro(sock: &UdpSocket) -> bool {
    setsockopt_int(sock, SOL_UDP, UDP_GRO, 1).is_ok()
}

/// Reusable receive state for `recvmmsg`, GRO-aware.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 8]>,
    lens: Vec<usize>,
    segs: Vec<usize>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Buffers for [`RECV_BATCH`] coalesced messages.
    pub fn new() -> Self {
        Self {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; RECV_BUF_GRO]).collect(),
            // SAFETY: all-zero sockaddr_storage is valid.
            addrs: (0..RECV_BATCH)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
            controls: vec![[0u64; 8]; RECV_BATCH],
            lens: vec![0; RECV_BATCH],
            segs: vec![0; RECV_BATCH],
            count: 0,
        }
    }

    /// Blocks for at least one message, then takes whatever else is queued.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.recv_with(sock, libc::MSG_WAITFORONE)
    }

    /// Takes whatever is queued without blocking (`WouldBlock` when nothing is).
    pub fn try_recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.recv_with(sock, libc::MSG_WAITFORONE | libc::MSG_DONTWAIT)
    }

    fn recv_with(&mut self, sock: &UdpSocket, flags: libc::c_int) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..RECV_BATCH)
            .map(|i| {
                // SAFETY: msghdr is plain old data; zero is a valid start.
                let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut iov[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
                h
            })
            .collect();
        // SAFETY: every header points at live buffers, addresses and control
        // space owned by `self` and `iov`, which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                RECV_BATCH as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().take(n).enumerate() {
            let len = h.msg_len as usize;
            self.lens[i] = len;
            self.segs[i] = len;
            // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG
            // macros walk only within that range.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let seg = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u16>());
                        if seg > 0 {
                            self.segs[i] = usize::from(seg);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
        }
        self.count = n;
        Ok(n)
    }

    /// The datagrams of the last `recv`, coalesced trains split back apart.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..self.count)
            .filter_map(|i| Some((from_storage(&self.addrs[i])?, i)))
            .flat_map(move |(from, i)| {
                self.bufs[i][..self.lens[i]]
                    .chunks(self.segs[i].max(1))
                    .map(move |d| (from, d))
            })
    }
}

/// Sends datagrams with `sendmmsg`. With `gso`, runs of consecutive datagrams
/// to one destination with equal sizes (the last may be shorter) go out as
/// one UDP_SEGMENT message, so the kernel builds the packets in one pass.
/// Errors on single datagrams (unreachable peers) are skipped, as UDP loss is
/// normal; returns Err(EIO) only if the kernel refused GSO itself.
pub fn send_batch(sock: &UdpSocket, items: &[(SocketAddr, &[u8])], gso: bool) -> io::Result<usize> {
    let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> = Vec::with_capacity(BATCH);
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(items.len());
    let mut groups: Vec<(usize, usize, u16)> = Vec::with_capacity(BATCH); // (first iov, count, segment size)
    let mut controls: Vec<[u64; 4]> = Vec::with_capacity(BATCH);
    let mut sent = 0;
    let mut i = 0;
    while i < items.len() {
        addrs.clear();
        groups.clear();
        controls.clear();
        iovs.clear();
        while i < items.len() && groups.len() < BATCH {
            let (dst, first) = items[i];
            let seg = first.len();
            let mut n = 1;
            let mut total = seg;
            if gso {
                while i + n < items.len()
                    && n < MAX_GSO_SEGMENTS
                    && items[i + n].0 == dst
                    && items[i + n].1.len() <= seg
                    && items[i + n - 1].1.len() == seg
                    && total + items[i + n].1.len() <= MAX_GSO_BYTES
                {
                    total += items[i + n].1.len();
                    n += 1;
                }
            }
            groups.push((iovs.len(), n, seg as u16));
            for (_, b) in &items[i..i + n] {
                iovs.push(libc::iovec {
                    iov_base: b.as_ptr() as *mut _,
                    iov_len: b.len(),
                });
            }
            addrs.push(to_storage(&dst));
            controls.push([0; 4]);
            i += n;
        }
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(groups.len());
        for (g, &(first, n, seg)) in groups.iter().enumerate() {
            // SAFETY: msghdr is plain old data; zero is a valid start.
            let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_hdr.msg_name = (&mut addrs[g].0 as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = addrs[g].1;
            h.msg_hdr.msg_iov = &mut iovs[first];
            h.msg_hdr.msg_iovlen = n as _;
            if n > 1 {
                h.msg_hdr.msg_control = controls[g].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
                // SAFETY: the control buffer is 32 bytes, enough for one
                // cmsghdr with a u16 payload (CMSG_SPACE(2) = 24).
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
                }
            }
            hdrs.push(h);
        }
        let mut off = 0;
        while off < hdrs.len() {
            // SAFETY: headers point into `addrs`/`iovs`/`controls` and
            // caller-owned byte slices, all alive across the call.
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    hdrs[off..].as_mut_ptr(),
                    (hdrs.len() - off) as u32,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Err(e),
                    _ if e.raw_os_error() == Some(libc::EIO) && groups[off].1 > 1 => return Err(e),
                    // The first message failed (e.g. unreachable): skip it.
                    _ => off += 1,
                }
            } else {
                sent += hdrs[off..off + n as usize]
                    .iter()
                    .map(|h| h.msg_hdr.msg_iovlen)
                    .sum::<usize>();
                off += n as usize;
            }
        }
    }
    Ok(sent)
}
