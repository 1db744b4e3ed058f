//! Who is looking at the console: the session cookie, and the CSRF check on posts.
//!
//! Pages take a [`Ctx`] (a signed-in administrator, or a redirect to the sign-in page);
//! form posts take a [`Posted`], which is a `Ctx` plus a form whose `_csrf` field matched
//! the session's token and whose `Origin`, when the browser sent one, is this server.
//! A handler cannot get at a posted form without the check having passed.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use confero_store::Session;

use super::PageError;
use crate::http::auth::{cookie_value, foreign_origin, same_secret, OverTls};
use crate::state::AppState;

/// The form field carrying the CSRF token.
pub(crate) const CSRF_FIELD: &str = "_csrf";

/// A signed-in administrator looking at a page.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) state: AppState,
    pub(crate) cookie: String,
    pub(crate) session: Session,
    pub(crate) secure: bool,
}

/// Where to go after signing in: only a path on this server, never another site.
pub(crate) fn safe_next(next: &str) -> &str {
    // A local path only: printable ASCII (browsers drop tabs and newlines, so "/\t/evil"
    // would become "//evil", another site; other control characters cannot be put in a
    // Location header at all), no "//" or backslash (which browsers read as "/").
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && next
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'\\')
        && next.len() < 512;
    if ok {
        next
    } else {
        "/conferences"
    }
}

fn login_redirect(parts: &Parts) -> Response {
    let next = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let target = if parts.method == Method::GET && safe_next(&next) == next {
        format!("/login?next={}", super::url_encode(&next))
    } else {
        "/login".to_owned()
    };
    Redirect::to(&target).into_response()
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(cookie) = cookie_value(&parts.headers).map(str::to_owned) else {
            return Err(login_redirect(parts));
        };
        match state.store.session(&cookie).await {
            Ok(Some(session)) => Ok(Ctx {
                state: state.clone(),
                cookie,
                session,
                secure: parts.extensions.get::<OverTls>().is_some(),
            }),
            Ok(None) => Err(login_redirect(parts)),
            Err(e) => Err(PageError::from(e).into_response()),
        }
    }
}

/// A form's fields, by name (the last value wins when a name repeats).
#[derive(Clone, Debug, Default)]
pub(crate) struct FormFields(HashMap<String, String>);

impl FormFields {
    /// The field's value, trimmed; empty when absent.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", |v| v.trim())
    }

    /// The field's value exactly as typed (passwords may begin or end with spaces).
    pub(crate) fn raw(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        FormFields(pairs.into_iter().collect())
    }
}

/// A form post that passed the CSRF check, from a signed-in administrator.
pub(crate) struct Posted {
    pub(crate) ctx: Ctx,
    pub(crate) form: FormFields,
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let ctx = Ctx::from_request_parts(&mut parts, state).await?;
        if foreign_origin(&parts.headers) {
            return Err(PageError::Forbidden(
                "This form was sent from another site; it was refused.".into(),
            )
            .into_response());
        }
        let req = Request::from_parts(parts, body);
        let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(|e| PageError::BadForm(e.body_text()).into_response())?;
        let form = FormFields::from_pairs(pairs);
        if !same_secret(form.get(CSRF_FIELD), &ctx.session.csrf_token) {
            return Err(PageError::Forbidden(
                "This form has expired or did not come from the console. Go back, reload the page and try again."
                    .into(),
            )
            .into_response());
        }
        Ok(Posted { ctx, form })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next("/users?x=1"), "/users?x=1");
        assert_eq!(safe_next("//evil.example/"), "/conferences");
        assert_eq!(safe_next("https://evil.example/"), "/conferences");
        assert_eq!(safe_next("/\\evil.example"), "/conferences");
    }
}
