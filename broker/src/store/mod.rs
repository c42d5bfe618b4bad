//! The broker's persistent store: users, enrollment tokens, the ledger,
//! orders, leases and seller reliability, in SQLite or PostgreSQL.
//!
//! One set of migrations (`broker/migrations/`) serves both backends through
//! sqlx's `any` driver, so every statement here is SQL both accept (`$N`
//! placeholders, BIGINT numbers, `ON CONFLICT`, `RETURNING`). Reads are
//! methods on [`Store`]; writes are methods on [`Tx`], so one market event
//! (a match: a lease, two order updates, the ledger transfers) commits or
//! rolls back as a whole.

#[cfg(test)]
#[macro_use]
mod test_db;

mod batch_plan;
mod columns;
mod error;
mod leases;
mod ledger;
mod orders;
mod sellers;
mod sequence;
mod tokens;
mod users;

pub use error::StoreError;
pub use leases::{LeaseRow, LeaseState};
pub use ledger::{JournalRow, WORLD_ACCOUNT};
pub use orders::{OrderRow, OrderState, Side};
pub use sellers::SellerStats;
pub use sequence::MaxIds;
pub use users::{Role, User};

use error::db;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::{Any, Executor, Transaction};

/// The schema, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database a [`Store`] lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL server (for scale).
    Postgres,
}

impl Backend {
    /// The backend a database URL names, or `UnsupportedUrl`.
    pub fn of_url(url: &str) -> Result<Backend, StoreError> {
        let scheme = url.split_once(':').map_or(url, |(s, _)| s);
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(StoreError::UnsupportedUrl {
                scheme: scheme.chars().take(32).collect(),
            }),
        }
    }
}

/// A connection pool to the broker's database, with the schema migrated.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// One database transaction; dropped without [`Tx::commit`] it rolls back.
#[derive(Debug)]
pub struct Tx {
    inner: Transaction<'static, Any>,
    backend: Backend,
    /// Ledger writes held until commit.
    ledger: ledger::PendingLedger,
}

/// Makes an SQLite URL create its file when missing (`mode=rwc`) unless the
/// caller chose a mode.
fn sqlite_url_creating_file(url: &str) -> String {
    let has_mode = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("mode=")));
    match (has_mode, url.contains('?')) {
        (true, _) => url.to_string(),
        (false, true) => format!("{url}&mode=rwc"),
        (false, false) => format!("{url}?mode=rwc"),
    }
}

