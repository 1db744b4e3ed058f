//! The draft (per-entity tables), production revisions, apply and discard.

use confero_pbx::config::{
    self, AdminLeaves, Change, Conference, Config, Destination, EntityKind, IncomingNumber,
    Snapshot, Trunk, TrunkTransport, User,
};
use rand::distributions::{Alphanumeric, DistString};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::input::{
    ConferencePatch, IncomingNumberPatch, NewConference, NewIncomingNumber, NewTrunk, NewUser,
    TrunkPatch, UserPatch,
};
use crate::{next_id, now_unix, Store, StoreError};

type Tx = Transaction<'static, Any>;

fn generate_sip_password() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, 16)
}

fn bool_to_db(b: bool) -> i64 {
    i64::from(b)
}

fn admin_leaves_to_db(a: AdminLeaves) -> &'static str {
    match a {
        AdminLeaves::KeepGoing => "keep_going",
        AdminLeaves::Wait => "wait",
        AdminLeaves::End => "end",
    }
}

fn admin_leaves_from_db(s: &str) -> Result<AdminLeaves, StoreError> {
    Ok(match s {
        "keep_going" => AdminLeaves::KeepGoing,
        "wait" => AdminLeaves::Wait,
        "end" => AdminLeaves::End,
        other => {
            return Err(StoreError::corrupt(format!(
                "when_admin_leaves = {other:?}"
            )))
        }
    })
}

fn transport_to_db(t: TrunkTransport) -> &'static str {
    match t {
        TrunkTransport::Udp => "udp",
        TrunkTransport::Tcp => "tcp",
        TrunkTransport::Tls => "tls",
    }
}

fn transport_from_db(s: &str) -> Result<TrunkTransport, StoreError> {
    Ok(match s {
        "udp" => TrunkTransport::Udp,
        "tcp" => TrunkTransport::Tcp,
        "tls" => TrunkTransport::Tls,
        other => return Err(StoreError::corrupt(format!("trunk transport = {other:?}"))),
    })
}

fn user_from_row(r: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        extension: r.try_get("extension")?,
        sip_username: r.try_get("sip_username")?,
        sip_password: r.try_get("sip_password")?,
    })
}

fn conference_from_row(r: &AnyRow) -> Result<Conference, StoreError> {
    Ok(Conference {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        extension: r.try_get("extension")?,
        access_code: r.try_get("access_code")?,
        admin_extension: r.try_get("admin_extension")?,
        wait_for_admin: r.try_get::<i64, _>("wait_for_admin")? != 0,
        when_admin_leaves: admin_leaves_from_db(&r.try_get::<String, _>("when_admin_leaves")?)?,
    })
}

fn incoming_number_from_row(r: &AnyRow) -> Result<IncomingNumber, StoreError> {
    let json: String = r.try_get("destination_json")?;
    Ok(IncomingNumber {
        id: r.try_get("id")?,
        number: r.try_get("number")?,
        destination: serde_json::from_str(&json).map_err(|e| {
            StoreError::corrupt(format!("incoming number destination {json:?}: {e}"))
        })?,
    })
}

fn trunk_from_row(r: &AnyRow) -> Result<Trunk, StoreError> {
    let port: i64 = r.try_get("port")?;
    Ok(Trunk {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        host: r.try_get("host")?,
        port: u16::try_from(port).map_err(|_| StoreError::corrupt(format!("trunk port {port}")))?,
        transport: transport_from_db(&r.try_get::<String, _>("transport")?)?,
        username: r.try_get("username")?,
        password: r.try_get("password")?,
        register: r.try_get::<i64, _>("register_enabled")? != 0,
        caller_id: r.try_get("caller_id")?,
        dial_prefix: r.try_get("dial_prefix")?,
    })
}

