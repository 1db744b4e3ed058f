//! Two-party calls: one user calling another, a provider's caller reaching a user, a user
//! calling a number through a trunk, and a transferred caller being put through. The PBX
//! is a back-to-back user agent in all of them: it holds the caller's INVITE, rings the
//! callee (every registered device of a user, one [`OutFork`] each, or the provider),
//! connects the first that answers and cancels the others.
//!
//! What differs is the media ([`Media`]):
//! - **Direct**: two desk phones of our users exchange RTP between themselves. The PBX
//!   relays the callee's SDP to the caller and then every in-dialog request (re-INVITE,
//!   INFO, BYE) between the two dialogs.
//! - **Anchored**: each side terminates on one of our RTP ports and the media bridge joins
//!   them in a private mix (`MixId::Call`), which transcodes when the sides chose different
//!   codecs and keeps phones' private addresses away from providers. Used whenever a
//!   provider or a browser is one of the sides, and for transfers. Both sides are then legs
//!   of the kind rooms use ([`Leg`]), so re-INVITEs, BYE, RTP timeouts and call quality
//!   work the same; when either leg ends, the other gets BYE.
//!
//! A [`Call`] is a state machine without IO: the engine routes what concerns it to its
//! `handle_*` methods, then takes what it asks for from [`Call::poll_output`] (responses,
//! requests, ports to give back, legs to end, dialogs to file) and sleeps until
//! [`Call::poll_timeout`]. It draws its tags and branches from its own seeded source. Only
//! what needs other parts of the engine — opening media for an anchored answer, answering
//! the caller's leg — is done by the engine, in the `impl Engine` below.
//!
//! An ended call is kept a while ([`KEEP_ENDED`]) so that a device answering while we
//! cancel still gets its BYE, then forgotten.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use confero_media::bridge::{MediaCommand, MixId};
use confero_sip::dialog::{Dialog, Local, Retransmit, Unacked};
use confero_sip::headers;
use confero_sip::message::{response_for, Entropy, Message, Request, Response};
use confero_sip::sdp;
use confero_sip::transaction::{ServerTxId, TimerConfig};
use confero_sip::transport::{Peer, Transmit};
use confero_sip::{Method, Name, StatusCode};

use super::conference::{AfterAnswer, Party};
use super::fork::{self, ForkStep, OutFork};
use super::ids::{CallId, LegId, Owner, Timer};
use super::{
    copy_body, copy_response_body, local, CallInfo, ClientPurpose, Engine, EngineEvent, ALLOW,
    USER_AGENT,
};
use crate::config::User;
use crate::registrar::Binding;

/// How long an ended call is kept for late answers to its forks (a callee answering while
/// we cancel gets its BYE) and for the last answers to its BYEs and CANCELs.
const KEEP_ENDED: Duration = Duration::from_secs(32);

/// Which of a direct call's two dialogs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Toward the caller: we are UAS of its dialog.
    Caller,
    /// Toward the answering callee: we are UAC of its dialog.
    Callee,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Ringing,
    Answered,
    Ended,
}

/// How a call's audio flows; chosen when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MediaKind {
    Direct,
    Anchored,
}

/// A call's media and what it needs to keep for it.
#[derive(Debug)]
enum Media {
    /// Phones talk to each other; we relay in-dialog requests between the two dialogs.
    Direct {
        /// The dialog with the device that answered.
        callee: Option<Box<Dialog>>,
        /// A re-INVITE we forwarded has no final answer yet (a second one gets 491).
        forwarded_invite_pending: bool,
    },
    /// Both sides on our RTP ports, joined in a private mix once answered.
    Anchored {
        /// Reserved for the callee's leg until it exists.
        callee_port: Option<u16>,
        /// Caller's and callee's legs, once both are answered.
        legs: Option<(LegId, LegId)>,
    },
}

/// Where the caller stands while the callee rings.
#[derive(Debug)]
enum CallerSide {
    /// Their INVITE waits for the callee's answer.
    Invite {
        invite: Box<Request>,
        /// Until its final response.
        tx: Option<ServerTxId>,
        /// Our dialog with the caller (its local tag is in our 18x and 200). A direct
        /// call's requests go through it; an anchored call's caller becomes a leg.
        dialog: Box<Dialog>,
        /// An anchored call's caller port, reserved until the caller's leg exists.
        port: Option<u16>,
    },
    /// Already on one of our legs, handed over by a blind transfer: hears hold music
    /// until the callee answers, is hung up on if nobody does.
    Transferee { leg: LegId },
}

/// A request from one side of a direct call that we forwarded to the other and whose
/// answer we relay.
#[derive(Debug, Clone)]
pub(super) struct Forwarded {
    from_side: Side,
    server_tx: ServerTxId,
    request: Request,
}

/// What a call asks the engine to do, in order.
#[derive(Debug)]
pub(super) enum CallOutput {
    /// A response on one of the caller's (or a relayed request's) server transactions.
    Respond(ServerTxId, Response),
    /// A request of this call, whose answers come back for `purpose`.
    Send(Box<Request>, Peer, ClientPurpose),
    /// A datagram without a transaction (an ACK, a retransmitted 2xx).
    Transmit(Transmit),
    /// A reserved RTP port is free again.
    ReleasePort(u16),
    /// A leg this call held (a transferee, the other half) must be hung up.
    EndLeg(LegId),
    /// Route in-dialog requests for (Call-ID, our tag) to this call's `Side`.
    FileDialog((String, String), Side),
    /// Something the media bridge must do.
    Media(MediaCommand),
    /// The live list of calls changed.
    Changed,
}

/// One two-party call.
#[derive(Debug)]
pub(super) struct Call {
    caller: Party,
    callee: Party,
    state: CallState,
    started_unix: u64,
    answered_unix: Option<u64>,
    caller_side: CallerSide,
    pub(super) forks: Vec<OutFork>,
    media: Media,
    ring_deadline: Instant,
    /// An anchored call's caller heard its one 180 (a direct call relays every 18x).
    ringing_sent: bool,
    ended_at: Option<Instant>,
    local: Local,
    timers: TimerConfig,
    entropy: Entropy,
    out: VecDeque<CallOutput>,
}

