//! Calls answered by a conference room: the PBX is the far end (UAS) of the caller's
//! dialog, media is anchored here, and [`Rooms`] decides what the caller hears.
//!
//! Signalling stays in the engine; audio is the media bridge's, which the engine steers
//! with [`MediaCommand`]s and hears back from through [`MediaEvent`]s.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use confero_media::bridge::{LegMedia, LegStats, MediaCommand, MediaEvent, MixId};
use confero_media::codec::CodecKind;
use confero_media::webrtc;
use confero_sip::message::{response_for, Request};
use confero_sip::sdp::{self, LocalMedia, Negotiated};
use confero_sip::transaction::ServerTxId;
use confero_sip::transport::Peer;
use confero_sip::{Method, Name, StatusCode};

use super::ids::{CallId, Owner, Timer};
use super::{local, ClientPurpose, Engine, EngineEvent, ALLOW, USER_AGENT};
use crate::config::{Conference, User};
use crate::room::{LegId, RoomCommand};
use confero_sip::dialog::{Dialog, Retransmit, Unacked};
use confero_sip::headers;

/// What the bridge needs of what SDP agreed; `None` for a codec the bridge cannot run
/// (none of [`CODEC_PREFS`] is such a codec, so the call is refused as without one).
pub(super) fn leg_media(n: &Negotiated) -> Option<LegMedia> {
    Some(LegMedia {
        codec: CodecKind::from_encoding_name(&n.codec.encoding, n.codec.clock_rate)?,
        payload_type: n.codec.payload_type,
        dtmf_payload_type: n.telephone_event,
        remote: n.remote,
        two_way: n.direction == sdp::Direction::SendRecv,
    })
}

/// Our answer to a phone's offer, what it agreed, and that in the bridge's terms.
fn answer_for_bridge(
    offer: &sdp::RemoteAudio,
    local: &LocalMedia,
) -> Result<(String, Negotiated, LegMedia), sdp::SdpError> {
    let (answer, media) = sdp::answer(offer, local, CODEC_PREFS)?;
    let bridged = leg_media(&media).ok_or(sdp::SdpError::NoCommonCodec)?;
    Ok((answer, media, bridged))
}

/// What a browser's leg agreed, in SDP terms (for the call's records and later offers).
pub(super) fn webrtc_negotiated(answer: &webrtc::Answer) -> Negotiated {
    let direction = sdp::parse_audio(answer.sdp.as_bytes())
        .map(|a| a.direction)
        .unwrap_or(sdp::Direction::SendRecv);
    Negotiated {
        codec: sdp::RtpMap {
            payload_type: answer.payload_type,
            encoding: answer.codec.encoding_name().to_owned(),
            clock_rate: answer.codec.rtp_clock_rate(),
            channels: 1,
            fmtp: None,
        },
        telephone_event: answer.dtmf_payload_type,
        // What WebRTC SDP writes: the media goes where ICE finds it.
        remote: SocketAddr::from(([0, 0, 0, 0], 9)),
        direction,
    }
}

/// A participant as live views show it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConferenceParticipant {
    /// Its leg (the id the API shows).
    pub id: LegId,
    /// The room's id.
    pub conference_id: i64,
    /// The caller's number or extension.
    pub caller: String,
    /// The caller's name, when known.
    pub caller_name: String,
    /// Dialled in from the room's administrator extension.
    pub is_admin: bool,
    /// Where it is in the flow.
    pub state: &'static str,
    /// Muted by an administrator.
    pub muted: bool,
    /// Voice heard from it now.
    pub talking: bool,
    /// The codec of its leg.
    pub codec: String,
    /// When it joined (Unix seconds).
    pub joined_unix: u64,
    /// Call quality of its leg.
    pub stats: LegStats,
    /// Our RTP port for this leg.
    pub rtp_port: u16,
}

/// Who is on the other end of a leg: a user of the PBX, or a number from a trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Party {
    /// The extension of a user, or the caller's number.
    pub(super) number: String,
    pub(super) name: String,
    /// A user of this PBX (authenticated, or rung on a registered device): only a user
    /// can be a room's administrator, whatever number a provider presents.
    pub(super) is_user: bool,
}

