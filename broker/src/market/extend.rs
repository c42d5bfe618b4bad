//! Sticky renewal, applied: on each tick every running lease near its end
//! is put to [`renewal::decide`]; an extension moves the buyer's money into
//! the lease's escrow and raises its paid minutes in one transaction, then
//! the seller raises the sandbox's budgets and the buyer hears of it.

use super::renewal::{self, NoRenewal, Renewal, SellerState};
use super::{LeaseLive, Market, MarketError};
use crate::ledger::{accounts, postings};
use crate::store::StoreError;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{BrokerMsg, Response};

impl Market {
    /// Renews every running lease that [`renewal::decide`] says to extend now.
    pub(super) async fn renew_leases(&mut self, now_ms: u64) -> Result<(), MarketError> {
        let keys: Vec<String> = self
            .leases
            .values()
            .filter(|l| l.started_ms.is_some())
            .filter(|l| l.renewal_refused_at != Some(l.billing.minutes()))
            .map(|l| l.key.clone())
            .collect();
        for key in keys {
            // The balance is read only for a lease that is due for renewal.
            let decision = match self.decide_renewal(&key, Micros(u64::MAX), now_ms) {
                Some(Renewal::Extend { .. }) => {
                    let buyer = self.leases.get(&key).map(|l| l.buyer.clone());
                    let Some(buyer) = buyer else { continue };
                    let available = self.store.balance(&accounts::user(&buyer)).await?;
                    let available = Micros(u64::try_from(available).unwrap_or(0));
                    self.decide_renewal(&key, available, now_ms)
                }
                other => other,
            };
            match decision {
                None | Some(Renewal::NotYet) => {}
                Some(Renewal::End(why)) => self.refuse_renewal(&key, why),
                Some(Renewal::Extend { minutes, price, .. }) => {
                    self.extend_lease(&key, minutes, price, now_ms).await?;
                }
            }
        }
        Ok(())
    }

    /// What renewal says of lease `key` now, the buyer having `available`.
    fn decide_renewal(&self, key: &str, available: Micros, now_ms: u64) -> Option<Renewal> {
        let l = self.leases.get(key)?;
        let allow = self.buys.get(&l.buy)?.allowance;
        let seller = match self.sells.get(&l.sell) {
            Some(s) => SellerState {
                connected: true,
                ask: s.ask,
                max_minutes: s.max_minutes,
            },
            None => SellerState {
                connected: false,
                ask: l.billing.price(),
                max_minutes: 0,
            },
        };
        let state = renewal::LeaseState {
            cpus: l.cpus,
            first_minutes: l.first_minutes,
            paid_minutes: l.billing.minutes(),
            started_ms: l.started_ms,
            stopping: l.stop_sent,
        };
        Some(renewal::decide(&state, &seller, &allow, available, now_ms))
    }

    /// Records that lease `key` ends with its paid minutes (asked no more
    /// this period), and tells a buyer who asked for renewals why.
    fn refuse_renewal(&mut self, key: &str, why: NoRenewal) {
        let Some(l) = self.leases.get_mut(key) else {
            return;
        };
        let minutes = l.billing.minutes();
        l.renewal_refused_at = Some(minutes);
        let buy = l.buy;
        if why != NoRenewal::NotAllowed {
            tracing::info!(lease = %key, ?why, minutes, "lease not renewed");
        }
        if why.tells_buyer() {
            self.tell_buyer(
                buy,
                Response::LeaseNotRenewed {
                    lease: key.to_string(),
                    minutes,
                    reason: why.to_string(),
                },
            );
        }
    }

    /// Extends lease `key` by `minutes` at `price`: buyer -> escrow and the
    /// lease's minutes in one transaction, then the seller and the buyer
    /// are told. A buyer who cannot pay after all ends the lease's renewals.
    async fn extend_lease(
        &mut self,
        key: &str,
        minutes: u32,
        price: Micros,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let Some(l) = self.leases.get(key) else {
            return Ok(());
        };
        // Pay-as-ask: the seller's ask is fixed for its session, so a
        // renewal trades at the lease's price; anything else is refused.
        let mut billing = l.billing;
        let added = match billing.extend(minutes) {
            Ok(added) if price == billing.price() => added,
            _ => {
                self.refuse_renewal(key, NoRenewal::Overflow);
                return Ok(());
            }
        };
        let (id, buyer, buy, sell) = (l.id, l.buyer.clone(), l.buy, l.sell);
        let mut tx = self.store.begin().await?;
        match tx
            .apply_transfers(&postings::top_up(&buyer, key, added), now_ms)
            .await
        {
            Ok(()) => {}
            Err(StoreError::InsufficientFunds { balance, .. }) => {
                tx.rollback().await?;
                self.refuse_renewal(
                    key,
                    NoRenewal::CannotAfford {
                        needed: added,
                        available: Micros(u64::try_from(balance).unwrap_or(0)),
                    },
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        tx.extend_lease(id, billing.minutes(), billing.escrow())
            .await?;
        tx.commit().await?;

        let total = billing.minutes();
        let Some(l) = self.leases.get_mut(key) else {
            return Ok(());
        };
        l.billing = billing;
        let cost = self.cost_so_far(key);
        if let Some(s) = self.sells.get(&sell) {
            let _ = s.session.send(BrokerMsg::Extend {
                lease: key.to_string(),
                minutes: total,
            });
        }
        self.tell_buyer(
            buy,
            Response::LeaseRenewed {
                lease: key.to_string(),
                minutes: total,
                cost,
            },
        );
        tracing::info!(lease = %key, minutes = total, escrow = %added, "lease renewed");
        Ok(())
    }

    fn cost_so_far(&self, key: &str) -> Micros {
        self.leases
            .get(key)
            .map(|l: &LeaseLive| self.settled_amount(l))
            .unwrap_or(Micros::ZERO)
    }
}