impl Store {
    /// Connects to `sqlite://PATH[?mode=rwc]` or `postgres://...` and brings
    /// the schema up to date. An SQLite file is created if missing and runs
    /// in WAL mode with `synchronous=NORMAL` (durable across crashes of the
    /// broker; the last commits may be lost only on power loss).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        let url = match backend {
            Backend::Sqlite => sqlite_url_creating_file(url),
            Backend::Postgres => url.to_string(),
        };
        let mut options = AnyPoolOptions::new();
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(db("connecting to the database"))?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// Which database this store lives in.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a transaction for writes.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let inner = match self.backend {
            // IMMEDIATE takes SQLite's write lock up front, so two writers
            // queue on the busy timeout instead of one failing with
            // SQLITE_BUSY when it upgrades a read lock mid-transaction.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(db("starting a transaction"))?;
        Ok(Tx {
            inner,
            backend: self.backend,
            ledger: ledger::PendingLedger::default(),
        })
    }

    /// Closes every connection; waits until they are closed.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Tx {
    /// Makes every write of this transaction durable and visible (the
    /// ledger's held writes go out first).
    pub async fn commit(mut self) -> Result<(), StoreError> {
        self.flush_ledger().await?;
        self.inner
            .commit()
            .await
            .map_err(db("committing a transaction"))
    }

    /// Discards every write of this transaction.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.inner
            .rollback()
            .await
            .map_err(db("rolling back a transaction"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    #[test]
    fn backend_follows_url_scheme() {
        assert_eq!(Backend::of_url("sqlite://x.db").ok(), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of_url("postgresql://u:pw@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert!(matches!(
            Backend::of_url("mysql://root:secret@h/db"),
            Err(StoreError::UnsupportedUrl { scheme }) if scheme == "mysql"
        ));
    }

    #[test]
    fn sqlite_url_gets_create_mode_unless_given() {
        assert_eq!(
            sqlite_url_creating_file("sqlite:///d/b.db"),
            "sqlite:///d/b.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite:///d/b.db?cache=shared"),
            "sqlite:///d/b.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite:///d/b.db?mode=ro"),
            "sqlite:///d/b.db?mode=ro"
        );
    }

    async fn applied_migrations(store: &Store) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations")
            .fetch_one(&store.pool)
            .await
            .expect("count migrations")
            .try_get::<i64, _>("n")
            .expect("count is a BIGINT")
    }

    async fn migrations_are_idempotent_on_reopen(url: String) {
        let first = Store::open(&url).await.expect("first open");
        assert_eq!(
            applied_migrations(&first).await,
            MIGRATOR.iter().count() as i64
        );
        let mut tx = first.begin().await.expect("begin");
        tx.create_user("ada", Role::Buyer, 1)
            .await
            .expect("create user");
        tx.commit().await.expect("commit");
        first.close().await;

        let second = Store::open(&url)
            .await
            .expect("reopen runs migrations again");
        assert_eq!(
            applied_migrations(&second).await,
            MIGRATOR.iter().count() as i64
        );
        assert!(second.user("ada").await.expect("read").is_some());
        second.close().await;
    }

    async fn dropped_tx_rolls_back(store: Store) {
        let mut tx = store.begin().await.expect("begin");
        tx.create_user("bob", Role::Seller, 5)
            .await
            .expect("create");
        drop(tx);
        assert_eq!(store.user("bob").await.expect("read"), None);
        let mut tx = store.begin().await.expect("begin");
        tx.create_user("bob", Role::Seller, 5)
            .await
            .expect("create");
        tx.rollback().await.expect("rollback");
        assert_eq!(store.user("bob").await.expect("read"), None);
    }

    async fn sqlite_runs_in_wal_with_normal_sync(url: String) {
        let store = Store::open(&url).await.expect("open");
        let mut conn = store.pool.acquire().await.expect("conn");
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .expect("journal_mode")
            .try_get(0)
            .expect("text");
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .expect("synchronous")
            .try_get(0)
            .expect("int");
        assert_eq!(sync, 1, "1 is NORMAL");
    }

    async fn sqlite_file_is_created_and_keeps_data_after_close(url: String) {
        let path = url
            .trim_start_matches("sqlite://")
            .split('?')
            .next()
            .expect("split yields one part")
            .to_string();
        assert!(!std::path::Path::new(&path).exists());
        let store = Store::open(&path_url(&path))
            .await
            .expect("open creates the file");
        assert!(std::path::Path::new(&path).exists());
        let mut tx = store.begin().await.expect("begin");
        tx.create_user("cy", Role::Admin, 9).await.expect("create");
        tx.commit().await.expect("commit");
        store.close().await;
        drop(store);

        let store = Store::open(&path_url(&path)).await.expect("reopen");
        let cy = store.user("cy").await.expect("read").expect("cy persisted");
        assert_eq!(cy.role, Role::Admin);
        assert_eq!(cy.created_ms, 9);
    }

    /// A bare `sqlite://PATH` URL, to check that `open` adds `mode=rwc`.
    fn path_url(path: &str) -> String {
        format!("sqlite://{path}")
    }

    url_tests!(migrations_are_idempotent_on_reopen);
    sqlite_tests!(
        sqlite_runs_in_wal_with_normal_sync,
        sqlite_file_is_created_and_keeps_data_after_close,
    );
    store_tests!(dropped_tx_rolls_back);
}
