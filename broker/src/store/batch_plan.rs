//! Plans a batch of ledger transfers before anything is written.
//!
//! Given the balances the batch starts from, it checks every transfer in
//! order exactly as applying them one by one would (the debited account
//! must stay at or above its floor, the credited one at or below
//! `i64::MAX`) and sums what each account changes by. A refused batch is
//! found here, so the store writes nothing for it; an accepted one is
//! written in a fixed handful of statements whatever its length.

use super::columns::money_to_db;
use super::error::StoreError;
use super::ledger::WORLD_ACCOUNT;
use crate::ledger::Transfer;
use std::collections::BTreeMap;

/// Lowest balance any account may reach: the world account may go this
/// far negative, so every balance and every sum the checks compute stays
/// within a BIGINT (PostgreSQL fails on overflow; SQLite silently turns
/// the result into a float).
const WORLD_FLOOR: i64 = -i64::MAX;

/// What an accepted batch does to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AccountChange {
    /// The account name.
    pub account: String,
    /// Whether it had a row when the batch started (otherwise the batch
    /// opens it, even if its change is zero, as a transfer always has).
    pub existed: bool,
    /// Its balance when the batch started (0 if it had no row).
    pub start: i64,
    /// Its balance after the batch.
    pub end: i64,
}

/// An accepted batch: each transfer's amount as a BIGINT, in order, and
/// the change of every account it names, by account name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BatchPlan {
    pub amounts: Vec<i64>,
    pub changes: Vec<AccountChange>,
}

