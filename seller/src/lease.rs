//! The lease state machine on the seller's side, sans-IO.
//!
//! A lease is `Fetching` its image, then `Running` its sandbox, then
//! `Ended`. The broker may ask to stop it at any point; a stop while the
//! image is still coming ends it without running anything. The daemon feeds
//! events in and acts on the returned [`Action`]s.

use cpushare_proto::msg::LeaseEnd;

/// Where a lease is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// The image is being fetched (or read from the cache).
    Fetching,
    /// The sandbox runs.
    Running,
    /// Over; the end has been reported.
    Ended(LeaseEnd),
}

/// What happened to a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The image is here and verified.
    ImageReady,
    /// The image could not be had.
    ImageFailed(String),
    /// The sandbox finished.
    SandboxExited(LeaseEnd),
    /// The broker asked to stop.
    StopRequested,
}

/// What the daemon must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the sandbox and tell the broker `Started`.
    StartSandbox,
    /// Interrupt the running sandbox (its exit arrives later as an event).
    InterruptSandbox,
    /// Report this end to the broker and free the lease's resources.
    Report(LeaseEnd),
    /// Nothing to do.
    None,
}

/// One lease's state.
#[derive(Debug, Clone)]
pub struct Lease {
    state: LeaseState,
    stop_requested: bool,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    /// A lease that has just been assigned.
    pub fn new() -> Lease {
        Lease {
            state: LeaseState::Fetching,
            stop_requested: false,
        }
    }

    /// Current state.
    pub fn state(&self) -> &LeaseState {
        &self.state
    }

    /// Applies `event`, returning what to do.
    pub fn handle(&mut self, event: LeaseEvent) -> Action {
        match (&self.state, event) {
            (LeaseState::Ended(_), _) => Action::None,
            (LeaseState::Fetching, LeaseEvent::ImageReady) if self.stop_requested => {
                self.end(LeaseEnd::Cancelled)
            }
            (LeaseState::Fetching, LeaseEvent::ImageReady) => {
                self.state = LeaseState::Running;
                Action::StartSandbox
            }
            (LeaseState::Fetching, LeaseEvent::ImageFailed(message)) => {
                self.end(LeaseEnd::Failed { message })
            }
            (LeaseState::Fetching, LeaseEvent::StopRequested) => {
                self.stop_requested = true;
                Action::None
            }
            (LeaseState::Fetching, LeaseEvent::SandboxExited(end)) => self.end(end),
            (LeaseState::Running, LeaseEvent::SandboxExited(end)) => {
                let end = if self.stop_requested && !end_is_natural(&end) {
                    LeaseEnd::Cancelled
                } else {
                    end
                };
                self.end(end)
            }
            (LeaseState::Running, LeaseEvent::StopRequested) => {
                self.stop_requested = true;
                Action::InterruptSandbox
            }
            (LeaseState::Running, LeaseEvent::ImageReady | LeaseEvent::ImageFailed(_)) => {
                Action::None
            }
        }
    }

    fn end(&mut self, end: LeaseEnd) -> Action {
        self.state = LeaseState::Ended(end.clone());
        Action::Report(end)
    }
}

/// An end the job reached by itself, which a late stop must not hide.
fn end_is_natural(end: &LeaseEnd) -> bool {
    matches!(end, LeaseEnd::Exited { .. } | LeaseEnd::PowerOff { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_life() {
        let mut l = Lease::new();
        assert_eq!(l.handle(LeaseEvent::ImageReady), Action::StartSandbox);
        assert_eq!(l.state(), &LeaseState::Running);
        let end = LeaseEnd::Exited { code: 0 };
        assert_eq!(
            l.handle(LeaseEvent::SandboxExited(end.clone())),
            Action::Report(end)
        );
        assert_eq!(l.handle(LeaseEvent::StopRequested), Action::None);
    }

    #[test]
    fn stop_during_fetch_never_runs_the_job() {
        let mut l = Lease::new();
        assert_eq!(l.handle(LeaseEvent::StopRequested), Action::None);
        assert_eq!(
            l.handle(LeaseEvent::ImageReady),
            Action::Report(LeaseEnd::Cancelled)
        );
    }

    #[test]
    fn stop_while_running_interrupts_and_reports_cancelled() {
        let mut l = Lease::new();
        l.handle(LeaseEvent::ImageReady);
        assert_eq!(
            l.handle(LeaseEvent::StopRequested),
            Action::InterruptSandbox
        );
        assert_eq!(
            l.handle(LeaseEvent::SandboxExited(LeaseEnd::WallTimeExceeded)),
            Action::Report(LeaseEnd::Cancelled)
        );
    }

    #[test]
    fn a_job_that_exits_as_it_is_stopped_keeps_its_exit_code() {
        let mut l = Lease::new();
        l.handle(LeaseEvent::ImageReady);
        l.handle(LeaseEvent::StopRequested);
        let end = LeaseEnd::Exited { code: 4 };
        assert_eq!(
            l.handle(LeaseEvent::SandboxExited(end.clone())),
            Action::Report(end)
        );
    }

    #[test]
    fn failed_fetch_reports_failure() {
        let mut l = Lease::new();
        assert!(matches!(
            l.handle(LeaseEvent::ImageFailed("gone".into())),
            Action::Report(LeaseEnd::Failed { .. })
        ));
        assert_eq!(l.handle(LeaseEvent::ImageReady), Action::None);
    }
}
