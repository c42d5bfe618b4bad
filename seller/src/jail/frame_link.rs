//! The guest NIC's link out of a VM sandbox: a `SOCK_SEQPACKET` unix
//! socket (one Ethernet frame per message) between the sandbox's VMM and
//! the daemon, which bridges it to the lease's vnet node.
//!
//! The daemon listens on a path in its private directory; the sandbox's
//! outer process connects before it pivots into its empty root (as it
//! opens `/dev/kvm` and the ISO), and its inner process inherits the
//! connection. So no descriptor has to cross `posix_spawn`, and the jail
//! holds no path to the socket.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// The guest NIC's MAC address: locally administered, and distinct from
/// the vnet's own (`02:63:70:75:73:68`). Each guest has a link of its own
/// to its lease's node, so guests need not differ; the node is told it up
/// front, so a guest that has sent nothing yet is still reachable.
pub const GUEST_MAC: [u8; 6] = [0x02, 0x63, 0x73, 0x67, 0x00, 0x02];

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} is too long for AF_UNIX", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn seqpacket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The daemon's end before the sandbox connected; removes its path when dropped.
#[derive(Debug)]
pub struct FrameListener {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
}

impl FrameListener {
    /// Listens on `path` (replacing a stale socket there), for one
    /// connection, readable and writable by root only.
    pub fn bind(path: &Path) -> io::Result<FrameListener> {
        let _ = std::fs::remove_file(path);
        let fd = seqpacket(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is an open socket, owned by the AsyncFd for
        // its whole life, and always reports the same descriptor.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        let listener = FrameListener {
            fd,
            path: path.to_path_buf(),
        };
        let c = CString::new(path.as_os_str().as_bytes()).expect("checked above");
        // SAFETY: `c` is a valid C string; chmod only reads it.
        if unsafe { libc::chmod(c.as_ptr(), 0o600) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen(2) on a socket this process owns.
        if unsafe { libc::listen(listener.fd.as_raw_fd(), 1) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(listener)
    }

    /// Where the sandbox connects.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (at most `timeout`) for the sandbox's connection.
    pub async fn accept(self, timeout: Duration) -> io::Result<OwnedFd> {
        let accepted = tokio::time::timeout(timeout, async {
            loop {
                let mut ready = self.fd.readable().await?;
                // SAFETY: accept4 on our listening socket; no address wanted.
                let fd = unsafe {
                    libc::accept4(
                        self.fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if fd >= 0 {
                    // SAFETY: accept4 returned a new descriptor we now own.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                ready.clear_ready();
            }
        })
        .await;
        accepted.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the sandbox never connected its guest NIC",
            ))
        })
    }
}

impl Drop for FrameListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The sandbox's end: connects to the daemon's listener (blocking; the
/// sandbox is single-threaded and not yet confined when it calls this).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket(libc::SOCK_CLOEXEC)?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_cross_one_message_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nic.sock");
        let listener = FrameListener::bind(&path).unwrap();
        let sandbox_end = connect(&path).unwrap();
        let daemon_end = listener.accept(Duration::from_secs(5)).await.unwrap();
        assert!(!path.exists(), "the path is removed once connected");
        for frame in [&b"one"[..], &[7u8; 1500][..]] {
            // SAFETY: valid buffer and fd.
            let n = unsafe {
                libc::send(
                    sandbox_end.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                )
            };
            assert_eq!(n as usize, frame.len());
            let mut buf = [0u8; 4096];
            // SAFETY: valid buffer and fd.
            let n = unsafe {
                libc::recv(
                    daemon_end.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            assert_eq!(&buf[..n as usize], frame);
        }
    }

    #[tokio::test]
    async fn nobody_connecting_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let listener = FrameListener::bind(&dir.path().join("nic.sock")).unwrap();
        let e = listener
            .accept(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn an_overlong_path_is_refused() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert!(FrameListener::bind(&long).is_err());
    }
}
