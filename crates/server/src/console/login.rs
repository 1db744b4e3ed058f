//! Sign-in and sign-out.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::document;
use super::session::{safe_next, FormFields};
use super::PageError;
use crate::http::auth::{client_address, cookie_value, foreign_origin, set_cookie, OverTls};
use crate::http::throttle::Attempt;
use crate::state::AppState;

#[derive(Deserialize)]
pub(crate) struct Next {
    #[serde(default)]
    next: Option<String>,
}

fn login_page(next: &str, username: &str, alert: Option<&str>) -> Markup {
    document(
        "Sign in",
        None,
        html! {
            main.standalone {
                div.card.narrow.login {
                    div.brand-big { span.logo aria-hidden="true" { "C" } span { "Confero" } }
                    h1 { "Sign in to Confero" }
                    @if let Some(a) = alert { div.alert role="alert" { (a) } }
                    form method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        div.field {
                            label for="f-username" { "Username" }
                            input #f-username name="username" type="text" value=(username)
                                autocomplete="username" required autofocus[username.is_empty()];
                        }
                        div.field {
                            label for="f-password" { "Password" }
                            input #f-password name="password" type="password"
                                autocomplete="current-password" required autofocus[!username.is_empty()];
                        }
                        button.btn.btn-primary.wide type="submit" { "Sign in" }
                    }
                }
            }
        },
    )
}

/// `GET /login`; someone already signed in goes straight on.
pub(crate) async fn form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Next>,
) -> Result<Response, PageError> {
    let next = safe_next(q.next.as_deref().unwrap_or("/conferences")).to_owned();
    if let Some(cookie) = cookie_value(&headers) {
        if state.store.session(cookie).await?.is_some() {
            return Ok(Redirect::to(&next).into_response());
        }
    }
    Ok(login_page(&next, "", None).into_response())
}

/// `POST /login`.
pub(crate) async fn submit(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    tls: Option<Extension<OverTls>>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    if foreign_origin(&headers) {
        return Err(PageError::Forbidden(
            "Sign-in forms from other sites are refused.".into(),
        ));
    }
    let form = FormFields::from_pairs(pairs);
    let username = form.get("username");
    let password = form.raw("password");
    let next = safe_next(form.get("next")).to_owned();
    let attempt = Attempt::new(client_address(connect.as_ref().map(|c| &c.0)), username);
    let wait = state.throttle_wait(Instant::now(), &attempt);
    if let Some(wait) = wait {
        let secs = wait.as_secs().max(1);
        let page = login_page(
            &next,
            username,
            Some(&format!(
                "Too many failed sign-ins. Try again in {secs} second{}.",
                if secs == 1 { "" } else { "s" }
            )),
        );
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            page,
        )
            .into_response());
    }
    if username.is_empty()
        || password.len() > 1024
        || !state.store.verify_console_login(username, password).await?
    {
        state.throttle_failed(Instant::now(), &attempt);
        tracing::warn!(username, "console sign-in failed");
        return Ok((
            StatusCode::UNAUTHORIZED,
            login_page(&next, username, Some("Wrong username or password.")),
        )
            .into_response());
    }
    state.throttle_succeeded(Instant::now(), &attempt);
    let (cookie, _) = state.store.create_session(username).await?;
    tracing::info!(username, "console sign-in");
    let mut response = Redirect::to(&next).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(Some(&cookie), tls.is_some()));
    Ok(response)
}

/// `POST /logout`: ends the session (CSRF-checked, so no other site can sign you out).
pub(crate) async fn logout(posted: super::session::Posted) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    ctx.state.store.end_session(&ctx.cookie).await?;
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(None, ctx.secure));
    Ok(response)
}
