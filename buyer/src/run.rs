//! `cpushare run`: upload, order, follow the job's output, exit with its code.

use crate::upload;
use crate::vm_share;
use crate::wasm_share::{self, Outputs, ShareArg};
use anyhow::{bail, Context};
use cpushare_proto::client::{Client, Home};
use cpushare_proto::frame;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{
    BuyRequest, ErrorCode, JobSpec, LeaseEnd, Request, Response, SandboxKind, StdStream,
};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
    /// Most minutes one lease may reach by renewing with its seller.
    pub renew_up_to: Option<u32>,
    /// `--share`s (wasm jobs: staged in, outputs shipped back).
    pub shares: &'a [ShareArg],
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

/// Refuses, before anything is uploaded or paid, an ISO no seller could
/// boot with `mem_mib` of memory: the same reading of its boot config and
/// kernel header a seller does.
pub fn check_iso(path: &Path, mem_mib: u64) -> anyhow::Result<()> {
    use cpushare_vmm::iso::{inspect, IsoReader};
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let plan = IsoReader::new(std::io::BufReader::new(file))
        .and_then(|mut r| inspect(&mut r))
        .with_context(|| {
            format!(
                "{} cannot boot on a seller (`cpushare image inspect {}` shows what it holds)",
                path.display(),
                path.display()
            )
        })?;
    let files = plan.kernel.size + plan.initrds.iter().map(|i| i.size).sum::<u64>();
    if files > mem_mib << 20 {
        bail!(
            "{}: its kernel and initrds are {files} bytes, more than the {mem_mib} MiB asked for; give the VM more with --mem",
            path.display()
        );
    }
    Ok(())
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
/// vanishes is placed again, up to `retries` times; a broker that goes
/// away is reconnected to (`client` is then replaced).
pub async fn run(home: &Home, client: &mut Client, a: RunArgs<'_>) -> anyhow::Result<i32> {
    let kind = kind_of(a.image)?;
    if kind == SandboxKind::Vm {
        check_iso(a.image, a.mem_mib)?;
    }
    let mut job = a.job.clone();
    let vm_shares = !a.shares.is_empty() && kind == SandboxKind::Vm;
    if !a.shares.is_empty() && !vm_shares {
        wasm_share::check(a.shares, a.instances)?;
    }
    // A VM's shares are served over NFS on the vnet for the whole run (every
    // placement mounts the same directories); the guest learns them from
    // its kernel command line.
    let _nfs = if vm_shares {
        let (server, items) = vm_share::start(home, a.shares).await?;
        eprintln!(
            "cpushare: serving {} share(s) over NFSv3 on {} to your leases: {}",
            a.shares.len(),
            server.local_addr(),
            items.join(" ")
        );
        job.args.extend(items);
        Some(server)
    } else {
        None
    };
    let (id, len) = upload::identify(a.image)?;
    upload::ensure(client, a.image, id, len, a.json).await?;
    let staged: &[ShareArg] = if vm_shares { &[] } else { a.shares };
    job.shares = wasm_share::prepare(home, client, staged, a.json).await?;
    let mut outputs = Outputs::new(staged);
    let typing = (kind == SandboxKind::Vm).then(Typing::start);
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
            job: job.clone(),
            wait_secs: Some(a.wait_secs),
            follow: true,
            renew_up_to: a.renew_up_to,
        };
        let at = attempt(
            home,
            client,
            req,
            &mut outputs,
            typing.as_ref(),
            t0,
            &mut first_output,
        )
        .await?;
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

/// What the buyer types, read from stdin once for the whole run (a read
/// cannot be taken back, so one reader outlives every placement) and
/// handed to whichever order stream is current.
#[derive(Clone)]
struct Typing(Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>>);

impl Typing {
    /// Starts reading stdin until EOF.
    fn start() -> Typing {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Typing(Arc::new(tokio::sync::Mutex::new(rx)))
    }

    /// Sends what is typed to the order's consoles on `send` until EOF
    /// (or until this task is aborted: the next stream takes over).
    async fn forward(self, mut send: quinn::SendStream) {
        let mut rx = self.0.lock().await;
        while let Some(data) = rx.recv().await {
            if frame::write(&mut send, &Request::Data(data)).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    }
}

/// Longest time `cpushare run` keeps trying to reach a broker that went
/// away while it followed an order.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// What following an order has learned so far; survives reconnections.
#[derive(Default)]
struct Progress {
    /// Order id, once the broker acknowledged it.
    order: Option<String>,
    /// Reserved when the order was placed.
    held: Micros,
    /// Exit code so far.
    code: i32,
    /// Leases lost with their seller.
    lost: u32,
    /// Leases whose end we were told about.
    ended: HashSet<String>,
}

impl Progress {
    /// Records a lease's end (once per lease).
    fn lease_ended(&mut self, lease: &str, end: &str, code: i32, seller_lost: bool) {
        if !self.ended.insert(lease.to_string()) {
            return;
        }
        if code != 0 {
            eprintln!("cpushare: lease {lease} {end}");
        }
        if seller_lost {
            self.lost += 1;
        }
        if code != 0 || self.code == 0 {
            self.code = code;
        }
    }
}

/// Why following an order's stream stopped before it closed.
enum Broken {
    /// The broker refused something; final.
    Refused(anyhow::Error),
    /// The connection (or the broker) went away; worth reconnecting.
    Lost(String),
}

/// Places the order once and follows it to its close, reconnecting (and
/// following again) if the broker goes away meanwhile.
async fn attempt(
    home: &Home,
    client: &mut Client,
    req: BuyRequest,
    outputs: &mut Outputs,
    console: Option<&Typing>,
    t0: Instant,
    first_output: &mut Option<f64>,
) -> anyhow::Result<Attempt> {
    let (mut send, mut recv) = client.open().await?;
    frame::write(&mut send, &Request::Buy(req)).await?;
    // A VM's console takes what we type; a wasm job got its stdin up front.
    let forward = |mut send: quinn::SendStream| -> anyhow::Result<Option<AbortOnDrop>> {
        Ok(match console {
            Some(t) => Some(AbortOnDrop(
                tokio::spawn(t.clone().forward(send)).abort_handle(),
            )),
            None => {
                send.finish()?;
                None
            }
        })
    };
    let mut _typing = forward(send)?;
    let mut p = Progress::default();
    loop {
        let why = match follow_events(&mut recv, &mut p, outputs, t0, first_output).await {
            Ok(done) => return Ok(done),
            Err(Broken::Refused(e)) => return Err(e),
            Err(Broken::Lost(why)) => why,
        };
        let Some(order) = p.order.clone() else {
            bail!("lost the broker before it acknowledged the order ({why}); see `cpushare orders` before running the job again");
        };
        eprintln!("cpushare: lost the broker ({why}); reconnecting to follow order {order}");
        *client = reconnect(home).await?;
        let (mut send, mut r) = client.open().await?;
        frame::write(
            &mut send,
            &Request::Follow {
                order: order.clone(),
            },
        )
        .await?;
        _typing = forward(send)?;
        match frame::read::<Response, _>(&mut r).await? {
            Some(Response::OrderPlaced { .. }) => {
                eprintln!("cpushare: following order {order} again");
                recv = r;
            }
            Some(Response::Error(e)) if e.code == ErrorCode::NotFound => {
                return closed_while_away(client, &order, &mut p, outputs).await;
            }
            Some(Response::Error(e)) => bail!("{e}"),
            other => bail!("unexpected reply to following order {order}: {other:?}"),
        }
    }
}

/// Connects to the broker again, retrying for up to [`RECONNECT_FOR`].
async fn reconnect(home: &Home) -> anyhow::Result<Client> {
    let deadline = Instant::now() + RECONNECT_FOR;
    let mut pause = Duration::from_millis(500);
    loop {
        match home.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                bail!("the broker stayed unreachable for {RECONNECT_FOR:?}: {e}; see `cpushare orders` once it is back")
            }
            Err(e) => tracing::info!("broker unreachable ({e}); retrying in {pause:?}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(4));
    }
}

/// The order closed while we were away (a broker restart ends running
/// leases as `seller lost`): learn how from the listings.
async fn closed_while_away(
    client: &Client,
    order: &str,
    p: &mut Progress,
    outputs: &Outputs,
) -> anyhow::Result<Attempt> {
    let leases = match client.call(&Request::Leases).await? {
        Response::Leases(rows) => rows,
        other => bail!("unexpected reply {other:?}"),
    };
    let mut cost = Micros::ZERO;
    for l in leases.iter().filter(|l| l.order == order) {
        cost = cost.checked_add(l.cost).unwrap_or(cost);
        if let Some(end) = &l.end {
            let mut code = exit_code_of(end);
            if code == 0 && outputs.expected() && !p.ended.contains(&l.id) {
                eprintln!("cpushare: lease {} ended well while the broker was unreachable; its outputs are lost", l.id);
                code = 125;
            }
            p.lease_ended(&l.id, end, code, end == "seller lost");
        }
    }
    let state = match client.call(&Request::Orders).await? {
        Response::Orders(rows) => rows
            .into_iter()
            .find(|o| o.id == order)
            .map(|o| o.state)
            .unwrap_or_else(|| "closed".into()),
        other => bail!("unexpected reply {other:?}"),
    };
    eprintln!("cpushare: order {order} closed while the broker was unreachable; output sent meanwhile is lost");
    Ok(Attempt {
        code: p.code,
        lost: p.lost,
        cost,
        refunded: p.held.saturating_sub(cost),
        state,
        order: order.to_string(),
    })
}

/// The exit code for a lease end as the listings print it (the
/// `Display` of [`LeaseEnd`]).
fn exit_code_of(end: &str) -> i32 {
    let number = |prefix: &str| end.strip_prefix(prefix).and_then(|n| n.parse().ok());
    if let Some(code) = number("exited with code ") {
        return code;
    }
    if let Some(status) = number("powered off with status ") {
        return status;
    }
    if end == "cancelled" {
        return LeaseEnd::Cancelled.exit_code();
    }
    125
}

/// Reads an order's events until it closes.
async fn follow_events(
    recv: &mut quinn::RecvStream,
    p: &mut Progress,
    outputs: &mut Outputs,
    t0: Instant,
    first_output: &mut Option<f64>,
) -> Result<Attempt, Broken> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    loop {
        let msg = match frame::read::<Response, _>(recv).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(Broken::Lost("the broker closed the order stream".into())),
            Err(e) => return Err(Broken::Lost(e.to_string())),
        };
        match msg {
            Response::Error(e) => return Err(Broken::Refused(anyhow::anyhow!("{e}"))),
            Response::OrderPlaced { order, held } => {
                tracing::info!("order {order} placed, {held} credits held; waiting for a seller");
                p.order = Some(order);
                p.held = held;
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
                if let Err(e) = r {
                    return Err(Broken::Refused(
                        anyhow::Error::from(e).context("writing the job's output"),
                    ));
                }
            }
            Response::LeaseRenewed {
                lease,
                minutes,
                cost,
            } => {
                eprintln!("cpushare: renewed lease {lease} to {minutes} minutes (cost so far {cost} credits)");
            }
            Response::LeaseNotRenewed {
                lease,
                minutes,
                reason,
            } => {
                eprintln!(
                    "cpushare: lease {lease} will not be renewed: {reason}. \
                     It ends when its paid time ({minutes} min) runs out."
                );
            }
            Response::Outputs { lease, data } => {
                if let Err(e) = outputs.chunk(&lease, &data) {
                    eprintln!("cpushare: {e}");
                }
            }
            Response::LeaseEnded { lease, end, cost } => {
                tracing::info!("lease {lease} ended ({end}), cost {cost}");
                let mut code = end.exit_code();
                let well = end == LeaseEnd::Exited { code: 0 };
                if let Err(e) = outputs.lease_ended(&lease, well) {
                    eprintln!("cpushare: outputs of lease {lease}: {e}");
                    code = 125;
                }
                p.lease_ended(&lease, &end.to_string(), code, end == LeaseEnd::SellerLost);
            }
            Response::OrderClosed {
                order,
                state,
                cost,
                refunded,
            } => {
                return Ok(Attempt {
                    code: p.code,
                    lost: p.lost,
                    cost,
                    refunded,
                    state,
                    order,
                });
            }
            other => tracing::debug!("ignored {other:?}"),
        }
    }
}
