//! Conferences: the list and the New/Edit conference form here; the live room page in
//! [`room`], invitations in [`invite`].

mod invite;
mod room;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use confero_pbx::config::{conference_problems, AdminLeaves, Conference, User};
use confero_store::{ConferencePatch, NewConference};
use maud::{html, Markup};

use super::layout::{
    csrf_field, field_errors, form_error, form_page, page, row_action, select, store_error, yes_no,
    Errors, Field, Section,
};
use super::session::{Ctx, Posted};
use super::{done, parse_id, PageError};

pub(crate) use invite::{invitation_page, invite, invite_form};
use invite::{invite_button, invite_dialog};
pub(crate) use room::{lock, participant_action, participants_fragment, room, unlock};

/// The API's field names and the form's labels, for error messages.
const LABELS: &[(&str, &str)] = &[
    ("name", "Name"),
    ("extension", "Internal extension"),
    ("access_code", "Access code"),
    ("admin_extension", "Administrator extension"),
    (
        "wait_for_admin",
        "Wait for the administrator to start the conference",
    ),
    ("when_admin_leaves", "When the administrator leaves"),
];

const FIELDS: &[&str] = &[
    "name",
    "extension",
    "access_code",
    "admin_extension",
    "wait_for_admin",
    "when_admin_leaves",
];

/// Rooms in production, by id: what callers reach right now.
pub(super) fn production_rooms(ctx: &Ctx) -> Vec<Conference> {
    ctx.state.production.borrow().config.conferences.clone()
}

pub(super) fn user_label(users: &[User], extension: &str) -> String {
    match users.iter().find(|u| u.extension == extension) {
        Some(u) => format!("{extension} — {}", u.name),
        None => extension.to_owned(),
    }
}

