//! Invitations: the room calls someone and, on answer, puts them straight in.
//!
//! An extension target rings every registered device of that user (first answer wins,
//! the rest are cancelled, as for calls between users); the PBX offers SDP with one RTP
//! port shared by the forks, and the answering device's SDP answer opens the media leg.
//! Progress is kept per invitation for the API (ringing, answered, busy, no answer,
//! failed with the SIP status, cancelled) and for a while after it ends.

use std::time::{Duration, Instant};

use confero_sip::message::{Message, Response};
use confero_sip::Method;

use super::conference::{ConfLeg, Party};
use super::fork::{self, ForkStep, OutFork};
use super::ids::{InvitationId, Owner, Timer};
use super::{local, ClientPurpose, Engine, EngineEvent};
use crate::room::LegId;
use confero_sip::dialog::Dialog;

/// How long a finished invitation stays queryable.
const KEEP_FINISHED: Duration = Duration::from_secs(600);
/// Ringing longer than this without an answer is "no answer", whatever was asked.
pub const MAX_INVITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where an invitation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvitationState {
    /// INVITEs sent, nothing heard yet.
    Calling,
    /// A device rings.
    Ringing,
    /// Someone answered: they are in the room.
    Answered,
    /// Every device was busy.
    Busy,
    /// Nobody answered in time.
    NoAnswer,
    /// It could not be delivered (the SIP status says why).
    Failed,
    /// Cancelled before anyone answered.
    Cancelled,
}

impl InvitationState {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            InvitationState::Calling => "calling",
            InvitationState::Ringing => "ringing",
            InvitationState::Answered => "answered",
            InvitationState::Busy => "busy",
            InvitationState::NoAnswer => "no_answer",
            InvitationState::Failed => "failed",
            InvitationState::Cancelled => "cancelled",
        }
    }

    fn is_final(self) -> bool {
        !matches!(self, InvitationState::Calling | InvitationState::Ringing)
    }
}

/// An invitation as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvitationInfo {
    /// Its id.
    pub id: InvitationId,
    /// The room it invites into.
    pub conference_id: i64,
    /// Who is invited (an extension or a number).
    pub target: String,
    /// Where it stands.
    pub state: InvitationState,
    /// The SIP status that decided a failure, when there was one.
    pub status: Option<u16>,
    /// Why it failed, in words.
    pub reason: Option<String>,
    /// The participant it became, once answered.
    pub participant: Option<LegId>,
    /// When it started (Unix seconds).
    pub created_unix: u64,
}

/// Why an invitation could not even start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// No such room is in production.
    #[error("no conference {0} in production")]
    NoSuchConference(i64),
    /// The target is neither an extension nor a number.
    #[error("target must be an extension or a phone number (digits, optional leading +)")]
    BadTarget,
}

#[derive(Debug)]
pub(super) struct Invitation {
    info: InvitationInfo,
    port: Option<u16>,
    pub(super) forks: Vec<OutFork>,
    deadline: Instant,
    finished_at: Option<Instant>,
    callee_name: String,
    callee_extension: String,
}

