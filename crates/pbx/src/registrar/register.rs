//! A REGISTER from an authenticated user: its contacts read, the table changed, the
//! answer built (RFC 3261 §10.3, steps 5 to 8).

use std::time::Instant;

use confero_sip::headers;
use confero_sip::message::{response_for, Request, Response};
use confero_sip::transport::Peer;
use confero_sip::{Name, StatusCode};

use super::{
    BindingChange, ContactRequest, RegisterError, RegisterUpdate, Registrar, DEFAULT_EXPIRES,
    MIN_EXPIRES,
};
use crate::config::User;

impl Registrar {
    /// What `req`, a REGISTER for `user`'s address of record that authenticated as `user`,
    /// does: the response to send (with our To tag `tag`), and the binding changes to
    /// persist (none unless it is a 200).
    pub fn register(
        &mut self,
        now: Instant,
        unix: u64,
        req: &Request,
        user: &User,
        from: Peer,
        tag: &str,
    ) -> (Response, Vec<BindingChange>) {
        let refuse = |code: u16, reason: &str| {
            let mut resp = response_for(req, StatusCode::from(code), Some(tag));
            resp.reason = Some(reason.to_owned());
            (resp, Vec::new())
        };
        let header_expires = headers::expires_header(&req.headers);
        let contacts = if headers::is_wildcard_contact(&req.headers) {
            if header_expires != Some(0)
                || headers::all_values(&req.headers, &Name::CONTACT).len() != 1
            {
                return refuse(400, "Wildcard Contact Needs Expires 0");
            }
            None
        } else {
            let Some(list) = headers::contacts(&req.headers) else {
                return refuse(400, "Bad Contact Header");
            };
            Some(
                list.iter()
                    .map(|c| ContactRequest {
                        contact: headers::contact_uri_text(c),
                        expires: headers::contact_expires(c)
                            .or(header_expires)
                            .unwrap_or(DEFAULT_EXPIRES),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let (Some(call_id), Some((cseq, _))) = (req.call_id(), req.cseq()) else {
            return refuse(400, "Bad Request");
        };
        let user_agent = headers::first(&req.headers, &Name::USER_AGENT);
        let update = RegisterUpdate {
            aor: &user.sip_username,
            call_id: &call_id,
            cseq,
            peer: from,
            user_agent: user_agent.as_deref(),
            contacts,
        };
        let changes = match self.apply(now, unix, update) {
            Ok(changes) => changes,
            Err(RegisterError::IntervalTooBrief) => {
                let (mut resp, none) = refuse(423, "Interval Too Brief");
                resp.headers
                    .insert(Name::MIN_EXPIRES, MIN_EXPIRES.to_string());
                return (resp, none);
            }
        };
        let mut resp = response_for(req, StatusCode::OK, Some(tag));
        for b in self.contacts_of(&user.sip_username) {
            resp.headers.insert(
                Name::CONTACT,
                format!("<{}>;expires={}", b.contact, b.remaining(now)),
            );
        }
        (resp, changes)
    }
}
