//! One INVITE the PBX sends on behalf of an invitation or an anchored call: to a
//! registered device, or to a trunk (which may challenge it). Ringing several devices at
//! once makes several forks; the first to answer wins and the others are cancelled.

use std::time::Instant;

use confero_sip::dialog::{Dialog, Local};
use confero_sip::message::{Entropy, Message, Request, Response};
use confero_sip::sdp::{self, LocalMedia};
use confero_sip::transport::{Peer, Transmit};
use confero_sip::{Method, Name, SipUri};

use super::conference::{leg_media, CODEC_PREFS};
use super::ids::Owner;
use super::{binding_peer, ClientPurpose, Engine};
use crate::config::User;
use crate::registrar::Binding;
use crate::room::LegId;
use confero_media::bridge::{MediaCommand, MixId};
use confero_sip::message;

/// The media of an answered fork, opened.
#[derive(Debug)]
pub(super) struct ForkMedia {
    pub(super) leg: LegId,
    pub(super) port: u16,
    pub(super) media: sdp::Negotiated,
}

/// Challenges answered on one fork before its failure stands.
const MAX_FORK_AUTH_TRIES: u8 = 2;

#[derive(Debug)]
pub(super) struct OutFork {
    /// The INVITE as last sent (a challenged one is replaced by its authorized retry, so
    /// that a CANCEL matches what the callee saw).
    pub(super) invite: Request,
    pub(super) peer: Peer,
    pub(super) done: bool,
    /// A provisional response came: CANCEL may be sent (RFC 3261 §9.1).
    pub(super) provisional: bool,
    /// We want to cancel but no provisional came yet.
    pub(super) cancel_wanted: bool,
    pub(super) final_code: Option<u16>,
    /// The trunk this fork goes through, whose credentials answer challenges.
    pub(super) trunk: Option<i64>,
    /// A browser's fork: the media leg and port of the WebRTC offer it carries.
    pub(super) webrtc: Option<(LegId, u16)>,
    auth_tries: u8,
}

/// What the owner must do after a fork saw a provisional response.
#[derive(Debug)]
pub(super) enum Provisional {
    /// Send this CANCEL (a cancel was waiting for the first provisional).
    Cancel(Box<Request>, Peer),
    /// The callee is ringing (the first 18x).
    Ringing,
    Nothing,
}

impl OutFork {
    pub(super) fn new(invite: Request, peer: Peer, trunk: Option<i64>) -> Self {
        OutFork {
            invite,
            peer,
            done: false,
            provisional: false,
            cancel_wanted: false,
            final_code: None,
            trunk,
            webrtc: None,
            auth_tries: 0,
        }
    }

    /// A fork to a browser, carrying the WebRTC offer of media leg `leg` on `port`.
    pub(super) fn browser(invite: Request, peer: Peer, leg: LegId, port: u16) -> Self {
        OutFork {
            webrtc: Some((leg, port)),
            ..OutFork::new(invite, peer, None)
        }
    }

    pub(super) fn on_provisional(&mut self, code: u16) -> Provisional {
        if code > 100 || self.cancel_wanted {
            self.provisional = true;
        }
        if self.cancel_wanted {
            self.cancel_wanted = false;
            return Provisional::Cancel(Box::new(message::cancel_for(&self.invite)), self.peer);
        }
        if code > 100 {
            Provisional::Ringing
        } else {
            Provisional::Nothing
        }
    }

    /// Whether a 401/407 on this fork should be answered with the trunk's credentials.
    pub(super) fn wants_auth_retry(&mut self, resp: &Response) -> Option<i64> {
        let code = resp.code.into_u16();
        let trunk = self.trunk?;
        if !matches!(code, 401 | 407)
            || self.auth_tries >= MAX_FORK_AUTH_TRIES
            || self.cancel_wanted
        {
            return None;
        }
        self.auth_tries += 1;
        Some(trunk)
    }

    /// The retry went out: it is this fork's INVITE from now on.
    pub(super) fn retried(&mut self, invite: Request) {
        self.invite = invite;
        self.provisional = false;
    }
}

