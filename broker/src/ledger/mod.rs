//! The ledger core: double-entry accounts in integer micro-credits.
//!
//! Sans-IO: it validates and applies transfers in memory and computes the
//! postings that market events need; the store persists the same transfers
//! in one database transaction.

use cpushare_proto::money::Micros;
use serde::{Deserialize, Serialize};

/// An account name. Conventions:
/// - `user:NAME`: what a buyer or seller can spend or withdraw;
/// - `hold:ORDER`: funds reserved by an open buy order;
/// - `escrow:LEASE`: funds of a running lease, settled minute by minute;
/// - `broker:fees`: the broker's fee income;
/// - `world:deposits`: the outside world; the only account that may go
///   negative, so the sum over all accounts is always exactly zero.
pub type Account = String;

/// One double-entry posting: `amount` leaves `from` and enters `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Debited account.
    pub from: Account,
    /// Credited account.
    pub to: Account,
    /// Amount moved; never zero.
    pub amount: Micros,
    /// Why, for the journal (`deposit`, `reserve K-1a2b3c4d`, `minute 3 of K-...`).
    pub memo: String,
}

pub mod accounts;
pub mod billing;
pub mod postings;
#[cfg(test)]
mod props;

pub use accounts::{escrow, hold, user, FEES, WORLD};
pub use billing::{cost, minutes_due, LeaseBilling, MS_PER_MINUTE};
pub use postings::{deposit, open_lease, refund, release_hold, reserve_order, settle, top_up};

use std::collections::HashMap;

/// Why a batch of transfers was refused; the ledger is then unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// a transfer moves zero
    #[error("transfer of zero from `{from}` to `{to}`; postings must move money")]
    ZeroAmount {
        /// Debited account.
        from: Account,
        /// Credited account.
        to: Account,
    },
    /// a transfer debits and credits the same account
    #[error("transfer from `{account}` to itself")]
    SameAccount {
        /// The account on both sides.
        account: Account,
    },
    /// the debited account holds less than the transfer needs
    #[error("`{account}` holds {balance} but {needed} is needed; deposit more or lower the order")]
    InsufficientFunds {
        /// Debited account.
        account: Account,
        /// Its balance at that point of the batch.
        balance: Micros,
        /// The amount of the transfer.
        needed: Micros,
    },
    /// a balance would leave its range (above u64::MAX micro-credits)
    #[error("balance of `{account}` would overflow")]
    Overflow {
        /// The account whose balance would overflow.
        account: Account,
    },
    /// the price of a lease does not fit in a u64 of micro-credits
    #[error("{cpus} vCPUs x {minutes} min x {price} per vCPU-minute overflows; lower the order")]
    CostOverflow {
        /// vCPUs (times instances, for an order).
        cpus: u64,
        /// Minutes.
        minutes: u32,
        /// Price per vCPU-minute.
        price: Micros,
    },
    /// a lease is said to have settled more minutes than it has
    #[error("lease settled {settled} of {minutes} minutes")]
    SettledBeyondLease {
        /// Minutes said settled.
        settled: u32,
        /// Minutes of the lease.
        minutes: u32,
    },
}

/// Balances of every account, in memory; applies batches of transfers
/// atomically (all or nothing).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    balances: HashMap<Account, i128>,
}

impl Ledger {
    /// An empty ledger: every balance zero.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Applies `batch` in order, all or nothing. Each transfer sees the
    /// balances left by the ones before it, so a batch may route money
    /// through an account (user -> hold -> escrow).
    pub fn apply(&mut self, batch: &[Transfer]) -> Result<(), LedgerError> {
        let mut staged: Vec<(&str, i128)> = Vec::with_capacity(batch.len() * 2);
        for t in batch {
            if t.amount == Micros::ZERO {
                return Err(LedgerError::ZeroAmount {
                    from: t.from.clone(),
                    to: t.to.clone(),
                });
            }
            if t.from == t.to {
                return Err(LedgerError::SameAccount {
                    account: t.from.clone(),
                });
            }
            let amount = i128::from(t.amount.0);
            let overflow = |account: &Account| LedgerError::Overflow {
                account: account.clone(),
            };

            let from = self.staged_slot(&mut staged, &t.from);
            let balance = staged[from].1;
            if t.from != WORLD && balance < amount {
                return Err(LedgerError::InsufficientFunds {
                    account: t.from.clone(),
                    balance: Micros(u64::try_from(balance).unwrap_or(0)),
                    needed: t.amount,
                });
            }
            staged[from].1 = balance
                .checked_sub(amount)
                .ok_or_else(|| overflow(&t.from))?;

            let to = self.staged_slot(&mut staged, &t.to);
            let credited = staged[to]
                .1
                .checked_add(amount)
                .filter(|&b| t.to == WORLD || b <= i128::from(u64::MAX))
                .ok_or_else(|| overflow(&t.to))?;
            staged[to].1 = credited;
        }
        for (account, balance) in staged {
            match self.balances.get_mut(account) {
                Some(b) => *b = balance,
                None => {
                    self.balances.insert(account.to_owned(), balance);
                }
            }
        }
        Ok(())
    }

