//! Users: people with an extension and SIP credentials, and their registered devices.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use confero_pbx::config::User;
use confero_store::{NewUser, UserPatch};
use maud::{html, Markup};

use super::layout::{
    csrf_field, form_error, page, row_action, store_error, Errors, Field, Section,
};
use super::session::{Ctx, FormFields, Posted};
use super::{done, parse_id, PageError};
use crate::live::Registration;

const LABELS: &[(&str, &str)] = &[
    ("name", "Name"),
    ("extension", "Extension"),
    ("sip_username", "SIP username"),
    ("sip_password", "SIP password"),
];
const FIELDS: &[&str] = &["name", "extension", "sip_username", "sip_password"];

fn devices_of<'a>(registrations: &'a [Registration], user: &User) -> Vec<&'a Registration> {
    registrations
        .iter()
        .filter(|r| r.user == user.sip_username)
        .collect()
}

fn device_text(r: &Registration) -> String {
    let agent = r.user_agent.as_deref().unwrap_or("Unknown phone");
    format!("{agent} — {} from {}", r.transport.to_uppercase(), r.source)
}

/// `GET /users`.
pub(crate) async fn list(ctx: Ctx) -> Result<Response, PageError> {
    let users = ctx.state.store.list_users().await?;
    list_page(&ctx, &users, None).await
}

