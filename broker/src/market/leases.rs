//! Leases from match to end: escrow at the match, minute-by-minute
//! settlement, refund of unused minutes, and telling both parties.

use super::{LeaseLive, Market, MarketError};
use crate::book::{Fill, OrderId};
use crate::ledger::billing::{self, LeaseBilling, MS_PER_MINUTE};
use crate::ledger::postings;
use crate::store::{LeaseRow, LeaseState, OrderState, Tx};
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{BrokerMsg, ErrorCode, LeaseEnd, LeaseSpec, Response, StdStream};

impl Market {
    /// Turns one fill into a lease: hold -> escrow, lease row, order
    /// progress in one transaction (`carried`, holding earlier writes of
    /// the same event, if given); then the seller is told to start it.
    pub(super) async fn open_lease(
        &mut self,
        fill: Fill,
        now_ms: u64,
        carried: Option<Tx>,
    ) -> Result<(), MarketError> {
        // Whatever `carried` holds stands even if this lease cannot open.
        let billing = match LeaseBilling::new(fill.cpus, fill.minutes, fill.price) {
            Ok(billing) => billing,
            Err(e) => {
                if let Some(tx) = carried {
                    tx.commit().await?;
                }
                return Err(MarketError::refused(ErrorCode::BadRequest, e.to_string()));
            }
        };
        let Some(buy) = self.buys.get(&fill.buy) else {
            if let Some(tx) = carried {
                tx.commit().await?;
            }
            tracing::error!(order = ?fill.buy, "fill for an unknown buy order");
            return Ok(());
        };
        let escrow = billing.escrow();
        let (order_key, buyer, kind, spec) = (
            buy.key.clone(),
            buy.buyer.clone(),
            buy.kind,
            buy.spec.clone(),
        );
        let filled = buy.filled + 1;
        let fully = filled >= buy.instances;
        let rest = buy.held.saturating_sub(escrow);
        let (id, key) = self.lease_id();
        let row = LeaseRow {
            id,
            key: key.clone(),
            buy_order: fill.buy.0,
            sell_order: fill.sell.0,
            buyer: buyer.clone(),
            seller: fill.seller.clone(),
            kind: kind.as_str().to_string(),
            cpus: fill.cpus,
            mem_mib: fill.mem_mib,
            minutes: fill.minutes,
            price: fill.price,
            escrow,
            settled_minutes: 0,
            state: LeaseState::Starting,
            end_reason: None,
            exit_code: None,
            started_ms: now_ms,
            ended_ms: None,
            cost: Micros::ZERO,
        };
        let mut transfers = postings::open_lease(&order_key, &key, escrow);
        if fully {
            transfers.extend(postings::release_hold(&order_key, &buyer, rest));
        }
        let mut tx = match carried {
            Some(tx) => tx,
            None => self.store.begin().await?,
        };
        tx.insert_lease(&row).await?;
        tx.apply_transfers(&transfers, now_ms).await?;
        let state = if fully {
            OrderState::Filled
        } else {
            OrderState::Open
        };
        tx.update_order(fill.buy.0, state, filled).await?;
        tx.commit().await?;

        if let Some(b) = self.buys.get_mut(&fill.buy) {
            b.filled = filled;
            b.running += 1;
            b.held = if fully { Micros::ZERO } else { rest };
            if fully {
                b.refunded = b.refunded.checked_add(rest).unwrap_or(b.refunded);
                b.done = Some(OrderState::Filled);
            }
        }
        self.leases.insert(
            key.clone(),
            LeaseLive {
                id,
                key: key.clone(),
                buy: fill.buy,
                sell: fill.sell,
                buyer: buyer.clone(),
                seller: fill.seller.clone(),
                cpus: fill.cpus,
                mem_mib: fill.mem_mib,
                billing,
                started_ms: None,
                matched_ms: now_ms,
                stop_sent: false,
                first_minutes: fill.minutes,
                renewal_refused_at: None,
            },
        );
        let start = BrokerMsg::Start(LeaseSpec {
            lease: key.clone(),
            buyer,
            kind,
            image: spec.image,
            image_len: spec.image_len,
            cpus: fill.cpus,
            mem_mib: fill.mem_mib,
            minutes: fill.minutes,
            job: spec.job,
        });
        let delivered = self
            .sells
            .get(&fill.sell)
            .is_some_and(|s| s.session.send(start).is_ok());
        self.tell_buyer(
            fill.buy,
            Response::LeaseStarted {
                lease: key.clone(),
                seller: fill.seller,
                price: fill.price,
            },
        );
        tracing::info!(lease = %key, order = %order_key, "lease opened");
        if !delivered {
            self.end_lease(&key, LeaseEnd::SellerLost, now_ms).await?;
        }
        Ok(())
    }

