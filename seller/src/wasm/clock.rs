//! Per-job time budgets, checked from the epoch-deadline callback on the
//! job's own thread.
//!
//! The engine's epoch is global (one ticker for all jobs), so it only says
//! "look at the clock now"; each store then compares its own CPU and wall
//! budgets. CPU time is this thread's `CLOCK_THREAD_CPUTIME_ID`, so eight
//! jobs sharing two cores are each charged only what they used.

use super::job::BudgetRaise;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    Cpu,
    Wall,
}

/// The budgets of one running job. Must be created and checked on the
/// thread that runs the guest.
#[derive(Debug)]
pub(crate) struct JobClock {
    cpu_start: Duration,
    cpu_limit: Duration,
    wall_start: Instant,
    wall_deadline: Instant,
    raise: Option<Arc<BudgetRaise>>,
}

impl JobClock {
    /// Starts both budgets now.
    pub(crate) fn start(cpu_limit: Duration, wall_limit: Duration) -> JobClock {
        let now = Instant::now();
        JobClock {
            cpu_start: thread_cpu_time(),
            cpu_limit,
            wall_start: now,
            wall_deadline: deadline(now, wall_limit),
            raise: None,
        }
    }

    /// Lets `raise` lift both budgets while the job runs.
    pub(crate) fn raised_by(mut self, raise: Option<Arc<BudgetRaise>>) -> JobClock {
        self.raise = raise;
        self
    }

    /// Which budget, if any, is used up. Wall time wins a tie: it is the
    /// one a buyer can see on a clock.
    pub(crate) fn check(&self) -> Option<Expired> {
        let now = Instant::now();
        let (cpu_limit, wall_deadline) = match &self.raise {
            Some(r) => (
                self.cpu_limit.max(r.cpu_time()),
                self.wall_deadline
                    .max(deadline(self.wall_start, r.wall_time())),
            ),
            None => (self.cpu_limit, self.wall_deadline),
        };
        if now >= wall_deadline {
            Some(Expired::Wall)
        } else if thread_cpu_time().saturating_sub(self.cpu_start) >= cpu_limit {
            Some(Expired::Cpu)
        } else {
            None
        }
    }
}

/// `start + limit`, or far in the future if that overflows `Instant`.
fn deadline(start: Instant, limit: Duration) -> Instant {
    start.checked_add(limit).unwrap_or(start + FAR_FUTURE)
}

/// Stand-in for "no wall limit" when the requested one overflows `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// CPU time consumed by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame, and
    // CLOCK_THREAD_CPUTIME_ID is supported by every Linux we run on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_clock_has_not_expired() {
        let clock = JobClock::start(Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(clock.check(), None);
    }

    #[test]
    fn cpu_budget_counts_only_work_done_on_this_thread() {
        let clock = JobClock::start(Duration::from_millis(20), Duration::from_secs(60));
        // Sleeping uses wall time but no CPU time.
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(clock.check(), None);
        let mut x = 0u64;
        while clock.check().is_none() {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert_eq!(clock.check(), Some(Expired::Cpu));
    }

    #[test]
    fn wall_budget_expires_while_idle() {
        let clock = JobClock::start(Duration::from_secs(60), Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.check(), Some(Expired::Wall));
    }

    #[test]
    fn a_raise_lifts_both_budgets_of_a_running_clock() {
        let raise = Arc::new(BudgetRaise::default());
        let clock = JobClock::start(Duration::from_millis(5), Duration::from_millis(10))
            .raised_by(Some(raise.clone()));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.check(), Some(Expired::Wall));
        raise.raise_to(Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(clock.check(), None, "raised past the elapsed time");
        // A lower raise does not lower the budget back.
        raise.raise_to(Duration::from_millis(1), Duration::from_millis(1));
        assert_eq!(clock.check(), None);
    }

    #[test]
    fn huge_wall_limit_does_not_overflow() {
        let clock = JobClock::start(Duration::from_secs(1), Duration::MAX);
        assert_eq!(clock.check(), None);
    }
}
