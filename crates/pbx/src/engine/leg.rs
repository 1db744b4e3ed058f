//! Legs the PBX terminates: a room's participant, either half of an anchored call, a
//! transferee waiting with music. The PBX is one end of the leg's dialog and of its media
//! (a port of ours, a leg of the media bridge).
//!
//! A [`Leg`] is a state machine without IO: the engine routes the requests of its dialog
//! ([`Leg::handle_request`]), the ACKs of our 2xx, the media bridge's answers to a
//! browser's new offer and its timer to it, and does what [`Leg::poll_output`] asks —
//! responses, BYE and NOTIFY, media commands, a digit for the room or the other side, a
//! REFER to plan, and at last [`LegOutput::Ended`], when the engine lets the room, the call
//! and the port go. What a participant hears is the rooms' business (`crate::room`), not
//! the leg's.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use confero_media::bridge::{LegStats, MediaCommand};
use confero_sip::dialog::{Dialog, Local, Retransmit, Unacked};
use confero_sip::headers;
use confero_sip::message::{response_for, Entropy, Request, Response};
use confero_sip::sdp::{self, LocalMedia, Negotiated};
use confero_sip::transaction::{ServerTxId, TimerConfig};
use confero_sip::transport::{Peer, Transmit};
use confero_sip::{Method, Name, StatusCode};

use super::conference::{answer_for_bridge, sdp_refusal, Party};
use super::ids::{CallId, LegId};
use super::{ack_clears, warning, USER_AGENT};

/// What a leg asks the engine to do, in order.
#[derive(Debug)]
pub(super) enum LegOutput {
    /// A response to a request of the leg's dialog.
    Respond(ServerTxId, Response),
    /// Answer an OPTIONS as the PBX answers any (its capabilities).
    Options(ServerTxId, Box<Request>),
    /// A BYE or NOTIFY in the leg's dialog.
    Send(Box<Request>, Peer),
    /// A retransmitted 2xx.
    Transmit(Transmit),
    /// Something the media bridge must do for the leg.
    Media(MediaCommand),
    /// A digit the phone keyed (SIP INFO): for the room, or the other side of a call.
    Digit(char),
    /// A REFER: the engine plans the transfer and accepts or refuses it.
    Refer(ServerTxId, Box<Request>),
    /// The leg is over: its media is closed; the room, the call and the port let it go.
    Ended,
}

/// What every leg is given by the engine that makes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LegEnv {
    pub(super) local: Local,
    pub(super) timers: TimerConfig,
    /// Seeds the leg's own tags and branches.
    pub(super) seed: u64,
}

pub(super) struct Leg {
    /// The leg's name in the media bridge and the rooms.
    id: LegId,
    pub(super) dialog: Dialog,
    pub(super) caller: Party,
    /// The anchored call this leg is half of, when it is not in a conference room.
    pub(super) call: Option<CallId>,
    pub(super) port: u16,
    pub(super) media: Negotiated,
    /// Our last SDP, re-sent when a re-INVITE asks without an offer.
    local_sdp: String,
    sdp_version: u64,
    session_id: u64,
    pub(super) joined_unix: u64,
    pub(super) talking: bool,
    pub(super) stats: LegStats,
    /// A browser's re-INVITE waiting for the media bridge's answer.
    pending_reinvite: Option<(ServerTxId, Box<Request>)>,
    local: Local,
    timers: TimerConfig,
    entropy: Entropy,
    out: VecDeque<LegOutput>,
    over: bool,
}

