//! Answering with media anchored here — a room's callers, the caller of an anchored call,
//! a browser's offer — and what joins the legs to the rest: the leg's requests go to its
//! [`Leg`], what it hears is decided by [`Rooms`] (whose commands are routed here), and
//! the media bridge is steered with [`MediaCommand`]s and heard from through
//! [`MediaEvent`]s.

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
use confero_sip::{Name, StatusCode};

use super::fork::ForkMedia;
use super::ids::{CallId, Owner, Timer};
use super::leg::{Leg, LegEnv, LegOutput};
use super::{local, ClientPurpose, Engine, EngineEvent, ALLOW, USER_AGENT};
use crate::config::{Conference, User};
use crate::room::{LegId, LockError, RoomCommand};
use confero_sip::dialog::{Dialog, Unacked};
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
pub(super) fn answer_for_bridge(
    offer: &sdp::RemoteAudio,
    local: &LocalMedia,
) -> Result<(String, Negotiated, LegMedia), sdp::SdpError> {
    let (answer, media) = sdp::answer(offer, local, CODEC_PREFS)?;
    let bridged = leg_media(&media).ok_or(sdp::SdpError::NoCommonCodec)?;
    Ok((answer, media, bridged))
}

/// The status and reason refusing an offer with `err` (488, 415…); the error itself goes
/// in a Warning.
pub(super) fn sdp_refusal(err: &sdp::SdpError) -> (u16, &'static str) {
    tracing::info!(%err, "refusing an offer");
    let code = err.status_code();
    (
        code.into_u16(),
        code.text().unwrap_or("Not Acceptable Here"),
    )
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

impl AfterAnswer {
    /// The mix the answered leg will join.
    pub(super) fn mix(&self) -> MixId {
        match self {
            AfterAnswer::Room { conference, .. } => MixId::Room(conference.id),
            AfterAnswer::CallCaller { call, .. } => MixId::Call(call.0),
        }
    }
}

impl Engine {
    /// Opens a leg in the media bridge, saying first which mix it is headed for: where
    /// several media threads run, it then opens on the thread of that mix and joins it
    /// there without moving.
    pub(super) fn open_media(&mut self, near: MixId, open: MediaCommand) {
        if let Some(leg) = open.leg() {
            self.media_out.push_back(MediaCommand::Place { leg, near });
        }
        self.media_out.push_back(open);
    }

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
        self.open_media(
            then.mix(),
            MediaCommand::Open {
                leg: id,
                port,
                media: bridged,
                rtcp_mux: offer.rtcp_mux,
                signalled_from: from.addr.ip(),
            },
        );
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
        let joined_unix = self.unix(now);
        let env = self.leg_env();
        let leg = Leg::new(
            id,
            leg,
            caller,
            port,
            media,
            answer,
            session_id,
            joined_unix,
            env,
        );
        self.file_leg(now, leg);
    }

    /// Files the leg a callee's answer made (`opened`, the media of its answer to our
    /// `offer`); `call` is the anchored call it is half of, if any.
    pub(super) fn file_answered_leg(
        &mut self,
        now: Instant,
        dialog: Dialog,
        callee: Party,
        opened: ForkMedia,
        offer: &[u8],
        call: Option<CallId>,
    ) {
        let (joined_unix, env) = (self.unix(now), self.leg_env());
        let (id, port, media) = (opened.leg, opened.port, opened.media);
        let mut leg = Leg::offered(id, dialog, callee, port, media, offer, joined_unix, env);
        leg.call = call;
        self.file_leg(now, leg);
    }

    /// A new leg: requests of its dialog are routed to it from now on, and its timer set.
    fn file_leg(&mut self, now: Instant, leg: Leg) {
        let id = leg.id();
        let key = (leg.dialog.call_id.clone(), leg.dialog.local_tag.clone());
        self.conf_dialogs.insert(key, id);
        if leg.caller.is_user {
            self.legs_by_user.add(&leg.caller.number, id);
        }
        self.conf_legs.insert(id, leg);
        self.drive_leg(now, id);
    }

    /// What a new leg is given: how we write ourselves, the SIP timers, a seed of its own.
    pub(super) fn leg_env(&mut self) -> LegEnv {
        LegEnv {
            local: local(&self.settings),
            timers: self.settings.timers,
            seed: self.entropy.next_u64(),
        }
    }

    /// Refuses an INVITE whose offer we cannot take (see [`sdp_refusal`]).
    pub(super) fn refuse_sdp(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        err: &sdp::SdpError,
    ) {
        self.respond_warning(now, tx, req, sdp_refusal(err), &err.to_string());
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

    /// Ends a leg once: BYE (unless the phone hung up), media closed, port freed, room
    /// and call told.
    pub(super) fn end_conf_leg(&mut self, now: Instant, id: LegId, send_bye: bool) {
        if let Some(leg) = self.conf_legs.get_mut(&id) {
            leg.end(send_bye);
            self.drive_leg(now, id);
        }
    }

    /// Does what leg `id` asks, then sets its timer.
    pub(super) fn drive_leg(&mut self, now: Instant, id: LegId) {
        while let Some(out) = self.conf_legs.get_mut(&id).and_then(Leg::poll_output) {
            match out {
                LegOutput::Respond(tx, resp) => {
                    let _ = self.tx.send_response(now, tx, resp);
                }
                LegOutput::Options(tx, req) => self.answer_options(tx, &req),
                LegOutput::Send(req, peer) => {
                    self.send_owned(now, Owner::Leg(id), ClientPurpose::Fire, *req, peer);
                }
                LegOutput::Transmit(t) => self.transmits.push_back(t),
                LegOutput::Media(cmd) => self.media_out.push_back(cmd),
                LegOutput::Digit(digit) => self.leg_digit(now, id, digit),
                LegOutput::Refer(tx, req) => self.conf_refer(now, tx, *req, id),
                LegOutput::Ended => return self.leg_gone(now, id),
            }
        }
        if let Some(at) = self.conf_legs.get(&id).and_then(Leg::poll_timeout) {
            self.timers.push(std::cmp::Reverse((at, Timer::Leg(id))));
        }
    }

    /// A leg ended: its port and media go, the room and the call it was in let it go.
    fn leg_gone(&mut self, now: Instant, id: LegId) {
        let Some(c) = self.conf_legs.remove(&id) else {
            return;
        };
        self.legs_by_user.remove(&c.caller.number, id);
        self.conf_dialogs
            .remove(&(c.dialog.call_id.clone(), c.dialog.local_tag.clone()));
        self.ports.release(c.port);
        self.media_out.push_back(MediaCommand::Close { leg: id });
        self.rooms.handle_leave(now, id);
        self.drain_room_commands(now);
        self.events.push_back(EngineEvent::ConferencesChanged);
        if let Some(call) = c.call {
            self.call_leg_ended(now, call, id);
        }
    }

    /// ACK for our 2xx on a leg.
    pub(super) fn conf_ack(&mut self, id: LegId, ack: &Request) {
        if let Some(c) = self.conf_legs.get_mut(&id) {
            c.handle_ack(ack);
        }
    }

    /// In-dialog requests from a leg's phone.
    pub(super) fn conf_in_dialog(&mut self, now: Instant, tx: ServerTxId, req: Request, id: LegId) {
        let Some(c) = self.conf_legs.get_mut(&id) else {
            return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        };
        c.handle_request(now, tx, req);
        self.drive_leg(now, id);
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

    /// A leg's timer: its 2xx retransmitted, or the leg ended when never ACKed.
    pub(super) fn conf_leg_timers(&mut self, now: Instant, id: LegId) {
        if let Some(c) = self.conf_legs.get_mut(&id) {
            c.handle_timeout(now);
            self.drive_leg(now, id);
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
                if let Some(c) = self.conf_legs.get_mut(&leg) {
                    c.handle_webrtc_refusal(&reason);
                    self.drive_leg(now, leg);
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

    /// RTP port pairs passed over because another program held them, since start.
    pub fn rtp_ports_taken_elsewhere(&self) -> u64 {
        self.ports.taken_elsewhere()
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

    /// Locks or unlocks room `room` for new callers (console, API, the administrator's
    /// keypad): see [`crate::room::Rooms::set_locked`].
    pub fn lock_conference(&mut self, room: i64, locked: bool) -> Result<(), LockError> {
        self.rooms.set_locked(room, locked)
    }

    /// The rooms locked now.
    #[must_use]
    pub fn locked_conferences(&self) -> Vec<i64> {
        self.rooms.locked_rooms()
    }

    /// Mutes or unmutes a participant; false when there is no such participant.
    pub fn mute_participant(&mut self, now: Instant, leg: LegId, muted: bool) -> bool {
        let found = self.rooms.set_muted(leg, muted);
        self.drain_room_commands(now);
        found
    }
}
