//! The one error type of the store.

use confero_pbx::config::{EntityKind, FieldError};

/// Why a store operation failed, sorted by who has to act: the person editing
/// (`Validation`, `Conflict`, `NotFound`, `InvalidDraft`) or the operator
/// (`Database`, `Corrupt`, `Io`, `Crypto`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A submitted value breaks a rule; nothing was written.
    #[error("invalid {}: {}", .0.field, .0.message)]
    Validation(FieldError),
    /// The edit is well-formed, but something else depends on the value being
    /// removed or changed (a conference's administrator, an incoming number's
    /// destination); nothing was written.
    #[error("conflict on {}: {}", .0.field, .0.message)]
    Conflict(FieldError),
    #[error("{entity} {id} not found")]
    NotFound { entity: EntityKind, id: i64 },
    /// `apply` refused: the draft as a whole is inconsistent. Every problem is listed.
    #[error("the draft has {} problem(s); first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    InvalidDraft(Vec<FieldError>),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Data in the database cannot be read back (a hand-edited row, a revision
    /// written by a newer version).
    #[error("corrupt data in the database: {0}")]
    Corrupt(String),
    #[error("cannot prepare the data directory: {0}")]
    Io(#[from] std::io::Error),
    /// Password hashing failed (argon2 parameters or a stored hash that does not parse).
    #[error("password hashing failed: {0}")]
    Crypto(String),
}

impl StoreError {
    /// The database could not serve the request in time (pool exhausted, lock
    /// wait too long): worth retrying, and answered as "busy" rather than as a failure.
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::PoolTimedOut) => true,
            StoreError::Database(sqlx::Error::Database(e)) => {
                // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6); PostgreSQL: lock_not_available.
                matches!(e.code().as_deref(), Some("5" | "6" | "55P03"))
            }
            _ => false,
        }
    }

    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(what.to_string())
    }
}