impl Leg {
    /// Leg `id`, whose `dialog` we answered with `local_sdp` (session `session_id`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: LegId,
        dialog: Dialog,
        caller: Party,
        port: u16,
        media: Negotiated,
        local_sdp: String,
        session_id: u64,
        joined_unix: u64,
        env: LegEnv,
    ) -> Self {
        Leg {
            id,
            dialog,
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
            pending_reinvite: None,
            local: env.local,
            timers: env.timers,
            entropy: Entropy::seeded(env.seed),
            out: VecDeque::new(),
            over: false,
        }
    }

    /// A leg the PBX called: `offer` is the SDP we sent, which stays ours (a re-INVITE
    /// without an offer is answered with it, and later answers keep its session id).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn offered(
        id: LegId,
        dialog: Dialog,
        caller: Party,
        port: u16,
        media: Negotiated,
        offer: &[u8],
        joined_unix: u64,
        env: LegEnv,
    ) -> Self {
        let local_sdp = String::from_utf8_lossy(offer).into_owned();
        let session_id = session_id_of(&local_sdp);
        Leg::new(
            id,
            dialog,
            caller,
            port,
            media,
            local_sdp,
            session_id,
            joined_unix,
            env,
        )
    }

    /// The leg's name in the media bridge and the rooms.
    pub(super) fn id(&self) -> LegId {
        self.id
    }

    /// The next thing the engine must do for this leg.
    pub(super) fn poll_output(&mut self) -> Option<LegOutput> {
        self.out.pop_front()
    }

    /// When our unacknowledged 2xx must go again.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.dialog.unacked_2xx.as_ref().map(Unacked::deadline)
    }

    /// A response to `req` in this dialog, with our tag.
    fn response(&self, req: &Request, code: u16, reason: &str) -> Response {
        let mut resp = response_for(req, StatusCode::from(code), Some(&self.dialog.local_tag));
        resp.reason = Some(reason.to_owned());
        resp.headers.insert(Name::SERVER, USER_AGENT);
        resp
    }

    /// Sends [`Leg::response`].
    fn reply(&mut self, tx: ServerTxId, req: &Request, code: u16, reason: &str) {
        let resp = self.response(req, code, reason);
        self.out.push_back(LegOutput::Respond(tx, resp));
    }

    /// Accepts a REFER the engine planned (202), or refuses it.
    pub(super) fn answer_refer(&mut self, tx: ServerTxId, req: &Request, code: u16, reason: &str) {
        self.reply(tx, req, code, reason);
    }

    /// A request of the leg's dialog.
    pub(super) fn handle_request(&mut self, now: Instant, tx: ServerTxId, req: Request) {
        match req.method {
            Method::BYE => {
                self.reply(tx, &req, 200, "OK");
                self.end(false);
            }
            Method::OPTIONS => self.out.push_back(LegOutput::Options(tx, Box::new(req))),
            Method::INFO => match dtmf_from_info(&req) {
                Some(digit) => {
                    self.reply(tx, &req, 200, "OK");
                    self.out.push_back(LegOutput::Digit(digit));
                }
                None if req.body.is_empty() => self.reply(tx, &req, 200, "OK"),
                None => self.reply(tx, &req, 415, "Unsupported Media Type"),
            },
            Method::INVITE => self.handle_reinvite(now, tx, req),
            Method::UPDATE if req.body.is_empty() => self.reply(tx, &req, 200, "OK"),
            Method::REFER => self.out.push_back(LegOutput::Refer(tx, Box::new(req))),
            _ => self.reply(tx, &req, 501, "Not Implemented"),
        }
    }

    /// A re-INVITE (hold, new address, codec change): answered on the same port.
    fn handle_reinvite(&mut self, now: Instant, tx: ServerTxId, req: Request) {
        if self.dialog.unacked_2xx.is_some() || self.pending_reinvite.is_some() {
            // Our previous 2xx is not ACKed yet, or a browser's offer is still being
            // answered (RFC 3261 §14.2): try again shortly.
            let mut resp = self.response(&req, 500, "Previous INVITE Not Yet Acknowledged");
            let wait = 1 + self.entropy.next_u64() % 5;
            resp.headers.insert(Name::RETRY_AFTER, wait.to_string());
            return self.out.push_back(LegOutput::Respond(tx, resp));
        }
        if let Some(target) =
            headers::contacts(&req.headers).and_then(|l| l.first().map(headers::contact_uri_text))
        {
            self.dialog.remote_target = target;
        }
        if req.body.is_empty() {
            let body = self.local_sdp.clone();
            return self.answer_reinvite(now, tx, &req, body);
        }
        let offer = match sdp::parse_audio(&req.body) {
            Ok(o) => o,
            Err(err) => return self.refuse_offer(tx, &req, &err),
        };
        if offer.is_webrtc() {
            // A browser's new offer (hold, resume): its WebRTC stack answers.
            let leg_offer = String::from_utf8_lossy(&req.body).into_owned();
            self.pending_reinvite = Some((tx, Box::new(req)));
            return self
                .out
                .push_back(LegOutput::Media(MediaCommand::ReofferWebRtc {
                    leg: self.id,
                    offer: leg_offer,
                }));
        }
        self.sdp_version += 1;
        let local = LocalMedia {
            addr: self.local.advertised.ip(),
            port: self.port,
            session_id: self.session_id,
            session_version: self.sdp_version,
            username: "confero".to_owned(),
        };
        match answer_for_bridge(&offer, &local) {
            Ok((answer, media, bridged)) => {
                self.media = media;
                self.local_sdp = answer.clone();
                self.out.push_back(LegOutput::Media(MediaCommand::Update {
                    leg: self.id,
                    media: bridged,
                    signalled_from: self.dialog.peer.addr.ip(),
                }));
                self.answer_reinvite(now, tx, &req, answer);
            }
            Err(err) => self.refuse_offer(tx, &req, &err),
        }
    }

    /// An offer we cannot take: the status it calls for, with a Warning saying why.
    fn refuse_offer(&mut self, tx: ServerTxId, req: &Request, err: &sdp::SdpError) {
        let (code, reason) = sdp_refusal(err);
        let mut resp = self.response(req, code, reason);
        let warning = warning(self.local.advertised.ip(), &err.to_string());
        resp.headers.insert(Name::WARNING, warning);
        self.out.push_back(LegOutput::Respond(tx, resp));
    }

    /// The 200 OK to a re-INVITE, retransmitted until ACKed.
    fn answer_reinvite(&mut self, now: Instant, tx: ServerTxId, req: &Request, body: String) {
        let mut ok = self.response(req, 200, "OK");
        let contact = self.local.contact(self.dialog.peer.transport);
        ok.headers.insert(Name::CONTACT, contact);
        ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        ok.body = Bytes::from(body.into_bytes());
        self.dialog.unacked_2xx = Some(Unacked::new(self.timers.t1, now, ok.clone(), false));
        self.out.push_back(LegOutput::Respond(tx, ok));
    }

    /// The media bridge answered a browser's new offer; false when no re-INVITE waited
    /// for it.
    pub(super) fn handle_webrtc_answer(
        &mut self,
        now: Instant,
        answer: String,
        media: Negotiated,
    ) -> bool {
        let Some((tx, req)) = self.pending_reinvite.take() else {
            return false;
        };
        self.media = media;
        self.local_sdp = answer.clone();
        self.answer_reinvite(now, tx, &req, answer);
        true
    }

    /// The media bridge refused a browser's new offer.
    pub(super) fn handle_webrtc_refusal(&mut self, reason: &str) {
        if let Some((tx, req)) = self.pending_reinvite.take() {
            tracing::info!(%reason, "a browser's new offer is refused");
            self.reply(tx, &req, 488, "Not Acceptable Here");
        }
    }

    /// The ACK for our 2xx.
    pub(super) fn handle_ack(&mut self, ack: &Request) {
        ack_clears(&mut self.dialog, ack);
    }

    /// Time passed: our 2xx goes again; never ACKed, the caller is not there.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        match self.dialog.poll_unacked(now, self.timers.t2) {
            Retransmit::Nothing | Retransmit::GaveUp { initial: false } => {}
            Retransmit::Send(t) => self.out.push_back(LegOutput::Transmit(t)),
            Retransmit::GaveUp { initial: true } => self.end(true),
        }
    }

    /// The one NOTIFY of a REFER's implicit subscription (RFC 3515 §2.4.5): how the
    /// transfer went, as a sipfrag status line, and the subscription is over.
    pub(super) fn notify_refer(&mut self, status_line: &str) {
        let mut notify = self
            .dialog
            .request(Method::NOTIFY, &self.local, &mut self.entropy);
        let h = &mut notify.headers;
        h.insert(Name::EVENT, "refer");
        h.insert(Name::SUBSCRIPTION_STATE, "terminated;reason=noresource");
        h.insert(
            Name::CONTACT,
            self.local.contact(self.dialog.peer.transport),
        );
        h.insert(Name::CONTENT_TYPE, "message/sipfrag;version=2.0");
        notify.body = format!("SIP/2.0 {status_line}\r\n").into_bytes().into();
        let peer = self.dialog.peer;
        self.out.push_back(LegOutput::Send(Box::new(notify), peer));
    }

    /// Ends the leg once: BYE unless the phone hung up, media closed, then
    /// [`LegOutput::Ended`].
    pub(super) fn end(&mut self, send_bye: bool) {
        if self.over {
            return;
        }
        self.over = true;
        if let Some((tx, req)) = self.pending_reinvite.take() {
            self.reply(tx, &req, 481, "Call/Transaction Does Not Exist");
        }
        self.dialog.unacked_2xx = None;
        if send_bye {
            let bye = self
                .dialog
                .request(Method::BYE, &self.local, &mut self.entropy);
            let peer = self.dialog.peer;
            self.out.push_back(LegOutput::Send(Box::new(bye), peer));
        }
        self.out.push_back(LegOutput::Ended);
    }
}

