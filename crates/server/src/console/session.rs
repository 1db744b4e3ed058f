//! Who is looking at the console: the session cookie, and the CSRF check on posts.
//!
//! Pages take a [`Ctx`] (a signed-in administrator, or a redirect to the sign-in page);
//! form posts take a [`Posted`], which is a `Ctx` plus a form whose `_csrf` field matched
//! the session's token and whose `Origin`, when the browser sent one, is this server.
//! A handler cannot get at a posted form without the check having passed.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};
use confero_store::Session;

use super::PageError;
use crate::api::ApiState;

/// The cookie holding the session id.
pub(crate) const COOKIE: &str = "confero_session";
/// The form field carrying the CSRF token.
pub(crate) const CSRF_FIELD: &str = "_csrf";
/// The header console scripts use to carry the CSRF token to the API.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Marks requests that arrived over the HTTPS listener, so cookies get `Secure`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OverTls;

/// The session cookie's value, if the browser sent one.
pub(crate) fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// `Set-Cookie` for a new session (or, with `None`, one that clears it).
pub(crate) fn set_cookie(value: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = match value {
        // HttpOnly: scripts never see it; SameSite=Strict: other sites' pages cannot
        // make the browser send it (a second line of defence behind the CSRF token).
        Some(v) => format!("{COOKIE}={v}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Compares secrets in time independent of where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// True when the browser says the request comes from a page of another site.
pub(crate) fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if origin == "null" {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    !origin_host.eq_ignore_ascii_case(host)
}

/// A signed-in administrator looking at a page.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) state: ApiState,
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

impl FromRequestParts<ApiState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
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

impl FromRequest<ApiState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Response> {
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
    fn finds_the_session_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; confero_session=abc ; b=2"),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("confero_session=xyz"),
        );
        assert_eq!(cookie_value(&h), Some("xyz"));
        assert_eq!(cookie_value(&HeaderMap::new()), None);
    }

    #[test]
    fn detects_foreign_origins() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("pbx.example:8080"));
        assert!(
            !foreign_origin(&h),
            "no Origin: not a browser's cross-site request"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://pbx.example:8080"),
        );
        assert!(!foreign_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(foreign_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(foreign_origin(&h));
    }

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next("/users?x=1"), "/users?x=1");
        assert_eq!(safe_next("//evil.example/"), "/conferences");
        assert_eq!(safe_next("https://evil.example/"), "/conferences");
        assert_eq!(safe_next("/\\evil.example"), "/conferences");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let c = set_cookie(Some("v"), true);
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie(Some("v"), false)
            .to_str()
            .unwrap()
            .contains("Secure"));
        assert!(set_cookie(None, false)
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
    }
}
