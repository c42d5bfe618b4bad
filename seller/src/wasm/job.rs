//! What a buyer's job is given (arguments, environment, input, limits) and
//! how it ended.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The inputs of one run of a module.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    /// Arguments after `argv[0]` (which the runtime sets to the module's name).
    pub args: Vec<String>,
    /// The complete environment; nothing of the seller's leaks in.
    pub env: Vec<(String, String)>,
    /// Everything the guest will read from stdin.
    pub stdin: Vec<u8>,
    /// Host directory the guest sees as `/scratch` and as its working directory.
    pub scratch_dir: PathBuf,
    /// Set to `true` (from any thread) to stop the guest within one epoch
    /// tick (~10 ms of guest execution): the lease ended or the owner
    /// wants the machine back.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Raised budgets, if the job's owner may raise them while it runs (a
    /// renewed lease); the job's clock reads it at every epoch tick.
    pub raise: Option<Arc<BudgetRaise>>,
}

/// CPU and wall-clock budgets of a running job, raised from any thread
/// (the lease was renewed); they only grow, and never below the job's
/// [`Limits`].
#[derive(Debug, Default)]
pub struct BudgetRaise {
    cpu_ms: AtomicU64,
    wall_ms: AtomicU64,
}

impl BudgetRaise {
    /// Makes the job's budgets, counted from its start, at least these.
    pub fn raise_to(&self, cpu_time: Duration, wall_time: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.cpu_ms.fetch_max(ms(cpu_time), Ordering::Relaxed);
        self.wall_ms.fetch_max(ms(wall_time), Ordering::Relaxed);
    }

    /// The raised CPU budget (zero if never raised).
    pub(crate) fn cpu_time(&self) -> Duration {
        Duration::from_millis(self.cpu_ms.load(Ordering::Relaxed))
    }

    /// The raised wall-clock budget (zero if never raised).
    pub(crate) fn wall_time(&self) -> Duration {
        Duration::from_millis(self.wall_ms.load(Ordering::Relaxed))
    }
}

/// The resources one run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Ceiling on the guest's linear memory, in bytes.
    pub memory_bytes: u64,
    /// CPU time the run's thread may use (measured on that thread, so jobs
    /// sharing a core do not eat each other's budget).
    pub cpu_time: Duration,
    /// Wall-clock time from start to forced stop.
    pub wall_time: Duration,
}

/// How a run ended. Each is a normal result of running untrusted code, not
/// an error of the seller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The guest returned from `_start` (status 0) or called `proc_exit`.
    Exited(i32),
    /// The guest trapped (unreachable, out-of-bounds access, stack overflow...).
    Trapped {
        /// wasmtime's description of the trap, with the guest backtrace.
        message: String,
    },
    /// The guest used up its CPU time.
    CpuTimeExceeded,
    /// The guest ran past its wall-clock time.
    WallTimeExceeded,
    /// The seller stopped the guest through [`JobSpec::interrupt`].
    Interrupted,
    /// The guest was refused memory beyond its limit and then failed (a
    /// non-zero exit or a trap after a denied `memory.grow`).
    MemoryExceeded {
        /// The limit it hit, in bytes.
        limit: u64,
    },
}
