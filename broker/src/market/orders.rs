//! Orders entering and leaving the market: buys, sells, cancels, expiry,
//! and recovery after a restart.

use super::renewal::Allowance;
use super::{BuyLive, BuySpec, Market, MarketError, SellLive};
use crate::book::{BuyOrder, Fill, OrderId, SellOrder};
use crate::ledger::{billing, postings};
use crate::store::{LeaseRow, OrderRow, OrderState, Side, Tx};
use cpushare_proto::bundle::MAX_BUNDLE;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{
    BrokerMsg, BuyRequest, ErrorCode, LeaseEnd, Response, SandboxKind, SellOffer, ShareSpec,
    MAX_ARGS, MAX_SHARES, MAX_STDIN, MAX_WASM,
};
use tokio::sync::mpsc::UnboundedSender;

/// Bounds on what one order may ask for.
const MAX_INSTANCES: u32 = 1024;
const MAX_CPUS: u32 = 1024;
const MAX_MINUTES: u32 = 7 * 24 * 60;
const MAX_MEM_MIB: u64 = 4 << 20;
const MAX_WAIT_SECS: u32 = 7 * 24 * 3600;

/// A connected seller's handle on its session, returned by [`Market::open_session`].
#[derive(Debug, Clone)]
pub struct SellerSession {
    /// The sell order posted.
    pub order: OrderId,
    /// Its `K-` key.
    pub key: String,
    /// Session generation.
    pub session_id: u64,
}

fn check_buy(req: &BuyRequest, image_len: u64) -> Result<(), MarketError> {
    let bad = |m: String| Err(MarketError::refused(ErrorCode::BadRequest, m));
    if req.instances == 0 || req.instances > MAX_INSTANCES {
        return bad(format!("--instances must be 1..={MAX_INSTANCES}"));
    }
    if req.cpus == 0 || req.cpus > MAX_CPUS {
        return bad(format!("--cpus must be 1..={MAX_CPUS}"));
    }
    if req.mem_mib == 0 || req.mem_mib > MAX_MEM_MIB {
        return bad(format!("--mem must be 1 MiB..={} GiB", MAX_MEM_MIB >> 10));
    }
    if req.minutes == 0 || req.minutes > MAX_MINUTES {
        return bad(format!("--minutes must be 1..={MAX_MINUTES}"));
    }
    if req.max_price == Micros::ZERO {
        return bad("--max-price must be above 0".into());
    }
    if req.renew_up_to.is_some_and(|r| r > MAX_MINUTES) {
        return bad(format!(
            "--renew-up-to must be at most {MAX_MINUTES} minutes"
        ));
    }
    if req.wait_secs.is_some_and(|w| w > MAX_WAIT_SECS) {
        return bad(format!("--wait must be at most {MAX_WAIT_SECS} seconds"));
    }
    if req.job.stdin.len() > MAX_STDIN {
        return bad(format!(
            "stdin is {} bytes; at most {MAX_STDIN} travel with the order",
            req.job.stdin.len()
        ));
    }
    if req.job.args.len() + req.job.env.len() > MAX_ARGS {
        return bad(format!("at most {MAX_ARGS} arguments and variables"));
    }
    if req.job.shares.len() > MAX_SHARES {
        return bad(format!("at most {MAX_SHARES} shares"));
    }
    let mut guests = std::collections::HashSet::new();
    for share in &req.job.shares {
        ShareSpec::check_guest_path(&share.guest).or_else(bad)?;
        if !guests.insert(share.guest.as_str()) {
            return bad(format!("two shares at {}", share.guest));
        }
        if share.writable == share.input.is_some() {
            return bad(format!(
                "share {} must be either read-only with an input bundle or writable without one",
                share.guest
            ));
        }
        if share.input.is_some_and(|(_, len)| len > MAX_BUNDLE) {
            return bad(format!(
                "the bundle for {} is larger than {MAX_BUNDLE} bytes",
                share.guest
            ));
        }
    }
    if req.kind == SandboxKind::Wasm && image_len > MAX_WASM {
        return bad(format!(
            "module is {image_len} bytes; wasm modules may be at most {MAX_WASM}"
        ));
    }
    Ok(())
}

