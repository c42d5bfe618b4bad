//! `cpushare run`: upload, order, follow the job's output, exit with its code.

use crate::upload;
use anyhow::{bail, Context};
use cpushare_proto::client::Client;
use cpushare_proto::frame;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{
    BuyRequest, JobSpec, LeaseEnd, Request, Response, SandboxKind, StdStream,
};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// What the user asked `cpushare run` for.
pub struct RunArgs<'a> {
    /// Module or ISO.
    pub image: &'a Path,
    /// Leases wanted.
    pub instances: u32,
    /// vCPUs per lease.
    pub cpus: u32,
    /// MiB per lease.
    pub mem_mib: u64,
    /// Minutes per lease.
    pub minutes: u32,
    /// Highest price per vCPU-minute.
    pub max_price: Micros,
    /// Seconds to wait for a match.
    pub wait_secs: u32,
    /// The job.
    pub job: JobSpec,
    /// Print the cost line as JSON.
    pub json: bool,
    /// Times to place work again whose seller vanished.
    pub retries: u32,
}

/// Which sandbox an image needs, from its first bytes.
pub fn kind_of(path: &Path) -> anyhow::Result<SandboxKind> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_ok() && &magic == b"\0asm" {
        return Ok(SandboxKind::Wasm);
    }
    let mut cd = [0u8; 5];
    if f.seek(SeekFrom::Start(0x8001)).is_ok() && f.read_exact(&mut cd).is_ok() && &cd == b"CD001" {
        return Ok(SandboxKind::Vm);
    }
    bail!(
        "{} is neither a WebAssembly module (\\0asm) nor an ISO 9660 image (CD001); `cpushare run` takes one of those",
        path.display()
    )
}

/// How one placement of the order ended.
struct Attempt {
    /// Exit code for the process, from the leases' ends.
    code: i32,
    /// Leases whose seller vanished (their work must be placed again).
    lost: u32,
    /// Billed for this attempt.
    cost: Micros,
    /// Returned to the buyer in this attempt.
    refunded: Micros,
    /// Final state of the order (`filled`, `cancelled`, `expired`).
    state: String,
    /// Order id.
    order: String,
}

/// Runs the job; returns the exit code for the process. Work whose seller
/// vanishes is placed again, up to `retries` times.
pub async fn run(client: &Client, a: RunArgs<'_>) -> anyhow::Result<i32> {
    let kind = kind_of(a.image)?;
    let (id, len) = upload::identify(a.image)?;
    upload::ensure(client, a.image, id, len, a.json).await?;
    let t0 = Instant::now();
    let mut first_output: Option<f64> = None;
    let mut instances = a.instances;
    let mut total_cost = Micros::ZERO;
    let mut total_refunded = Micros::ZERO;
    let mut tries = 0;
    let mut orders = Vec::new();
    loop {
        let req = BuyRequest {
            kind,
            image: id,
            instances,
            cpus: a.cpus,
            mem_mib: a.mem_mib,
            minutes: a.minutes,
            max_price: a.max_price,
            job: a.job.clone(),
            wait_secs: Some(a.wait_secs),
            follow: true,
        };
        let at = attempt(client, req, kind == SandboxKind::Vm, t0, &mut first_output).await?;
        total_cost = total_cost.checked_add(at.cost).unwrap_or(total_cost);
        total_refunded = total_refunded
            .checked_add(at.refunded)
            .unwrap_or(total_refunded);
        orders.push(at.order.clone());
        let mut code = at.code;
        if at.lost > 0 && tries < a.retries {
            tries += 1;
            instances = at.lost;
            eprintln!(
                "cpushare: {} lease(s) lost with their seller after {:.1} s; placing the work again (retry {tries} of {})",
                at.lost,
                t0.elapsed().as_secs_f64(),
                a.retries
            );
            continue;
        }
        if at.state == "expired" && code == 0 {
            eprintln!("cpushare: no seller matched within the wait; see `cpushare book` for prices, or raise --max-price");
            code = 124;
        }
        if a.json {
            let line = serde_json::json!({
                "order": at.order, "orders": orders, "state": at.state,
                "cost": total_cost.to_string(), "cost_micros": total_cost.0,
                "refunded": total_refunded.to_string(), "exit_code": code,
                "retries": tries, "first_output_secs": first_output,
            });
            eprintln!("{line}");
        } else {
            eprintln!(
                "cpushare: order {} {}; cost {total_cost} credits, {total_refunded} returned",
                at.order, at.state
            );
        }
        return Ok(code);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends what is typed on stdin to the order's consoles until EOF.
async fn forward_stdin(mut send: quinn::SendStream) {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0
            || frame::write(&mut send, &Request::Data(buf[..n].to_vec()))
                .await
                .is_err()
        {
            break;
        }
    }
    let _ = send.finish();
}

/// Places the order once and follows it to its close.
async fn attempt(
    client: &Client,
    req: BuyRequest,
    console: bool,
    t0: Instant,
    first_output: &mut Option<f64>,
) -> anyhow::Result<Attempt> {
    let (mut send, mut recv) = client.open().await?;
    frame::write(&mut send, &Request::Buy(req)).await?;
    // A VM's console takes what we type; a wasm job got its stdin up front.
    let typing = if console {
        Some(tokio::spawn(forward_stdin(send)))
    } else {
        send.finish()?;
        None
    };
    let _stop_typing = typing.map(|t| AbortOnDrop(t.abort_handle()));
    let mut code = 0;
    let mut lost = 0;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(msg) = frame::read::<Response, _>(&mut recv).await? {
        match msg {
            Response::Error(e) => bail!("{e}"),
            Response::OrderPlaced { order, held } => {
                tracing::info!("order {order} placed, {held} credits held; waiting for a seller");
            }
            Response::LeaseStarted {
                lease,
                seller,
                price,
            } => {
                tracing::info!("lease {lease} on seller {seller} at {price} per vCPU-minute");
            }
            Response::Output { stream, data, .. } => {
                first_output.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                let r = match stream {
                    StdStream::Stdout => stdout
                        .lock()
                        .write_all(&data)
                        .and_then(|_| stdout.lock().flush()),
                    StdStream::Stderr => stderr.lock().write_all(&data),
                };
                r.context("writing the job's output")?;
            }
            Response::LeaseEnded { lease, end, cost } => {
                if !matches!(
                    end,
                    LeaseEnd::Exited { code: 0 } | LeaseEnd::PowerOff { status: 0 }
                ) {
                    eprintln!("cpushare: lease {lease} {end}");
                }
                tracing::info!("lease {lease} ended ({end}), cost {cost}");
                if end == LeaseEnd::SellerLost {
                    lost += 1;
                }
                let c = end.exit_code();
                if c != 0 || code == 0 {
                    code = c;
                }
            }
            Response::OrderClosed {
                order,
                state,
                cost,
                refunded,
            } => {
                return Ok(Attempt {
                    code,
                    lost,
                    cost,
                    refunded,
                    state,
                    order,
                });
            }
            other => tracing::debug!("ignored {other:?}"),
        }
    }
    bail!("the broker closed the order stream early; see `cpushare orders` and `cpushare leases`")
}
