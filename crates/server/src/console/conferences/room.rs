//! The live room page: who is in the room, talking, muted, with what call quality; and
//! the participant actions for browsers without JavaScript.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::{invite_button, invite_dialog, production_rooms, user_label};
use crate::console::layout::{page, row_action, Section};
use crate::console::session::{Ctx, Posted};
use crate::console::{done, parse_id, PageError};
use crate::live::{Participant, ParticipantAction};

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
fn quality(p: &Participant) -> (&'static str, &'static str) {
    let (loss, jitter) = (p.loss_percent, p.jitter_ms);
    if p.packets_received == 0 {
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
fn participants_table(
    ctx: &Ctx,
    conference_id: i64,
    people: &[Participant],
    now_unix: u64,
) -> Markup {
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
                            @let pid = p.id;
                            @let talking = p.talking;
                            @let muted = p.muted;
                            @let (qclass, qtext) = quality(p);
                            @let name = p.caller_name.as_str();
                            @let number = p.caller.as_str();
                            tr data-participant-id=(pid) {
                                td {
                                    span.strong { @if name.is_empty() { (number) } @else { (name) } }
                                    @if !name.is_empty() { " " span.muted.mono { (number) } }
                                    @if p.is_admin { " " span.badge.badge-admin { "Administrator" } }
                                    @if muted { " " span.badge.badge-muted { "Muted" } }
                                }
                                td { span.state.(format!("state-{}", p.state)) { (state_text(p.state)) } }
                                td {
                                    span.talking data-testid="talking" data-talking=(talking)
                                        title=(if talking { "Talking" } else { "Silent" }) {
                                        span.bars aria-hidden="true" { i {} i {} i {} }
                                        span.visually-hidden { @if talking { "Talking" } @else { "Silent" } }
                                    }
                                }
                                td.mono { (p.codec) }
                                td {
                                    span.quality.(format!("q-{qclass}")) { (qtext) }
                                    @if qclass != "unknown" {
                                        span.muted.small { " "
                                            (format!("{:.1} % loss, {:.0} ms jitter", p.loss_percent, p.jitter_ms))
                                            @if let Some(rtt) = p.rtt_ms { (format!(", {rtt:.0} ms RTT")) }
                                        }
                                    }
                                }
                                td { (duration_text(now_unix.saturating_sub(p.joined_at))) }
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
    let locked = ctx.state.live.locked(id);
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
                h2 #participants-title {
                    "Participants " span.count-pill data-testid="live-count" data-count-for=(id) { (people.len()) }
                    @if locked { " " span.badge.badge-warn data-testid="locked" { "Locked" } }
                }
                span.muted.small { "Updated live" }
                @if locked {
                    (row_action(&ctx, &format!("/conferences/{id}/unlock"), "Unlock", "btn-small", None))
                } @else if !people.is_empty() {
                    (row_action(&ctx, &format!("/conferences/{id}/lock"), "Lock", "btn-small",
                        Some("Lock the room? Nobody else can dial in until you unlock it or everyone has left; the administrator and people you invite still can.")))
                }
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

/// `POST /conferences/{id}/lock`.
pub(crate) async fn lock(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    set_lock(&raw, posted, true).await
}

/// `POST /conferences/{id}/unlock`.
pub(crate) async fn unlock(Path(raw): Path<String>, posted: Posted) -> Result<Response, PageError> {
    set_lock(&raw, posted, false).await
}

async fn set_lock(raw: &str, posted: Posted, locked: bool) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let id = parse_id(raw)?;
    let result = match ctx.state.live.set_locked(id, locked) {
        Some(rx) => rx
            .await
            .unwrap_or_else(|_| Err("the engine did not answer".into())),
        None => Err("live actions are unavailable".into()),
    };
    let message = match (result, locked) {
        (Ok(()), true) => "Room locked: nobody else can dial in.".to_owned(),
        (Ok(()), false) => "Room unlocked.".to_owned(),
        (Err(why), _) => format!("The room could not be changed: {why}."),
    };
    done(&ctx, &format!("/conferences/{id}"), &message).await
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
