//! Browser legs: an offer for DTLS-SRTP (`UDP/TLS/RTP/SAVPF`, what WebRTC sends) is
//! answered by the media bridge's WebRTC stack, not by the plain-RTP SDP module. The
//! engine hands the offer over with [`MediaCommand::OpenWebRtc`], holds the INVITE (the
//! browser has its 100 Trying) and sends the 200 OK when [`MediaEvent::WebRtcAnswer`]
//! brings the answer; from then on the leg is like any anchored leg.

use std::time::{Duration, Instant};

use confero_sip::message::Request;
use confero_sip::sdp::Negotiated;
use confero_sip::transaction::ServerTxId;

use super::conference::{AfterAnswer, Party};
use super::fork::{self, OutFork};
use super::ids::{Owner, Timer};
use super::Engine;
use crate::config::User;
use crate::registrar::Binding;
use crate::room::LegId;
use confero_media::bridge::{MediaCommand, MixId};
use confero_sip::dialog::Dialog;

/// The media bridge answers at once; this only bounds a bug.
const ANSWER_GUARD: Duration = Duration::from_secs(10);

/// An INVITE waiting for the media bridge's WebRTC answer.
#[derive(Debug)]
pub(super) struct PendingWebRtc {
    tx: ServerTxId,
    req: Request,
    leg: Dialog,
    caller: Party,
    port: u16,
    then: AfterAnswer,
    deadline: Instant,
}

/// A browser the PBX is about to ring, waiting for the media bridge's offer.
#[derive(Debug)]
pub(super) struct PendingOffer {
    /// The anchored call or invitation the fork belongs to.
    owner: Owner,
    binding: Binding,
    /// Display name and number shown to the callee.
    caller: (String, String),
    user: User,
    port: u16,
}

/// Whether a registered device is a browser (registered over a WebSocket): it can only be
/// offered WebRTC.
pub(super) fn is_browser(b: &Binding) -> bool {
    matches!(
        b.peer.transport,
        confero_sip::transport::Transport::Ws | confero_sip::transport::Transport::Wss
    )
}

impl Engine {
    /// Rings a browser on behalf of `owner`: the media bridge first makes a WebRTC offer
    /// on a port of its own; the fork goes out when the offer comes back.
    fn ring_browser(&mut self, owner: Owner, binding: Binding, caller: (&str, &str), user: &User) {
        let Some(port) = self.ports.allocate() else {
            tracing::warn!("RTP port range exhausted; a browser is not rung");
            return;
        };
        let leg = self.ids.leg();
        let near = match owner {
            Owner::Call(call) => Some(MixId::Call(call.0)),
            Owner::Invitation(inv) => self.invitations.get(&inv).map(|i| i.room()),
            Owner::Leg(_) | Owner::Trunk(_) => None,
        };
        let offer = MediaCommand::OfferWebRtc { leg, port };
        match near {
            Some(near) => self.open_media(near, offer),
            None => self.media_out.push_back(offer),
        }
        self.pending_offers.insert(
            leg,
            PendingOffer {
                owner,
                binding,
                caller: (caller.0.to_owned(), caller.1.to_owned()),
                user: user.clone(),
                port,
            },
        );
    }

    /// Rings every device of `user` for `owner` (an anchored call or an invitation): desk
    /// phones get `plain_offer` at once, browsers a WebRTC offer of their own each.
    pub(super) fn ring_devices(
        &mut self,
        now: Instant,
        owner: Owner,
        bindings: &[Binding],
        caller: (&str, &str),
        user: &User,
        plain_offer: &str,
    ) {
        let (browsers, phones): (Vec<Binding>, Vec<Binding>) =
            bindings.iter().cloned().partition(is_browser);
        for (mut invite, peer) in self.device_invites(&phones, caller, user, 70) {
            fork::with_offer(&mut invite, plain_offer);
            self.push_fork(now, owner, OutFork::new(invite, peer, None));
        }
        for binding in browsers {
            self.ring_browser(owner, binding, caller, user);
        }
    }

    /// Whether `owner` still has browser offers in the making.
    pub(super) fn offers_pending_for(&self, owner: Owner) -> bool {
        self.pending_offers.values().any(|p| p.owner == owner)
    }

