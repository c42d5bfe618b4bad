//! Running one VM lease: start a confined sandbox child in VM mode in the
//! lease's cgroup (it opens `/dev/kvm` and the ISO from the image cache
//! before it locks itself in, then boots the ISO in the microVMM), hand
//! it the vCPUs and memory, forward its serial console to the broker and
//! the buyer's typing to it, stop it on request (SIGKILL after a grace
//! period), reap it and name the lease's end. The daemon never parses the
//! buyer's ISO and never maps guest memory.

use super::sandbox_pool::{attack_env, make_scratch};
use super::{Ctx, StopSignal};
use crate::jail::cgroup::LeaseCgroup;
use crate::jail::frame_link::FrameListener;
use crate::jail::supervisor::{self, SpawnSpec};
use crate::jail::verdict;
use crate::jail::vm_supervisor::{self, Event};
use cpushare_proto::msg::{LeaseEnd, LeaseSpec, SandboxKind, SellerMsg};
use cpushare_proto::sandbox::SandboxVmJob;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Slack on the wall clock beyond the paid minutes (boot, console drain).
const WALL_SLACK: Duration = Duration::from_secs(5);

/// KVM's supported CPUID list, read on the first VM lease and handed to
/// every VM sandbox after it, which then skips the read (about 6 % of a
/// small VM's start-up CPU where the host is itself a VM). Empty if KVM
/// cannot be opened here: the sandbox then reads it, and says why not.
fn host_cpuid() -> Vec<[u32; 7]> {
    static CPUID: OnceLock<Vec<[u32; 7]>> = OnceLock::new();
    CPUID
        .get_or_init(|| {
            cpushare_vmm::HostCpuid::read_host()
                .map(|c| c.to_words())
                .unwrap_or_default()
        })
        .clone()
}

fn failed(message: impl Into<String>) -> LeaseEnd {
    LeaseEnd::Failed {
        message: message.into(),
    }
}

