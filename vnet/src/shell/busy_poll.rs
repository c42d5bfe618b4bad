//! Bounded busy polling after real traffic, and the blocking wait behind it.
//!
//! On a VM whose idle vCPUs halt, waking a sleeping thread costs far more
//! than handling a packet (50-70 µs against 3-12 µs here). So a shell thread
//! that has just moved packets keeps looking, without sleeping, for a short
//! window: the reply to what it just sent, or the next packet of a burst, is
//! then taken by a thread that is already running. The window is only ever
//! opened by traffic, so an idle node sleeps in `poll(2)` and its CPU stays
//! idle, as the kernel's `net.core.busy_poll` does for sockets.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest a thread keeps polling after the node's last packet: a little
/// more than a peer's turnaround on a VM whose halted vCPUs take 50-70 µs
/// to wake, so a request's reply is caught by the thread that sent it.
pub const MAX_WINDOW: Duration = Duration::from_micros(300);

/// The node-wide busy-poll window, shared by its I/O threads and adapted
/// to the gaps between packets: a gap shorter than [`MAX_WINDOW`] (a reply,
/// the next packet of a burst) widens the window at once to catch the next
/// such gap; each longer gap (idle time) narrows it by an eighth, so a node
/// that only ever sees long gaps, such as one answering requests, ends up
/// not spinning at all.
#[derive(Debug)]
pub struct BusyPoll {
    max_us: u64,
    window_us: AtomicU64,
    /// Microseconds since `epoch` of the node's last packet (0: none yet).
    last_us: AtomicU64,
    epoch: Instant,
}

impl BusyPoll {
    /// A window that may grow to `max` (zero: never spin).
    pub fn new(max: Duration) -> Self {
        Self {
            max_us: max.as_micros() as u64,
            window_us: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn micros(&self, t: Instant) -> u64 {
        // +1 keeps 0 free to mean "no packet yet".
        t.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }

    /// Records that packets were moved at `now`, adapting the window to the
    /// gap since the previous ones.
    pub fn traffic(&self, now: Instant) {
        let now = self.micros(now);
        let last = self.last_us.swap(now, Ordering::Relaxed);
        if last == 0 {
            return;
        }
        let window = self.window_us.load(Ordering::Relaxed);
        let next = next_window(window, now.saturating_sub(last), self.max_us);
        self.window_us.store(next, Ordering::Relaxed);
    }

    /// Whether a thread should keep polling at `now` instead of sleeping.
    pub fn spinning(&self, now: Instant) -> bool {
        let last = self.last_us.load(Ordering::Relaxed);
        last != 0 && self.micros(now).saturating_sub(last) < self.window_us.load(Ordering::Relaxed)
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window_us.load(Ordering::Relaxed))
    }
}

/// The window after a gap of `gap` µs between packets (all in µs).
fn next_window(window: u64, gap: u64, max: u64) -> u64 {
    if gap < max {
        // Spinning a quarter longer than this gap would have caught it.
        window.max(gap + gap / 4).min(max)
    } else {
        window - window / 8 - u64::from(window < 8).min(window)
    }
}

/// Blocks until `fd` is readable or `timeout_ms` passes (false on timeout
/// or signal).
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    match rc {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_gaps_widen_the_window_and_idle_gaps_close_it() {
        assert_eq!(next_window(0, 100, 200), 125, "a reply 100 us later");
        assert_eq!(next_window(125, 20, 200), 125, "a burst keeps it");
        assert_eq!(next_window(190, 199, 200), 200, "capped");
        assert_eq!(next_window(128, 5_000, 200), 112, "idle narrows it");
        let mut w = 125;
        for _ in 0..100 {
            w = next_window(w, 5_000, 200);
        }
        assert_eq!(w, 0, "only long gaps: no spinning at all");
        assert_eq!(next_window(0, 10, 0), 0, "a zero maximum never spins");
    }

    #[test]
    fn spins_only_within_the_window_after_traffic() {
        let b = BusyPoll::new(Duration::from_micros(200));
        let t0 = Instant::now() + Duration::from_millis(1);
        assert!(!b.spinning(t0), "no traffic yet: sleep");
        b.traffic(t0);
        assert!(!b.spinning(t0), "no short gap seen yet: sleep");
        b.traffic(t0 + Duration::from_micros(80));
        assert_eq!(b.window(), Duration::from_micros(100));
        let t1 = t0 + Duration::from_micros(80);
        assert!(b.spinning(t1 + Duration::from_micros(50)));
        assert!(!b.spinning(t1 + Duration::from_micros(100)));
    }

    #[test]
    fn wait_readable_sees_a_queued_datagram() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&b);
        assert!(!wait_readable(fd, 0).unwrap());
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        assert!(wait_readable(fd, 1000).unwrap());
    }
}