impl Party {
    pub(super) fn user(u: &User) -> Self {
        Party {
            number: u.extension.clone(),
            name: u.name.clone(),
            is_user: true,
        }
    }

    pub(super) fn external(number: &str, name: &str) -> Self {
        Party {
            number: number.to_owned(),
            name: name.to_owned(),
            is_user: false,
        }
    }

    /// Whom wrong access codes are counted against across calls: the user (who
    /// authenticated), or the number a provider presents for a call from the phone network
    /// (all of which come from the provider's address).
    pub(super) fn guesser(&self) -> String {
        if self.is_user {
            format!("user:{}", self.number)
        } else {
            format!("number:{}", self.number)
        }
    }
}

pub(super) struct ConfLeg {
    pub(super) leg: Dialog,
    pub(super) caller: Party,
    /// The anchored call this leg is half of, when it is not in a conference room.
    pub(super) call: Option<CallId>,
    pub(super) port: u16,
    pub(super) media: Negotiated,
    /// Our last SDP, re-sent when a re-INVITE asks without an offer.
    pub(super) local_sdp: String,
    pub(super) sdp_version: u64,
    pub(super) session_id: u64,
    pub(super) joined_unix: u64,
    pub(super) talking: bool,
    pub(super) stats: LegStats,
}

impl ConfLeg {
    pub(super) fn new(
        leg: Dialog,
        caller: Party,
        port: u16,
        media: Negotiated,
        local_sdp: String,
        session_id: u64,
        joined_unix: u64,
    ) -> Self {
        ConfLeg {
            leg,
            caller,
            call: None,
            port,
            media,
            local_sdp,
            sdp_version: 1,
            session_id,
            joined_unix,
            talking: false,
            stats: LegStats::default(),
        }
    }
}

impl ConfLeg {
    /// A leg the PBX called: `offer` is the SDP we sent, which stays ours (a re-INVITE
    /// without an offer is answered with it, and later answers keep its session id).
    pub(super) fn offered(
        leg: Dialog,
        caller: Party,
        port: u16,
        media: Negotiated,
        offer: &[u8],
        joined_unix: u64,
    ) -> Self {
        let local_sdp = String::from_utf8_lossy(offer).into_owned();
        let session_id = local_sdp
            .lines()
            .find_map(|l| l.strip_prefix("o="))
            .and_then(|o| o.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        ConfLeg::new(leg, caller, port, media, local_sdp, session_id, joined_unix)
    }
}

/// Codecs we offer and accept, best first: wideband when the phone has it.
pub(super) const CODEC_PREFS: &[&str] = &["G722/8000", "PCMU/8000", "PCMA/8000"];

/// What happens to a leg once its INVITE is answered (at once for plain RTP, when the
/// media bridge has answered for WebRTC).
#[derive(Clone, Debug)]
pub(super) enum AfterAnswer {
    /// Into a conference room's flow (receptionist, waiting, mix).
    Room {
        conference: Conference,
        number: String,
        /// See [`Party::guesser`].
        guesser: String,
        is_admin: bool,
    },
    /// The caller's half of an anchored call whose callee leg is `callee`.
    CallCaller { call: CallId, callee: LegId },
}

impl Engine {
    /// The caller dialled a room's extension (and authenticated, or came from a trunk).
    pub(super) fn answer_conference(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: Request,
        from: Peer,
        caller: Party,
        conference: Conference,
    ) {
        let is_admin =
            caller.is_user && conference.admin_extension.as_deref() == Some(caller.number.as_str());
        let then = AfterAnswer::Room {
            number: caller.number.clone(),
            guesser: caller.guesser(),
            conference,
            is_admin,
        };
        self.answer_anchored(now, tx, &req, from, caller, None, None, then);
    }

