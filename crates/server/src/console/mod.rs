//! The management console: server-rendered pages on the HTTP listener, beside the API.
//!
//! Every page works without JavaScript (forms post, the server redirects); a small script
//! adds the pop-ups (invite, confirm), live updates over the API's server-sent events and
//! the dependent fields of the incoming-number form. Pages read and write through the same
//! store as the API, so the console can do nothing the API cannot and vice versa.
//!
//! Sign-in creates a session (see [`session`]); every form carries the session's CSRF
//! token; the console's scripts call `/api/v1` with the session cookie and the token in a
//! header. Validation errors come from the store's rules and are shown next to the field
//! they name, with what was typed kept in the form.

mod assets;
mod changes;
mod conferences;
mod layout;
pub(crate) mod login;
mod numbers;
mod odoo;
pub(crate) mod session;
mod settings;
mod trunks;
mod users;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use confero_store::StoreError;
use maud::html;

use crate::state::{AppState, MAX_BODY_BYTES};
use layout::document;

/// The console's routes, to merge beside the API's.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/conferences") }))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/assets/{file}", get(assets::serve))
        .route("/conferences", get(conferences::list))
        .route(
            "/conferences/new",
            get(conferences::new_form).post(conferences::create),
        )
        .route("/conferences/{id}", get(conferences::room))
        .route(
            "/conferences/{id}/participants",
            get(conferences::participants_fragment),
        )
        .route(
            "/conferences/{id}/edit",
            get(conferences::edit_form).post(conferences::update),
        )
        .route("/conferences/{id}/delete", post(conferences::delete))
        .route(
            "/conferences/{id}/invite",
            get(conferences::invite_form).post(conferences::invite),
        )
        .route("/invitations/{id}", get(conferences::invitation_page))
        .route(
            "/conferences/{id}/participants/{pid}/{action}",
            post(conferences::participant_action),
        )
        .route("/conferences/{id}/lock", post(conferences::lock))
        .route("/conferences/{id}/unlock", post(conferences::unlock))
        .route("/incoming-numbers", get(numbers::list))
        .route(
            "/incoming-numbers/new",
            get(numbers::new_form).post(numbers::create),
        )
        .route(
            "/incoming-numbers/{id}/edit",
            get(numbers::edit_form).post(numbers::update),
        )
        .route("/incoming-numbers/{id}/delete", post(numbers::delete))
        .route("/users", get(users::list))
        .route("/users/new", get(users::new_form).post(users::create))
        .route(
            "/users/{id}/edit",
            get(users::edit_form).post(users::update),
        )
        .route("/users/{id}/delete", post(users::delete))
        .route("/users/{id}/reset-password", post(users::reset_password))
        .route("/trunks", get(trunks::list))
        .route("/trunks/new", get(trunks::new_form).post(trunks::create))
        .route(
            "/trunks/{id}/edit",
            get(trunks::edit_form).post(trunks::update),
        )
        .route("/trunks/{id}/delete", post(trunks::delete))
        .route("/connect-odoo", get(odoo::show))
        .route("/changes", get(changes::list))
        .route("/changes/apply", post(changes::apply))
        .route("/changes/discard", post(changes::discard))
        .route("/settings", get(settings::show))
        .route("/settings/accounts", post(settings::create_account))
        .route(
            "/settings/accounts/{id}/delete",
            post(settings::delete_account),
        )
        .route("/settings/password", post(settings::change_password))
        .route("/settings/tokens", post(settings::create_token))
        .route("/settings/tokens/{id}/delete", post(settings::delete_token))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> Response {
    PageError::NotFound.into_response()
}

/// Why a page could not be shown. Rendered as a small page of its own.
#[derive(Debug)]
pub(crate) enum PageError {
    NotFound,
    /// A refused post (CSRF, foreign origin) or a forbidden action.
    Forbidden(String),
    /// A form body that could not be read.
    BadForm(String),
    /// The database is busy; the administrator should retry.
    Busy,
    /// A bug or an operator problem; the detail goes to the log.
    Internal(String),
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => PageError::NotFound,
            e if e.is_busy() => PageError::Busy,
            other => PageError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            PageError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "This page does not exist, or what it showed was deleted.".to_owned(),
            ),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Refused", m),
            PageError::BadForm(m) => (StatusCode::BAD_REQUEST, "This form could not be read", m),
            PageError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "The server is busy. Please try again in a moment.".to_owned(),
            ),
            PageError::Internal(detail) => {
                tracing::error!(%detail, "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The server could not show this page; the details are in its log.".to_owned(),
                )
            }
        };
        let body = document(
            title,
            None,
            html! {
                main.standalone {
                    div.card.narrow {
                        h1 { (title) }
                        p { (message) }
                        p { a.btn href="/conferences" { "Back to the console" } }
                    }
                }
            },
        );
        (status, body).into_response()
    }
}

/// Percent-encodes a query value.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses an id from the URL; anything else is a page that does not exist.
pub(crate) fn parse_id(raw: &str) -> Result<i64, PageError> {
    raw.parse::<i64>().map_err(|_| PageError::NotFound)
}

/// After a successful post: remember the message for the next page, then go there.
pub(crate) async fn done(
    ctx: &session::Ctx,
    to: &str,
    message: impl AsRef<str>,
) -> Result<Response, PageError> {
    ctx.state
        .store
        .set_flash(&ctx.cookie, message.as_ref())
        .await?;
    Ok(Redirect::to(to).into_response())
}

#[cfg(test)]
mod tests;
