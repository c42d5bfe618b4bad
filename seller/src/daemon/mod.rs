//! The seller daemon: keeps a session with the broker, posts the offer,
//! heartbeats, and runs each lease it is given in a sandbox.
//!
//! Guest code never runs in this process: each lease runs in its own
//! confined child (see [`crate::jail`]), which `wasm_job` supervises.
//!
//! Lost connections are retried with backoff; leases running when the
//! session dies are interrupted (the broker has already ended them as
//! `seller lost` and will not pay for more).

mod compile;
mod fetch;
mod prepared;
mod sandbox_pool;
mod shares;
mod vm_job;
mod vnet_lease;
mod wasm_job;

use crate::cache::ImageCache;
use crate::jail::cgroup::{Hierarchy, LeaseCgroup};
use crate::jail::supervisor::{Sandbox, SpawnSpec};
use crate::jail::zygote::Zygote;
use crate::lease::{Action, Lease, LeaseEvent};
use crate::wasm::{RuntimeConfig, WasmRuntime};
use anyhow::Context;
use cpushare_proto::client::{Client, Home};
use cpushare_proto::frame;
use cpushare_proto::msg::{
    BrokerMsg, LeaseEnd, LeaseSpec, Request, SandboxKind, SellOffer, SellerMsg,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{self, UnboundedSender};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct SellerConfig {
    /// The enrolled identity (and the directory for caches).
    pub home: Home,
    /// What to offer.
    pub offer: SellOffer,
    /// Wasm sandboxes to keep confined and waiting for leases.
    pub warm: usize,
}

/// One lease the daemon is running.
struct Running {
    lease: Lease,
    stop: Arc<StopSignal>,
    /// Where the buyer's typed input goes (VM consoles); dropped with the
    /// lease, which ends the console's input.
    console: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    /// Minutes the lease is paid for in all; raised by renewals.
    minutes: tokio::sync::watch::Sender<u32>,
}

/// Tells a lease's supervisor that the broker (or a lost session) ended it.
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    requested: AtomicBool,
    notify: tokio::sync::Notify,
}

