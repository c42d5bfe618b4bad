//! The ledger's persistent half: balances and the append-only journal.
//!
//! Transfers come from the sans-IO `crate::ledger` core; here they are
//! applied inside the caller's transaction, all or nothing.

use super::columns::{col_i64, col_micros, col_text, col_u64, money_to_db, to_db};
use super::error::{db, StoreError};
use super::{Store, Tx};
use crate::ledger::Transfer;
use cpushare_proto::money::Micros;
use sqlx::Acquire;
use sqlx::AnyConnection;

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

/// Lowest balance any account may reach: the world account may go this
/// far negative, so every balance and every sum the checks below compute
/// stays within a BIGINT (PostgreSQL fails on overflow; SQLite silently
/// turns the result into a float).
const WORLD_FLOOR: i64 = -i64::MAX;

/// Creates `account` with balance 0 if it does not exist yet.
async fn open_account(conn: &mut AnyConnection, account: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO balances (account, amount) VALUES ($1, 0) ON CONFLICT (account) DO NOTHING",
    )
    .bind(account)
    .execute(&mut *conn)
    .await
    .map_err(db("opening a ledger account"))?;
    Ok(())
}

/// Takes `amount` (>= 0) out of `account` unless that would leave it below
/// `floor`; `false` (nothing changed) if it would. The check is part of the
/// UPDATE, so concurrent writers cannot both pass a check made before
/// either wrote (PostgreSQL re-evaluates it on the locked row).
async fn debit(
    conn: &mut AnyConnection,
    account: &str,
    amount: i64,
    floor: i64,
) -> Result<bool, StoreError> {
    open_account(conn, account).await?;
    // floor + amount is in [-MAX, MAX] for floor in {-MAX, 0}, amount in [0, MAX].
    let least_before = floor + amount;
    let done =
        sqlx::query("UPDATE balances SET amount = amount - $2 WHERE account = $1 AND amount >= $3")
            .bind(account)
            .bind(amount)
            .bind(least_before)
            .execute(&mut *conn)
            .await
            .map_err(db("debiting a balance"))?;
    Ok(done.rows_affected() == 1)
}

/// Adds `amount` (>= 0) to `account` unless it would exceed `i64::MAX`;
/// `false` (nothing changed) if it would.
async fn credit(conn: &mut AnyConnection, account: &str, amount: i64) -> Result<bool, StoreError> {
    open_account(conn, account).await?;
    let most_before = i64::MAX - amount;
    let done =
        sqlx::query("UPDATE balances SET amount = amount + $2 WHERE account = $1 AND amount <= $3")
            .bind(account)
            .bind(amount)
            .bind(most_before)
            .execute(&mut *conn)
            .await
            .map_err(db("crediting a balance"))?;
    Ok(done.rows_affected() == 1)
}

async fn balance_in(conn: &mut AnyConnection, account: &str) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT amount FROM balances WHERE account = $1")
        .bind(account)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a balance"))?;
    row.map_or(Ok(0), |r| col_i64(&r, "amount"))
}

/// Applies one transfer and journals it. On error part of it may be
/// applied; the caller rolls back its savepoint.
async fn apply_one(conn: &mut AnyConnection, t: &Transfer, ts_ms: i64) -> Result<(), StoreError> {
    let amount = money_to_db("transfer amount", t.amount)?;
    let world = t.from == WORLD_ACCOUNT;
    let floor = if world { WORLD_FLOOR } else { 0 };
    if !debit(conn, &t.from, amount, floor).await? {
        let balance = balance_in(conn, &t.from).await?;
        return Err(if world {
            StoreError::BalanceOverflow {
                account: t.from.clone(),
                balance,
                amount: t.amount,
            }
        } else {
            StoreError::InsufficientFunds {
                account: t.from.clone(),
                balance,
                needed: t.amount,
            }
        });
    }
    if !credit(conn, &t.to, amount).await? {
        return Err(StoreError::BalanceOverflow {
            account: t.to.clone(),
            balance: balance_in(conn, &t.to).await?,
            amount: t.amount,
        });
    }
    let seq_row =
        sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'journal' RETURNING value")
            .fetch_one(&mut *conn)
            .await
            .map_err(db("numbering a journal row"))?;
    sqlx::query(
        "INSERT INTO journal (seq, ts_ms, from_acct, to_acct, amount, memo) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(col_i64(&seq_row, "value")?)
    .bind(ts_ms)
    .bind(&t.from)
    .bind(&t.to)
    .bind(amount)
    .bind(&t.memo)
    .execute(&mut *conn)
    .await
    .map_err(db("writing a journal row"))?;
    Ok(())
}

impl Tx {
    /// Applies `transfers` in order: moves balances and appends one journal
    /// row each. Fails with `InsufficientFunds` if any account other than
    /// [`WORLD_ACCOUNT`] would go negative; then none of the batch is
    /// applied (a savepoint is rolled back) and the transaction stays usable.
    pub async fn apply_transfers(
        &mut self,
        transfers: &[Transfer],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let ts_ms = to_db("now_ms", now_ms)?;
        let mut batch = self
            .inner
            .begin()
            .await
            .map_err(db("starting a transfer batch"))?;
        let mut outcome = Ok(());
        for t in transfers {
            outcome = apply_one(&mut batch, t, ts_ms).await;
            if outcome.is_err() {
                break;
            }
        }
        match outcome {
            Ok(()) => batch
                .commit()
                .await
                .map_err(db("finishing a transfer batch")),
            Err(e) => {
                batch
                    .rollback()
                    .await
                    .map_err(db("undoing a failed transfer batch"))?;
                Err(e)
            }
        }
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

    store_tests!(
        transfers_move_balances_and_journal,
        overdraft_in_a_batch_changes_nothing,
        huge_amounts_round_trip_and_overflow_is_refused,
        concurrent_spends_cannot_overdraw,
    );
}
