//! Who is calling: an API token (`Authorization: Bearer …`) or a console
//! account (HTTP Basic). Anything else gets 401 with a Basic challenge.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::{ApiError, ApiState};

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

/// Browsers resend remembered Basic credentials to any page's requests, so a
/// state-changing request from another origin is refused (CSRF). API clients
/// other than browsers send no Origin header and are unaffected.
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    !origin_host.eq_ignore_ascii_case(host)
}

pub(super) async fn require_auth(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match credentials(req.headers()) {
        Some(Credentials::Bearer(token)) => match state.store.verify_token(&token).await {
            Ok(true) => Caller::Token,
            Ok(false) => return ApiError::Unauthorized.into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        },
        Some(Credentials::Basic { username, password }) => {
            let unsafe_method =
                !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            if unsafe_method && cross_origin(req.headers()) {
                return ApiError::Forbidden(
                    "cross-origin requests with console credentials are refused".into(),
                )
                .into_response();
            }
            match state.store.verify_console_login(&username, &password).await {
                Ok(true) => Caller::Console { username },
                Ok(false) => return ApiError::Unauthorized.into_response(),
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
        None => return ApiError::Unauthorized.into_response(),
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

    #[test]
    fn detects_cross_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("pbx.example:8080"));
        assert!(!cross_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://pbx.example:8080"),
        );
        assert!(!cross_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(cross_origin(&h));
    }
}
