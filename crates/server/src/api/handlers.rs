//! Handlers for configuration entities, changes, live state and tokens.
//!
//! Conventions: POST creates (201 with the entity), PUT replaces with a full
//! description, PATCH changes only the fields present, DELETE answers 204.
//! An `id` in a body is optional and must match the URL.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use confero_pbx::config::{Conference, IncomingNumber, Trunk, TrunkTransport, User};
use confero_store::{
    ConferencePatch, IncomingNumberPatch, NewConference, NewIncomingNumber, NewTrunk, NewUser,
    TrunkPatch, UserPatch,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, ApiJson, AppState, Caller};
use crate::live;

type ApiResult<T> = Result<T, ApiError>;

/// Ids of live things (invitations, participants) are engine numbers, not store ids.
fn parse_live_id(raw: &str, field: &str) -> ApiResult<u64> {
    raw.parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            format!("{field} must be an integer, not {raw:?}"),
            Some(field),
        )
    })
}

/// Path ids are parsed here rather than by `Path<i64>` so that a bad id gets
/// the API's JSON error instead of axum's plain-text one.
fn parse_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>().map_err(|_| {
        ApiError::bad_request(format!("id must be an integer, not {raw:?}"), Some("id"))
    })
}

fn check_body_id(body_id: Option<i64>, id: i64) -> ApiResult<()> {
    match body_id {
        Some(b) if b != id => Err(ApiError::bad_request(
            format!("id {b} in the body does not match id {id} in the URL"),
            Some("id"),
        )),
        _ => Ok(()),
    }
}

fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

// ---- users -------------------------------------------------------------------

/// A user as the API shows it: the SIP password is write-only, present only in
/// the answer to a create or a password reset.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserView {
    pub id: i64,
    pub name: String,
    pub extension: String,
    pub sip_username: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sip_password: Option<String>,
}

impl UserView {
    fn without_password(u: User) -> Self {
        UserView {
            id: u.id,
            name: u.name,
            extension: u.extension,
            sip_username: u.sip_username,
            sip_password: None,
        }
    }

    fn with_password(u: User) -> Self {
        UserView {
            sip_password: Some(u.sip_password.clone()),
            ..UserView::without_password(u)
        }
    }
}

pub(super) async fn list_users(State(s): State<AppState>) -> ApiResult<Json<Vec<UserView>>> {
    let users = s.store.list_users().await?;
    Ok(Json(
        users.into_iter().map(UserView::without_password).collect(),
    ))
}

pub(super) async fn get_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    let user = s.store.get_user(parse_id(&id)?).await?;
    Ok(Json(UserView::without_password(user)))
}

pub(super) async fn create_user(
    State(s): State<AppState>,
    ApiJson(new): ApiJson<NewUser>,
) -> ApiResult<Response> {
    let user = s.store.create_user(new).await?;
    Ok(created(UserView::with_password(user)))
}

pub(super) async fn put_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewUser>,
) -> ApiResult<Json<UserView>> {
    let id = parse_id(&id)?;
    check_body_id(body.id, id)?;
    let user = s.store.update_user(id, UserPatch::from(body)).await?;
    Ok(Json(UserView::without_password(user)))
}

pub(super) async fn patch_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserPatch>,
) -> ApiResult<Json<UserView>> {
    let id = parse_id(&id)?;
    check_body_id(body.id, id)?;
    let user = s.store.update_user(id, body).await?;
    Ok(Json(UserView::without_password(user)))
}

