//! Console sessions: the cookie a signed-in administrator's browser holds.
//!
//! Sessions live in the database rather than in memory so that a restart or a second
//! node behind the same PostgreSQL keeps everyone signed in. The cookie value is 256
//! random bits; only its SHA-256 is stored. Each session has its own CSRF token, which
//! every state-changing request from the console must carry.

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{now_unix, Store, StoreError};

/// A session unused for this long is over (the administrator signs in again).
pub const SESSION_IDLE_SECS: i64 = 8 * 3600;
/// However busy, a session ends this long after sign-in.
pub const SESSION_MAX_SECS: i64 = 7 * 24 * 3600;
/// `last_seen_at` is rewritten at most this often, so browsing costs no write per page.
const TOUCH_EVERY_SECS: i64 = 300;
/// Longest flash message kept (they are short sentences; this bounds a bug, not a user).
const MAX_FLASH_BYTES: usize = 4096;

/// A live console session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub username: String,
    /// Must come back with every form post (`_csrf`) and API write (`X-CSRF-Token`).
    pub csrf_token: String,
    pub created_at: i64,
}

fn digest(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

impl Store {
    /// Starts a session for `username`; returns the cookie value (shown to the browser
    /// once, never stored) and the session.
    pub async fn create_session(&self, username: &str) -> Result<(String, Session), StoreError> {
        let cookie = Alphanumeric.sample_string(&mut OsRng, 43);
        let csrf_token = Alphanumeric.sample_string(&mut OsRng, 32);
        let now = now_unix();
        // Expired sessions are swept here: sign-ins are rare, so this costs nothing.
        sqlx::query("DELETE FROM console_sessions WHERE last_seen_at < $1 OR created_at < $2")
            .bind(now - SESSION_IDLE_SECS)
            .bind(now - SESSION_MAX_SECS)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_sha256, username, csrf_token, created_at, last_seen_at, flash) VALUES ($1, $2, $3, $4, $4, NULL)",
        )
        .bind(digest(&cookie))
        .bind(username)
        .bind(&csrf_token)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok((
            cookie,
            Session {
                username: username.to_owned(),
                csrf_token,
                created_at: now,
            },
        ))
    }

    /// The session behind a cookie value, if it is still valid; refreshes its idle timer.
    pub async fn session(&self, cookie: &str) -> Result<Option<Session>, StoreError> {
        if cookie.is_empty() || cookie.len() > 128 {
            return Ok(None);
        }
        let key = digest(cookie);
        let row = sqlx::query(
            "SELECT s.username, s.csrf_token, s.created_at, s.last_seen_at FROM console_sessions s
             JOIN console_accounts a ON a.username = s.username WHERE s.id_sha256 = $1",
        )
        .bind(&key)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let created_at: i64 = row.try_get("created_at")?;
        let last_seen_at: i64 = row.try_get("last_seen_at")?;
        let now = now_unix();
        if now - last_seen_at > SESSION_IDLE_SECS || now - created_at > SESSION_MAX_SECS {
            self.end_session(cookie).await?;
            return Ok(None);
        }
        if now - last_seen_at > TOUCH_EVERY_SECS {
            sqlx::query("UPDATE console_sessions SET last_seen_at = $1 WHERE id_sha256 = $2")
                .bind(now)
                .bind(&key)
                .execute(self.pool())
                .await?;
        }
        Ok(Some(Session {
            username: row.try_get("username")?,
            csrf_token: row.try_get("csrf_token")?,
            created_at,
        }))
    }

    /// Signs out: the cookie stops working at once.
    pub async fn end_session(&self, cookie: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE id_sha256 = $1")
            .bind(digest(cookie))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Ends every session of `username` except the one behind `keep` (after a password
    /// change, the other browsers must sign in again).
    pub async fn end_sessions_of(
        &self,
        username: &str,
        keep: Option<&str>,
    ) -> Result<u64, StoreError> {
        let keep = keep.map(digest).unwrap_or_default();
        Ok(
            sqlx::query("DELETE FROM console_sessions WHERE username = $1 AND id_sha256 <> $2")
                .bind(username)
                .bind(keep)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    /// Leaves a message for the next page this session shows.
    pub async fn set_flash(&self, cookie: &str, message: &str) -> Result<(), StoreError> {
        let mut message = message.to_owned();
        if message.len() > MAX_FLASH_BYTES {
            let mut end = MAX_FLASH_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        sqlx::query("UPDATE console_sessions SET flash = $1 WHERE id_sha256 = $2")
            .bind(message)
            .bind(digest(cookie))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The pending message, removed as it is read (shown once; two pages loading at the
    /// same instant may both show it, which is harmless).
    pub async fn take_flash(&self, cookie: &str) -> Result<Option<String>, StoreError> {
        let key = digest(cookie);
        let flash: Option<String> =
            sqlx::query("SELECT flash FROM console_sessions WHERE id_sha256 = $1")
                .bind(&key)
                .fetch_optional(self.pool())
                .await?
                .map(|r| r.try_get("flash"))
                .transpose()?
                .flatten();
        if let Some(f) = &flash {
            sqlx::query(
                "UPDATE console_sessions SET flash = NULL WHERE id_sha256 = $1 AND flash = $2",
            )
            .bind(&key)
            .bind(f)
            .execute(self.pool())
            .await?;
        }
        Ok(flash)
    }
}