    /// A leg is answered: it goes where `then` says.
    pub(super) fn after_answer(&mut self, now: Instant, id: LegId, then: AfterAnswer) {
        match then {
            AfterAnswer::Room {
                conference,
                number,
                guesser,
                is_admin,
            } => {
                self.rooms
                    .handle_join(now, id, &conference, &number, &guesser, is_admin);
                self.drain_room_commands(now);
                self.events.push_back(EngineEvent::ConferencesChanged);
            }
            AfterAnswer::CallCaller { call, callee } => self.call_connected(now, call, id, callee),
        }
    }

    /// The INVITE could not be answered: whatever waited for it gives up.
    pub(super) fn after_refusal(&mut self, now: Instant, then: AfterAnswer) {
        if let AfterAnswer::CallCaller { call, callee } = then {
            self.call_refused(now, call, callee);
        }
    }

    /// Answers an INVITE with media anchored here: SDP answer on one of our RTP ports
    /// (`port`, or a fresh one), 200 OK retransmitted until ACKed, the leg opened in the
    /// media bridge, then `then`. `local_tag` is the To tag already used in provisional
    /// responses, if any. A WebRTC offer is handed to the media bridge, and the answer
    /// goes out when it comes back. Refuses the INVITE itself (and frees `port`) when that
    /// cannot be done.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_anchored(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        from: Peer,
        caller: Party,
        port: Option<u16>,
        local_tag: Option<String>,
        then: AfterAnswer,
    ) {
        let refuse = |engine: &mut Engine, then: AfterAnswer| {
            if let Some(p) = port {
                engine.ports.release(p);
            }
            engine.after_refusal(now, then);
        };
        let offer = match sdp::parse_audio(&req.body) {
            Ok(offer) => offer,
            Err(err) => {
                self.refuse_sdp(now, tx, req, &err);
                return refuse(self, then);
            }
        };
        let local_tag = local_tag.unwrap_or_else(|| self.entropy.tag());
        let leg = match Dialog::uas(req, local_tag, from) {
            Ok(d) => d,
            Err(err) => {
                self.respond(now, tx, req, 400, &err.to_string());
                return refuse(self, then);
            }
        };
        let Some(port) = port.or_else(|| self.ports.allocate()) else {
            tracing::warn!("RTP port range exhausted");
            self.respond(now, tx, req, 503, "Service Unavailable");
            return self.after_refusal(now, then);
        };
        let id = self.ids.leg();
        if offer.is_webrtc() {
            return self.defer_to_webrtc(now, tx, req, leg, caller, id, port, then);
        }
        let session_id = self.entropy.next_u64() & 0xffff_ffff;
        let local = LocalMedia {
            addr: self.settings.advertised.ip(),
            port,
            session_id,
            session_version: 1,
            username: "confero".to_owned(),
        };
        let (answer, media, bridged) = match answer_for_bridge(&offer, &local) {
            Ok(x) => x,
            Err(err) => {
                self.ports.release(port);
                self.refuse_sdp(now, tx, req, &err);
                return self.after_refusal(now, then);
            }
        };
        self.media_out.push_back(MediaCommand::Open {
            leg: id,
            port,
            media: bridged,
            rtcp_mux: offer.rtcp_mux,
            signalled_from: from.addr.ip(),
        });
        self.send_answer(
            now, tx, req, leg, caller, id, port, media, answer, session_id,
        );
        self.after_answer(now, id, then);
    }

