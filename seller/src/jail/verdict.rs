//! How a lease ended, from what its sandbox said and how it died: a
//! sans-IO decision the supervisor feeds with facts.

use super::seccomp::syscall_name;
use cpushare_proto::msg::LeaseEnd;
use cpushare_proto::sandbox::SandboxEnd;

/// Exit status of a sandbox that could not build its jail.
pub const EXIT_JAIL_FAILED: i32 = 125;

/// What the supervisor knows once the sandbox process is reaped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Death {
    /// The end the sandbox reported, if it lived to report one.
    pub reported: Option<SandboxEnd>,
    /// Exit status of the outer sandbox process (128 + signal for a signal).
    pub status: Option<i32>,
    /// Syscall number the SIGSYS handler reported, if any.
    pub seccomp_syscall: Option<i64>,
    /// The cgroup saw an OOM kill.
    pub oom_killed: bool,
    /// The daemon stopped or killed it (the lease was stopped).
    pub stopped: bool,
}

/// The lease's end; `mem_mib` is the lease's guest memory.
pub fn lease_end(death: &Death, mem_mib: u64) -> LeaseEnd {
    if let Some(nr) = death.seccomp_syscall {
        return LeaseEnd::Killed {
            reason: format!("seccomp (syscall {})", syscall_name(nr)),
        };
    }
    if let Some(end) = &death.reported {
        return match end.clone() {
            SandboxEnd::Exited { code } => LeaseEnd::Exited { code },
            SandboxEnd::Trapped { message } => LeaseEnd::Trapped { message },
            SandboxEnd::CpuTimeExceeded => LeaseEnd::CpuTimeExceeded,
            SandboxEnd::WallTimeExceeded => LeaseEnd::WallTimeExceeded,
            SandboxEnd::MemoryExceeded { .. } => LeaseEnd::MemoryExceeded { limit_mib: mem_mib },
            SandboxEnd::Interrupted => LeaseEnd::Cancelled,
            SandboxEnd::Failed { message } => LeaseEnd::Failed { message },
            SandboxEnd::PowerOff { status } => LeaseEnd::PowerOff { status },
            // A live system has nothing to reboot into: a reset (how a Linux
            // guest without ACPI ends `reboot`) ends the lease cleanly.
            SandboxEnd::GuestReset => LeaseEnd::PowerOff { status: 0 },
            SandboxEnd::TripleFault => LeaseEnd::Trapped {
                message: "the guest triple-faulted".into(),
            },
        };
    }
    if death.oom_killed {
        return LeaseEnd::Killed {
            reason: "out of memory".into(),
        };
    }
    if death.stopped {
        return LeaseEnd::Cancelled;
    }
    match death.status {
        Some(EXIT_JAIL_FAILED) => LeaseEnd::Failed {
            message: "the seller could not confine the sandbox; its operator should run `cpushare-seller doctor`".into(),
        },
        Some(s) if s > 128 => LeaseEnd::Killed {
            reason: format!("signal {}", s - 128),
        },
        Some(s) => LeaseEnd::Failed {
            message: format!("the sandbox exited with status {s} before reporting"),
        },
        None => LeaseEnd::Failed {
            message: "the sandbox vanished".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_report_wins_and_names_the_syscall() {
        let d = Death {
            seccomp_syscall: Some(libc::SYS_ptrace),
            status: Some(159),
            ..Death::default()
        };
        assert_eq!(
            lease_end(&d, 16).to_string(),
            "killed: seccomp (syscall ptrace)"
        );
    }

    #[test]
    fn vm_ends_map_to_the_lease_ends_vm_leases_always_had() {
        let end = |e| {
            lease_end(
                &Death {
                    reported: Some(e),
                    ..Death::default()
                },
                64,
            )
        };
        assert_eq!(
            end(SandboxEnd::PowerOff { status: 3 }),
            LeaseEnd::PowerOff { status: 3 }
        );
        assert_eq!(
            end(SandboxEnd::GuestReset),
            LeaseEnd::PowerOff { status: 0 }
        );
        assert_eq!(
            end(SandboxEnd::TripleFault).to_string(),
            LeaseEnd::Trapped {
                message: "the guest triple-faulted".into()
            }
            .to_string()
        );
    }

    #[test]
    fn oom_kill_without_report_is_out_of_memory() {
        let d = Death {
            oom_killed: true,
            status: Some(137),
            ..Death::default()
        };
        assert_eq!(lease_end(&d, 16).to_string(), "killed: out of memory");
    }

    #[test]
    fn a_reported_end_is_used_and_a_stop_is_cancelled() {
        let d = Death {
            reported: Some(SandboxEnd::Exited { code: 3 }),
            ..Death::default()
        };
        assert_eq!(lease_end(&d, 16), LeaseEnd::Exited { code: 3 });
        let d = Death {
            stopped: true,
            status: Some(137),
            ..Death::default()
        };
        assert_eq!(lease_end(&d, 16), LeaseEnd::Cancelled);
        let d = Death {
            status: Some(EXIT_JAIL_FAILED),
            ..Death::default()
        };
        assert!(matches!(lease_end(&d, 16), LeaseEnd::Failed { .. }));
    }
}
