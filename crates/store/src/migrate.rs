//! Schema migrations, one list for both backends.
//!
//! `sqlx::migrate!` wants one folder per backend once `Any` is involved; our
//! schema only uses types both understand (BIGINT, TEXT), so one ordered list
//! of statements serves both and cannot drift. Applied versions are recorded in
//! `schema_migrations`. All pending migrations run in one transaction (both
//! SQLite and PostgreSQL have transactional DDL), under a lock so that several
//! nodes starting together against one PostgreSQL do not race.

use sqlx::{Any, AnyPool, Row, Transaction};

use crate::{now_unix, Backend, StoreError};

/// `(version, statements)`. Append only: never edit a published migration.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            // Every draft write starts by bumping this row: it serializes writers
            // (a row lock on PostgreSQL; SQLite takes its write lock on BEGIN IMMEDIATE anyway).
            "CREATE TABLE store_lock (id BIGINT PRIMARY KEY, counter BIGINT NOT NULL)",
            "INSERT INTO store_lock (id, counter) VALUES (1, 0)",
            // Ids are handed out here, never reused after a delete or a discard, so a
            // client holding an id can never silently address a different entity.
            "CREATE TABLE id_sequences (entity TEXT PRIMARY KEY, next_id BIGINT NOT NULL)",
            "INSERT INTO id_sequences (entity, next_id) VALUES ('user', 1)",
            "INSERT INTO id_sequences (entity, next_id) VALUES ('conference', 1)",
            "INSERT INTO id_sequences (entity, next_id) VALUES ('incoming_number', 1)",
            "INSERT INTO id_sequences (entity, next_id) VALUES ('trunk', 1)",
            "INSERT INTO id_sequences (entity, next_id) VALUES ('console_account', 1)",
            "INSERT INTO id_sequences (entity, next_id) VALUES ('api_token', 1)",
            // The draft, one table per entity.
            "CREATE TABLE users (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            extension TEXT NOT NULL UNIQUE,
            sip_username TEXT NOT NULL UNIQUE,
            sip_password TEXT NOT NULL
        )",
            "CREATE TABLE conferences (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            extension TEXT NOT NULL UNIQUE,
            access_code TEXT,
            admin_extension TEXT,
            wait_for_admin BIGINT NOT NULL,
            when_admin_leaves TEXT NOT NULL
        )",
            "CREATE TABLE incoming_numbers (
            id BIGINT PRIMARY KEY,
            number TEXT NOT NULL UNIQUE,
            destination_json TEXT NOT NULL
        )",
            "CREATE TABLE trunks (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            host TEXT NOT NULL,
            port BIGINT NOT NULL,
            transport TEXT NOT NULL,
            username TEXT,
            password TEXT,
            register_enabled BIGINT NOT NULL,
            caller_id TEXT
        )",
            // Production: the newest row is what runs.
            "CREATE TABLE revisions (
            id BIGINT PRIMARY KEY,
            created_at BIGINT NOT NULL,
            config_json TEXT NOT NULL
        )",
            "CREATE TABLE console_accounts (
            id BIGINT PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
            "CREATE TABLE api_tokens (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            token_sha256 TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL
        )",
            "CREATE TABLE registrar_bindings (
            aor TEXT NOT NULL,
            contact_uri TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            call_id TEXT NOT NULL,
            cseq BIGINT NOT NULL,
            transport TEXT NOT NULL,
            source TEXT NOT NULL,
            user_agent TEXT,
            PRIMARY KEY (aor, contact_uri)
        )",
        ],
    ),
    (
        2,
        &[
            // Console sign-ins. Only the SHA-256 of the cookie value is kept, so a copy of
            // the database does not hand out live sessions; `flash` holds the one message
            // shown by the next page (after a redirect), then cleared.
            "CREATE TABLE console_sessions (
            id_sha256 TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            last_seen_at BIGINT NOT NULL,
            flash TEXT
        )",
            "CREATE INDEX console_sessions_username ON console_sessions (username)",
        ],
    ),
    (
        3,
        &[
            // Numbers dialled with this prefix leave through this trunk (NULL: the default
            // trunk's numbers).
            "ALTER TABLE trunks ADD COLUMN dial_prefix TEXT",
        ],
    ),
];

pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let mut tx: Transaction<'static, Any> = match backend {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            tx
        }
    };
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await?
        .try_get("v")?;
    for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying database migration");
        for sql in *statements {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(*version)
            .bind(now_unix())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