    /// The 200 OK carrying our SDP answer (retransmitted until ACKed), and the leg filed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_answer(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        mut leg: Dialog,
        caller: Party,
        id: LegId,
        port: u16,
        media: Negotiated,
        answer: String,
        session_id: u64,
    ) {
        let mut ok = response_for(req, StatusCode::from(200), Some(&leg.local_tag));
        ok.headers.insert(
            Name::CONTACT,
            local(&self.settings).contact(leg.peer.transport),
        );
        ok.headers.insert(Name::ALLOW, ALLOW);
        ok.headers.insert(Name::SERVER, USER_AGENT);
        ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        for rr in headers::all_values(&req.headers, &Name::RECORD_ROUTE) {
            ok.headers.insert(Name::RECORD_ROUTE, rr);
        }
        ok.body = Bytes::from(answer.clone().into_bytes());
        let _ = self.tx.send_response(now, tx, ok.clone());
        leg.unacked_2xx = Some(Unacked::new(self.settings.timers.t1, now, ok, true));
        if let Some(u) = &leg.unacked_2xx {
            self.timers
                .push(std::cmp::Reverse((u.deadline(), Timer::Leg(id))));
        }
        self.conf_dialogs
            .insert((leg.call_id.clone(), leg.local_tag.clone()), id);
        let joined_unix = self.unix(now);
        self.conf_legs.insert(
            id,
            ConfLeg::new(leg, caller, port, media, answer, session_id, joined_unix),
        );
    }

    pub(super) fn refuse_sdp(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        err: &sdp::SdpError,
    ) {
        let code = err.status_code();
        tracing::info!(%err, "refusing an offer");
        let reason = code.text().unwrap_or("Not Acceptable Here");
        self.respond_warning(now, tx, req, (code.into_u16(), reason), &err.to_string());
    }

    /// Routes what the rooms decided: hang-ups are signalling, the rest is media.
    pub(super) fn drain_room_commands(&mut self, now: Instant) {
        while let Some(cmd) = self.rooms.poll_command() {
            match cmd {
                RoomCommand::Hangup { leg } => self.end_conf_leg(now, leg, true),
                RoomCommand::CodeGuessing { room, failures } => {
                    tracing::warn!(room, failures, "access code guessing");
                    let at = self.unix(now);
                    self.code_alerts.insert(room, (failures, at));
                    self.events.push_back(EngineEvent::CodeGuessing {
                        conference_id: room,
                        failures_last_hour: failures,
                    });
                }
                RoomCommand::Play {
                    leg,
                    prompts,
                    then_music,
                } => {
                    let seq = self.rooms.playback_seq(leg).unwrap_or(0);
                    self.events.push_back(EngineEvent::ConferencesChanged);
                    self.media_out.push_back(MediaCommand::Play {
                        leg,
                        prompts,
                        then_music,
                        seq,
                    });
                }
                RoomCommand::Mix { leg, room } => self.room_media(MediaCommand::Mix {
                    leg,
                    mix: MixId::Room(room),
                }),
                RoomCommand::Unmix { leg } => self.room_media(MediaCommand::Unmix { leg }),
                RoomCommand::RoomTone { room, tone } => self.room_media(MediaCommand::MixTone {
                    mix: MixId::Room(room),
                    tone,
                }),
                RoomCommand::Mute { leg, muted } => {
                    self.room_media(MediaCommand::Mute { leg, muted })
                }
            }
        }
    }

    /// A change of what a room's participants hear: the bridge does it, live views show it.
    fn room_media(&mut self, cmd: MediaCommand) {
        self.events.push_back(EngineEvent::ConferencesChanged);
        self.media_out.push_back(cmd);
    }

    /// Ends a conference leg once: BYE (unless the phone hung up), media closed, port freed,
    /// room told.
    pub(super) fn end_conf_leg(&mut self, now: Instant, id: LegId, send_bye: bool) {
        let Some(mut c) = self.conf_legs.remove(&id) else {
            return;
        };
        if let Some((tx, req)) = self.pending_reinvites.remove(&id) {
            self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        }
        self.conf_dialogs
            .remove(&(c.leg.call_id.clone(), c.leg.local_tag.clone()));
        self.ports.release(c.port);
        self.media_out.push_back(MediaCommand::Close { leg: id });
        if send_bye {
            let bye = c
                .leg
                .request(Method::BYE, &local(&self.settings), &mut self.entropy);
            self.send_owned(now, Owner::Leg(id), ClientPurpose::Fire, bye, c.leg.peer);
        }
        self.rooms.handle_leave(now, id);
        self.drain_room_commands(now);
        self.events.push_back(EngineEvent::ConferencesChanged);
        if let Some(call) = c.call {
            self.call_leg_ended(now, call, id);
        }
    }

    /// ACK for our 2xx on a conference leg.
    pub(super) fn conf_ack(&mut self, id: LegId, ack: &Request) {
        if let Some(c) = self.conf_legs.get_mut(&id) {
            super::ack_clears(&mut c.leg, ack);
        }
    }

    /// In-dialog requests from a conference participant.
    pub(super) fn conf_in_dialog(&mut self, now: Instant, tx: ServerTxId, req: Request, id: LegId) {
        let Some(c) = self.conf_legs.get(&id) else {
            return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        };
        let tag = c.leg.local_tag.clone();
        let ok = |req: &Request| response_for(req, StatusCode::from(200), Some(&tag));
        if req.method == Method::BYE {
            self.send_response(now, tx, ok(&req));
            return self.end_conf_leg(now, id, false);
        }
        if req.method == Method::OPTIONS {
            return self.answer_options(tx, &req);
        }
        if req.method == Method::INFO {
            return match dtmf_from_info(&req) {
                Some(digit) => {
                    self.send_response(now, tx, ok(&req));
                    self.leg_digit(now, id, digit);
                }
                None if req.body.is_empty() => self.send_response(now, tx, ok(&req)),
                None => self.respond(now, tx, &req, 415, "Unsupported Media Type"),
            };
        }
        if req.method == Method::INVITE {
            return self.conf_reinvite(now, tx, req, id);
        }
        if req.method == Method::UPDATE && req.body.is_empty() {
            return self.send_response(now, tx, ok(&req));
        }
        if req.method == Method::REFER {
            return self.conf_refer(now, tx, req, id);
        }
        self.respond(now, tx, &req, 501, "Not Implemented")
    }

    /// A digit from a leg (RFC 4733, SIP INFO or in-band): the room's receptionist takes it,
    /// or, in an anchored call, the other side hears it (menus of the phone network).
    fn leg_digit(&mut self, now: Instant, id: LegId, digit: char) {
        let other = self
            .conf_legs
            .get(&id)
            .and_then(|c| c.call)
            .and_then(|call| self.call_other_leg(call, id));
        match other {
            Some(other) => self
                .media_out
                .push_back(MediaCommand::SendDigit { leg: other, digit }),
            None => {
                self.rooms.handle_digit(now, id, digit);
                self.drain_room_commands(now);
            }
        }
    }

    /// A re-INVITE (hold, new address, codec change): answer with the same port.
    fn conf_reinvite(&mut self, now: Instant, tx: ServerTxId, req: Request, id: LegId) {
        let Some(c) = self.conf_legs.get_mut(&id) else {
            return;
        };
        if c.leg.unacked_2xx.is_some() {
            // Our previous 2xx is not ACKed yet (RFC 3261 §14.2): try again shortly.
            let mut resp = response_for(&req, StatusCode::from(500), Some(&c.leg.local_tag));
            resp.reason = Some("Previous INVITE Not Yet Acknowledged".into());
            resp.headers.insert(
                Name::RETRY_AFTER,
                (1 + self.entropy.next_u64() % 5).to_string(),
            );
            return self.send_response(now, tx, resp);
        }
        if let Some(target) =
            headers::contacts(&req.headers).and_then(|l| l.first().map(headers::contact_uri_text))
        {
            c.leg.remote_target = target;
        }
        let body = if req.body.is_empty() {
            c.local_sdp.clone()
        } else {
            let offer = match sdp::parse_audio(&req.body) {
                Ok(o) => o,
                Err(err) => {
                    return self.refuse_sdp(now, tx, &req, &err);
                }
            };
            if offer.is_webrtc() {
                // A browser's new offer (hold, resume): its WebRTC stack answers.
                let offer = String::from_utf8_lossy(&req.body).into_owned();
                self.media_out
                    .push_back(MediaCommand::ReofferWebRtc { leg: id, offer });
                self.pending_reinvites.insert(id, (tx, req));
                return;
            }
            c.sdp_version += 1;
            let local = LocalMedia {
                addr: self.settings.advertised.ip(),
                port: c.port,
                session_id: c.session_id,
                session_version: c.sdp_version,
                username: "confero".to_owned(),
            };
            match answer_for_bridge(&offer, &local) {
                Ok((answer, media, bridged)) => {
                    c.media = media;
                    c.local_sdp = answer.clone();
                    self.media_out.push_back(MediaCommand::Update {
                        leg: id,
                        media: bridged,
                        signalled_from: c.leg.peer.addr.ip(),
                    });
                    answer
                }
                Err(err) => {
                    return self.refuse_sdp(now, tx, &req, &err);
                }
            }
        };
        self.answer_reinvite(now, tx, &req, id, body);
    }

    /// The 200 OK to a re-INVITE on a conference (or anchored) leg, retransmitted until
    /// ACKed.
    pub(super) fn answer_reinvite(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        id: LegId,
        body: String,
    ) {
        let Some(c) = self.conf_legs.get_mut(&id) else {
            return;
        };
        let mut ok = response_for(req, StatusCode::from(200), Some(&c.leg.local_tag));
        ok.headers.insert(
            Name::CONTACT,
            local(&self.settings).contact(c.leg.peer.transport),
        );
        ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        ok.body = Bytes::from(body.into_bytes());
        let _ = self.tx.send_response(now, tx, ok.clone());
        c.leg.unacked_2xx = Some(Unacked::new(self.settings.timers.t1, now, ok, false));
        if let Some(u) = &c.leg.unacked_2xx {
            self.timers
                .push(std::cmp::Reverse((u.deadline(), Timer::Leg(id))));
        }
    }

    /// 2xx retransmission for conference legs (the caller's ACK got lost).
    pub(super) fn conf_leg_timers(&mut self, now: Instant, id: LegId) {
        let t2 = self.settings.timers.t2;
        let Some(c) = self.conf_legs.get_mut(&id) else {
            return;
        };
        match c.leg.poll_unacked(now, t2) {
            Retransmit::Nothing => {}
            Retransmit::Send(t) => self.transmits.push_back(t),
            // Never ACKed: the caller is not there.
            Retransmit::GaveUp { initial: true } => return self.end_conf_leg(now, id, true),
            Retransmit::GaveUp { initial: false } => return,
        }
        if let Some(u) = &c.leg.unacked_2xx {
            self.timers
                .push(std::cmp::Reverse((u.deadline(), Timer::Leg(id))));
        }
    }

    /// Input from the media bridge.
    pub fn handle_media_event(&mut self, now: Instant, event: MediaEvent) {
        match event {
            MediaEvent::Digit { leg, digit } => self.leg_digit(now, leg, digit),
            MediaEvent::PlaybackDone { leg, seq } => {
                self.rooms.handle_playback_done_of(now, leg, seq)
            }
            MediaEvent::Talking { leg, talking } => {
                if let Some(c) = self.conf_legs.get_mut(&leg) {
                    if c.talking != talking {
                        c.talking = talking;
                        self.events.push_back(EngineEvent::ConferencesChanged);
                    }
                }
            }
            MediaEvent::Stats { leg, stats } => {
                if let Some(c) = self.conf_legs.get_mut(&leg) {
                    c.stats = stats;
                }
            }
            MediaEvent::WebRtcAnswer { leg, answer } => {
                let media = webrtc_negotiated(&answer);
                self.webrtc_answered(now, leg, answer.sdp, media)
            }
            MediaEvent::WebRtcOffer { leg, offer } => self.webrtc_offered(now, leg, offer),
            MediaEvent::WebRtcRefused { leg, reason } => {
                if let Some((tx, req)) = self.pending_reinvites.remove(&leg) {
                    tracing::info!(%leg, %reason, "a browser's new offer is refused");
                    self.respond(now, tx, &req, 488, "Not Acceptable Here");
                }
            }
            MediaEvent::Failed { leg, reason } => {
                if !self.webrtc_refused(now, leg, &reason) && !self.webrtc_offer_failed(leg) {
                    tracing::info!(%leg, %reason, "media failed; ending the leg");
                    self.end_conf_leg(now, leg, true);
                }
            }
        }
        self.drain_room_commands(now);
        self.drain_tx_transmits();
    }

    /// RTP ports held by conference legs (for metrics and leak tests).
    pub fn rtp_ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    /// The next command for the media bridge.
    #[must_use]
    pub fn poll_media(&mut self) -> Option<MediaCommand> {
        self.media_out.pop_front()
    }

    /// Live participants of every room.
    pub fn conference_participants(&self) -> Vec<ConferenceParticipant> {
        self.rooms
            .all_participants()
            .into_iter()
            .filter_map(|p| {
                let c = self.conf_legs.get(&p.leg)?;
                Some(ConferenceParticipant {
                    id: p.leg,
                    conference_id: p.room,
                    caller: p.caller,
                    caller_name: c.caller.name.clone(),
                    is_admin: p.is_admin,
                    state: p.state,
                    muted: p.muted,
                    talking: c.talking,
                    codec: c.media.codec.encoding.clone(),
                    joined_unix: c.joined_unix,
                    stats: c.stats.clone(),
                    rtp_port: c.port,
                })
            })
            .collect()
    }

    /// The room a participant is in (or entering, or waiting for).
    pub fn participant_room(&self, leg: LegId) -> Option<i64> {
        self.rooms.room_of(leg)
    }

    /// Kick from the console or API; false when no such participant.
    pub fn kick_participant(&mut self, now: Instant, leg: LegId) -> bool {
        let found = self.rooms.kick(leg);
        self.drain_room_commands(now);
        self.drain_tx_transmits();
        found
    }

    /// Mutes or unmutes a participant; false when there is no such participant.
    pub fn mute_participant(&mut self, now: Instant, leg: LegId, muted: bool) -> bool {
        let found = self.rooms.set_muted(leg, muted);
        self.drain_room_commands(now);
        found
    }
}

