//! Inviting someone into a room: the pop-up (with JavaScript, through the API) and the
//! form and progress page for browsers without it.

use std::time::Duration;

use crate::live::Invitation;
use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use confero_pbx::config::Conference;
use maud::{html, Markup, PreEscaped};

use super::production_rooms;
use crate::console::layout::{csrf_field, form_error, form_page, page, Errors, Field, Section};
use crate::console::session::{Ctx, Posted};
use crate::console::{parse_id, PageError};

pub(super) fn invite_button(c: &Conference) -> Markup {
    html! {
        a.btn.btn-small.btn-green role="button" href=(format!("/conferences/{}/invite", c.id))
            data-invite=(c.id) data-room=(format!("{} ({})", c.name, c.extension)) { "Invite" }
    }
}

/// The invite pop-up: "Please enter the phone number of the person you want to
/// invite", a green *Invite* button, then the invitation's progress.
pub(super) fn invite_dialog(ctx: &Ctx) -> Markup {
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
            Ok(Redirect::to(&format!("/invitations/{}", invitation.id)).into_response())
        }
        Ok(Err(message)) => {
            let errors = Errors::on("target", crate::console::layout::humanize(&message, &[]));
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
pub(crate) fn invitation_text(inv: &Invitation) -> String {
    let status = inv.status;
    let reason = inv.reason.as_deref().unwrap_or("");
    match inv.state {
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
    let state = inv.state;
    let ongoing = matches!(state, "calling" | "ringing");
    let room_id = inv.conference_id;
    let body = html! {
        @if ongoing { (PreEscaped("<meta http-equiv=\"refresh\" content=\"2\">")) }
        div.page-head { h1 { "Invitation to " (inv.target) } }
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
    fn invitation_states_read_well() {
        let failed = Invitation {
            id: 1,
            conference_id: 7,
            target: "102".into(),
            state: "failed",
            status: Some(404),
            reason: Some("Not Found".into()),
            participant_id: None,
            created_at: 0,
        };
        assert_eq!(invitation_text(&failed), "Failed: 404 Not Found.");
        let ringing = Invitation {
            state: "ringing",
            status: None,
            reason: None,
            ..failed
        };
        assert_eq!(invitation_text(&ringing), "Ringing…");
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
