//! Calls between two users' phones, media directly between them: the PBX answers the
//! caller's INVITE as a back-to-back user agent, rings every registered device of the
//! callee (one `OutFork` each), connects the first that answers and cancels the others,
//! then relays in-dialog requests (re-INVITE, INFO, BYE) between the two dialogs until one
//! side hangs up.

use std::time::Instant;

use confero_sip::dialog::{Dialog, Retransmit, Unacked};
use confero_sip::headers;
use confero_sip::message::{response_for, Message, Request, Response};
use confero_sip::transaction::ServerTxId;
use confero_sip::{Method, Name, SipUri, StatusCode};

use super::fork::{self, ForkStep, OutFork};
use super::ids::{CallId, Owner, Timer};
use super::{
    binding_peer, copy_body, copy_response_body, local, ClientPurpose, Engine, EngineEvent, ALLOW,
    USER_AGENT,
};
use crate::config::User;
use crate::registrar::Binding;

/// Which of a call's two dialogs.
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

/// A request from one side that we forwarded to the other and whose answer we relay.
#[derive(Debug, Clone)]
pub(super) struct Forwarded {
    pub(super) from_side: Side,
    pub(super) server_tx: ServerTxId,
    pub(super) request: Request,
}

/// One call between two users' phones.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) id: CallId,
    pub(super) caller: String,
    pub(super) callee: String,
    pub(super) state: CallState,
    pub(super) started_unix: u64,
    pub(super) answered_unix: Option<u64>,
    /// The caller's INVITE and its server transaction, until the final response is sent.
    pub(super) invite: Request,
    pub(super) invite_tx: Option<ServerTxId>,
    pub(super) caller_leg: Dialog,
    pub(super) callee_leg: Option<Dialog>,
    pub(super) forks: Vec<OutFork>,
    pub(super) ring_deadline: Instant,
    /// Client transactions of this call still expected to answer.
    pub(super) open_client_txs: usize,
    pub(super) forwarded_invite_pending: bool,
}

impl Call {
    pub(super) fn leg_mut(&mut self, side: Side) -> Option<&mut Dialog> {
        match side {
            Side::Caller => Some(&mut self.caller_leg),
            Side::Callee => self.callee_leg.as_mut(),
        }
    }

    pub(super) fn leg(&self, side: Side) -> Option<&Dialog> {
        match side {
            Side::Caller => Some(&self.caller_leg),
            Side::Callee => self.callee_leg.as_ref(),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let ring = (self.state == CallState::Ringing).then_some(self.ring_deadline);
        [
            ring,
            self.caller_leg.unacked_2xx.as_ref().map(Unacked::deadline),
            self.callee_leg
                .as_ref()
                .and_then(|l| l.unacked_2xx.as_ref())
                .map(Unacked::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn is_finished(&self) -> bool {
        self.state == CallState::Ended
            && self.open_client_txs == 0
            && self.forks.iter().all(|f| f.done)
    }
}

impl Engine {
    /// Rings every device in `targets` for the user `callee`, on behalf of `caller`, whose
    /// INVITE (`req`, on `tx`) made `caller_leg`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ring_user_direct(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        caller_leg: Dialog,
        caller: &User,
        callee: &User,
        targets: Vec<Binding>,
    ) {
        let id = self.ids.call();
        let max_forwards = headers::max_forwards(&req).saturating_sub(1).min(70);
        let call = Call {
            id,
            caller: caller.extension.clone(),
            callee: callee.extension.clone(),
            state: CallState::Ringing,
            started_unix: self.unix(now),
            answered_unix: None,
            invite: req,
            invite_tx: Some(tx),
            caller_leg,
            callee_leg: None,
            forks: Vec::new(),
            ring_deadline: now + self.settings.ring_timeout,
            open_client_txs: 0,
            forwarded_invite_pending: false,
        };
        let mut invites = Vec::with_capacity(targets.len());
        for binding in targets {
            let Ok(uri) = binding.contact.parse::<SipUri>() else {
                continue;
            };
            let mut invite = self.new_invite(
                uri,
                binding.peer.transport,
                (&caller.name, &caller.extension),
                (&callee.name, &callee.extension),
                max_forwards,
            );
            copy_body(&call.invite, &mut invite);
            invites.push((invite, binding_peer(&binding)));
        }
        if invites.is_empty() {
            return self.respond(now, tx, &call.invite, 480, "Temporarily Unavailable");
        }
        self.dialogs.insert(
            (
                call.caller_leg.call_id.clone(),
                call.caller_leg.local_tag.clone(),
            ),
            (id, Side::Caller),
        );
        self.timers
            .push(std::cmp::Reverse((call.ring_deadline, Timer::Call(id))));
        self.calls.insert(id, call);
        for (invite, peer) in invites {
            self.push_fork(now, Owner::Call(id), OutFork::new(invite, peer, None));
        }
        self.events.push_back(EngineEvent::CallsChanged);
    }

    /// A request in an answered call's dialog on `side`: BYE ends the call, the rest goes
    /// to the other side.
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
            if call.forwarded_invite_pending {
                return self.respond(now, tx, &req, 491, "Request Pending");
            }
            call.forwarded_invite_pending = true;
            // The peer's new Contact becomes this leg's target (§12.2.2).
            if let Some(target) = headers::contacts(&req.headers)
                .and_then(|c| c.first().map(headers::contact_uri_text))
            {
                if let Some(leg) = call.leg_mut(side) {
                    leg.remote_target = target;
                }
            }
        }
        let Some(mut other) = call.leg(side.other()).cloned() else {
            return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        };
        let mut fwd = other.request(
            req.method.clone(),
            &local(&self.settings),
            &mut self.entropy,
        );
        copy_body(&req, &mut fwd);
        let peer = other.peer;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(leg) = call.leg_mut(side.other()) {
            leg.local_cseq = other.local_cseq;
        }
        let forwarded = Forwarded {
            from_side: side,
            server_tx: tx,
            request: req,
        };
        let purpose = ClientPurpose::Forwarded(Box::new(forwarded));
        self.send_owned(now, Owner::Call(id), purpose, fwd, peer);
    }

    /// Ends a call that has not been answered: final response to the caller, CANCEL to
    /// every fork still ringing.
    pub(super) fn fail_call(&mut self, now: Instant, id: CallId, code: u16, reason: &str) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.state != CallState::Ringing {
            return;
        }
        call.state = CallState::Ended;
        if let Some(tx) = call.invite_tx.take() {
            let mut resp = response_for(
                &call.invite,
                StatusCode::from(code),
                Some(&call.caller_leg.local_tag),
            );
            resp.reason = Some(reason.to_owned());
            let _ = self.tx.send_response(now, tx, resp);
        }
        self.cancel_forks(now, id, None);
        self.events.push_back(EngineEvent::CallsChanged);
        self.gc(id);
    }