/// What a call is made of, as the engine starts it.
struct CallSetup {
    caller: Party,
    callee: Party,
    caller_side: CallerSide,
    media: Media,
}

/// A direct call's dialog on `side`, borrowed from the two fields that hold them (so that
/// the call's entropy can be borrowed beside it).
fn side_dialog<'a>(
    caller_side: &'a mut CallerSide,
    media: &'a mut Media,
    side: Side,
) -> Option<&'a mut Dialog> {
    match (side, caller_side, media) {
        (Side::Caller, CallerSide::Invite { dialog, .. }, Media::Direct { .. }) => Some(dialog),
        (Side::Callee, _, Media::Direct { callee, .. }) => callee.as_deref_mut(),
        _ => None,
    }
}

impl CallSetup {
    /// A call between two desk phones: the caller's INVITE `invite` (on `tx`, whose
    /// dialog with us is `dialog`) waits for the callee's answer, which it gets as is.
    fn direct(
        caller: Party,
        callee: Party,
        invite: Request,
        tx: ServerTxId,
        dialog: Dialog,
    ) -> Self {
        CallSetup {
            caller,
            callee,
            caller_side: CallerSide::Invite {
                invite: Box::new(invite),
                tx: Some(tx),
                dialog: Box::new(dialog),
                port: None,
            },
            media: Media::Direct {
                callee: None,
                forwarded_invite_pending: false,
            },
        }
    }
}

impl Call {
    fn new(
        setup: CallSetup,
        now: Instant,
        now_unix: u64,
        ring_for: Duration,
        local: Local,
        timers: TimerConfig,
        seed: u64,
    ) -> Call {
        Call {
            caller: setup.caller,
            callee: setup.callee,
            state: CallState::Ringing,
            started_unix: now_unix,
            answered_unix: None,
            caller_side: setup.caller_side,
            forks: Vec::new(),
            media: setup.media,
            ring_deadline: now + ring_for,
            ringing_sent: false,
            ended_at: None,
            local,
            timers,
            entropy: Entropy::seeded(seed),
            out: VecDeque::new(),
        }
    }

    /// The next thing the engine must do for this call.
    pub(super) fn poll_output(&mut self) -> Option<CallOutput> {
        self.out.pop_front()
    }

