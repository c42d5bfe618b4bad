//! `cpushare-seller`: the daemon a seller installs.

use anyhow::Context;
use clap::{Parser, Subcommand};
use cpushare_proto::client::{parse_size_mib, Home};
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{Role, SandboxKind, SellOffer};
use cpushare_seller::daemon::{self, SellerConfig};
use cpushare_seller::jail;
use std::path::PathBuf;

/// Rent out this machine's idle CPUs on a cpushare market.
///
///   cpushare-seller enroll TOKEN        # once, with the token the broker operator gave you
///   cpushare-seller run --cpus 2 --mem 2G --price 0.001
///
/// Buyers' jobs run confined in sandboxes; you are paid per vCPU-minute.
#[derive(Parser)]
#[command(name = "cpushare-seller", version, verbatim_doc_comment)]
struct Cli {
    /// Directory holding this seller's identity, image cache and scratch space.
    #[arg(long, global = true, env = "CPUSHARE_SELLER_HOME", default_value_os_t = default_home())]
    home: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll with a one-time token from `cpushare-broker account add NAME --role seller`.
    Enroll {
        /// The token (starts with `cpst1-`).
        token: String,
    },
    /// Offer capacity and run leases until stopped.
    Run {
        /// vCPUs to offer.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory to offer, e.g. 512M or 2G.
        #[arg(long, default_value = "1G", value_parser = parse_size_mib)]
        mem: u64,
        /// Price per vCPU-minute in credits, e.g. 0.001.
        #[arg(long)]
        price: Micros,
        /// Sandboxes to offer (wasm, vm).
        #[arg(long, value_delimiter = ',', default_value = "wasm", value_parser = parse_kind)]
        kinds: Vec<SandboxKind>,
        /// Shortest lease accepted, minutes.
        #[arg(long, default_value_t = 1)]
        min_minutes: u32,
        /// Longest lease accepted, minutes.
        #[arg(long, default_value_t = 1440)]
        max_minutes: u32,
        /// Offer `vm` leases even where /dev/kvm is a software hypervisor
        /// (PVM), on which guest kernels run thousands of times slower;
        /// useful only for ring-3 test guests.
        #[arg(long)]
        allow_software_kvm: bool,
        /// Wasm sandboxes kept started and confined, each waiting for one
        /// lease, so a job does not wait for its sandbox to be built
        /// (each costs about 10 MiB while it waits). 0 turns this off.
        #[arg(long, default_value_t = 2)]
        warm: usize,
    },
    /// Internal: forks wasm sandboxes for the daemon (started by it, once).
    #[command(hide = true)]
    Zygote {
        /// The daemon's pid: the zygote dies with it.
        #[arg(long)]
        daemon_pid: u32,
    },
    /// Check what confinement and VM leases need from this host.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Internal: one lease's sandbox, started by the daemon.
    #[command(hide = true)]
    Sandbox {
        /// Unprivileged uid (and gid) to run as.
        #[arg(long)]
        uid: u32,
        /// Empty directory to mount the jail root on.
        #[arg(long)]
        root: PathBuf,
        /// The lease's scratch directory.
        #[arg(long)]
        scratch: PathBuf,
        /// Largest guest memory, bytes.
        #[arg(long)]
        max_memory: u64,
        /// Measurement only: no namespaces, root, uid or rlimits.
        #[arg(long)]
        no_jail: bool,
        /// Measurement only: no seccomp filters.
        #[arg(long)]
        no_seccomp: bool,
        /// The daemon's pid: the sandbox dies with it.
        #[arg(long)]
        daemon_pid: Option<u32>,
        /// A `cgroup.procs` file of the lease's cgroup to join (repeatable).
        #[arg(long)]
        cgroup_procs: Vec<PathBuf>,
        /// VM mode: boot this ISO (from the daemon's image cache) in the VMM.
        #[arg(long)]
        vm_iso: Option<PathBuf>,
        /// VM mode: the daemon's socket for the guest NIC's frames.
        #[arg(long)]
        vm_net_socket: Option<PathBuf>,
    },
}

fn default_home() -> PathBuf {
    cpushare_proto::client::home_dir(".cpushare-seller")
}

fn parse_kind(s: &str) -> Result<SandboxKind, String> {
    SandboxKind::parse(s).ok_or_else(|| format!("`{s}` is not a sandbox kind (wasm, vm)"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The sandbox and the doctor must stay single-threaded (unshare and
    // fork need it), so they run before any async runtime exists.
    match cli.cmd {
        Cmd::Sandbox {
            uid,
            root,
            scratch,
            max_memory,
            no_jail,
            no_seccomp,
            daemon_pid,
            cgroup_procs,
            vm_iso,
            vm_net_socket,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .init();
            std::process::exit(jail::child::main(jail::child::ChildArgs {
                uid,
                root,
                scratch,
                max_memory_bytes: max_memory,
                jail: !no_jail,
                seccomp: !no_seccomp,
                daemon_pid,
                cgroup_procs,
                vm_iso,
                vm_net_socket,
                new_netns: true,
            }))
        }
        Cmd::Zygote { daemon_pid } => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .init();
            std::process::exit(jail::zygote::main(daemon_pid))
        }
        Cmd::Doctor { json } => {
            let checks = jail::doctor::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", jail::doctor::human(&checks));
            }
            Ok(())
        }
        cmd => tokio::runtime::Runtime::new()
            .context("while starting the async runtime")?
            .block_on(serve(cli.home, cmd)),
    }
}

async fn serve(home_dir: PathBuf, cmd: Cmd) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let home = Home::new(&home_dir);
    match cmd {
        Cmd::Enroll { token } => {
            let info = home.enroll(&token, Role::Seller).await?;
            println!(
                "enrolled as seller {} at {}; identity in {}",
                info.name,
                info.broker,
                home_dir.display()
            );
            println!("next: cpushare-seller run --cpus 1 --mem 1G --price 0.001");
            Ok(())
        }
        Cmd::Run {
            cpus,
            mem,
            price,
            kinds,
            min_minutes,
            max_minutes,
            allow_software_kvm,
            warm,
        } => {
            home.info().context("cannot run before enrolling")?;
            if kinds.contains(&SandboxKind::Vm) {
                match cpushare_vmm::kvm_kind() {
                    cpushare_vmm::KvmKind::Hardware(_) => {}
                    cpushare_vmm::KvmKind::Software(why) if allow_software_kvm => {
                        tracing::warn!("offering vm leases on software KVM ({why}): guest kernels will be very slow");
                    }
                    cpushare_vmm::KvmKind::Software(why) => anyhow::bail!(
                        "this host's KVM is a software hypervisor ({why}): buyers' guest kernels would run thousands of times slower. Offer only wasm (--kinds wasm), or pass --allow-software-kvm to offer vm leases anyway"
                    ),
                    cpushare_vmm::KvmKind::Absent(why) => anyhow::bail!(
                        "cannot offer vm leases: {why}. Load the kvm module and check /dev/kvm, or offer only wasm (--kinds wasm); `cpushare-seller doctor` says more"
                    ),
                }
            }
            let kinds_has_wasm = kinds.contains(&SandboxKind::Wasm);
            daemon::run(SellerConfig {
                home,
                offer: SellOffer {
                    cpus,
                    mem_mib: mem,
                    kinds,
                    price,
                    min_minutes,
                    max_minutes,
                },
                warm: if kinds_has_wasm { warm } else { 0 },
            })
            .await
        }
        Cmd::Doctor { .. } | Cmd::Sandbox { .. } | Cmd::Zygote { .. } => {
            unreachable!("handled before the runtime")
        }
    }
}
