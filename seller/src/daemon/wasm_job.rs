//! Running one wasm lease: load (compile or reuse), run on a blocking
//! thread with output streamed to the broker, map the outcome to a lease end.

use super::Ctx;
use crate::wasm::{JobOutcome, JobSpec, Limits, OutputSink, StdStream};
use cpushare_proto::msg::{self, LeaseEnd, LeaseSpec, SellerMsg};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Slack on the wall clock beyond the paid minutes (start-up, output drain).
const WALL_SLACK: Duration = Duration::from_secs(5);

struct ToBroker {
    lease: String,
    out: UnboundedSender<SellerMsg>,
}

impl OutputSink for ToBroker {
    fn write(&self, stream: StdStream, data: &[u8]) {
        let stream = match stream {
            StdStream::Stdout => msg::StdStream::Stdout,
            StdStream::Stderr => msg::StdStream::Stderr,
        };
        let _ = self.out.send(SellerMsg::Output {
            lease: self.lease.clone(),
            stream,
            data: data.to_vec(),
        });
    }
}

/// Runs the lease's module to its end.
pub(super) async fn run(
    ctx: &Ctx,
    spec: &LeaseSpec,
    wasm: Vec<u8>,
    interrupt: Arc<AtomicBool>,
) -> LeaseEnd {
    let scratch = ctx.scratch_root.join(&spec.lease);
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        return LeaseEnd::Failed {
            message: format!("seller could not create scratch space: {e}"),
        };
    }
    // Compile (or reuse) before reporting the lease started: a module that
    // does not load costs the buyer nothing.
    let runtime = ctx.runtime.clone();
    let id_hex = spec.image.hex();
    let loaded = tokio::task::spawn_blocking(move || runtime.load(&id_hex, &wasm)).await;
    let module = match loaded {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return LeaseEnd::Failed {
                message: e.to_string(),
            };
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return LeaseEnd::Failed {
                message: format!("sandbox thread failed: {e}"),
            };
        }
    };
    let _ = ctx.out.send(SellerMsg::Started {
        lease: spec.lease.clone(),
    });
    let runtime = ctx.runtime.clone();
    let sink = ToBroker {
        lease: spec.lease.clone(),
        out: ctx.out.clone(),
    };
    let job = JobSpec {
        args: spec.job.args.clone(),
        env: spec.job.env.clone(),
        stdin: spec.job.stdin.clone(),
        scratch_dir: scratch.clone(),
        interrupt: Some(interrupt),
    };
    let paid = Duration::from_secs(u64::from(spec.minutes) * 60);
    let limits = Limits {
        memory_bytes: spec.mem_mib << 20,
        cpu_time: paid * spec.cpus.max(1),
        wall_time: paid + WALL_SLACK,
    };
    let mem_mib = spec.mem_mib;
    let result =
        tokio::task::spawn_blocking(move || runtime.run(&module, job, limits, &sink)).await;
    let _ = std::fs::remove_dir_all(&scratch);
    match result {
        Ok(Ok(outcome)) => end_of(outcome, mem_mib),
        Ok(Err(e)) => LeaseEnd::Failed {
            message: e.to_string(),
        },
        Err(e) => LeaseEnd::Failed {
            message: format!("sandbox thread failed: {e}"),
        },
    }
}

fn end_of(outcome: JobOutcome, mem_mib: u64) -> LeaseEnd {
    match outcome {
        JobOutcome::Exited(code) => LeaseEnd::Exited { code },
        JobOutcome::Trapped { message } => LeaseEnd::Trapped { message },
        JobOutcome::CpuTimeExceeded => LeaseEnd::CpuTimeExceeded,
        JobOutcome::WallTimeExceeded => LeaseEnd::WallTimeExceeded,
        JobOutcome::MemoryExceeded { .. } => LeaseEnd::MemoryExceeded { limit_mib: mem_mib },
        // Only a stop from the broker sets the flag; the lease state
        // machine turns this into `Cancelled`.
        JobOutcome::Interrupted => LeaseEnd::Cancelled,
    }
}