/// CANCELs for every fork still ringing except `keep`; forks without a provisional yet
/// are marked and cancelled when one comes.
pub(super) fn cancels(forks: &mut [OutFork], keep: Option<usize>) -> Vec<(Request, Peer)> {
    let mut out = Vec::new();
    for (i, f) in forks.iter_mut().enumerate() {
        if Some(i) == keep || f.done {
            continue;
        }
        if f.provisional {
            out.push((message::cancel_for(&f.invite), f.peer));
        } else {
            f.cancel_wanted = true;
        }
    }
    out
}

/// What the caller of an unanswered set of forks is told (RFC 3261 §16.7 in spirit: busy
/// beats "unavailable"; a single fork's own answer, e.g. a provider's 404, is kept).
pub(super) fn failure_of(forks: &[OutFork]) -> (u16, String) {
    let codes: Vec<u16> = forks.iter().filter_map(|f| f.final_code).collect();
    if let ([only], [fork]) = (codes.as_slice(), forks) {
        if fork.trunk.is_some() {
            return (*only, String::new());
        }
    }
    let (code, reason) = super::call::pick_failure(codes.into_iter());
    (code, reason.to_owned())
}

/// Where a fork's response leaves its owner, once the steps every fork takes are done.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ForkStep {
    /// The fork or its owner is gone.
    Gone,
    /// Nothing for the owner to do (a 100, a CANCEL sent, a challenge answered).
    Handled,
    /// The callee rings.
    Ringing,
    /// A final response: the fork is done and its code recorded.
    Final,
}

impl Engine {
    /// The forks of a call, an invitation or an anchored call.
    fn forks_mut(&mut self, owner: Owner) -> Option<&mut Vec<OutFork>> {
        Some(match owner {
            Owner::Invitation(id) => &mut self.invitations.get_mut(&id)?.forks,
            Owner::Call(id) => &mut self.calls.get_mut(&id)?.forks,
            Owner::Leg(_) | Owner::Trunk(_) => return None,
        })
    }

    fn fork_mut(&mut self, owner: Owner, i: usize) -> Option<&mut OutFork> {
        self.forks_mut(owner)?.get_mut(i)
    }

    /// Sends `fork` as the next fork of `owner` (its media dropped when the owner is gone).
    pub(super) fn push_fork(&mut self, now: Instant, owner: Owner, fork: OutFork) {
        let (invite, peer) = (fork.invite.clone(), fork.peer);
        let Some(forks) = self.forks_mut(owner) else {
            return self.drop_fork_media(fork.webrtc);
        };
        forks.push(fork);
        let purpose = ClientPurpose::Fork(forks.len() - 1);
        self.send_owned(now, owner, purpose, invite, peer);
    }

    /// The steps every outgoing fork takes with a response: a CANCEL waiting for a
    /// provisional goes out, a trunk's challenge is answered (the retry becomes the fork's
    /// INVITE, its answers come back to the same fork), a final response marks it done.
    pub(super) fn fork_step(
        &mut self,
        now: Instant,
        owner: Owner,
        i: usize,
        resp: &Response,
    ) -> ForkStep {
        let code = resp.code.into_u16();
        let Some(fork) = self.fork_mut(owner, i) else {
            return ForkStep::Gone;
        };
        if code < 200 {
            return match fork.on_provisional(code) {
                Provisional::Cancel(cancel, peer) => {
                    self.send_owned(now, owner, ClientPurpose::Fire, *cancel, peer);
                    ForkStep::Handled
                }
                Provisional::Ringing => ForkStep::Ringing,
                Provisional::Nothing => ForkStep::Handled,
            };
        }
        if let Some(trunk) = fork.wants_auth_retry(resp) {
            let (original, transport) = (fork.invite.clone(), fork.peer.transport);
            if let Some(retry) = self.authorized_retry(trunk, &original, resp, transport) {
                let Some(fork) = self.fork_mut(owner, i) else {
                    return ForkStep::Gone;
                };
                fork.retried(retry.clone());
                let peer = fork.peer;
                self.send_owned(now, owner, ClientPurpose::Fork(i), retry, peer);
                return ForkStep::Handled;
            }
        }
        let Some(fork) = self.fork_mut(owner, i) else {
            return ForkStep::Gone;
        };
        fork.done = true;
        fork.final_code = Some(code);
        if code >= 300 {
            let webrtc = fork.webrtc.take();
            self.drop_fork_media(webrtc);
        }
        ForkStep::Final
    }

