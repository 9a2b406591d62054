//! auth-service integration tests: the real service on port 0, driven over
//! HTTP, against SQLite and against a real PostgreSQL (each test on its own
//! database). PostgreSQL tests need `TEST_DATABASE_URL` (an admin URL; the
//! README's test command sets it); without it they say they were skipped,
//! unless `REQUIRE_POSTGRES=1`, which makes that a failure.

mod helpers;

mod api;
mod login;
mod tokens;
mod users;

/// Generates, for each listed `async fn(Backend)`, one test on SQLite and one
/// on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::Backend::Postgres.available() {
                        super::$name($crate::helpers::Backend::Postgres).await;
                    }
                }
            )*
        }
    };
}
