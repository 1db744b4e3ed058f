//! Invitations: the room calls someone and, on answer, puts them straight in.
//!
//! An extension target rings every registered device of that user (first answer wins,
//! the rest are cancelled, as for calls between users); the PBX offers SDP with one RTP
//! port shared by the forks, and the answering device's SDP answer opens the media leg.
//! Progress is kept per invitation for the API (ringing, answered, busy, no answer,
//! failed with the SIP status, cancelled) and for a while after it ends.
//!
//! An [`Invitation`] is a state machine without IO, like a call: the engine routes its
//! forks' answers and its timer to it and does what [`Invitation::poll_output`] asks
//! (CANCEL, BYE, ACK, a port given back). Joining the room on answer — opening the media,
//! the room's welcome — is the engine's, in the `impl Engine` below.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use confero_media::bridge::MixId;
use confero_sip::dialog::{Dialog, Local};
use confero_sip::message::{Entropy, Request, Response};
use confero_sip::transport::{Peer, Transmit};

use super::conference::Party;
use super::fork::{self, ForkStep, OutFork};
use super::ids::{InvitationId, Owner, Timer};
use super::{local, ClientPurpose, Engine, EngineEvent};
use crate::room::LegId;

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

/// What an invitation asks the engine to do, in order.
#[derive(Debug)]
pub(super) enum InvitationOutput {
    /// A CANCEL or BYE of this invitation.
    Send(Box<Request>, Peer),
    /// An ACK.
    Transmit(Transmit),
    /// The RTP port offered to the devices is free again.
    ReleasePort(u16),
    /// The live view of the rooms changed.
    Changed,
}

#[derive(Debug)]
pub(super) struct Invitation {
    info: InvitationInfo,
    /// The RTP port offered to the devices, until a leg owns it or the invitation ends.
    port: Option<u16>,
    pub(super) forks: Vec<OutFork>,
    deadline: Instant,
    finished_at: Option<Instant>,
    callee_name: String,
    callee_extension: String,
    local: Local,
    entropy: Entropy,
    out: VecDeque<InvitationOutput>,
}

impl Invitation {
    /// The room it invites into.
    pub(super) fn room(&self) -> MixId {
        MixId::Room(self.info.conference_id)
    }

    /// The next thing the engine must do for this invitation.
    pub(super) fn poll_output(&mut self) -> Option<InvitationOutput> {
        self.out.pop_front()
    }

