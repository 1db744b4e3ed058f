//! Pending changes: what *Apply changes* would put in production, field by field, and
//! the buttons that apply or discard them.

use axum::response::{IntoResponse, Response};
use confero_pbx::config::{ChangeKind, Config, EntityKind};
use maud::{html, Markup};
use serde_json::Value;

use super::layout::{csrf_field, page, store_error, Section};
use super::session::{Ctx, Posted};
use super::{done, PageError};

/// One field that differs between production and the draft.
#[derive(Debug, PartialEq, Eq)]
struct FieldChange {
    label: &'static str,
    before: String,
    after: String,
}

fn label(entity: EntityKind, field: &str) -> &'static str {
    match (entity, field) {
        (_, "name") => "Name",
        (EntityKind::Conference, "extension") => "Internal extension",
        (_, "extension") => "Extension",
        (_, "access_code") => "Access code",
        (_, "admin_extension") => "Administrator extension",
        (_, "wait_for_admin") => "Wait for the administrator",
        (_, "when_admin_leaves") => "When the administrator leaves",
        (_, "sip_username") => "SIP username",
        (_, "sip_password") => "SIP password",
        (_, "number") => "Number",
        (_, "destination") => "Destination",
        (_, "host") => "Host",
        (_, "port") => "Port",
        (_, "transport") => "Transport",
        (_, "username") => "Username",
        (_, "password") => "Password",
        (_, "register") => "Register",
        (_, "caller_id") => "Caller ID",
        (_, "dial_prefix") => "Dial prefix",
        _ => "Other",
    }
}

/// A stored value in words; `rooms` names conferences that destinations point at.
fn describe(field: &str, v: &Value, rooms: &Config) -> String {
    match (field, v) {
        // Secrets are never shown, not even here.
        ("sip_password" | "password", Value::Null) => "none".into(),
        ("sip_password" | "password", _) => "••••••".into(),
        (_, Value::Null) => "none".into(),
        (_, Value::Bool(b)) => if *b { "Yes" } else { "No" }.into(),
        (_, Value::String(s)) if s.is_empty() => "none".into(),
        ("when_admin_leaves", Value::String(s)) => match s.as_str() {
            "wait" => "the others wait",
            "keep_going" => "the conference goes on",
            "end" => "the conference ends",
            other => other,
        }
        .into(),
        (_, Value::String(s)) => s.clone(),
        ("destination", Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("hang_up") => "Hang up".into(),
            Some("extension") => format!(
                "Extension {}",
                o.get("extension").and_then(Value::as_str).unwrap_or("?")
            ),
            Some("conference") => {
                let id = o.get("conference_id").and_then(Value::as_i64).unwrap_or(0);
                match rooms.conferences.iter().find(|c| c.id == id) {
                    Some(c) => format!("Conference {} ({})", c.name, c.extension),
                    None => format!("Conference {id}"),
                }
            }
            _ => "Not configured".into(),
        },
        (_, other) => other.to_string(),
    }
}

/// The entity `id` of kind `entity` in `cfg`, as JSON.
fn entity_json(cfg: &Config, entity: EntityKind, id: i64) -> Option<Value> {
    let value = match entity {
        EntityKind::User => serde_json::to_value(cfg.users.iter().find(|e| e.id == id)?),
        EntityKind::Conference => {
            serde_json::to_value(cfg.conferences.iter().find(|e| e.id == id)?)
        }
        EntityKind::IncomingNumber => {
            serde_json::to_value(cfg.incoming_numbers.iter().find(|e| e.id == id)?)
        }
        EntityKind::Trunk => serde_json::to_value(cfg.trunks.iter().find(|e| e.id == id)?),
    };
    value.ok()
}

/// The fields of a modified entity that differ, in the entity's own field order.
fn field_changes(
    entity: EntityKind,
    id: i64,
    production: &Config,
    draft: &Config,
) -> Vec<FieldChange> {
    let (Some(Value::Object(before)), Some(Value::Object(after))) = (
        entity_json(production, entity, id),
        entity_json(draft, entity, id),
    ) else {
        return Vec::new();
    };
    after
        .iter()
        .filter(|(k, _)| k.as_str() != "id")
        .filter_map(|(k, new)| {
            let old = before.get(k).unwrap_or(&Value::Null);
            (old != new).then(|| FieldChange {
                label: label(entity, k),
                before: describe(k, old, production),
                after: describe(k, new, draft),
            })
        })
        .collect()
}

fn entity_text(e: EntityKind) -> &'static str {
    match e {
        EntityKind::User => "User",
        EntityKind::Conference => "Conference",
        EntityKind::IncomingNumber => "Incoming number",
        EntityKind::Trunk => "Trunk",
    }
}