pub(super) async fn delete_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_user(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn reset_user_password(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    let user = s.store.reset_user_password(parse_id(&id)?).await?;
    Ok(Json(UserView::with_password(user)))
}

// ---- conferences -------------------------------------------------------------

pub(super) async fn list_conferences(
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<Conference>>> {
    Ok(Json(s.store.list_conferences().await?))
}

pub(super) async fn get_conference(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Conference>> {
    Ok(Json(s.store.get_conference(parse_id(&id)?).await?))
}

pub(super) async fn create_conference(
    State(s): State<AppState>,
    ApiJson(new): ApiJson<NewConference>,
) -> ApiResult<Response> {
    Ok(created(s.store.create_conference(new).await?))
}

pub(super) async fn put_conference(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewConference>,
) -> ApiResult<Json<Conference>> {
    let id = parse_id(&id)?;
    check_body_id(body.id, id)?;
    Ok(Json(
        s.store
            .update_conference(id, ConferencePatch::from(body))
            .await?,
    ))
}

pub(super) async fn patch_conference(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConferencePatch>,
) -> ApiResult<Json<Conference>> {
    let id = parse_id(&id)?;
    check_body_id(body.id, id)?;
    Ok(Json(s.store.update_conference(id, body).await?))
}

pub(super) async fn delete_conference(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_conference(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- incoming numbers --------------------------------------------------------

pub(super) async fn list_incoming_numbers(
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<IncomingNumber>>> {
    Ok(Json(s.store.list_incoming_numbers().await?))
}

pub(super) async fn get_incoming_number(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<IncomingNumber>> {
    Ok(Json(s.store.get_incoming_number(parse_id(&id)?).await?))
}

pub(super) async fn create_incoming_number(
    State(s): State<AppState>,
    ApiJson(new): ApiJson<NewIncomingNumber>,
) -> ApiResult<Response> {
    Ok(created(s.store.create_incoming_number(new).await?))
}

pub(super) async fn put_incoming_number(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewIncomingNumber>,
) -> ApiResult<Json<IncomingNumber>> {
    let id = parse_id(&id)?;
    check_body_id(body.id, id)?;
    Ok(Json(
        s.store
            .update_incoming_number(id, IncomingNumberPatch::from(body))
            .await?,
    ))
}

pub(super) async fn patch_incoming_number(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<IncomingNumberPatch>,
) -> ApiResult<Json<IncomingNumber>> {
    let id = parse_id(&id)?;
    check_body_id(body.id, id)?;
    Ok(Json(s.store.update_incoming_number(id, body).await?))
}

pub(super) async fn delete_incoming_number(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_incoming_number(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- trunks ------------------------------------------------------------------

/// A trunk as the API shows it: the provider password is write-only;
/// `has_password` tells whether one is set.
#[derive(Debug, Serialize, PartialEq)]
pub struct TrunkView {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub transport: TrunkTransport,
    pub username: Option<String>,
    pub has_password: bool,
    pub register: bool,
    pub caller_id: Option<String>,
    pub dial_prefix: Option<String>,
    /// Live: the registration as the engine sees it (absent until the trunk is applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) live: Option<crate::live::Trunk>,
}

impl TrunkView {
    fn with_live(t: Trunk, s: &AppState) -> Self {
        let live = s.live.trunk(t.id);
        TrunkView {
            live,
            ..TrunkView::from(t)
        }
    }
}

impl From<Trunk> for TrunkView {
    fn from(t: Trunk) -> Self {
        TrunkView {
            id: t.id,
            name: t.name,
            host: t.host,
            port: t.port,
            transport: t.transport,
            username: t.username,
            has_password: t.password.is_some(),
            register: t.register,
            caller_id: t.caller_id,
            dial_prefix: t.dial_prefix,
            live: None,
        }
    }
}

pub(super) async fn list_trunks(State(s): State<AppState>) -> ApiResult<Json<Vec<TrunkView>>> {
    let trunks = s.store.list_trunks().await?;
    Ok(Json(
        trunks
            .into_iter()
            .map(|t| TrunkView::with_live(t, &s))
            .collect(),
    ))
}

pub(super) async fn get_trunk(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TrunkView>> {
    let trunk = s.store.get_trunk(parse_id(&id)?).await?;
    Ok(Json(TrunkView::with_live(trunk, &s)))
}

pub(super) async fn create_trunk(
    State(s): State<AppState>,
    ApiJson(new): ApiJson<NewTrunk>,
) -> ApiResult<Response> {
    Ok(created(TrunkView::from(s.store.create_trunk(new).await?)))
}

pub(super) async fn put_trunk(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewTrunk>,
) -> ApiResult<Json<TrunkView>> {
    let id = parse_id(&id)?;
    check_body_id(body.id, id)?;
    Ok(Json(
        s.store
            .update_trunk(id, TrunkPatch::from(body))
            .await?
            .into(),
    ))
}

pub(super) async fn patch_trunk(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TrunkPatch>,
) -> ApiResult<Json<TrunkView>> {
    let id = parse_id(&id)?;
    check_body_id(body.id, id)?;
    Ok(Json(s.store.update_trunk(id, body).await?.into()))
}

pub(super) async fn delete_trunk(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_trunk(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- changes -----------------------------------------------------------------

pub(super) async fn list_changes(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let changes = s.store.pending_changes().await?;
    let revision = s.store.production().await?.map_or(0, |p| p.revision);
    Ok(Json(json!({
        "pending": changes.len(),
        "revision": revision,
        "changes": changes,
    })))
}

/// Publishes the draft, then hands the new revision to the engine.
pub(super) async fn apply_changes(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let revision = s.apply().await?.revision;
    Ok(Json(json!({ "revision": revision })))
}

pub(super) async fn discard_changes(State(s): State<AppState>) -> ApiResult<StatusCode> {
    s.store.discard().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- live state --------------------------------------------------------------

pub(super) async fn registrations(State(s): State<AppState>) -> Json<Vec<live::Registration>> {
    Json(s.live.registrations())
}

pub(super) async fn calls(State(s): State<AppState>) -> Json<Vec<live::Call>> {
    Json(s.live.calls())
}

/// `GET /alerts/code-guessing`: rooms whose access code was being guessed in the last
/// hour.
pub(super) async fn code_guessing(State(s): State<AppState>) -> Json<Vec<live::CodeGuessing>> {
    Json(s.live.code_guessing())
}

/// `GET /events`: server-sent events, one per kind of live state that changed, carrying
/// the whole new state (clients need no diffing). A new subscriber first gets the current
/// state of every kind. A slow client that falls behind skips to the newest state rather
/// than slowing anyone down. The stream ends when the server shuts down (browsers
/// reconnect by themselves).
pub(super) async fn events(State(s): State<AppState>) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use std::collections::VecDeque;
    let rx = s
        .live
        .subscribe()
        .ok_or_else(|| ApiError::Internal("live events unavailable".into()))?;
    let initial: VecDeque<(String, String)> = s.live.snapshot_events().into();
    let mut closing = s.closing.clone();
    if *closing.borrow_and_update() {
        return Err(ApiError::Unavailable);
    }
    let stream = futures_util::stream::unfold(
        (rx, initial, closing),
        |(mut rx, mut initial, mut closing)| async move {
            if let Some((kind, data)) = initial.pop_front() {
                let ev = Event::default().event(kind).data(data);
                return Some((
                    Ok::<_, std::convert::Infallible>(ev),
                    (rx, initial, closing),
                ));
            }
            loop {
                tokio::select! {
                    received = rx.recv() => match received {
                        Ok((kind, data)) => {
                            let ev = Event::default().event(kind).data(data);
                            return Some((Ok(ev), (rx, initial, closing)));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                    changed = closing.changed() => {
                        if changed.is_err() || *closing.borrow() {
                            return None;
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InviteBody {
    target: String,
    /// Seconds to ring before giving up (default 45, at most 300).
    #[serde(default)]
    timeout: Option<u64>,
}

/// `POST /conferences/{id}/invite {"target": "102"}` → 202 with the invitation.
pub(super) async fn invite(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<InviteBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let target = body.target.trim().to_owned();
    let digits = target.strip_prefix('+').unwrap_or(&target);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "target must be an extension or a phone number: digits, an optional leading +, at most 20",
            Some("target"),
        ));
    }
    let timeout = body.timeout.unwrap_or(45);
    if !(1..=300).contains(&timeout) {
        return Err(ApiError::bad_request(
            "timeout must be between 1 and 300 seconds",
            Some("timeout"),
        ));
    }
    require_in_production(&s, id).await?;
    let reply = s
        .live
        .invite(id, target, std::time::Duration::from_secs(timeout))
        .ok_or(ApiError::Unavailable)?;
    match reply.await {
        Ok(Ok(invitation)) => Ok((StatusCode::ACCEPTED, Json(invitation)).into_response()),
        Ok(Err(message)) => Err(ApiError::bad_request(message, Some("target"))),
        Err(_) => Err(ApiError::Internal("the engine did not answer".into())),
    }
}

/// 404 when conference `id` is nowhere, 409 when it is only in the draft: live actions
/// need a room that callers can reach.
async fn require_in_production(s: &AppState, id: i64) -> Result<(), ApiError> {
    let in_production = s
        .production
        .borrow()
        .config
        .conferences
        .iter()
        .any(|c| c.id == id);
    if !in_production {
        s.store.get_conference(id).await?;
        return Err(ApiError::Conflict(confero_pbx::config::FieldError::new(
            "id",
            "this conference is not in production yet: apply the pending changes first",
        )));
    }
    Ok(())
}

/// `GET /invitations/{id}`: ringing, answered, busy, no_answer, failed (with status and
/// reason), cancelled.
pub(super) async fn get_invitation(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<live::Invitation>, ApiError> {
    let id = parse_live_id(&raw, "id")?;
    s.live
        .invitation(id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no invitation {id} (or it ended long ago)")))
}

/// `POST /invitations/{id}/cancel` before it is answered.
pub(super) async fn cancel_invitation(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_live_id(&raw, "id")?;
    let reply = s.live.cancel_invitation(id).ok_or(ApiError::Unavailable)?;
    match reply.await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) if s.live.invitation(id).is_none() => {
            Err(ApiError::NotFound(format!("no invitation {id}")))
        }
        Ok(false) => Err(ApiError::Conflict(confero_pbx::config::FieldError::new(
            "id",
            "the invitation already ended",
        ))),
        Err(_) => Err(ApiError::Internal("the engine did not answer".into())),
    }
}

/// Live participants of a room; 404 when the room is not in the draft or production.
pub(super) async fn participants(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Vec<live::Participant>>, ApiError> {
    let id = parse_id(&raw)?;
    let known_in_production = s
        .production
        .borrow()
        .config
        .conferences
        .iter()
        .any(|c| c.id == id);
    if !known_in_production {
        s.store.get_conference(id).await?;
    }
    Ok(Json(s.live.participants(id)))
}

/// `POST /conferences/{id}/participants/{pid}/{mute|unmute|kick}`.
pub(super) async fn participant_action(
    State(s): State<AppState>,
    Path((raw_id, raw_pid, action)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let pid = parse_live_id(&raw_pid, "participant")?;
    let action = match action.as_str() {
        "mute" => crate::live::ParticipantAction::Mute,
        "unmute" => crate::live::ParticipantAction::Unmute,
        "kick" => crate::live::ParticipantAction::Kick,
        other => {
            return Err(ApiError::NotFound(format!(
                "no participant action {other:?} (mute, unmute, kick)"
            )))
        }
    };
    let reply = s
        .live
        .participant_action(id, pid, action)
        .ok_or_else(|| ApiError::Internal("live actions unavailable".into()))?;
    match reply.await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::NotFound(format!(
            "no participant {pid} in conference {id}"
        ))),
        Err(_) => Err(ApiError::Internal("the engine did not answer".into())),
    }
}

/// A conference's lock, as `lock` and `unlock` leave it.
#[derive(Debug, Serialize)]
pub(super) struct LockState {
    conference_id: i64,
    locked: bool,
}

/// `POST /conferences/{id}/lock`: callers are turned away ("this conference is locked")
/// until `unlock` or the end of the conference; its administrator and those it invites
/// still get in. 409 when nobody is in the room.
pub(super) async fn lock(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<LockState>, ApiError> {
    set_lock(&s, &raw, true).await
}

/// `POST /conferences/{id}/unlock`.
pub(super) async fn unlock(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<LockState>, ApiError> {
    set_lock(&s, &raw, false).await
}

async fn set_lock(s: &AppState, raw: &str, locked: bool) -> Result<Json<LockState>, ApiError> {
    let id = parse_id(raw)?;
    require_in_production(s, id).await?;
    let reply = s.live.set_locked(id, locked).ok_or(ApiError::Unavailable)?;
    match reply.await {
        Ok(Ok(())) => Ok(Json(LockState {
            conference_id: id,
            locked,
        })),
        Ok(Err(message)) => Err(ApiError::Conflict(confero_pbx::config::FieldError::new(
            "id", message,
        ))),
        Err(_) => Err(ApiError::Internal("the engine did not answer".into())),
    }
}

// ---- tokens ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    name: String,
}

/// Only a person logged in with a console account may mint tokens: a leaked
/// token must not be able to create more of itself.
pub(super) async fn create_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<NewToken>,
) -> ApiResult<Response> {
    if !matches!(caller, Caller::Console { .. }) {
        return Err(ApiError::Forbidden(
            "tokens are created with a console account (HTTP Basic)".into(),
        ));
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "name must be 1 to 100 characters",
            Some("name"),
        ));
    }
    let (id, token) = s.store.create_token(name).await?;
    Ok(created(json!({ "id": id, "token": token, "name": name })))
}
