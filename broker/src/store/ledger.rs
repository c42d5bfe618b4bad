//! The ledger's persistent half: balances and the append-only journal.
//!
//! Transfers come from the sans-IO `crate::ledger` core; here they are
//! applied inside the caller's transaction, all or nothing.

use super::batch_plan::{accounts_of, plan, AccountChange};
use super::columns::{col_i64, col_micros, col_text, col_u64, to_db};
use super::error::{db, StoreError};
use super::{Backend, Store, Tx};
use crate::ledger::Transfer;
use cpushare_proto::money::Micros;
use sqlx::AnyConnection;
use std::collections::BTreeMap;

/// The outside world: the one account that may go negative, so that the
/// sum of all balances is always exactly zero.
pub const WORLD_ACCOUNT: &str = "world:deposits";

/// One journal line: `amount` moved from `from` to `to` at `ts_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// Position in the journal: 1, 2, 3... without gaps, since the counter
    /// is bumped inside the same transaction and rolls back with it.
    pub seq: u64,
    /// When the transfer was applied, unix milliseconds.
    pub ts_ms: u64,
    /// Debited account.
    pub from: String,
    /// Credited account.
    pub to: String,
    /// Amount moved.
    pub amount: Micros,
    /// Why.
    pub memo: String,
}

/// Most rows one multi-row statement carries, well under the bound
/// variables either backend accepts.
const ROWS_PER_STATEMENT: usize = 200;

/// `($1, $2), ($3, $4)...`: placeholders for `rows` rows of `columns` values.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn balance_in(conn: &mut AnyConnection, account: &str) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT amount FROM balances WHERE account = $1")
        .bind(account)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a balance"))?;
    row.map_or(Ok(0), |r| col_i64(&r, "amount"))
}

/// The balances of those of `accounts` (sorted) that have a row. On
/// PostgreSQL the rows stay locked until the transaction ends, so the
/// batch planned from them is still right when it is written; SQLite's
/// `BEGIN IMMEDIATE` already holds the whole database.
async fn lock_balances(
    conn: &mut AnyConnection,
    backend: Backend,
    accounts: &[&str],
) -> Result<BTreeMap<String, i64>, StoreError> {
    let lock = match backend {
        Backend::Postgres => " ORDER BY account FOR UPDATE",
        Backend::Sqlite => "",
    };
    let mut found = BTreeMap::new();
    for chunk in accounts.chunks(ROWS_PER_STATEMENT) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT account, amount FROM balances WHERE account IN ({}){lock}",
            list.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for account in chunk {
            query = query.bind(*account);
        }
        for row in query
            .fetch_all(&mut *conn)
            .await
            .map_err(db("reading the balances of a transfer batch"))?
        {
            found.insert(col_text(&row, "account")?, col_i64(&row, "amount")?);
        }
    }
    Ok(found)
}

/// Writes a planned batch's balances: every account it opens and every one
/// whose balance changed, by adding the change (so a row another
/// transaction opened meanwhile keeps what it got).
async fn write_balances(
    conn: &mut AnyConnection,
    changes: &[AccountChange],
) -> Result<(), StoreError> {
    let mut deltas: Vec<(&str, i64)> = Vec::new();
    for c in changes.iter().filter(|c| !c.existed || c.end != c.start) {
        match i64::try_from(i128::from(c.end) - i128::from(c.start)) {
            Ok(delta) => deltas.push((&c.account, delta)),
            // A swing wider than a BIGINT (only the world account can be
            // negative, so this needs it above i64::MAX / 2): the row exists
            // and is locked, so its new balance is written as is.
            Err(_) => {
                sqlx::query("UPDATE balances SET amount = $2 WHERE account = $1")
                    .bind(&c.account)
                    .bind(c.end)
                    .execute(&mut *conn)
                    .await
                    .map_err(db("writing a balance"))?;
            }
        }
    }
    for chunk in deltas.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO balances (account, amount) VALUES {} \
             ON CONFLICT (account) DO UPDATE SET amount = balances.amount + excluded.amount",
            placeholders(chunk.len(), 2)
        );
        let mut query = sqlx::query(&sql);
        for (account, delta) in chunk {
            query = query.bind(*account).bind(*delta);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(db("writing the balances of a transfer batch"))?;
    }
    Ok(())
}

