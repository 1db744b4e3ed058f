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
//!   of the kind rooms use ([`ConfLeg`]), so re-INVITEs, BYE, RTP timeouts and call quality
//!   work the same; when either leg ends, the other gets BYE.
//!
//! An ended call is kept a while ([`KEEP_ENDED`]) so that a device answering while we
//! cancel still gets its BYE, then forgotten.

use std::time::{Duration, Instant};

use confero_media::bridge::{MediaCommand, MixId};
use confero_sip::dialog::{Dialog, Retransmit, Unacked};
use confero_sip::headers;
use confero_sip::message::{response_for, Message, Request, Response};
use confero_sip::sdp;
use confero_sip::transaction::ServerTxId;
use confero_sip::transport::Peer;
use confero_sip::{Method, Name, StatusCode};

use super::conference::{AfterAnswer, ConfLeg, Party};
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
    pub(super) fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallState {
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
pub(super) enum Media {
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
    pub(super) from_side: Side,
    pub(super) server_tx: ServerTxId,
    pub(super) request: Request,
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
}

impl Call {
    /// Our dialog on `side` of a direct call.
    pub(super) fn leg(&self, side: Side) -> Option<&Dialog> {
        match (side, &self.caller_side, &self.media) {
            (Side::Caller, CallerSide::Invite { dialog, .. }, Media::Direct { .. }) => Some(dialog),
            (Side::Callee, _, Media::Direct { callee, .. }) => callee.as_deref(),
            _ => None,
        }
    }

    pub(super) fn leg_mut(&mut self, side: Side) -> Option<&mut Dialog> {
        match (side, &mut self.caller_side, &mut self.media) {
            (Side::Caller, CallerSide::Invite { dialog, .. }, Media::Direct { .. }) => Some(dialog),
            (Side::Callee, _, Media::Direct { callee, .. }) => callee.as_deref_mut(),
            _ => None,
        }
    }

    /// Our To tag toward the caller, while the caller is an INVITE of ours to answer.
    fn caller_tag(&self) -> Option<&str> {
        match &self.caller_side {
            CallerSide::Invite { dialog, .. } => Some(&dialog.local_tag),
            CallerSide::Transferee { .. } => None,
        }
    }

    /// The soonest moment something must happen: the ring timeout, a 2xx retransmission,
    /// forgetting the ended call.
    fn next_deadline(&self) -> Option<Instant> {
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

    /// Marks the call over; false when it already was.
    fn end(&mut self, now: Instant) -> bool {
        if self.state == CallState::Ended {
            return false;
        }
        self.state = CallState::Ended;
        self.ended_at = Some(now);
        true
    }

    /// The answered call's two legs in the media bridge (anchored calls only).
    fn anchored_legs(&self) -> Option<(LegId, LegId)> {
        match (self.state, &self.media) {
            (CallState::Answered, Media::Anchored { legs, .. }) => *legs,
            _ => None,
        }
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
        self.calls
            .values()
            .filter(|c| c.state != CallState::Ended && c.caller.is_user)
            .filter(|c| c.caller.number == extension)
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
        let max_forwards = headers::max_forwards(&req).saturating_sub(1).min(70);
        let direct_offer = (kind == MediaKind::Direct).then(|| req.clone());
        let Some((id, port)) = self.open_call(now, tx, req, from, caller.clone(), user, kind)
        else {
            return;
        };
        let caller_id = (display.as_str(), caller.number.as_str());
        match (direct_offer, port) {
            (Some(offer), _) => {
                for (mut invite, peer) in
                    self.device_invites(&targets, caller_id, user, max_forwards)
                {
                    copy_body(&offer, &mut invite);
                    self.push_fork(now, Owner::Call(id), OutFork::new(invite, peer, None));
                }
            }
            (None, Some(port)) => {
                let offer = self.offer_on(port);
                self.ring_devices(now, Owner::Call(id), &targets, caller_id, user, &offer);
            }
            (None, None) => {}
        }
        self.ring(now, id);
    }

    /// Holds the caller's INVITE for a call to the user `callee` (see [`Engine::open_call`]).
    #[allow(clippy::too_many_arguments)]
    fn open_call(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        from: Peer,
        caller: Party,
        callee: &User,
        kind: MediaKind,
    ) -> Option<(CallId, Option<u16>)> {
        match kind {
            MediaKind::Anchored => self
                .open_anchored(now, tx, req, from, caller, Party::user(callee))
                .map(|(id, port)| (id, Some(port))),
            MediaKind::Direct => {
                let dialog = match Dialog::uas(&req, self.entropy.tag(), from) {
                    Ok(d) => d,
                    Err(err) => {
                        self.respond(now, tx, &req, 400, &err.to_string());
                        return None;
                    }
                };
                let side = CallerSide::Invite {
                    invite: Box::new(req),
                    tx: Some(tx),
                    dialog: Box::new(dialog),
                    port: None,
                };
                let media = Media::Direct {
                    callee: None,
                    forwarded_invite_pending: false,
                };
                Some((
                    self.file_call(now, caller, Party::user(callee), side, media),
                    None,
                ))
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
        let side = CallerSide::Invite {
            invite: Box::new(req),
            tx: Some(tx),
            dialog: Box::new(dialog),
            port: Some(a),
        };
        let media = Media::Anchored {
            callee_port: Some(b),
            legs: None,
        };
        Some((self.file_call(now, caller, callee, side, media), b))
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
        let side = CallerSide::Transferee { leg: transferee };
        let media = Media::Anchored {
            callee_port: Some(port),
            legs: None,
        };
        let id = self.file_call(now, caller, callee, side, media);
        if let Some(c) = self.conf_legs.get_mut(&transferee) {
            c.call = Some(id);
        }
        Some((id, port))
    }

    /// Files a new call, ringing from `now`.
    fn file_call(
        &mut self,
        now: Instant,
        caller: Party,
        callee: Party,
        caller_side: CallerSide,
        media: Media,
    ) -> CallId {
        let id = self.ids.call();
        let call = Call {
            caller,
            callee,
            state: CallState::Ringing,
            started_unix: self.unix(now),
            answered_unix: None,
            caller_side,
            forks: Vec::new(),
            media,
            ring_deadline: now + self.settings.ring_timeout,
            ringing_sent: false,
            ended_at: None,
        };
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
        self.schedule(id);
        self.events.push_back(EngineEvent::CallsChanged);
    }

    /// Sets a timer for the call's next deadline.
    fn schedule(&mut self, id: CallId) {
        if let Some(at) = self.calls.get(&id).and_then(Call::next_deadline) {
            self.timers.push(std::cmp::Reverse((at, Timer::Call(id))));
        }
    }

    /// Ends a call that was not answered: the final response to the caller (or the
    /// transferee hung up), CANCEL to the forks, ports back.
    pub(super) fn fail_call(&mut self, now: Instant, id: CallId, code: u16, reason: &str) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.state != CallState::Ringing {
            return;
        }
        call.end(now);
        let mut transferee = None;
        let mut ports = Vec::new();
        match &mut call.caller_side {
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
                    let _ = self.tx.send_response(now, tx, resp);
                }
                ports.extend(port.take());
            }
            CallerSide::Transferee { leg } => transferee = Some(*leg),
        }
        if let Media::Anchored { callee_port, .. } = &mut call.media {
            ports.extend(callee_port.take());
        }
        for port in ports {
            self.ports.release(port);
        }
        for (cancel, peer) in fork::cancels(&mut call.forks, None) {
            self.send_owned(now, Owner::Call(id), ClientPurpose::Fire, cancel, peer);
        }
        self.schedule(id);
        self.events.push_back(EngineEvent::CallsChanged);
        if let Some(leg) = transferee {
            tracing::info!(%leg, code, reason, "transfer target not reached");
            self.end_conf_leg(now, leg, true);
        }
    }

    /// A response on fork `i` of a call.
    pub(super) fn on_call_response(&mut self, now: Instant, id: CallId, i: usize, resp: Response) {
        let code = resp.code.into_u16();
        match self.fork_step(now, Owner::Call(id), i, &resp) {
            ForkStep::Final => {}
            ForkStep::Ringing => return self.call_ringing(now, id, &resp),
            ForkStep::Handled | ForkStep::Gone => return,
        }
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if code >= 300 {
            if call.state == CallState::Ringing && call.forks.iter().all(|f| f.done) {
                let (code, mut reason) = fork::failure_of(&call.forks);
                if reason.is_empty() {
                    reason = resp.reason.clone().unwrap_or_else(|| "Failed".into());
                }
                self.fail_call(now, id, code, &reason);
            }
            return;
        }
        self.call_answered(now, id, i, resp);
    }

    /// A callee rings: an anchored call's caller hears 180 once; a direct call's caller
    /// gets each 18x, with early media when a 183 brings SDP.
    fn call_ringing(&mut self, now: Instant, id: CallId, resp: &Response) {
        let advertised = local(&self.settings);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let CallerSide::Invite {
            invite,
            tx: Some(tx),
            dialog,
            ..
        } = &call.caller_side
        else {
            return;
        };
        let tx = *tx;
        if call.state != CallState::Ringing {
            return;
        }
        let ringing = match call.media {
            Media::Direct { .. } => {
                let mut ringing = response_for(invite, resp.code, Some(&dialog.local_tag));
                ringing.reason = resp.reason.clone();
                if resp.code.into_u16() == 183 && !resp.body.is_empty() {
                    copy_response_body(resp, &mut ringing);
                    let contact = advertised.contact(dialog.peer.transport);
                    ringing.headers.insert(Name::CONTACT, contact);
                }
                ringing
            }
            Media::Anchored { .. } if call.ringing_sent => return,
            Media::Anchored { .. } => {
                let mut ringing =
                    response_for(invite, StatusCode::from(180), Some(&dialog.local_tag));
                ringing.reason = Some("Ringing".into());
                ringing
            }
        };
        call.ringing_sent = true;
        let _ = self.tx.send_response(now, tx, ringing);
    }

    /// A 2xx from fork `i`: ACK it, then connect the caller — or hang up on a device that
    /// answered too late or with an answer we cannot use.
    fn call_answered(&mut self, now: Instant, id: CallId, i: usize, resp: Response) {
        let Some(fork) = self.calls.get(&id).and_then(|c| c.forks.get(i)) else {
            return;
        };
        let (invite, peer, webrtc) = (fork.invite.clone(), fork.peer, fork.webrtc);
        let Some(mut leg) = Dialog::uac(&invite, &resp, peer) else {
            return;
        };
        let ack = leg.ack_for(
            &invite,
            local(&self.settings).via(peer.transport, &mut self.entropy),
        );
        self.tx.send_stateless(Message::Request(ack.clone()), peer);
        leg.last_ack = Some(ack);
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.state != CallState::Ringing {
            // Lost the race (another device answered, or the caller gave up).
            self.drop_fork_media(webrtc);
            return self.send_bye_on(now, id, leg);
        }
        match call.media {
            Media::Direct { .. } => self.direct_answered(now, id, i, leg, &resp),
            Media::Anchored { .. } => self.anchored_answered(now, id, i, leg, &resp, &invite),
        }
    }

    /// Fork `i` won: the call is answered, the other forks are cancelled.
    fn answered_now(&mut self, now: Instant, id: CallId, i: usize) {
        let unix = self.unix(now);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.state = CallState::Answered;
        call.answered_unix = Some(unix);
        for (cancel, peer) in fork::cancels(&mut call.forks, Some(i)) {
            self.send_owned(now, Owner::Call(id), ClientPurpose::Fire, cancel, peer);
        }
    }

    /// A direct call is answered: the caller gets the callee's SDP in our 200 OK, and
    /// both dialogs are filed for the requests that follow.
    fn direct_answered(
        &mut self,
        now: Instant,
        id: CallId,
        i: usize,
        callee: Dialog,
        resp: &Response,
    ) {
        let advertised = local(&self.settings);
        let t1 = self.settings.timers.t1;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let CallerSide::Invite {
            invite, tx, dialog, ..
        } = &mut call.caller_side
        else {
            return;
        };
        let Some(invite_tx) = tx.take() else {
            return self.send_bye_on(now, id, callee);
        };
        let mut ok = response_for(invite, StatusCode::from(200), Some(&dialog.local_tag));
        copy_response_body(resp, &mut ok);
        ok.headers
            .insert(Name::CONTACT, advertised.contact(dialog.peer.transport));
        ok.headers.insert(Name::ALLOW, ALLOW);
        ok.headers.insert(Name::SERVER, USER_AGENT);
        for rr in headers::all_values(&invite.headers, &Name::RECORD_ROUTE) {
            ok.headers.insert(Name::RECORD_ROUTE, rr);
        }
        let _ = self.tx.send_response(now, invite_tx, ok.clone());
        dialog.unacked_2xx = Some(Unacked::new(t1, now, ok, true));
        let caller_key = (dialog.call_id.clone(), dialog.local_tag.clone());
        let callee_key = (callee.call_id.clone(), callee.local_tag.clone());
        if let Media::Direct { callee: slot, .. } = &mut call.media {
            *slot = Some(Box::new(callee));
        }
        self.dialogs.insert(caller_key, (id, Side::Caller));
        self.dialogs.insert(callee_key, (id, Side::Callee));
        self.answered_now(now, id, i);
        self.schedule(id);
        self.events.push_back(EngineEvent::CallsChanged);
    }

    /// An anchored call is answered: the callee's answer opens its leg, then the caller
    /// is answered with our SDP on the caller's port (or, a transferee, joined at once).
    fn anchored_answered(
        &mut self,
        now: Instant,
        id: CallId,
        i: usize,
        leg: Dialog,
        resp: &Response,
        invite: &Request,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Media::Anchored { callee_port, .. } = &mut call.media else {
            return;
        };
        let plain_port = *callee_port;
        let Some(webrtc) = call.forks.get(i).map(|f| f.webrtc) else {
            return;
        };
        let peer = leg.peer;
        let Some(opened) = self.open_fork_media(webrtc, plain_port, &resp.body, peer) else {
            // An answer we cannot use: this device is hung up on.
            self.drop_fork_media(webrtc);
            self.send_bye_on(now, id, leg);
            if self
                .calls
                .get(&id)
                .is_some_and(|c| c.forks.iter().all(|f| f.done))
            {
                self.fail_call(now, id, 488, "Not Acceptable Here");
            }
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(f) = call.forks.get_mut(i) {
            f.webrtc = None; // the leg's now
        }
        if let Media::Anchored { callee_port, .. } = &mut call.media {
            // A browser answered on its own port: the plain one offered to the other
            // devices is free. Otherwise the callee's leg has it now.
            if let (Some(p), Some(_)) = (callee_port.take(), webrtc) {
                self.ports.release(p);
            }
        }
        let callee_party = call.callee.clone();
        let callee_leg = opened.leg;
        self.conf_dialogs
            .insert((leg.call_id.clone(), leg.local_tag.clone()), callee_leg);
        let joined = self.unix(now);
        let mut c = ConfLeg::offered(
            leg,
            callee_party,
            opened.port,
            opened.media,
            &invite.body,
            joined,
        );
        c.call = Some(id);
        self.conf_legs.insert(callee_leg, c);

        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let caller_party = call.caller.clone();
        let (invite, tx, dialog, port) = match &mut call.caller_side {
            CallerSide::Invite {
                invite,
                tx,
                dialog,
                port,
            } => ((**invite).clone(), tx.take(), dialog.clone(), port.take()),
            CallerSide::Transferee { leg } => {
                let transferee = *leg;
                if !self.conf_legs.contains_key(&transferee) {
                    return self.end_conf_leg(now, callee_leg, true);
                }
                self.answered_now(now, id, i);
                return self.call_connected(id, transferee, callee_leg);
            }
        };
        let Some(tx) = tx else {
            return self.end_conf_leg(now, callee_leg, true);
        };
        self.answered_now(now, id, i);
        let then = AfterAnswer::CallCaller {
            call: id,
            callee: callee_leg,
        };
        let tag = Some(dialog.local_tag.clone());
        self.answer_anchored(now, tx, &invite, dialog.peer, caller_party, port, tag, then);
    }

    /// Both halves of an anchored call are answered: they hear each other through a
    /// private mix.
    pub(super) fn call_connected(&mut self, id: CallId, caller: LegId, callee: LegId) {
        if let Some(c) = self.conf_legs.get_mut(&caller) {
            c.call = Some(id);
        }
        if let Some(Media::Anchored { legs, .. }) = self.calls.get_mut(&id).map(|c| &mut c.media) {
            *legs = Some((caller, callee));
        }
        for leg in [caller, callee] {
            self.media_out.push_back(MediaCommand::Mix {
                leg,
                mix: MixId::Call(id.0),
            });
        }
        self.events.push_back(EngineEvent::CallsChanged);
    }

    /// The caller could not be answered after all (a port or an offer problem): the
    /// callee, already answered, is hung up on.
    pub(super) fn call_refused(&mut self, now: Instant, id: CallId, callee: LegId) {
        self.call_ended(now, id);
        self.end_conf_leg(now, callee, true);
    }

    /// The call is over, without anyone to hang up.
    fn call_ended(&mut self, now: Instant, id: CallId) {
        if self.calls.get_mut(&id).is_some_and(|c| c.end(now)) {
            self.schedule(id);
            self.events.push_back(EngineEvent::CallsChanged);
        }
    }

    /// The other leg of an answered anchored call.
    pub(super) fn call_other_leg(&self, id: CallId, leg: LegId) -> Option<LegId> {
        match self.calls.get(&id)?.anchored_legs()? {
            (a, b) if a == leg => Some(b),
            (a, b) if b == leg => Some(a),
            _ => None,
        }
    }

    /// An answered anchored call ends without hanging up its legs (they are being
    /// transferred).
    pub(super) fn call_dissolved(&mut self, now: Instant, id: CallId) {
        if let Some(Media::Anchored { legs, .. }) = self.calls.get_mut(&id).map(|c| &mut c.media) {
            *legs = None;
        }
        self.call_ended(now, id);
    }

    /// One leg of an anchored call ended: the other is hung up, the call is over (a
    /// transferee hanging up while the target rings cancels the ringing).
    pub(super) fn call_leg_ended(&mut self, now: Instant, id: CallId, leg: LegId) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.state == CallState::Ringing {
            return self.fail_call(now, id, 487, "Request Terminated");
        }
        let other = self.call_other_leg(id, leg);
        self.call_ended(now, id);
        if let Some(other) = other {
            if self.conf_legs.contains_key(&other) {
                self.end_conf_leg(now, other, true);
            }
        }
    }

    /// A request in an answered direct call's dialog on `side`: BYE ends the call, the
    /// rest goes to the other side.
    pub(super) fn call_in_dialog(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        id: CallId,
        side: Side,
        tag: &str,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        };
        if call.state != CallState::Answered {
            return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        }
        if req.method == Method::OPTIONS {
            return self.answer_options(tx, &req);
        }
        if req.method == Method::BYE {
            let ok = response_for(&req, StatusCode::from(200), Some(tag));
            self.send_response(now, tx, ok);
            return self.hang_up(now, id, Some(side));
        }
        if req.method == Method::REFER {
            return self.respond(now, tx, &req, 501, "Not Implemented");
        }
        if req.method == Method::INVITE {
            let Media::Direct {
                forwarded_invite_pending,
                ..
            } = &mut call.media
            else {
                return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
            };
            if *forwarded_invite_pending {
                return self.respond(now, tx, &req, 491, "Request Pending");
            }
            *forwarded_invite_pending = true;
            // The peer's new Contact becomes this leg's target (§12.2.2).
            if let Some(target) = headers::contacts(&req.headers)
                .and_then(|c| c.first().map(headers::contact_uri_text))
            {
                if let Some(leg) = call.leg_mut(side) {
                    leg.remote_target = target;
                }
            }
        }
        let advertised = local(&self.settings);
        let Some(other) = call.leg_mut(side.other()) else {
            return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        };
        let mut fwd = other.request(req.method.clone(), &advertised, &mut self.entropy);
        copy_body(&req, &mut fwd);
        let peer = other.peer;
        let forwarded = Forwarded {
            from_side: side,
            server_tx: tx,
            request: req,
        };
        let purpose = ClientPurpose::Forwarded(Box::new(forwarded));
        self.send_owned(now, Owner::Call(id), purpose, fwd, peer);
    }

    /// Sends BYE on a dialog that belongs to no live conversation any more.
    fn send_bye_on(&mut self, now: Instant, id: CallId, mut leg: Dialog) {
        let bye = leg.request(Method::BYE, &local(&self.settings), &mut self.entropy);
        self.send_owned(now, Owner::Call(id), ClientPurpose::Fire, bye, leg.peer);
    }

    /// The answer to a request we forwarded in a direct call, relayed to its sender.
    pub(super) fn on_forwarded_response(
        &mut self,
        now: Instant,
        id: CallId,
        fwd: Forwarded,
        resp: Response,
    ) {
        let code = resp.code.into_u16();
        let is_invite = fwd.request.method == Method::INVITE;
        let advertised = local(&self.settings);
        let t1 = self.settings.timers.t1;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if code == 100 {
            return;
        }
        if let (
            true,
            Media::Direct {
                forwarded_invite_pending,
                ..
            },
        ) = (code >= 200 && is_invite, &mut call.media)
        {
            *forwarded_invite_pending = false;
        }
        let to_side = fwd.from_side.other();
        if is_invite && code / 100 == 2 {
            // ACK the side that answered, right away: the SDP answer is in its 2xx.
            if let Some(leg) = call.leg_mut(to_side) {
                if let Some(target) = headers::contacts(&resp.headers)
                    .and_then(|c| c.first().map(headers::contact_uri_text))
                {
                    leg.remote_target = target;
                }
                let cseq = resp.cseq().map(|(n, _)| n).unwrap_or(leg.local_cseq);
                let ack = leg.ack(cseq, advertised.via(leg.peer.transport, &mut self.entropy));
                self.tx
                    .send_stateless(Message::Request(ack.clone()), leg.peer);
                leg.last_ack = Some(ack);
            }
        }
        let Some(from_leg) = call.leg_mut(fwd.from_side) else {
            return;
        };
        let mut relay = response_for(&fwd.request, resp.code, Some(&from_leg.local_tag));
        relay.reason = resp.reason.clone();
        copy_response_body(&resp, &mut relay);
        if is_invite && code < 300 {
            relay
                .headers
                .insert(Name::CONTACT, advertised.contact(from_leg.peer.transport));
        }
        relay.headers.insert(Name::SERVER, USER_AGENT);
        let _ = self.tx.send_response(now, fwd.server_tx, relay.clone());
        if is_invite && code / 100 == 2 {
            from_leg.unacked_2xx = Some(Unacked::new(t1, now, relay, false));
            self.schedule(id);
        }
    }

    /// Ends an answered direct call: BYE to every side except `except` (the side that
    /// hung up).
    pub(super) fn hang_up(&mut self, now: Instant, id: CallId, except: Option<Side>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if !call.end(now) {
            return;
        }
        let mut byes = Vec::new();
        for side in [Side::Caller, Side::Callee] {
            let Some(leg) = call.leg_mut(side) else {
                continue;
            };
            leg.unacked_2xx = None;
            if Some(side) != except {
                byes.push(leg.clone());
            }
        }
        for leg in byes {
            self.send_bye_on(now, id, leg);
        }
        self.schedule(id);
        self.events.push_back(EngineEvent::CallsChanged);
    }

    /// Timers of one call: ring timeout, 2xx retransmission and its give-up, forgetting
    /// the ended call.
    pub(super) fn call_timers(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        match call.state {
            CallState::Ringing if now >= call.ring_deadline => {
                return self.fail_call(now, id, 480, "No Answer");
            }
            CallState::Ended if call.ended_at.is_some_and(|t| now >= t + KEEP_ENDED) => {
                return self.forget_call(id);
            }
            _ => {}
        }
        let t2 = self.settings.timers.t2;
        let mut give_up = false;
        for side in [Side::Caller, Side::Callee] {
            let Some(leg) = call.leg_mut(side) else {
                continue;
            };
            match leg.poll_unacked(now, t2) {
                Retransmit::Nothing => {}
                Retransmit::Send(t) => self.transmits.push_back(t),
                Retransmit::GaveUp { initial } => give_up |= initial,
            }
        }
        if give_up {
            // No ACK ever came for the answer: the caller is gone (§13.3.1.4).
            return self.hang_up(now, id, None);
        }
        self.schedule(id);
    }

    /// Drops an ended call with its dialogs and transactions.
    fn forget_call(&mut self, id: CallId) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
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
        self.calls.iter().find_map(|(id, c)| match &c.caller_side {
            CallerSide::Invite { tx: Some(tx), .. } if *tx == invite_tx => {
                Some((*id, c.caller_tag()?.to_owned()))
            }
            _ => None,
        })
    }

    /// The server is stopping: callers still ringing get 503, answered direct calls BYE
    /// (anchored calls end with their legs, which go first).
    pub(super) fn hang_up_calls(&mut self, now: Instant) {
        let calls: Vec<(CallId, CallState)> =
            self.calls.iter().map(|(id, c)| (*id, c.state)).collect();
        for (id, state) in calls {
            match state {
                CallState::Ringing => self.fail_call(now, id, 503, "Service Unavailable"),
                CallState::Answered => self.hang_up(now, id, None),
                CallState::Ended => {}
            }
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
