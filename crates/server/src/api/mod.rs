//! The REST API (`/api/v1`), `/healthz` and `/metrics`.
//!
//! Every configuration write goes to the store's draft; `POST /changes/apply`
//! publishes it as a new production revision and then hands the snapshot to the
//! engine through the `production` watch channel, which is how a change reaches
//! calls without a restart. Live state (registrations, calls) comes from a
//! [`LiveView`] the engine keeps up to date, so API handlers never wait on the engine.
//!
//! `router(state)` is a plain `Router`: tests drive it with `oneshot`, no socket.
//! The documented contract is `openapi.json` beside this file, served at
//! `/api/v1/openapi.json`.

mod auth;
mod error;
mod handlers;
mod json;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Router};
use confero_pbx::config::Snapshot;
use tokio::sync::watch;

pub use auth::Caller;
pub use error::ApiError;
pub use handlers::{TrunkView, UserView};
pub use json::ApiJson;

/// Largest request body accepted anywhere in the API.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Live state published by the engine, read by the API.
pub trait LiveView: Send + Sync + 'static {
    fn registrations(&self) -> Vec<serde_json::Value>;
    fn calls(&self) -> Vec<serde_json::Value>;
    /// Extra Prometheus text lines appended to /metrics.
    fn metrics(&self) -> String;
    /// Everyone in (or entering, or waiting for) conference `id`.
    fn participants(&self, _conference_id: i64) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// Starts an invitation from a room; resolves to the invitation as JSON, or to why it
    /// could not start.
    fn invite(
        &self,
        _conference_id: i64,
        _target: String,
        _timeout: std::time::Duration,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<serde_json::Value, String>>> {
        None
    }
    /// An invitation's progress, while it is remembered.
    fn invitation(&self, _id: u64) -> Option<serde_json::Value> {
        None
    }
    /// Cancels a ringing invitation; false when it already ended.
    fn cancel_invitation(&self, _id: u64) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        None
    }
    /// Live changes as server-sent events: `(kind, json)` pairs.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<(String, String)>> {
        None
    }
    /// Mute, unmute or kick a participant; resolves to false when there is no such
    /// participant in that room. `None` when live actions are unavailable.
    fn participant_action(
        &self,
        _conference_id: i64,
        _participant: u64,
        _action: ParticipantAction,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        None
    }
}

/// What the console can do to a participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParticipantAction {
    Mute,
    Unmute,
    Kick,
}

#[derive(Clone)]
pub struct ApiState {
    pub store: confero_store::Store,
    pub live: Arc<dyn LiveView>,
    /// Receives each newly applied revision; the engine holds the receiver.
    pub production: watch::Sender<Arc<Snapshot>>,
}

/// Mounts `/api/v1/...`, `/healthz` and `/metrics`.
pub fn router(state: ApiState) -> Router {
    use handlers::*;
    let protected = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user)
                .put(put_user)
                .patch(patch_user)
                .delete(delete_user),
        )
        .route("/users/{id}/reset-password", post(reset_user_password))
        .route(
            "/conferences",
            get(list_conferences).post(create_conference),
        )
        .route(
            "/conferences/{id}",
            get(get_conference)
                .put(put_conference)
                .patch(patch_conference)
                .delete(delete_conference),
        )
        .route(
            "/incoming-numbers",
            get(list_incoming_numbers).post(create_incoming_number),
        )
        .route(
            "/incoming-numbers/{id}",
            get(get_incoming_number)
                .put(put_incoming_number)
                .patch(patch_incoming_number)
                .delete(delete_incoming_number),
        )
        .route("/trunks", get(list_trunks).post(create_trunk))
        .route(
            "/trunks/{id}",
            get(get_trunk)
                .put(put_trunk)
                .patch(patch_trunk)
                .delete(delete_trunk),
        )
        .route("/changes", get(list_changes))
        .route("/changes/apply", post(apply_changes))
        .route("/changes/discard", post(discard_changes))
        .route("/conferences/{id}/participants", get(participants))
        .route(
            "/conferences/{id}/participants/{pid}/{action}",
            post(participant_action),
        )
        .route("/events", get(events))
        .route("/conferences/{id}/invite", post(invite))
        .route("/invitations/{id}", get(get_invitation))
        .route("/invitations/{id}/cancel", post(cancel_invitation))
        .route("/registrations", get(registrations))
        .route("/calls", get(calls))
        .route("/tokens", post(create_token))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ));
    let v1 = Router::new()
        // The contract is public: it holds no data, and clients fetch it to generate code.
        .route("/openapi.json", get(openapi))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) });
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Prometheus text: the production revision, the pending-changes gauge, and the engine's own lines.
async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let revision = state.production.borrow().revision;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP confero_config_revision Production configuration revision in use."
    );
    let _ = writeln!(out, "# TYPE confero_config_revision gauge");
    let _ = writeln!(out, "confero_config_revision {revision}");
    match state.store.pending_changes().await {
        Ok(changes) => {
            let _ = writeln!(
                out,
                "# HELP confero_config_pending_changes Draft changes not yet applied."
            );
            let _ = writeln!(out, "# TYPE confero_config_pending_changes gauge");
            let _ = writeln!(out, "confero_config_pending_changes {}", changes.len());
        }
        // Scrapes must not fail because the database hiccups; the gauge is just absent.
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count pending changes"),
    }
    out.push_str(&state.live.metrics());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
