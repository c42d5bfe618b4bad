//! The billing rule: a minute started is a minute billed, settled minute by
//! minute from a lease's escrow; unused minutes are refunded at the end.

use super::LedgerError;
use cpushare_proto::money::Micros;

/// Milliseconds in one billed minute.
pub const MS_PER_MINUTE: u64 = 60_000;

/// Price of `cpus` vCPUs for `minutes` at `price` per vCPU-minute (for an
/// order, pass instances x cpus), or the overflow named.
pub fn cost(cpus: u64, minutes: u32, price: Micros) -> Result<Micros, LedgerError> {
    u128::from(cpus)
        .checked_mul(u128::from(minutes))
        .and_then(|x| x.checked_mul(u128::from(price.0)))
        .and_then(|x| u64::try_from(x).ok())
        .map(Micros)
        .ok_or(LedgerError::CostOverflow {
            cpus,
            minutes,
            price,
        })
}

/// Minutes owed at `now_ms` by a lease started at `started_ms`: every
/// started minute counts (at least 1 once started), capped at the lease.
pub fn minutes_due(started_ms: u64, now_ms: u64, lease_minutes: u32) -> u32 {
    let Some(elapsed) = now_ms.checked_sub(started_ms) else {
        return 0;
    };
    let started = elapsed.div_ceil(MS_PER_MINUTE).max(1);
    u32::try_from(started)
        .unwrap_or(u32::MAX)
        .min(lease_minutes)
}

/// Billing state of one lease: what its escrow covers and what is settled.
/// Refund plus all settlements always equal the escrow exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseBilling {
    cpus: u32,
    minutes: u32,
    price: Micros,
    settled_minutes: u32,
}

impl LeaseBilling {
    /// A new lease of `cpus` x `minutes` at `price`; fails if its escrow
    /// would overflow.
    pub fn new(cpus: u32, minutes: u32, price: Micros) -> Result<LeaseBilling, LedgerError> {
        LeaseBilling::resume(cpus, minutes, price, 0)
    }

    /// A lease loaded from the store with `settled_minutes` already paid.
    pub fn resume(
        cpus: u32,
        minutes: u32,
        price: Micros,
        settled_minutes: u32,
    ) -> Result<LeaseBilling, LedgerError> {
        cost(u64::from(cpus), minutes, price)?;
        if settled_minutes > minutes {
            return Err(LedgerError::SettledBeyondLease {
                settled: settled_minutes,
                minutes,
            });
        }
        Ok(LeaseBilling {
            cpus,
            minutes,
            price,
            settled_minutes,
        })
    }

    /// vCPUs of the lease.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// Length of the lease, minutes.
    pub fn minutes(&self) -> u32 {
        self.minutes
    }

    /// Trade price per vCPU-minute.
    pub fn price(&self) -> Micros {
        self.price
    }

    /// Minutes paid out (or, after `close`, accounted for) so far.
    pub fn settled_minutes(&self) -> u32 {
        self.settled_minutes
    }

    /// The escrow the lease is opened with: cpus x minutes x price.
    pub fn escrow(&self) -> Micros {
        self.amount(self.minutes)
    }

    /// Renews the lease for `minutes` more at its price (sticky renewal:
    /// same seller, whose ask is the lease's price); returns the escrow
    /// the extension needs. Fails, changing nothing, if the lease's whole
    /// escrow would overflow.
    pub fn extend(&mut self, minutes: u32) -> Result<Micros, LedgerError> {
        let total = self
            .minutes
            .checked_add(minutes)
            .ok_or(LedgerError::CostOverflow {
                cpus: u64::from(self.cpus),
                minutes: u32::MAX,
                price: self.price,
            })?;
        cost(u64::from(self.cpus), total, self.price)?;
        let added = cost(u64::from(self.cpus), minutes, self.price)?;
        self.minutes = total;
        Ok(added)
    }

    /// Minutes newly due at `now_ms` and their amount; marks them settled.
    /// Call every minute; `(0, 0)` when nothing new is due.
    pub fn settle_until(&mut self, now_ms: u64, started_ms: u64) -> (u32, Micros) {
        let due = minutes_due(started_ms, now_ms, self.minutes);
        let new = due.saturating_sub(self.settled_minutes);
        self.settled_minutes += new;
        (new, self.amount(new))
    }

    /// Ends the lease at `now_ms`: the amount still to settle (started
    /// minutes) and the refund of the minutes never started. Afterwards the
    /// whole escrow is accounted for and further calls return zeros.
    pub fn close(&mut self, now_ms: u64, started_ms: u64) -> (Micros, Micros) {
        let (_, to_settle) = self.settle_until(now_ms, started_ms);
        let unused = self.minutes - self.settled_minutes;
        self.settled_minutes = self.minutes;
        (to_settle, self.amount(unused))
    }