/// `GET /conferences`.
pub(crate) async fn list(ctx: Ctx) -> Result<Response, PageError> {
    let rooms = ctx.state.store.list_conferences().await?;
    let users = ctx.state.store.list_users().await?;
    let live = production_rooms(&ctx);
    let body = html! {
        div.page-head {
            h1 { "Conferences" }
            a.btn.btn-green href="/conferences/new" { "Add a conference" }
        }
        @if rooms.is_empty() {
            div.card.empty {
                p { "No conference rooms yet." }
                p { "A room has an internal extension that anyone on the PBX can dial, an optional access code, and an administrator who can be required before the conference starts." }
            }
        } @else {
            div.card.table-wrap {
                table.data data-live="rooms" {
                    thead { tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Internal extension" }
                        th scope="col" { "Access code" }
                        th scope="col" { "Administrator extension" }
                        th scope="col" { "Wait for the administrator" }
                        th scope="col" { "Participants" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for c in &rooms {
                            @let in_production = live.iter().find(|p| p.id == c.id);
                            @let count = ctx.state.live.participants(c.id).len();
                            tr data-conference-id=(c.id) {
                                td {
                                    a.strong href=(format!("/conferences/{}", c.id)) { (c.name) }
                                    @match in_production {
                                        None => { " " span.badge.badge-warn { "Not applied yet" } }
                                        Some(p) if p != c => { " " span.badge.badge-warn { "Changes not applied" } }
                                        _ => {}
                                    }
                                }
                                td.mono { (c.extension) }
                                td {
                                    @match c.access_code.as_deref().map(str::len) {
                                        Some(n) if n < RECOMMENDED_CODE_DIGITS => {
                                            "Yes " span.badge.badge-warn title="Codes of 6 digits or more are much harder to guess" { "short" }
                                        }
                                        Some(_) => "Yes",
                                        None => "No",
                                    }
                                }
                                td { @match &c.admin_extension {
                                    Some(ext) => { (user_label(&users, ext)) }
                                    None => { span.muted { "None" } }
                                } }
                                td { @if c.wait_for_admin { "Yes" } @else { "No" } }
                                td data-testid="live-count" data-count-for=(c.id) { (count) }
                                td.actions {
                                    (invite_button(c))
                                    a.btn.btn-small href=(format!("/conferences/{}/edit", c.id)) { "Edit" }
                                    (row_action(&ctx, &format!("/conferences/{}/delete", c.id), "Delete", "btn-small btn-danger-quiet",
                                        Some(&format!("Delete the conference “{}” ({})? People in it are hung up once you apply the change.", c.name, c.extension))))
                                }
                            }
                        }
                    }
                }
            }
        }
        (invite_dialog(&ctx))
    };
    Ok(page(&ctx, Section::Conferences, "Conferences", body)
        .await?
        .into_response())
}

/// What the form holds, as typed.
#[derive(Clone, Debug, Default)]
struct ConferenceForm {
    name: String,
    extension: String,
    access_code: String,
    admin_extension: String,
    wait_for_admin: String,
    when_admin_leaves: String,
}

impl ConferenceForm {
    fn from_conference(c: &Conference) -> Self {
        ConferenceForm {
            name: c.name.clone(),
            extension: c.extension.clone(),
            access_code: c.access_code.clone().unwrap_or_default(),
            admin_extension: c.admin_extension.clone().unwrap_or_default(),
            wait_for_admin: if c.wait_for_admin { "yes" } else { "no" }.into(),
            when_admin_leaves: admin_leaves_value(c.when_admin_leaves).into(),
        }
    }

    fn from_posted(f: &super::session::FormFields) -> Self {
        ConferenceForm {
            name: f.get("name").to_owned(),
            extension: f.get("extension").to_owned(),
            access_code: f.get("access_code").to_owned(),
            admin_extension: f.get("admin_extension").to_owned(),
            wait_for_admin: f.get("wait_for_admin").to_owned(),
            when_admin_leaves: f.get("when_admin_leaves").to_owned(),
        }
    }

    /// The store's input; form-level problems (a select with a forged value) are errors
    /// on that field. `keep_leaves` is the room's current policy, kept when the form
    /// does not carry the field.
    fn to_new(&self, keep_leaves: AdminLeaves) -> Result<NewConference, Errors> {
        let wait_for_admin = match self.wait_for_admin.as_str() {
            "yes" => true,
            "no" | "" => false,
            _ => return Err(Errors::on("wait_for_admin", "Choose Yes or No.")),
        };
        let when_admin_leaves = match self.when_admin_leaves.as_str() {
            "" => keep_leaves,
            "wait" => AdminLeaves::Wait,
            "keep_going" => AdminLeaves::KeepGoing,
            "end" => AdminLeaves::End,
            _ => {
                return Err(Errors::on(
                    "when_admin_leaves",
                    "Choose one of the options.",
                ))
            }
        };
        let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(NewConference {
            id: None,
            name: self.name.clone(),
            extension: self.extension.clone(),
            access_code: optional(&self.access_code),
            admin_extension: optional(&self.admin_extension),
            wait_for_admin,
            when_admin_leaves,
        })
    }
}

fn admin_leaves_value(a: AdminLeaves) -> &'static str {
    match a {
        AdminLeaves::Wait => "wait",
        AdminLeaves::KeepGoing => "keep_going",
        AdminLeaves::End => "end",
    }
}

