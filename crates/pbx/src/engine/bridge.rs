//! Anchored calls: a provider's call to a user, or a user calling a number through a
//! trunk. Unlike calls between users (whose phones exchange media directly), the PBX
//! stays in the media path: the caller's leg and the callee's leg each terminate on one
//! of our RTP ports, and the media bridge joins them in a private two-party mix — which
//! also transcodes when the two sides chose different codecs, and keeps every phone's
//! private address away from the provider.
//!
//! Life of a bridge: the caller's INVITE is held (100 Trying, then 180 when a callee
//! rings) while the PBX calls the callee — every registered device of a user, or the
//! provider (answering its digest challenge with the trunk's credentials). The first 2xx
//! wins: the callee's leg and then the caller's (200 OK with our SDP) become two anchored
//! legs of the kind conference rooms use, so re-INVITEs, BYE, RTP timeouts and call
//! quality work the same. When either leg ends, the other gets BYE.

use std::time::{Duration, Instant};

use confero_sip::message::{response_for, Message, Request, Response};
use confero_sip::sdp;
use confero_sip::transaction::ServerTxId;
use confero_sip::transport::Peer;
use confero_sip::{Method, StatusCode};

use super::conference::{AfterAnswer, ConfLeg, Party};
use super::fork::{self, ForkStep, OutFork};
use super::ids::{BridgeId, Owner, Timer};
use super::{local, CallInfo, ClientPurpose, Engine, EngineEvent};
use crate::room::LegId;
use confero_media::bridge::{MediaCommand, MixId};
use confero_sip::dialog::Dialog;