    /// The soonest moment something must happen: the ring timeout, a 2xx retransmission,
    /// forgetting the ended call.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let ring = (self.state == CallState::Ringing).then_some(self.ring_deadline);
        let forget = self.ended_at.map(|t| t + KEEP_ENDED);
        let unacked = [Side::Caller, Side::Callee].map(|side| {
            self.leg(side)
                .and_then(|l| l.unacked_2xx.as_ref())
                .map(Unacked::deadline)
        });
        [ring, forget, unacked[0], unacked[1]]
            .into_iter()
            .flatten()
            .min()
    }

    /// Ended long enough ago that nothing can still need it.
    fn is_done(&self, now: Instant) -> bool {
        self.ended_at.is_some_and(|t| now >= t + KEEP_ENDED)
    }

    /// Our dialog on `side` of a direct call.
    pub(super) fn leg(&self, side: Side) -> Option<&Dialog> {
        match (side, &self.caller_side, &self.media) {
            (Side::Caller, CallerSide::Invite { dialog, .. }, Media::Direct { .. }) => Some(dialog),
            (Side::Callee, _, Media::Direct { callee, .. }) => callee.as_deref(),
            _ => None,
        }
    }

    pub(super) fn leg_mut(&mut self, side: Side) -> Option<&mut Dialog> {
        side_dialog(&mut self.caller_side, &mut self.media, side)
    }

    /// Our To tag toward the caller, while the caller is an INVITE of ours to answer.
    fn caller_tag(&self) -> Option<&str> {
        match &self.caller_side {
            CallerSide::Invite { dialog, .. } => Some(&dialog.local_tag),
            CallerSide::Transferee { .. } => None,
        }
    }

    /// Whether the caller's INVITE on `invite_tx` is this call's and still unanswered.
    fn holds_invite(&self, invite_tx: ServerTxId) -> bool {
        matches!(self.caller_side, CallerSide::Invite { tx: Some(tx), .. } if tx == invite_tx)
    }

    fn info(&self, id: CallId) -> CallInfo {
        CallInfo {
            id: id.0,
            caller: self.caller.number.clone(),
            callee: self.callee.number.clone(),
            state: match self.state {
                CallState::Ringing => "ringing",
                CallState::Answered => "answered",
                CallState::Ended => "ended",
            },
            started_unix: self.started_unix,
            answered_unix: self.answered_unix,
        }
    }

    /// The answered call's two legs in the media bridge (anchored calls only).
    fn anchored_legs(&self) -> Option<(LegId, LegId)> {
        match (self.state, &self.media) {
            (CallState::Answered, Media::Anchored { legs, .. }) => *legs,
            _ => None,
        }
    }

    /// The other leg of an answered anchored call.
    fn other_leg(&self, leg: LegId) -> Option<LegId> {
        match self.anchored_legs()? {
            (a, b) if a == leg => Some(b),
            (a, b) if b == leg => Some(a),
            _ => None,
        }
    }

    /// Marks the call over; false when it already was.
    fn end(&mut self, now: Instant) -> bool {
        if self.state == CallState::Ended {
            return false;
        }
        self.state = CallState::Ended;
        self.ended_at = Some(now);
        self.out.push_back(CallOutput::Changed);
        true
    }

    /// The call was never answered: the final response to the caller (or the transferee
    /// hung up), CANCEL to the forks, ports back.
    fn fail(&mut self, now: Instant, code: u16, reason: &str) {
        if self.state != CallState::Ringing {
            return;
        }
        self.end(now);
        match &mut self.caller_side {
            CallerSide::Invite {
                invite,
                tx,
                dialog,
                port,
            } => {
                if let Some(tx) = tx.take() {
                    let code = StatusCode::from(code);
                    let mut resp = response_for(invite, code, Some(&dialog.local_tag));
                    resp.reason = Some(reason.to_owned());
                    self.out.push_back(CallOutput::Respond(tx, resp));
                }
                if let Some(p) = port.take() {
                    self.out.push_back(CallOutput::ReleasePort(p));
                }
            }
            CallerSide::Transferee { leg } => {
                tracing::info!(%leg, code, reason, "transfer target not reached");
                self.out.push_back(CallOutput::EndLeg(*leg));
            }
        }
        if let Media::Anchored { callee_port, .. } = &mut self.media {
            if let Some(p) = callee_port.take() {
                self.out.push_back(CallOutput::ReleasePort(p));
            }
        }
        self.cancel_forks(None);
    }

    /// CANCELs every fork still ringing, except `keep`.
    fn cancel_forks(&mut self, keep: Option<usize>) {
        for (cancel, peer) in fork::cancels(&mut self.forks, keep) {
            let out = CallOutput::Send(Box::new(cancel), peer, ClientPurpose::Fire);
            self.out.push_back(out);
        }
    }

    /// Every fork gave up (the last with `resp`): the caller hears the best failure.
    fn handle_forks_failed(&mut self, now: Instant, resp: &Response) {
        if self.state != CallState::Ringing || !self.forks.iter().all(|f| f.done) {
            return;
        }
        let (code, mut reason) = fork::failure_of(&self.forks);
        if reason.is_empty() {
            reason = resp.reason.clone().unwrap_or_else(|| "Failed".into());
        }
        self.fail(now, code, &reason);
    }

    /// A callee rings: an anchored call's caller hears 180 once; a direct call's caller
    /// gets each 18x, with early media when a 183 brings SDP.
    fn handle_ringing(&mut self, resp: &Response) {
        let CallerSide::Invite {
            invite,
            tx: Some(tx),
            dialog,
            ..
        } = &self.caller_side
        else {
            return;
        };
        if self.state != CallState::Ringing {
            return;
        }
        let ringing = match self.media {
            Media::Direct { .. } => {
                let mut ringing = response_for(invite, resp.code, Some(&dialog.local_tag));
                ringing.reason = resp.reason.clone();
                if resp.code.into_u16() == 183 && !resp.body.is_empty() {
                    copy_response_body(resp, &mut ringing);
                    let contact = self.local.contact(dialog.peer.transport);
                    ringing.headers.insert(Name::CONTACT, contact);
                }
                ringing
            }
            Media::Anchored { .. } if self.ringing_sent => return,
            Media::Anchored { .. } => {
                let mut ringing =
                    response_for(invite, StatusCode::from(180), Some(&dialog.local_tag));
                ringing.reason = Some("Ringing".into());
                ringing
            }
        };
        self.out.push_back(CallOutput::Respond(*tx, ringing));
        self.ringing_sent = true;
    }

    /// A dialog that belongs to no live conversation any more gets BYE.
    fn send_bye(&mut self, leg: Dialog) {
        let (bye, peer) = fork::bye(leg, &self.local, &mut self.entropy);
        let out = CallOutput::Send(Box::new(bye), peer, ClientPurpose::Fire);
        self.out.push_back(out);
    }

    /// ACKs a callee's 2xx to fork `invite`: the dialog it makes, ready for requests.
    fn ack_answer(&mut self, invite: &Request, resp: &Response, peer: Peer) -> Option<Dialog> {
        let (leg, ack) = fork::ack_answer(invite, resp, peer, &self.local, &mut self.entropy)?;
        self.out.push_back(CallOutput::Transmit(ack));
        Some(leg)
    }

    /// Fork `i` won: the call is answered, the other forks are cancelled.
    fn answered_by(&mut self, now_unix: u64, i: usize) {
        self.state = CallState::Answered;
        self.answered_unix = Some(now_unix);
        self.cancel_forks(Some(i));
        self.out.push_back(CallOutput::Changed);
    }

    /// A direct call is answered by `callee` (fork `i`, whose 2xx is `resp`): the caller
    /// gets the callee's SDP in our 200 OK, and both dialogs are filed.
    fn handle_direct_answer(
        &mut self,
        now: Instant,
        now_unix: u64,
        i: usize,
        callee: Dialog,
        resp: &Response,
    ) {
        let CallerSide::Invite {
            invite, tx, dialog, ..
        } = &mut self.caller_side
        else {
            return self.send_bye(callee);
        };
        let Some(invite_tx) = tx.take() else {
            return self.send_bye(callee);
        };
        let mut ok = response_for(invite, StatusCode::from(200), Some(&dialog.local_tag));
        copy_response_body(resp, &mut ok);
        let contact = self.local.contact(dialog.peer.transport);
        ok.headers.insert(Name::CONTACT, contact);
        ok.headers.insert(Name::ALLOW, ALLOW);
        ok.headers.insert(Name::SERVER, USER_AGENT);
        for rr in headers::all_values(&invite.headers, &Name::RECORD_ROUTE) {
            ok.headers.insert(Name::RECORD_ROUTE, rr);
        }
        dialog.unacked_2xx = Some(Unacked::new(self.timers.t1, now, ok.clone(), true));
        let caller_key = (dialog.call_id.clone(), dialog.local_tag.clone());
        let callee_key = (callee.call_id.clone(), callee.local_tag.clone());
        self.out.push_back(CallOutput::Respond(invite_tx, ok));
        self.out
            .push_back(CallOutput::FileDialog(caller_key, Side::Caller));
        self.out
            .push_back(CallOutput::FileDialog(callee_key, Side::Callee));
        if let Media::Direct { callee: slot, .. } = &mut self.media {
            *slot = Some(Box::new(callee));
        }
        self.answered_by(now_unix, i);
    }

    /// Both halves of an anchored call are answered: they hear each other through a
    /// private mix.
    fn connect(&mut self, id: CallId, caller: LegId, callee: LegId) {
        if let Media::Anchored { legs, .. } = &mut self.media {
            *legs = Some((caller, callee));
        }
        for leg in [caller, callee] {
            let mix = MixId::Call(id.0);
            self.out
                .push_back(CallOutput::Media(MediaCommand::Mix { leg, mix }));
        }
        self.out.push_back(CallOutput::Changed);
    }

    /// One leg of an anchored call ended: the other is hung up, the call is over (a
    /// transferee hanging up while the target rings cancels the ringing).
    fn handle_leg_ended(&mut self, now: Instant, leg: LegId) {
        if self.state == CallState::Ringing {
            return self.fail(now, 487, "Request Terminated");
        }
        let other = self.other_leg(leg);
        self.end(now);
        if let Some(other) = other {
            self.out.push_back(CallOutput::EndLeg(other));
        }
    }

    /// The callee answered but the caller cannot be joined (gone, or its answer failed):
    /// the call is over and the callee's leg is hung up.
    fn drop_answered(&mut self, now: Instant, callee: LegId) {
        self.end(now);
        self.out.push_back(CallOutput::EndLeg(callee));
    }

    /// The answered call ends without hanging up its legs (they are being transferred).
    fn dissolve(&mut self, now: Instant) {
        if let Media::Anchored { legs, .. } = &mut self.media {
            *legs = None;
        }
        self.end(now);
    }

    /// A request in an answered direct call's dialog on `side`: BYE ends the call, the
    /// rest goes to the other side.
    fn handle_request(&mut self, now: Instant, tx: ServerTxId, req: Request, side: Side) {
        let refuse = |call: &mut Call, code: u16, reason: &str| {
            let mut resp = response_for(&req, StatusCode::from(code), None);
            resp.reason = Some(reason.to_owned());
            resp.headers.insert(Name::SERVER, USER_AGENT);
            call.out.push_back(CallOutput::Respond(tx, resp));
        };
        let gone = (481, "Call/Transaction Does Not Exist");
        if self.state != CallState::Answered {
            return refuse(self, gone.0, gone.1);
        }
        let tag = self.leg(side).map(|l| l.local_tag.clone());
        match req.method {
            Method::BYE => {
                let mut ok = response_for(&req, StatusCode::from(200), tag.as_deref());
                ok.headers.insert(Name::SERVER, USER_AGENT);
                self.out.push_back(CallOutput::Respond(tx, ok));
                return self.hang_up(now, Some(side));
            }
            Method::REFER => return refuse(self, 501, "Not Implemented"),
            _ => {}
        }
        if req.method == Method::INVITE {
            let Media::Direct {
                forwarded_invite_pending,
                ..
            } = &mut self.media
            else {
                return refuse(self, gone.0, gone.1);
            };
            if *forwarded_invite_pending {
                return refuse(self, 491, "Request Pending");
            }
            *forwarded_invite_pending = true;
            // The peer's new Contact becomes this leg's target (§12.2.2).
            if let Some(target) = headers::contacts(&req.headers)
                .and_then(|c| c.first().map(headers::contact_uri_text))
            {
                if let Some(leg) = self.leg_mut(side) {
                    leg.remote_target = target;
                }
            }
        }
        let other = side_dialog(&mut self.caller_side, &mut self.media, side.other());
        let Some(other) = other else {
            return refuse(self, gone.0, gone.1);
        };
        let mut fwd = other.request(req.method.clone(), &self.local, &mut self.entropy);
        copy_body(&req, &mut fwd);
        let peer = other.peer;
        let forwarded = Forwarded {
            from_side: side,
            server_tx: tx,
            request: req,
        };
        let purpose = ClientPurpose::Forwarded(Box::new(forwarded));
        self.out
            .push_back(CallOutput::Send(Box::new(fwd), peer, purpose));
    }

    /// The answer to a request we forwarded in a direct call, relayed to its sender.
    fn handle_forwarded_response(&mut self, now: Instant, fwd: Forwarded, resp: Response) {
        let code = resp.code.into_u16();
        if code == 100 {
            return;
        }
        let is_invite = fwd.request.method == Method::INVITE;
        if let (
            true,
            Media::Direct {
                forwarded_invite_pending,
                ..
            },
        ) = (code >= 200 && is_invite, &mut self.media)
        {
            *forwarded_invite_pending = false;
        }
        let (local, t1) = (self.local, self.timers.t1);
        let to_side = fwd.from_side.other();
        let answered = side_dialog(&mut self.caller_side, &mut self.media, to_side);
        if let (true, Some(leg)) = (is_invite && code / 100 == 2, answered) {
            // ACK the side that answered, right away: the SDP answer is in its 2xx.
            if let Some(target) = headers::contacts(&resp.headers)
                .and_then(|c| c.first().map(headers::contact_uri_text))
            {
                leg.remote_target = target;
            }
            let cseq = resp.cseq().map(|(n, _)| n).unwrap_or(leg.local_cseq);
            let ack = leg.ack(cseq, local.via(leg.peer.transport, &mut self.entropy));
            let t = Transmit {
                peer: leg.peer,
                data: Message::Request(ack.clone()).to_bytes(),
            };
            leg.last_ack = Some(ack);
            self.out.push_back(CallOutput::Transmit(t));
        }
        let Some(from_leg) = self.leg_mut(fwd.from_side) else {
            return;
        };
        let mut relay = response_for(&fwd.request, resp.code, Some(&from_leg.local_tag));
        relay.reason = resp.reason.clone();
        copy_response_body(&resp, &mut relay);
        if is_invite && code < 300 {
            let contact = local.contact(from_leg.peer.transport);
            relay.headers.insert(Name::CONTACT, contact);
        }
        relay.headers.insert(Name::SERVER, USER_AGENT);
        if is_invite && code / 100 == 2 {
            from_leg.unacked_2xx = Some(Unacked::new(t1, now, relay.clone(), false));
        }
        self.out
            .push_back(CallOutput::Respond(fwd.server_tx, relay));
    }

    /// Ends an answered direct call: BYE to every side except `except` (the side that
    /// hung up).
    fn hang_up(&mut self, now: Instant, except: Option<Side>) {
        if !self.end(now) {
            return;
        }
        for side in [Side::Caller, Side::Callee] {
            let Some(leg) = side_dialog(&mut self.caller_side, &mut self.media, side) else {
                continue;
            };
            leg.unacked_2xx = None;
            if Some(side) != except {
                let bye = leg.request(Method::BYE, &self.local, &mut self.entropy);
                let out = CallOutput::Send(Box::new(bye), leg.peer, ClientPurpose::Fire);
                self.out.push_back(out);
            }
        }
    }

    /// Time passed: the ring timeout, 2xx retransmissions and their give-up.
    fn handle_timeout(&mut self, now: Instant) {
        if self.state == CallState::Ringing && now >= self.ring_deadline {
            return self.fail(now, 480, "No Answer");
        }
        let t2 = self.timers.t2;
        let mut give_up = false;
        for side in [Side::Caller, Side::Callee] {
            let Some(leg) = self.leg_mut(side) else {
                continue;
            };
            match leg.poll_unacked(now, t2) {
                Retransmit::Nothing => {}
                Retransmit::Send(t) => self.out.push_back(CallOutput::Transmit(t)),
                Retransmit::GaveUp { initial } => give_up |= initial,
            }
        }
        if give_up {
            // No ACK ever came for the answer: the caller is gone (§13.3.1.4).
            self.hang_up(now, None);
        }
    }
}

