//! `ApiJson<T>`: the request-body extractor.
//!
//! axum's `Json` answers errors in plain text and does not say which field was
//! wrong in a machine-readable way; forms need the field to put the message
//! next to it. This extractor follows the serde path to the failing value
//! (`destination.conference_id`), falls back to the name serde gives for
//! missing and unknown fields, and turns everything into an [`ApiError`].

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body, parsed with errors that name the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Requiring a JSON content type also keeps HTML forms on other sites
        // from posting here with a browser's remembered Basic credentials.
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request(format!("cannot read the request body: {rejection}"), None)
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a body; public to the module for fuzzing and tests.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = strip_position(&inner.to_string());
        match inner.classify() {
            serde_json::error::Category::Data => {
                let at_root = path == "." || path.is_empty();
                // An unknown field's path ends with it; a missing field is
                // reported at its struct's path and named only in the message.
                let field = match (named_field(&message), at_root) {
                    (Some(name), true) => Some(name),
                    (Some(name), false) if path.rsplit('.').next() != Some(name.as_str()) => {
                        Some(format!("{path}.{name}"))
                    }
                    (_, false) => Some(path),
                    (None, true) => None,
                };
                ApiError::BadRequest { message, field }
            }
            _ => ApiError::bad_request(format!("malformed JSON: {message}"), None),
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad_request(
            format!("malformed JSON: {}", strip_position(&e.to_string())),
            None,
        )
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the field name is more useful.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// serde reports fields missing from (or unknown to) a struct at the struct's
/// own path, naming the field in backticks: "missing field `name`".
fn named_field(message: &str) -> Option<String> {
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use confero_store::{NewConference, NewIncomingNumber, NewTrunk};

    fn field_of<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> Option<String> {
        match parse::<T>(body.as_bytes()) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("expected a bad request for {body}, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of::<NewConference>(r#"{"name": 5, "extension": "800"}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of::<NewConference>(r#"{"extension": "800"}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of::<NewConference>(r#"{"name":"a","extension":"800","admin_ext":"1"}"#)
                .as_deref(),
            Some("admin_ext")
        );
        assert_eq!(
            field_of::<NewTrunk>(r#"{"name":"a","host":"h","port":70000}"#).as_deref(),
            Some("port")
        );
        assert_eq!(
            field_of::<NewIncomingNumber>(
                r#"{"number":"123","destination":{"type":"conference","conference_id":"x"}}"#
            )
            .as_deref(),
            Some("destination.conference_id")
        );
        assert_eq!(
            field_of::<NewIncomingNumber>(r#"{"number":"123","destination":{"type":"nowhere"}}"#)
                .as_deref(),
            Some("destination.type")
        );
        assert_eq!(
            field_of::<NewIncomingNumber>(
                r#"{"number":"123","destination":{"type":"conference"}}"#
            )
            .as_deref(),
            Some("destination.conference_id")
        );
        assert_eq!(
            field_of::<NewIncomingNumber>(
                r#"{"number":"123","destination":{"type":"hang_up","extension":"1"}}"#
            )
            .as_deref(),
            Some("destination.extension")
        );
    }

    #[test]
    fn syntax_errors_have_no_field() {
        assert_eq!(field_of::<NewConference>(r#"{"name": "#), None);
        assert_eq!(
            field_of::<NewConference>(r#"{"name":"a","extension":"800"} trailing"#),
            None
        );
        assert_eq!(field_of::<NewConference>(""), None);
    }
}
