//! The REST API (`/api/v1`), `/healthz` and `/metrics`.
//!
//! Every configuration write goes to the store's draft; `POST /changes/apply`
//! publishes it as a new production revision and then hands the snapshot to the
//! engine through the `production` watch channel, which is how a change reaches
//! calls without a restart. Live state (registrations, calls) comes from a
//! [`LiveView`](crate::live::LiveView) the engine keeps up to date, so API handlers never
//! wait on the engine.
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

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Router};

use crate::http::auth::same_secret;
use crate::state::{AppState, MAX_BODY_BYTES};

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

/// Mounts `/api/v1/...`, `/healthz` and `/metrics`.
pub(crate) fn router(state: AppState) -> Router {
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
        .route("/conferences/{id}/lock", post(lock))
        .route("/conferences/{id}/unlock", post(unlock))
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
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(token) = state.metrics_token.as_deref() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !same_secret(given, token) {
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
    media_metrics(&mut out, &state.media_clocks);
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

/// Each media thread's clock and load, labelled by thread.
fn media_metrics(out: &mut String, clocks: &[std::sync::Arc<crate::shell::media::MediaClock>]) {
    use crate::shell::media::MediaThreadStats;
    type Value = fn(&MediaThreadStats) -> String;
    let stats: Vec<MediaThreadStats> = clocks.iter().map(|c| c.stats()).collect();
    let series: [(&str, &str, &str, Value); 6] = [
        (
            "confero_media_ticks_total",
            "counter",
            "20 ms media ticks run.",
            |s| s.clock.ticks.to_string(),
        ),
        (
            "confero_media_overruns_total",
            "counter",
            "Times the media thread fell more than 100 ms behind.",
            |s| s.clock.overruns.to_string(),
        ),
        (
            "confero_media_skipped_ticks_total",
            "counter",
            "Ticks skipped to catch up (20 ms of silence each, timestamps kept with the clock).",
            |s| s.clock.skipped_ticks.to_string(),
        ),
        (
            "confero_media_busy_seconds_total",
            "counter",
            "Time the media thread spent working rather than waiting for its next tick.",
            |s| format!("{:.6}", s.busy.as_secs_f64()),
        ),
        (
            "confero_media_thread_legs",
            "gauge",
            "Call legs on the media thread.",
            |s| s.legs.to_string(),
        ),
        (
            "confero_media_thread_mixes",
            "gauge",
            "Rooms and anchored calls mixed on the media thread.",
            |s| s.mixes.to_string(),
        ),
    ];
    for (name, kind, help, value) in series {
        let samples = stats
            .iter()
            .enumerate()
            .map(|(thread, s)| (format!("{{thread=\"{thread}\"}}"), value(s)));
        crate::live::publish::metric(out, name, kind, help, samples);
    }
}