impl StopSignal {
    fn raise(&self) {
        self.requested.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Resolves once a stop was raised (at once if it already was).
    pub(crate) async fn raised(&self) {
        if self.requested.load(Ordering::Relaxed) {
            return;
        }
        self.notify.notified().await;
    }
}

/// What starting a confined sandbox needs, fixed for the daemon's life.
#[derive(Debug)]
pub(crate) struct JailSetup {
    /// The seller binary, re-executed as `sandbox` for each lease.
    pub(crate) exe: PathBuf,
    /// Empty directory each sandbox mounts its root on (in its own namespace).
    pub(crate) root: PathBuf,
    /// Where lease cgroups go.
    pub(crate) cgroups: Hierarchy,
    /// Forks wasm sandboxes; without it (it could not start, or died)
    /// each is spawned from `exe`.
    pub(crate) zygote: Option<Zygote>,
}

impl JailSetup {
    /// Starts a jailed wasm sandbox: forked by the zygote when it is
    /// running, else spawned.
    pub(crate) fn start_wasm(
        &self,
        spec: &SpawnSpec,
        cgroup: LeaseCgroup,
    ) -> Result<Sandbox, crate::jail::JailError> {
        let mut cgroup = Some(cgroup);
        if let Some(z) = self.zygote.as_ref().filter(|z| z.is_alive()) {
            match Sandbox::fork(z, spec, cgroup) {
                Ok(s) => return Ok(s),
                Err((e, back)) => {
                    tracing::warn!("the sandbox zygote failed ({e}); spawning instead");
                    cgroup = back;
                }
            }
        }
        Sandbox::spawn(spec, cgroup)
    }
}

/// Leases by id, shared by the session reader and the lease tasks.
type Leases = Arc<Mutex<HashMap<String, Running>>>;

/// Everything a lease task needs.
#[derive(Clone)]
struct Ctx {
    conn: quinn::Connection,
    out: UnboundedSender<SellerMsg>,
    leases: Leases,
    cache: Arc<ImageCache>,
    runtime: Arc<WasmRuntime>,
    scratch_root: PathBuf,
    jail: Arc<JailSetup>,
    vnet: vnet_lease::VnetLeases,
    pool: sandbox_pool::SandboxPool,
    prepared: prepared::PreparedModules,
}

/// The sandbox zygote, if it starts (each sandbox is spawned otherwise).
fn start_zygote() -> Option<Zygote> {
    match Zygote::start(std::path::Path::new("/proc/self/exe")) {
        Ok(z) => Some(z),
        Err(e) => {
            tracing::warn!("no sandbox zygote ({e}); every sandbox will be spawned");
            None
        }
    }
}

/// Runs the daemon until it is killed, reconnecting as needed.
pub async fn run(cfg: SellerConfig) -> anyhow::Result<()> {
    compile::lower_worker_priority();
    let dir = cfg.home.dir().to_path_buf();
    let cache =
        Arc::new(ImageCache::open(dir.join("images")).context("while opening the image cache")?);
    let runtime = Arc::new(
        WasmRuntime::new(RuntimeConfig {
            compiled_cache_dir: dir.join("compiled"),
            max_instances: (cfg.offer.cpus * 4).clamp(16, 1000),
            max_memory_bytes: (cfg.offer.mem_mib << 20).min(4 << 30),
        })
        .context("while starting the wasm runtime")?,
    );
    let jail = Arc::new(JailSetup {
        exe: PathBuf::from("/proc/self/exe"),
        root: dir.join("jail"),
        cgroups: Hierarchy::detect().context("while preparing lease cgroups")?,
        zygote: start_zygote(),
    });
    std::fs::create_dir_all(&jail.root)?;
    let scratch_root = dir.join("scratch");
    // Scratch left by a previous run belongs to leases that are over.
    let _ = std::fs::remove_dir_all(&scratch_root);
    std::fs::create_dir_all(&scratch_root)?;
    // One pool for the daemon's life: waiting sandboxes survive reconnects.
    let pool = sandbox_pool::SandboxPool::new(
        cfg.warm,
        jail.clone(),
        scratch_root.clone(),
        runtime.max_memory_bytes(),
    );
    pool.fill();
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = std::time::Instant::now();
        match session(&cfg, &cache, &runtime, &scratch_root, &jail, &pool).await {
            Ok(()) => tracing::warn!("broker ended the session"),
            Err(e) => tracing::warn!("session failed: {e:#}"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tracing::info!("reconnecting in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn session(
    cfg: &SellerConfig,
    cache: &Arc<ImageCache>,
    runtime: &Arc<WasmRuntime>,
    scratch_root: &std::path::Path,
    jail: &Arc<JailSetup>,
    pool: &sandbox_pool::SandboxPool,
) -> anyhow::Result<()> {
    let client: Client = cfg.home.connect().await?;
    let (mut send, mut recv) = client.open().await?;
    frame::write(&mut send, &Request::Sell(cfg.offer.clone())).await?;
    let heartbeat_secs = match frame::read::<BrokerMsg, _>(&mut recv).await? {
        Some(BrokerMsg::Welcome {
            order,
            heartbeat_secs,
        }) => {
            println!(
                "seller {} offering {} vCPU, {} MiB at {} per vCPU-minute (order {order})",
                client.info.name, cfg.offer.cpus, cfg.offer.mem_mib, cfg.offer.price
            );
            heartbeat_secs
        }
        Some(BrokerMsg::Error(e)) => anyhow::bail!("the broker refused the offer: {e}"),
        other => anyhow::bail!("unexpected first message from the broker: {other:?}"),
    };
    let (out, mut out_rx) = mpsc::unbounded_channel::<SellerMsg>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if frame::write(&mut send, &msg).await.is_err() {
                break;
            }
        }
    });
    let leases: Leases = Arc::default();
    let heart = {
        let out = out.clone();
        let leases = leases.clone();
        tokio::spawn(async move {
            let mut every =
                tokio::time::interval(Duration::from_secs(u64::from(heartbeat_secs.max(1))));
            loop {
                every.tick().await;
                let running = lock(&leases).keys().cloned().collect();
                if out.send(SellerMsg::Heartbeat { running }).is_err() {
                    break;
                }
            }
        })
    };
    let ctx = Ctx {
        conn: client.conn.clone(),
        out,
        leases: leases.clone(),
        cache: cache.clone(),
        runtime: runtime.clone(),
        scratch_root: scratch_root.to_path_buf(),
        jail: jail.clone(),
        vnet: vnet_lease::VnetLeases::new(cfg.home.dir().join("vnet")),
        pool: pool.clone(),
        prepared: prepared::PreparedModules::new(),
    };
    let result = loop {
        let msg = match frame::read::<BrokerMsg, _>(&mut recv).await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(anyhow::Error::from(e)),
        };
        match msg {
            BrokerMsg::Start(spec) => start(&ctx, spec),
            BrokerMsg::Stop { lease } => {
                let mut map = lock(&leases);
                if let Some(r) = map.get_mut(&lease) {
                    if r.lease.handle(LeaseEvent::StopRequested) == Action::InterruptSandbox {
                        r.stop.raise();
                    }
                }
            }
            BrokerMsg::Input { lease, data } => {
                if let Some(console) = lock(&leases).get(&lease).and_then(|r| r.console.as_ref()) {
                    let _ = console.send(data);
                }
            }
            BrokerMsg::Vnet { lease, view } => ctx.vnet.apply(&lease, view),
            BrokerMsg::Extend { lease, minutes } => {
                if let Some(r) = lock(&leases).get(&lease) {
                    tracing::info!(%lease, minutes, "lease renewed");
                    r.minutes.send_if_modified(|m| {
                        let grew = minutes > *m;
                        *m = (*m).max(minutes);
                        grew
                    });
                }
            }
            BrokerMsg::Welcome { .. } => {}
            BrokerMsg::Error(e) => break Err(anyhow::anyhow!("the broker ended the session: {e}")),
        }
    };
    heart.abort();
    ctx.vnet.clear();
    writer.abort();
    for r in lock(&leases).values() {
        r.stop.raise();
    }
    result
}