/// One journal row waiting for its number: the transfer, its amount as a
/// BIGINT, and when it was applied.
#[derive(Debug, Clone)]
struct PendingRow {
    transfer: Transfer,
    amount: i64,
    ts_ms: i64,
}

/// Appends `rows` to the journal, numbered in order from one bump of the
/// journal counter (which rolls back with the transaction, so the numbers
/// stay gapless).
async fn write_journal(conn: &mut AnyConnection, rows: &[PendingRow]) -> Result<(), StoreError> {
    let count = i64::try_from(rows.len()).map_err(|_| StoreError::ValueTooLarge {
        what: "journal rows in one transaction",
        value: rows.len() as u64,
    })?;
    let last_row = sqlx::query(
        "UPDATE counters SET value = value + $1 WHERE name = 'journal' RETURNING value",
    )
    .bind(count)
    .fetch_one(&mut *conn)
    .await
    .map_err(db("numbering journal rows"))?;
    let first = col_i64(&last_row, "value")? - count + 1;
    let numbered: Vec<(i64, &PendingRow)> = (first..).zip(rows).collect();
    for chunk in numbered.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO journal (seq, ts_ms, from_acct, to_acct, amount, memo) VALUES {}",
            placeholders(chunk.len(), 6)
        );
        let mut query = sqlx::query(&sql);
        for (seq, row) in chunk {
            query = query
                .bind(*seq)
                .bind(row.ts_ms)
                .bind(&row.transfer.from)
                .bind(&row.transfer.to)
                .bind(row.amount)
                .bind(&row.transfer.memo);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(db("writing journal rows"))?;
    }
    Ok(())
}

/// An account as a transaction's ledger batches see it.
#[derive(Debug, Clone)]
struct PendingAccount {
    /// Whether it had a row when the transaction first read it.
    existed: bool,
    /// Its balance then (0 without a row).
    start: i64,
    /// Its balance after the batches applied so far.
    now: i64,
    /// Whether an applied batch named it (then it gets a row at commit).
    named: bool,
}

/// The ledger writes of a transaction not yet sent to the database: what
/// its batches read and changed, and their journal rows. They are written
/// when the transaction commits, so a transaction of several batches (an
/// order's reserve and its first lease's escrow) writes them once.
#[derive(Debug, Default)]
pub(super) struct PendingLedger {
    accounts: BTreeMap<String, PendingAccount>,
    journal: Vec<PendingRow>,
}