impl Engine {
    /// Starts calling `target` on behalf of conference `conference_id`. The invitation
    /// exists (and can be polled) even when it fails at once, e.g. nobody registered.
    pub fn invite(
        &mut self,
        now: Instant,
        conference_id: i64,
        target: &str,
        timeout: Duration,
    ) -> Result<InvitationId, InviteError> {
        let target = target.trim();
        let digits = target.strip_prefix('+').unwrap_or(target);
        if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InviteError::BadTarget);
        }
        let cfg = self.config.clone();
        let conference = cfg
            .config
            .conferences
            .iter()
            .find(|c| c.id == conference_id)
            .ok_or(InviteError::NoSuchConference(conference_id))?
            .clone();
        let id = self.ids.invitation();
        let mut inv = Invitation {
            info: InvitationInfo {
                id,
                conference_id,
                target: target.to_owned(),
                state: InvitationState::Calling,
                status: None,
                reason: None,
                participant: None,
                created_unix: self.unix(now),
            },
            port: None,
            forks: Vec::new(),
            deadline: now + timeout.min(MAX_INVITE_TIMEOUT),
            finished_at: None,
            callee_name: String::new(),
            callee_extension: target.to_owned(),
        };
        let user = cfg.config.user_by_extension(target).cloned();
        let Some(user) = user else {
            if cfg.config.conference_by_extension(target).is_some() {
                finish(
                    &mut inv,
                    now,
                    InvitationState::Failed,
                    Some(404),
                    "that extension is a conference room, not a person",
                );
                return Ok(self.keep_invitation(id, inv));
            }
            return Ok(self.invite_number(now, id, inv, &conference));
        };
        inv.callee_name = user.name.clone();
        inv.callee_extension = user.extension.clone();
        let bindings: Vec<_> = self
            .registrar
            .contacts_of(&user.sip_username)
            .cloned()
            .collect();
        let port = if bindings.is_empty() {
            None
        } else {
            self.ports.allocate()
        };
        let Some(port) = port else {
            let (code, why) = if bindings.is_empty() {
                (480, "the user has no registered device")
            } else {
                (503, "RTP port range exhausted")
            };
            finish(&mut inv, now, InvitationState::Failed, Some(code), why);
            self.timers
                .push(std::cmp::Reverse((inv.deadline, Timer::Invitation(id))));
            self.invitations.insert(id, inv);
            self.events.push_back(EngineEvent::ConferencesChanged);
            return Ok(id);
        };
        inv.port = Some(port);
        let offer = self.offer_on(port);
        let deadline = inv.deadline;
        self.invitations.insert(id, inv);
        // The room's name and extension as caller ID.
        let caller = (conference.name.as_str(), conference.extension.as_str());
        self.ring_devices(now, Owner::Invitation(id), &bindings, caller, &user, &offer);
        let nothing_rings = self
            .invitations
            .get(&id)
            .is_some_and(|i| i.forks.is_empty())
            && !self.offers_pending_for(Owner::Invitation(id));
        if nothing_rings {
            self.release_invite_port(id);
            if let Some(inv) = self.invitations.get_mut(&id) {
                finish(
                    inv,
                    now,
                    InvitationState::Failed,
                    Some(480),
                    "no usable contact",
                );
            }
        }
        self.timers
            .push(std::cmp::Reverse((deadline, Timer::Invitation(id))));
        self.events.push_back(EngineEvent::ConferencesChanged);
        Ok(id)
    }

    /// Files an invitation (ringing or already over) and arms its timer.
    fn keep_invitation(&mut self, id: InvitationId, inv: Invitation) -> InvitationId {
        self.timers
            .push(std::cmp::Reverse((inv.deadline, Timer::Invitation(id))));
        self.invitations.insert(id, inv);
        self.events.push_back(EngineEvent::ConferencesChanged);
        id
    }

    /// A phone number: out through the trunk its digits pick, with the room as caller.
    fn invite_number(
        &mut self,
        now: Instant,
        id: InvitationId,
        mut inv: Invitation,
        conference: &crate::config::Conference,
    ) -> InvitationId {
        let cfg = self.config.clone();
        let target = inv.info.target.clone();
        let Some((trunk, number)) = cfg.config.outbound_route(&target) else {
            finish(
                &mut inv,
                now,
                InvitationState::Failed,
                Some(404),
                "no such extension, and no trunk to call numbers",
            );
            return self.keep_invitation(id, inv);
        };
        let Some(port) = self.ports.allocate() else {
            finish(
                &mut inv,
                now,
                InvitationState::Failed,
                Some(503),
                "RTP port range exhausted",
            );
            return self.keep_invitation(id, inv);
        };
        // The provider only accepts numbers it knows as caller ID: the room shows as the
        // name, the trunk's number as the number.
        let display = format!("{} ({})", conference.name, conference.extension);
        let caller_number = trunk
            .caller_id
            .clone()
            .unwrap_or_else(|| conference.extension.clone());
        let Some((invite, peer)) =
            self.trunk_invite(trunk.id, &number, &display, &caller_number, port)
        else {
            self.ports.release(port);
            finish(
                &mut inv,
                now,
                InvitationState::Failed,
                Some(503),
                "the trunk has no address (its host name did not resolve)",
            );
            return self.keep_invitation(id, inv);
        };
        inv.port = Some(port);
        inv.callee_name = target.clone();
        inv.callee_extension = target;
        self.send_owned(
            now,
            Owner::Invitation(id),
            ClientPurpose::Fork(0),
            invite.clone(),
            peer,
        );
        inv.forks.push(OutFork::new(invite, peer, Some(trunk.id)));
        self.keep_invitation(id, inv)
    }

    /// Gives up on an invitation that has not been answered yet.
    pub fn cancel_invitation(&mut self, now: Instant, id: InvitationId) -> bool {
        let Some(inv) = self.invitations.get_mut(&id) else {
            return false;
        };
        if inv.info.state.is_final() {
            return false;
        }
        finish(inv, now, InvitationState::Cancelled, None, "cancelled");
        self.cancel_invite_forks(now, id, None);
        self.release_invite_port(id);
        self.events.push_back(EngineEvent::ConferencesChanged);
        true
    }

    pub(super) fn invitation_is_ringing(&self, id: InvitationId) -> bool {
        self.invitations
            .get(&id)
            .is_some_and(|i| !i.info.state.is_final())
    }

    /// An invitation, while it is remembered.
    pub fn invitation(&self, id: InvitationId) -> Option<InvitationInfo> {
        self.invitations.get(&id).map(|i| i.info.clone())
    }

    /// Every invitation remembered.
    pub fn invitations(&self) -> Vec<InvitationInfo> {
        let mut v: Vec<_> = self.invitations.values().map(|i| i.info.clone()).collect();
        v.sort_by_key(|i| i.id);
        v
    }

    fn release_invite_port(&mut self, id: InvitationId) {
        if let Some(port) = self.invitations.get_mut(&id).and_then(|i| i.port.take()) {
            self.ports.release(port);
        }
    }

    /// CANCEL to every fork still ringing except `keep` (RFC 3261 §9.1: only after a
    /// provisional; otherwise when one comes).
    fn cancel_invite_forks(&mut self, now: Instant, id: InvitationId, keep: Option<usize>) {
        let Some(inv) = self.invitations.get_mut(&id) else {
            return;
        };
        for (cancel, peer) in fork::cancels(&mut inv.forks, keep) {
            self.send_owned(
                now,
                Owner::Invitation(id),
                ClientPurpose::Fire,
                cancel,
                peer,
            );
        }
    }

    pub(super) fn on_invitation_response(
        &mut self,
        now: Instant,
        id: InvitationId,
        i: usize,
        resp: Response,
    ) {
        let code = resp.code.into_u16();
        match self.fork_step(now, Owner::Invitation(id), i, &resp) {
            ForkStep::Final => {}
            ForkStep::Ringing => {
                if let Some(inv) = self.invitations.get_mut(&id) {
                    if inv.info.state == InvitationState::Calling {
                        inv.info.state = InvitationState::Ringing;
                        self.events.push_back(EngineEvent::ConferencesChanged);
                    }
                }
                return;
            }
            ForkStep::Handled | ForkStep::Gone => return,
        }
        let Some(inv) = self.invitations.get_mut(&id) else {
            return;
        };
        let Some(fork) = inv.forks.get(i) else {
            return;
        };
        if code >= 300 {
            if !inv.info.state.is_final() && inv.forks.iter().all(|f| f.done) {
                let codes: Vec<u16> = inv.forks.iter().filter_map(|f| f.final_code).collect();
                let (state, why) = if codes.iter().any(|&c| c == 486 || c == 600) {
                    (InvitationState::Busy, "busy")
                } else if codes.iter().all(|&c| c == 408 || c == 480 || c == 487) {
                    (InvitationState::NoAnswer, "no answer")
                } else {
                    (InvitationState::Failed, "rejected")
                };
                let reason = resp.reason.clone().unwrap_or_else(|| why.to_owned());
                finish(inv, now, state, Some(code), &reason);
                self.release_invite_port(id);
                self.events.push_back(EngineEvent::ConferencesChanged);
            }
            return;
        }
        // 2xx: ACK it, then either bring the callee in or hang up on a late answer.
        let (invite, peer, webrtc) = (fork.invite.clone(), fork.peer, fork.webrtc);
        let via_trunk = fork.trunk.is_some();
        let Some(mut leg) = Dialog::uac(&invite, &resp, peer) else {
            return;
        };
        let ack = leg.ack_for(
            &invite,
            local(&self.settings).via(peer.transport, &mut self.entropy),
        );
        self.tx.send_stateless(Message::Request(ack.clone()), peer);
        leg.last_ack = Some(ack);
        let (conference_id, callee_ext, callee_name) = (
            inv.info.conference_id,
            inv.callee_extension.clone(),
            inv.callee_name.clone(),
        );
        let cfg = self.config.clone();
        let conference = cfg
            .config
            .conferences
            .iter()
            .find(|c| c.id == conference_id)
            .cloned();
        // Someone called through a trunk is a number, never the administrator; a user is
        // whoever owns the extension now.
        let party = if via_trunk {
            Some((Party::external(&callee_ext, &callee_name), false))
        } else {
            cfg.config.user_by_extension(&callee_ext).map(|u| {
                let admin = conference
                    .as_ref()
                    .is_some_and(|c| c.admin_extension.as_deref() == Some(u.extension.as_str()));
                (Party::user(u), admin)
            })
        };
        let late = inv.info.state.is_final();
        let plain_port = inv.port;
        let opened = match (late, &conference, &party) {
            (false, Some(_), Some(_)) => self.open_fork_media(webrtc, plain_port, &resp.body, peer),
            _ => None,
        };
        let (Some(opened), Some(conference), Some((party, is_admin))) = (opened, conference, party)
        else {
            // Too late (someone else answered, cancelled, timed out), the room or the user
            // went away, or an unusable answer: hang up on this device.
            self.drop_fork_media(webrtc);
            let bye = leg.request(Method::BYE, &local(&self.settings), &mut self.entropy);
            self.send_owned(now, Owner::Invitation(id), ClientPurpose::Fire, bye, peer);
            if let Some(inv) = self.invitations.get_mut(&id) {
                if !inv.info.state.is_final() {
                    finish(
                        inv,
                        now,
                        InvitationState::Failed,
                        Some(488),
                        "unusable SDP answer",
                    );
                    self.release_invite_port(id);
                    self.cancel_invite_forks(now, id, None);
                    self.events.push_back(EngineEvent::ConferencesChanged);
                }
            }
            return;
        };
        let Some(inv) = self.invitations.get_mut(&id) else {
            return;
        };
        if let Some(f) = inv.forks.get_mut(i) {
            f.webrtc = None; // the conference leg's now
        }
        if webrtc.is_none() {
            inv.port = None; // now owned by the conference leg
        }
        inv.info.participant = Some(opened.leg);
        finish(inv, now, InvitationState::Answered, Some(code), "answered");
        // A browser answered: the plain port offered to the desk phones is free.
        self.release_invite_port(id);
        self.cancel_invite_forks(now, id, Some(i));
        self.conf_dialogs
            .insert((leg.call_id.clone(), leg.local_tag.clone()), opened.leg);
        let joined_unix = self.unix(now);
        let number = party.number.clone();
        self.conf_legs.insert(
            opened.leg,
            ConfLeg::offered(
                leg,
                party,
                opened.port,
                opened.media,
                &invite.body,
                joined_unix,
            ),
        );
        self.rooms
            .handle_invited(now, opened.leg, &conference, &number, is_admin);
        self.drain_room_commands(now);
        self.events.push_back(EngineEvent::ConferencesChanged);
    }

    /// Ring timeout and pruning of old finished invitations.
    pub(super) fn invitation_timers(&mut self, now: Instant, id: InvitationId) {
        let Some(inv) = self.invitations.get_mut(&id) else {
            return;
        };
        if !inv.info.state.is_final() && now >= inv.deadline {
            finish(inv, now, InvitationState::NoAnswer, Some(408), "no answer");
            self.cancel_invite_forks(now, id, None);
            self.release_invite_port(id);
            self.events.push_back(EngineEvent::ConferencesChanged);
        }
        let keep_until = self
            .invitations
            .get(&id)
            .and_then(|i| i.finished_at)
            .map(|t| t + KEEP_FINISHED);
        match keep_until {
            Some(t) if now >= t => {
                self.invitations.remove(&id);
                self.client_txs
                    .retain(|_, (owner, _)| *owner != Owner::Invitation(id));
            }
            Some(t) => self
                .timers
                .push(std::cmp::Reverse((t, Timer::Invitation(id)))),
            None => {}
        }
    }
}

fn finish(
    inv: &mut Invitation,
    now: Instant,
    state: InvitationState,
    status: Option<u16>,
    reason: &str,
) {
    inv.info.state = state;
    inv.info.status = status;
    inv.info.reason = Some(reason.to_owned());
    inv.finished_at = Some(now);
}
