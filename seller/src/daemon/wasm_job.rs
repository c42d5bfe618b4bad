//! Running one wasm lease: compile (or reuse) the module here, in the
//! trusted daemon; start a confined sandbox child in the lease's cgroup;
//! hand it the module, its compiled form and the job; forward its output
//! to the broker; stop it on request (SIGKILL after a grace period); reap
//! it and name the lease's end.

use super::prepared::Prepared;
use super::sandbox_pool::{attack_env, make_scratch};
use super::{Ctx, StopSignal};
use crate::jail::cgroup::{CgroupLimits, LeaseCgroup};
use crate::jail::supervisor::{self, Sandbox, SpawnSpec};
use crate::jail::verdict;
use cpushare_proto::msg::{LeaseEnd, LeaseSpec, SellerMsg};
use cpushare_proto::sandbox::{FromSandbox, SandboxEnd, SandboxJob, ToSandbox};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Slack on the wall clock beyond the paid minutes (start-up, output drain).
const WALL_SLACK: Duration = Duration::from_secs(5);

/// How long a stopped guest may take to end by itself before SIGKILL (it
/// checks its interrupt flag every ~10 ms of execution).
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Beyond the wall-clock budget the sandbox enforces itself, the daemon
/// kills it after this much more.
const WATCHDOG_SLACK: Duration = Duration::from_secs(10);

/// The job's CPU and wall-clock budgets, from its start, for a lease paid
/// `minutes` in all on `cpus` vCPUs.
fn budgets(minutes: u32, cpus: u32) -> (Duration, Duration) {
    let paid = Duration::from_secs(u64::from(minutes) * 60);
    (paid * cpus.max(1), paid + WALL_SLACK)
}

fn failed(message: impl Into<String>) -> LeaseEnd {
    LeaseEnd::Failed {
        message: message.into(),
    }
}

/// The lease's module, as the daemon has it.
pub(super) enum Module {
    /// Bytes just fetched (verified against their id), not compiled yet.
    Fetched(Vec<u8>),
    /// Ready from a recent lease of the same module.
    Prepared(Arc<Prepared>),
}