fn conference_form(
    ctx: &Ctx,
    title: &str,
    action: &str,
    form: &ConferenceForm,
    errors: &Errors,
    users: &[User],
    editing: bool,
) -> Markup {
    let mut admins = vec![(String::new(), "None".to_owned())];
    admins.extend(
        users
            .iter()
            .map(|u| (u.extension.clone(), format!("{} — {}", u.extension, u.name))),
    );
    // An administrator extension that no longer matches a user stays visible, so that
    // saving does not silently change it.
    if !form.admin_extension.is_empty() && !admins.iter().any(|(v, _)| *v == form.admin_extension) {
        admins.push((form.admin_extension.clone(), form.admin_extension.clone()));
    }
    let leaves = vec![
        (
            "wait".to_owned(),
            "The others wait for the administrator to return".to_owned(),
        ),
        (
            "keep_going".to_owned(),
            "The conference goes on without the administrator".to_owned(),
        ),
        (
            "end".to_owned(),
            "The conference ends for everyone".to_owned(),
        ),
    ];
    html! {
        div.page-head {
            h1 { (title) }
        }
        div.card.form-card {
            form method="post" action=(action) novalidate {
                (csrf_field(ctx))
                (form_error(errors.general(FIELDS)))
                (Field::text("name", "Name", &form.name).required().autofocus().render(errors))
                (Field::text("extension", "Internal extension", &form.extension).required().digits(5)
                    .hint("3 to 5 digits").render(errors))
                (Field::text("access_code", "Access code", &form.access_code).digits(12)
                    .hint("4 to 12 digits callers type, followed by #, before joining; 6 or more are much harder to guess. Leave empty for an open room.").render(errors))
                (select("admin_extension", "Administrator extension", &form.admin_extension, &admins, errors, None))
                (select("wait_for_admin", "Wait for the administrator to start the conference",
                    if form.wait_for_admin.is_empty() { "no" } else { &form.wait_for_admin }, &yes_no(), errors,
                    Some("With Yes, nobody can use the room until the administrator has joined.")))
                @if editing {
                    details.more open[errors.has("when_admin_leaves")] {
                        summary { "More options" }
                        (select("when_admin_leaves", "When the administrator leaves", &form.when_admin_leaves, &leaves, errors,
                            Some("Only for rooms that wait for their administrator.")))
                    }
                }
                div.form-actions {
                    a.btn.btn-quiet href="/conferences" { "Cancel" }
                    button.btn.btn-primary type="submit" { "Save" }
                }
            }
        }
    }
}

/// Every rule the submitted room breaks against the current draft, so the form shows
/// them all at once (the store checks again, under its lock, when saving).
async fn problems(
    ctx: &Ctx,
    new: &NewConference,
    id: Option<i64>,
) -> Result<Option<Errors>, PageError> {
    let draft = ctx.state.store.draft().await?;
    let candidate = Conference {
        // A new room has no id yet; -1 matches nothing, so it conflicts with no one.
        id: id.unwrap_or(-1),
        name: new.name.clone(),
        extension: new.extension.clone(),
        access_code: new.access_code.clone(),
        admin_extension: new.admin_extension.clone(),
        wait_for_admin: new.wait_for_admin,
        when_admin_leaves: new.when_admin_leaves,
    };
    let found = conference_problems(&draft, &candidate);
    Ok((!found.is_empty()).then(|| field_errors(found, LABELS)))
}

/// Access codes shorter than this are accepted but warned about.
const RECOMMENDED_CODE_DIGITS: usize = 6;

fn saved_message(c: &Conference) -> String {
    let name = &c.name;
    let mut text = format!("Conference “{name}” saved. Apply changes to put it in production.");
    if let Some(n) = c
        .access_code
        .as_deref()
        .map(str::len)
        .filter(|n| *n < RECOMMENDED_CODE_DIGITS)
    {
        text.push_str(&format!(
            " Its access code has {n} digits: codes of {RECOMMENDED_CODE_DIGITS} or more are \
             much harder to guess."
        ));
    }
    text
}

/// `GET /conferences/new`.
pub(crate) async fn new_form(ctx: Ctx) -> Result<Response, PageError> {
    let users = ctx.state.store.list_users().await?;
    let body = conference_form(
        &ctx,
        "New conference",
        "/conferences/new",
        &ConferenceForm::default(),
        &Errors::none(),
        &users,
        false,
    );
    Ok(page(&ctx, Section::Conferences, "New conference", body)
        .await?
        .into_response())
}

/// Renders the form again with what was typed and the error, as a 400.
async fn form_again(
    ctx: &Ctx,
    title: &str,
    action: &str,
    form: &ConferenceForm,
    errors: Errors,
    editing: bool,
) -> Result<Response, PageError> {
    let users = ctx.state.store.list_users().await?;
    let body = conference_form(ctx, title, action, form, &errors, &users, editing);
    form_page(ctx, Section::Conferences, title, body, &errors).await
}

