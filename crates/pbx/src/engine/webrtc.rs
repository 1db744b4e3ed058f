//! Browser legs: an offer for DTLS-SRTP (`UDP/TLS/RTP/SAVPF`, what WebRTC sends) is
//! answered by the media engine's WebRTC stack, not by the plain-RTP SDP module. The
//! engine hands the offer over with [`MediaCommand::OpenWebRtc`], holds the INVITE (the
//! browser has its 100 Trying) and sends the 200 OK when [`MediaEvent::WebRtcAnswer`]
//! brings the answer; from then on the leg is like any anchored leg.

use std::time::{Duration, Instant};

use confero_sip::message::Request;
use confero_sip::sdp::Negotiated;
use confero_sip::transaction::ServerTxId;

use super::conference::{AfterAnswer, MediaCommand, Party};
use super::{Engine, Leg};
use crate::room::LegId;

/// The media engine answers at once; this only bounds a bug.
const ANSWER_GUARD: Duration = Duration::from_secs(10);

/// An INVITE waiting for the media engine's WebRTC answer.
#[derive(Debug)]
pub(super) struct PendingWebRtc {
    tx: ServerTxId,
    req: Request,
    leg: Leg,
    caller: Party,
    port: u16,
    then: AfterAnswer,
    deadline: Instant,
}

impl Engine {
    /// Hands a WebRTC offer to the media engine; the INVITE is answered when it replies.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn defer_to_webrtc(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        leg: Leg,
        caller: Party,
        id: LegId,
        port: u16,
        then: AfterAnswer,
    ) {
        let offer = String::from_utf8_lossy(&req.body).into_owned();
        self.media_out.push_back(MediaCommand::OpenWebRtc {
            leg: id,
            port,
            offer,
        });
        let deadline = now + ANSWER_GUARD;
        self.timers.push(std::cmp::Reverse((deadline, id)));
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

    /// The media engine's answer to a browser's offer: the 200 OK goes out.
    pub(super) fn webrtc_answered(
        &mut self,
        now: Instant,
        id: LegId,
        answer: String,
        media: Negotiated,
    ) {
        let Some(p) = self.pending_webrtc.remove(&id) else {
            // Cancelled meanwhile: the media side was told to close.
            return;
        };
        let session_id = answer
            .lines()
            .find_map(|l| l.strip_prefix("o="))
            .and_then(|o| o.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.send_answer(
            now, p.tx, &p.req, p.leg, p.caller, id, p.port, media, answer, session_id,
        );
        self.after_answer(now, id, p.then);
    }

    /// The media engine could not answer (no common codec, a broken offer…), or took too
    /// long: the browser gets 488 and whatever waited for the leg gives up.
    pub(super) fn webrtc_refused(&mut self, now: Instant, id: LegId, why: &str) -> bool {
        let Some(p) = self.pending_webrtc.remove(&id) else {
            return false;
        };
        tracing::info!(leg = id, why, "WebRTC offer refused");
        self.media_out.push_back(MediaCommand::Close { leg: id });
        self.ports.release(p.port);
        self.respond(now, p.tx, &p.req, 488, "Not Acceptable Here");
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
            self.webrtc_refused(now, id, "the media engine did not answer");
        }
    }
}