impl Engine {
    /// Two-party calls in progress.
    pub(super) fn call_infos(&self) -> impl Iterator<Item = CallInfo> + '_ {
        self.calls
            .iter()
            .filter(|(_, c)| c.state != CallState::Ended)
            .map(|(id, c)| c.info(*id))
    }

    /// Two-party calls placed by user `extension` and not over.
    pub(super) fn calls_placed_by(&self, extension: &str) -> usize {
        self.calls_by_user
            .of(extension)
            .filter(|id| {
                self.calls
                    .get(id)
                    .is_some_and(|c| c.state != CallState::Ended)
            })
            .count()
    }

    /// Rings every registered device of `user` for the caller whose INVITE is `req`: with
    /// media through the PBX (`Anchored`: callers from the phone network, browsers) or
    /// between the phones (`Direct`: two desk phones of our users).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ring_user(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        from: Peer,
        caller: Party,
        user: &User,
        kind: MediaKind,
    ) {
        let targets: Vec<Binding> = self
            .registrar
            .contacts_of(&user.sip_username)
            .cloned()
            .collect();
        if targets.is_empty() {
            return self.respond(now, tx, &req, 480, "Temporarily Unavailable");
        }
        let display = if caller.name.is_empty() {
            caller.number.clone()
        } else {
            caller.name.clone()
        };
        let caller_id = (display.as_str(), caller.number.as_str());
        match kind {
            MediaKind::Anchored => {
                let callee = Party::user(user);
                let Some((id, port)) =
                    self.open_anchored(now, tx, req, from, caller.clone(), callee)
                else {
                    return;
                };
                let offer = self.offer_on(port);
                self.ring_devices(now, Owner::Call(id), &targets, caller_id, user, &offer);
                self.ring(now, id);
            }
            MediaKind::Direct => {
                let max_forwards = headers::max_forwards(&req).saturating_sub(1).min(70);
                let mut invites = self.device_invites(&targets, caller_id, user, max_forwards);
                for (invite, _) in &mut invites {
                    copy_body(&req, invite);
                }
                let dialog = match Dialog::uas(&req, self.entropy.tag(), from) {
                    Ok(d) => d,
                    Err(err) => return self.respond(now, tx, &req, 400, &err.to_string()),
                };
                let setup = CallSetup::direct(caller.clone(), Party::user(user), req, tx, dialog);
                let id = self.file_call(now, setup);
                for (invite, peer) in invites {
                    self.call_fork(now, id, invite, peer, None);
                }
                self.ring(now, id);
            }
        }
    }

    /// Holds the caller's INVITE and reserves the two RTP ports of an anchored call; the
    /// caller then adds the callee's forks with [`Engine::call_fork`] and arms it with
    /// [`Engine::ring`]. Refuses the INVITE itself (400/488/503) when it is unusable or no
    /// port is free. Returns the call and the callee port to offer.
    pub(super) fn open_anchored(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        from: Peer,
        caller: Party,
        callee: Party,
    ) -> Option<(CallId, u16)> {
        if let Err(err) = sdp::parse_audio(&req.body) {
            self.refuse_sdp(now, tx, &req, &err);
            return None;
        }
        let dialog = match Dialog::uas(&req, self.entropy.tag(), from) {
            Ok(d) => d,
            Err(err) => {
                self.respond(now, tx, &req, 400, &err.to_string());
                return None;
            }
        };
        let a = self.ports.allocate();
        let b = self.ports.allocate();
        let (Some(a), Some(b)) = (a, b) else {
            // Whatever was taken goes back; the caller hears "try later".
            for port in [a, b].into_iter().flatten() {
                self.ports.release(port);
            }
            tracing::warn!("RTP port range exhausted");
            self.respond(now, tx, &req, 503, "Service Unavailable");
            return None;
        };
        let setup = CallSetup {
            caller,
            callee,
            caller_side: CallerSide::Invite {
                invite: Box::new(req),
                tx: Some(tx),
                dialog: Box::new(dialog),
                port: Some(a),
            },
            media: Media::Anchored {
                callee_port: Some(b),
                legs: None,
            },
        };
        Some((self.file_call(now, setup), b))
    }

    /// A call for a blind transfer: `transferee` is already on one of our legs, so only
    /// the callee's port is reserved. Returns the call and that port (None when no port
    /// is free). The transferee's leg belongs to the new call from now on, so that its
    /// hanging up cancels the ringing.
    pub(super) fn open_transfer_call(
        &mut self,
        now: Instant,
        transferee: LegId,
        caller: Party,
        callee: Party,
    ) -> Option<(CallId, u16)> {
        let Some(port) = self.ports.allocate() else {
            tracing::warn!("RTP port range exhausted; a transfer fails");
            return None;
        };
        let setup = CallSetup {
            caller,
            callee,
            caller_side: CallerSide::Transferee { leg: transferee },
            media: Media::Anchored {
                callee_port: Some(port),
                legs: None,
            },
        };
        let id = self.file_call(now, setup);
        if let Some(c) = self.conf_legs.get_mut(&transferee) {
            c.call = Some(id);
        }
        Some((id, port))
    }

    /// Files a new call, ringing from `now`.
    fn file_call(&mut self, now: Instant, setup: CallSetup) -> CallId {
        let id = self.ids.call();
        let call = Call::new(
            setup,
            now,
            self.unix(now),
            self.settings.ring_timeout,
            local(&self.settings),
            self.settings.timers,
            self.entropy.next_u64(),
        );
        if call.caller.is_user {
            self.calls_by_user.add(&call.caller.number, id);
        }
        self.calls.insert(id, call);
        id
    }

    /// Sends one INVITE toward the callee of a call.
    pub(super) fn call_fork(
        &mut self,
        now: Instant,
        id: CallId,
        invite: Request,
        peer: Peer,
        trunk: Option<i64>,
    ) {
        self.push_fork(now, Owner::Call(id), OutFork::new(invite, peer, trunk));
    }

    pub(super) fn call_is_ringing(&self, id: CallId) -> bool {
        self.calls
            .get(&id)
            .is_some_and(|c| c.state == CallState::Ringing)
    }

    /// Starts the ring timer, or fails the call when no fork could be sent.
    pub(super) fn ring(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.forks.is_empty() && !self.offers_pending_for(Owner::Call(id)) {
            return self.fail_call(now, id, 480, "Temporarily Unavailable");
        }
        self.events.push_back(EngineEvent::CallsChanged);
        self.drive_call(now, id);
    }

    /// Fails a call still ringing (CANCEL from the caller, no trunk, shutdown).
    pub(super) fn fail_call(&mut self, now: Instant, id: CallId, code: u16, reason: &str) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.fail(now, code, reason);
            self.drive_call(now, id);
        }
    }

    /// Does what call `id` asks, then sets its timer (or forgets it, once done).
    fn drive_call(&mut self, now: Instant, id: CallId) {
        while let Some(out) = self.calls.get_mut(&id).and_then(Call::poll_output) {
            match out {
                CallOutput::Respond(tx, resp) => {
                    let _ = self.tx.send_response(now, tx, resp);
                }
                CallOutput::Send(req, peer, purpose) => {
                    self.send_owned(now, Owner::Call(id), purpose, *req, peer);
                }
                CallOutput::Transmit(t) => self.transmits.push_back(t),
                CallOutput::ReleasePort(port) => self.ports.release(port),
                CallOutput::EndLeg(leg) => self.end_conf_leg(now, leg, true),
                CallOutput::FileDialog(key, side) => {
                    self.dialogs.insert(key, (id, side));
                }
                CallOutput::Media(cmd) => self.media_out.push_back(cmd),
                CallOutput::Changed => self.events.push_back(EngineEvent::CallsChanged),
            }
        }
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.is_done(now) {
            return self.forget_call(id);
        }
        if let Some(at) = call.poll_timeout() {
            self.timers.push(std::cmp::Reverse((at, Timer::Call(id))));
        }
    }

    /// A response on fork `i` of a call.
    pub(super) fn on_call_response(&mut self, now: Instant, id: CallId, i: usize, resp: Response) {
        let code = resp.code.into_u16();
        let step = self.fork_step(now, Owner::Call(id), i, &resp);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        match step {
            ForkStep::Handled | ForkStep::Gone => return,
            ForkStep::Ringing => call.handle_ringing(&resp),
            ForkStep::Final if code >= 300 => call.handle_forks_failed(now, &resp),
            ForkStep::Final => self.call_answered(now, id, i, &resp),
        }
        self.drive_call(now, id);
    }

    /// A 2xx from fork `i`: ACK it, then connect the caller — or hang up on a device that
    /// answered too late.
    fn call_answered(&mut self, now: Instant, id: CallId, i: usize, resp: &Response) {
        let unix = self.unix(now);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(fork) = call.forks.get(i) else {
            return;
        };
        let (invite, peer, webrtc) = (fork.invite.clone(), fork.peer, fork.webrtc);
        let Some(leg) = call.ack_answer(&invite, resp, peer) else {
            return;
        };
        if call.state != CallState::Ringing {
            // Lost the race (another device answered, or the caller gave up).
            call.send_bye(leg);
            return self.drop_fork_media(webrtc);
        }
        match call.media {
            Media::Direct { .. } => call.handle_direct_answer(now, unix, i, leg, resp),
            Media::Anchored { callee_port, .. } => {
                self.anchored_answered(now, id, i, leg, resp, &invite, callee_port, webrtc);
            }
        }
    }

    /// An anchored call is answered: the callee's answer opens its leg, then the caller
    /// is answered with our SDP on the caller's port (or, a transferee, joined at once).
    #[allow(clippy::too_many_arguments)]
    fn anchored_answered(
        &mut self,
        now: Instant,
        id: CallId,
        i: usize,
        leg: Dialog,
        resp: &Response,
        invite: &Request,
        plain_port: Option<u16>,
        webrtc: Option<(LegId, u16)>,
    ) {
        let unix = self.unix(now);
        let opened =
            self.open_fork_media(MixId::Call(id.0), webrtc, plain_port, &resp.body, leg.peer);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(opened) = opened else {
            // An answer we cannot use: this device is hung up on.
            call.send_bye(leg);
            if call.forks.iter().all(|f| f.done) {
                call.fail(now, 488, "Not Acceptable Here");
            }
            return self.drop_fork_media(webrtc);
        };
        if let Some(f) = call.forks.get_mut(i) {
            f.webrtc = None; // the leg's now
        }
        if let Media::Anchored { callee_port, .. } = &mut call.media {
            // A browser answered on its own port: the plain one offered to the other
            // devices is free. Otherwise the callee's leg has it now.
            if let (Some(p), Some(_)) = (callee_port.take(), webrtc) {
                call.out.push_back(CallOutput::ReleasePort(p));
            }
        }
        call.answered_by(unix, i);
        let callee_leg = opened.leg;
        let callee = call.callee.clone();
        self.file_answered_leg(now, leg, callee, opened, &invite.body, Some(id));

        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let caller_party = call.caller.clone();
        match &mut call.caller_side {
            CallerSide::Transferee { leg } => {
                let transferee = *leg;
                if !self.conf_legs.contains_key(&transferee) {
                    // The transferee hung up meanwhile: so does the call.
                    return call.drop_answered(now, callee_leg);
                }
                // (The transferee's leg names this call since the transfer opened it.)
                call.connect(id, transferee, callee_leg);
            }
            CallerSide::Invite {
                invite,
                tx,
                dialog,
                port,
            } => {
                let Some(tx) = tx.take() else {
                    return call.drop_answered(now, callee_leg);
                };
                let (invite, from, port) = ((**invite).clone(), dialog.peer, port.take());
                let tag = Some(dialog.local_tag.clone());
                let then = AfterAnswer::CallCaller {
                    call: id,
                    callee: callee_leg,
                };
                self.answer_anchored(now, tx, &invite, from, caller_party, port, tag, then);
            }
        }
    }

    /// The caller of an anchored call is answered too: both hear each other.
    pub(super) fn call_connected(
        &mut self,
        now: Instant,
        id: CallId,
        caller: LegId,
        callee: LegId,
    ) {
        if let Some(c) = self.conf_legs.get_mut(&caller) {
            c.call = Some(id);
        }
        if let Some(call) = self.calls.get_mut(&id) {
            call.connect(id, caller, callee);
            self.drive_call(now, id);
        }
    }

    /// The caller could not be answered after all (a port or an offer problem): the
    /// callee, already answered, is hung up on.
    pub(super) fn call_refused(&mut self, now: Instant, id: CallId, callee: LegId) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.drop_answered(now, callee);
            self.drive_call(now, id);
        }
    }

    /// The other leg of an answered anchored call.
    pub(super) fn call_other_leg(&self, id: CallId, leg: LegId) -> Option<LegId> {
        self.calls.get(&id)?.other_leg(leg)
    }

    /// An answered anchored call ends without hanging up its legs (they are being
    /// transferred).
    pub(super) fn call_dissolved(&mut self, now: Instant, id: CallId) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.dissolve(now);
            self.drive_call(now, id);
        }
    }

    /// One leg of an anchored call ended.
    pub(super) fn call_leg_ended(&mut self, now: Instant, id: CallId, leg: LegId) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.handle_leg_ended(now, leg);
            self.drive_call(now, id);
        }
    }

    /// A request in a direct call's dialog on `side`.
    pub(super) fn call_in_dialog(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        id: CallId,
        side: Side,
    ) {
        if req.method == Method::OPTIONS {
            return self.answer_options(tx, &req);
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        };
        call.handle_request(now, tx, req, side);
        self.drive_call(now, id);
    }

    /// The answer to a request forwarded in a direct call.
    pub(super) fn on_forwarded_response(
        &mut self,
        now: Instant,
        id: CallId,
        fwd: Forwarded,
        resp: Response,
    ) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.handle_forwarded_response(now, fwd, resp);
            self.drive_call(now, id);
        }
    }

    /// A call's timer.
    pub(super) fn call_timers(&mut self, now: Instant, id: CallId) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.handle_timeout(now);
            self.drive_call(now, id);
        }
    }

    /// Drops an ended call with its dialogs and transactions.
    fn forget_call(&mut self, id: CallId) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        self.calls_by_user.remove(&call.caller.number, id);
        for side in [Side::Caller, Side::Callee] {
            if let Some(leg) = call.leg(side) {
                self.dialogs
                    .remove(&(leg.call_id.clone(), leg.local_tag.clone()));
            }
        }
        self.client_txs
            .retain(|_, (owner, _)| *owner != Owner::Call(id));
    }

    /// The call whose caller's INVITE is `invite_tx` (for CANCEL), with our tag toward
    /// the caller.
    pub(super) fn call_of_invite(&self, invite_tx: ServerTxId) -> Option<(CallId, String)> {
        self.calls
            .iter()
            .find(|(_, c)| c.holds_invite(invite_tx))
            .and_then(|(id, c)| Some((*id, c.caller_tag()?.to_owned())))
    }

    /// The server is stopping: callers still ringing get 503, answered direct calls BYE
    /// (anchored calls end with their legs, which go first).
    pub(super) fn hang_up_calls(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for id in ids {
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            match call.state {
                CallState::Ringing => call.fail(now, 503, "Service Unavailable"),
                CallState::Answered => call.hang_up(now, None),
                CallState::Ended => {}
            }
            self.drive_call(now, id);
        }
    }
}

