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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Router};
use confero_pbx::config::Snapshot;
use tokio::sync::watch;

use crate::throttle::{Attempt, LoginThrottle};

pub use auth::Caller;
pub use error::ApiError;
pub use handlers::{TrunkView, UserView};
pub use json::ApiJson;

/// The request-body parser every API endpoint uses, for the fuzzer: `Err` holds the 4xx
/// answer's text (and the field it names).
#[doc(hidden)]
pub fn parse_body_for_fuzzing<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    json::parse(bytes).map_err(|e| match e {
        ApiError::BadRequest { message, field } => format!("{message} ({field:?})"),
        other => format!("{:?}", other.status()),
    })
}

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
    /// Rooms whose access code someone was guessing in the last hour:
    /// `{"conference_id", "failures_last_hour", "alerted_at"}`.
    fn code_guessing(&self) -> Vec<serde_json::Value> {
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
    /// A trunk's live registration state, once the engine has it.
    fn trunk(&self, _id: i64) -> Option<serde_json::Value> {
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
    /// The current state of every kind of live event, sent first to a new subscriber so
    /// that a page (re)connecting after a restart starts from the truth.
    fn snapshot_events(&self) -> Vec<(String, String)> {
        Vec::new()
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
    /// Failed sign-ins (console and HTTP Basic), shared so both count toward one budget.
    throttle: Arc<Mutex<LoginThrottle>>,
    /// Becomes true when the server shuts down: long-lived responses (event streams)
    /// end, so that graceful shutdown does not wait for browsers to close them.
    pub(crate) closing: watch::Receiver<bool>,
    /// Where SIP-over-WebSocket connections go (absent in tests without a SIP engine).
    pub(crate) websocket: Option<crate::sip_shell::ConnTable>,
    /// The addresses this server listens on, for the "Connect Odoo" page.
    pub(crate) endpoints: Option<Arc<crate::console::Endpoints>>,
    /// `--metrics-token`: /metrics is refused without it.
    metrics_token: Option<Arc<str>>,
    /// Stream connection limits, for /metrics.
    pub(crate) connections: Option<Arc<crate::limits::ConnLimits>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

impl ApiState {
    pub fn new(
        store: confero_store::Store,
        live: Arc<dyn LiveView>,
        production: watch::Sender<Arc<Snapshot>>,
    ) -> Self {
        ApiState {
            store,
            live,
            production,
            throttle: Arc::default(),
            closing: watch::channel(false).1,
            websocket: None,
            endpoints: None,
            metrics_token: None,
            connections: None,
        }
    }

    /// Reports the stream connection limits in /metrics.
    pub(crate) fn with_connection_limits(mut self, limits: Arc<crate::limits::ConnLimits>) -> Self {
        self.connections = Some(limits);
        self
    }

    /// Requires `Authorization: Bearer token` on /metrics.
    pub fn with_metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token.map(Arc::from);
        self
    }

    /// Tells the console where browsers can reach this server.
    pub(crate) fn with_endpoints(mut self, endpoints: crate::console::Endpoints) -> Self {
        self.endpoints = Some(Arc::new(endpoints));
        self
    }

    /// Accepts SIP over WebSocket on `/ws`, feeding `conns`.
    pub(crate) fn with_websocket(mut self, conns: crate::sip_shell::ConnTable) -> Self {
        self.websocket = Some(conns);
        self
    }

    /// Ends event streams when `closing` turns true.
    pub fn with_shutdown(mut self, closing: watch::Receiver<bool>) -> Self {
        self.closing = closing;
        self
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long this sign-in must wait before its password is looked at, if at all.
    pub(crate) fn throttle_wait(&self, now: Instant, attempt: &Attempt) -> Option<Duration> {
        self.throttle().wait(now, attempt)
    }

    pub(crate) fn throttle_failed(&self, now: Instant, attempt: &Attempt) {
        self.throttle().failed(now, attempt);
    }

    pub(crate) fn throttle_succeeded(&self, now: Instant, attempt: &Attempt) {
        self.throttle().succeeded(now, attempt);
    }

    /// Publishes the draft, then hands the new revision to the engine: the one way a
    /// change reaches calls, for the API and the console alike.
    pub(crate) async fn apply(&self) -> Result<Snapshot, confero_store::StoreError> {
        let snapshot = self.store.apply().await?;
        // Two applies can finish out of order; never let the engine go back to an
        // older revision, and do not wake it when nothing changed.
        self.production.send_if_modified(|current| {
            if snapshot.revision > current.revision {
                *current = Arc::new(snapshot.clone());
                true
            } else {
                false
            }
        });
        Ok(snapshot)
    }
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
        .route("/alerts/code-guessing", get(code_guessing))
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
async fn metrics(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(token) = state.metrics_token.as_deref() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
                "metrics need the token given with --metrics-token\n",
            )
                .into_response();
        }
    }
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
    if let Some(limits) = &state.connections {
        let _ = writeln!(
            out,
            "# HELP confero_stream_connections Inbound TCP, TLS, HTTP and WebSocket connections held.\n\
             # TYPE confero_stream_connections gauge\nconfero_stream_connections {}",
            limits.in_use()
        );
        let _ = writeln!(
            out,
            "# HELP confero_stream_connections_max The most that may be held (per source: {}).\n\
             # TYPE confero_stream_connections_max gauge\nconfero_stream_connections_max {}",
            crate::limits::MAX_PER_SOURCE,
            limits.max_total()
        );
        let _ = writeln!(
            out,
            "# HELP confero_stream_connections_refused_total Connections closed at once for the limits.\n\
             # TYPE confero_stream_connections_refused_total counter\nconfero_stream_connections_refused_total {}",
            limits.refused()
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Compares without an early exit, so timing does not tell how much of a secret matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
