//! Calls between the PBX and the phone network, through trunks.
//!
//! Inbound: a provider's INVITE names one of our numbers (in the Request-URI, or in To
//! when it is addressed to the contact we registered). The production configuration's
//! incoming number decides: a conference room (receptionist and access code as for
//! anyone), a user (every registered device rings, media anchored), hang up (603), or not
//! configured (480 with that reason). Outbound: an authenticated user dialling something
//! that is not an extension goes out through the trunk its digits pick, presenting the
//! user's direct number (or the trunk's).

use std::time::Instant;

use confero_sip::message::Request;
use confero_sip::transaction::ServerTxId;
use confero_sip::transport::Peer;
use confero_sip::Name;

use super::call::MediaKind;
use super::conference::Party;
use super::Engine;
use crate::config::{Destination, User};
use confero_sip::headers::{self, uri_user};

/// The caller as the provider presents them: P-Asserted-Identity when there is one (the
/// network-asserted number), else From.
fn caller_from(req: &Request) -> Party {
    let asserted = headers::from_to(&req.headers, Name::from("P-Asserted-Identity"));
    let from = headers::from_to(&req.headers, Name::FROM);
    let pick = asserted
        .as_ref()
        .filter(|p| uri_user(&p.uri.uri).is_some())
        .or(from.as_ref());
    let number = pick
        .and_then(|p| uri_user(&p.uri.uri))
        .unwrap_or_else(|| "anonymous".to_owned());
    let name = pick
        .and_then(|p| p.uri.name.as_ref().map(|n| n.to_string()))
        .or_else(|| {
            from.as_ref()
                .and_then(|f| f.uri.name.as_ref().map(|n| n.to_string()))
        })
        .unwrap_or_default();
    let name: String = name
        .trim_matches('"')
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    Party::external(&number, &name)
}

impl Engine {
    /// An INVITE from trunk `trunk`: routed by the incoming number it is for.
    pub(super) fn on_trunk_invite(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        from: Peer,
        trunk: i64,
    ) {
        let contact_user = self
            .trunks
            .get(&trunk)
            .map(|l| l.contact_user.clone())
            .unwrap_or_default();
        let target = uri_user(&req.uri)
            .filter(|u| *u != contact_user)
            .or_else(|| {
                headers::from_to(&req.headers, Name::TO).and_then(|t| uri_user(&t.uri.uri))
            });
        let caller = caller_from(&req);
        let cfg = self.config.clone();
        let Some(number) = target
            .as_deref()
            .and_then(|d| cfg.config.incoming_number_for(d))
        else {
            tracing::info!(dialled = ?target, caller = %caller.number, "call from a trunk for an unknown number");
            return self.respond(now, tx, &req, 404, "Not Found");
        };
        tracing::info!(number = %number.number, caller = %caller.number, "call from a trunk");
        match &number.destination {
            Destination::NotConfigured => self.respond(now, tx, &req, 480, "Number Not Configured"),
            Destination::HangUp => self.respond(now, tx, &req, 603, "Decline"),
            Destination::Conference { conference_id } => {
                match cfg.config.conference(*conference_id) {
                    Some(room) => self.answer_conference(now, tx, req, from, caller, room.clone()),
                    None => self.respond(now, tx, &req, 404, "Not Found"),
                }
            }
            Destination::Extension { extension } => {
                if let Some(room) = cfg.config.conference_by_extension(extension) {
                    return self.answer_conference(now, tx, req, from, caller, room.clone());
                }
                match cfg.config.user_by_extension(extension) {
                    Some(user) => {
                        self.ring_user(now, tx, req, from, caller, user, MediaKind::Anchored)
                    }
                    None => self.respond(now, tx, &req, 404, "Not Found"),
                }
            }
        }
    }

    /// An authenticated user dialled `dialled`, which is no extension: out through a trunk.
    pub(super) fn call_out(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        from: Peer,
        caller: &User,
        dialled: &str,
    ) {
        let cfg = self.config.clone();
        let Some((trunk, number)) = cfg.config.outbound_route(dialled) else {
            return self.respond(now, tx, &req, 404, "Not Found");
        };
        let caller_number = cfg
            .config
            .outbound_caller_id(caller, trunk)
            .unwrap_or_else(|| caller.extension.clone());
        tracing::info!(user = %caller.extension, %number, trunk = %trunk.name, "call out");
        let callee = Party::external(&number, "");
        let Some((id, port)) = self.open_anchored(now, tx, req, from, Party::user(caller), callee)
        else {
            return;
        };
        match self.trunk_invite(trunk.id, &number, &caller.name, &caller_number, port) {
            Some((invite, peer)) => {
                self.call_fork(now, id, invite, peer, Some(trunk.id));
                self.ring(now, id);
            }
            None => self.fail_call(now, id, 503, "Trunk Unavailable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confero_sip::Method;

    fn invite(headers: &[(&str, &str)]) -> Request {
        let mut r = Request::new(Method::INVITE, "sip:3225550100@192.0.2.1".parse().unwrap());
        for (k, v) in headers {
            r.headers
                .insert(Name::from((*k).to_owned()), (*v).to_owned());
        }
        r
    }

    #[test]
    fn the_asserted_identity_wins_over_from() {
        let p = caller_from(&invite(&[
            (
                "From",
                "\"Someone\" <sip:anonymous@anonymous.invalid>;tag=1",
            ),
            (
                "P-Asserted-Identity",
                "\"Jane Roe\" <sip:+3247555123@carrier.example>",
            ),
        ]));
        assert_eq!(p, Party::external("+3247555123", "Jane Roe"));
        let p = caller_from(&invite(&[(
            "From",
            "<sip:+3247555999@carrier.example>;tag=1",
        )]));
        assert_eq!(p, Party::external("+3247555999", ""));
        let p = caller_from(&invite(&[]));
        assert_eq!(p.number, "anonymous");
    }
}
