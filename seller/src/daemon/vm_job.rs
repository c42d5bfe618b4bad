//! Running one VM lease: boot the buyer's live ISO in the microVMM, stream
//! its serial console to the broker, end with the guest's power-off status.

use super::{Ctx, StopSignal};
use cpushare_proto::msg::{LeaseEnd, LeaseSpec, SellerMsg, StdStream};
use cpushare_vmm::{from_iso, Vm, VmExit};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Slack on the wall clock beyond the paid minutes (boot, console drain).
const WALL_SLACK: Duration = Duration::from_secs(5);

/// The guest's serial console, forwarded to the broker as the lease's stdout.
struct Console {
    lease: String,
    out: UnboundedSender<SellerMsg>,
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.out.send(SellerMsg::Output {
            lease: self.lease.clone(),
            stream: StdStream::Stdout,
            data: buf.to_vec(),
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The buyer's typed input, read by the VMM's console thread; ends (EOF)
/// when the lease's sender is dropped.
struct ConsoleInput {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl std::io::Read for ConsoleInput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            match self.rx.recv() {
                Ok(data) => self.pending = data,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

/// Boots the lease's ISO (already in the image cache) and runs it to its end.
pub(super) async fn run(
    ctx: &Ctx,
    spec: &LeaseSpec,
    stop: Arc<StopSignal>,
    input: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
) -> LeaseEnd {
    let iso = ctx.cache.path(&spec.image);
    let vcpus = match u8::try_from(spec.cpus) {
        Ok(n) if n > 0 => n,
        _ => {
            return LeaseEnd::Failed {
                message: format!("{} vCPUs is more than this VMM supports", spec.cpus),
            }
        }
    };
    let mem_bytes = spec.mem_mib << 20;
    let boot = match tokio::task::spawn_blocking(move || from_iso(&iso, vcpus, mem_bytes)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return LeaseEnd::Failed {
                message: e.to_string(),
            }
        }
        Err(e) => {
            return LeaseEnd::Failed {
                message: format!("boot preparation failed: {e}"),
            }
        }
    };
    tracing::info!(lease = %spec.lease, kernel = %boot.plan.kernel.path, cmdline = %boot.config.cmdline, "booting");
    let console = Console {
        lease: spec.lease.clone(),
        out: ctx.out.clone(),
    };
    let input = input.map(|rx| {
        Box::new(ConsoleInput {
            rx,
            pending: Vec::new(),
        }) as Box<dyn std::io::Read + Send>
    });
    let vm = match Vm::new(boot.config, Box::new(console), input) {
        Ok(vm) => vm,
        Err(e) => {
            return LeaseEnd::Failed {
                message: e.to_string(),
            }
        }
    };
    let handle = vm.handle();
    let _ = ctx.out.send(SellerMsg::Started {
        lease: spec.lease.clone(),
    });
    let mut running = tokio::task::spawn_blocking(move || vm.run());
    let wall = Duration::from_secs(u64::from(spec.minutes) * 60) + WALL_SLACK;
    let mut overran = false;
    let result = tokio::select! {
        r = &mut running => r,
        _ = stop.raised() => {
            handle.stop();
            running.await
        }
        _ = tokio::time::sleep(wall) => {
            overran = true;
            handle.stop();
            running.await
        }
    };
    match result {
        Ok(Ok(VmExit::PowerOff { status })) => LeaseEnd::PowerOff { status },
        // A Linux guest without ACPI ends with `reboot`; a live system has
        // nothing to reboot into, so a reset ends the lease cleanly.
        Ok(Ok(VmExit::Reset)) => LeaseEnd::PowerOff { status: 0 },
        Ok(Ok(VmExit::TripleFault)) => LeaseEnd::Trapped {
            message: "the guest triple-faulted".into(),
        },
        Ok(Ok(VmExit::Stopped)) if overran => LeaseEnd::WallTimeExceeded,
        Ok(Ok(VmExit::Stopped)) => LeaseEnd::Cancelled,
        Ok(Err(e)) => LeaseEnd::Failed {
            message: e.to_string(),
        },
        Err(e) => LeaseEnd::Failed {
            message: format!("VM thread failed: {e}"),
        },
    }
}
