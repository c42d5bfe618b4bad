//! `cpushare-broker`: runs the market and administers its accounts.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use cpushare_broker::datadir::{DataDir, DEFAULT_PORT};
use cpushare_broker::ledger::{accounts, postings};
use cpushare_broker::market::MarketConfig;
use cpushare_broker::server::{Broker, ServeConfig};
use cpushare_broker::store::Store;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::Role;
use cpushare_proto::token::{hash_secret, Token};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The cpushare broker: keeps the order book, the money and the trust.
///
/// Quick start on one machine:
///
///   cpushare-broker serve &
///   cpushare-broker account add alice --role buyer    # prints a token
///   cpushare-broker credit alice 10
///   cpushare-broker account add bob --role seller
///
/// then `cpushare login TOKEN` as the buyer and `cpushare-seller enroll TOKEN`
/// as the seller.
#[derive(Parser)]
#[command(name = "cpushare-broker", version, verbatim_doc_comment)]
struct Cli {
    /// Data directory: CA, SQLite database, images, published endpoints.
    #[arg(long, global = true, env = "CPUSHARE_BROKER_DATA", default_value_os_t = default_data())]
    data: PathBuf,
    /// Database URL; defaults to SQLite in the data directory.
    /// Example: postgres://cpushare@127.0.0.1/cpushare
    #[arg(long, global = true, env = "CPUSHARE_BROKER_DB")]
    db: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker: QUIC control endpoint with mutual TLS, enrollment
    /// endpoint, per-minute settlement.
    Serve {
        /// Control endpoint (UDP).
        #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
        listen: SocketAddr,
        /// Enrollment endpoint (UDP); defaults to the control port + 1.
        #[arg(long)]
        enroll_listen: Option<SocketAddr>,
        /// Broker fee, in basis points of every settled amount (200 = 2 %).
        #[arg(long, default_value_t = 200)]
        fee_bps: u32,
        /// Seconds between seller heartbeats; a seller silent for 3 of them is lost.
        #[arg(long, default_value_t = 2)]
        heartbeat_secs: u32,
    },
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Deposit credits into an account (AMOUNT in credits, e.g. 10 or 0.5).
    Credit {
        /// Account name.
        name: String,
        /// Amount in credits; up to 6 decimal places.
        amount: Micros,
    },
    /// Show every ledger balance and check that they sum to zero.
    Ledger {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account and print its one-time enrollment token (last line).
    Add {
        /// Account name (letters, digits, `-`, `_`, `.`).
        name: String,
        /// What the account does.
        #[arg(long, value_parser = ["buyer", "seller"])]
        role: String,
        /// Hours until the token expires.
        #[arg(long, default_value_t = 24)]
        expires_hours: u64,
        /// Control address to put in the token (default: where `serve` listens).
        #[arg(long)]
        broker: Option<String>,
        /// Enrollment address to put in the token.
        #[arg(long)]
        enroll: Option<String>,
    },
    /// Issue a new token for an existing account (lost key, new machine).
    Token {
        /// Account name.
        name: String,
        /// Hours until the token expires.
        #[arg(long, default_value_t = 24)]
        expires_hours: u64,
    },
    /// List accounts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn default_data() -> PathBuf {
    cpushare_proto::client::home_dir(".cpushare-broker")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let data = DataDir::open(&cli.data)?;
    let db_url = cli.db.clone().unwrap_or_else(|| data.sqlite_url());
    match cli.cmd {
        Cmd::Serve {
            listen,
            enroll_listen,
            fee_bps,
            heartbeat_secs,
        } => {
            let enroll_listen = enroll_listen.unwrap_or_else(|| {
                let port = if listen.port() == 0 {
                    0
                } else {
                    listen.port() + 1
                };
                SocketAddr::new(listen.ip(), port)
            });
            let cfg = ServeConfig {
                listen,
                enroll_listen,
                db_url,
                market: MarketConfig {
                    fee_bps,
                    heartbeat_secs,
                    ..MarketConfig::default()
                },
            };
            let broker = Broker::start(&data, cfg).await?;
            println!(
                "cpushare-broker listening on {} (enrollment on {}), data in {}",
                broker.endpoints.broker,
                broker.endpoints.enroll,
                data.root().display()
            );
            broker.run().await
        }
        Cmd::Account(AccountCmd::Add {
            name,
            role,
            expires_hours,
            broker,
            enroll,
        }) => {
            if !valid_name(&name) {
                bail!("account name `{name}` must be 1-64 letters, digits, `-`, `_` or `.`");
            }
            let role = Role::parse(&role).expect("clap allows only buyer|seller");
            let store = Store::open(&db_url).await?;
            let mut tx = store.begin().await?;
            tx.create_user(&name, role.into(), cpushare_proto::now_ms())
                .await
                .with_context(|| format!("while creating account {name}"))?;
            let token =
                issue_token(&data, &mut tx, &name, role, expires_hours, broker, enroll).await?;
            tx.commit().await?;
            eprintln!("account {name} ({role}) created; enroll it with the token below within {expires_hours} h:");
            println!("{token}");
            Ok(())
        }
        Cmd::Account(AccountCmd::Token {
            name,
            expires_hours,
        }) => {
            let store = Store::open(&db_url).await?;
            let user = store.user(&name).await?.with_context(|| {
                format!("no account {name}; create it with `cpushare-broker account add`")
            })?;
            let mut tx = store.begin().await?;
            let role = cpushare_broker::market::wire_role(user.role)
                .with_context(|| format!("account {name} is not a buyer or seller"))?;
            let token = issue_token(&data, &mut tx, &name, role, expires_hours, None, None).await?;
            tx.commit().await?;
            println!("{token}");
            Ok(())
        }
        Cmd::Account(AccountCmd::List { json }) => {
            let store = Store::open(&db_url).await?;
            let users = store.users().await?;
            if json {
                let rows: Vec<_> = users
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "role": u.role.as_str(), "key_id": u.key_id, "created_ms": u.created_ms}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<24} {:<7} KEY", "NAME", "ROLE");
                for u in users {
                    println!(
                        "{:<24} {:<7} {}",
                        u.name,
                        u.role.as_str(),
                        u.key_id.as_deref().unwrap_or("(not enrolled)")
                    );
                }
            }
            Ok(())
        }
        Cmd::Credit { name, amount } => {
            if amount == Micros::ZERO {
                bail!("credit a positive amount");
            }
            let store = Store::open(&db_url).await?;
            if store.user(&name).await?.is_none() {
                bail!("no account {name}; create it with `cpushare-broker account add {name} --role buyer`");
            }
            let mut tx = store.begin().await?;
            tx.apply_transfers(
                &[postings::deposit(&name, amount)],
                cpushare_proto::now_ms(),
            )
            .await?;
            tx.commit().await?;
            let balance = store.balance(&accounts::user(&name)).await?;
            println!(
                "credited {amount} to {name}; balance {}",
                Micros(balance.max(0) as u64)
            );
            Ok(())
        }
        Cmd::Ledger { json } => {
            let store = Store::open(&db_url).await?;
            let balances = store.balances().await?;
            let sum: i128 = balances.iter().map(|(_, b)| i128::from(*b)).sum();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"balances": balances, "sum": sum.to_string()})
                    )?
                );
            } else {
                for (account, b) in &balances {
                    println!("{account:<40} {b:>16}");
                }
                println!("{:<40} {sum:>16}  (micro-credits; must be 0)", "SUM");
            }
            if sum != 0 {
                bail!("the ledger does not balance: sum is {sum}");
            }
            Ok(())
        }
    }
}

async fn issue_token(
    data: &DataDir,
    tx: &mut cpushare_broker::store::Tx,
    name: &str,
    role: Role,
    expires_hours: u64,
    broker: Option<String>,
    enroll: Option<String>,
) -> anyhow::Result<String> {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let expires = cpushare_proto::now_ms() + expires_hours * 3600 * 1000;
    tx.create_token(&hash_secret(&secret), name, expires)
        .await?;
    let ep = data.endpoints();
    let ca = data.ca()?;
    Ok(Token {
        broker: broker.unwrap_or(ep.broker),
        enroll: enroll.unwrap_or(ep.enroll),
        ca_sha256: ca.fingerprint(),
        name: name.to_string(),
        role,
        secret,
    }
    .encode())
}
