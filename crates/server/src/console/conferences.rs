//! Conferences: the list, the New/Edit conference form, the live room page, invitations
//! and participant actions.

use std::time::Duration;

use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use confero_pbx::config::{conference_problems, AdminLeaves, Conference, User};
use confero_store::{ConferencePatch, NewConference};
use maud::{html, Markup, PreEscaped};
use serde_json::Value;

use super::layout::{
    csrf_field, field_errors, form_error, form_page, page, row_action, select, store_error, yes_no,
    Errors, Field, Section,
};
use super::session::{Ctx, Posted};
use super::{done, parse_id, PageError};
use crate::api::ParticipantAction;

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
fn production_rooms(ctx: &Ctx) -> Vec<Conference> {
    ctx.state.production.borrow().config.conferences.clone()
}

fn user_label(users: &[User], extension: &str) -> String {
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

fn invite_button(c: &Conference) -> Markup {
    html! {
        a.btn.btn-small.btn-green role="button" href=(format!("/conferences/{}/invite", c.id))
            data-invite=(c.id) data-room=(format!("{} ({})", c.name, c.extension)) { "Invite" }
    }
}

/// The pop-up of the seed: "Please enter the phone number of the person you want to
/// invite", a green *Invite* button, then the invitation's progress.
fn invite_dialog(ctx: &Ctx) -> Markup {
    html! {
        dialog #invite-dialog aria-labelledby="invite-title" {
            form #invite-form method="post" {
                (csrf_field(ctx))
                h2 #invite-title { "Invite to " span #invite-room {} }
                div.field {
                    label for="invite-target" { "Phone number or extension" }
                    p.hint #invite-hint { "Please enter the phone number of the person you want to invite" }
                    input #invite-target name="target" type="tel" inputmode="tel" autocomplete="off"
                        maxlength="21" required aria-describedby="invite-hint invite-error";
                    p.error #invite-error data-error-for="target" hidden {}
                }
                div.invite-status #invite-status data-testid="invite-status" role="status" aria-live="polite" hidden {}
                div.dialog-actions {
                    button.btn.btn-quiet #invite-close type="button" { "Close" }
                    button.btn.btn-quiet #invite-cancel type="button" hidden { "Cancel invitation" }
                    button.btn.btn-green #invite-submit type="submit" { "Invite" }
                }
            }
        }
    }
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

// ---- the live room -----------------------------------------------------------

fn state_text(state: &str) -> &'static str {
    match state {
        "entering_code" => "Entering the access code",
        "joining" => "Joining",
        "waiting" => "Waiting for the administrator",
        "in_room" => "In the room",
        "leaving" => "Leaving",
        _ => "Connecting",
    }
}

