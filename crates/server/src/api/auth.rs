//! Who is calling: an API token (`Authorization: Bearer …`), a console account (HTTP
//! Basic, throttled like the sign-in page), or the console's own scripts (the session
//! cookie, with the CSRF token in `X-CSRF-Token` for writes). Anything else gets 401.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::{ApiError, AppState};
use crate::http::auth::{client_address, cookie_value, foreign_origin, same_secret, CSRF_HEADER};
use crate::http::throttle::Attempt;

/// The authenticated caller, available to handlers as an `Extension<Caller>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Token,
    Console { username: String },
}

/// Credentials longer than this are not worth hashing.
const MAX_CREDENTIAL_BYTES: usize = 1024;

enum Credentials {
    Bearer(String),
    Basic { username: String, password: String },
}

fn credentials(headers: &HeaderMap) -> Option<Credentials> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if value.len() > MAX_CREDENTIAL_BYTES {
        return None;
    }
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Credentials::Bearer(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (username, password) = decoded.split_once(':')?;
        return Some(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    None
}

/// Why a request is not let in, before any handler runs.
fn refuse(message: &str) -> Response {
    ApiError::Forbidden(message.into()).into_response()
}

pub(super) async fn require_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let caller = match credentials(req.headers()) {
        Some(Credentials::Bearer(token)) => match state.store.verify_token(&token).await {
            Ok(true) => Caller::Token,
            Ok(false) => return ApiError::Unauthorized.into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        },
        Some(Credentials::Basic { username, password }) => {
            // Browsers resend remembered Basic credentials to any page's requests, so a
            // state-changing request from another origin is refused (CSRF). API clients
            // other than browsers send no Origin header and are unaffected.
            if unsafe_method && foreign_origin(req.headers()) {
                return refuse("cross-origin requests with console credentials are refused");
            }
            let connect = req.extensions().get::<ConnectInfo<SocketAddr>>();
            let attempt = Attempt::new(client_address(connect), &username);
            if let Some(wait) = state.throttle_wait(Instant::now(), &attempt) {
                return ApiError::TooManyAttempts(wait).into_response();
            }
            match state.store.verify_console_login(&username, &password).await {
                Ok(true) => {
                    state.throttle_succeeded(Instant::now(), &attempt);
                    Caller::Console { username }
                }
                Ok(false) => {
                    state.throttle_failed(Instant::now(), &attempt);
                    return ApiError::Unauthorized.into_response();
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
        // The console's own scripts: the session cookie, plus the session's CSRF token
        // in a header for anything that changes state (a cookie alone proves nothing:
        // the browser attaches it to requests other sites trigger).
        None => {
            let Some(cookie) = cookie_value(req.headers()) else {
                return ApiError::Unauthorized.into_response();
            };
            let session = match state.store.session(cookie).await {
                Ok(Some(s)) => s,
                Ok(None) => return ApiError::Unauthorized.into_response(),
                Err(e) => return ApiError::from(e).into_response(),
            };
            if unsafe_method {
                let token = req
                    .headers()
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if foreign_origin(req.headers()) || !same_secret(token, &session.csrf_token) {
                    return refuse("missing or wrong X-CSRF-Token for a console session");
                }
            }
            Caller::Console {
                username: session.username,
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_bearer_and_basic() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(matches!(credentials(&h), Some(Credentials::Bearer(t)) if t == "abc"));
        // "admin:pa:ss" — the password may contain colons.
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic YWRtaW46cGE6c3M="),
        );
        assert!(
            matches!(credentials(&h), Some(Credentials::Basic { username, password }) if username == "admin" && password == "pa:ss")
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(credentials(&h).is_none());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert!(credentials(&h).is_none());
    }
}