fn check_offer(offer: &SellOffer) -> Result<(), MarketError> {
    let bad = |m: &str| Err(MarketError::refused(ErrorCode::BadRequest, m));
    if offer.cpus == 0 || offer.cpus > MAX_CPUS {
        return bad("--cpus must be 1..=1024");
    }
    if offer.mem_mib == 0 || offer.mem_mib > MAX_MEM_MIB {
        return bad("--mem must be at least 1 MiB");
    }
    if offer.kinds.is_empty() {
        return bad("offer at least one sandbox kind (wasm or vm)");
    }
    if offer.min_minutes == 0 || offer.min_minutes > offer.max_minutes {
        return bad("--min-minutes must be at least 1 and at most --max-minutes");
    }
    Ok(())
}

impl Market {
    /// Places a buy order for `buyer`: reserves its worst-case cost, puts
    /// it on the book and opens leases for whatever matches at once, all in
    /// one transaction. Returns the order id, its key and what was held.
    pub async fn place_buy(
        &mut self,
        buyer: &str,
        req: BuyRequest,
        image_len: u64,
        follower: Option<UnboundedSender<Response>>,
        now_ms: u64,
    ) -> Result<(OrderId, String, Micros), MarketError> {
        check_buy(&req, image_len)?;
        let worst = billing::cost(
            u64::from(req.instances) * u64::from(req.cpus),
            req.minutes,
            req.max_price,
        )
        .map_err(|e| MarketError::refused(ErrorCode::BadRequest, e.to_string()))?;
        let (id, key) = self.order_id();
        let spec = BuySpec {
            image: req.image,
            image_len,
            job: req.job.clone(),
        };
        let expires = req.wait_secs.map(|w| now_ms + u64::from(w) * 1000);
        let row = OrderRow {
            id: id.0,
            key: key.clone(),
            side: Side::Buy,
            owner: buyer.to_string(),
            kind: req.kind.as_str().to_string(),
            cpus: req.cpus,
            mem_mib: req.mem_mib,
            instances: req.instances,
            filled: 0,
            minutes: req.minutes,
            min_minutes: req.minutes,
            max_minutes: req.minutes,
            price: req.max_price,
            spec: serde_json::to_string(&spec).expect("BuySpec serializes"),
            state: OrderState::Open,
            created_ms: now_ms,
            expires_ms: expires,
            renew_up_to: req.renew_up_to.unwrap_or(0),
        };
        let mut tx = self.store.begin().await?;
        tx.insert_order(&row).await?;
        // The reserve checks the balance (no read before the transaction:
        // the refusal carries the balance it found).
        if let Err(e) = tx
            .apply_transfers(&postings::reserve_order(buyer, &key, worst), now_ms)
            .await
        {
            tx.rollback().await?;
            // The refused order took no id.
            self.next_order = id.0;
            let balance = match e {
                crate::store::StoreError::InsufficientFunds { balance, .. } => Some(balance),
                // More than any balance can hold: surely more than this one.
                crate::store::StoreError::AmountTooLarge { .. } => Some(
                    self.store
                        .balance(&crate::ledger::accounts::user(buyer))
                        .await?,
                ),
                _ => None,
            };
            return Err(match balance {
                Some(balance) => {
                    let available = Micros(u64::try_from(balance).unwrap_or(0));
                    MarketError::refused(
                        ErrorCode::InsufficientFunds,
                        format!(
                            "this order needs {worst} credits reserved ({} instance(s) x {} vCPU x {} min x {} max price) but your balance is {available}; lower --max-price, --minutes or --cpus, or ask the broker operator to credit your account",
                            req.instances, req.cpus, req.minutes, req.max_price
                        ),
                    )
                }
                None => e.into(),
            });
        }
        // Not committed yet: the order's writes ride with its first lease's
        // (see `open_leases_in`), so a buy that matches at once commits once.
        self.buys.insert(
            id,
            BuyLive {
                key: key.clone(),
                buyer: buyer.to_string(),
                kind: req.kind,
                spec,
                instances: req.instances,
                filled: 0,
                held: worst,
                running: 0,
                cost: Micros::ZERO,
                refunded: Micros::ZERO,
                done: None,
                allowance: Allowance {
                    max_total_minutes: req.renew_up_to.unwrap_or(0),
                    max_price: req.max_price,
                },
                follower,
            },
        );
        let order = BuyOrder {
            id,
            buyer: buyer.to_string(),
            instances: req.instances,
            cpus: req.cpus,
            mem_mib: req.mem_mib,
            minutes: req.minutes,
            max_price: req.max_price,
            kind: req.kind,
            expires_at_ms: expires,
        };
        let fills = match self.book.add_buy(order, now_ms) {
            Ok(fills) => fills,
            Err(e) => {
                // Dropping `tx` rolls the order and its reserve back.
                self.buys.remove(&id);
                self.next_order = id.0;
                return Err(MarketError::refused(ErrorCode::BadRequest, e.to_string()));
            }
        };
        self.open_leases_in(tx, fills, now_ms).await?;
        Ok((id, key, worst))
    }