fn duration_text(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        _ => format!("{} h {:02} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// Call quality in words, from loss and jitter (the thresholds of common VoIP practice:
/// under 1 % loss and 30 ms jitter sounds clean).
fn quality(p: &Value) -> (&'static str, &'static str) {
    let loss = p["loss_percent"].as_f64().unwrap_or(0.0);
    let jitter = p["jitter_ms"].as_f64().unwrap_or(0.0);
    if p["packets_received"].as_u64().unwrap_or(0) == 0 {
        ("unknown", "No audio yet")
    } else if loss < 1.0 && jitter < 30.0 {
        ("good", "Good")
    } else if loss < 5.0 && jitter < 60.0 {
        ("fair", "Fair")
    } else {
        ("poor", "Poor")
    }
}

/// The participants table (also served alone, for the live page's script to swap in).
fn participants_table(ctx: &Ctx, conference_id: i64, people: &[Value], now_unix: u64) -> Markup {
    html! {
        div #participants data-conference=(conference_id) {
            @if people.is_empty() {
                p.empty-state { "Nobody is in this room." }
            } @else {
                table.data {
                    thead { tr {
                        th scope="col" { "Participant" }
                        th scope="col" { "State" }
                        th scope="col" { "Talking" }
                        th scope="col" { "Codec" }
                        th scope="col" { "Call quality" }
                        th scope="col" { "In the room for" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for p in people {
                            @let pid = p["id"].as_u64().unwrap_or(0);
                            @let talking = p["talking"].as_bool().unwrap_or(false);
                            @let muted = p["muted"].as_bool().unwrap_or(false);
                            @let (qclass, qtext) = quality(p);
                            @let name = p["caller_name"].as_str().unwrap_or("");
                            @let number = p["caller"].as_str().unwrap_or("");
                            tr data-participant-id=(pid) {
                                td {
                                    span.strong { @if name.is_empty() { (number) } @else { (name) } }
                                    @if !name.is_empty() { " " span.muted.mono { (number) } }
                                    @if p["is_admin"].as_bool().unwrap_or(false) { " " span.badge.badge-admin { "Administrator" } }
                                    @if muted { " " span.badge.badge-muted { "Muted" } }
                                }
                                td { span.state.(format!("state-{}", p["state"].as_str().unwrap_or(""))) { (state_text(p["state"].as_str().unwrap_or(""))) } }
                                td {
                                    span.talking data-testid="talking" data-talking=(talking)
                                        title=(if talking { "Talking" } else { "Silent" }) {
                                        span.bars aria-hidden="true" { i {} i {} i {} }
                                        span.visually-hidden { @if talking { "Talking" } @else { "Silent" } }
                                    }
                                }
                                td.mono { (p["codec"].as_str().unwrap_or("")) }
                                td {
                                    span.quality.(format!("q-{qclass}")) { (qtext) }
                                    @if qclass != "unknown" {
                                        span.muted.small { " "
                                            (format!("{:.1} % loss, {:.0} ms jitter", p["loss_percent"].as_f64().unwrap_or(0.0), p["jitter_ms"].as_f64().unwrap_or(0.0)))
                                            @if let Some(rtt) = p["rtt_ms"].as_f64() { (format!(", {rtt:.0} ms RTT")) }
                                        }
                                    }
                                }
                                td { (duration_text(now_unix.saturating_sub(p["joined_at"].as_u64().unwrap_or(now_unix)))) }
                                td.actions {
                                    @let base = format!("/conferences/{conference_id}/participants/{pid}");
                                    @if muted {
                                        (row_action(ctx, &format!("{base}/unmute"), "Unmute", "btn-small", None))
                                    } @else {
                                        (row_action(ctx, &format!("{base}/mute"), "Mute", "btn-small", None))
                                    }
                                    (row_action(ctx, &format!("{base}/kick"), "Kick", "btn-small btn-danger-quiet",
                                        Some(&format!("Hang up on {} and remove them from the room?", if name.is_empty() { number } else { name }))))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /conferences/{id}`: the room and who is in it, live.
pub(crate) async fn room(ctx: Ctx, Path(raw): Path<String>) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let room = ctx.state.store.get_conference(id).await?;
    let users = ctx.state.store.list_users().await?;
    let in_production = production_rooms(&ctx).into_iter().any(|c| c.id == id);
    let people = ctx.state.live.participants(id);
    let body = html! {
        div.page-head {
            div {
                p.breadcrumb { a href="/conferences" { "Conferences" } " ›" }
                h1 { (room.name) }
            }
            div.head-actions {
                (invite_button(&room))
                a.btn href=(format!("/conferences/{id}/edit")) { "Edit" }
            }
        }
        @if !in_production {
            div.alert.alert-warn { "This room is saved but not in production yet: press Apply changes before anyone can dial it." }
        }
        dl.facts.card {
            div { dt { "Internal extension" } dd.mono { (room.extension) } }
            div { dt { "Access code" } dd { @if room.access_code.is_some() { "Required" } @else { "None (open room)" } } }
            div { dt { "Administrator extension" } dd { @match &room.admin_extension { Some(e) => { (user_label(&users, e)) } None => { "None" } } } }
            div { dt { "Wait for the administrator" } dd { @if room.wait_for_admin { "Yes" } @else { "No" } } }
        }
        section.card aria-labelledby="participants-title" data-live="room" data-conference=(id) {
            div.section-head {
                h2 #participants-title { "Participants " span.count-pill data-testid="live-count" data-count-for=(id) { (people.len()) } }
                span.muted.small { "Updated live" }
            }
            (participants_table(&ctx, id, &people, unix_now()))
        }
        (invite_dialog(&ctx))
    };
    Ok(page(&ctx, Section::Conferences, &room.name, body)
        .await?
        .into_response())
}

/// `GET /conferences/{id}/participants`: the participants table alone (HTML), which the
/// room page's script swaps in when the server says something changed.
pub(crate) async fn participants_fragment(
    ctx: Ctx,
    Path(raw): Path<String>,
) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let people = ctx.state.live.participants(id);
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        participants_table(&ctx, id, &people, unix_now()),
    )
        .into_response())
}

/// `POST /conferences/{id}/participants/{pid}/{mute|unmute|kick}` (without JavaScript;
/// the script uses the API).
pub(crate) async fn participant_action(
    Path((raw_id, raw_pid, action)): Path<(String, String, String)>,
    posted: Posted,
) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let id = parse_id(&raw_id)?;
    let pid: u64 = raw_pid.parse().map_err(|_| PageError::NotFound)?;
    let action = match action.as_str() {
        "mute" => ParticipantAction::Mute,
        "unmute" => ParticipantAction::Unmute,
        "kick" => ParticipantAction::Kick,
        _ => return Err(PageError::NotFound),
    };
    let done_ok = match ctx.state.live.participant_action(id, pid, action) {
        Some(rx) => rx.await.unwrap_or(false),
        None => false,
    };
    let message = match (done_ok, action) {
        (true, ParticipantAction::Mute) => "Participant muted.",
        (true, ParticipantAction::Unmute) => "Participant unmuted.",
        (true, ParticipantAction::Kick) => "Participant removed from the room.",
        (false, _) => "That participant has already left.",
    };
    done(&ctx, &format!("/conferences/{id}"), message).await
}

// ---- invitations without JavaScript --------------------------------------------

fn invite_page_body(ctx: &Ctx, room: &Conference, target: &str, errors: &Errors) -> Markup {
    html! {
        div.page-head { h1 { "Invite to " (room.name) } }
        div.card.form-card {
            form method="post" action=(format!("/conferences/{}/invite", room.id)) {
                (csrf_field(ctx))
                (form_error(errors.general(&["target"])))
                (Field::text("target", "Phone number or extension", target).kind("tel").required().autofocus()
                    .hint("Please enter the phone number of the person you want to invite").render(errors))
                div.form-actions {
                    a.btn.btn-quiet href=(format!("/conferences/{}", room.id)) { "Cancel" }
                    button.btn.btn-green type="submit" { "Invite" }
                }
            }
        }
    }
}

/// `GET /conferences/{id}/invite`.
pub(crate) async fn invite_form(ctx: Ctx, Path(raw): Path<String>) -> Result<Response, PageError> {
    let room = ctx.state.store.get_conference(parse_id(&raw)?).await?;
    let body = invite_page_body(&ctx, &room, "", &Errors::none());
    Ok(page(&ctx, Section::Conferences, "Invite", body)
        .await?
        .into_response())
}

/// Checks an invitation target the way the API does: an extension or a phone number.
pub(crate) fn check_target(target: &str) -> Result<(), Errors> {
    let digits = target.strip_prefix('+').unwrap_or(target);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errors::on(
            "target",
            "Enter an extension or a phone number: digits, with an optional leading +.",
        ));
    }
    Ok(())
}

/// `POST /conferences/{id}/invite`.
pub(crate) async fn invite(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let room = ctx.state.store.get_conference(parse_id(&raw)?).await?;
    let target: String = form
        .get("target")
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '.' | '(' | ')'))
        .collect();
    if let Err(errors) = check_target(&target) {
        return invite_again(&ctx, &room, &target, errors).await;
    }
    if !production_rooms(&ctx).iter().any(|c| c.id == room.id) {
        let errors = Errors::on(
            "",
            "This conference is not in production yet: apply the changes first.",
        );
        return invite_again(&ctx, &room, &target, errors).await;
    }
    let Some(reply) = ctx
        .state
        .live
        .invite(room.id, target.clone(), Duration::from_secs(45))
    else {
        return Err(PageError::Busy);
    };
    match reply.await {
        Ok(Ok(invitation)) => {
            let inv_id = invitation["id"].as_u64().unwrap_or(0);
            Ok(Redirect::to(&format!("/invitations/{inv_id}")).into_response())
        }
        Ok(Err(message)) => {
            let errors = Errors::on("target", super::layout::humanize(&message, &[]));
            invite_again(&ctx, &room, &target, errors).await
        }
        Err(_) => Err(PageError::Internal(
            "the engine did not answer an invitation".into(),
        )),
    }
}

/// The invitation form again, with the problem, as a 400.
async fn invite_again(
    ctx: &Ctx,
    room: &Conference,
    target: &str,
    errors: Errors,
) -> Result<Response, PageError> {
    let body = invite_page_body(ctx, room, target, &errors);
    form_page(ctx, Section::Conferences, "Invite", body, &errors).await
}

/// How an invitation's state reads in the console.
pub(crate) fn invitation_text(inv: &Value) -> String {
    let status = inv["status"].as_u64();
    let reason = inv["reason"].as_str().unwrap_or("");
    match inv["state"].as_str().unwrap_or("") {
        "calling" => "Calling…".into(),
        "ringing" => "Ringing…".into(),
        "answered" => "Answered: they are in the room.".into(),
        "busy" => "Busy.".into(),
        "no_answer" => "No answer.".into(),
        "cancelled" => "Cancelled.".into(),
        "failed" => match status {
            Some(code) => format!("Failed: {code} {reason}."),
            None if !reason.is_empty() => format!("Failed: {reason}."),
            None => "Failed.".into(),
        },
        other => other.to_owned(),
    }
}

/// `GET /invitations/{id}`: the progress page for browsers without JavaScript; it
/// refreshes itself until the invitation ends.
pub(crate) async fn invitation_page(
    ctx: Ctx,
    Path(raw): Path<String>,
) -> Result<Response, PageError> {
    let id: u64 = raw.parse().map_err(|_| PageError::NotFound)?;
    let inv = ctx.state.live.invitation(id).ok_or(PageError::NotFound)?;
    let state = inv["state"].as_str().unwrap_or("").to_owned();
    let ongoing = matches!(state.as_str(), "calling" | "ringing");
    let room_id = inv["conference_id"].as_i64().unwrap_or(0);
    let body = html! {
        @if ongoing { (PreEscaped("<meta http-equiv=\"refresh\" content=\"2\">")) }
        div.page-head { h1 { "Invitation to " (inv["target"].as_str().unwrap_or("")) } }
        div.card {
            p.invite-status data-testid="invite-status" data-state=(state) { (invitation_text(&inv)) }
            p { a.btn href=(format!("/conferences/{room_id}")) { "Back to the room" } }
        }
    };
    Ok(page(&ctx, Section::Conferences, "Invitation", body)
        .await?
        .into_response())
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

    #[test]
    fn invitation_states_read_well() {
        let v = serde_json::json!({"state": "failed", "status": 404, "reason": "Not Found"});
        assert_eq!(invitation_text(&v), "Failed: 404 Not Found.");
        assert_eq!(
            invitation_text(&serde_json::json!({"state": "ringing"})),
            "Ringing…"
        );
    }

    #[test]
    fn targets_are_digits() {
        assert!(check_target("102").is_ok());
        assert!(check_target("+3225551234").is_ok());
        assert!(check_target("12a").is_err());
        assert!(check_target("").is_err());
        assert!(check_target(&"1".repeat(21)).is_err());
    }
}