/// Boots the lease's ISO (already in the image cache) in a VM sandbox and
/// runs it to its end.
pub(super) async fn run(
    ctx: &Ctx,
    spec: &LeaseSpec,
    stop: Arc<StopSignal>,
    input: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    paid: watch::Receiver<u32>,
) -> LeaseEnd {
    let vcpus = match u8::try_from(spec.cpus) {
        Ok(n) if n > 0 => n,
        _ => {
            return failed(format!(
                "{} vCPUs is more than this VMM supports",
                spec.cpus
            ))
        }
    };
    let uid = supervisor::next_uid();
    let scratch = ctx.scratch_root.join(&spec.lease);
    if let Err(e) = make_scratch(&scratch, uid) {
        return failed(format!("seller could not create scratch space: {e}"));
    }
    // The console's typed input arrives on a blocking channel; a thread
    // carries it to this task (and ends when the lease drops its sender).
    let (console_tx, console_rx) = mpsc::unbounded_channel();
    if let Some(input) = input {
        std::thread::spawn(move || {
            while let Ok(data) = input.recv() {
                if console_tx.send(data).is_err() {
                    break;
                }
            }
        });
    }
    // A VM job's arguments extend its kernel command line (the buyer's
    // `cpushare.nfs=` shares among them).
    let mut cmdline = spec.job.args.clone();
    // The guest's vnet address, once the broker has placed the lease in
    // its buyer's network; the guest configures its NIC from it.
    if let Some((address, prefix)) = ctx.vnet.address(&spec.lease, VNET_WAIT).await {
        cmdline.push(format!("cpushare.ip={address}/{prefix}"));
    }
    let job = SandboxVmJob {
        vcpus,
        mem_bytes: spec.mem_mib << 20,
        cmdline,
        host_cpuid: host_cpuid(),
    };
    let end = supervise(ctx, spec, job, uid, &scratch, &stop, console_rx, paid).await;
    let _ = std::fs::remove_dir_all(&scratch);
    end
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    ctx: &Ctx,
    spec: &LeaseSpec,
    job: SandboxVmJob,
    uid: u32,
    scratch: &Path,
    stop: &StopSignal,
    console: mpsc::UnboundedReceiver<Vec<u8>>,
    paid: watch::Receiver<u32>,
) -> LeaseEnd {
    let cgroup = match LeaseCgroup::create(
        &ctx.jail.cgroups,
        &format!("{}-{}", std::process::id(), spec.lease),
        vm_supervisor::limits(job.mem_bytes, spec.cpus),
    ) {
        Ok(cg) => cg,
        Err(e) => return failed(format!("seller could not create the lease's cgroup: {e}")),
    };
    let spawn_spec = SpawnSpec {
        exe: ctx.jail.exe.clone(),
        jail_root: ctx.jail.root.clone(),
        scratch: scratch.to_path_buf(),
        uid,
        max_memory_bytes: job.mem_bytes,
        jail: true,
        seccomp: true,
        env: attack_env(),
    };
    let iso = ctx.cache.path(&spec.image);
    // The guest's NIC: its frames come to the daemon over a socket the
    // sandbox connects before it locks itself in, and go to the lease's
    // vnet node.
    let nic = if ctx.vnet.wanted_for(SandboxKind::Vm) {
        match nic_listener(ctx, spec) {
            Ok(l) => Some(l),
            Err(e) => return failed(format!("seller could not make the guest's NIC: {e}")),
        }
    } else {
        None
    };
    let nic_path = nic.as_ref().map(|l| l.path().to_path_buf());
    let mut sandbox = match vm_supervisor::spawn(&spawn_spec, &iso, nic_path.as_deref(), cgroup) {
        Ok(s) => s,
        Err(e) => return failed(format!("seller could not start the sandbox: {e}")),
    };
    if let Some(nic) = nic {
        let vnet = ctx.vnet.clone();
        let lease = spec.lease.clone();
        tokio::spawn(async move {
            let bridged = match nic.accept(NIC_CONNECT_TIMEOUT).await {
                Ok(fd) => vnet.bridge_frames(&lease, fd),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = bridged {
                tracing::warn!(%lease, "the guest's NIC is not on the vnet: {e:#}");
            }
        });
    }
    let began = tokio::time::Instant::now();
    let overran_paid = AtomicBool::new(false);
    let lease = spec.lease.clone();
    let out = ctx.out.clone();
    let mut events = |event: Event| match event {
        Event::Started => {
            let _ = out.send(SellerMsg::Started {
                lease: lease.clone(),
            });
        }
        Event::Console(data) => {
            let _ = out.send(SellerMsg::Output {
                lease: lease.clone(),
                stream: cpushare_proto::msg::StdStream::Stdout,
                data,
            });
        }
    };
    // The paid wall clock (which renewals extend) is enforced as a stop;
    // the supervisor's own clock is only a backstop at the longest lease.
    let stop_or_overrun = stop_or_overrun(stop, paid, began, &overran_paid);
    let (reported, overran) = vm_supervisor::drive(
        &mut sandbox,
        job,
        stop_or_overrun,
        LONGEST_LEASE,
        console,
        &mut events,
    )
    .await;
    let overran = overran || overran_paid.load(Ordering::Relaxed);
    let death = sandbox.reap(reported).await;
    let end = verdict::lease_end(&death, spec.mem_mib);
    if overran && end == LeaseEnd::Cancelled {
        LeaseEnd::WallTimeExceeded
    } else {
        end
    }
}

/// How long a VM waits for its vnet address before it boots without one.
const VNET_WAIT: Duration = Duration::from_secs(5);

/// How long the sandbox may take to connect its guest NIC.
const NIC_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A listening socket for the lease's guest NIC, in the daemon's own
/// directory (root only), named by the lease.
fn nic_listener(ctx: &Ctx, spec: &LeaseSpec) -> std::io::Result<FrameListener> {
    let dir = ctx
        .scratch_root
        .parent()
        .unwrap_or(&ctx.scratch_root)
        .join("nic");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    FrameListener::bind(&dir.join(format!("{}.sock", spec.lease)))
}

/// The longest lease the broker sells (7 days), beyond any renewal.
const LONGEST_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Resolves when the lease is stopped, or when it has run past its paid
/// minutes (as renewals raise them) plus slack, then setting `overran`.
async fn stop_or_overrun(
    stop: &StopSignal,
    mut paid: watch::Receiver<u32>,
    began: tokio::time::Instant,
    overran: &AtomicBool,
) {
    let mut renewals_open = true;
    loop {
        let wall = Duration::from_secs(u64::from(*paid.borrow_and_update()) * 60) + WALL_SLACK;
        tokio::select! {
            () = stop.raised() => return,
            () = tokio::time::sleep_until(began + wall) => {
                overran.store(true, Ordering::Relaxed);
                return;
            }
            changed = paid.changed(), if renewals_open => renewals_open = changed.is_ok(),
        }
    }
}
