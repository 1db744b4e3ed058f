//! Blind transfer (RFC 3515 REFER, as RFC 5589 describes for a PBX in the middle).
//!
//! A user in an anchored two-party call sends REFER naming a target: an extension, a
//! conference room or a phone number. The PBX decides at once whether the target can be
//! reached (unknown number, nobody registered, no trunk: the REFER is refused and the
//! call goes on), then accepts with 202, takes the party on the other end (the
//! transferee) out of the call and puts them where the target says: into the room's
//! receptionist, or on hold music while the user's devices or the provider ring. The
//! transferor is told by one NOTIFY that the transfer is under way and is hung up on:
//! like Asterisk, and unlike a strict reading of RFC 3515, we do not make the transferor
//! wait for the target's answer, because Odoo (and most desk phones in blind mode) hang
//! up right after the 202 anyway, and a transferor left in silence for the target's
//! whole ring time helps nobody.

use std::time::Instant;

use confero_sip::message::Request;
use confero_sip::transaction::ServerTxId;
use confero_sip::{Name, SipUri};

use super::conference::{AfterAnswer, Party};
use super::ids::Owner;
use super::{Engine, EngineEvent};
use crate::config::{self, Conference, User};
use crate::room::LegId;
use confero_media::bridge::MediaCommand;
use confero_sip::headers::{self, uri_user};

/// Where a REFER sends the transferee.
enum Target {
    Room(Conference),
    User(User),
    Number {
        trunk: i64,
        number: String,
        /// The number presented to the provider (the transferor's, since providers only
        /// accept numbers of the account).
        caller_number: String,
    },
}