/// The session id of an SDP body (its `o=` line), kept across our later answers.
pub(super) fn session_id_of(sdp: &str) -> u64 {
    sdp.lines()
        .find_map(|l| l.strip_prefix("o="))
        .and_then(|o| o.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
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
    use std::net::SocketAddr;
    use std::time::Duration;

    use confero_sip::message::Message;
    use confero_sip::transaction::{TransactionEvent, TransactionLayer};
    use confero_sip::transport::Transport;

    use super::*;

    const PHONE_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n";

    fn phone() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            conn: None,
        }
    }

    /// A request from the phone, through a transaction layer (for its server transaction).
    fn from_phone(
        tl: &mut TransactionLayer,
        now: Instant,
        method: &str,
        cseq: u32,
        sdp: &str,
    ) -> (ServerTxId, Request) {
        let ct = if sdp.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "{method} sip:pbx@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bK{method}{cseq}\r\nFrom: <sip:101@pbx>;tag=phone\r\nTo: <sip:800@pbx>;tag=ours\r\nCall-ID: leg-1\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@127.0.0.1:5000>\r\n{ct}Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        tl.handle_message(now, Message::parse(text.as_bytes()).unwrap(), phone());
        match tl.poll_event() {
            Some(TransactionEvent::Request { tx, request, .. }) => (tx, request),
            other => panic!("{other:?}"),
        }
    }

    fn leg(now: Instant, tl: &mut TransactionLayer) -> Leg {
        let (_, invite) = from_phone(tl, now, "INVITE", 1, PHONE_SDP);
        let dialog = Dialog::uas(&invite, "ours".into(), phone()).unwrap();
        let offer = sdp::parse_audio(PHONE_SDP.as_bytes()).unwrap();
        let local = LocalMedia {
            addr: [127, 0, 0, 1].into(),
            port: 20_000,
            session_id: 9,
            session_version: 1,
            username: "confero".into(),
        };
        let (answer, media, _) = answer_for_bridge(&offer, &local).unwrap();
        let env = LegEnv {
            local: Local {
                advertised: SocketAddr::from(([127, 0, 0, 1], 5060)),
                user_agent: USER_AGENT,
            },
            timers: TimerConfig::default(),
            seed: 5,
        };
        let party = Party::external("101", "Alice");
        Leg::new(LegId(4), dialog, party, 20_000, media, answer, 9, 0, env)
    }

    fn drain(leg: &mut Leg) -> Vec<LegOutput> {
        std::iter::from_fn(|| leg.poll_output()).collect()
    }

    #[test]
    fn a_hold_is_answered_on_the_same_port_and_the_bridge_stops_expecting_audio() {
        let now = Instant::now();
        let mut tl = TransactionLayer::new(TimerConfig::default());
        let mut leg = leg(now, &mut tl);
        let hold = PHONE_SDP.replace("sendrecv", "sendonly");
        let (tx, req) = from_phone(&mut tl, now, "INVITE", 2, &hold);
        leg.handle_request(now, tx, req);
        let out = drain(&mut leg);
        let [LegOutput::Media(MediaCommand::Update { leg: id, media, .. }), LegOutput::Respond(t, ok)] =
            out.as_slice()
        else {
            panic!("{out:?}");
        };
        assert_eq!((*id, *t, ok.code.into_u16()), (LegId(4), tx, 200));
        assert!(!media.two_way, "a held phone may fall silent");
        let answer = std::str::from_utf8(&ok.body).unwrap();
        assert!(
            answer.contains("m=audio 20000 ") && answer.contains("a=recvonly"),
            "{answer}"
        );
        // A second offer before our 200 is ACKed waits its turn (§14.2).
        let (tx2, again) = from_phone(&mut tl, now, "INVITE", 3, PHONE_SDP);
        leg.handle_request(now, tx2, again);
        assert!(
            matches!(drain(&mut leg).as_slice(), [LegOutput::Respond(_, r)] if r.code.into_u16() == 500)
        );
        // Never ACKed: retransmitted, then given up; the leg itself goes on (only an
        // unacknowledged first answer means the phone is not there).
        let first = leg.poll_timeout().unwrap();
        leg.handle_timeout(first);
        assert!(matches!(
            drain(&mut leg).as_slice(),
            [LegOutput::Transmit(_)]
        ));
        leg.handle_timeout(now + Duration::from_secs(40));
        assert!(drain(&mut leg).is_empty());
        assert_eq!(leg.poll_timeout(), None);
    }

    #[test]
    fn bye_ends_the_leg_without_a_bye_back_and_info_digits_go_to_the_room() {
        let now = Instant::now();
        let mut tl = TransactionLayer::new(TimerConfig::default());
        let mut leg = leg(now, &mut tl);
        let (tx, mut info) = from_phone(&mut tl, now, "INFO", 2, "");
        info.headers
            .insert(Name::CONTENT_TYPE, "application/dtmf-relay");
        info.body = Bytes::from_static(b"Signal=#\r\nDuration=160\r\n");
        leg.handle_request(now, tx, info);
        assert!(matches!(
            drain(&mut leg).as_slice(),
            [LegOutput::Respond(..), LegOutput::Digit('#')]
        ));
        let (tx, bye) = from_phone(&mut tl, now, "BYE", 3, "");
        leg.handle_request(now, tx, bye);
        assert!(
            matches!(drain(&mut leg).as_slice(), [LegOutput::Respond(_, ok), LegOutput::Ended] if ok.code.into_u16() == 200)
        );
        leg.end(true);
        assert!(drain(&mut leg).is_empty(), "a leg ends once");
    }

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
