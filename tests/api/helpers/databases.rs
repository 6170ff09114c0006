//! Databases for tests: a SQLite file, or a PostgreSQL database of this run
//! (TEST_DATABASE_URL), and a trigger that makes writes fail on either.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sea_orm::{ConnectionTrait, Database};
use tokio::sync::OnceCell;

use super::{Db, TestApp, say};

/// A fresh database URL: a SQLite file in `dir`, or a PostgreSQL database of this run.
pub async fn database_url(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("attache.db").display()),
        Db::Postgres => postgres_database().await.clone(),
    }
}

/// One PostgreSQL database per test run, created fresh; tests keep apart by tenant.
/// Every database of the run is dropped once the run's process ends.
async fn postgres_database() -> &'static String {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(|| async {
        let admin = postgres_admin().await;
        drop_previous_databases(&admin).await;
        drop_this_runs_databases_at_exit();
        create_postgres_database(&admin).await
    })
    .await
}

/// A watcher process that waits for this test process to end, then drops every
/// database it made (`attache_test_<pid>_*`): no test database outlives its run,
/// however the run ends. `.ci/run` checks that none is left.
fn drop_this_runs_databases_at_exit() {
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        psql "$2" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'attache\_test\_$1\_%'" |
        while read -r name; do
            psql "$2" -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1
        done
    "#;
    let watcher = std::process::Command::new("sh")
        .args([
            "-c",
            script,
            "sh",
            &std::process::id().to_string(),
            &admin_url,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(err) = watcher {
        say(&format!(
            "cannot start the watcher that drops this run's test databases: {err}"
        ));
    }
}

pub async fn postgres_admin() -> sea_orm::DatabaseConnection {
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    Database::connect(&admin_url)
        .await
        .expect("connect to TEST_DATABASE_URL")
}

/// A new, migrated PostgreSQL database; the next run drops it.
async fn create_postgres_database(admin: &sea_orm::DatabaseConnection) -> String {
    let url = empty_postgres_database(admin).await;
    let config = attache::config::DatabaseConfig {
        database_url: url.clone(),
        sqlite_synchronous: attache::config::SqliteSync::Normal,
        database_max_connections: 10,
    };
    attache::db::Database::open(&config)
        .await
        .expect("connect to the test database")
        .migrate()
        .await
        .expect("migrate the test database");
    url
}

/// A new PostgreSQL database without tables; the next run drops it.
pub async fn empty_postgres_database(admin: &sea_orm::DatabaseConnection) -> String {
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let unique = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let name = format!("attache_test_{}_{stamp}_{unique}", std::process::id());
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create the test database");
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A database of its own, for a test whose work would disturb the tests sharing
/// one (pruning every old event): a SQLite file in `dir`, or a new PostgreSQL database.
pub async fn private_database_url(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => database_url(db, dir).await,
        Db::Postgres => {
            postgres_database().await;
            create_postgres_database(&postgres_admin().await).await
        }
    }
}

/// Removes the databases of earlier runs; one still in use by another run stays.
async fn drop_previous_databases(admin: &sea_orm::DatabaseConnection) {
    use sea_orm::{DbBackend, Statement};
    let rows = admin
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT datname FROM pg_database WHERE datname LIKE 'attache_test_%'",
        ))
        .await
        .unwrap_or_default();
    for row in rows {
        if let Ok(name) = row.try_get::<String>("", "datname") {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                .await;
        }
    }
}

/// A trigger that makes every insert into `table` fail for one tenant: a database
/// failure in the middle of a write, on SQLite and PostgreSQL alike.
pub struct Refusal {
    db: Db,
    name: String,
    table: &'static str,
}

impl Refusal {
    pub async fn install(app: &TestApp, table: &'static str, tenant: &str) -> Self {
        let db = if app.app.db.backend() == sea_orm::DbBackend::Postgres {
            Db::Postgres
        } else {
            Db::Sqlite
        };
        let name = format!("refuse_{table}_{tenant}");
        let trigger = match db {
            Db::Sqlite => format!(
                "CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN NEW.tenant_id = '{tenant}' \
                 BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;"
            ),
            Db::Postgres => format!(
                "CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN \
                 IF NEW.tenant_id = '{tenant}' THEN RAISE EXCEPTION 'refused by test trigger'; END IF; RETURN NEW; END; $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}();"
            ),
        };
        let txn = app.app.db.begin().await.expect("begin");
        txn.execute_unprepared(&trigger)
            .await
            .expect("install trigger");
        txn.commit().await.expect("install trigger");
        Self { db, name, table }
    }

    /// Drops the trigger (a shared PostgreSQL database outlives the test).
    pub async fn remove(self, app: &TestApp) {
        let Self { db, name, table } = self;
        let cleanup = match db {
            Db::Sqlite => format!("DROP TRIGGER {name};"),
            Db::Postgres => format!("DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}();"),
        };
        let txn = app.app.db.begin().await.expect("begin");
        txn.execute_unprepared(&cleanup)
            .await
            .expect("remove trigger");
        txn.commit().await.expect("remove trigger");
    }
}

/// SQLite's write lock, taken by a connection of its own (another process's, as the
/// server sees it) and held until that connection rolls back or closes.
pub async fn hold_sqlite_write_lock(url: &str) -> sea_orm::sqlx::SqliteConnection {
    use sea_orm::sqlx::{self, Connection};
    let mut holder = sqlx::SqliteConnection::connect(url)
        .await
        .expect("a connection of another process");
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .expect("the write lock");
    holder
}
