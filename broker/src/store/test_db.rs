//! Runs each store test on both backends: a fresh SQLite file in a temp dir,
//! and a fresh PostgreSQL database on the server named by `CPUSHARE_TEST_PG`
//! (start one with `scripts/pg-test-server.sh`). Each test gets its own
//! database, so tests run in parallel; the database is dropped afterwards,
//! even when the test panics.

use sqlx::{Connection, Executor, PgConnection};
use std::future::Future;
use std::io::Write;

/// The variable holding the URL of a PostgreSQL server for tests.
pub(crate) const PG_ENV: &str = "CPUSHARE_TEST_PG";

/// Runs `test` with the URL of a fresh SQLite file (not yet created).
pub(crate) async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("make a temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("store.db").display()
    );
    test(url).await;
}

/// Runs `test` with the URL of a fresh PostgreSQL database, or says loudly
/// that it skipped because `CPUSHARE_TEST_PG` is unset.
pub(crate) async fn on_postgres<F, Fut>(name: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(admin_url) = std::env::var(PG_ENV) else {
        // Straight to the stream: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED store test {name} on PostgreSQL: {PG_ENV} is unset \
             (eval \"$(scripts/pg-test-server.sh)\" to run it)"
        );
        return;
    };
    let db_name = format!("cpushare_test_{:016x}", rand::random::<u64>());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}: {e}"));
    admin
        .execute(format!("CREATE DATABASE {db_name}").as_str())
        .await
        .expect("create the test database");
    let outcome = tokio::spawn(test(with_database(&admin_url, &db_name))).await;
    admin
        .execute(format!("DROP DATABASE {db_name} WITH (FORCE)").as_str())
        .await
        .expect("drop the test database");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// `url` with its database name replaced by `db`.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}://{authority}/{db}{query}")
}

/// Declares, for each `async fn NAME(Store)`, the tests `NAME::sqlite` and
/// `NAME::postgres`.
macro_rules! store_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                $crate::store::test_db::on_sqlite(|url| async move {
                    let store = $crate::store::Store::open(&url).await.expect("open store");
                    super::$name(store).await
                })
                .await
            }

            #[tokio::test]
            async fn postgres() {
                $crate::store::test_db::on_postgres(stringify!($name), |url| async move {
                    let store = $crate::store::Store::open(&url).await.expect("open store");
                    super::$name(store).await
                })
                .await
            }
        }
    )+};
}

/// Like `store_tests!` for tests that take the database URL and open it
/// themselves (to test opening and reopening).
macro_rules! url_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                $crate::store::test_db::on_sqlite(super::$name).await
            }

            #[tokio::test]
            async fn postgres() {
                $crate::store::test_db::on_postgres(stringify!($name), super::$name).await
            }
        }
    )+};
}

/// Tests of SQLite-only behaviour (the file, its pragmas), taking the URL.
macro_rules! sqlite_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                $crate::store::test_db::on_sqlite(super::$name).await
            }
        }
    )+};
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced_keeping_query() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5/postgres", "t1"),
            "postgres://u@127.0.0.1:5/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5?sslmode=disable", "t1"),
            "postgres://u:p@h:5/t1?sslmode=disable"
        );
    }
}
