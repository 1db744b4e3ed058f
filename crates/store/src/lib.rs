//! Confero's persistent state: the configuration draft, the published
//! production revisions, console accounts, API tokens and registrar bindings.
//!
//! One code path serves SQLite (the default, a file in the data directory) and
//! PostgreSQL (several nodes sharing one configuration): every query goes
//! through `sqlx::Any` and uses only SQL both understand (`$n` parameters,
//! BIGINT and TEXT columns, `ON CONFLICT … DO UPDATE`, `LIMIT`).
//!
//! # Draft and production
//! Console and API writes edit the **draft** (one table per entity). Each write
//! is one transaction that first takes the store's write lock, then validates
//! the entity against the rest of the draft, so the draft is consistent after
//! every committed write. **Production** is the `revisions` table; its newest row
//! is what the call engine runs. [`Store::apply`] validates the whole draft and
//! inserts one revision row holding the serialized configuration, in one
//! transaction: a crash at any instant leaves either the old or the new
//! revision, never a mix. [`Store::discard`] rewrites the draft from the newest
//! revision, also in one transaction. Ids come from a sequence table and are
//! never reused, so they stay stable across apply and discard.

mod auth;
mod bindings;
mod draft;
mod error;
mod input;
mod migrate;
mod sessions;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};

pub use auth::{validate_console_password, ApiToken, ConsoleAccount, MIN_CONSOLE_PASSWORD_CHARS};
pub use bindings::StoredBinding;
pub use confero_pbx::config::{Change, Config, FieldError, Snapshot};
pub use error::StoreError;
pub use input::{
    ConferencePatch, IncomingNumberPatch, NewConference, NewIncomingNumber, NewTrunk, NewUser,
    TrunkPatch, UserPatch,
};
pub use sessions::{Session, SESSION_IDLE_SECS, SESSION_MAX_SECS};

/// Which database is behind the pool; only transaction start-up differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// `url`: "sqlite://path?mode=rwc" or "postgres://…". Runs migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Database(sqlx::Error::Configuration(
                format!(
                    "unsupported database URL scheme in {:?}: use sqlite:// or postgres://",
                    redact(url)
                )
                .into(),
            )));
        };
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                // SQLite serializes writers anyway; a few readers are plenty.
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers (the call engine loading a revision) never
                        // block on a writer; a busy timeout so concurrent writers queue
                        // rather than fail.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            });
        let pool = options.connect(url).await?;
        migrate::run(&pool, backend).await?;
        Ok(Store { pool, backend })
    }

    /// SQLite file in data_dir/confero.db (creating the dir).
    pub async fn open_data_dir(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let file = dir.join("confero.db");
        let path = file.to_str().ok_or_else(|| {
            StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("data directory path is not UTF-8: {}", dir.display()),
            ))
        })?;
        if path.contains(['?', '#']) {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("data directory path must not contain '?' or '#': {path}"),
            )));
        }
        Store::connect(&format!("sqlite://{path}?mode=rwc")).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for running queries (graceful shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A transaction that holds the store's write lock from its first statement,
    /// so that validate-then-write sequences cannot interleave (two creates with
    /// the same extension, an apply racing an edit) — across nodes too on PostgreSQL.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = match self.backend {
            // IMMEDIATE takes SQLite's write lock now (waiting up to busy_timeout)
            // instead of failing with SQLITE_BUSY when a read later upgrades.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        sqlx::query("UPDATE store_lock SET counter = counter + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// A read-only transaction that sees one consistent state of several tables.
    pub(crate) async fn read_tx(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// A URL with its password hidden, for error messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Allocates the next id for `entity` inside a write transaction.
pub(crate) async fn next_id(
    tx: &mut Transaction<'static, Any>,
    entity: &str,
) -> Result<i64, StoreError> {
    use sqlx::Row;
    let row = sqlx::query("SELECT next_id FROM id_sequences WHERE entity = $1")
        .bind(entity)
        .fetch_one(&mut **tx)
        .await?;
    let id: i64 = row.try_get("next_id")?;
    sqlx::query("UPDATE id_sequences SET next_id = $1 WHERE entity = $2")
        .bind(id + 1)
        .bind(entity)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