    /// Opens the media of a fork's 2xx: a plain answer is negotiated against our offer
    /// on `plain_port` (a new leg); a browser's answer goes to the media bridge, which
    /// completes ICE and DTLS on the leg its offer made. `None` for an unusable answer.
    pub(super) fn open_fork_media(
        &mut self,
        near: MixId,
        webrtc: Option<(LegId, u16)>,
        plain_port: Option<u16>,
        answer: &[u8],
        peer: Peer,
    ) -> Option<ForkMedia> {
        let remote = sdp::parse_audio(answer).ok()?;
        if let Some((leg, port)) = webrtc {
            let codec = remote
                .formats
                .iter()
                .find(|f| f.encoding != "TELEPHONE-EVENT")?
                .clone();
            let telephone_event = remote
                .formats
                .iter()
                .find(|f| f.encoding == "TELEPHONE-EVENT" && f.clock_rate == 8000)
                .map(|f| f.payload_type);
            self.media_out.push_back(MediaCommand::AnswerWebRtc {
                leg,
                answer: String::from_utf8_lossy(answer).into_owned(),
            });
            let media = sdp::Negotiated {
                codec,
                telephone_event,
                remote: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                direction: sdp::Direction::SendRecv,
            };
            return Some(ForkMedia { leg, port, media });
        }
        let port = plain_port?;
        let media = sdp::negotiated_from_answer(&remote, CODEC_PREFS).ok()?;
        let bridged = leg_media(&media)?;
        let leg = self.ids.leg();
        self.open_media(
            near,
            MediaCommand::Open {
                leg,
                port,
                media: bridged,
                rtcp_mux: false,
                signalled_from: peer.addr.ip(),
            },
        );
        Some(ForkMedia { leg, port, media })
    }

    /// A browser fork that will not be used: its media leg closes, its port is freed.
    pub(super) fn drop_fork_media(&mut self, webrtc: Option<(LegId, u16)>) {
        if let Some((leg, port)) = webrtc {
            self.media_out.push_back(MediaCommand::Close { leg });
            self.ports.release(port);
        }
    }

    /// Our SDP offer of the media port `port` (a fresh session).
    pub(super) fn offer_on(&mut self, port: u16) -> String {
        let local = LocalMedia {
            addr: self.settings.advertised.ip(),
            port,
            session_id: self.entropy.next_u64() & 0xffff_ffff,
            session_version: 1,
            username: "confero".to_owned(),
        };
        sdp::offer(&local, CODEC_PREFS)
    }

    /// One INVITE without a body to each registered device of `user`, from `caller`
    /// (display name, number), with where each goes.
    pub(super) fn device_invites(
        &mut self,
        bindings: &[Binding],
        caller: (&str, &str),
        user: &User,
        max_forwards: u32,
    ) -> Vec<(Request, Peer)> {
        let mut invites = Vec::with_capacity(bindings.len());
        for binding in bindings {
            let Ok(uri) = binding.contact.parse::<SipUri>() else {
                continue;
            };
            let peer = binding_peer(binding);
            let to = (user.name.as_str(), user.extension.as_str());
            let invite = self.new_invite(uri, peer.transport, caller, to, max_forwards);
            invites.push((invite, peer));
        }
        invites
    }
}

/// The dialog a callee's 2xx to `invite` (sent to `peer`) makes, and our ACK for it
/// (kept in the dialog, for when the 2xx is retransmitted).
pub(super) fn ack_answer(
    invite: &Request,
    resp: &Response,
    peer: Peer,
    local: &Local,
    entropy: &mut Entropy,
) -> Option<(Dialog, Transmit)> {
    let mut leg = Dialog::uac(invite, resp, peer)?;
    let ack = leg.ack_for(invite, local.via(peer.transport, entropy));
    let t = Transmit {
        peer,
        data: Message::Request(ack.clone()).to_bytes(),
    };
    leg.last_ack = Some(ack);
    Some((leg, t))
}

/// A BYE on a dialog that belongs to no live conversation any more, and where it goes.
pub(super) fn bye(mut leg: Dialog, local: &Local, entropy: &mut Entropy) -> (Request, Peer) {
    (leg.request(Method::BYE, local, entropy), leg.peer)
}

/// Puts our SDP offer in an INVITE.
pub(super) fn with_offer(invite: &mut Request, offer: &str) {
    invite.headers.insert(Name::CONTENT_TYPE, "application/sdp");
    invite.body = bytes::Bytes::from(offer.to_owned().into_bytes());
}
