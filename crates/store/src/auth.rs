//! Console accounts (argon2 password hashes) and API tokens (SHA-256 of the token).

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use sqlx::Row;

use confero_pbx::config::FieldError;

use crate::{next_id, now_unix, Store, StoreError};

/// A console account as lists show it (never the hash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsoleAccount {
    pub id: i64,
    pub username: String,
    pub created_at: i64,
}

/// An API token as lists show it (the token itself is shown once, at creation).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
}

/// Shortest console password accepted: these accounts can reconfigure the whole PBX.
pub const MIN_CONSOLE_PASSWORD_CHARS: usize = 10;

fn validate_console_username(username: &str) -> Result<(), StoreError> {
    let ok = !username.is_empty()
        && username.len() <= 64
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Validation(FieldError::new(
            "username",
            "1 to 64 letters, digits, '.', '_', '-' or '@'",
        )))
    }
}

/// Checks a new console password; `field` names the form field in the error.
pub fn validate_console_password(password: &str, field: &str) -> Result<(), StoreError> {
    let chars = password.chars().count();
    if chars < MIN_CONSOLE_PASSWORD_CHARS {
        return Err(StoreError::Validation(FieldError::new(
            field,
            format!("at least {MIN_CONSOLE_PASSWORD_CHARS} characters"),
        )));
    }
    if chars > 256 {
        return Err(StoreError::Validation(FieldError::new(
            field,
            "at most 256 characters",
        )));
    }
    Ok(())
}

/// API tokens start with this, so that a leaked one is recognisable in logs and
/// secret scanners.
const TOKEN_PREFIX: &str = "confero_";

fn hash_password(password: &str) -> Result<String, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Crypto(e.to_string()))
}

/// A hash of nothing anyone knows, verified against when the account does not
/// exist, so that "no such user" and "wrong password" take the same time.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&Alphanumeric.sample_string(&mut OsRng, 32)).unwrap_or_default()
    })
}

fn verify_password(password: &str, phc: &str) -> Result<bool, StoreError> {
    let parsed =
        PasswordHash::new(phc).map_err(|e| StoreError::Crypto(format!("stored hash: {e}")))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Runs a CPU-heavy hash (tens of milliseconds) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Crypto(format!("hashing task failed: {e}")))?
}

impl Store {
    /// Creates the console account `admin` if no account exists yet, with
    /// `password` or a generated one. Returns the generated password (to be
    /// shown once in the log) when it made one, `None` otherwise.
    pub async fn ensure_admin(&self, password: Option<&str>) -> Result<Option<String>, StoreError> {
        let generated = password.is_none();
        let password = password
            .map(str::to_owned)
            .unwrap_or_else(|| Alphanumeric.sample_string(&mut OsRng, 20));
        let to_hash = password.clone();
        // Cheap check first (every start after the first ends here); then hash
        // outside the write lock, since argon2 is slow; then re-check under the
        // lock so two nodes starting together create one admin.
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM console_accounts")
            .fetch_one(self.pool())
            .await?
            .try_get("n")?;
        if count > 0 {
            return Ok(None);
        }
        let hash = blocking(move || hash_password(&to_hash)).await?;
        let mut tx = self.write_tx().await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM console_accounts")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if count > 0 {
            return Ok(None);
        }
        let id = next_id(&mut tx, "console_account").await?;
        sqlx::query(
            "INSERT INTO console_accounts (id, username, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind("admin")
        .bind(hash)
        .bind(now_unix())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!("created console account admin");
        Ok(generated.then_some(password))
    }

    /// Checks a console login (argon2). Unknown users and wrong passwords both
    /// answer `false`, in about the same time.
    pub async fn verify_console_login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM console_accounts WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        let stored = match row {
            Some(r) => Some(r.try_get::<String, _>("password_hash")?),
            None => None,
        };
        let password = password.to_owned();
        blocking(move || match stored {
            Some(hash) => verify_password(&password, &hash),
            None => {
                let _ = verify_password(&password, dummy_hash());
                Ok(false)
            }
        })
        .await
    }

    /// Sets (or creates) a console account's password.
    pub async fn set_console_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(), StoreError> {
        let to_hash = password.to_owned();
        let hash = blocking(move || hash_password(&to_hash)).await?;
        let mut tx = self.write_tx().await?;
        let updated =
            sqlx::query("UPDATE console_accounts SET password_hash = $1 WHERE username = $2")
                .bind(&hash)
                .bind(username)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if updated == 0 {
            let id = next_id(&mut tx, "console_account").await?;
            sqlx::query(
                "INSERT INTO console_accounts (id, username, password_hash, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(username)
            .bind(&hash)
            .bind(now_unix())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates an API token. Only its SHA-256 is stored; the token itself is
    /// returned once, here. Tokens are 256 random bits, so a fast hash suffices
    /// (no salt or argon2 needed: there is nothing to brute-force).
    pub async fn create_token(&self, name: &str) -> Result<(i64, String), StoreError> {
        let token = format!(
            "{TOKEN_PREFIX}{}",
            Alphanumeric.sample_string(&mut OsRng, 43)
        );
        let mut tx = self.write_tx().await?;
        let id = next_id(&mut tx, "api_token").await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_sha256, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(name)
        .bind(token_digest(&token))
        .bind(now_unix())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((id, token))
    }

    /// Every token, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM api_tokens ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiToken {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Every console account, oldest first.
    pub async fn list_console_accounts(&self) -> Result<Vec<ConsoleAccount>, StoreError> {
        let rows = sqlx::query("SELECT id, username, created_at FROM console_accounts ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ConsoleAccount {
                    id: r.try_get("id")?,
                    username: r.try_get("username")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Adds a console account; a taken username is a validation error on `username`.
    pub async fn create_console_account(
        &self,
        username: &str,
        password: &str,
    ) -> Result<ConsoleAccount, StoreError> {
        validate_console_username(username)?;
        validate_console_password(password, "password")?;
        let to_hash = password.to_owned();
        let hash = blocking(move || hash_password(&to_hash)).await?;
        let mut tx = self.write_tx().await?;
        let taken = sqlx::query("SELECT id FROM console_accounts WHERE username = $1")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if taken {
            return Err(StoreError::Validation(FieldError::new(
                "username",
                format!("an account named {username} already exists"),
            )));
        }
        let id = next_id(&mut tx, "console_account").await?;
        let created_at = now_unix();
        sqlx::query(
            "INSERT INTO console_accounts (id, username, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(username)
        .bind(hash)
        .bind(created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ConsoleAccount {
            id,
            username: username.to_owned(),
            created_at,
        })
    }

    /// Removes a console account and its sessions. The last account cannot go: nobody
    /// could sign in any more.
    pub async fn delete_console_account(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT username FROM console_accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::Validation(FieldError::new(
                "id",
                format!("no console account {id}"),
            )));
        };
        let username: String = row.try_get("username")?;
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM console_accounts")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if count <= 1 {
            return Err(StoreError::Conflict(FieldError::new(
                "id",
                "the last console account cannot be deleted",
            )));
        }
        sqlx::query("DELETE FROM console_accounts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM console_sessions WHERE username = $1")
            .bind(&username)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn verify_token(&self, token: &str) -> Result<bool, StoreError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 256 {
            return Ok(false);
        }
        let row = sqlx::query("SELECT id FROM api_tokens WHERE token_sha256 = $1")
            .bind(token_digest(token))
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Revokes a token; `false` when there was no such token.
    pub async fn delete_token(&self, id: i64) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n > 0)
    }
}
