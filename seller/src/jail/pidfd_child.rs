//! A child process known by its pidfd (one the zygote cloned into the
//! daemon's family): wait for it without blocking the runtime, kill it
//! without pid-reuse races, reap it exactly once.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use tokio::io::unix::AsyncFd;

/// `P_PIDFD` (linux/wait.h).
const P_PIDFD: libc::idtype_t = 3;

/// A child of this process, by pidfd. Dropped unreaped, it is killed and
/// reaped on a short-lived thread.
#[derive(Debug)]
pub struct PidfdChild {
    pid: u32,
    fd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
}

impl PidfdChild {
    /// Wraps child `pid` and its `pidfd`. Needs a tokio runtime.
    pub fn new(pid: u32, pidfd: OwnedFd) -> io::Result<PidfdChild> {
        // SAFETY: an OwnedFd stays open, on the same pidfd, for as long
        // as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(PidfdChild {
            pid,
            fd: Some(fd),
            status: None,
        })
    }

    /// The child's pid (until it is reaped).
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid)
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let fd = self.fd.as_ref().expect("held until reaped");
        let status = reap(fd.get_ref(), libc::WNOHANG)?;
        if status.is_some() {
            self.status = status;
        }
        Ok(status)
    }

    /// Waits for the child to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            let fd = self.fd.as_ref().expect("held until reaped");
            let mut ready = fd.readable().await?;
            ready.clear_ready();
        }
    }

    /// Sends SIGKILL (nothing if it was already reaped).
    pub fn start_kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let fd = self.fd.as_ref().expect("held until reaped");
        signal_kill(fd.get_ref())
    }
}

impl Drop for PidfdChild {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let Some(fd) = self.fd.take() else { return };
        let fd = fd.into_inner();
        let _ = signal_kill(&fd);
        // A killed child exits at once; reaping it must not block the
        // runtime thread that dropped it.
        let _ = std::thread::Builder::new()
            .name("reap-sandbox".into())
            .spawn(move || reap(&fd, 0));
    }
}

fn signal_kill(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    match r {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            // Already exited (a zombie): nothing to kill.
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e),
        },
    }
}

/// `waitid(P_PIDFD)`: the exit status once the child has exited, `None`
/// if `flags` has WNOHANG and it still runs.
fn reap(fd: &OwnedFd, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        // SAFETY: all-zero is a valid siginfo_t.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out pointer; the pidfd is open.
        let r = unsafe {
            libc::waitid(
                P_PIDFD,
                fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | flags,
            )
        };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid filled `info` for a child event (or left it zero).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        // Back to a wait(2) status word, which ExitStatus wraps.
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => (status & 0x7f) | 0x80,
            _ => status & 0x7f,
        };
        return Ok(Some(ExitStatus::from_raw(raw)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn pidfd_of(pid: u32) -> OwnedFd {
        // SAFETY: pidfd_open with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
        assert!(fd >= 0, "pidfd_open: {}", io::Error::last_os_error());
        // SAFETY: a new descriptor this test owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    #[tokio::test]
    async fn exit_codes_and_kills_come_back_as_statuses() {
        let c = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("sh");
        let mut child = PidfdChild::new(c.id(), pidfd_of(c.id())).expect("wrap");
        // The std handle must not reap it; it is only forgotten.
        std::mem::forget(c);
        assert_eq!(child.wait().await.expect("wait").code(), Some(7));
        assert_eq!(child.id(), None);

        let c = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        let mut child = PidfdChild::new(c.id(), pidfd_of(c.id())).expect("wrap");
        std::mem::forget(c);
        assert!(child.try_wait().expect("try").is_none());
        child.start_kill().expect("kill");
        assert_eq!(
            child.wait().await.expect("wait").signal(),
            Some(libc::SIGKILL)
        );
    }
}
