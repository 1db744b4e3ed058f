//! Registrar bindings, persisted so that phones stay reachable across a restart
//! (a phone re-registers only every hour or so) and, with PostgreSQL, so that
//! every node knows where a user's devices are.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Store, StoreError};

/// One contact registered for an address of record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBinding {
    /// The SIP username the binding belongs to.
    pub aor: String,
    pub contact_uri: String,
    pub expires_at_unix: i64,
    pub call_id: String,
    pub cseq: u32,
    pub transport: String,
    /// `ip:port` the REGISTER came from (where requests must be sent behind NAT).
    pub source: String,
    pub user_agent: Option<String>,
}

const UPSERT_BINDING: &str = "INSERT INTO registrar_bindings
         (aor, contact_uri, expires_at, call_id, cseq, transport, source, user_agent)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (aor, contact_uri) DO UPDATE SET
         expires_at = excluded.expires_at,
         call_id = excluded.call_id,
         cseq = excluded.cseq,
         transport = excluded.transport,
         source = excluded.source,
         user_agent = excluded.user_agent";

fn binding_from_row(r: &AnyRow) -> Result<StoredBinding, StoreError> {
    let cseq: i64 = r.try_get("cseq")?;
    Ok(StoredBinding {
        aor: r.try_get("aor")?,
        contact_uri: r.try_get("contact_uri")?,
        expires_at_unix: r.try_get("expires_at")?,
        call_id: r.try_get("call_id")?,
        cseq: u32::try_from(cseq)
            .map_err(|_| StoreError::corrupt(format!("binding cseq {cseq}")))?,
        transport: r.try_get("transport")?,
        source: r.try_get("source")?,
        user_agent: r.try_get("user_agent")?,
    })
}

impl Store {
    /// Inserts or replaces the binding for `(aor, contact_uri)`.
    pub async fn save_binding(&self, b: &StoredBinding) -> Result<(), StoreError> {
        sqlx::query(UPSERT_BINDING)
            .bind(&b.aor)
            .bind(&b.contact_uri)
            .bind(b.expires_at_unix)
            .bind(&b.call_id)
            .bind(i64::from(b.cseq))
            .bind(&b.transport)
            .bind(&b.source)
            .bind(b.user_agent.clone())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Writes many binding changes in one transaction: the registrar produces one change
    /// per REGISTER, and one commit each would cap registrations at the disk's sync rate.
    pub async fn save_bindings_batch(
        &self,
        upserts: &[StoredBinding],
        deletes: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for b in upserts {
            sqlx::query(UPSERT_BINDING)
                .bind(&b.aor)
                .bind(&b.contact_uri)
                .bind(b.expires_at_unix)
                .bind(&b.call_id)
                .bind(i64::from(b.cseq))
                .bind(&b.transport)
                .bind(&b.source)
                .bind(b.user_agent.clone())
                .execute(&mut *tx)
                .await?;
        }
        for (aor, contact) in deletes {
            sqlx::query("DELETE FROM registrar_bindings WHERE aor = $1 AND contact_uri = $2")
                .bind(aor)
                .bind(contact)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_binding(&self, aor: &str, contact_uri: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM registrar_bindings WHERE aor = $1 AND contact_uri = $2")
            .bind(aor)
            .bind(contact_uri)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Every stored binding, expired ones included: the registrar decides what
    /// "now" is (see [`Store::delete_expired_bindings`]).
    pub async fn load_bindings(&self) -> Result<Vec<StoredBinding>, StoreError> {
        sqlx::query(
            "SELECT aor, contact_uri, expires_at, call_id, cseq, transport, source, user_agent
             FROM registrar_bindings ORDER BY aor, contact_uri",
        )
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(binding_from_row)
        .collect()
    }

    /// Removes bindings that expired at or before `now_unix`; returns how many.
    pub async fn delete_expired_bindings(&self, now_unix: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM registrar_bindings WHERE expires_at <= $1")
                .bind(now_unix)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}