/// The accounts `transfers` name, sorted and without repeats (the order
/// in which the store locks their rows).
pub(super) fn accounts_of(transfers: &[Transfer]) -> Vec<&str> {
    let mut names: Vec<&str> = transfers
        .iter()
        .flat_map(|t| [t.from.as_str(), t.to.as_str()])
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Checks `transfers` in order against `start` (balances of the accounts
/// that have a row; a missing one is 0). The first refused transfer gives
/// the error applying them one by one would give: `AmountTooLarge`,
/// `InsufficientFunds` or `BalanceOverflow`, with the account's balance at
/// that point of the batch.
pub(super) fn plan(
    transfers: &[Transfer],
    start: &BTreeMap<String, i64>,
) -> Result<BatchPlan, StoreError> {
    let mut now: BTreeMap<&str, i64> = BTreeMap::new();
    let mut amounts = Vec::with_capacity(transfers.len());
    for t in transfers {
        let amount = money_to_db("transfer amount", t.amount)?;
        amounts.push(amount);
        let world = t.from == WORLD_ACCOUNT;
        let floor = if world { WORLD_FLOOR } else { 0 };
        let from = *now
            .entry(t.from.as_str())
            .or_insert_with(|| start.get(&t.from).copied().unwrap_or(0));
        // floor + amount is in [-MAX, MAX] for floor in {-MAX, 0}, amount in [0, MAX].
        if from < floor + amount {
            return Err(if world {
                StoreError::BalanceOverflow {
                    account: t.from.clone(),
                    balance: from,
                    amount: t.amount,
                }
            } else {
                StoreError::InsufficientFunds {
                    account: t.from.clone(),
                    balance: from,
                    needed: t.amount,
                }
            });
        }
        now.insert(t.from.as_str(), from - amount);
        let to = *now
            .entry(t.to.as_str())
            .or_insert_with(|| start.get(&t.to).copied().unwrap_or(0));
        if to > i64::MAX - amount {
            return Err(StoreError::BalanceOverflow {
                account: t.to.clone(),
                balance: to,
                amount: t.amount,
            });
        }
        now.insert(t.to.as_str(), to + amount);
    }
    let changes = now
        .into_iter()
        .map(|(account, end)| AccountChange {
            account: account.to_string(),
            existed: start.contains_key(account),
            start: start.get(account).copied().unwrap_or(0),
            end,
        })
        .collect();
    Ok(BatchPlan { amounts, changes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpushare_proto::money::Micros;
    use proptest::prelude::*;

    fn transfer(from: &str, to: &str, amount: u64) -> Transfer {
        Transfer {
            from: from.into(),
            to: to.into(),
            amount: Micros(amount),
            memo: String::new(),
        }
    }

    /// Applies transfers one at a time, the way the ledger is specified.
    fn one_by_one(
        transfers: &[Transfer],
        start: &BTreeMap<String, i64>,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut b = start.clone();
        for t in transfers {
            let amount = money_to_db("transfer amount", t.amount)?;
            let floor = if t.from == WORLD_ACCOUNT {
                WORLD_FLOOR
            } else {
                0
            };
            let from = *b.entry(t.from.clone()).or_insert(0);
            if i128::from(from) - i128::from(amount) < i128::from(floor) {
                return Err(if t.from == WORLD_ACCOUNT {
                    StoreError::BalanceOverflow {
                        account: t.from.clone(),
                        balance: from,
                        amount: t.amount,
                    }
                } else {
                    StoreError::InsufficientFunds {
                        account: t.from.clone(),
                        balance: from,
                        needed: t.amount,
                    }
                });
            }
            b.insert(t.from.clone(), from - amount);
            let to = *b.entry(t.to.clone()).or_insert(0);
            if i128::from(to) + i128::from(amount) > i128::from(i64::MAX) {
                return Err(StoreError::BalanceOverflow {
                    account: t.to.clone(),
                    balance: to,
                    amount: t.amount,
                });
            }
            b.insert(t.to.clone(), to + amount);
        }
        Ok(b)
    }

    #[test]
    fn a_chain_through_fresh_accounts_nets_per_account() {
        let start = BTreeMap::from([("user:ada".to_string(), 100)]);
        let p = plan(
            &[
                transfer("user:ada", "hold:1", 80),
                transfer("hold:1", "escrow:2", 50),
                transfer("hold:1", "user:ada", 30),
            ],
            &start,
        )
        .expect("accepted");
        assert_eq!(p.amounts, [80, 50, 30]);
        let ends: Vec<_> = p
            .changes
            .iter()
            .map(|c| (c.account.as_str(), c.existed, c.end))
            .collect();
        assert_eq!(
            ends,
            [
                ("escrow:2", false, 50),
                ("hold:1", false, 0),
                ("user:ada", true, 50)
            ]
        );
    }

    #[test]
    fn the_first_refusal_reports_the_balance_at_that_point() {
        let start = BTreeMap::from([("user:ada".to_string(), 100)]);
        let err = plan(
            &[
                transfer("user:ada", "user:bo", 70),
                transfer("user:ada", "user:cy", 40),
                transfer("user:nobody", "user:cy", u64::MAX),
            ],
            &start,
        )
        .expect_err("ada has 30 left");
        assert!(matches!(
            err,
            StoreError::InsufficientFunds { ref account, balance: 30, needed: Micros(40) }
                if account == "user:ada"
        ));
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(WORLD_ACCOUNT.to_string()),
            Just("user:a".to_string()),
            Just("user:b".to_string()),
            Just("hold:1".to_string()),
        ]
    }

    fn amount() -> impl Strategy<Value = u64> {
        prop_oneof![0..1_000u64, Just(i64::MAX as u64 - 5), Just(u64::MAX)]
    }

    proptest! {
        /// Planning a batch gives what applying it one transfer at a time
        /// gives: the same final balances, or the same refusal.
        #[test]
        fn plan_matches_one_by_one(
            start in proptest::collection::btree_map(name(), -1_000i64..1_000, 0..4),
            batch in proptest::collection::vec((name(), name(), amount()), 0..8),
        ) {
            let start: BTreeMap<String, i64> = start
                .into_iter()
                .map(|(k, v)| if k == WORLD_ACCOUNT { (k, v) } else { (k, v.abs()) })
                .collect();
            let transfers: Vec<Transfer> =
                batch.iter().map(|(f, t, a)| transfer(f, t, *a)).collect();
            match (plan(&transfers, &start), one_by_one(&transfers, &start)) {
                (Ok(p), Ok(expected)) => {
                    let mut after = start.clone();
                    for c in &p.changes {
                        prop_assert_eq!(c.existed, start.contains_key(&c.account));
                        prop_assert_eq!(c.start, start.get(&c.account).copied().unwrap_or(0));
                        after.insert(c.account.clone(), c.end);
                    }
                    prop_assert_eq!(after, expected);
                    let names: Vec<&str> = p.changes.iter().map(|c| c.account.as_str()).collect();
                    prop_assert_eq!(names, accounts_of(&transfers));
                }
                (Err(a), Err(b)) => prop_assert_eq!(format!("{a:?}"), format!("{b:?}")),
                (a, b) => prop_assert!(false, "plan {a:?} but one by one {b:?}"),
            }
        }
    }
}