    /// CANCELs every fork still ringing, except `keep`.
    pub(super) fn cancel_forks(&mut self, now: Instant, id: CallId, keep: Option<usize>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        for (cancel, peer) in fork::cancels(&mut call.forks, keep) {
            self.send_owned(now, Owner::Call(id), ClientPurpose::Fire, cancel, peer);
        }
    }

    /// A callee device rings: the caller hears it (with early media, when a 183 brings SDP).
    pub(super) fn call_ringing(&mut self, now: Instant, id: CallId, resp: &Response) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let (CallState::Ringing, Some(invite_tx)) = (call.state, call.invite_tx) else {
            return;
        };
        let mut ringing = response_for(&call.invite, resp.code, Some(&call.caller_leg.local_tag));
        ringing.reason = resp.reason.clone();
        if resp.code.into_u16() == 183 && !resp.body.is_empty() {
            copy_response_body(resp, &mut ringing);
            ringing.headers.insert(
                Name::CONTACT,
                local(&self.settings).contact(call.caller_leg.peer.transport),
            );
        }
        let _ = self.tx.send_response(now, invite_tx, ringing);
    }

    pub(super) fn on_fork_response(&mut self, now: Instant, id: CallId, i: usize, resp: Response) {
        let code = resp.code.into_u16();
        match self.fork_step(now, Owner::Call(id), i, &resp) {
            ForkStep::Gone | ForkStep::Handled => return,
            ForkStep::Ringing => return self.call_ringing(now, id, &resp),
            ForkStep::Final if code >= 300 => {
                let Some(call) = self.calls.get(&id) else {
                    return;
                };
                if call.state == CallState::Ringing && call.forks.iter().all(|f| f.done) {
                    let (code, reason) = fork::failure_of(&call.forks);
                    self.fail_call(now, id, code, &reason);
                }
                return;
            }
            ForkStep::Final => {}
        }
        let Some(fork) = self.calls.get(&id).and_then(|c| c.forks.get(i)) else {
            return;
        };
        // 2xx: build the callee leg, ACK it, and either connect the caller or hang up.
        let invite = fork.invite.clone();
        let peer = fork.peer;
        let Some(leg) = Dialog::uac(&invite, &resp, peer) else {
            return;
        };
        let ack = leg.ack_for(
            &invite,
            local(&self.settings).via(peer.transport, &mut self.entropy),
        );
        let mut leg = leg;
        leg.last_ack = Some(ack.clone());
        self.tx.send_stateless(Message::Request(ack), peer);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.state != CallState::Ringing || call.callee_leg.is_some() {
            // Lost the race (another device answered, or the caller gave up): hang up on it.
            self.send_bye_on(now, id, leg);
            return;
        }
        let Some(invite_tx) = call.invite_tx.take() else {
            self.send_bye_on(now, id, leg);
            return;
        };
        call.state = CallState::Answered;
        call.answered_unix =
            Some(self.start_unix + now.saturating_duration_since(self.start).as_secs());
        let mut ok = response_for(
            &call.invite,
            StatusCode::from(200),
            Some(&call.caller_leg.local_tag),
        );
        copy_response_body(&resp, &mut ok);
        ok.headers.insert(
            Name::CONTACT,
            local(&self.settings).contact(call.caller_leg.peer.transport),
        );
        ok.headers.insert(Name::ALLOW, ALLOW);
        ok.headers.insert(Name::SERVER, USER_AGENT);
        for rr in headers::all_values(&call.invite.headers, &Name::RECORD_ROUTE) {
            ok.headers.insert(Name::RECORD_ROUTE, rr);
        }
        let _ = self.tx.send_response(now, invite_tx, ok.clone());
        call.caller_leg.unacked_2xx = Some(Unacked::new(self.settings.timers.t1, now, ok, true));
        self.dialogs.insert(
            (leg.call_id.clone(), leg.local_tag.clone()),
            (id, Side::Callee),
        );
        call.callee_leg = Some(leg);
        if let Some(at) = call.next_deadline() {
            self.timers.push(std::cmp::Reverse((at, Timer::Call(id))));
        }
        self.cancel_forks(now, id, Some(i));
        self.events.push_back(EngineEvent::CallsChanged);
    }

    /// Sends BYE on a leg that belongs to no live conversation any more.
    pub(super) fn send_bye_on(&mut self, now: Instant, id: CallId, mut leg: Dialog) {
        let bye = leg.request(Method::BYE, &local(&self.settings), &mut self.entropy);
        self.send_owned(now, Owner::Call(id), ClientPurpose::Fire, bye, leg.peer);
    }

    pub(super) fn on_forwarded_response(
        &mut self,
        now: Instant,
        id: CallId,
        fwd: Forwarded,
        resp: Response,
    ) {
        let code = resp.code.into_u16();
        let is_invite = fwd.request.method == Method::INVITE;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if code == 100 {
            return;
        }
        if code >= 200 && is_invite {
            call.forwarded_invite_pending = false;
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
            }
            if let Some(leg) = call.leg(to_side).cloned() {
                let cseq = resp.cseq().map(|(n, _)| n).unwrap_or(leg.local_cseq);
                let ack = leg.ack(
                    cseq,
                    local(&self.settings).via(leg.peer.transport, &mut self.entropy),
                );
                self.tx
                    .send_stateless(Message::Request(ack.clone()), leg.peer);
                if let Some(l) = self.calls.get_mut(&id).and_then(|c| c.leg_mut(to_side)) {
                    l.last_ack = Some(ack);
                }
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(from_leg) = call.leg(fwd.from_side) else {
            return;
        };
        let mut relay = response_for(&fwd.request, resp.code, Some(&from_leg.local_tag));
        relay.reason = resp.reason.clone();
        copy_response_body(&resp, &mut relay);
        if is_invite && code < 300 {
            relay.headers.insert(
                Name::CONTACT,
                local(&self.settings).contact(from_leg.peer.transport),
            );
        }
        relay.headers.insert(Name::SERVER, USER_AGENT);
        let _ = self.tx.send_response(now, fwd.server_tx, relay.clone());
        if is_invite && code / 100 == 2 {
            let unacked = Unacked::new(self.settings.timers.t1, now, relay, false);
            if let Some(call) = self.calls.get_mut(&id) {
                if let Some(leg) = call.leg_mut(fwd.from_side) {
                    leg.unacked_2xx = Some(unacked);
                }
                if let Some(at) = call.next_deadline() {
                    self.timers.push(std::cmp::Reverse((at, Timer::Call(id))));
                }
            }
        }
    }

    /// Ends an answered call: BYE to every side except `except` (the side that hung up).
    pub(super) fn hang_up(&mut self, now: Instant, id: CallId, except: Option<Side>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.state == CallState::Ended {
            return;
        }
        call.state = CallState::Ended;
        call.caller_leg.unacked_2xx = None;
        let mut byes = Vec::new();
        for side in [Side::Caller, Side::Callee] {
            if Some(side) == except {
                continue;
            }
            if let Some(leg) = call.leg(side).cloned() {
                byes.push(leg);
            }
        }
        for leg in byes {
            self.send_bye_on(now, id, leg);
        }
        self.events.push_back(EngineEvent::CallsChanged);
        self.gc(id);
    }

    /// Timers of one call: ring timeout, 2xx retransmission and its give-up.
    pub(super) fn call_timers(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.state == CallState::Ringing && now >= call.ring_deadline {
            self.fail_call(now, id, 480, "No Answer");
            return;
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
        if let Some(at) = call.next_deadline() {
            self.timers.push(std::cmp::Reverse((at, Timer::Call(id))));
        }
    }

    /// Drops a call once nothing of it can still need us.
    pub(super) fn gc(&mut self, id: CallId) {
        if !self.calls.get(&id).is_some_and(Call::is_finished) {
            return;
        }
        if let Some(call) = self.calls.remove(&id) {
            self.dialogs.remove(&(
                call.caller_leg.call_id.clone(),
                call.caller_leg.local_tag.clone(),
            ));
            if let Some(leg) = &call.callee_leg {
                self.dialogs
                    .remove(&(leg.call_id.clone(), leg.local_tag.clone()));
            }
            self.client_txs
                .retain(|_, (owner, _)| *owner != Owner::Call(id));
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
