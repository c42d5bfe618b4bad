//! `cpushare`: what buyers type.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use cpushare_buyer::{listing, run};
use cpushare_proto::client::{parse_size_mib, Home};
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{JobSpec, Request, Response, Role, MAX_STDIN};
use std::path::PathBuf;

/// Run your jobs on other people's idle machines, paid by the minute.
///
///   cpushare login TOKEN                  # once, with the token the broker operator gave you
///   cpushare run job.wasm -- ARGS...      # run a WebAssembly (WASI) module on a seller
///   cpushare book                         # what is offered, at what price
///   cpushare balance                      # what you can spend
#[derive(Parser)]
#[command(name = "cpushare", version, verbatim_doc_comment)]
struct Cli {
    /// Directory holding your identity; several buyers can live on one machine.
    #[arg(long, global = true, env = "CPUSHARE_HOME", default_value_os_t = default_home())]
    home: PathBuf,
    /// Machine-readable output (JSON) for listings and results.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll with a one-time token from `cpushare-broker account add NAME --role buyer`.
    Login {
        /// The token (starts with `cpst1-`).
        token: String,
    },
    /// Who you are to the broker.
    Whoami,
    /// Run a WebAssembly module (or live ISO) on a seller, stream its
    /// output, exit with its exit code, and print what it cost.
    ///
    /// Example: cpushare run hello.wasm --cpus 1 --minutes 1 --max-price 0.01 -- world
    Run {
        /// The module (.wasm, WASI preview 1) or ISO to run.
        image: PathBuf,
        /// vCPUs per lease.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Memory per lease, e.g. 64M or 1G.
        #[arg(long, default_value = "256M", value_parser = parse_size_mib)]
        mem: u64,
        /// Length of the lease in minutes (also the job's CPU-time limit).
        #[arg(long, default_value_t = 1)]
        minutes: u32,
        /// Highest price per vCPU-minute you accept, in credits.
        #[arg(long, default_value = "0.01")]
        max_price: Micros,
        /// Number of leases (copies of the job) to run.
        #[arg(long, default_value_t = 1)]
        instances: u32,
        /// Seconds to wait for a seller before giving up.
        #[arg(long, default_value_t = 60)]
        wait: u32,
        /// Times to place the work again when its seller vanishes
        /// (a wasm job reruns from its inputs on another seller).
        #[arg(long, default_value_t = 2)]
        retries: u32,
        /// Let a lease that outlives its minutes renew with the same seller
        /// (its guest goes on undisturbed) until it has run this many
        /// minutes in all; each renewal is paid from your balance.
        #[arg(long, value_name = "MINUTES")]
        renew_up_to: Option<u32>,
        /// Environment variable for the job, KEY=VALUE (repeatable).
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// File whose bytes become the job's stdin (at most 1 MiB).
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// Directory of this machine the job sees, HOST:GUEST[:rw]
        /// (repeatable). Wasm jobs: read-only ones are uploaded by content
        /// id; `:rw` ones come back into HOST (absent or empty) when the
        /// job exits with 0. VM jobs (.iso): served over NFSv3 on your
        /// vnet address to your leases only (start `cpushare net up`
        /// first); the guest mounts them from its kernel command line.
        #[arg(long = "share", value_parser = cpushare_buyer::wasm_share::parse_share)]
        share: Vec<cpushare_buyer::wasm_share::ShareArg>,
        /// Arguments for the job, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The order book: sell offers and waiting buys, by price.
    Book,
    /// Your orders.
    Orders,
    /// Your leases.
    Leases,
    /// Your balance: available, held by open orders, in escrow.
    Balance,
    /// Cancel an order by id (K-...); its unused reserve returns.
    Cancel {
        /// Order id.
        id: String,
    },
    /// Look at images before running them.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Your private virtual network: your machine and every running lease.
    #[command(subcommand)]
    Net(NetCmd),
}

#[derive(Subcommand)]
enum NetCmd {
    /// Join your virtual network from this machine: creates a TUN interface
    /// with your host's address and a route to the subnet, and relays for
    /// leases that cannot reach each other directly. Runs until Ctrl-C.
    /// Needs root or CAP_NET_ADMIN.
    Up {
        /// Name of the TUN interface.
        #[arg(long, default_value = "cpushare0")]
        tun: String,
        /// UDP port for the vnet (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Each peer of the running `net up`: address, lease, path (direct or
    /// relayed), round-trip time, bytes in and out.
    Status,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Show what a seller would boot from a live ISO: kernel, initrd,
    /// command line, sizes, content id, or why it cannot boot.
    Inspect {
        /// The ISO file.
        file: PathBuf,
    },
}

fn default_home() -> PathBuf {
    cpushare_proto::client::home_dir(".cpushare")
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match real_main(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cpushare: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<i32> {
    let home = Home::new(&cli.home);
    if let Cmd::Login { token } = &cli.cmd {
        let info = home.enroll(token, Role::Buyer).await?;
        println!(
            "logged in as {} at {}; identity in {}",
            info.name,
            info.broker,
            cli.home.display()
        );
        return Ok(0);
    }
    if let Cmd::Net(net) = &cli.cmd {
        return match net {
            NetCmd::Up { tun, port } => {
                let args = cpushare_buyer::net::UpArgs {
                    tun: tun.clone(),
                    port: *port,
                    json: cli.json,
                };
                cpushare_buyer::net::up(&home, args).await
            }
            NetCmd::Status => cpushare_buyer::net::status(&home, cli.json).await,
        };
    }
    if let Cmd::Image(ImageCmd::Inspect { file }) = &cli.cmd {
        let i = cpushare_buyer::image::inspect_iso(file)?;
        if cli.json {
            listing::json(&i)?;
        } else {
            cpushare_buyer::image::print(&i);
        }
        return Ok(if i.bootable { 0 } else { 1 });
    }
    let client = home.connect().await?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Login { .. } | Cmd::Image(_) | Cmd::Net(_) => unreachable!("handled above"),
        Cmd::Whoami => match client.call(&Request::Whoami).await? {
            Response::Whoami { name, role, key_id } => {
                if json {
                    listing::json(
                        &serde_json::json!({"name": name, "role": role.as_str(), "key_id": key_id, "broker": client.info.broker}),
                    )?;
                } else {
                    println!("{name} ({role}, key {key_id}) at {}", client.info.broker);
                }
            }
            other => bail!("unexpected reply {other:?}"),
        },
        Cmd::Run {
            image,
            cpus,
            mem,
            minutes,
            max_price,
            instances,
            wait,
            retries,
            renew_up_to,
            env,
            stdin,
            share,
            args,
        } => {
            let stdin = match stdin {
                Some(p) => {
                    let bytes = std::fs::read(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    if bytes.len() > MAX_STDIN {
                        bail!(
                            "{} is {} bytes; at most {MAX_STDIN} can travel as stdin",
                            p.display(),
                            bytes.len()
                        );
                    }
                    bytes
                }
                None => Vec::new(),
            };
            let mut client = client;
            let code = run::run(
                &home,
                &mut client,
                run::RunArgs {
                    image: &image,
                    instances,
                    cpus,
                    mem_mib: mem,
                    minutes,
                    max_price,
                    wait_secs: wait,
                    job: JobSpec {
                        args,
                        env,
                        stdin,
                        shares: Vec::new(),
                    },
                    json,
                    retries,
                    renew_up_to,
                    shares: &share,
                },
            )
            .await?;
            client.conn.close(0u32.into(), b"done");
            return Ok(code);
        }
        Cmd::Book => match client.call(&Request::Book).await? {
            Response::Book(levels) if json => listing::json(&levels)?,
            Response::Book(levels) => listing::book(&levels),
            other => bail!("unexpected reply {other:?}"),
        },
        Cmd::Orders => match client.call(&Request::Orders).await? {
            Response::Orders(rows) if json => listing::json(&rows)?,
            Response::Orders(rows) => listing::orders(&rows),
            other => bail!("unexpected reply {other:?}"),
        },
        Cmd::Leases => match client.call(&Request::Leases).await? {
            Response::Leases(rows) if json => listing::json(&rows)?,
            Response::Leases(rows) => listing::leases(&rows),
            other => bail!("unexpected reply {other:?}"),
        },
        Cmd::Balance => match client.call(&Request::Balance).await? {
            Response::Balance {
                available,
                held,
                escrow,
            } => {
                if json {
                    listing::json(&serde_json::json!({
                        "available": available.to_string(), "held": held.to_string(), "escrow": escrow.to_string(),
                        "available_micros": available.0, "held_micros": held.0, "escrow_micros": escrow.0,
                    }))?;
                } else {
                    println!("available {available}  held by orders {held}  in escrow {escrow}  (credits)");
                }
            }
            other => bail!("unexpected reply {other:?}"),
        },
        Cmd::Cancel { id } => match client.call(&Request::Cancel { order: id }).await? {
            Response::Cancelled { order, refunded } => {
                if json {
                    listing::json(
                        &serde_json::json!({"order": order, "refunded": refunded.to_string()}),
                    )?;
                } else {
                    println!("cancelled {order}; {refunded} credits returned");
                }
            }
            other => bail!("unexpected reply {other:?}"),
        },
    }
    client.conn.close(0u32.into(), b"done");
    Ok(0)
}