    /// The ring timeout while ringing, then the moment it is forgotten.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self.finished_at {
            Some(t) => Some(t + KEEP_FINISHED),
            None => Some(self.deadline),
        }
    }

    fn is_done(&self, now: Instant) -> bool {
        self.finished_at.is_some_and(|t| now >= t + KEEP_FINISHED)
    }

    fn is_ringing(&self) -> bool {
        !self.info.state.is_final()
    }

    /// Ends the invitation as `state`: its port goes back (unless a leg took it), the
    /// forks still ringing are cancelled (except `keep`, the one answered).
    fn finish(
        &mut self,
        now: Instant,
        state: InvitationState,
        status: Option<u16>,
        reason: &str,
        keep: Option<usize>,
    ) {
        self.info.state = state;
        self.info.status = status;
        self.info.reason = Some(reason.to_owned());
        self.finished_at = Some(now);
        if let Some(port) = self.port.take() {
            self.out.push_back(InvitationOutput::ReleasePort(port));
        }
        for (cancel, peer) in fork::cancels(&mut self.forks, keep) {
            self.out
                .push_back(InvitationOutput::Send(Box::new(cancel), peer));
        }
        self.out.push_back(InvitationOutput::Changed);
    }

    /// Given up on before anyone answered; false when it was over already.
    fn cancel(&mut self, now: Instant) -> bool {
        if !self.is_ringing() {
            return false;
        }
        self.finish(now, InvitationState::Cancelled, None, "cancelled", None);
        true
    }

    /// A device rings.
    fn handle_ringing(&mut self) {
        if self.info.state == InvitationState::Calling {
            self.info.state = InvitationState::Ringing;
            self.out.push_back(InvitationOutput::Changed);
        }
    }

    /// A fork failed with `resp`: when every fork has, the invitation failed too — busy
    /// when a device was, no answer when none could be reached.
    fn handle_forks_failed(&mut self, now: Instant, resp: &Response) {
        if !self.is_ringing() || !self.forks.iter().all(|f| f.done) {
            return;
        }
        let codes: Vec<u16> = self.forks.iter().filter_map(|f| f.final_code).collect();
        let (state, why) = if codes.iter().any(|&c| c == 486 || c == 600) {
            (InvitationState::Busy, "busy")
        } else if codes.iter().all(|&c| c == 408 || c == 480 || c == 487) {
            (InvitationState::NoAnswer, "no answer")
        } else {
            (InvitationState::Failed, "rejected")
        };
        let reason = resp.reason.clone().unwrap_or_else(|| why.to_owned());
        self.finish(now, state, Some(resp.code.into_u16()), &reason, None);
    }

    /// A 2xx on fork `i`: ACKed at once; the dialog it makes, for the engine to bring into
    /// the room or hang up.
    fn ack_answer(&mut self, i: usize, resp: &Response) -> Option<Dialog> {
        let fork = self.forks.get(i)?;
        let (leg, ack) = fork::ack_answer(
            &fork.invite,
            resp,
            fork.peer,
            &self.local,
            &mut self.entropy,
        )?;
        self.out.push_back(InvitationOutput::Transmit(ack));
        Some(leg)
    }

    /// The device that answered cannot be used (too late, an unusable answer, the room
    /// gone): it is hung up on, and a ringing invitation fails.
    fn refuse_answer(&mut self, now: Instant, leg: Dialog) {
        let (bye, peer) = fork::bye(leg, &self.local, &mut self.entropy);
        self.out
            .push_back(InvitationOutput::Send(Box::new(bye), peer));
        if self.is_ringing() {
            let why = "unusable SDP answer";
            self.finish(now, InvitationState::Failed, Some(488), why, None);
        }
    }

    /// Fork `i` answered and became participant `leg`, on the invitation's port unless a
    /// browser answered on its own.
    fn answered(&mut self, now: Instant, i: usize, leg: LegId, code: u16, own_port: bool) {
        if let Some(f) = self.forks.get_mut(i) {
            f.webrtc = None; // the conference leg's now
        }
        if !own_port {
            self.port = None; // now owned by the conference leg
        }
        self.info.participant = Some(leg);
        self.finish(
            now,
            InvitationState::Answered,
            Some(code),
            "answered",
            Some(i),
        );
    }

    /// Time passed: nobody answered in time.
    fn handle_timeout(&mut self, now: Instant) {
        if self.is_ringing() && now >= self.deadline {
            let why = "no answer";
            self.finish(now, InvitationState::NoAnswer, Some(408), why, None);
        }
    }
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
        self.invitations.insert(
            id,
            Invitation {
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
                local: local(&self.settings),
                entropy: Entropy::seeded(self.entropy.next_u64()),
                out: VecDeque::new(),
            },
        );
        match cfg.config.user_by_extension(target) {
            Some(user) => self.invite_user(now, id, user, &conference),
            None if cfg.config.conference_by_extension(target).is_some() => {
                self.invitation_failed(
                    now,
                    id,
                    404,
                    "that extension is a conference room, not a person",
                );
            }
            None => self.invite_number(now, id, &conference),
        }
        self.drive_invitation(now, id);
        Ok(id)
    }

    /// Ends invitation `id` before anything was sent.
    fn invitation_failed(&mut self, now: Instant, id: InvitationId, code: u16, why: &str) {
        if let Some(inv) = self.invitations.get_mut(&id) {
            inv.finish(now, InvitationState::Failed, Some(code), why, None);
        }
    }

    /// A user: every registered device rings, the room's name and extension as caller ID.
    fn invite_user(
        &mut self,
        now: Instant,
        id: InvitationId,
        user: &crate::config::User,
        conference: &crate::config::Conference,
    ) {
        let bindings: Vec<_> = self
            .registrar
            .contacts_of(&user.sip_username)
            .cloned()
            .collect();
        if bindings.is_empty() {
            return self.invitation_failed(now, id, 480, "the user has no registered device");
        }
        let Some(port) = self.ports.allocate() else {
            return self.invitation_failed(now, id, 503, "RTP port range exhausted");
        };
        if let Some(inv) = self.invitations.get_mut(&id) {
            inv.callee_name = user.name.clone();
            inv.callee_extension = user.extension.clone();
            inv.port = Some(port);
        }
        let offer = self.offer_on(port);
        let caller = (conference.name.as_str(), conference.extension.as_str());
        self.ring_devices(now, Owner::Invitation(id), &bindings, caller, user, &offer);
        let nothing_rings = self
            .invitations
            .get(&id)
            .is_some_and(|i| i.forks.is_empty())
            && !self.offers_pending_for(Owner::Invitation(id));
        if nothing_rings {
            self.invitation_failed(now, id, 480, "no usable contact");
        }
    }

    /// A phone number: out through the trunk its digits pick, with the room as caller.
    fn invite_number(
        &mut self,
        now: Instant,
        id: InvitationId,
        conference: &crate::config::Conference,
    ) {
        let cfg = self.config.clone();
        let Some(target) = self.invitations.get(&id).map(|i| i.info.target.clone()) else {
            return;
        };
        let Some((trunk, number)) = cfg.config.outbound_route(&target) else {
            let why = "no such extension, and no trunk to call numbers";
            return self.invitation_failed(now, id, 404, why);
        };
        let Some(port) = self.ports.allocate() else {
            return self.invitation_failed(now, id, 503, "RTP port range exhausted");
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
            let why = "the trunk has no address (its host name did not resolve)";
            return self.invitation_failed(now, id, 503, why);
        };
        if let Some(inv) = self.invitations.get_mut(&id) {
            inv.port = Some(port);
            inv.callee_name = target.clone();
            inv.callee_extension = target;
        }
        self.push_fork(
            now,
            Owner::Invitation(id),
            OutFork::new(invite, peer, Some(trunk.id)),
        );
    }

    /// Does what invitation `id` asks, then sets its timer (or forgets it, once done).
    fn drive_invitation(&mut self, now: Instant, id: InvitationId) {
        while let Some(out) = self
            .invitations
            .get_mut(&id)
            .and_then(Invitation::poll_output)
        {
            match out {
                InvitationOutput::Send(req, peer) => {
                    let owner = Owner::Invitation(id);
                    self.send_owned(now, owner, ClientPurpose::Fire, *req, peer);
                }
                InvitationOutput::Transmit(t) => self.transmits.push_back(t),
                InvitationOutput::ReleasePort(port) => self.ports.release(port),
                InvitationOutput::Changed => self.events.push_back(EngineEvent::ConferencesChanged),
            }
        }
        let Some(inv) = self.invitations.get(&id) else {
            return;
        };
        if inv.is_done(now) {
            self.invitations.remove(&id);
            self.client_txs
                .retain(|_, (owner, _)| *owner != Owner::Invitation(id));
        } else if let Some(at) = inv.poll_timeout() {
            self.timers
                .push(std::cmp::Reverse((at, Timer::Invitation(id))));
        }
    }

    /// Gives up on an invitation that has not been answered yet.
    pub fn cancel_invitation(&mut self, now: Instant, id: InvitationId) -> bool {
        let Some(inv) = self.invitations.get_mut(&id) else {
            return false;
        };
        let cancelled = inv.cancel(now);
        self.drive_invitation(now, id);
        cancelled
    }

    pub(super) fn invitation_is_ringing(&self, id: InvitationId) -> bool {
        self.invitations
            .get(&id)
            .is_some_and(Invitation::is_ringing)
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

    pub(super) fn on_invitation_response(
        &mut self,
        now: Instant,
        id: InvitationId,
        i: usize,
        resp: Response,
    ) {
        let code = resp.code.into_u16();
        let step = self.fork_step(now, Owner::Invitation(id), i, &resp);
        let Some(inv) = self.invitations.get_mut(&id) else {
            return;
        };
        match step {
            ForkStep::Handled | ForkStep::Gone => return,
            ForkStep::Ringing => inv.handle_ringing(),
            ForkStep::Final if code >= 300 => inv.handle_forks_failed(now, &resp),
            ForkStep::Final => self.invitation_answered(now, id, i, &resp),
        }
        self.drive_invitation(now, id);
    }

    /// A 2xx: bring the callee in, or hang up on a late or unusable answer.
    fn invitation_answered(&mut self, now: Instant, id: InvitationId, i: usize, resp: &Response) {
        let Some(inv) = self.invitations.get_mut(&id) else {
            return;
        };
        let Some(leg) = inv.ack_answer(i, resp) else {
            return;
        };
        let Some(fork) = inv.forks.get(i) else {
            return;
        };
        let (invite_body, webrtc, via_trunk) =
            (fork.invite.body.clone(), fork.webrtc, fork.trunk.is_some());
        let (conference_id, callee_ext, callee_name) = (
            inv.info.conference_id,
            inv.callee_extension.clone(),
            inv.callee_name.clone(),
        );
        let (ringing, plain_port) = (inv.is_ringing(), inv.port);
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
        let opened = match (ringing, &conference, &party) {
            (true, Some(_), Some(_)) => self.open_fork_media(
                MixId::Room(conference_id),
                webrtc,
                plain_port,
                &resp.body,
                leg.peer,
            ),
            _ => None,
        };
        let (Some(opened), Some(conference), Some((party, is_admin))) = (opened, conference, party)
        else {
            // Too late (someone else answered, cancelled, timed out), the room or the user
            // went away, or an unusable answer: hang up on this device.
            self.drop_fork_media(webrtc);
            if let Some(inv) = self.invitations.get_mut(&id) {
                inv.refuse_answer(now, leg);
            }
            return;
        };
        if let Some(inv) = self.invitations.get_mut(&id) {
            inv.answered(now, i, opened.leg, resp.code.into_u16(), webrtc.is_some());
        }
        let (participant, number) = (opened.leg, party.number.clone());
        self.file_answered_leg(now, leg, party, opened, &invite_body, None);
        self.rooms
            .handle_invited(now, participant, &conference, &number, is_admin);
        self.drain_room_commands(now);
    }

    /// Ring timeout and forgetting old finished invitations.
    pub(super) fn invitation_timers(&mut self, now: Instant, id: InvitationId) {
        if let Some(inv) = self.invitations.get_mut(&id) {
            inv.handle_timeout(now);
            self.drive_invitation(now, id);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The invitation on its own: inputs in, outputs checked.
    use std::net::SocketAddr;

    use confero_sip::message::Message;
    use confero_sip::transport::Transport;

    use super::*;

    fn invitation(now: Instant, devices: u16) -> Invitation {
        let local = Local {
            advertised: SocketAddr::from(([127, 0, 0, 1], 5060)),
            user_agent: "Confero",
        };
        let mut inv = Invitation {
            info: InvitationInfo {
                id: InvitationId(1),
                conference_id: 7,
                target: "102".into(),
                state: InvitationState::Calling,
                status: None,
                reason: None,
                participant: None,
                created_unix: 0,
            },
            port: Some(20_000),
            forks: Vec::new(),
            deadline: now + Duration::from_secs(30),
            finished_at: None,
            callee_name: "Bob".into(),
            callee_extension: "102".into(),
            local,
            entropy: Entropy::seeded(3),
            out: VecDeque::new(),
        };
        for port in 6000..6000 + devices {
            let text = format!("INVITE sip:bob@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{port}\r\nFrom: <sip:800@pbx>;tag=room\r\nTo: <sip:102@pbx>\r\nCall-ID: inv-{port}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
            let Ok(Message::Request(invite)) = Message::parse(text.as_bytes()) else {
                panic!("an INVITE");
            };
            let peer = Peer {
                transport: Transport::Udp,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                conn: None,
            };
            inv.forks.push(OutFork::new(invite, peer, None));
        }
        inv
    }

    fn final_answer(inv: &mut Invitation, i: usize, status: &str) -> Response {
        let text = format!("SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:800@pbx>;tag=room\r\nTo: <sip:102@pbx>;tag=d\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
        let Ok(Message::Response(resp)) = Message::parse(text.as_bytes()) else {
            panic!("a response");
        };
        inv.forks[i].done = true;
        inv.forks[i].final_code = Some(resp.code.into_u16());
        resp
    }

    fn drain(inv: &mut Invitation) -> Vec<InvitationOutput> {
        std::iter::from_fn(|| inv.poll_output()).collect()
    }

    #[test]
    fn one_busy_device_makes_the_invitation_busy_once_all_have_answered() {
        let now = Instant::now();
        let mut inv = invitation(now, 2);
        inv.handle_ringing();
        assert_eq!(inv.info.state, InvitationState::Ringing);
        let busy = final_answer(&mut inv, 0, "486 Busy Here");
        inv.handle_forks_failed(now, &busy);
        assert!(inv.is_ringing(), "the other device still rings");
        let gone = final_answer(&mut inv, 1, "480 Temporarily Unavailable");
        inv.handle_forks_failed(now, &gone);
        assert_eq!(inv.info.state, InvitationState::Busy);
        let out = drain(&mut inv);
        assert!(
            matches!(
                out.as_slice(),
                [
                    InvitationOutput::Changed,
                    InvitationOutput::ReleasePort(20_000),
                    InvitationOutput::Changed
                ]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn nobody_answering_in_time_is_no_answer_and_is_forgotten_later() {
        let now = Instant::now();
        let mut inv = invitation(now, 1);
        inv.forks[0].on_provisional(180);
        inv.handle_timeout(now + Duration::from_secs(29));
        assert!(inv.is_ringing());
        let at = inv.poll_timeout().unwrap();
        inv.handle_timeout(at);
        assert_eq!(inv.info.state, InvitationState::NoAnswer);
        assert_eq!(inv.info.status, Some(408));
        let out = drain(&mut inv);
        assert!(
            out.iter().any(|o| matches!(o, InvitationOutput::Send(req, _) if req.method == confero_sip::Method::CANCEL)),
            "the ringing device is cancelled: {out:?}"
        );
        assert!(!inv.cancel(at), "over already");
        assert!(!inv.is_done(at + Duration::from_secs(599)));
        assert!(inv.is_done(at + KEEP_FINISHED));
    }
}