    /// Balance of `account`; zero for an account never used. Negative only
    /// for [`WORLD`].
    pub fn balance(&self, account: &str) -> i128 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    /// Sum over all accounts: always exactly zero (double entry).
    pub fn total(&self) -> i128 {
        self.balances.values().sum()
    }

    /// Every account that was ever used, with its balance, in no order.
    pub fn balances(&self) -> impl Iterator<Item = (&str, i128)> + '_ {
        self.balances.iter().map(|(a, &b)| (a.as_str(), b))
    }

    /// Index in `staged` of `account`, staging its current balance first.
    fn staged_slot<'a>(&self, staged: &mut Vec<(&'a str, i128)>, account: &'a str) -> usize {
        match staged.iter().position(|(a, _)| *a == account) {
            Some(i) => i,
            None => {
                staged.push((account, self.balance(account)));
                staged.len() - 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn funded(name: &str, amount: u64) -> Ledger {
        let mut l = Ledger::new();
        l.apply(&[deposit(name, Micros(amount))]).unwrap();
        l
    }

    #[test]
    fn deposit_moves_money_from_the_world() {
        let l = funded("ann", 500);
        assert_eq!(l.balance(&user("ann")), 500);
        assert_eq!(l.balance(WORLD), -500);
        assert_eq!(l.total(), 0);
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut l = funded("ann", 500);
        let mut batch = reserve_order("ann", "O1", Micros(400));
        batch.extend(reserve_order("ann", "O2", Micros(200)));
        let err = l.apply(&batch).unwrap_err();
        assert_eq!(
            err,
            LedgerError::InsufficientFunds {
                account: user("ann"),
                balance: Micros(100),
                needed: Micros(200),
            }
        );
        assert_eq!(l.balance(&user("ann")), 500);
        assert_eq!(l.balance(&hold("O1")), 0);
    }

    #[test]
    fn a_batch_may_route_money_through_an_account() {
        let mut l = funded("ann", 500);
        let mut batch = reserve_order("ann", "O1", Micros(300));
        batch.extend(open_lease("O1", "L1", Micros(300)));
        l.apply(&batch).unwrap();
        assert_eq!(l.balance(&escrow("L1")), 300);
        assert_eq!(l.balance(&hold("O1")), 0);
    }

    #[test]
    fn malformed_transfers_are_refused_by_name() {
        let mut l = funded("ann", 5);
        assert!(matches!(
            l.apply(&[deposit("ann", Micros::ZERO)]),
            Err(LedgerError::ZeroAmount { .. })
        ));
        let t = Transfer {
            from: user("ann"),
            to: user("ann"),
            amount: Micros(1),
            memo: String::new(),
        };
        assert_eq!(
            l.apply(&[t]),
            Err(LedgerError::SameAccount {
                account: user("ann")
            })
        );
        let big = deposit("ann", Micros(u64::MAX));
        assert_eq!(
            l.apply(&[big]),
            Err(LedgerError::Overflow {
                account: user("ann")
            })
        );
        assert_eq!(l.balance(&user("ann")), 5);
        assert_eq!(l.total(), 0);
    }

    #[test]
    fn full_lease_flow_pays_seller_fee_and_refund() {
        let mut l = funded("ann", 10_000);
        // 2 instances x 2 cpus x 10 min at a cap of 100: 4,000 held.
        let held = cost(4, 10, Micros(100)).unwrap();
        l.apply(&reserve_order("ann", "O1", held)).unwrap();
        // One instance fills at 80: escrow 2 x 10 x 80 = 1,600.
        let mut bill = LeaseBilling::new(2, 10, Micros(80)).unwrap();
        l.apply(&open_lease("O1", "L1", bill.escrow())).unwrap();
        // The other instance is cancelled: the rest of the hold goes back.
        l.apply(&release_hold("O1", "ann", Micros(4_000 - 1_600)))
            .unwrap();
        let (mins, amount) = bill.settle_until(90_000, 0);
        assert_eq!((mins, amount), (2, Micros(320)));
        l.apply(&settle("L1", "sam", amount, 500)).unwrap();
        let (last, back) = bill.close(150_000, 0);
        assert_eq!((last, back), (Micros(160), Micros(1_120)));
        l.apply(&settle("L1", "sam", last, 500)).unwrap();
        l.apply(&refund("L1", "ann", back)).unwrap();
        assert_eq!(l.balance(&escrow("L1")), 0);
        assert_eq!(l.balance(&hold("O1")), 0);
        assert_eq!(l.balance(FEES), 16 + 8);
        assert_eq!(l.balance(&user("sam")), 480 - 24);
        assert_eq!(l.balance(&user("ann")), 10_000 - 480);
        assert_eq!(l.total(), 0);
    }
}
