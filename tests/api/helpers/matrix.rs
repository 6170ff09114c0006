//! The test matrix: which database and storage a test runs on, and whether that
//! cell can run here.

use std::path::Path;

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Which storage backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Fs,
    /// s3s-fs in the test process: objects are files the test can read.
    S3,
    /// Garage, a real S3 server in a process of its own (tests/garage/start.sh).
    Garage,
}

/// One cell of the test matrix.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub db: Db,
    pub store: Store,
}

impl Setup {
    /// `None`, said loudly, when the cell cannot run here; in CI (`CI` set) every cell runs.
    pub fn available(db: Db, store: Store) -> Option<Self> {
        if db == Db::Postgres && std::env::var_os("TEST_DATABASE_URL").is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but TEST_DATABASE_URL is not: PostgreSQL tests must not skip in CI"
            );
            say("SKIPPED: a PostgreSQL test, because TEST_DATABASE_URL is not set");
            return None;
        }
        if db == Db::Postgres {
            static ANNOUNCED: std::sync::Once = std::sync::Once::new();
            ANNOUNCED.call_once(|| {
                say("PostgreSQL: the postgres cells run against TEST_DATABASE_URL");
            });
        }
        if store == Store::Garage && !garage_installed() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but Garage is not installed: Garage tests must not skip in CI"
            );
            say(
                "SKIPPED: a Garage test, because `garage` is not installed (tests/garage/README.md)",
            );
            return None;
        }
        Some(Self { db, store })
    }
}

/// A line on the test run's own stderr, past libtest's capture of `eprintln!`, so
/// that `cargo test` shows it whether the test passes or not.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether the `garage` binary is on PATH or in ~/.cargo/bin (tests/garage/start.sh
/// looks in both).
fn garage_installed() -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("garage").is_file()));
    let in_cargo = std::env::var_os("HOME")
        .is_some_and(|home| Path::new(&home).join(".cargo/bin/garage").is_file());
    on_path || in_cargo
}

/// Runs each named `async fn(Setup)` on every database and storage backend;
/// `s3:` on the S3 cells only, `garage:` on Garage (a second real S3 server, for
/// tests that reach storage through S3 alone), `db:` on both databases with fs,
/// `postgres:` on PostgreSQL only (several servers on one database), `once:` a
/// single time (tests of the binary).
#[macro_export]
macro_rules! matrix {
    (s3: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell sqlite_s3_only, Sqlite, S3, $($name),*);
        $crate::matrix!(@cell postgres_s3_only, Postgres, S3, $($name),*);
    };
    (garage: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell sqlite_garage, Sqlite, Garage, $($name),*);
        $crate::matrix!(@cell postgres_garage, Postgres, Garage, $($name),*);
    };
    (once: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell once, Sqlite, S3, $($name),*);
    };
    (db: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell sqlite, Sqlite, Fs, $($name),*);
        $crate::matrix!(@cell postgres, Postgres, Fs, $($name),*);
    };
    (postgres: $($name:ident),* $(,)?) => {
        $crate::matrix!(@cell postgres_only, Postgres, Fs, $($name),*);
    };
    ($($name:ident),* $(,)?) => {
        $crate::matrix!(@cell sqlite_fs, Sqlite, Fs, $($name),*);
        $crate::matrix!(@cell postgres_fs, Postgres, Fs, $($name),*);
        $crate::matrix!(@cell sqlite_s3, Sqlite, S3, $($name),*);
        $crate::matrix!(@cell postgres_s3, Postgres, S3, $($name),*);
    };
    (@cell $module:ident, $db:ident, $store:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use $crate::helpers::{Db, Setup, Store};
                    if let Some(setup) = Setup::available(Db::$db, Store::$store) {
                        super::$name(setup).await;
                    }
                }
            )*
        }
    };
}
