//! The device registry: devices, static and dynamic groups, and the entities behind them.
//! Domain functions take the database explicitly and record every change in the audit log
//! within the same transaction.

pub mod devices;
pub mod entities;
pub mod groups;
pub mod query;
pub mod version_key;

use sea_orm::DbErr;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such thing.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `device`, `group`, ...
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// It exists already.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// `device`, `group`, ...
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// A field value breaks a rule.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The database failed.
    #[error("database error")]
    Db(#[from] DbErr),
}

/// Whether `err` is PostgreSQL aborting a transaction for a deadlock (`40P01`) or a
/// serialization failure (`40001`): nothing is wrong with it, and run again it succeeds.
pub fn is_transient_conflict(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// Whether `err` is a unique-constraint violation (a concurrent or repeated insert).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