/// The list, optionally with a just-made password shown once above it.
async fn list_page(
    ctx: &Ctx,
    users: &[User],
    secret: Option<(&User, &str)>,
) -> Result<Response, PageError> {
    let registrations = ctx.state.live.registrations();
    let body = html! {
        div.page-head {
            h1 { "Users" }
            a.btn.btn-green href="/users/new" { "Add a user" }
        }
        @if let Some((user, what)) = secret { (secret_card(user, what)) }
        @if users.is_empty() {
            div.card.empty {
                p { "No users yet." }
                p { "Each user gets an extension and SIP credentials for their desk phone, softphone or Odoo." }
            }
        } @else {
            div.card.table-wrap {
                table.data data-live="users" {
                    thead { tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Extension" }
                        th scope="col" { "SIP username" }
                        th scope="col" { "Registered devices" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for u in users {
                            @let devices = devices_of(&registrations, u);
                            tr data-user-id=(u.id) data-aor=(u.sip_username) {
                                td.strong { (u.name) }
                                td.mono { (u.extension) }
                                td.mono { (u.sip_username) }
                                td {
                                    span.device-count.online[!devices.is_empty()] data-testid="devices"
                                        title=(devices.iter().map(|d| device_text(d)).collect::<Vec<_>>().join("\n")) {
                                        (devices.len())
                                    }
                                }
                                td.actions {
                                    a.btn.btn-small href=(format!("/users/{}/edit", u.id)) { "Edit" }
                                    (row_action(ctx, &format!("/users/{}/reset-password", u.id), "New password", "btn-small",
                                        Some(&format!("Give {} a new SIP password? Their phones stop working until they are set up with it (after Apply changes).", u.name))))
                                    (row_action(ctx, &format!("/users/{}/delete", u.id), "Delete", "btn-small btn-danger-quiet",
                                        Some(&format!("Delete the user {} ({})?", u.name, u.extension))))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let mut response = page(ctx, Section::Users, "Users", body)
        .await?
        .into_response();
    if secret.is_some() {
        // The page holds a password: keep it out of the browser's cache and history.
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    Ok(response)
}

fn secret_card(user: &User, what: &str) -> Markup {
    html! {
        div.card.secret role="status" data-testid="flash" {
            h2 { (what) }
            p { "Set up " strong { (user.name) } "’s phone with these credentials (in Odoo: " em { "VoIP username" } " and " em { "VoIP secret" } ", see " a href="/connect-odoo" { "Connect Odoo" } "). The password is shown this once; it takes effect after " strong { "Apply changes" } "." }
            dl.facts {
                div { dt { "Extension" } dd.mono { (user.extension) } }
                div { dt { "SIP username" } dd.mono { (user.sip_username) } }
                div { dt { "SIP password" } dd.mono data-testid="sip-password" { (user.sip_password) } }
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct UserForm {
    name: String,
    extension: String,
    sip_username: String,
    sip_password: String,
}

impl UserForm {
    fn from_posted(f: &FormFields) -> Self {
        UserForm {
            name: f.get("name").to_owned(),
            extension: f.get("extension").to_owned(),
            sip_username: f.get("sip_username").to_owned(),
            sip_password: f.raw("sip_password").to_owned(),
        }
    }

    fn from_user(u: &User) -> Self {
        UserForm {
            name: u.name.clone(),
            extension: u.extension.clone(),
            sip_username: u.sip_username.clone(),
            sip_password: String::new(),
        }
    }

    fn to_new(&self) -> NewUser {
        let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        NewUser {
            id: None,
            name: self.name.clone(),
            extension: self.extension.clone(),
            sip_username: optional(&self.sip_username),
            sip_password: optional(&self.sip_password),
        }
    }
}

fn user_form(
    ctx: &Ctx,
    title: &str,
    action: &str,
    form: &UserForm,
    errors: &Errors,
    editing: bool,
) -> Markup {
    html! {
        div.page-head { h1 { (title) } }
        div.card.form-card {
            form method="post" action=(action) novalidate {
                (csrf_field(ctx))
                (form_error(errors.general(FIELDS)))
                (Field::text("name", "Name", &form.name).required().autofocus().autocomplete("off").render(errors))
                (Field::text("extension", "Extension", &form.extension).required().digits(6)
                    .hint("2 to 6 digits, unique on the PBX").render(errors))
                (Field::text("sip_username", "SIP username", &form.sip_username).autocomplete("off")
                    .hint("What the phone registers with. Defaults to the extension.").render(errors))
                (Field::text("sip_password", "SIP password", &form.sip_password).kind("password").autocomplete("new-password")
                    .hint(if editing { "Leave empty to keep the current password." } else { "8 characters or more. Leave empty to have a strong one generated." })
                    .render(errors))
                div.form-actions {
                    a.btn.btn-quiet href="/users" { "Cancel" }
                    button.btn.btn-primary type="submit" { "Save" }
                }
            }
        }
    }
}

async fn form_page(
    ctx: &Ctx,
    title: &str,
    action: &str,
    form: &UserForm,
    errors: Errors,
    editing: bool,
) -> Result<Response, PageError> {
    // Never send a typed password back into the page.
    let form = UserForm {
        sip_password: String::new(),
        ..form.clone()
    };
    let body = user_form(ctx, title, action, &form, &errors, editing);
    super::layout::form_page(ctx, Section::Users, title, body, &errors).await
}

/// `GET /users/new`.
pub(crate) async fn new_form(ctx: Ctx) -> Result<Response, PageError> {
    form_page(
        &ctx,
        "New user",
        "/users/new",
        &UserForm::default(),
        Errors::none(),
        false,
    )
    .await
}

/// `POST /users/new`: on success the list, with the SIP password shown once.
pub(crate) async fn create(posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let form = UserForm::from_posted(&form);
    match ctx.state.store.create_user(form.to_new()).await {
        Ok(user) => {
            let users = ctx.state.store.list_users().await?;
            list_page(
                &ctx,
                &users,
                Some((&user, &format!("User {} created", user.name))),
            )
            .await
        }
        Err(e) => {
            form_page(
                &ctx,
                "New user",
                "/users/new",
                &form,
                store_error(e, LABELS)?,
                false,
            )
            .await
        }
    }
}

/// `GET /users/{id}/edit`.
pub(crate) async fn edit_form(ctx: Ctx, Path(raw): Path<String>) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let user = ctx.state.store.get_user(id).await?;
    form_page(
        &ctx,
        "Edit user",
        &format!("/users/{id}/edit"),
        &UserForm::from_user(&user),
        Errors::none(),
        true,
    )
    .await
}

/// `POST /users/{id}/edit`.
pub(crate) async fn update(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let id = parse_id(&raw)?;
    ctx.state.store.get_user(id).await?;
    let form = UserForm::from_posted(&form);
    let new = form.to_new();
    let patch = UserPatch {
        id: None,
        name: Some(new.name),
        extension: Some(new.extension),
        // An emptied username field means "keep", as the password does.
        sip_username: new.sip_username,
        sip_password: new.sip_password,
    };
    match ctx.state.store.update_user(id, patch).await {
        Ok(user) => {
            done(
                &ctx,
                "/users",
                format!(
                    "User {} saved. Apply changes to put it in production.",
                    user.name
                ),
            )
            .await
        }
        Err(e) => {
            let action = format!("/users/{id}/edit");
            form_page(
                &ctx,
                "Edit user",
                &action,
                &form,
                store_error(e, LABELS)?,
                true,
            )
            .await
        }
    }
}

/// `POST /users/{id}/reset-password`: a new generated password, shown once.
pub(crate) async fn reset_password(
    Path(raw): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let user = ctx.state.store.reset_user_password(parse_id(&raw)?).await?;
    let users = ctx.state.store.list_users().await?;
    list_page(
        &ctx,
        &users,
        Some((&user, &format!("New SIP password for {}", user.name))),
    )
    .await
}

/// `POST /users/{id}/delete`.
pub(crate) async fn delete(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let id = parse_id(&raw)?;
    let user = ctx.state.store.get_user(id).await?;
    match ctx.state.store.delete_user(id).await {
        Ok(()) => {
            done(
                &ctx,
                "/users",
                format!(
                    "User {} deleted. Apply changes to remove them from production.",
                    user.name
                ),
            )
            .await
        }
        Err(e) => {
            let errors = store_error(e, LABELS)?;
            done(
                &ctx,
                "/users",
                format!("{} was not deleted: {}", user.name, errors.text()),
            )
            .await
        }
    }
}