    /// The seller reports the sandbox up: billing starts now.
    pub async fn lease_started(
        &mut self,
        seller: &str,
        lease: &str,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let Some(l) = self.leases.get_mut(lease).filter(|l| l.seller == seller) else {
            return Ok(());
        };
        if l.started_ms.is_some() {
            return Ok(());
        }
        // Not written on its own: the state rides with the lease's next
        // write (its first settled minute, or its end), and listings show
        // the live state meanwhile. A broker killed before then loses
        // nothing it needs: recovery ends every unended lease alike,
        // billed for the minutes settled.
        l.started_ms = Some(now_ms);
        Ok(())
    }

    /// Output of a lease, forwarded to the buyer following its order.
    pub fn lease_output(&mut self, seller: &str, lease: &str, stream: StdStream, data: Vec<u8>) {
        let Some(buy) = self
            .leases
            .get(lease)
            .filter(|l| l.seller == seller)
            .map(|l| l.buy)
        else {
            return;
        };
        self.tell_buyer(
            buy,
            Response::Output {
                lease: lease.to_string(),
                stream,
                data,
            },
        );
    }

    /// Part of a lease's output bundle (its writable shares), forwarded to
    /// the buyer following its order.
    pub fn lease_outputs(&mut self, seller: &str, lease: &str, data: Vec<u8>) {
        let Some(buy) = self
            .leases
            .get(lease)
            .filter(|l| l.seller == seller)
            .map(|l| l.buy)
        else {
            return;
        };
        self.tell_buyer(
            buy,
            Response::Outputs {
                lease: lease.to_string(),
                data,
            },
        );
    }

    /// Forwards input the buyer typed to the consoles of `buyer`'s running
    /// leases of order `key`.
    pub fn lease_input(&self, buyer: &str, key: &str, data: &[u8]) {
        let Some((&order, _)) = self
            .buys
            .iter()
            .find(|(_, b)| b.key == key && b.buyer == buyer)
        else {
            return;
        };
        for l in self.leases.values().filter(|l| l.buy == order) {
            if let Some(s) = self.sells.get(&l.sell) {
                let _ = s.session.send(BrokerMsg::Input {
                    lease: l.key.clone(),
                    data: data.to_vec(),
                });
            }
        }
    }

    /// Tells the seller to stop a lease now.
    pub(super) fn stop_lease(&mut self, lease: &str) {
        let Some(l) = self.leases.get_mut(lease) else {
            return;
        };
        l.stop_sent = true;
        if let Some(s) = self.sells.get(&l.sell) {
            let _ = s.session.send(BrokerMsg::Stop {
                lease: lease.to_string(),
            });
        }
    }

    /// A seller reports a lease over; `seller` must be the lease's.
    pub async fn seller_ended(
        &mut self,
        seller: &str,
        lease: &str,
        end: LeaseEnd,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        if self.leases.get(lease).is_some_and(|l| l.seller == seller) {
            self.end_lease(lease, end, now_ms).await?;
        }
        Ok(())
    }

