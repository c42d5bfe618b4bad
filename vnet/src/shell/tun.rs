//! A Linux TUN device opened directly with `TUNSETIFF` (IFF_TUN | IFF_NO_PI)
//! and configured with the classic SIOCSIF* ioctls, so no `ip` binary or
//! netlink crate is needed.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;

/// Errors creating or configuring the TUN device.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// Creating a TUN device needs CAP_NET_ADMIN.
    #[error("creating TUN device {name:?} needs root or CAP_NET_ADMIN: run as root, or `setcap cap_net_admin+ep` on the binary")]
    PermissionDenied {
        /// Requested interface name.
        name: String,
    },
    /// The interface name does not fit IFNAMSIZ or contains NUL.
    #[error("interface name {0:?} must be 1..=15 bytes without NUL")]
    BadName(String),
    /// Any other failure, with the step that failed.
    #[error("TUN {step} failed for {name:?}: {source}")]
    Io {
        /// What we were doing.
        step: &'static str,
        /// Interface name.
        name: String,
        /// OS error.
        source: io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// An open TUN device; reads and writes raw IPv4 packets.
pub struct Tun {
    fd: OwnedFd,
    name: String,
    offload: bool,
}

fn ioctl(fd: RawFd, req: libc::c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: `ifr` is a live, properly sized `struct ifreq` (40 bytes) for the
    // duration of the call; the kernel writes at most that much.
    let rc = unsafe { libc::ioctl(fd, req as _, ifr as *mut IfReq) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr_in(a: Ipv4Addr) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    s[4..8].copy_from_slice(&a.octets());
    s
}

impl Tun {
    /// Creates (or attaches to) TUN device `name`, assigns `addr/prefix`,
    /// sets `mtu` and brings it up. With `offload`, asks for TCPv4
    /// segmentation offload: reads then start with a virtio_net_hdr and may
    /// be super-segments (see [`super::offload`]); falls back silently.
    pub fn create(
        name: &str,
        addr: Ipv4Addr,
        netmask: Ipv4Addr,
        mtu: usize,
        offload: bool,
    ) -> Result<Self, TunError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TunError::BadName(name.to_owned()));
        }
        let io_err = |step: &'static str| {
            let name = name.to_owned();
            move |source: io::Error| TunError::Io { step, name, source }
        };
        let path: &CStr = c"/dev/net/tun";
        // SAFETY: `path` is a valid NUL-terminated string; open has no other preconditions.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::PermissionDenied {
                return Err(TunError::PermissionDenied {
                    name: name.to_owned(),
                });
            }
            return Err(io_err("open /dev/net/tun")(e));
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ifr = IfReq::new(name);
        let flags = IFF_TUN | IFF_NO_PI | if offload { IFF_VNET_HDR } else { 0 };
        ifr.data[0..2].copy_from_slice(&flags.to_ne_bytes());
        if let Err(e) = ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr) {
            if e.raw_os_error() == Some(libc::EPERM) {
                return Err(TunError::PermissionDenied {
                    name: name.to_owned(),
                });
            }
            return Err(io_err("TUNSETIFF")(e));
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        let offload = offload
            && unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, TUN_F_CSUM | TUN_F_TSO4) }
                == 0;
        let actual =
            String::from_utf8_lossy(ifr.name.split(|b| *b == 0).next().unwrap_or_default())
                .into_owned();
        // SAFETY: plain socket(2) call; the result is checked below.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io_err("control socket")(io::Error::last_os_error()));
        }
        // SAFETY: `sock` is a fresh descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let s = sock.as_raw_fd();
        let mut r = IfReq::new(&actual);
        r.data[..16].copy_from_slice(&sockaddr_in(addr));
        ioctl(s, libc::SIOCSIFADDR, &mut r).map_err(io_err("SIOCSIFADDR"))?;
        let mut r = IfReq::new(&actual);
        r.data[..16].copy_from_slice(&sockaddr_in(netmask));
        ioctl(s, libc::SIOCSIFNETMASK, &mut r).map_err(io_err("SIOCSIFNETMASK"))?;
        let mut r = IfReq::new(&actual);
        r.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
        ioctl(s, libc::SIOCSIFMTU, &mut r).map_err(io_err("SIOCSIFMTU"))?;
        let mut r = IfReq::new(&actual);
        ioctl(s, libc::SIOCGIFFLAGS, &mut r).map_err(io_err("SIOCGIFFLAGS"))?;
        let flags = i16::from_ne_bytes([r.data[0], r.data[1]])
            | libc::IFF_UP as i16
            | libc::IFF_RUNNING as i16;
        r.data[0..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(s, libc::SIOCSIFFLAGS, &mut r).map_err(io_err("SIOCSIFFLAGS"))?;
        // The vnet carries IPv4 only: keep the kernel from sending IPv6
        // router solicitations into it (they would only be counted as drops).
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{actual}/disable_ipv6"),
            "1",
        );
        if !offload && flags & IFF_VNET_HDR != 0 {
            // Offload refused: reopen without the header so reads stay plain.
            drop(fd);
            return Self::create(name, addr, netmask, mtu, false);
        }
        Ok(Self {
            fd,
            name: actual,
            offload,
        })
    }

    /// The interface name the kernel gave us.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether reads/writes carry a virtio_net_hdr (offload active).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// The raw descriptor (non-blocking).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one packet into the spare capacity of `buf` (after its current
    /// length); returns the packet length, `WouldBlock` when none is queued.
    pub fn read_into(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        buf.reserve(max);
        let len = buf.len();
        // SAFETY: `reserve` guarantees `max` writable bytes after `len`; the
        // kernel writes at most `max` bytes there and we only extend the
        // length by what it reports written.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().add(len).cast(), max) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel initialised exactly `n <= max` bytes after `len`.
        unsafe { buf.set_len(len + n as usize) };
        Ok(n as usize)
    }

    /// Writes bytes that already start with a virtio_net_hdr (offload only).
    pub fn write_raw(&self, bytes: &[u8]) -> io::Result<usize> {
        // SAFETY: `bytes` is a valid readable slice for the whole call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one complete, checksummed packet to the interface.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        let hdr = [0u8; super::offload::VNET_HDR_LEN];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut _,
                iov_len: if self.offload { hdr.len() } else { 0 },
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut _,
                iov_len: packet.len(),
            },
        ];
        // SAFETY: both iovecs point at live, readable memory for the whole call.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Blocks until a packet is readable or `timeout_ms` passes.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        super::busy_poll::wait_readable(self.fd.as_raw_fd(), timeout_ms)
    }
}
