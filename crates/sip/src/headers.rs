//! Small readers for the headers a transaction user touches, on top of ezk-sip-types.
//!
//! A B2BUA works with header *values as text* when it builds messages (it copies
//! name-addrs between legs verbatim) and with ezk's typed headers when it must look inside;
//! every reader returns `None` (or a default it names) for a header a stranger mangled.

use crate::message::Request;
use crate::{Headers, Name, SipUri};
use ezk_sip_types::header::typed::{Contact, FromTo};
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::uri::SipUriUserPart;

/// First raw value of a header.
pub fn first(headers: &Headers, name: &Name) -> Option<String> {
    headers.get_raw(name).next().map(|v| v.to_string())
}

/// Every raw value of a header, split at top-level commas (Route, Record-Route, Contact
/// may be folded into one line).
pub fn all_values(headers: &Headers, name: &Name) -> Vec<String> {
    headers
        .get_raw(name)
        .flat_map(|v| split_top_level_commas(v))
        .collect()
}

/// Splits at commas outside `<...>` and quotes.
pub fn split_top_level_commas(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth_angle = false;
    let mut in_quote = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '<' if !in_quote => depth_angle = true,
            '>' if !in_quote => depth_angle = false,
            ',' if !in_quote && !depth_angle => {
                let part = value[start..i].trim();
                if !part.is_empty() {
                    out.push(part.to_owned());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let part = value[start..].trim();
    if !part.is_empty() {
        out.push(part.to_owned());
    }
    out
}

/// The user part of a SIP URI, if it has one.
pub fn uri_user(uri: &SipUri) -> Option<String> {
    match &uri.user_part {
        SipUriUserPart::Empty => None,
        SipUriUserPart::User(u) => Some(u.to_string()),
        SipUriUserPart::UserPw(up) => Some(up.user.to_string()),
    }
}

/// Host part of a SIP URI, lower-cased (without port).
pub fn uri_host(uri: &SipUri) -> String {
    uri.host_port.host.to_string().to_ascii_lowercase()
}

/// A SIP URI as text.
pub fn uri_text(uri: &SipUri) -> String {
    uri.default_print_ctx().to_string()
}

/// From or To, typed.
pub fn from_to(headers: &Headers, name: Name) -> Option<FromTo> {
    headers.get::<FromTo>(name).ok()
}

/// The name-addr of a From/To header without its tag, as text to copy into another leg.
pub fn name_addr_text(ft: &FromTo) -> String {
    ft.uri.default_print_ctx().to_string()
}

/// The Contact URIs of a message, typed; `None` when a Contact header is present but
/// unreadable.
pub fn contacts(headers: &Headers) -> Option<Vec<Contact>> {
    if !headers.contains(&Name::CONTACT) {
        return Some(Vec::new());
    }
    headers.get_named::<Vec<Contact>>().ok()
}

/// `Contact: *` (only meaningful in REGISTER).
pub fn is_wildcard_contact(headers: &Headers) -> bool {
    headers.get_raw(&Name::CONTACT).any(|v| v.trim() == "*")
}

/// A Contact's `expires` parameter, if present and numeric.
pub fn contact_expires(c: &Contact) -> Option<u32> {
    c.params
        .get_val("expires")
        .and_then(|v| v.trim().parse().ok())
}

/// The URI of a Contact as text, e.g. `sip:alice@192.0.2.1:5062;transport=tcp`.
pub fn contact_uri_text(c: &Contact) -> String {
    c.uri.uri.default_print_ctx().to_string()
}

/// The Expires header value, if present and numeric.
pub fn expires_header(headers: &Headers) -> Option<u32> {
    first(headers, &Name::EXPIRES).and_then(|v| v.trim().parse().ok())
}

/// Max-Forwards, defaulting to 70 when absent or unreadable.
pub fn max_forwards(req: &Request) -> u32 {
    first(&req.headers, &Name::MAX_FORWARDS)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(70)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_inside_brackets_and_quotes_do_not_split() {
        let v = r#""Doe, John" <sip:a@b;x=1,2>, <sip:c@d>;q=0.5 , sip:e@f"#;
        assert_eq!(
            split_top_level_commas(v),
            vec![
                r#""Doe, John" <sip:a@b;x=1,2>"#.to_string(),
                "<sip:c@d>;q=0.5".to_string(),
                "sip:e@f".to_string()
            ]
        );
    }
}
