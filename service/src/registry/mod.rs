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

/// Whether `err` is a unique-constraint violation (a concurrent or repeated insert).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

impl crate::db::Conflict for Error {
    fn is_transient_conflict(&self) -> bool {
        matches!(self, Error::Db(e) if e.is_transient_conflict())
    }
}