/// Runs the lease's module to its end.
pub(super) async fn run(
    ctx: &Ctx,
    spec: &LeaseSpec,
    module: Module,
    stop: Arc<StopSignal>,
    paid: watch::Receiver<u32>,
) -> LeaseEnd {
    // Compile (or reuse) before reporting the lease started: a module that
    // does not load costs the buyer nothing. The compiled form is made only
    // here, never in a sandbox, and handed to the child.
    let prepared = match module {
        Module::Prepared(p) => p,
        Module::Fetched(wasm) => match prepare(ctx, spec, wasm).await {
            Ok(p) => p,
            Err(end) => return end,
        },
    };
    let (wasm, compiled) = (&prepared.wasm, &prepared.compiled);
    let limits = CgroupLimits {
        guest_memory_bytes: spec.mem_mib << 20,
        code_bytes: 2 * compiled.len() as u64,
        cpus: spec.cpus,
    };
    // A sandbox confined ahead of time if one is waiting and big enough.
    let pooled = (limits.guest_memory_bytes <= ctx.pool.max_memory_bytes())
        .then(|| ctx.pool.take(limits))
        .flatten();
    let (uid, scratch) = match &pooled {
        Some(p) => (p.uid, p.scratch.clone()),
        None => (supervisor::next_uid(), ctx.scratch_root.join(&spec.lease)),
    };
    if pooled.is_none() {
        if let Err(e) = make_scratch(&scratch, uid) {
            return failed(format!("seller could not create scratch space: {e}"));
        }
    }
    if let Err(e) = super::shares::stage(ctx, spec, &scratch, uid).await {
        let _ = std::fs::remove_dir_all(&scratch);
        return failed(e);
    }
    let sandbox = match pooled {
        Some(p) => Ok(p.sandbox),
        None => start_sandbox(ctx, spec, limits, uid, &scratch),
    };
    let mut end = match sandbox {
        Ok(sandbox) => supervise(ctx, spec, sandbox, wasm, compiled, &stop, paid).await,
        Err(end) => end,
    };
    // Outputs go back only from a job that ended well.
    if end == (LeaseEnd::Exited { code: 0 }) {
        if let Err(e) = super::shares::ship(ctx, spec, &scratch).await {
            end = failed(e);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    end
}

/// Compiles (or finds compiled) a fetched module and keeps it ready for
/// the next lease of it.
async fn prepare(ctx: &Ctx, spec: &LeaseSpec, wasm: Vec<u8>) -> Result<Arc<Prepared>, LeaseEnd> {
    let runtime = ctx.runtime.clone();
    let id_hex = spec.image.hex();
    let loaded = super::compile::run(move || {
        let module = runtime.load(&id_hex, &wasm)?;
        let compiled = runtime.compiled_bytes(&module)?;
        Ok::<_, crate::wasm::WasmError>(Prepared { wasm, compiled })
    })
    .await;
    match loaded {
        Ok(Ok(p)) => {
            let p = Arc::new(p);
            ctx.prepared.insert(&spec.image, p.clone());
            Ok(p)
        }
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(e) => Err(failed(format!("compile thread failed: {e}"))),
    }
}

/// Starts a sandbox for this lease alone (none was waiting in the pool).
fn start_sandbox(
    ctx: &Ctx,
    spec: &LeaseSpec,
    limits: CgroupLimits,
    uid: u32,
    scratch: &Path,
) -> Result<Sandbox, LeaseEnd> {
    let cgroup = LeaseCgroup::create(
        &ctx.jail.cgroups,
        // Lease ids are unique per broker, not per host: several daemons
        // (of several brokers) may share this machine's hierarchy.
        &format!("{}-{}", std::process::id(), spec.lease),
        limits,
    )
    .map_err(|e| failed(format!("seller could not create the lease's cgroup: {e}")))?;
    let spawn = SpawnSpec {
        exe: ctx.jail.exe.clone(),
        jail_root: ctx.jail.root.clone(),
        scratch: scratch.to_path_buf(),
        uid,
        max_memory_bytes: limits.guest_memory_bytes,
        jail: true,
        seccomp: true,
        env: attack_env(),
    };
    ctx.jail
        .start_wasm(&spawn, cgroup)
        .map_err(|e| failed(format!("seller could not start the sandbox: {e}")))
}

/// Hands the sandbox its job, runs it to its end and names the end.
async fn supervise(
    ctx: &Ctx,
    spec: &LeaseSpec,
    mut sandbox: Sandbox,
    wasm: &[u8],
    compiled: &[u8],
    stop: &StopSignal,
    paid: watch::Receiver<u32>,
) -> LeaseEnd {
    let guest_memory = spec.mem_mib << 20;
    let (cpu, wall) = budgets(*paid.borrow(), spec.cpus);
    let job = SandboxJob {
        image_hex: spec.image.hex(),
        args: spec.job.args.clone(),
        env: spec.job.env.clone(),
        stdin: spec.job.stdin.clone(),
        memory_bytes: guest_memory,
        cpu_time_ms: cpu.as_millis() as u64,
        wall_time_ms: wall.as_millis() as u64,
    };
    let reported = drive(ctx, spec, &mut sandbox, wasm, compiled, job, stop, paid).await;
    let death = sandbox.reap(reported).await;
    verdict::lease_end(&death, spec.mem_mib)
}

/// Feeds the sandbox and forwards its events until it ends; returns the
/// end it reported, if it lived to report one.
#[allow(clippy::too_many_arguments)]
async fn drive(
    ctx: &Ctx,
    spec: &LeaseSpec,
    sandbox: &mut Sandbox,
    wasm: &[u8],
    compiled: &[u8],
    job: SandboxJob,
    stop: &StopSignal,
    mut paid: watch::Receiver<u32>,
) -> Option<SandboxEnd> {
    let began = tokio::time::Instant::now();
    let wall = Duration::from_millis(job.wall_time_ms);
    let watchdog = tokio::time::sleep(wall + WATCHDOG_SLACK);
    tokio::pin!(watchdog);
    let mut renewals_open = true;
    let mut job = Some(job);
    if sandbox.is_ready() {
        // A pooled sandbox: it said Ready while it waited.
        let job = job.take().expect("just set");
        if sandbox.send_job(wasm, compiled, job).await.is_err() {
            sandbox.kill();
        }
    }
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            event = sandbox.next() => match event {
                Some(FromSandbox::Ready) => {
                    if let Some(job) = job.take() {
                        if sandbox.send_job(wasm, compiled, job).await.is_err() {
                            sandbox.kill();
                        }
                    }
                }
                Some(FromSandbox::Started) => {
                    let _ = ctx.out.send(SellerMsg::Started { lease: spec.lease.clone() });
                }
                Some(FromSandbox::Output { stream, data }) => {
                    let _ = ctx.out.send(SellerMsg::Output {
                        lease: spec.lease.clone(),
                        stream,
                        data,
                    });
                }
                Some(FromSandbox::Ended(end)) => return Some(end),
                None => return None,
            },
            () = stop.raised(), if grace.is_none() => {
                sandbox.stop().await;
                grace = Some(Box::pin(tokio::time::sleep(STOP_GRACE)));
            }
            () = async { grace.as_mut().expect("guarded").await }, if grace.is_some() => {
                sandbox.kill();
                grace = Some(Box::pin(tokio::time::sleep(Duration::from_secs(3600))));
            }
            changed = paid.changed(), if renewals_open => {
                if changed.is_err() {
                    renewals_open = false;
                    continue;
                }
                // Renewed: the sandbox's own budgets and this watchdog grow.
                let (cpu, wall) = budgets(*paid.borrow_and_update(), spec.cpus);
                watchdog.as_mut().reset(began + wall + WATCHDOG_SLACK);
                let (cpu_time_ms, wall_time_ms) = (cpu.as_millis() as u64, wall.as_millis() as u64);
                match job.as_mut() {
                    Some(pending) => {
                        pending.cpu_time_ms = cpu_time_ms;
                        pending.wall_time_ms = wall_time_ms;
                    }
                    None => {
                        let raise = ToSandbox::Extend { cpu_time_ms, wall_time_ms };
                        // A sandbox that stopped reading is ending; its death says why.
                        let _ = sandbox.send_message(&raise).await;
                    }
                }
            }
            () = &mut watchdog => {
                // The sandbox's own wall budget should have ended the job
                // already; one starved of CPU by the seller's own work (its
                // cgroup weighs next to nothing against the host's tasks)
                // may not have run to look at its clock. This is the same
                // budget, so its end carries the same name.
                sandbox.kill();
                return Some(SandboxEnd::WallTimeExceeded);
            }
        }
    }
}