impl Tx {
    /// Applies `transfers` in order: moves balances and appends one journal
    /// row each. Fails with `InsufficientFunds` if any account other than
    /// [`WORLD_ACCOUNT`] would go negative (`BalanceOverflow` if one would
    /// pass `i64::MAX` or the world account its floor, `AmountTooLarge` for
    /// an amount above `i64::MAX`); then none of the batch is applied and
    /// the transaction stays usable.
    ///
    /// The balances the batch names are read once per transaction (on
    /// PostgreSQL with `FOR UPDATE`, so they cannot change under it;
    /// SQLite's `BEGIN IMMEDIATE` already holds the database): one
    /// statement, none if an earlier batch read them all. The checks run in
    /// memory ([`batch_plan`](super::batch_plan)). What the batches change
    /// is written at [`Tx::commit`] in three statements (balances, journal
    /// counter, journal rows) however many batches there were.
    pub async fn apply_transfers(
        &mut self,
        transfers: &[Transfer],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let ts_ms = to_db("now_ms", now_ms)?;
        if transfers.is_empty() {
            return Ok(());
        }
        let names = accounts_of(transfers);
        let unread: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.ledger.accounts.contains_key(*n))
            .collect();
        if !unread.is_empty() {
            let found = lock_balances(&mut self.inner, self.backend, &unread).await?;
            for name in unread {
                let start = found.get(name).copied();
                self.ledger.accounts.insert(
                    name.to_string(),
                    PendingAccount {
                        existed: start.is_some(),
                        start: start.unwrap_or(0),
                        now: start.unwrap_or(0),
                        named: false,
                    },
                );
            }
        }
        let now: BTreeMap<String, i64> = names
            .iter()
            .filter_map(|n| self.ledger.accounts.get(*n).map(|a| (n.to_string(), a.now)))
            .collect();
        let plan = plan(transfers, &now)?;
        for change in plan.changes {
            if let Some(a) = self.ledger.accounts.get_mut(&change.account) {
                a.now = change.end;
                a.named = true;
            }
        }
        self.ledger
            .journal
            .extend(
                transfers
                    .iter()
                    .zip(plan.amounts)
                    .map(|(t, amount)| PendingRow {
                        transfer: t.clone(),
                        amount,
                        ts_ms,
                    }),
            );
        Ok(())
    }

    /// Writes what the transaction's ledger batches changed (see
    /// [`Tx::apply_transfers`]); [`Tx::commit`] calls it.
    pub(super) async fn flush_ledger(&mut self) -> Result<(), StoreError> {
        let ledger = std::mem::take(&mut self.ledger);
        let changes: Vec<AccountChange> = ledger
            .accounts
            .into_iter()
            .filter(|(_, a)| a.named)
            .map(|(account, a)| AccountChange {
                account,
                existed: a.existed,
                start: a.start,
                end: a.now,
            })
            .collect();
        let conn: &mut AnyConnection = &mut self.inner;
        write_balances(conn, &changes).await?;
        if !ledger.journal.is_empty() {
            write_journal(conn, &ledger.journal).await?;
        }
        Ok(())
    }
}

