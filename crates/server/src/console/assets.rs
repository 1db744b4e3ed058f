//! The console's stylesheet and script, built into the binary (nothing to install, no
//! Node step). Served with an ETag: browsers revalidate cheaply and never run a stale
//! script after an upgrade.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub(crate) const CSS_PATH: &str = "/assets/console.css";
pub(crate) const JS_PATH: &str = "/assets/console.js";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

fn etag(body: &str, cell: &'static OnceLock<String>) -> &'static str {
    cell.get_or_init(|| {
        format!(
            "\"{}\"",
            &hex::encode(Sha256::digest(body.as_bytes()))[..16]
        )
    })
}

pub(crate) async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    static CSS_TAG: OnceLock<String> = OnceLock::new();
    static JS_TAG: OnceLock<String> = OnceLock::new();
    let (body, mime, tag) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8", etag(CSS, &CSS_TAG)),
        "console.js" => (JS, "text/javascript; charset=utf-8", etag(JS, &JS_TAG)),
        _ => return super::PageError::NotFound.into_response(),
    };
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let common = [(header::CACHE_CONTROL, "no-cache"), (header::ETAG, tag)];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, mime)], body).into_response()
}