    /// Opens one lease per fill, the first inside `tx` (which holds the
    /// order's own writes), then commits; with no fill it just commits.
    async fn open_leases_in(
        &mut self,
        tx: Tx,
        fills: Vec<Fill>,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let mut fills = fills.into_iter();
        match fills.next() {
            None => tx.commit().await?,
            Some(first) => self.open_lease(first, now_ms, Some(tx)).await?,
        }
        self.open_leases(fills.collect(), now_ms).await
    }

    /// Lets a buyer follow one of its orders again (after a reconnect or a
    /// broker restart). Returns what the order still holds, or `None` if
    /// the order is closed, unknown or not theirs.
    pub fn follow(
        &mut self,
        buyer: &str,
        key: &str,
        to: UnboundedSender<Response>,
    ) -> Option<Micros> {
        let b = self
            .buys
            .values_mut()
            .find(|b| b.key == key && b.buyer == buyer)?;
        b.follower = Some(to);
        Some(b.held)
    }

    /// Posts a seller's offer and registers its session. A seller that
    /// connects again replaces its older session: the old sell order
    /// closes and the old session's leases end as `seller lost`.
    pub async fn open_session(
        &mut self,
        seller: &str,
        offer: SellOffer,
        session: UnboundedSender<BrokerMsg>,
        now_ms: u64,
    ) -> Result<SellerSession, MarketError> {
        check_offer(&offer)?;
        if let Some(old) = self.seller_orders.get(seller).copied() {
            self.close_sell(old, LeaseEnd::SellerLost, now_ms).await?;
        }
        let (id, key) = self.order_id();
        let row = OrderRow {
            id: id.0,
            key: key.clone(),
            side: Side::Sell,
            owner: seller.to_string(),
            kind: offer
                .kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(","),
            cpus: offer.cpus,
            mem_mib: offer.mem_mib,
            instances: 0,
            filled: 0,
            minutes: 0,
            min_minutes: offer.min_minutes,
            max_minutes: offer.max_minutes,
            price: offer.price,
            spec: String::new(),
            state: OrderState::Open,
            created_ms: now_ms,
            expires_ms: None,
            renew_up_to: 0,
        };
        let mut tx = self.store.begin().await?;
        tx.insert_order(&row).await?;
        tx.commit().await?;
        let session_id = self.next_session;
        self.next_session += 1;
        self.sells.insert(
            id,
            SellLive {
                key: key.clone(),
                seller: seller.to_string(),
                session,
                session_id,
                last_seen_ms: now_ms,
                ask: offer.price,
                max_minutes: offer.max_minutes,
            },
        );
        self.seller_orders.insert(seller.to_string(), id);
        let order = SellOrder {
            id,
            seller: seller.to_string(),
            cpus: offer.cpus,
            mem_mib: offer.mem_mib,
            kinds: offer.kinds.clone(),
            price: offer.price,
            min_minutes: offer.min_minutes,
            max_minutes: offer.max_minutes,
            expires_at_ms: None,
        };
        let fills = self
            .book
            .add_sell(order, now_ms)
            .map_err(|e| MarketError::refused(ErrorCode::BadRequest, e.to_string()))?;
        // Welcome first, so the seller knows its order before any lease.
        if let Some(s) = self.sells.get(&id) {
            let _ = s.session.send(BrokerMsg::Welcome {
                order: key.clone(),
                heartbeat_secs: self.cfg.heartbeat_secs,
            });
        }
        self.open_leases(fills, now_ms).await?;
        Ok(SellerSession {
            order: id,
            key,
            session_id,
        })
    }