/// A DTMF digit carried in SIP INFO: `application/dtmf-relay` (`Signal=5`) or
/// `application/dtmf` (the digit alone).
fn dtmf_from_info(req: &Request) -> Option<char> {
    let ct = headers::first(&req.headers, &Name::CONTENT_TYPE)?.to_ascii_lowercase();
    let body = std::str::from_utf8(&req.body).ok()?;
    let value = if ct.starts_with("application/dtmf-relay") {
        body.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
            })?
            .to_owned()
    } else if ct.starts_with("application/dtmf") {
        body.trim().to_owned()
    } else {
        return None;
    };
    let digit = match value.as_str() {
        "10" => '*',
        "11" => '#',
        v if v.len() == 1 => v.chars().next()?,
        _ => return None,
    };
    matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D').then_some(digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ct: &str, body: &str) -> Request {
        let mut r = Request::new(Method::INFO, "sip:x@y".parse().unwrap());
        r.headers.insert(Name::CONTENT_TYPE, ct.to_owned());
        r.body = Bytes::from(body.to_owned());
        r
    }

    #[test]
    fn dtmf_info_bodies() {
        assert_eq!(
            dtmf_from_info(&info(
                "application/dtmf-relay",
                "Signal=5\r\nDuration=160\r\n"
            )),
            Some('5')
        );
        assert_eq!(
            dtmf_from_info(&info("application/dtmf-relay", "Signal= #\r\n")),
            Some('#')
        );
        assert_eq!(dtmf_from_info(&info("application/dtmf", "11")), Some('#'));
        assert_eq!(dtmf_from_info(&info("application/dtmf", "7")), Some('7'));
        assert_eq!(dtmf_from_info(&info("application/dtmf", "77")), None);
        assert_eq!(dtmf_from_info(&info("text/plain", "7")), None);
        assert_eq!(
            dtmf_from_info(&info("application/dtmf-relay", "Duration=1")),
            None
        );
    }
}