/// Chooses what the caller hears when no device answered (RFC 3261 §16.7 in spirit:
/// busy beats "unavailable").
pub(super) fn pick_failure(codes: impl Iterator<Item = u16>) -> (u16, &'static str) {
    let codes: Vec<u16> = codes.collect();
    if codes.iter().any(|&c| c == 486 || c == 600) {
        (486, "Busy Here")
    } else if codes.contains(&603) {
        (603, "Decline")
    } else {
        (480, "Temporarily Unavailable")
    }
}

#[cfg(test)]
mod tests {
    //! The call on its own, without an engine: inputs in, outputs checked.
    use std::net::SocketAddr;

    use confero_sip::transaction::{TransactionEvent, TransactionLayer};
    use confero_sip::transport::Transport;

    use super::*;

    fn udp(port: u16) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conn: None,
        }
    }

    /// A message written with bare line ends in its head; the body is taken as it is.
    fn parse(text: &str) -> Message {
        let (head, body) = text.split_once("\n\n").expect("a blank line");
        let wire = format!("{}\r\n\r\n{body}", head.replace('\n', "\r\n"));
        Message::parse(wire.as_bytes()).expect("a SIP message")
    }

    fn response(text: &str) -> Response {
        match parse(text) {
            Message::Response(r) => r,
            Message::Request(_) => panic!("not a response"),
        }
    }

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

    /// Alice's INVITE for 102 as the PBX received it, its server transaction, and a
    /// direct call ringing Bob's desk phone (fork 0) and mobile (fork 1).
    fn ringing_call(now: Instant) -> (Call, ServerTxId) {
        let mut tl = TransactionLayer::new(TimerConfig::default());
        let invite = parse(&format!(
            "INVITE sip:102@pbx SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKa1\nFrom: <sip:101@pbx>;tag=alice\nTo: <sip:102@pbx>\nCall-ID: c1\nCSeq: 1 INVITE\nContact: <sip:alice@127.0.0.1:5000>\nContent-Type: application/sdp\nContent-Length: {}\n\n{SDP}",
            SDP.len()
        ));
        tl.handle_message(now, invite, udp(5000));
        let Some(TransactionEvent::Request { tx, request, .. }) = tl.poll_event() else {
            panic!("the INVITE reaches the TU");
        };
        let dialog = Dialog::uas(&request, "pbx-tag".into(), udp(5000)).unwrap();
        let (alice, bob) = (
            Party::external("101", "Alice"),
            Party::external("102", "Bob"),
        );
        let setup = CallSetup::direct(alice, bob, request, tx, dialog);
        let local = Local {
            advertised: SocketAddr::from(([127, 0, 0, 1], 5060)),
            user_agent: USER_AGENT,
        };
        let ring = Duration::from_secs(30);
        let mut call = Call::new(
            setup,
            now,
            1_700_000_000,
            ring,
            local,
            TimerConfig::default(),
            7,
        );
        for (port, tag) in [(6000, "desk"), (6001, "mobile")] {
            let device = match parse(&format!(
                "INVITE sip:bob@127.0.0.1:{port} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{tag}\nFrom: <sip:101@pbx>;tag=out-{tag}\nTo: <sip:102@pbx>\nCall-ID: out-{tag}\nCSeq: 1 INVITE\nContent-Length: 0\n\n"
            )) {
                Message::Request(r) => r,
                Message::Response(_) => unreachable!(),
            };
            call.forks.push(OutFork::new(device, udp(port), None));
        }
        (call, tx)
    }

    fn device_answer(call: &Call, i: usize, code: &str, body: &str) -> Response {
        let invite = &call.forks[i].invite;
        let tag = ["desk", "mobile"][i];
        response(&format!(
            "SIP/2.0 {code}\nVia: {via}\nFrom: <sip:101@pbx>;tag=out-{tag}\nTo: <sip:102@pbx>;tag={tag}\nCall-ID: out-{tag}\nCSeq: 1 INVITE\nContact: <sip:bob@127.0.0.1:{port}>\nContent-Length: {len}\n{ct}\n{body}",
            via = headers::first(&invite.headers, &Name::VIA).unwrap(),
            port = 6000 + i,
            len = body.len(),
            ct = if body.is_empty() { "" } else { "Content-Type: application/sdp\n" },
        ))
    }

    fn drain(call: &mut Call) -> Vec<CallOutput> {
        std::iter::from_fn(|| call.poll_output()).collect()
    }

    #[test]
    fn the_first_device_to_answer_wins_and_the_caller_gets_its_sdp() {
        let now = Instant::now();
        let (mut call, tx) = ringing_call(now);
        // The desk phone rings: the caller hears it, with our tag.
        let ringing = device_answer(&call, 0, "180 Ringing", "");
        call.forks[0].on_provisional(180);
        call.handle_ringing(&ringing);
        match drain(&mut call).as_slice() {
            [CallOutput::Respond(t, r)] => {
                assert_eq!((*t, r.code.into_u16()), (tx, 180));
                assert_eq!(r.to_tag().as_deref(), Some("pbx-tag"));
            }
            other => panic!("{other:?}"),
        }
        // The desk phone answers: ACK, 200 with its SDP, both dialogs filed, the
        // mobile (still silent) cancelled as soon as it rings.
        let ok = device_answer(&call, 0, "200 OK", SDP);
        call.forks[0].done = true;
        let invite = call.forks[0].invite.clone();
        let leg = call.ack_answer(&invite, &ok, udp(6000)).unwrap();
        call.handle_direct_answer(now, 1_700_000_005, 0, leg, &ok);
        let out = drain(&mut call);
        assert!(matches!(&out[0], CallOutput::Transmit(t) if t.peer == udp(6000)));
        let CallOutput::Respond(t, resp) = &out[1] else {
            panic!("{out:?}");
        };
        assert_eq!((*t, resp.code.into_u16()), (tx, 200));
        assert_eq!(&resp.body[..], SDP.as_bytes());
        let filed: Vec<Side> = out
            .iter()
            .filter_map(|o| match o {
                CallOutput::FileDialog(_, side) => Some(*side),
                _ => None,
            })
            .collect();
        assert_eq!(filed, [Side::Caller, Side::Callee]);
        assert!(call.forks[1].cancel_wanted);
        assert_eq!(call.info(CallId(1)).state, "answered");
        // Our 200 is retransmitted until the caller ACKs it, then the caller is given
        // up on and both sides hung up (§13.3.1.4).
        let first = call.poll_timeout().unwrap();
        assert!(first <= now + Duration::from_millis(500));
        call.handle_timeout(first);
        assert!(matches!(
            drain(&mut call).as_slice(),
            [CallOutput::Transmit(_)]
        ));
        call.handle_timeout(now + Duration::from_secs(40));
        let out = drain(&mut call);
        let byes: Vec<Peer> = out
            .iter()
            .filter_map(|o| match o {
                CallOutput::Send(req, peer, _) if req.method == Method::BYE => Some(*peer),
                _ => None,
            })
            .collect();
        assert_eq!(byes, [udp(5000), udp(6000)], "{out:?}");
        assert!(!call.is_done(now + Duration::from_secs(40)));
        assert!(call.is_done(now + Duration::from_secs(40) + KEEP_ENDED));
    }

    #[test]
    fn busy_beats_unavailable_and_a_late_answer_is_hung_up() {
        let now = Instant::now();
        let (mut call, tx) = ringing_call(now);
        for (i, code) in [(0, "486 Busy Here"), (1, "480 Temporarily Unavailable")] {
            let resp = device_answer(&call, i, code, "");
            call.forks[i].done = true;
            call.forks[i].final_code = Some(resp.code.into_u16());
            call.handle_forks_failed(now, &resp);
        }
        let out = drain(&mut call);
        match out.as_slice() {
            [CallOutput::Changed, CallOutput::Respond(t, r)] => {
                assert_eq!((*t, r.code.into_u16()), (tx, 486));
            }
            other => panic!("{other:?}"),
        }
        // Nothing more for the caller, whatever comes later.
        call.fail(now, 487, "Request Terminated");
        assert!(drain(&mut call).is_empty());
        assert_eq!(call.info(CallId(1)).state, "ended");
    }
}
