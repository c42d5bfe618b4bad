//! Running one wasm lease: compile (or reuse) the module here, in the
//! trusted daemon; start a confined sandbox child in the lease's cgroup;
//! hand it the module, its compiled form and the job; forward its output
//! to the broker; stop it on request (SIGKILL after a grace period); reap
//! it and name the lease's end.

use super::{Ctx, StopSignal};
use crate::jail::cgroup::{CgroupLimits, LeaseCgroup};
use crate::jail::supervisor::{self, Sandbox, SpawnSpec};
use crate::jail::verdict;
use cpushare_proto::msg::{LeaseEnd, LeaseSpec, SellerMsg};
use cpushare_proto::sandbox::{FromSandbox, SandboxJob};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Slack on the wall clock beyond the paid minutes (start-up, output drain).
const WALL_SLACK: Duration = Duration::from_secs(5);

/// How long a stopped guest may take to end by itself before SIGKILL (it
/// checks its interrupt flag every ~10 ms of execution).
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Beyond the wall-clock budget the sandbox enforces itself, the daemon
/// kills it after this much more.
const WATCHDOG_SLACK: Duration = Duration::from_secs(10);

fn failed(message: impl Into<String>) -> LeaseEnd {
    LeaseEnd::Failed {
        message: message.into(),
    }
}

fn make_scratch(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Runs the lease's module to its end.
pub(super) async fn run(
    ctx: &Ctx,
    spec: &LeaseSpec,
    wasm: Vec<u8>,
    stop: Arc<StopSignal>,
) -> LeaseEnd {
    // Compile (or reuse) before reporting the lease started: a module that
    // does not load costs the buyer nothing. The compiled form is made only
    // here, never in a sandbox, and handed to the child.
    let runtime = ctx.runtime.clone();
    let id_hex = spec.image.hex();
    let wasm = Arc::new(wasm);
    let bytes = wasm.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let module = runtime.load(&id_hex, &bytes)?;
        runtime.compiled_bytes(&module)
    })
    .await;
    let compiled = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(e) => return failed(format!("compile thread failed: {e}")),
    };
    let uid = supervisor::next_uid();
    let scratch = ctx.scratch_root.join(&spec.lease);
    if let Err(e) = make_scratch(&scratch, uid) {
        return failed(format!("seller could not create scratch space: {e}"));
    }
    let end = supervise(ctx, spec, &wasm, &compiled, uid, &scratch, &stop).await;
    let _ = std::fs::remove_dir_all(&scratch);
    end
}

async fn supervise(
    ctx: &Ctx,
    spec: &LeaseSpec,
    wasm: &[u8],
    compiled: &[u8],
    uid: u32,
    scratch: &Path,
    stop: &StopSignal,
) -> LeaseEnd {
    let guest_memory = spec.mem_mib << 20;
    let cgroup = match LeaseCgroup::create(
        &ctx.jail.cgroups,
        // Lease ids are unique per broker, not per host: several daemons
        // (of several brokers) may share this machine's hierarchy.
        &format!("{}-{}", std::process::id(), spec.lease),
        CgroupLimits {
            guest_memory_bytes: guest_memory,
            cpus: spec.cpus,
        },
    ) {
        Ok(cg) => cg,
        Err(e) => return failed(format!("seller could not create the lease's cgroup: {e}")),
    };
    let env = attack_env();
    let spawn = SpawnSpec {
        exe: ctx.jail.exe.clone(),
        jail_root: ctx.jail.root.clone(),
        scratch: scratch.to_path_buf(),
        uid,
        max_memory_bytes: guest_memory,
        jail: true,
        seccomp: true,
        env,
    };
    let mut sandbox = match Sandbox::spawn(&spawn, Some(cgroup)) {
        Ok(s) => s,
        Err(e) => return failed(format!("seller could not start the sandbox: {e}")),
    };
    let paid = Duration::from_secs(u64::from(spec.minutes) * 60);
    let wall = paid + WALL_SLACK;
    let job = SandboxJob {
        image_hex: spec.image.hex(),
        args: spec.job.args.clone(),
        env: spec.job.env.clone(),
        stdin: spec.job.stdin.clone(),
        memory_bytes: guest_memory,
        cpu_time_ms: (paid * spec.cpus.max(1)).as_millis() as u64,
        wall_time_ms: wall.as_millis() as u64,
    };
    let reported = drive(ctx, spec, &mut sandbox, wasm, compiled, job, stop, wall).await;
    let death = sandbox.reap(reported).await;
    verdict::lease_end(&death, spec.mem_mib)
}

/// Debug builds pass the attack hook of the daemon's environment on to
/// the sandbox (tests drive it through a real daemon); release builds
/// give the sandbox an empty environment.
fn attack_env() -> Vec<(String, String)> {
    #[cfg(debug_assertions)]
    if let Ok(attack) = std::env::var(crate::jail::attack::ENV) {
        return vec![(crate::jail::attack::ENV.to_string(), attack)];
    }
    Vec::new()
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
    wall: Duration,
) -> Option<cpushare_proto::sandbox::SandboxEnd> {
    let watchdog = tokio::time::sleep(wall + WATCHDOG_SLACK);
    tokio::pin!(watchdog);
    let mut job = Some(job);
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
            () = &mut watchdog => {
                sandbox.kill();
            }
        }
    }
}
