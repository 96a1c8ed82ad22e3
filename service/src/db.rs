//! Connecting to the database and applying migrations: PostgreSQL in production, a SQLite
//! file as the embedded default. Migrations run under a PostgreSQL advisory lock, so replicas
//! that start together apply each migration once. Also the statement helpers every module
//! shares, and running a transaction again when PostgreSQL aborted it for a conflict.

use std::time::Duration;

use anyhow::{Context, Result};
use fleetwave_migrations::Migrator;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, Statement,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

/// Serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x6677_6d69_6772_6174;

/// Opens a pool on `url` (creating the SQLite file's directory when needed).
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let file = path.split('?').next().unwrap_or(path);
        if let Some(dir) = std::path::Path::new(file)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    // SQLite has one writer at a time; a second connection upgrading its read to a write
    // fails at once with "database is locked" rather than waiting. One connection queues
    // everyone instead (the embedded default is for one machine).
    let max_connections = if url.starts_with("sqlite:") {
        1
    } else {
        max_connections
    };
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .with_context(|| format!("connecting to the database at {}", redact(url)))
}

/// Applies every pending migration, once, however many replicas start at the same time.
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    if db.get_database_backend() == DatabaseBackend::Postgres {
        let txn = db.begin().await?;
        txn.execute_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"),
        ))
        .await?;
        Migrator::up(&txn, None)
            .await
            .context("applying migrations")?;
        txn.commit().await?;
    } else {
        Migrator::up(db, None)
            .await
            .context("applying migrations")?;
    }
    Ok(())
}

/// The current time at the precision the databases keep (microseconds), so a value reads
/// back exactly as it was written.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6)
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Inserts `rows` (JSON objects keyed by column) into `table` in one statement on
/// PostgreSQL: the rows travel as one JSON parameter that `json_to_recordset` unpacks with
/// the given column types, which is far faster than thousands of bound parameters. `columns`
/// pairs each column with its SQL type (`text`, `integer`, `bigint`, `timestamptz`).
pub async fn insert_json_rows(
    txn: &impl sea_orm::ConnectionTrait,
    table: &str,
    columns: &[(&str, &str)],
    rows: &[impl serde::Serialize],
) -> Result<(), sea_orm::DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let typed: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
    let sql = format!(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM json_to_recordset($1::json) AS x({typed})",
        cols = names.join(", "),
        typed = typed.join(", ")
    );
    let payload = serde_json::to_string(rows)
        .map_err(|e| sea_orm::DbErr::Custom(format!("rows for {table}: {e}")))?;
    txn.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        sql,
        vec![payload.into()],
    ))
    .await?;
    Ok(())
}

/// A raw statement written with PostgreSQL's `$n` placeholders, for either backend (SQLite
/// reads them as `?n`).
pub fn statement(
    backend: sea_orm::DatabaseBackend,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> sea_orm::Statement {
    let sql = match backend {
        sea_orm::DatabaseBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    };
    sea_orm::Statement::from_sql_and_values(backend, sql, values)
}

/// Times a transaction runs again after PostgreSQL aborted it for a conflict.
pub const MAX_CONFLICTS: u32 = 3;

/// An error that may be PostgreSQL aborting a transaction for a deadlock (`40P01`) or a
/// serialization failure (`40001`): nothing is wrong with the transaction, and run again
/// it succeeds.
pub trait Conflict {
    /// Whether this is such an abort.
    fn is_transient_conflict(&self) -> bool;
}

impl Conflict for sea_orm::DbErr {
    fn is_transient_conflict(&self) -> bool {
        use sea_orm::{DbErr, RuntimeErr};
        let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = self
        else {
            return false;
        };
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code == "40P01" || code == "40001")
    }
}

impl Conflict for anyhow::Error {
    fn is_transient_conflict(&self) -> bool {
        self.chain()
            .filter_map(|cause| cause.downcast_ref::<sea_orm::DbErr>())
            .any(Conflict::is_transient_conflict)
    }
}

/// Runs `transaction` (which begins, and commits, a whole transaction on each call) and,
/// while PostgreSQL aborts it for a conflict, runs it again, [`MAX_CONFLICTS`] times at
/// most. Each abort is logged as `what`.
pub async fn retry_conflicts<T, E, F, Fut>(what: &str, mut transaction: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Conflict + std::fmt::Display,
{
    let mut conflicts = 0;
    loop {
        match transaction().await {
            Err(e) if conflicts < MAX_CONFLICTS && e.is_transient_conflict() => {
                conflicts += 1;
                tracing::info!(error.message = %format!("{e:#}"), "{what} aborted by a conflict; running it again");
            }
            done => return done,
        }
    }
}