/// Why a REFER is refused: the SIP response, and the call goes on as before.
struct Refusal(u16, &'static str);

/// The target's user part from a Refer-To value (`<sip:102@pbx>`, `sip:102@pbx;x=y`,
/// `tel:+3225550100`). Attended transfers (`?Replaces=`) are refused apart.
fn refer_target(value: &str) -> Result<String, Refusal> {
    let value = value.trim();
    let inner = match (value.find('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value),
    };
    let (uri, query) = match inner.split_once('?') {
        Some((u, q)) => (u, q),
        None => (inner, ""),
    };
    if query.to_ascii_lowercase().contains("replaces=") {
        return Err(Refusal(501, "Attended Transfer Not Supported"));
    }
    if let Some(tel) = uri.strip_prefix("tel:") {
        let number = tel.split(';').next().unwrap_or_default().trim();
        return match number.is_empty() {
            true => Err(Refusal(400, "Refer-To Names No Number")),
            false => Ok(number.to_owned()),
        };
    }
    let parsed: SipUri = uri
        .parse()
        .map_err(|_| Refusal(400, "Malformed Refer-To"))?;
    uri_user(&parsed).ok_or(Refusal(400, "Refer-To Names No Number"))
}

impl Engine {
    /// REFER on a conference leg: a blind transfer of the other side of its call.
    pub(super) fn conf_refer(&mut self, now: Instant, tx: ServerTxId, req: Request, id: LegId) {
        match self.plan_transfer(&req, id) {
            Ok((other, target)) => self.transfer(now, tx, &req, id, other, target),
            Err(Refusal(code, reason)) => {
                tracing::info!(leg = %id, code, reason, "REFER refused");
                if let Some(c) = self.conf_legs.get_mut(&id) {
                    c.answer_refer(tx, &req, code, reason);
                    self.drive_leg(now, id);
                }
            }
        }
    }

    /// Checks everything before anything changes: who is transferred, and where to.
    fn plan_transfer(&self, req: &Request, id: LegId) -> Result<(LegId, Target), Refusal> {
        let c = self
            .conf_legs
            .get(&id)
            .ok_or(Refusal(481, "Call/Transaction Does Not Exist"))?;
        let cfg = self.config.clone();
        // Only users transfer: a provider's side must not make us dial out.
        let transferor = cfg
            .config
            .user_by_extension(&c.caller.number)
            .filter(|_| c.caller.is_user)
            .ok_or(Refusal(403, "Only Users Can Transfer"))?;
        let other = c
            .call
            .and_then(|call| self.call_other_leg(call, id))
            .ok_or(Refusal(403, "Only A Two-Party Call Can Be Transferred"))?;
        let value = headers::first(&req.headers, &Name::REFER_TO)
            .ok_or(Refusal(400, "Missing Refer-To"))?;
        let dialled = refer_target(&value)?;
        if let Some(room) = cfg.config.conference_by_extension(&dialled) {
            return Ok((other, Target::Room(room.clone())));
        }
        let user = cfg
            .config
            .user_by_extension(&dialled)
            .or_else(|| cfg.config.user_by_sip_username(&dialled));
        if let Some(user) = user {
            if self
                .registrar
                .contacts_of(&user.sip_username)
                .next()
                .is_none()
            {
                return Err(Refusal(480, "Temporarily Unavailable"));
            }
            return Ok((other, Target::User(user.clone())));
        }
        if config::number_digits(&dialled).is_none() {
            return Err(Refusal(404, "Not Found"));
        }
        let (trunk, number) = cfg
            .config
            .outbound_route(&dialled)
            .ok_or(Refusal(404, "Not Found"))?;
        let caller_number = cfg
            .config
            .outbound_caller_id(transferor, trunk)
            .unwrap_or_else(|| transferor.extension.clone());
        Ok((
            other,
            Target::Number {
                trunk: trunk.id,
                number,
                caller_number,
            },
        ))
    }

    /// Accepts the REFER and moves `transferee` (the other side of `transferor`'s call).
    fn transfer(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        transferor: LegId,
        transferee: LegId,
        target: Target,
    ) {
        let Some(t) = self.conf_legs.get_mut(&transferor) else {
            return;
        };
        t.answer_refer(tx, req, 202, "Accepted");
        self.drive_leg(now, transferor);

        // Out of the old call: it ends without hanging anyone up.
        if let Some(old) = self.conf_legs.get(&transferor).and_then(|c| c.call) {
            self.call_dissolved(now, old);
        }
        for leg in [transferor, transferee] {
            if let Some(c) = self.conf_legs.get_mut(&leg) {
                c.call = None;
            }
            self.media_out.push_back(MediaCommand::Unmix { leg });
        }
        let Some(party) = self.conf_legs.get(&transferee).map(|c| c.caller.clone()) else {
            return;
        };
        tracing::info!(
            transferee = %party.number,
            target = %target_name(&target),
            "blind transfer"
        );
        let outcome = match target {
            Target::Room(conference) => {
                let is_admin = party.is_user
                    && conference.admin_extension.as_deref() == Some(party.number.as_str());
                let then = AfterAnswer::Room {
                    number: party.number.clone(),
                    guesser: party.guesser(),
                    conference,
                    is_admin,
                };
                self.after_answer(now, transferee, then);
                "200 OK"
            }
            Target::User(user) => self.transfer_to_user(now, transferee, party, &user),
            Target::Number {
                trunk,
                number,
                caller_number,
            } => self.transfer_to_number(now, transferee, party, trunk, &number, &caller_number),
        };
        self.notify_refer(now, transferor, outcome);
        self.end_conf_leg(now, transferor, true);
        self.events.push_back(EngineEvent::CallsChanged);
    }

    /// Rings every device of `user` for the transferee, who hears hold music meanwhile.
    fn transfer_to_user(
        &mut self,
        now: Instant,
        transferee: LegId,
        party: Party,
        user: &User,
    ) -> &'static str {
        let targets: Vec<_> = self
            .registrar
            .contacts_of(&user.sip_username)
            .cloned()
            .collect();
        let display = if party.name.is_empty() {
            party.number.clone()
        } else {
            party.name.clone()
        };
        let number = party.number.clone();
        let Some((id, port)) = self.open_transfer_call(now, transferee, party, Party::user(user))
        else {
            self.end_conf_leg(now, transferee, true);
            return "503 Service Unavailable";
        };
        self.hold_music(transferee);
        let offer = self.offer_on(port);
        self.ring_devices(
            now,
            Owner::Call(id),
            &targets,
            (&display, &number),
            user,
            &offer,
        );
        self.ring(now, id);
        "200 OK"
    }

    /// Calls `number` through `trunk` for the transferee, who hears hold music meanwhile.
    fn transfer_to_number(
        &mut self,
        now: Instant,
        transferee: LegId,
        party: Party,
        trunk: i64,
        number: &str,
        caller_number: &str,
    ) -> &'static str {
        let name = party.name.clone();
        let callee = Party::external(number, "");
        let Some((id, port)) = self.open_transfer_call(now, transferee, party, callee) else {
            self.end_conf_leg(now, transferee, true);
            return "503 Service Unavailable";
        };
        self.hold_music(transferee);
        match self.trunk_invite(trunk, number, &name, caller_number, port) {
            Some((invite, peer)) => {
                self.call_fork(now, id, invite, peer, Some(trunk));
                self.ring(now, id);
                "200 OK"
            }
            None => {
                self.fail_call(now, id, 503, "Trunk Unavailable");
                "503 Service Unavailable"
            }
        }
    }

    fn hold_music(&mut self, leg: LegId) {
        self.media_out.push_back(MediaCommand::Play {
            leg,
            prompts: Vec::new(),
            then_music: true,
            seq: 0,
        });
    }

    /// Tells the transferor how the transfer went (the REFER's one NOTIFY).
    fn notify_refer(&mut self, now: Instant, transferor: LegId, status_line: &str) {
        if let Some(c) = self.conf_legs.get_mut(&transferor) {
            c.notify_refer(status_line);
            self.drive_leg(now, transferor);
        }
    }
}

fn target_name(t: &Target) -> String {
    match t {
        Target::Room(c) => format!("room {}", c.extension),
        Target::User(u) => format!("user {}", u.extension),
        Target::Number { number, .. } => number.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(v: &str) -> Result<String, u16> {
        refer_target(v).map_err(|Refusal(code, _)| code)
    }

    #[test]
    fn refer_to_forms() {
        assert_eq!(target("<sip:102@pbx.example.com>"), Ok("102".into()));
        assert_eq!(
            target("sip:+3225550100@pbx;user=phone"),
            Ok("+3225550100".into())
        );
        assert_eq!(
            target("\"Bob\" <sip:bob@10.0.0.1;transport=ws>;x=1"),
            Ok("bob".into())
        );
        assert_eq!(
            target("<tel:+3225550100;phone-context=x>"),
            Ok("+3225550100".into())
        );
        assert_eq!(
            target("<sip:102@pbx?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>"),
            Err(501)
        );
        assert_eq!(target("<sip:pbx.example.com>"), Err(400));
        assert_eq!(target("<tel:>"), Err(400));
        assert_eq!(target("not a uri at all <"), Err(400));
    }
}