/// `GET /changes`.
pub(crate) async fn list(ctx: Ctx) -> Result<Response, PageError> {
    let changes = ctx.state.store.pending_changes().await?;
    let draft = ctx.state.store.draft().await?;
    let production = ctx.state.store.production().await?;
    let revision = production.as_ref().map_or(0, |p| p.revision);
    let production = production.map(|p| p.config).unwrap_or_default();
    let body = html! {
        div.page-head {
            h1 { "Pending changes" }
            @if !changes.is_empty() {
                div.head-actions {
                    form method="post" action="/changes/discard" data-confirm="Throw away every pending change and go back to what is in production?" data-confirm-ok="Discard changes" {
                        (csrf_field(&ctx))
                        button.btn.btn-danger-quiet type="submit" { "Discard changes" }
                    }
                    form method="post" action="/changes/apply" {
                        (csrf_field(&ctx))
                        button.btn.btn-primary type="submit" { "Apply changes" }
                    }
                }
            }
        }
        p.muted {
            "Saved changes wait here until you apply them; calls in progress are not interrupted. "
            @if revision > 0 { "Production is at revision " (revision) "." } @else { "Nothing has been applied yet." }
        }
        @if changes.is_empty() {
            div.card.empty { p { "No pending changes: production is up to date." } }
        } @else {
            div.card.table-wrap {
                table.data.changes {
                    thead { tr {
                        th scope="col" { "Change" }
                        th scope="col" { "What" }
                        th scope="col" { "Details" }
                    } }
                    tbody {
                        @for c in &changes {
                            tr data-change=(format!("{}-{}", c.entity, c.id)) {
                                td { (kind_badge(c.kind)) }
                                td { span.muted { (entity_text(c.entity)) } " " span.strong { (c.summary) } }
                                td {
                                    @if c.kind == ChangeKind::Modified {
                                        ul.diff {
                                            @for f in field_changes(c.entity, c.id, &production, &draft) {
                                                li { span.muted { (f.label) ": " } del { (f.before) } " → " ins { (f.after) } }
                                            }
                                        }
                                    } @else if c.kind == ChangeKind::Added {
                                        span.muted { "New" }
                                    } @else {
                                        span.muted { "Removed from production when applied" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&ctx, Section::Changes, "Pending changes", body)
        .await?
        .into_response())
}

fn kind_badge(kind: ChangeKind) -> Markup {
    match kind {
        ChangeKind::Added => html! { span.badge.badge-added { "Added" } },
        ChangeKind::Modified => html! { span.badge.badge-changed { "Changed" } },
        ChangeKind::Deleted => html! { span.badge.badge-deleted { "Deleted" } },
    }
}

/// `POST /changes/apply` (the *Apply changes* button of every page).
pub(crate) async fn apply(posted: Posted) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let pending = ctx.state.store.pending_changes().await?.len();
    match ctx.state.apply().await {
        Ok(snapshot) => {
            let what = match pending {
                0 => "Nothing to apply: production was already up to date.".to_owned(),
                1 => format!(
                    "1 change applied: production is now revision {}.",
                    snapshot.revision
                ),
                n => format!(
                    "{n} changes applied: production is now revision {}.",
                    snapshot.revision
                ),
            };
            done(&ctx, "/changes", what).await
        }
        Err(e) => {
            let errors = store_error(e, &[])?;
            done(
                &ctx,
                "/changes",
                format!("The changes were not applied. {}", errors.text()),
            )
            .await
        }
    }
}

/// `POST /changes/discard`.
pub(crate) async fn discard(posted: Posted) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    ctx.state.store.discard().await?;
    done(
        &ctx,
        "/changes",
        "Pending changes discarded: the draft is back to what is in production.",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use confero_pbx::config::{Conference, Destination, IncomingNumber, User};

    fn config() -> Config {
        Config {
            users: vec![User {
                id: 1,
                name: "Alice".into(),
                extension: "101".into(),
                sip_username: "alice".into(),
                sip_password: "secret-one".into(),
            }],
            conferences: vec![Conference {
                id: 2,
                name: "Board".into(),
                extension: "800".into(),
                access_code: None,
                admin_extension: None,
                wait_for_admin: false,
                when_admin_leaves: Default::default(),
            }],
            incoming_numbers: vec![IncomingNumber {
                id: 3,
                number: "+3225551234".into(),
                destination: Destination::NotConfigured,
            }],
            trunks: vec![],
        }
    }

    #[test]
    fn modified_fields_are_listed_and_secrets_hidden() {
        let before = config();
        let mut after = config();
        after.conferences[0].access_code = Some("2468".into());
        after.conferences[0].wait_for_admin = false;
        after.users[0].sip_password = "secret-two".into();
        after.incoming_numbers[0].destination = Destination::Conference { conference_id: 2 };
        assert_eq!(
            field_changes(EntityKind::Conference, 2, &before, &after),
            vec![FieldChange {
                label: "Access code",
                before: "none".into(),
                after: "2468".into()
            }]
        );
        let pw = field_changes(EntityKind::User, 1, &before, &after);
        assert_eq!(pw.len(), 1);
        assert!(!pw[0].after.contains("secret"), "{pw:?}");
        assert_eq!(
            field_changes(EntityKind::IncomingNumber, 3, &before, &after)[0].after,
            "Conference Board (800)"
        );
    }
}