async fn load_draft(tx: &mut Tx) -> Result<Config, StoreError> {
    let users = sqlx::query(
        "SELECT id, name, extension, sip_username, sip_password FROM users ORDER BY id",
    )
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(user_from_row)
    .collect::<Result<_, _>>()?;
    let conferences = sqlx::query(
        "SELECT id, name, extension, access_code, admin_extension, wait_for_admin, when_admin_leaves
         FROM conferences ORDER BY id",
    )
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(conference_from_row)
    .collect::<Result<_, _>>()?;
    let incoming_numbers =
        sqlx::query("SELECT id, number, destination_json FROM incoming_numbers ORDER BY id")
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(incoming_number_from_row)
            .collect::<Result<_, _>>()?;
    let trunks = sqlx::query(
        "SELECT id, name, host, port, transport, username, password, register_enabled, caller_id, dial_prefix
         FROM trunks ORDER BY id",
    )
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(trunk_from_row)
    .collect::<Result<_, _>>()?;
    Ok(Config {
        users,
        conferences,
        incoming_numbers,
        trunks,
    })
}

async fn load_production(tx: &mut Tx) -> Result<Option<Snapshot>, StoreError> {
    let Some(row) = sqlx::query("SELECT id, config_json FROM revisions ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(None);
    };
    let revision: i64 = row.try_get("id")?;
    let json: String = row.try_get("config_json")?;
    let config = serde_json::from_str(&json)
        .map_err(|e| StoreError::corrupt(format!("revision {revision} does not parse: {e}")))?;
    Ok(Some(Snapshot { revision, config }))
}

async fn insert_user(tx: &mut Tx, u: &User) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO users (id, name, extension, sip_username, sip_password) VALUES ($1, $2, $3, $4, $5)")
        .bind(u.id)
        .bind(&u.name)
        .bind(&u.extension)
        .bind(&u.sip_username)
        .bind(&u.sip_password)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_conference(tx: &mut Tx, c: &Conference) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO conferences (id, name, extension, access_code, admin_extension, wait_for_admin, when_admin_leaves)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(c.id)
    .bind(&c.name)
    .bind(&c.extension)
    .bind(c.access_code.clone())
    .bind(c.admin_extension.clone())
    .bind(bool_to_db(c.wait_for_admin))
    .bind(admin_leaves_to_db(c.when_admin_leaves))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn destination_json(d: &Destination) -> Result<String, StoreError> {
    serde_json::to_string(d).map_err(|e| StoreError::corrupt(format!("destination: {e}")))
}