fn lock(leases: &Leases) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
    leases.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies `event` to lease `id` and returns the action (None if unknown).
fn step(leases: &Leases, id: &str, event: LeaseEvent) -> Action {
    lock(leases)
        .get_mut(id)
        .map(|r| r.lease.handle(event))
        .unwrap_or(Action::None)
}

fn report(ctx: &Ctx, id: &str, end: LeaseEnd) {
    lock(&ctx.leases).remove(id);
    ctx.vnet.lease_ended(id);
    tracing::info!(lease = %id, %end, "lease over");
    let _ = ctx.out.send(SellerMsg::Ended {
        lease: id.to_string(),
        end,
    });
}

fn start(ctx: &Ctx, spec: LeaseSpec) {
    let stop = Arc::new(StopSignal::default());
    let (console, console_rx) = match spec.kind {
        SandboxKind::Vm => {
            let (tx, rx) = std::sync::mpsc::channel();
            (Some(tx), Some(rx))
        }
        SandboxKind::Wasm => (None, None),
    };
    let (minutes, paid) = tokio::sync::watch::channel(spec.minutes);
    lock(&ctx.leases).insert(
        spec.lease.clone(),
        Running {
            lease: Lease::new(),
            stop: stop.clone(),
            console,
            minutes,
        },
    );
    tracing::info!(lease = %spec.lease, buyer = %spec.buyer, kind = %spec.kind, "lease assigned");
    if ctx.vnet.wanted_for(spec.kind) {
        ctx.vnet.lease_started(&spec.lease, &ctx.out);
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let id = spec.lease.clone();
        // A wasm module a recent lease ran is ready as it is.
        let ready = (spec.kind == SandboxKind::Wasm)
            .then(|| ctx.prepared.get(&spec.image))
            .flatten();
        let fetched = match (&ready, spec.kind) {
            (Some(_), _) => Ok(Vec::new()),
            // The VMM reads the ISO from the image cache, never from memory.
            (None, SandboxKind::Vm) => {
                fetch::image_file(&ctx.conn, &ctx.cache, spec.image, spec.image_len)
                    .await
                    .map(|()| Vec::new())
            }
            (None, SandboxKind::Wasm) => {
                fetch::image(&ctx.conn, &ctx.cache, spec.image, spec.image_len).await
            }
        };
        let event = match &fetched {
            Ok(_) => LeaseEvent::ImageReady,
            Err(e) => LeaseEvent::ImageFailed(e.clone()),
        };
        match step(&ctx.leases, &id, event) {
            Action::StartSandbox => {}
            Action::Report(end) => return report(&ctx, &id, end),
            _ => return,
        }
        let bytes = fetched.expect("ImageReady only on success");
        let end = match spec.kind {
            SandboxKind::Wasm => {
                let module = match ready {
                    Some(p) => wasm_job::Module::Prepared(p),
                    None => wasm_job::Module::Fetched(bytes),
                };
                wasm_job::run(&ctx, &spec, module, stop, paid).await
            }
            SandboxKind::Vm => vm_job::run(&ctx, &spec, stop, console_rx, paid).await,
        };
        if let Action::Report(end) = step(&ctx.leases, &id, LeaseEvent::SandboxExited(end)) {
            report(&ctx, &id, end);
        }
    });
}