impl Store {
    /// The balance of `account`; 0 for an account never used.
    pub async fn balance(&self, account: &str) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db("reading a balance"))?;
        balance_in(&mut conn, account).await
    }

    /// Every account's balance, by account name.
    pub async fn balances(&self) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query("SELECT account, amount FROM balances ORDER BY account")
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing balances"))?
            .iter()
            .map(|r| Ok((col_text(r, "account")?, col_i64(r, "amount")?)))
            .collect()
    }

    /// Journal rows that debit or credit `account`, oldest first.
    pub async fn journal_for(&self, account: &str) -> Result<Vec<JournalRow>, StoreError> {
        sqlx::query(
            "SELECT seq, ts_ms, from_acct, to_acct, amount, memo FROM journal \
             WHERE from_acct = $1 OR to_acct = $1 ORDER BY seq",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the journal"))?
        .iter()
        .map(|r| {
            Ok(JournalRow {
                seq: col_u64(r, "seq")?,
                ts_ms: col_u64(r, "ts_ms")?,
                from: col_text(r, "from_acct")?,
                to: col_text(r, "to_acct")?,
                amount: col_micros(r, "amount")?,
                memo: col_text(r, "memo")?,
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(from: &str, to: &str, amount: u64, memo: &str) -> Transfer {
        Transfer {
            from: from.into(),
            to: to.into(),
            amount: Micros(amount),
            memo: memo.into(),
        }
    }

    async fn total(store: &Store) -> i128 {
        store
            .balances()
            .await
            .expect("balances")
            .iter()
            .map(|(_, b)| i128::from(*b))
            .sum()
    }

    async fn transfers_move_balances_and_journal(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.apply_transfers(
            &[
                transfer(WORLD_ACCOUNT, "user:ada", 5_000_000, "deposit"),
                transfer("user:ada", "hold:1", 1_200_000, "reserve K-1"),
                transfer("hold:1", "escrow:7", 1_200_000, "lease K-7"),
                transfer("escrow:7", "user:bo", 20_000, "minute 1 of K-7"),
            ],
            1_000,
        )
        .await
        .expect("apply");
        tx.commit().await.expect("commit");

        assert_eq!(store.balance("user:ada").await.expect("b"), 3_800_000);
        assert_eq!(store.balance("hold:1").await.expect("b"), 0);
        assert_eq!(store.balance("escrow:7").await.expect("b"), 1_180_000);
        assert_eq!(store.balance("user:bo").await.expect("b"), 20_000);
        assert_eq!(store.balance(WORLD_ACCOUNT).await.expect("b"), -5_000_000);
        assert_eq!(store.balance("user:never").await.expect("b"), 0);
        assert_eq!(total(&store).await, 0, "double entry sums to zero");

        let ada = store.journal_for("user:ada").await.expect("journal");
        assert_eq!(
            ada,
            [
                JournalRow {
                    seq: 1,
                    ts_ms: 1_000,
                    from: WORLD_ACCOUNT.into(),
                    to: "user:ada".into(),
                    amount: Micros(5_000_000),
                    memo: "deposit".into(),
                },
                JournalRow {
                    seq: 2,
                    ts_ms: 1_000,
                    from: "user:ada".into(),
                    to: "hold:1".into(),
                    amount: Micros(1_200_000),
                    memo: "reserve K-1".into(),
                },
            ]
        );
        let escrow: Vec<u64> = store
            .journal_for("escrow:7")
            .await
            .expect("journal")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(escrow, [3, 4]);
    }

    async fn overdraft_in_a_batch_changes_nothing(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.apply_transfers(&[transfer(WORLD_ACCOUNT, "user:ada", 100, "deposit")], 1)
            .await
            .expect("deposit");
        tx.commit().await.expect("commit");

        let mut tx = store.begin().await.expect("begin");
        let err = tx
            .apply_transfers(
                &[
                    transfer(WORLD_ACCOUNT, "user:ada", 50, "deposit"),
                    transfer("user:ada", "user:bo", 100, "fine"),
                    transfer("user:ada", "user:cy", 60, "one too many"),
                ],
                2,
            )
            .await
            .expect_err("ada cannot pay 160 out of 150");
        assert!(
            matches!(
                &err,
                StoreError::InsufficientFunds { account, balance: 50, needed: Micros(60) }
                    if account == "user:ada"
            ),
            "{err:?}"
        );
        // The transaction stays usable and the failed batch left no trace.
        tx.apply_transfers(&[transfer("user:ada", "user:bo", 30, "after")], 3)
            .await
            .expect("a later batch still applies");
        tx.commit().await.expect("commit");

        assert_eq!(store.balance("user:ada").await.expect("b"), 70);
        assert_eq!(store.balance("user:bo").await.expect("b"), 30);
        assert_eq!(store.balance("user:cy").await.expect("b"), 0);
        assert_eq!(store.balance(WORLD_ACCOUNT).await.expect("b"), -100);
        assert_eq!(total(&store).await, 0);
        let seqs: Vec<_> = store
            .journal_for("user:ada")
            .await
            .expect("journal")
            .iter()
            .map(|r| (r.seq, r.memo.clone()))
            .collect();
        assert_eq!(seqs, [(1, "deposit".to_string()), (2, "after".to_string())]);
    }

    async fn huge_amounts_round_trip_and_overflow_is_refused(store: Store) {
        let max = i64::MAX as u64;
        let mut tx = store.begin().await.expect("begin");
        tx.apply_transfers(&[transfer(WORLD_ACCOUNT, "user:rich", max, "all of it")], 1)
            .await
            .expect("i64::MAX fits");
        assert!(matches!(
            tx.apply_transfers(&[transfer(WORLD_ACCOUNT, "user:rich", max + 1, "too much")], 2).await,
            Err(StoreError::AmountTooLarge { amount: Micros(a), .. }) if a == max + 1
        ));
        assert!(matches!(
            tx.apply_transfers(&[transfer(WORLD_ACCOUNT, "user:x", 1, "world is at its floor")], 2).await,
            Err(StoreError::BalanceOverflow { account, balance, .. })
                if account == WORLD_ACCOUNT && balance == -i64::MAX
        ));
        tx.apply_transfers(&[transfer("user:rich", "user:bo", 1, "one")], 3)
            .await
            .expect("pay one");
        assert!(matches!(
            tx.apply_transfers(&[transfer("user:bo", "user:rich", 1, "back")], 4)
                .await,
            Ok(())
        ));
        tx.apply_transfers(&[transfer("user:rich", "user:bo", 1, "one")], 5)
            .await
            .expect("pay one");
        tx.commit().await.expect("commit");
        assert_eq!(store.balance("user:rich").await.expect("b"), i64::MAX - 1);
        assert_eq!(store.balance(WORLD_ACCOUNT).await.expect("b"), -i64::MAX);
        assert_eq!(total(&store).await, 0);
        let first = &store.journal_for("user:rich").await.expect("journal")[0];
        assert_eq!(first.amount, Micros(max));
    }

    async fn concurrent_spends_cannot_overdraw(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.apply_transfers(&[transfer(WORLD_ACCOUNT, "user:ada", 100, "deposit")], 1)
            .await
            .expect("deposit");
        tx.commit().await.expect("commit");

        let spends: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut tx = store.begin().await.expect("begin");
                    let to = format!("user:shop{i}");
                    let got = tx
                        .apply_transfers(&[transfer("user:ada", &to, 60, "buy")], 2)
                        .await;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    tx.commit().await.expect("commit");
                    got
                })
            })
            .collect();
        let mut paid = 0;
        for s in spends {
            match s.await.expect("task") {
                Ok(()) => paid += 1,
                Err(StoreError::InsufficientFunds { balance: 40, .. }) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(paid, 1);
        assert_eq!(store.balance("user:ada").await.expect("b"), 40);
        assert_eq!(total(&store).await, 0);
    }

    async fn a_long_batch_spans_several_statements(store: Store) {
        let n = 2 * ROWS_PER_STATEMENT + 50;
        let mut batch = vec![transfer(WORLD_ACCOUNT, "user:ada", n as u64, "deposit")];
        batch.extend((0..n).map(|i| transfer("user:ada", &format!("user:{i:04}"), 1, "gift")));
        let mut tx = store.begin().await.expect("begin");
        tx.apply_transfers(&batch, 7).await.expect("apply");
        tx.commit().await.expect("commit");
        assert_eq!(store.balance("user:ada").await.expect("b"), 0);
        assert_eq!(store.balance("user:0000").await.expect("b"), 1);
        assert_eq!(
            store
                .balance(&format!("user:{:04}", n - 1))
                .await
                .expect("b"),
            1
        );
        assert_eq!(store.balances().await.expect("all").len(), n + 2);
        assert_eq!(total(&store).await, 0);
        let seqs: Vec<u64> = store
            .journal_for("user:ada")
            .await
            .expect("journal")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, (1..=n as u64 + 1).collect::<Vec<_>>());
    }

    async fn batches_of_one_transaction_see_each_other(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.apply_transfers(&[transfer(WORLD_ACCOUNT, "user:ada", 100, "deposit")], 1)
            .await
            .expect("deposit");
        let err = tx
            .apply_transfers(&[transfer("user:ada", "user:cy", 150, "too much")], 2)
            .await
            .expect_err("ada has only the 100 deposited in this transaction");
        assert!(
            matches!(&err, StoreError::InsufficientFunds { balance: 100, .. }),
            "{err:?}"
        );
        tx.apply_transfers(&[transfer("user:ada", "user:bo", 60, "pay")], 3)
            .await
            .expect("pay");
        assert_eq!(
            store.balance("user:ada").await.expect("b"),
            0,
            "nothing visible before commit"
        );
        tx.commit().await.expect("commit");
        let accounts: Vec<String> = store
            .balances()
            .await
            .expect("all")
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        assert_eq!(
            accounts,
            ["user:ada", "user:bo", WORLD_ACCOUNT],
            "no row for cy"
        );
        assert_eq!(store.balance("user:ada").await.expect("b"), 40);
        let ada: Vec<_> = store
            .journal_for("user:ada")
            .await
            .expect("journal")
            .iter()
            .map(|r| (r.seq, r.ts_ms))
            .collect();
        assert_eq!(ada, [(1, 1), (2, 3)]);
        assert_eq!(total(&store).await, 0);
    }

    store_tests!(
        batches_of_one_transaction_see_each_other,
        a_long_batch_spans_several_statements,
        transfers_move_balances_and_journal,
        overdraft_in_a_batch_changes_nothing,
        huge_amounts_round_trip_and_overflow_is_refused,
        concurrent_spends_cannot_overdraw,
    );
}