    /// Ends a lease: settles its started minutes to the seller, refunds the
    /// rest to the buyer, frees the seller's capacity (which may match
    /// resting buys), records the seller's reliability, tells the buyer.
    pub(super) async fn end_lease(
        &mut self,
        lease: &str,
        end: LeaseEnd,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let Some(mut l) = self.leases.remove(lease) else {
            return Ok(());
        };
        let before = self.settled_amount(&l);
        // Minutes billed in all: those settled so far plus the one running.
        let billed_minutes = match l.started_ms {
            Some(started) => billing::minutes_due(started, now_ms, l.billing.minutes()),
            None => l.billing.settled_minutes(),
        };
        let (settle, refund) = match l.started_ms {
            Some(started) => l.billing.close(now_ms, started),
            // Never started: nothing was served, everything returns.
            None => (Micros::ZERO, l.billing.escrow().saturating_sub(before)),
        };
        let cost = before.checked_add(settle).unwrap_or(Micros(u64::MAX));
        let mut transfers = postings::settle(&l.key, &l.seller, settle, self.cfg.fee_bps);
        transfers.extend(postings::refund(&l.key, &l.buyer, refund));
        let exit_code = match &end {
            LeaseEnd::Exited { code } => Some(*code),
            LeaseEnd::PowerOff { status } => Some(*status as i32),
            _ => None,
        };
        let failed = matches!(end, LeaseEnd::SellerLost | LeaseEnd::Failed { .. });
        let mut tx = self.store.begin().await?;
        tx.apply_transfers(&transfers, now_ms).await?;
        tx.finish_lease(
            l.id,
            billed_minutes,
            &end.to_string(),
            exit_code,
            now_ms,
            cost,
        )
        .await?;
        tx.record_lease_outcome(&l.seller, failed, now_ms).await?;
        tx.commit().await?;

        if let Some(b) = self.buys.get_mut(&l.buy) {
            b.running = b.running.saturating_sub(1);
            b.cost = b.cost.checked_add(cost).unwrap_or(b.cost);
            b.refunded = b.refunded.checked_add(refund).unwrap_or(b.refunded);
        }
        self.tell_buyer(
            l.buy,
            Response::LeaseEnded {
                lease: l.key.clone(),
                end: end.clone(),
                cost,
            },
        );
        tracing::info!(lease = %l.key, %end, %cost, "lease ended");
        let buy = l.buy;
        self.maybe_close_buy(buy);
        if let Some(fills) = self.book.release(l.sell, l.cpus, l.mem_mib, now_ms) {
            self.open_leases(fills, now_ms).await?;
        }
        Ok(())
    }

    pub(super) fn settled_amount(&self, l: &LeaseLive) -> Micros {
        crate::ledger::billing::cost(
            u64::from(l.billing.cpus()),
            l.billing.settled_minutes(),
            l.billing.price(),
        )
        .unwrap_or(Micros::ZERO)
    }

    /// Settles the minutes due on every running lease and stops leases
    /// that overran their minutes (then ends them if the seller does not).
    pub(super) async fn settle_leases(&mut self, now_ms: u64) -> Result<(), MarketError> {
        let grace = self.cfg.overrun_grace_secs * 1000;
        let keys: Vec<String> = self.leases.keys().cloned().collect();
        for key in keys {
            let Some(l) = self.leases.get_mut(&key) else {
                continue;
            };
            let Some(started) = l.started_ms else {
                // A lease whose sandbox never came up within its whole
                // length plus grace is not going to.
                let limit = l.matched_ms + u64::from(l.billing.minutes()) * MS_PER_MINUTE + grace;
                if now_ms > limit {
                    self.end_lease(
                        &key,
                        LeaseEnd::Failed {
                            message: "the seller never started the lease".into(),
                        },
                        now_ms,
                    )
                    .await?;
                }
                continue;
            };
            let end_at = started + u64::from(l.billing.minutes()) * MS_PER_MINUTE;
            let mut b = l.billing;
            let (minutes, amount) = b.settle_until(now_ms.min(end_at), started);
            if minutes > 0 {
                let (id, seller, lease_key) = (l.id, l.seller.clone(), l.key.clone());
                let cost_after = crate::ledger::billing::cost(
                    u64::from(b.cpus()),
                    b.settled_minutes(),
                    b.price(),
                )
                .unwrap_or(Micros::ZERO);
                let mut tx = self.store.begin().await?;
                tx.apply_transfers(
                    &postings::settle(&lease_key, &seller, amount, self.cfg.fee_bps),
                    now_ms,
                )
                .await?;
                tx.update_lease_settled(id, b.settled_minutes(), cost_after)
                    .await?;
                tx.commit().await?;
                if let Some(l) = self.leases.get_mut(&key) {
                    l.billing = b;
                }
            }
            let Some(l) = self.leases.get(&key) else {
                continue;
            };
            if now_ms > end_at + 2 * grace {
                self.end_lease(&key, LeaseEnd::WallTimeExceeded, now_ms)
                    .await?;
            } else if now_ms > end_at + grace && !l.stop_sent {
                self.stop_lease(&key);
            }
        }
        Ok(())
    }

    /// Buy orders with leases still running, for diagnostics.
    pub fn running_leases(&self) -> usize {
        self.leases.len()
    }

    /// The buy order of a lease, if the lease is live.
    pub fn lease_order(&self, lease: &str) -> Option<OrderId> {
        self.leases.get(lease).map(|l| l.buy)
    }
}
