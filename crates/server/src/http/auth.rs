//! What the API and the console share about who is asking: the session cookie, the
//! CSRF header, the origin check, the client's address, and comparing secrets.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue};

/// The cookie holding the session id.
pub(crate) const COOKIE: &str = "confero_session";
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

/// The client's address, for throttling; requests without one (tests) share one key.
pub(crate) fn client_address(connect: Option<&ConnectInfo<SocketAddr>>) -> String {
    connect.map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
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