/// How long an ended bridge is kept for late answers to its forks (a callee answering
/// while we cancel gets its BYE).
const KEEP_ENDED: Duration = Duration::from_secs(32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BridgeState {
    Ringing,
    Answered,
    Ended,
}

#[derive(Debug)]
pub(super) struct Bridge {
    caller: Party,
    callee: Party,
    state: BridgeState,
    started_unix: u64,
    answered_unix: Option<u64>,
    caller_side: CallerSide,
    /// The port reserved for the callee's leg until it exists.
    callee_port: Option<u16>,
    pub(super) forks: Vec<OutFork>,
    ringing_sent: bool,
    ring_deadline: Instant,
    ended_at: Option<Instant>,
    legs: Option<(LegId, LegId)>,
}

/// Where the caller of a bridge stands while the callee rings.
#[derive(Debug)]
enum CallerSide {
    /// Their INVITE waits for the callee's answer.
    Invite {
        invite: Box<Request>,
        /// Until its final response.
        tx: Option<ServerTxId>,
        peer: Peer,
        /// Our To tag toward the caller (in 180 and in the 200).
        tag: String,
        /// Reserved for the caller's leg until it exists.
        port: Option<u16>,
    },
    /// Already on one of our legs, handed over by a blind transfer: hears hold music
    /// until the callee answers, is hung up on if nobody does.
    Transferee { leg: LegId },
}

impl Engine {
    /// Anchored calls placed by user `extension` and not over.
    pub(super) fn anchored_calls_of_user(&self, extension: &str) -> usize {
        self.bridges
            .values()
            .filter(|b| b.ended_at.is_none() && b.caller.is_user && b.caller.number == extension)
            .count()
    }
}

impl Engine {
    /// Holds the caller's INVITE and reserves the two RTP ports of an anchored call; the
    /// caller then adds the callee's forks with [`Engine::bridge_fork`] and arms it with
    /// [`Engine::ring_bridge`]. Refuses the INVITE itself (488/503) when its offer is
    /// unusable or no port is free. Returns the bridge and the callee port to offer.
    pub(super) fn open_bridge(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        from: Peer,
        caller: Party,
        callee: Party,
    ) -> Option<(BridgeId, u16)> {
        if let Err(err) = sdp::parse_audio(&req.body) {
            self.refuse_sdp(now, tx, &req, &err);
            return None;
        }
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
            peer: from,
            tag: self.entropy.tag(),
            port: Some(a),
        };
        let id = self.file_bridge(now, caller, callee, side, b);
        Some((id, b))
    }

    /// Files a new bridge, ringing from `now`, the callee's leg to be on `callee_port`.
    fn file_bridge(
        &mut self,
        now: Instant,
        caller: Party,
        callee: Party,
        caller_side: CallerSide,
        callee_port: u16,
    ) -> BridgeId {
        let id = self.ids.bridge();
        let bridge = Bridge {
            caller,
            callee,
            state: BridgeState::Ringing,
            started_unix: self.unix(now),
            answered_unix: None,
            caller_side,
            callee_port: Some(callee_port),
            forks: Vec::new(),
            ringing_sent: false,
            ring_deadline: now + self.settings.ring_timeout,
            ended_at: None,
            legs: None,
        };
        self.bridges.insert(id, bridge);
        id
    }

    /// A bridge for a blind transfer: `transferee` is already on one of our legs, so only
    /// the callee's port is reserved. Returns the bridge and that port (None when no port
    /// is free). The transferee's leg belongs to the new bridge from now on, so that its
    /// hanging up cancels the ringing.
    pub(super) fn open_transfer_bridge(
        &mut self,
        now: Instant,
        transferee: LegId,
        caller: Party,
        callee: Party,
    ) -> Option<(BridgeId, u16)> {
        let Some(port) = self.ports.allocate() else {
            tracing::warn!("RTP port range exhausted; a transfer fails");
            return None;
        };
        let side = CallerSide::Transferee { leg: transferee };
        let id = self.file_bridge(now, caller, callee, side, port);
        if let Some(c) = self.conf_legs.get_mut(&transferee) {
            c.bridge = Some(id);
        }
        Some((id, port))
    }

    /// The other leg of an answered bridge.
    pub(super) fn bridge_other_leg(&self, id: BridgeId, leg: LegId) -> Option<LegId> {
        let bridge = self.bridges.get(&id)?;
        match (bridge.state, bridge.legs) {
            (BridgeState::Answered, Some((a, b))) if a == leg => Some(b),
            (BridgeState::Answered, Some((a, b))) if b == leg => Some(a),
            _ => None,
        }
    }

    /// An answered bridge ends without hanging up its legs (they are being transferred).
    pub(super) fn bridge_dissolved(&mut self, now: Instant, id: BridgeId) {
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        bridge.legs = None;
        if bridge.state != BridgeState::Ended {
            bridge.state = BridgeState::Ended;
            bridge.ended_at = Some(now);
            self.timers
                .push(std::cmp::Reverse((now + KEEP_ENDED, Timer::Bridge(id))));
            self.events.push_back(EngineEvent::CallsChanged);
        }
    }

    /// Sends one INVITE toward the callee of a bridge.
    pub(super) fn bridge_fork(
        &mut self,
        now: Instant,
        id: BridgeId,
        invite: Request,
        peer: Peer,
        trunk: Option<i64>,
    ) {
        self.push_fork(now, Owner::Bridge(id), OutFork::new(invite, peer, trunk));
    }

    pub(super) fn bridge_is_ringing(&self, id: BridgeId) -> bool {
        self.bridges
            .get(&id)
            .is_some_and(|b| b.state == BridgeState::Ringing)
    }

    /// Starts the ring timer, or fails the call when no fork could be sent.
    pub(super) fn ring_bridge(&mut self, now: Instant, id: BridgeId) {
        let Some(bridge) = self.bridges.get(&id) else {
            return;
        };
        if bridge.forks.is_empty() && !self.offers_pending_for(Owner::Bridge(id)) {
            return self.fail_bridge(now, id, 480, "Temporarily Unavailable");
        }
        self.timers
            .push(std::cmp::Reverse((bridge.ring_deadline, Timer::Bridge(id))));
        self.events.push_back(EngineEvent::CallsChanged);
    }

    /// Ends a bridge that was not answered: the final response to the caller, CANCEL to
    /// the forks, ports back.
    pub(super) fn fail_bridge(&mut self, now: Instant, id: BridgeId, code: u16, reason: &str) {
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        if bridge.state != BridgeState::Ringing {
            return;
        }
        bridge.state = BridgeState::Ended;
        bridge.ended_at = Some(now);
        let mut transferee = None;
        match &mut bridge.caller_side {
            CallerSide::Invite {
                invite,
                tx,
                tag,
                port,
                ..
            } => {
                if let Some(tx) = tx.take() {
                    let mut resp = response_for(invite, StatusCode::from(code), Some(tag));
                    resp.reason = Some(reason.to_owned());
                    let _ = self.tx.send_response(now, tx, resp);
                }
                if let Some(port) = port.take() {
                    self.ports.release(port);
                }
            }
            CallerSide::Transferee { leg } => transferee = Some(*leg),
        }
        if let Some(port) = bridge.callee_port.take() {
            self.ports.release(port);
        }
        for (cancel, peer) in fork::cancels(&mut bridge.forks, None) {
            self.send_owned(now, Owner::Bridge(id), ClientPurpose::Fire, cancel, peer);
        }
        self.timers
            .push(std::cmp::Reverse((now + KEEP_ENDED, Timer::Bridge(id))));
        self.events.push_back(EngineEvent::CallsChanged);
        if let Some(leg) = transferee {
            tracing::info!(%leg, code, reason, "transfer target not reached");
            self.end_conf_leg(now, leg, true);
        }
    }

    pub(super) fn on_bridge_response(
        &mut self,
        now: Instant,
        id: BridgeId,
        i: usize,
        resp: Response,
    ) {
        let code = resp.code.into_u16();
        match self.fork_step(now, Owner::Bridge(id), i, &resp) {
            ForkStep::Final => {}
            ForkStep::Ringing => return self.bridge_ringing(now, id),
            ForkStep::Handled | ForkStep::Gone => return,
        }
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        if code >= 300 {
            if bridge.state == BridgeState::Ringing && bridge.forks.iter().all(|f| f.done) {
                let (code, mut reason) = fork::failure_of(&bridge.forks);
                if reason.is_empty() {
                    reason = resp.reason.clone().unwrap_or_else(|| "Failed".into());
                }
                self.fail_bridge(now, id, code, &reason);
            }
            return;
        }
        self.bridge_answered(now, id, i, resp);
    }

    /// The first ringing callee: the caller hears 180.
    fn bridge_ringing(&mut self, now: Instant, id: BridgeId) {
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        if bridge.state != BridgeState::Ringing || bridge.ringing_sent {
            return;
        }
        bridge.ringing_sent = true;
        if let CallerSide::Invite {
            invite,
            tx: Some(tx),
            tag,
            ..
        } = &bridge.caller_side
        {
            let mut ringing = response_for(invite, StatusCode::from(180), Some(tag));
            ringing.reason = Some("Ringing".into());
            let _ = self.tx.send_response(now, *tx, ringing);
        }
    }

    /// A 2xx from fork `i`: ACK it, then connect both sides — or hang up on a late one.
    fn bridge_answered(&mut self, now: Instant, id: BridgeId, i: usize, resp: Response) {
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        let Some(fork) = bridge.forks.get(i) else {
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
        let ringing = bridge.state == BridgeState::Ringing;
        let plain_port = bridge.callee_port;
        let opened = if ringing {
            self.open_fork_media(webrtc, plain_port, &resp.body, peer)
        } else {
            None
        };
        let Some(opened) = opened else {
            // Too late, or an answer we cannot use: this device is hung up on.
            self.drop_fork_media(webrtc);
            let bye = leg.request(Method::BYE, &local(&self.settings), &mut self.entropy);
            self.send_owned(now, Owner::Bridge(id), ClientPurpose::Fire, bye, peer);
            if ringing
                && self
                    .bridges
                    .get(&id)
                    .is_some_and(|b| b.forks.iter().all(|f| f.done))
            {
                self.fail_bridge(now, id, 488, "Not Acceptable Here");
            }
            return;
        };
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        if let Some(f) = bridge.forks.get_mut(i) {
            f.webrtc = None; // the leg's now
        }
        if webrtc.is_some() {
            // A browser answered: the plain port offered to the other devices is free.
            if let Some(p) = bridge.callee_port.take() {
                self.ports.release(p);
            }
        } else {
            bridge.callee_port = None;
        }
        let Some(bridge) = self.bridges.get(&id) else {
            return;
        };
        let callee_party = bridge.callee.clone();
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
        c.bridge = Some(id);
        self.conf_legs.insert(callee_leg, c);

        // Now the caller: our 200 OK with the SDP answer on the caller's port, or a
        // transferee joined at once.
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        let caller_party = bridge.caller.clone();
        let (invite, tx, caller_peer, caller_tag, caller_port) = match &mut bridge.caller_side {
            CallerSide::Invite {
                invite,
                tx,
                peer,
                tag,
                port,
            } => (
                (**invite).clone(),
                tx.take(),
                *peer,
                tag.clone(),
                port.take(),
            ),
            CallerSide::Transferee { leg } => {
                let transferee = *leg;
                if !self.conf_legs.contains_key(&transferee) {
                    return self.end_conf_leg(now, callee_leg, true);
                }
                self.answered_now(now, id, i, joined);
                return self.bridge_connected(now, id, transferee, callee_leg);
            }
        };
        let Some(tx) = tx else {
            return self.end_conf_leg(now, callee_leg, true);
        };
        self.answered_now(now, id, i, joined);
        let then = AfterAnswer::BridgeCaller {
            bridge: id,
            callee: callee_leg,
        };
        self.answer_anchored(
            now,
            tx,
            &invite,
            caller_peer,
            caller_party,
            caller_port,
            Some(caller_tag),
            then,
        );
    }

    /// Fork `i` won: the bridge is answered, the other forks are cancelled.
    fn answered_now(&mut self, now: Instant, id: BridgeId, i: usize, joined: u64) {
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        bridge.state = BridgeState::Answered;
        bridge.answered_unix = Some(joined);
        for (cancel, peer) in fork::cancels(&mut bridge.forks, Some(i)) {
            self.send_owned(now, Owner::Bridge(id), ClientPurpose::Fire, cancel, peer);
        }
    }

    /// Both halves are answered: they hear each other through a private mix.
    pub(super) fn bridge_connected(
        &mut self,
        now: Instant,
        id: BridgeId,
        caller: LegId,
        callee: LegId,
    ) {
        let _ = now;
        if let Some(c) = self.conf_legs.get_mut(&caller) {
            c.bridge = Some(id);
        }
        if let Some(b) = self.bridges.get_mut(&id) {
            b.legs = Some((caller, callee));
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
    pub(super) fn bridge_refused(&mut self, now: Instant, id: BridgeId, callee: LegId) {
        if let Some(b) = self.bridges.get_mut(&id) {
            b.state = BridgeState::Ended;
            b.ended_at = Some(now);
            self.timers
                .push(std::cmp::Reverse((now + KEEP_ENDED, Timer::Bridge(id))));
        }
        self.end_conf_leg(now, callee, true);
    }

    /// One leg of an answered bridge ended: the other is hung up, the bridge is over.
    pub(super) fn bridge_leg_ended(&mut self, now: Instant, id: BridgeId, leg: LegId) {
        let Some(bridge) = self.bridges.get_mut(&id) else {
            return;
        };
        if bridge.state == BridgeState::Ringing {
            // A transferee hung up while the target rang.
            return self.fail_bridge(now, id, 487, "Request Terminated");
        }
        let other = bridge.legs.map(|(a, b)| if a == leg { b } else { a });
        if bridge.state != BridgeState::Ended {
            bridge.state = BridgeState::Ended;
            bridge.ended_at = Some(now);
            self.timers
                .push(std::cmp::Reverse((now + KEEP_ENDED, Timer::Bridge(id))));
            self.events.push_back(EngineEvent::CallsChanged);
        }
        if let Some(other) = other {
            if self.conf_legs.contains_key(&other) {
                self.end_conf_leg(now, other, true);
            }
        }
    }

    /// Ring timeout, and forgetting an ended bridge.
    pub(super) fn bridge_timers(&mut self, now: Instant, id: BridgeId) {
        let Some(bridge) = self.bridges.get(&id) else {
            return;
        };
        match bridge.state {
            BridgeState::Ringing if now >= bridge.ring_deadline => {
                self.fail_bridge(now, id, 480, "No Answer");
            }
            BridgeState::Ended if bridge.ended_at.is_some_and(|t| now >= t + KEEP_ENDED) => {
                self.bridges.remove(&id);
                self.client_txs
                    .retain(|_, (owner, _)| *owner != Owner::Bridge(id));
            }
            _ => {}
        }
    }

    /// The bridge whose caller's INVITE is `invite_tx` (for CANCEL).
    pub(super) fn bridge_of_invite(&self, invite_tx: ServerTxId) -> Option<BridgeId> {
        self.bridges
            .iter()
            .find(|(_, b)| {
                matches!(b.caller_side, CallerSide::Invite { tx: Some(tx), .. } if tx == invite_tx)
            })
            .map(|(id, _)| *id)
    }

    /// Anchored calls for live views.
    pub(super) fn bridge_calls(&self) -> Vec<CallInfo> {
        self.bridges
            .iter()
            .filter(|(_, b)| b.state != BridgeState::Ended)
            .map(|(id, b)| CallInfo {
                id: id.0,
                caller: b.caller.number.clone(),
                callee: b.callee.number.clone(),
                state: match b.state {
                    BridgeState::Ringing => "ringing",
                    _ => "answered",
                },
                started_unix: b.started_unix,
                answered_unix: b.answered_unix,
            })
            .collect()
    }

    /// The server is stopping: callers still ringing get 503 (answered bridges end with
    /// their legs).
    pub(super) fn fail_ringing_bridges(&mut self, now: Instant) {
        let ringing: Vec<BridgeId> = self
            .bridges
            .iter()
            .filter(|(_, b)| b.state == BridgeState::Ringing)
            .map(|(id, _)| *id)
            .collect();
        for id in ringing {
            self.fail_bridge(now, id, 503, "Service Unavailable");
        }
    }
}