    fn amount(&self, minutes: u32) -> Micros {
        cost(u64::from(self.cpus), minutes.min(self.minutes), self.price)
            .expect("at most the escrow, checked in resume")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_started_minute_is_a_billed_minute() {
        assert_eq!(minutes_due(1_000, 999, 10), 0, "not started");
        assert_eq!(minutes_due(1_000, 1_000, 10), 1);
        assert_eq!(minutes_due(0, 60_000, 10), 1);
        assert_eq!(minutes_due(0, 60_001, 10), 2);
        assert_eq!(minutes_due(0, u64::MAX, 10), 10, "capped at the lease");
    }

    #[test]
    fn overflowing_leases_are_refused_by_name() {
        assert!(matches!(
            LeaseBilling::new(u32::MAX, u32::MAX, Micros(u64::MAX)),
            Err(LedgerError::CostOverflow { .. })
        ));
        assert_eq!(
            LeaseBilling::resume(1, 5, Micros(1), 6),
            Err(LedgerError::SettledBeyondLease {
                settled: 6,
                minutes: 5
            })
        );
    }

    #[test]
    fn closing_early_refunds_unstarted_minutes() {
        let mut b = LeaseBilling::new(2, 30, Micros(10)).unwrap();
        assert_eq!(b.escrow(), Micros(600));
        assert_eq!(b.settle_until(0, 0), (1, Micros(20)));
        assert_eq!(b.settle_until(30_000, 0), (0, Micros(0)));
        assert_eq!(b.close(130_000, 0), (Micros(40), Micros(540)));
        assert_eq!(b.close(900_000, 0), (Micros(0), Micros(0)));
        assert_eq!(b.settle_until(900_000, 0), (0, Micros(0)));
    }

    #[test]
    fn an_extension_adds_its_minutes_to_the_escrow_and_to_what_can_be_settled() {
        let mut b = LeaseBilling::new(2, 1, Micros(10)).unwrap();
        assert_eq!(b.settle_until(59_000, 0), (1, Micros(20)));
        assert_eq!(b.settle_until(70_000, 0), (0, Micros(0)), "capped at 1");
        assert_eq!(b.extend(1), Ok(Micros(20)));
        assert_eq!((b.minutes(), b.escrow()), (2, Micros(40)));
        assert_eq!(b.settle_until(70_000, 0), (1, Micros(20)));
        assert_eq!(b.close(200_000, 0), (Micros(0), Micros(0)));
        let mut full = LeaseBilling::new(1, u32::MAX, Micros(1)).unwrap();
        assert!(matches!(
            full.extend(1),
            Err(LedgerError::CostOverflow { .. })
        ));
        assert_eq!(
            full.minutes(),
            u32::MAX,
            "a failed extension changes nothing"
        );
    }

    proptest! {
        #[test]
        fn settlements_plus_refund_equal_the_escrow_with_extensions(
            cpus in 0..64u32,
            minutes in 1..60u32,
            price in 0..1_000_000_000u64,
            steps in proptest::collection::vec((0..100_000u64, 0..4u32), 0..40),
            end in 0..5_000_000u64,
        ) {
            let mut b = LeaseBilling::new(cpus, minutes, Micros(price)).unwrap();
            let mut escrowed = u128::from(b.escrow().0);
            let mut paid = 0u128;
            let mut now = 0;
            for (dt, more) in steps {
                now += dt;
                if more > 0 {
                    let added = b.extend(more).unwrap();
                    escrowed += u128::from(added.0);
                    prop_assert_eq!(escrowed, u128::from(b.escrow().0));
                }
                let (_, amount) = b.settle_until(now, 0);
                paid += u128::from(amount.0);
                prop_assert!(paid <= escrowed);
            }
            let (last, back) = b.close(now + end, 0);
            paid += u128::from(last.0);
            prop_assert_eq!(paid + u128::from(back.0), escrowed);
        }

        #[test]
        fn settlements_plus_refund_equal_the_escrow(
            cpus in 0..64u32,
            minutes in 0..600u32,
            price in 0..1_000_000_000u64,
            started in 0..1_000_000u64,
            steps in proptest::collection::vec(0..200_000u64, 0..40),
            end in 0..50_000_000u64,
        ) {
            let mut b = LeaseBilling::new(cpus, minutes, Micros(price)).unwrap();
            let mut paid = 0u128;
            let mut now = started.saturating_sub(100_000);
            for dt in steps {
                now += dt;
                let before = b.settled_minutes();
                let (m, amount) = b.settle_until(now, started);
                prop_assert_eq!(b.settled_minutes(), before + m);
                prop_assert!(b.settled_minutes() <= minutes);
                prop_assert_eq!(b.settled_minutes(), minutes_due(started, now, minutes));
                prop_assert_eq!(u128::from(amount.0), u128::from(m) * u128::from(cpus) * u128::from(price));
                paid += u128::from(amount.0);
            }
            let (last, back) = b.close(now + end, started);
            paid += u128::from(last.0);
            prop_assert_eq!(paid + u128::from(back.0), u128::from(b.escrow().0));
        }
    }
}