/// `POST /conferences/new`.
pub(crate) async fn create(posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let form = ConferenceForm::from_posted(&form);
    let (title, action) = ("New conference", "/conferences/new");
    let new = match form.to_new(AdminLeaves::default()) {
        Ok(n) => n,
        Err(errors) => return form_again(&ctx, title, action, &form, errors, false).await,
    };
    if let Some(errors) = problems(&ctx, &new, None).await? {
        return form_again(&ctx, title, action, &form, errors, false).await;
    }
    match ctx.state.store.create_conference(new).await {
        Ok(c) => done(&ctx, "/conferences", saved_message(&c)).await,
        Err(e) => {
            let errors = store_error(e, LABELS)?;
            form_again(&ctx, title, action, &form, errors, false).await
        }
    }
}

/// `GET /conferences/{id}/edit`.
pub(crate) async fn edit_form(ctx: Ctx, Path(raw): Path<String>) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let room = ctx.state.store.get_conference(id).await?;
    let users = ctx.state.store.list_users().await?;
    let body = conference_form(
        &ctx,
        "Edit conference",
        &format!("/conferences/{id}/edit"),
        &ConferenceForm::from_conference(&room),
        &Errors::none(),
        &users,
        true,
    );
    Ok(page(&ctx, Section::Conferences, "Edit conference", body)
        .await?
        .into_response())
}

/// `POST /conferences/{id}/edit`.
pub(crate) async fn update(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let id = parse_id(&raw)?;
    let current = ctx.state.store.get_conference(id).await?;
    let form = ConferenceForm::from_posted(&form);
    let action = format!("/conferences/{id}/edit");
    let new = match form.to_new(current.when_admin_leaves) {
        Ok(n) => n,
        Err(errors) => {
            return form_again(&ctx, "Edit conference", &action, &form, errors, true).await
        }
    };
    if let Some(errors) = problems(&ctx, &new, Some(id)).await? {
        return form_again(&ctx, "Edit conference", &action, &form, errors, true).await;
    }
    match ctx
        .state
        .store
        .update_conference(id, ConferencePatch::from(new))
        .await
    {
        Ok(c) => done(&ctx, "/conferences", saved_message(&c)).await,
        Err(e) => {
            let errors = store_error(e, LABELS)?;
            form_again(&ctx, "Edit conference", &action, &form, errors, true).await
        }
    }
}

/// `POST /conferences/{id}/delete`.
pub(crate) async fn delete(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let id = parse_id(&raw)?;
    let room = ctx.state.store.get_conference(id).await?;
    match ctx.state.store.delete_conference(id).await {
        Ok(()) => {
            done(
                &ctx,
                "/conferences",
                format!(
                    "Conference “{}” deleted. Apply changes to remove it from production.",
                    room.name
                ),
            )
            .await
        }
        Err(e) => {
            let errors = store_error(e, LABELS)?;
            done(
                &ctx,
                "/conferences",
                format!("“{}” was not deleted: {}", room.name, errors.text()),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_map_to_the_store_input() {
        let form = ConferenceForm {
            name: "Board".into(),
            extension: "800".into(),
            access_code: String::new(),
            admin_extension: "101".into(),
            wait_for_admin: "yes".into(),
            when_admin_leaves: String::new(),
        };
        let new = form.to_new(AdminLeaves::End).unwrap();
        assert_eq!(new.access_code, None);
        assert_eq!(new.admin_extension.as_deref(), Some("101"));
        assert!(new.wait_for_admin);
        assert_eq!(
            new.when_admin_leaves,
            AdminLeaves::End,
            "kept when not in the form"
        );
        let forged = ConferenceForm {
            wait_for_admin: "maybe".into(),
            ..form
        };
        assert!(forged
            .to_new(AdminLeaves::Wait)
            .unwrap_err()
            .has("wait_for_admin"));
    }
}