async fn insert_incoming_number(tx: &mut Tx, n: &IncomingNumber) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO incoming_numbers (id, number, destination_json) VALUES ($1, $2, $3)")
        .bind(n.id)
        .bind(&n.number)
        .bind(destination_json(&n.destination)?)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_trunk(tx: &mut Tx, t: &Trunk) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO trunks (id, name, host, port, transport, username, password, register_enabled, caller_id, dial_prefix)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(t.id)
    .bind(&t.name)
    .bind(&t.host)
    .bind(i64::from(t.port))
    .bind(transport_to_db(t.transport))
    .bind(t.username.clone())
    .bind(t.password.clone())
    .bind(bool_to_db(t.register))
    .bind(t.caller_id.clone())
    .bind(t.dial_prefix.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces one row: delete then insert keeps one code path for insert and
/// update, and both run inside the caller's transaction.
async fn delete_row(tx: &mut Tx, entity: EntityKind, id: i64) -> Result<(), StoreError> {
    let sql = match entity {
        EntityKind::User => "DELETE FROM users WHERE id = $1",
        EntityKind::Conference => "DELETE FROM conferences WHERE id = $1",
        EntityKind::IncomingNumber => "DELETE FROM incoming_numbers WHERE id = $1",
        EntityKind::Trunk => "DELETE FROM trunks WHERE id = $1",
    };
    sqlx::query(sql).bind(id).execute(&mut **tx).await?;
    Ok(())
}

fn not_found(entity: EntityKind, id: i64) -> StoreError {
    StoreError::NotFound { entity, id }
}

impl Store {
    pub async fn draft(&self) -> Result<Config, StoreError> {
        let mut tx = self.read_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        tx.commit().await?;
        Ok(cfg)
    }

    /// The newest published revision, or `None` before the first apply.
    pub async fn production(&self) -> Result<Option<Snapshot>, StoreError> {
        let mut tx = self.read_tx().await?;
        let snap = load_production(&mut tx).await?;
        tx.commit().await?;
        Ok(snap)
    }

    /// What `apply` would publish: diff(production, draft).
    pub async fn pending_changes(&self) -> Result<Vec<Change>, StoreError> {
        let mut tx = self.read_tx().await?;
        let draft = load_draft(&mut tx).await?;
        let prod = load_production(&mut tx)
            .await?
            .map(|s| s.config)
            .unwrap_or_default();
        tx.commit().await?;
        Ok(config::diff(&prod, &draft))
    }

    /// Publishes the whole draft as a new production revision, atomically.
    ///
    /// Refuses with [`StoreError::InvalidDraft`] (listing every problem) if the
    /// draft is inconsistent. When the draft equals production nothing is
    /// written and the current revision is returned, so a double click on
    /// "Apply changes" does not create empty revisions.
    pub async fn apply(&self) -> Result<Snapshot, StoreError> {
        let mut tx = self.write_tx().await?;
        let draft = load_draft(&mut tx).await?;
        draft.validate().map_err(StoreError::InvalidDraft)?;
        let current = load_production(&mut tx).await?;
        if let Some(current) = current.as_ref().filter(|c| c.config == draft) {
            let snap = current.clone();
            tx.rollback().await?;
            return Ok(snap);
        }
        let revision = current.map_or(1, |c| c.revision + 1);
        let json = serde_json::to_string(&draft)
            .map_err(|e| StoreError::corrupt(format!("serializing the draft: {e}")))?;
        sqlx::query("INSERT INTO revisions (id, created_at, config_json) VALUES ($1, $2, $3)")
            .bind(revision)
            .bind(now_unix())
            .bind(json)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(revision, "configuration applied");
        Ok(Snapshot {
            revision,
            config: draft,
        })
    }

    /// Throws the draft away: rewrites it from production (empty before the first apply).
    pub async fn discard(&self) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let prod = load_production(&mut tx)
            .await?
            .map(|s| s.config)
            .unwrap_or_default();
        for table in ["users", "conferences", "incoming_numbers", "trunks"] {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
        for u in &prod.users {
            insert_user(&mut tx, u).await?;
        }
        for c in &prod.conferences {
            insert_conference(&mut tx, c).await?;
        }
        for n in &prod.incoming_numbers {
            insert_incoming_number(&mut tx, n).await?;
        }
        for t in &prod.trunks {
            insert_trunk(&mut tx, t).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- users ----------------------------------------------------------

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        Ok(self.draft().await?.users)
    }

    pub async fn get_user(&self, id: i64) -> Result<User, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, extension, sip_username, sip_password FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| not_found(EntityKind::User, id))?;
        user_from_row(&row)
    }

    /// Validates against the draft; generates `sip_password` (16 letters and
    /// digits) when absent; `sip_username` defaults to the extension.
    pub async fn create_user(&self, new: NewUser) -> Result<User, StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        let user = User {
            id: next_id(&mut tx, "user").await?,
            sip_username: new.sip_username.unwrap_or_else(|| new.extension.clone()),
            sip_password: new.sip_password.unwrap_or_else(generate_sip_password),
            name: new.name,
            extension: new.extension,
        };
        config::validate_user(&cfg, &user).map_err(StoreError::Validation)?;
        insert_user(&mut tx, &user).await?;
        tx.commit().await?;
        Ok(user)
    }

    pub async fn update_user(&self, id: i64, patch: UserPatch) -> Result<User, StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        let mut user = cfg
            .user(id)
            .cloned()
            .ok_or_else(|| not_found(EntityKind::User, id))?;
        if let Some(v) = patch.name {
            user.name = v;
        }
        if let Some(v) = patch.extension {
            user.extension = v;
        }
        if let Some(v) = patch.sip_username {
            user.sip_username = v;
        }
        if let Some(v) = patch.sip_password {
            user.sip_password = v;
        }
        config::validate_user(&cfg, &user).map_err(StoreError::Validation)?;
        config::check_user_removal(&cfg, id, Some(&user.extension))
            .map_err(StoreError::Conflict)?;
        delete_row(&mut tx, EntityKind::User, id).await?;
        insert_user(&mut tx, &user).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Sets a newly generated SIP password and returns the user with it (the only
    /// other time the password is shown besides creation).
    pub async fn reset_user_password(&self, id: i64) -> Result<User, StoreError> {
        self.update_user(
            id,
            UserPatch {
                sip_password: Some(generate_sip_password()),
                ..UserPatch::default()
            },
        )
        .await
    }

    /// Refused with [`StoreError::Conflict`] while a conference or an incoming
    /// number refers to the user's extension.
    pub async fn delete_user(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        if cfg.user(id).is_none() {
            return Err(not_found(EntityKind::User, id));
        }
        config::check_user_removal(&cfg, id, None).map_err(StoreError::Conflict)?;
        delete_row(&mut tx, EntityKind::User, id).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- conferences ----------------------------------------------------

    pub async fn list_conferences(&self) -> Result<Vec<Conference>, StoreError> {
        Ok(self.draft().await?.conferences)
    }

    pub async fn get_conference(&self, id: i64) -> Result<Conference, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, extension, access_code, admin_extension, wait_for_admin, when_admin_leaves
             FROM conferences WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| not_found(EntityKind::Conference, id))?;
        conference_from_row(&row)
    }

    pub async fn create_conference(&self, new: NewConference) -> Result<Conference, StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        let conf = Conference {
            id: next_id(&mut tx, "conference").await?,
            name: new.name,
            extension: new.extension,
            access_code: new.access_code,
            admin_extension: new.admin_extension,
            wait_for_admin: new.wait_for_admin,
            when_admin_leaves: new.when_admin_leaves,
        };
        config::validate_conference(&cfg, &conf).map_err(StoreError::Validation)?;
        insert_conference(&mut tx, &conf).await?;
        tx.commit().await?;
        Ok(conf)
    }

    pub async fn update_conference(
        &self,
        id: i64,
        patch: ConferencePatch,
    ) -> Result<Conference, StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        let mut conf = cfg
            .conference(id)
            .cloned()
            .ok_or_else(|| not_found(EntityKind::Conference, id))?;
        if let Some(v) = patch.name {
            conf.name = v;
        }
        if let Some(v) = patch.extension {
            conf.extension = v;
        }
        if let Some(v) = patch.access_code {
            conf.access_code = v;
        }
        if let Some(v) = patch.admin_extension {
            conf.admin_extension = v;
        }
        if let Some(v) = patch.wait_for_admin {
            conf.wait_for_admin = v;
        }
        if let Some(v) = patch.when_admin_leaves {
            conf.when_admin_leaves = v;
        }
        config::validate_conference(&cfg, &conf).map_err(StoreError::Validation)?;
        config::check_conference_removal(&cfg, id, Some(&conf.extension))
            .map_err(StoreError::Conflict)?;
        delete_row(&mut tx, EntityKind::Conference, id).await?;
        insert_conference(&mut tx, &conf).await?;
        tx.commit().await?;
        Ok(conf)
    }

    /// Refused with [`StoreError::Conflict`] while an incoming number routes to the room.
    pub async fn delete_conference(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        if cfg.conference(id).is_none() {
            return Err(not_found(EntityKind::Conference, id));
        }
        config::check_conference_removal(&cfg, id, None).map_err(StoreError::Conflict)?;
        delete_row(&mut tx, EntityKind::Conference, id).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- incoming numbers -----------------------------------------------

    pub async fn list_incoming_numbers(&self) -> Result<Vec<IncomingNumber>, StoreError> {
        Ok(self.draft().await?.incoming_numbers)
    }

    pub async fn get_incoming_number(&self, id: i64) -> Result<IncomingNumber, StoreError> {
        let row =
            sqlx::query("SELECT id, number, destination_json FROM incoming_numbers WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .ok_or_else(|| not_found(EntityKind::IncomingNumber, id))?;
        incoming_number_from_row(&row)
    }

    pub async fn create_incoming_number(
        &self,
        new: NewIncomingNumber,
    ) -> Result<IncomingNumber, StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        let n = IncomingNumber {
            id: next_id(&mut tx, "incoming_number").await?,
            number: new.number,
            destination: new.destination,
        };
        config::validate_incoming_number(&cfg, &n).map_err(StoreError::Validation)?;
        insert_incoming_number(&mut tx, &n).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn update_incoming_number(
        &self,
        id: i64,
        patch: IncomingNumberPatch,
    ) -> Result<IncomingNumber, StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        let mut n = cfg
            .incoming_number(id)
            .cloned()
            .ok_or_else(|| not_found(EntityKind::IncomingNumber, id))?;
        if let Some(v) = patch.number {
            n.number = v;
        }
        if let Some(v) = patch.destination {
            n.destination = v;
        }
        config::validate_incoming_number(&cfg, &n).map_err(StoreError::Validation)?;
        delete_row(&mut tx, EntityKind::IncomingNumber, id).await?;
        insert_incoming_number(&mut tx, &n).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn delete_incoming_number(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        if cfg.incoming_number(id).is_none() {
            return Err(not_found(EntityKind::IncomingNumber, id));
        }
        delete_row(&mut tx, EntityKind::IncomingNumber, id).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- trunks ---------------------------------------------------------

    pub async fn list_trunks(&self) -> Result<Vec<Trunk>, StoreError> {
        Ok(self.draft().await?.trunks)
    }

    pub async fn get_trunk(&self, id: i64) -> Result<Trunk, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, host, port, transport, username, password, register_enabled, caller_id, dial_prefix
             FROM trunks WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| not_found(EntityKind::Trunk, id))?;
        trunk_from_row(&row)
    }

    pub async fn create_trunk(&self, new: NewTrunk) -> Result<Trunk, StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        let t = Trunk {
            id: next_id(&mut tx, "trunk").await?,
            name: new.name,
            host: new.host,
            port: new.port,
            transport: new.transport,
            username: new.username,
            password: new.password,
            register: new.register,
            caller_id: new.caller_id,
            dial_prefix: new.dial_prefix,
        };
        config::validate_trunk(&cfg, &t).map_err(StoreError::Validation)?;
        insert_trunk(&mut tx, &t).await?;
        tx.commit().await?;
        Ok(t)
    }

    pub async fn update_trunk(&self, id: i64, patch: TrunkPatch) -> Result<Trunk, StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        let mut t = cfg
            .trunk(id)
            .cloned()
            .ok_or_else(|| not_found(EntityKind::Trunk, id))?;
        if let Some(v) = patch.name {
            t.name = v;
        }
        if let Some(v) = patch.host {
            t.host = v;
        }
        if let Some(v) = patch.port {
            t.port = v;
        }
        if let Some(v) = patch.transport {
            t.transport = v;
        }
        if let Some(v) = patch.username {
            t.username = v;
        }
        if let Some(v) = patch.password {
            t.password = v;
        }
        if let Some(v) = patch.register {
            t.register = v;
        }
        if let Some(v) = patch.caller_id {
            t.caller_id = v;
        }
        if let Some(v) = patch.dial_prefix {
            t.dial_prefix = v;
        }
        config::validate_trunk(&cfg, &t).map_err(StoreError::Validation)?;
        delete_row(&mut tx, EntityKind::Trunk, id).await?;
        insert_trunk(&mut tx, &t).await?;
        tx.commit().await?;
        Ok(t)
    }

    pub async fn delete_trunk(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let cfg = load_draft(&mut tx).await?;
        if cfg.trunk(id).is_none() {
            return Err(not_found(EntityKind::Trunk, id));
        }
        delete_row(&mut tx, EntityKind::Trunk, id).await?;
        tx.commit().await?;
        Ok(())
    }
}