    /// Records a heartbeat of the session `s`.
    pub fn heartbeat(&mut self, s: &SellerSession, now_ms: u64) {
        if let Some(sell) = self.sells.get_mut(&s.order) {
            if sell.session_id == s.session_id {
                sell.last_seen_ms = now_ms;
            }
        }
    }

    /// The seller's session ended (stream closed, error, or missed
    /// heartbeats): its order leaves the book and its leases end as lost.
    pub async fn close_session(
        &mut self,
        s: &SellerSession,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let current = self
            .sells
            .get(&s.order)
            .is_some_and(|sell| sell.session_id == s.session_id);
        if current {
            self.close_sell(s.order, LeaseEnd::SellerLost, now_ms)
                .await?;
        }
        Ok(())
    }

    async fn close_sell(
        &mut self,
        id: OrderId,
        end: LeaseEnd,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let Some(sell) = self.sells.remove(&id) else {
            return Ok(());
        };
        if self.seller_orders.get(&sell.seller) == Some(&id) {
            self.seller_orders.remove(&sell.seller);
        }
        self.book.cancel(id);
        let mut tx = self.store.begin().await?;
        tx.update_order(id.0, OrderState::Closed, 0).await?;
        tx.commit().await?;
        let lost: Vec<String> = self
            .leases
            .values()
            .filter(|l| l.sell == id)
            .map(|l| l.key.clone())
            .collect();
        for lease in lost {
            self.end_lease(&lease, end.clone(), now_ms).await?;
        }
        tracing::info!(seller = %sell.seller, order = %sell.key, "sell order closed");
        Ok(())
    }