    /// The media bridge's offer for a browser: the INVITE goes out as a fork of its owner,
    /// unless the owner has moved on meanwhile.
    pub(super) fn webrtc_offered(&mut self, now: Instant, leg: LegId, offer: String) {
        let Some(p) = self.pending_offers.remove(&leg) else {
            self.media_out.push_back(MediaCommand::Close { leg });
            return;
        };
        let ringing = match p.owner {
            Owner::Call(id) => self.call_is_ringing(id),
            Owner::Invitation(id) => self.invitation_is_ringing(id),
            Owner::Leg(_) | Owner::Trunk(_) => false,
        };
        let invite = self
            .device_invites(
                std::slice::from_ref(&p.binding),
                (&p.caller.0, &p.caller.1),
                &p.user,
                70,
            )
            .pop();
        let (true, Some((mut invite, peer))) = (ringing, invite) else {
            self.drop_fork_media(Some((leg, p.port)));
            return;
        };
        fork::with_offer(&mut invite, &offer);
        self.push_fork(now, p.owner, OutFork::browser(invite, peer, leg, p.port));
    }

    /// The media bridge could not make an offer (the port could not be bound…).
    pub(super) fn webrtc_offer_failed(&mut self, leg: LegId) -> bool {
        match self.pending_offers.remove(&leg) {
            Some(p) => {
                self.ports.release(p.port);
                true
            }
            None => false,
        }
    }

    /// Hands a WebRTC offer to the media bridge; the INVITE is answered when it replies.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn defer_to_webrtc(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        leg: Dialog,
        caller: Party,
        id: LegId,
        port: u16,
        then: AfterAnswer,
    ) {
        let offer = String::from_utf8_lossy(&req.body).into_owned();
        self.open_media(
            then.mix(),
            MediaCommand::OpenWebRtc {
                leg: id,
                port,
                offer,
            },
        );
        let deadline = now + ANSWER_GUARD;
        self.timers
            .push(std::cmp::Reverse((deadline, Timer::BrowserAnswer(id))));
        self.pending_webrtc.insert(
            id,
            PendingWebRtc {
                tx,
                req: req.clone(),
                leg,
                caller,
                port,
                then,
                deadline,
            },
        );
    }

    /// The media bridge's answer to a browser's offer: the 200 OK goes out.
    pub(super) fn webrtc_answered(
        &mut self,
        now: Instant,
        id: LegId,
        answer: String,
        media: Negotiated,
    ) {
        if let Some(c) = self.conf_legs.get_mut(&id) {
            // The answer to a browser's re-offer (hold, resume).
            if c.handle_webrtc_answer(now, answer.clone(), media.clone()) {
                return self.drive_leg(now, id);
            }
        }
        let Some(p) = self.pending_webrtc.remove(&id) else {
            // Cancelled meanwhile: the media side was told to close.
            return;
        };
        let session_id = super::leg::session_id_of(&answer);
        self.send_answer(
            now, p.tx, &p.req, p.leg, p.caller, id, p.port, media, answer, session_id,
        );
        self.after_answer(now, id, p.then);
    }

    /// The media bridge could not answer (no common codec, a broken offer…), or took too
    /// long: the browser gets 488 and whatever waited for the leg gives up.
    pub(super) fn webrtc_refused(&mut self, now: Instant, id: LegId, why: &str) -> bool {
        let Some(p) = self.pending_webrtc.remove(&id) else {
            return false;
        };
        tracing::info!(leg = %id, why, "WebRTC offer refused");
        self.media_out.push_back(MediaCommand::Close { leg: id });
        self.ports.release(p.port);
        self.respond_warning(now, p.tx, &p.req, (488, "Not Acceptable Here"), why);
        self.after_refusal(now, p.then);
        true
    }

    /// The caller gave up (CANCEL) before the answer came.
    pub(super) fn webrtc_cancelled(&mut self, now: Instant, invite_tx: ServerTxId) -> bool {
        let Some(id) = self
            .pending_webrtc
            .iter()
            .find(|(_, p)| p.tx == invite_tx)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        let Some(p) = self.pending_webrtc.remove(&id) else {
            return false;
        };
        self.media_out.push_back(MediaCommand::Close { leg: id });
        self.ports.release(p.port);
        self.respond(now, p.tx, &p.req, 487, "Request Terminated");
        self.after_refusal(now, p.then);
        true
    }

    /// The server is stopping: browsers still waiting for an answer get 503.
    pub(super) fn refuse_pending_webrtc(&mut self, now: Instant) {
        let ids: Vec<LegId> = self.pending_webrtc.keys().copied().collect();
        for id in ids {
            if let Some(p) = self.pending_webrtc.remove(&id) {
                self.media_out.push_back(MediaCommand::Close { leg: id });
                self.ports.release(p.port);
                self.respond(now, p.tx, &p.req, 503, "Service Unavailable");
            }
        }
    }

    /// The guard timer of a pending answer.
    pub(super) fn webrtc_timers(&mut self, now: Instant, id: LegId) {
        if self
            .pending_webrtc
            .get(&id)
            .is_some_and(|p| now >= p.deadline)
        {
            self.webrtc_refused(now, id, "the media bridge did not answer");
        }
    }
}
