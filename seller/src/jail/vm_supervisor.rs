//! The daemon's side of a VM sandbox (`cpushare-seller sandbox --vm-iso`),
//! shared by the daemon's VM leases and the confinement tests: start it in
//! the lease's cgroup, send the job once it is confined, carry console
//! bytes both ways, stop it (SIGKILL after a grace period) at the lease's
//! end or its wall clock.

use super::cgroup::{CgroupLimits, LeaseCgroup};
use super::supervisor::{Sandbox, SpawnSpec};
use super::JailError;
use cpushare_proto::sandbox::{FromSandbox, SandboxEnd, SandboxVmJob, ToSandbox};
use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// Memory a VM sandbox may use beyond guest RAM: the VMM's heap, thread
/// stacks, KVM's per-VM and per-vCPU kernel memory charged to the cgroup,
/// and (during boot only) the kernel and initrd read from the ISO before
/// they are copied into guest RAM. The same as the jail's
/// [`super::cgroup::OVERHEAD_BYTES`], which the cgroup adds.
pub const VMM_OVERHEAD_BYTES: u64 = super::cgroup::OVERHEAD_BYTES;

/// How long a stopped VM may take to end by itself before SIGKILL (its
/// vCPUs are kicked out of the guest at once; this is for the join and
/// the report). Generous: the sandbox runs at SCHED_IDLE, so while the
/// owner's machine is busy it may wait a long moment for a CPU, and a VM
/// that ends by itself reports how it ended.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Beyond the wall clock, a sandbox that did not stop is killed.
const WATCHDOG_SLACK: Duration = Duration::from_secs(10);

/// Starts a VM sandbox for `iso` (a host path; the sandbox opens it, and
/// `/dev/kvm`, before it pivots into its empty root) in `cgroup`; with
/// `net`, the guest gets a NIC whose frames go to that
/// [`super::frame_link::FrameListener`] path.
pub fn spawn(
    spawn: &SpawnSpec,
    iso: &Path,
    net: Option<&Path>,
    cgroup: LeaseCgroup,
) -> Result<Sandbox, JailError> {
    let mut args = vec![OsString::from("--vm-iso"), iso.as_os_str().to_owned()];
    if let Some(net) = net {
        args.push(OsString::from("--vm-net-socket"));
        args.push(net.as_os_str().to_owned());
    }
    Sandbox::spawn_with_args(spawn, Some(cgroup), &args)
}

/// The cgroup limits of a VM lease: guest memory plus
/// [`VMM_OVERHEAD_BYTES`], a CPU quota of its vCPUs.
pub fn limits(mem_bytes: u64, vcpus: u32) -> CgroupLimits {
    CgroupLimits {
        guest_memory_bytes: mem_bytes,
        code_bytes: 0,
        cpus: vcpus,
    }
}

/// What a running VM sandbox tells its supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The VM is built and its vCPUs are about to run (billing may start).
    Started,
    /// Bytes of the guest's serial console.
    Console(Vec<u8>),
}

/// Sends the job once the sandbox is confined, forwards console input to
/// it and its events to `on_event`, stops it when `stop` is raised or the
/// wall clock runs out (SIGKILL after a grace period); returns the end it
/// reported, if it lived to report one, and whether the wall clock ran out.
pub async fn drive(
    sandbox: &mut Sandbox,
    job: SandboxVmJob,
    stop: impl Future<Output = ()>,
    wall: Duration,
    mut console: mpsc::UnboundedReceiver<Vec<u8>>,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> (Option<SandboxEnd>, bool) {
    let deadline = tokio::time::sleep(wall);
    tokio::pin!(deadline);
    let watchdog = tokio::time::sleep(wall + WATCHDOG_SLACK);
    tokio::pin!(watchdog);
    tokio::pin!(stop);
    let mut job = Some(job);
    let mut console_open = true;
    let mut overran = false;
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            event = sandbox.next() => match event {
                Some(FromSandbox::Ready) => {
                    if let Some(job) = job.take() {
                        if sandbox.send_message(&ToSandbox::VmJob(job)).await.is_err() {
                            sandbox.kill();
                        }
                    }
                }
                Some(FromSandbox::Started) => on_event(Event::Started),
                Some(FromSandbox::Output { data, .. }) => on_event(Event::Console(data)),
                Some(FromSandbox::Ended(end)) => return (Some(end), overran),
                None => return (None, overran),
            },
            data = console.recv(), if console_open => match data {
                Some(data) => {
                    // A sandbox that stopped reading is ending; its death says why.
                    let _ = sandbox.send_message(&ToSandbox::ConsoleInput(data)).await;
                }
                None => console_open = false,
            },
            () = &mut stop, if grace.is_none() => {
                sandbox.stop().await;
                grace = Some(Box::pin(tokio::time::sleep(STOP_GRACE)));
            }
            () = &mut deadline, if grace.is_none() => {
                overran = true;
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