    /// Cancels `owner`'s order `key`. A buy stops matching, its unused
    /// reserve returns, and its running leases are stopped (billed for the
    /// minutes they ran). A sell stops offering; running leases go on.
    pub async fn cancel(
        &mut self,
        owner: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Micros, MarketError> {
        let not_found = || {
            MarketError::refused(
                ErrorCode::NotFound,
                format!("you have no open order {key}; see `cpushare orders`"),
            )
        };
        if let Some((&id, _)) = self
            .buys
            .iter()
            .find(|(_, b)| b.key == key && b.buyer == owner)
        {
            let released = self
                .finish_buy(id, crate::store::OrderState::Cancelled, now_ms)
                .await?;
            let running: Vec<String> = self
                .leases
                .values()
                .filter(|l| l.buy == id)
                .map(|l| l.key.clone())
                .collect();
            for lease in running {
                self.stop_lease(&lease);
            }
            self.maybe_close_buy(id);
            return Ok(released);
        }
        if let Some((&id, _)) = self
            .sells
            .iter()
            .find(|(_, s)| s.key == key && s.seller == owner)
        {
            self.book.cancel(id);
            let mut tx = self.store.begin().await?;
            tx.update_order(id.0, OrderState::Cancelled, 0).await?;
            tx.commit().await?;
            return Ok(Micros::ZERO);
        }
        Err(not_found())
    }

    /// The buyer following `key` went away: treat it as a cancel.
    pub async fn follower_gone(
        &mut self,
        owner: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let still_open = self.buys.values().any(|b| b.key == key && b.done.is_none());
        let has_leases = self
            .buys
            .iter()
            .any(|(id, b)| b.key == key && self.leases.values().any(|l| l.buy == *id));
        if still_open || has_leases {
            self.cancel(owner, key, now_ms).await.map(|_| ())
        } else {
            Ok(())
        }
    }

    /// Takes a buy order off the book for good (`state`), returning the
    /// unused part of its hold to the buyer. Returns what was released.
    pub(super) async fn finish_buy(
        &mut self,
        id: OrderId,
        state: OrderState,
        now_ms: u64,
    ) -> Result<Micros, MarketError> {
        let Some(b) = self.buys.get(&id) else {
            return Ok(Micros::ZERO);
        };
        if b.done.is_some() {
            return Ok(Micros::ZERO);
        }
        let (key, buyer, held, filled) = (b.key.clone(), b.buyer.clone(), b.held, b.filled);
        self.book.cancel(id);
        let mut tx = self.store.begin().await?;
        tx.apply_transfers(&postings::release_hold(&key, &buyer, held), now_ms)
            .await?;
        tx.update_order(id.0, state, filled).await?;
        tx.commit().await?;
        if let Some(b) = self.buys.get_mut(&id) {
            b.held = Micros::ZERO;
            b.refunded = b.refunded.checked_add(held).unwrap_or(b.refunded);
            b.done = Some(state);
        }
        Ok(held)
    }

    /// Forgets a finished buy order with no leases left, telling its follower.
    pub(super) fn maybe_close_buy(&mut self, id: OrderId) {
        let closable = self
            .buys
            .get(&id)
            .is_some_and(|b| b.done.is_some() && b.running == 0);
        if !closable {
            return;
        }
        if let Some(b) = self.buys.remove(&id) {
            if let Some(f) = b.follower {
                let _ = f.send(Response::OrderClosed {
                    order: b.key,
                    state: b.done.map(|s| s.as_str()).unwrap_or("closed").to_string(),
                    cost: b.cost,
                    refunded: b.refunded,
                });
            }
        }
    }

    /// Removes expired buy orders, returning their holds.
    pub(super) async fn expire_orders(&mut self, now_ms: u64) -> Result<(), MarketError> {
        for id in self.book.expire(now_ms) {
            if self.buys.contains_key(&id) {
                self.finish_buy(id, OrderState::Expired, now_ms).await?;
                self.maybe_close_buy(id);
            }
        }
        Ok(())
    }

    /// Opens one lease per fill.
    ///
    /// Boxed because opening a lease can end one (seller gone), and ending
    /// one frees capacity that can open more.
    pub(super) fn open_leases(
        &mut self,
        fills: Vec<Fill>,
        now_ms: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), MarketError>> + Send + '_>>
    {
        Box::pin(async move {
            for fill in fills {
                self.open_lease(fill, now_ms, None).await?;
            }
            Ok(())
        })
    }

    pub(super) async fn recover(&mut self, now_ms: u64) -> Result<(), MarketError> {
        // Leases: the seller was unsupervised while we were down; end them
        // as lost, paying only what was settled, refunding the rest.
        for row in self.store.open_leases().await? {
            self.end_recovered_lease(&row, now_ms).await?;
        }
        for row in self.store.open_orders().await? {
            match row.side {
                Side::Sell => {
                    let mut tx = self.store.begin().await?;
                    tx.update_order(row.id, OrderState::Closed, row.filled)
                        .await?;
                    tx.commit().await?;
                }
                Side::Buy => self.recover_buy(row, now_ms).await?,
            }
        }
        Ok(())
    }

    async fn end_recovered_lease(
        &mut self,
        row: &LeaseRow,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let settled = billing::cost(u64::from(row.cpus), row.settled_minutes, row.price)
            .unwrap_or(row.escrow);
        let refund = row.escrow.saturating_sub(settled);
        let mut tx = self.store.begin().await?;
        tx.apply_transfers(&postings::refund(&row.key, &row.buyer, refund), now_ms)
            .await?;
        tx.end_lease(
            row.id,
            &LeaseEnd::SellerLost.to_string(),
            None,
            now_ms,
            settled,
        )
        .await?;
        tx.record_lease_outcome(&row.seller, true, now_ms).await?;
        tx.commit().await?;
        tracing::warn!(lease = %row.key, "lease ended by broker restart; unused escrow refunded");
        Ok(())
    }

    async fn recover_buy(&mut self, row: OrderRow, now_ms: u64) -> Result<(), MarketError> {
        let id = OrderId(row.id);
        let spec: Option<BuySpec> = serde_json::from_str(&row.spec).ok();
        let kind = SandboxKind::parse(&row.kind);
        let held = Micros(
            u64::try_from(
                self.store
                    .balance(&crate::ledger::accounts::hold(&row.key))
                    .await?,
            )
            .unwrap_or(0),
        );
        let (Some(spec), Some(kind)) = (spec, kind) else {
            tracing::error!(order = %row.key, "unreadable buy order; closing it and returning its hold");
            let mut tx = self.store.begin().await?;
            tx.apply_transfers(&postings::release_hold(&row.key, &row.owner, held), now_ms)
                .await?;
            tx.update_order(row.id, OrderState::Closed, row.filled)
                .await?;
            tx.commit().await?;
            return Ok(());
        };
        self.buys.insert(
            id,
            BuyLive {
                key: row.key.clone(),
                buyer: row.owner.clone(),
                kind,
                spec,
                instances: row.instances,
                filled: row.filled,
                held,
                running: 0,
                cost: Micros::ZERO,
                refunded: Micros::ZERO,
                done: None,
                allowance: Allowance {
                    max_total_minutes: row.renew_up_to,
                    max_price: row.price,
                },
                follower: None,
            },
        );
        if row.expires_ms.is_some_and(|t| t <= now_ms) {
            self.finish_buy(id, OrderState::Expired, now_ms).await?;
            self.maybe_close_buy(id);
            return Ok(());
        }
        let order = BuyOrder {
            id,
            buyer: row.owner,
            instances: row.instances - row.filled.min(row.instances),
            cpus: row.cpus,
            mem_mib: row.mem_mib,
            minutes: row.minutes,
            max_price: row.price,
            kind,
            expires_at_ms: row.expires_ms,
        };
        if order.instances == 0 {
            self.finish_buy(id, OrderState::Filled, now_ms).await?;
            self.maybe_close_buy(id);
            return Ok(());
        }
        let fills = self
            .book
            .add_buy(order, now_ms)
            .map_err(|e| MarketError::refused(ErrorCode::BadRequest, e.to_string()))?;
        self.open_leases(fills, now_ms).await?;
        tracing::info!(order = %row.key, "buy order recovered onto the book");
        Ok(())
    }

    /// Every check that needs the current time: renew leases near their
    /// end, settle due minutes, stop overrunning leases, expire orders,
    /// declare silent sellers lost.
    pub async fn tick(&mut self, now_ms: u64) -> Result<(), MarketError> {
        self.expire_orders(now_ms).await?;
        let deadline = u64::from(self.cfg.heartbeat_secs * self.cfg.missed_heartbeats) * 1000;
        let silent: Vec<OrderId> = self
            .sells
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_seen_ms) > deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in silent {
            tracing::warn!(order = ?id, "seller missed {} heartbeats; declaring it lost", self.cfg.missed_heartbeats);
            self.close_sell(id, LeaseEnd::SellerLost, now_ms).await?;
        }
        self.renew_leases(now_ms).await?;
        self.settle_leases(now_ms).await
    }
}
