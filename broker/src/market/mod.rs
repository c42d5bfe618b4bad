//! The live market: the order book, leases in flight, and who is listening.
//!
//! `Market` ties the sans-IO cores together ([`crate::book`] matches,
//! [`crate::ledger`] computes postings and bills) and writes every market
//! event to the [`Store`] in one transaction before anyone is told about it.
//! It is driven by the server (requests, seller sessions) and by a ticker
//! that passes the current time in; it holds no sockets itself, only the
//! channels that lead to them.

mod extend;
mod leases;
mod orders;
pub mod renewal;
#[cfg(test)]
mod tests;
mod views;

use crate::book::{Book, OrderId};
use crate::ledger::billing::LeaseBilling;
use crate::store::{Store, StoreError};
use cpushare_proto::id::ContentId;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{BrokerMsg, ErrorCode, ErrorReply, JobSpec, Response, SandboxKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tokio::sync::mpsc::UnboundedSender;

pub use orders::SellerSession;

/// Tunables of the market.
#[derive(Debug, Clone)]
pub struct MarketConfig {
    /// Broker fee in basis points of every settled amount.
    pub fee_bps: u32,
    /// Seconds between seller heartbeats.
    pub heartbeat_secs: u32,
    /// Heartbeats a seller may miss before it is declared lost.
    pub missed_heartbeats: u32,
    /// Seconds a lease may overrun its minutes before the broker stops it.
    pub overrun_grace_secs: u64,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            fee_bps: 200,
            heartbeat_secs: 2,
            missed_heartbeats: 3,
            overrun_grace_secs: 30,
        }
    }
}

/// What a buy order carries beyond the book's view: persisted as JSON in
/// the order row so a restarted broker can place it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuySpec {
    /// Image content id.
    pub image: ContentId,
    /// Image size.
    pub image_len: u64,
    /// What to run.
    pub job: JobSpec,
}

/// A buy order the market still tracks (open, or with leases running).
struct BuyLive {
    key: String,
    buyer: String,
    kind: SandboxKind,
    spec: BuySpec,
    instances: u32,
    filled: u32,
    /// Still reserved in `hold:KEY`.
    held: Micros,
    /// Leases not yet ended.
    running: u32,
    /// Billed so far over all its leases.
    cost: Micros,
    /// Returned to the buyer so far.
    refunded: Micros,
    /// `None` while open; the final state once it stopped matching.
    done: Option<crate::store::OrderState>,
    /// What the buyer allowed its leases' renewals (`--renew-up-to`, cap).
    allowance: renewal::Allowance,
    /// Where to stream events, if the buyer follows the order.
    follower: Option<UnboundedSender<Response>>,
}

/// A sell order and the session that posted it.
struct SellLive {
    key: String,
    seller: String,
    session: UnboundedSender<BrokerMsg>,
    /// Generation of the session, so a stale session cannot end a newer one.
    session_id: u64,
    last_seen_ms: u64,
    /// Its ask per vCPU-minute (the price of its leases and renewals).
    ask: Micros,
    /// Longest lease it accepts, minutes (caps one renewal).
    max_minutes: u32,
}

/// A lease between its match and its end.
struct LeaseLive {
    id: u64,
    key: String,
    buy: OrderId,
    sell: OrderId,
    buyer: String,
    seller: String,
    cpus: u32,
    mem_mib: u64,
    billing: LeaseBilling,
    /// When the seller reported the sandbox up; billing runs from here.
    started_ms: Option<u64>,
    matched_ms: u64,
    stop_sent: bool,
    /// Its length at the match; each renewal adds as much again.
    first_minutes: u32,
    /// Paid minutes for which renewal already said no (asked once per period).
    renewal_refused_at: Option<u32>,
}

/// Why the market refused something; becomes an [`ErrorReply`].
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    /// A refusal the client can act on.
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl MarketError {
    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> MarketError {
        MarketError::Refused(ErrorReply {
            code,
            message: message.into(),
        })
    }

    /// The reply to send to the client.
    pub fn reply(&self) -> ErrorReply {
        match self {
            MarketError::Refused(r) => r.clone(),
            MarketError::Store(e) => {
                tracing::error!("store error: {e}");
                ErrorReply {
                    code: ErrorCode::Internal,
                    message: "the broker could not record this; try again, and tell the broker operator if it persists".into(),
                }
            }
        }
    }
}

/// The live market.
pub struct Market {
    store: Store,
    cfg: MarketConfig,
    book: Book,
    next_order: u64,
    next_lease: u64,
    next_session: u64,
    buys: HashMap<OrderId, BuyLive>,
    sells: HashMap<OrderId, SellLive>,
    /// The sell order of each connected seller.
    seller_orders: HashMap<String, OrderId>,
    leases: HashMap<String, LeaseLive>,
}

impl Market {
    /// Opens the market over `store`, recovering what a previous run left:
    /// open buy orders go back on the book (their owner can follow them
    /// again with `cpushare orders`), sell orders are closed (sellers post
    /// new ones when they reconnect), and leases that were running end as
    /// `seller lost`, billed only for the minutes already settled.
    pub async fn open(store: Store, cfg: MarketConfig, now_ms: u64) -> Result<Market, MarketError> {
        let ids = store.max_ids().await?;
        let mut market = Market {
            store,
            cfg,
            book: Book::new(),
            next_order: ids.order + 1,
            next_lease: ids.lease + 1,
            next_session: 1,
            buys: HashMap::new(),
            sells: HashMap::new(),
            seller_orders: HashMap::new(),
            leases: HashMap::new(),
        };
        market.recover(now_ms).await?;
        Ok(market)
    }

    /// The store under the market.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The market's configuration.
    pub fn config(&self) -> &MarketConfig {
        &self.cfg
    }

    fn order_id(&mut self) -> (OrderId, String) {
        let id = self.next_order;
        self.next_order += 1;
        (OrderId(id), cpushare_proto::id::short_id("order", id))
    }

    fn lease_id(&mut self) -> (u64, String) {
        let id = self.next_lease;
        self.next_lease += 1;
        (id, cpushare_proto::id::short_id("lease", id))
    }

    /// Whether `seller` may fetch `image` (it has a lease that needs it,
    /// as its module or ISO or as the bundle of one of its shares).
    pub fn seller_needs_image(&self, seller: &str, image: &ContentId) -> bool {
        self.leases.values().any(|l| {
            l.seller == seller
                && self.buys.get(&l.buy).is_some_and(|b| {
                    b.spec.image == *image
                        || b.spec
                            .job
                            .shares
                            .iter()
                            .any(|s| s.input.is_some_and(|(id, _)| id == *image))
                })
        })
    }

    /// Sends `msg` to the follower of buy order `buy`, if any; a follower
    /// that went away is forgotten.
    fn tell_buyer(&mut self, buy: OrderId, msg: Response) {
        if let Some(b) = self.buys.get_mut(&buy) {
            if let Some(f) = &b.follower {
                if f.send(msg).is_err() {
                    b.follower = None;
                }
            }
        }
    }
}

impl From<cpushare_proto::msg::Role> for crate::store::Role {
    fn from(r: cpushare_proto::msg::Role) -> Self {
        match r {
            cpushare_proto::msg::Role::Buyer => crate::store::Role::Buyer,
            cpushare_proto::msg::Role::Seller => crate::store::Role::Seller,
        }
    }
}

/// The wire role of a stored account; `None` for broker-internal roles.
pub fn wire_role(r: crate::store::Role) -> Option<cpushare_proto::msg::Role> {
    cpushare_proto::msg::Role::parse(r.as_str())
}
