//! Settings: console accounts (who may sign in here) and API tokens (what scripts use).

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{csrf_field, page, row_action, store_error, utc, Errors, Field, Section};
use super::session::{Ctx, Posted};
use super::{done, parse_id, PageError};

const LABELS: &[(&str, &str)] = &[
    ("username", "Username"),
    ("password", "Password"),
    ("new_password", "New password"),
];

/// What a settings page shows besides the lists: a form's error, or a new token once.
#[derive(Default)]
struct Extra {
    account_errors: Errors,
    account_username: String,
    password_errors: Errors,
    token_errors: Errors,
    new_token: Option<(String, String)>,
}

async fn render(ctx: &Ctx, extra: Extra) -> Result<Response, PageError> {
    let accounts = ctx.state.store.list_console_accounts().await?;
    let tokens = ctx.state.store.list_tokens().await?;
    let failed = !extra.account_errors.is_empty()
        || !extra.password_errors.is_empty()
        || !extra.token_errors.is_empty();
    let body = html! {
        div.page-head { h1 { "Settings" } }
        section.card aria-labelledby="accounts-title" {
            h2 #accounts-title { "Console accounts" }
            p.muted { "People who can sign in to this console. Each has full access." }
            table.data {
                thead { tr {
                    th scope="col" { "Username" }
                    th scope="col" { "Created" }
                    th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody {
                    @for a in &accounts {
                        tr data-account-id=(a.id) {
                            td.strong { (a.username) @if a.username == ctx.session.username { " " span.badge { "You" } } }
                            td { (utc(a.created_at)) }
                            td.actions {
                                @if accounts.len() > 1 {
                                    (row_action(ctx, &format!("/settings/accounts/{}/delete", a.id), "Delete", "btn-small btn-danger-quiet",
                                        Some(&format!("Delete the console account {}? They are signed out at once.", a.username))))
                                }
                            }
                        }
                    }
                }
            }
            h3 { "Add an account" }
            form.inline-form method="post" action="/settings/accounts" novalidate {
                (csrf_field(ctx))
                (Field::text("username", "Username", &extra.account_username).required().autocomplete("off").render(&extra.account_errors))
                (Field::text("password", "Password", "").kind("password").required().autocomplete("new-password")
                    .hint("10 characters or more").render(&extra.account_errors))
                button.btn.btn-green type="submit" { "Add account" }
            }
        }
        section.card aria-labelledby="password-title" {
            h2 #password-title { "Your password" }
            form.inline-form method="post" action="/settings/password" novalidate {
                (csrf_field(ctx))
                (Field::text("current_password", "Current password", "").kind("password").required()
                    .autocomplete("current-password").render(&extra.password_errors))
                (Field::text("new_password", "New password", "").kind("password").required()
                    .autocomplete("new-password").hint("10 characters or more; your other sessions are signed out").render(&extra.password_errors))
                button.btn.btn-primary type="submit" { "Change password" }
            }
        }
        section.card aria-labelledby="tokens-title" {
            h2 #tokens-title { "API tokens" }
            p.muted { "For scripts and integrations: send " code { "Authorization: Bearer <token>" } " to " code { "/api/v1" } ". The API is described at " a href="/api/v1/openapi.json" { "/api/v1/openapi.json" } "." }
            @if let Some((name, token)) = &extra.new_token {
                div.secret role="status" data-testid="flash" {
                    p { "Token " strong { (name) } " created. Copy it now: it is shown this once." }
                    p { code.token data-testid="new-token" { (token) } }
                }
            }
            @if tokens.is_empty() {
                p.empty-state { "No API tokens." }
            } @else {
                table.data {
                    thead { tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Created" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for t in &tokens {
                            tr data-token-id=(t.id) {
                                td.strong { (t.name) }
                                td { (utc(t.created_at)) }
                                td.actions {
                                    (row_action(ctx, &format!("/settings/tokens/{}/delete", t.id), "Revoke", "btn-small btn-danger-quiet",
                                        Some(&format!("Revoke the token {}? Scripts using it stop working at once.", t.name))))
                                }
                            }
                        }
                    }
                }
            }
            h3 { "Create a token" }
            form.inline-form method="post" action="/settings/tokens" novalidate {
                (csrf_field(ctx))
                (Field::text("name", "Token name", "").required().autocomplete("off").placeholder("e.g. Odoo sync").render(&extra.token_errors))
                button.btn.btn-green type="submit" { "Create token" }
            }
        }
    };
    let status = if failed {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    let secret = extra.new_token.is_some();
    let mut response = (
        status,
        page(ctx, Section::Settings, "Settings", body).await?,
    )
        .into_response();
    if secret {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    Ok(response)
}

/// `GET /settings`.
pub(crate) async fn show(ctx: Ctx) -> Result<Response, PageError> {
    render(&ctx, Extra::default()).await
}

/// `POST /settings/accounts`.
pub(crate) async fn create_account(posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let username = form.get("username").to_owned();
    match ctx
        .state
        .store
        .create_console_account(&username, form.raw("password"))
        .await
    {
        Ok(a) => {
            done(
                &ctx,
                "/settings",
                format!("Console account {} added.", a.username),
            )
            .await
        }
        Err(e) => {
            let errors = store_error(e, LABELS)?;
            render(
                &ctx,
                Extra {
                    account_errors: errors,
                    account_username: username,
                    ..Extra::default()
                },
            )
            .await
        }
    }
}

/// `POST /settings/accounts/{id}/delete`.
pub(crate) async fn delete_account(
    Path(raw): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    match ctx
        .state
        .store
        .delete_console_account(parse_id(&raw)?)
        .await
    {
        Ok(()) => done(&ctx, "/settings", "Console account deleted.").await,
        Err(e) => {
            let errors = store_error(e, LABELS)?;
            done(&ctx, "/settings", errors.text()).await
        }
    }
}

/// `POST /settings/password`: needs the current password, so a borrowed unlocked
/// browser cannot take the account over.
pub(crate) async fn change_password(posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let username = ctx.session.username.clone();
    let fail = |errors: Errors| async {
        render(
            &ctx,
            Extra {
                password_errors: errors,
                ..Extra::default()
            },
        )
        .await
    };
    if !ctx
        .state
        .store
        .verify_console_login(&username, form.raw("current_password"))
        .await?
    {
        return fail(Errors::on(
            "current_password",
            "This is not your current password.",
        ))
        .await;
    }
    let new = form.raw("new_password");
    if let Err(e) = confero_store::validate_console_password(new, "new_password") {
        return fail(store_error(e, LABELS)?).await;
    }
    ctx.state.store.set_console_password(&username, new).await?;
    ctx.state
        .store
        .end_sessions_of(&username, Some(&ctx.cookie))
        .await?;
    done(
        &ctx,
        "/settings",
        "Password changed. Your other sessions were signed out.",
    )
    .await
}

/// `POST /settings/tokens`: the token is shown on the page this once (never stored).
pub(crate) async fn create_token(posted: Posted) -> Result<Response, PageError> {
    let Posted { ctx, form } = posted;
    let name = form.get("name").to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return render(
            &ctx,
            Extra {
                token_errors: Errors::on("name", "Give the token a name of 1 to 100 characters."),
                ..Extra::default()
            },
        )
        .await;
    }
    let (_, token) = ctx.state.store.create_token(&name).await?;
    render(
        &ctx,
        Extra {
            new_token: Some((name, token)),
            ..Extra::default()
        },
    )
    .await
}

/// `POST /settings/tokens/{id}/delete`.
pub(crate) async fn delete_token(
    Path(raw): Path<String>,
    posted: Posted,
) -> Result<Response, PageError> {
    let ctx = posted.ctx;
    let message = if ctx.state.store.delete_token(parse_id(&raw)?).await? {
        "Token revoked."
    } else {
        "That token was already revoked."
    };
    done(&ctx, "/settings", message).await
}
