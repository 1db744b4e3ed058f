//! Whole calls on a simulated network: the engine and a media bridge as the server runs
//! them, phones that speak SIP through their own transaction layer (so they retransmit
//! as phones do) and RTP on their own clock, and a `SimNet` between all of them that loses,
//! delays, reorders and duplicates as a seeded `Link` says.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confero_media::bridge::{Bridge, BridgeConfig, PromptLibrary, TICK};
use confero_media::codec::{CodecKind, Decoder, Encoder};
use confero_media::dtmf::event_payload;
use confero_media::placement::{Placement, Routed};
use confero_media::rtp::{is_rtcp, parse_rtp, write_rtp, RtpHeader};
use confero_media::tone::{amplitude, Tone};
use confero_pbx::engine::{Engine, EngineEvent};
use confero_sim::{Driver, Link, SimNet};
use confero_sip::dialog::{Dialog, Local, Retransmit, Unacked};
use confero_sip::digest;
use confero_sip::message::{response_for, Entropy, Message, Request, Response};
use confero_sip::sdp;
use confero_sip::transaction::{
    ClientTxId, ServerTxId, TimerConfig, TransactionEvent, TransactionLayer,
};
use confero_sip::transport::{Peer, Transport};
use confero_sip::{Method, Name, StatusCode};

use super::Harness;
use confero_pbx::config::Config;

const T1: Duration = Duration::from_millis(500);

fn udp(addr: SocketAddr) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr,
        conn: None,
    }
}

/// A request from its head (lines ended by `\n`) and its body (written as is).
fn parse_request(head: &str, body: &str) -> Request {
    let text = head.replace('\n', "\r\n") + body;
    match Message::parse(text.as_bytes()).expect("a valid request") {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!("a request was written"),
    }
}

/// A call a phone placed.
struct Outgoing {
    invite: Request,
    tx: ClientTxId,
    authorized: bool,
    dialog: Option<Dialog>,
}

/// A call a phone is answering or answered.
struct Incoming {
    invite: Request,
    tx: ServerTxId,
    answer_at: Option<Instant>,
    dialog: Option<Dialog>,
}

/// What happened to a phone's calls, for the test to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhoneEvent {
    /// A 2xx for our INVITE, with the To tag of the dialog it makes.
    Answered {
        to_tag: String,
    },
    /// We answered and the ACK came.
    Acked,
    Cancelled,
    Bye,
    /// A final failure for our INVITE.
    Failed(u16),
    /// The final answer to our re-INVITE (hold or resume).
    Updated(u16),
    /// The other side's re-INVITE came and we answered it; `held`: it puts us on hold.
    Reinvited {
        held: bool,
    },
    Registered,
}

/// A SIP phone with an RTP stream: PCMU, RFC 4733 digits, a tone of its own.
pub struct SimPhone {
    pub user: String,
    password: String,
    pub sip: SocketAddr,
    pub rtp: SocketAddr,
    pbx: SocketAddr,
    tl: TransactionLayer,
    local: Local,
    entropy: Entropy,
    outgoing: Option<Outgoing>,
    incoming: Vec<Incoming>,
    register: Option<(Request, ClientTxId, bool)>,
    /// Answer incoming calls this long after they arrive (never, if `None`).
    pub answer_after: Option<Duration>,
    pub events: Vec<PhoneEvent>,
    // Media.
    rtp_to: Option<SocketAddr>,
    tone: Tone,
    encoder: Encoder,
    seq: u16,
    ts: u32,
    ssrc: u32,
    next_rtp: Option<Instant>,
    digits: VecDeque<(Instant, char)>,
    /// Audio received, in arrival order: (sequence, payload).
    audio: Vec<(u16, Vec<u8>)>,
    cseq: u32,
    tag: String,
    /// Our re-INVITE waiting for its answer: its transaction and CSeq.
    reinvite: Option<(ClientTxId, u32)>,
    /// Sends RTP (not on hold, not held by the other side).
    sending: bool,
}

impl SimPhone {
    /// `user` (password `{user}-pw`) at `ip`, SIP on 5060 and RTP on 4000, sending a
    /// tone of `freq`.
    pub fn new(user: &str, ip: [u8; 4], freq: f64, pbx: SocketAddr) -> SimPhone {
        let sip = SocketAddr::from((ip, 5060));
        SimPhone {
            user: user.to_owned(),
            password: format!("{user}-pw"),
            sip,
            rtp: SocketAddr::from((ip, 4000)),
            pbx,
            tl: TransactionLayer::new(TimerConfig::default()),
            local: Local {
                advertised: sip,
                user_agent: "SimPhone",
            },
            entropy: Entropy::seeded(u64::from(u32::from_be_bytes(ip))),
            outgoing: None,
            incoming: Vec::new(),
            register: None,
            answer_after: None,
            events: Vec::new(),
            rtp_to: None,
            tone: Tone::new(8000, freq, 8000),
            encoder: Encoder::new(CodecKind::Pcmu),
            seq: u16::from(ip[3]) * 1000,
            ts: u32::from(ip[3]) * 100_000,
            ssrc: 0x5100 + u32::from(ip[3]),
            next_rtp: None,
            digits: VecDeque::new(),
            audio: Vec::new(),
            cseq: 0,
            tag: format!("tag-{user}"),
            reinvite: None,
            sending: true,
        }
    }

    fn sdp(&self) -> String {
        self.sdp_with(1, "sendrecv")
    }

    /// Our SDP, session version `version`, with the direction attribute `direction`.
    fn sdp_with(&self, version: u32, direction: &str) -> String {
        let ip = self.rtp.ip();
        let port = self.rtp.port();
        format!("v=0\r\no=- 1 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n")
    }

    fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    /// Registers (answering the challenge).
    pub fn register(&mut self, now: Instant) {
        let cseq = self.next_cseq();
        let req = parse_request(&format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\nVia: {via}\nMax-Forwards: 70\nFrom: <sip:{u}@127.0.0.1>;tag={tag}\nTo: <sip:{u}@127.0.0.1>\nCall-ID: reg-{u}-{ip}\nCSeq: {cseq} REGISTER\nContact: <sip:{u}@{sip}>\nExpires: 3600\nContent-Length: 0\n\n",
            via = self.local.via(Transport::Udp, &mut self.entropy),
            u = self.user,
            tag = self.tag,
            ip = self.sip.ip(),
            sip = self.sip,
        ), "");
        let tx = self.tl.send_request(now, req.clone(), udp(self.pbx));
        self.register = Some((req, tx, false));
    }

    /// Calls `target` (an extension), offering PCMU and telephone-events.
    pub fn dial(&mut self, now: Instant, target: &str) {
        let cseq = self.next_cseq();
        let sdp = self.sdp();
        let invite = parse_request(&format!(
            "INVITE sip:{target}@127.0.0.1 SIP/2.0\nVia: {via}\nMax-Forwards: 70\nFrom: <sip:{u}@127.0.0.1>;tag={tag}\nTo: <sip:{target}@127.0.0.1>\nCall-ID: call-{u}-{target}\nCSeq: {cseq} INVITE\nContact: <sip:{u}@{sip}>\nContent-Type: application/sdp\nContent-Length: {len}\n\n",
            via = self.local.via(Transport::Udp, &mut self.entropy),
            u = self.user,
            tag = self.tag,
            sip = self.sip,
            len = sdp.len(),
        ), &sdp);
        let tx = self.tl.send_request(now, invite.clone(), udp(self.pbx));
        self.outgoing = Some(Outgoing {
            invite,
            tx,
            authorized: false,
            dialog: None,
        });
    }

    /// Transfers the call it answered to `target` (an extension), blind: REFER in that
    /// call's dialog, retransmitted as any request.
    pub fn refer(&mut self, now: Instant, target: &str) {
        let local = self.local;
        let Some(d) = self.incoming.iter_mut().find_map(|c| c.dialog.as_mut()) else {
            return;
        };
        let mut refer = d.request(Method::REFER, &local, &mut self.entropy);
        refer.headers.insert(
            Name::from("Refer-To".to_owned()),
            format!("<sip:{target}@127.0.0.1>"),
        );
        self.tl.send_request(now, refer, udp(self.pbx));
    }

    /// Puts the call it placed on hold (`held`: a re-INVITE offering `sendonly`, and no
    /// more RTP from us) or takes it off hold (`sendrecv`, RTP again).
    pub fn hold(&mut self, now: Instant, held: bool) {
        let local = self.local;
        let Some(d) = self.outgoing.as_mut().and_then(|o| o.dialog.as_mut()) else {
            return;
        };
        let mut invite = d.request(Method::INVITE, &local, &mut self.entropy);
        let cseq = d.local_cseq;
        // Each new offer is a new version of our session (the CSeq goes up with it).
        let sdp = self.sdp_with(cseq, if held { "sendonly" } else { "sendrecv" });
        invite
            .headers
            .insert(Name::CONTACT, local.contact(Transport::Udp));
        invite.headers.insert(Name::CONTENT_TYPE, "application/sdp");
        invite.body = sdp.into_bytes().into();
        let tx = self.tl.send_request(now, invite, udp(self.pbx));
        self.reinvite = Some((tx, cseq));
        self.sending = !held;
    }

    /// A datagram of ours for the PBX's SIP port.
    fn to_pbx(&self, req: Request) -> (SocketAddr, SocketAddr, Vec<u8>) {
        (
            self.sip,
            self.pbx,
            Message::Request(req).to_bytes().to_vec(),
        )
    }

    /// RTP packets received so far.
    pub fn received(&self) -> usize {
        self.audio.len()
    }

    /// Keys `digits` by RFC 4733, 250 ms apart, starting at `at`.
    pub fn key(&mut self, at: Instant, digits: &str) {
        for (i, d) in digits.chars().enumerate() {
            self.digits
                .push_back((at + Duration::from_millis(250) * i as u32, d));
        }
    }

    /// The dialog of the call it placed, once answered.
    pub fn outgoing_dialog(&self) -> Option<&Dialog> {
        self.outgoing.as_ref().and_then(|o| o.dialog.as_ref())
    }

    /// Dialogs of calls it answered that are up (ACKed or not) and not ended.
    pub fn answered_dialogs(&self) -> usize {
        self.incoming.iter().filter(|c| c.dialog.is_some()).count()
    }

    /// Amplitude of `freq` in the frames heard lately: the median over the last `frames`
    /// frames received of each frame's own amplitude, so that a frame lost or out of order
    /// on the way does not break the measure.
    pub fn heard(&self, freq: f64, frames: usize) -> f64 {
        let mut dec = Decoder::new(CodecKind::Pcmu);
        let mut pcm = Vec::new();
        let mut each: Vec<f64> = self.audio[self.audio.len().saturating_sub(frames)..]
            .iter()
            .map(|(_, p)| {
                pcm.clear();
                dec.decode(p, &mut pcm);
                amplitude(&pcm, freq, 8000)
            })
            .collect();
        each.sort_by(f64::total_cmp);
        each.get(each.len() / 2).copied().unwrap_or(0.0)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let unacked = self.incoming.iter().filter_map(|c| {
            c.dialog
                .as_ref()?
                .unacked_2xx
                .as_ref()
                .map(Unacked::deadline)
        });
        let answers = self.incoming.iter().filter_map(|c| c.answer_at);
        // (Digits go out with the RTP ticks.)
        [self.tl.poll_timeout(), self.next_rtp]
            .into_iter()
            .flatten()
            .chain(unacked)
            .chain(answers)
            .min()
    }

    /// Everything due at `now`: SIP timers, answers, RTP; returns datagrams to send.
    fn handle_timeout(&mut self, now: Instant, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
        self.tl.handle_timeout(now);
        for i in 0..self.incoming.len() {
            if self.incoming[i].answer_at.is_some_and(|t| now >= t) {
                self.incoming[i].answer_at = None;
                self.answer(now, i);
            }
            if let Some(d) = self.incoming[i].dialog.as_mut() {
                match d.poll_unacked(now, Duration::from_secs(4)) {
                    Retransmit::Send(t) => out.push((self.sip, t.peer.addr, t.data.to_vec())),
                    Retransmit::GaveUp { .. } => self.incoming[i].dialog = None,
                    Retransmit::Nothing => {}
                }
            }
        }
        if let (Some(at), Some(to)) = (self.next_rtp, self.rtp_to) {
            if now >= at {
                self.next_rtp = Some(at + TICK);
                let packet = match self.digits.front() {
                    Some(&(when, d)) if now >= when => {
                        self.digits.pop_front();
                        self.digit_packets(d)
                    }
                    // On hold: the clock runs on, nothing is sent.
                    _ if !self.sending => {
                        self.ts = self.ts.wrapping_add(160);
                        Vec::new()
                    }
                    _ => vec![self.audio_packet()],
                };
                for p in packet {
                    out.push((self.rtp, to, p));
                }
            }
        }
        self.drain(now, out);
    }

    fn rtp_packet(&mut self, pt: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
        let h = RtpHeader {
            payload_type: pt,
            marker,
            sequence: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
        };
        self.seq = self.seq.wrapping_add(1);
        let mut p = Vec::new();
        write_rtp(&h, payload, &mut p);
        p
    }

    fn audio_packet(&mut self) -> Vec<u8> {
        let mut pcm = Vec::new();
        self.tone.fill(160, &mut pcm);
        let mut payload = Vec::new();
        self.encoder.encode(&pcm, &mut payload);
        let p = self.rtp_packet(0, false, &payload);
        self.ts = self.ts.wrapping_add(160);
        p
    }

    /// A whole digit at once (three updates, three ends), as redundantly as phones send.
    fn digit_packets(&mut self, digit: char) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (i, end) in [false, false, false, true, true, true]
            .into_iter()
            .enumerate()
        {
            let duration = 160 * (i.min(3) as u16 + 1);
            let payload = event_payload(digit, end, 10, duration).expect("a DTMF digit");
            out.push(self.rtp_packet(101, i == 0, &payload));
        }
        self.ts = self.ts.wrapping_add(160 * 4);
        out
    }

    /// A datagram for this phone.
    fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        data: &[u8],
        out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    ) {
        if to == self.rtp {
            if !is_rtcp(data) {
                if let Ok((h, payload)) = parse_rtp(data) {
                    if h.payload_type == 0 {
                        self.audio.push((h.sequence, payload.to_vec()));
                    }
                }
            }
            return;
        }
        if let Ok(msg) = Message::parse(data) {
            self.tl.handle_message(now, msg, udp(from));
        }
        self.drain(now, out);
    }

    fn drain(&mut self, now: Instant, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
        loop {
            while let Some(t) = self.tl.poll_transmit() {
                out.push((self.sip, t.peer.addr, t.data.to_vec()));
            }
            let Some(ev) = self.tl.poll_event() else {
                break;
            };
            self.on_event(now, ev, out);
        }
    }

    fn on_event(
        &mut self,
        now: Instant,
        ev: TransactionEvent,
        out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    ) {
        match ev {
            TransactionEvent::Response { tx, response } => self.on_response(now, tx, response, out),
            TransactionEvent::StrayResponse { response, .. } => {
                // A 2xx retransmitted because our ACK was lost: ACK it again (the first
                // INVITE's, or a re-INVITE's by its CSeq).
                let answered = self
                    .outgoing
                    .as_ref()
                    .and_then(|o| Some((o.dialog.as_ref()?, o)));
                if let (Some((d, o)), true) = (answered, response.code.into_u16() / 100 == 2) {
                    let via = self.local.via(Transport::Udp, &mut self.entropy);
                    let first = o.invite.cseq().map(|(n, _)| n);
                    let ack = match response.cseq().map(|(n, _)| n) {
                        Some(n) if Some(n) != first => d.ack(n, via),
                        _ => d.ack_for(&o.invite, via),
                    };
                    out.push(self.to_pbx(ack));
                }
            }
            TransactionEvent::Request { tx, request, .. } => self.on_request(now, tx, request),
            TransactionEvent::Ack { request, .. } => {
                for c in &mut self.incoming {
                    if let Some(d) = c.dialog.as_mut() {
                        if request.call_id().as_deref() == Some(d.call_id.as_str())
                            && d.unacked_2xx.take().is_some()
                        {
                            self.events.push(PhoneEvent::Acked);
                        }
                    }
                }
            }
            TransactionEvent::ClientTimeout { .. } => self.events.push(PhoneEvent::Failed(408)),
            TransactionEvent::ServerTimeout { .. } => {}
        }
    }

    /// `req` again with credentials answering the challenge in `resp`, sent.
    fn authorize(
        &mut self,
        now: Instant,
        req: &Request,
        resp: &Response,
    ) -> Option<(Request, ClientTxId)> {
        let (challenge_name, answer_name) = match resp.code.into_u16() {
            401 => (Name::WWW_AUTHENTICATE, Name::AUTHORIZATION),
            407 => (Name::PROXY_AUTHENTICATE, Name::PROXY_AUTHORIZATION),
            _ => return None,
        };
        let challenge = resp
            .headers
            .get_raw(&challenge_name)
            .map(|v| v.to_string())
            .find(|c| c.contains("MD5"))?;
        let uri = confero_sip::headers::uri_text(&req.uri);
        let answer = digest::answer_challenge(
            &challenge,
            &req.method.to_string(),
            &uri,
            &self.user,
            &self.password,
            1,
            "simcnonce",
        )
        .ok()?;
        let mut again = req.clone();
        let cseq = self.next_cseq();
        again.headers.remove(&Name::VIA);
        again.headers.remove(&Name::CSEQ);
        again
            .headers
            .insert(Name::VIA, self.local.via(Transport::Udp, &mut self.entropy));
        again
            .headers
            .insert(Name::CSEQ, format!("{cseq} {}", req.method));
        again.headers.insert(answer_name, answer);
        let tx = self.tl.send_request(now, again.clone(), udp(self.pbx));
        Some((again, tx))
    }

    fn on_response(
        &mut self,
        now: Instant,
        tx: ClientTxId,
        resp: Response,
        out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    ) {
        let code = resp.code.into_u16();
        if let Some((re_tx, cseq)) = self.reinvite {
            if re_tx == tx && code >= 200 {
                self.reinvite = None;
                self.events.push(PhoneEvent::Updated(code));
                if let (Some(d), true) = (
                    self.outgoing.as_ref().and_then(|o| o.dialog.as_ref()),
                    code < 300,
                ) {
                    let ack = d.ack(cseq, self.local.via(Transport::Udp, &mut self.entropy));
                    out.push(self.to_pbx(ack));
                }
                return;
            }
        }
        if let Some((req, reg_tx, authorized)) = self.register.clone() {
            if reg_tx == tx && code >= 200 {
                if code == 200 {
                    self.events.push(PhoneEvent::Registered);
                } else if !authorized {
                    if let Some((again, tx)) = self.authorize(now, &req, &resp) {
                        self.register = Some((again, tx, true));
                    }
                }
                return;
            }
        }
        let Some(o) = self.outgoing.as_ref() else {
            return;
        };
        if o.tx != tx || code < 200 {
            return;
        }
        if code >= 300 {
            if !o.authorized {
                let invite = o.invite.clone();
                if let Some((again, tx)) = self.authorize(now, &invite, &resp) {
                    self.outgoing = Some(Outgoing {
                        invite: again,
                        tx,
                        authorized: true,
                        dialog: None,
                    });
                    return;
                }
            }
            self.events.push(PhoneEvent::Failed(code));
            return;
        }
        let Some(dialog) = Dialog::uac(&o.invite, &resp, udp(self.pbx)) else {
            return;
        };
        let ack = dialog.ack_for(&o.invite, self.local.via(Transport::Udp, &mut self.entropy));
        out.push(self.to_pbx(ack));
        self.events.push(PhoneEvent::Answered {
            to_tag: dialog.remote_tag.clone(),
        });
        if let Ok(answer) = sdp::parse_audio(&resp.body) {
            self.start_media(now, answer.addr);
        }
        if let Some(o) = self.outgoing.as_mut() {
            o.dialog = Some(dialog);
        }
    }

    fn start_media(&mut self, now: Instant, to: SocketAddr) {
        self.rtp_to = Some(to);
        self.next_rtp.get_or_insert(now);
    }

    fn on_request(&mut self, now: Instant, tx: ServerTxId, req: Request) {
        let ok = |req: &Request, tag: Option<&str>| response_for(req, StatusCode::OK, tag);
        match req.method {
            Method::INVITE if req.to_tag().is_some() => self.answer_reinvite(now, tx, &req),
            Method::INVITE => {
                let mut ringing = response_for(&req, StatusCode::from(180), Some(&self.tag));
                ringing.reason = Some("Ringing".into());
                let _ = self.tl.send_response(now, tx, ringing);
                self.incoming.push(Incoming {
                    invite: req,
                    tx,
                    answer_at: self.answer_after.map(|d| now + d),
                    dialog: None,
                });
            }
            Method::CANCEL => {
                let _ = self.tl.send_response(now, tx, ok(&req, None));
                if let Some(invite_tx) = self.tl.invite_tx_for_cancel(&req) {
                    if let Some(i) = self
                        .incoming
                        .iter()
                        .position(|c| c.tx == invite_tx && c.dialog.is_none())
                    {
                        let c = self.incoming.remove(i);
                        let terminated =
                            response_for(&c.invite, StatusCode::from(487), Some(&self.tag));
                        let _ = self.tl.send_response(now, c.tx, terminated);
                        self.events.push(PhoneEvent::Cancelled);
                    }
                }
            }
            Method::BYE => {
                let _ = self.tl.send_response(now, tx, ok(&req, None));
                let call_id = req.call_id();
                let ended = |d: &Dialog| call_id.as_deref() == Some(d.call_id.as_str());
                self.incoming
                    .retain(|c| !c.dialog.as_ref().is_some_and(ended));
                if self
                    .outgoing
                    .as_ref()
                    .and_then(|o| o.dialog.as_ref())
                    .is_some_and(ended)
                {
                    self.outgoing = None;
                }
                self.rtp_to = None;
                self.next_rtp = None;
                self.events.push(PhoneEvent::Bye);
            }
            _ => {
                let _ = self.tl.send_response(now, tx, ok(&req, None));
            }
        }
    }

    /// A re-INVITE in a call it answered: 200 OK with our SDP, `recvonly` (and no more
    /// RTP from us) when the offer puts us on hold, retransmitted until ACKed.
    fn answer_reinvite(&mut self, now: Instant, tx: ServerTxId, req: &Request) {
        let held = sdp::parse_audio(&req.body).is_ok_and(|o| !o.direction.receives());
        let sdp = self.sdp_with(2, if held { "recvonly" } else { "sendrecv" });
        let call_id = req.call_id();
        let Some(d) = self
            .incoming
            .iter_mut()
            .filter_map(|c| c.dialog.as_mut())
            .find(|d| call_id.as_deref() == Some(d.call_id.as_str()))
        else {
            let gone = response_for(req, StatusCode::from(481), None);
            let _ = self.tl.send_response(now, tx, gone);
            return;
        };
        let ok = ok_with_sdp(req, &self.tag, self.local, sdp);
        let _ = self.tl.send_response(now, tx, ok.clone());
        d.unacked_2xx = Some(Unacked::new(T1, now, ok, false));
        self.sending = !held;
        self.events.push(PhoneEvent::Reinvited { held });
    }

    /// Answers incoming call `i` with 200 OK and our SDP, retransmitted until ACKed.
    fn answer(&mut self, now: Instant, i: usize) {
        let sdp = self.sdp();
        let c = &mut self.incoming[i];
        let Ok(mut dialog) = Dialog::uas(&c.invite, self.tag.clone(), udp(self.pbx)) else {
            return;
        };
        let ok = ok_with_sdp(&c.invite, &self.tag, self.local, sdp);
        let _ = self.tl.send_response(now, c.tx, ok.clone());
        dialog.unacked_2xx = Some(Unacked::new(T1, now, ok, true));
        let offer = sdp::parse_audio(&c.invite.body).ok().map(|o| o.addr);
        c.dialog = Some(dialog);
        if let Some(to) = offer {
            self.start_media(now, to);
        }
    }
}

/// Media bridges in a simulated world: as many as a server on two cores runs, so that
/// every scenario also exercises placement and legs moving between bridges.
const BRIDGES: usize = 2;

/// The engine, its media bridges, phones, and the network between them.
pub struct SimWorld {
    pub engine: Engine,
    pub bridges: Vec<Bridge>,
    /// Routes the engine's media commands to bridges, as the server's media shell does.
    pub placement: Placement,
    /// Legs moved from one bridge to another.
    pub moves: usize,
    pub net: SimNet,
    pub driver: Driver,
    pub phones: Vec<SimPhone>,
    pub pbx: SocketAddr,
    pub engine_events: Vec<EngineEvent>,
}

impl SimWorld {
    /// The standard configuration (see [`Harness::configured`]) on a network of `link`
    /// everywhere, every choice drawn from `seed`.
    pub fn new(seed: u64, link: Link) -> SimWorld {
        Self::configured(seed, link, |_| {})
    }

    /// As [`SimWorld::new`], the configuration changed by `edit`.
    pub fn configured(seed: u64, link: Link, edit: impl FnOnce(&mut Config)) -> SimWorld {
        let h = Harness::configured(edit, |s| s.seed = Some(seed));
        let pbx: SocketAddr = super::PBX.parse().unwrap();
        let prompts = Arc::new(PromptLibrary::builtin());
        let bridges = (0..BRIDGES as u64)
            .map(|i| {
                let cfg = BridgeConfig {
                    public_ip: pbx.ip(),
                    rtp_timeout: Duration::from_secs(30),
                    seed: seed + i,
                };
                Bridge::new(
                    cfg,
                    prompts.clone(),
                    h.now,
                    Duration::from_secs(1_700_000_000),
                )
            })
            .collect();
        SimWorld {
            engine: h.engine,
            bridges,
            placement: Placement::new(BRIDGES),
            moves: 0,
            net: SimNet::new(seed, link),
            driver: Driver::new(h.now),
            phones: Vec::new(),
            pbx,
            engine_events: Vec::new(),
        }
    }

    pub fn now(&self) -> Instant {
        self.driver.now()
    }

    /// Adds `user`'s phone at `ip`, sending a tone of `freq`; returns its index.
    pub fn phone(&mut self, user: &str, ip: [u8; 4], freq: f64) -> usize {
        self.phones.push(SimPhone::new(user, ip, freq, self.pbx));
        self.phones.len() - 1
    }

    /// Lets phone `i` act at the current instant, sending what it says.
    pub fn act(&mut self, i: usize, f: impl FnOnce(&mut SimPhone, Instant)) {
        let now = self.now();
        f(&mut self.phones[i], now);
        let mut out = Vec::new();
        self.phones[i].drain(now, &mut out);
        for (from, to, data) in out {
            self.net.send(now, from, to, &data);
        }
    }

    /// Runs for `d` of simulated time.
    pub fn run(&mut self, d: Duration) {
        let end = self.now() + d;
        loop {
            let phones = self.phones.iter().filter_map(SimPhone::poll_timeout).min();
            let wakeups = [
                self.engine.poll_timeout(),
                self.bridges.iter().map(Bridge::poll_timeout).min(),
                self.net.next_delivery(),
                phones,
            ];
            let now = match self.driver.step(wakeups).expect("no livelock") {
                Some(now) if now < end => now,
                _ => break,
            };
            let mut out = Vec::new();
            while let Some(d) = self.net.deliver(now) {
                if d.to == self.pbx {
                    self.engine.handle_datagram(now, &d.data, udp(d.from));
                } else if d.to.ip() == self.pbx.ip() {
                    let port = d.to.port();
                    if let Some(b) = self.bridges.iter_mut().find(|b| b.serves_port(port)) {
                        b.handle_datagram(now, port, d.from, &d.data);
                    }
                } else if let Some(p) = self.phones.iter_mut().find(|p| p.sip.ip() == d.to.ip()) {
                    p.receive(now, d.from, d.to, &d.data, &mut out);
                }
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
            }
            for b in &mut self.bridges {
                b.handle_timeout(now);
            }
            for p in &mut self.phones {
                if p.poll_timeout().is_some_and(|t| t <= now) {
                    p.handle_timeout(now, &mut out);
                }
            }
            self.flush(now, out);
        }
    }

    /// Moves everything the cores and phones produced at `now` on, until quiet.
    fn flush(&mut self, now: Instant, mut out: Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
        loop {
            let mut moved = !out.is_empty();
            for (from, to, data) in out.drain(..) {
                self.net.send(now, from, to, &data);
            }
            while let Some(cmd) = self.engine.poll_media() {
                moved = true;
                let (bridges, moves) = (&mut self.bridges, &mut self.moves);
                self.placement.route(cmd, &mut |routed| match routed {
                    Routed::To(b, cmd) => bridges[b].handle_command(now, cmd),
                    Routed::Move { leg, from, to } => {
                        if let Some(moving) = bridges[from].take_leg(leg) {
                            bridges[to].put_leg(leg, moving);
                            *moves += 1;
                        }
                    }
                });
            }
            for b in &mut self.bridges {
                while let Some(ev) = b.poll_event() {
                    moved = true;
                    self.engine.handle_media_event(now, ev);
                }
            }
            while let Some(t) = self.engine.poll_transmit() {
                moved = true;
                self.net.send(now, self.pbx, t.peer.addr, &t.data);
            }
            for b in &mut self.bridges {
                while let Some(t) = b.poll_transmit() {
                    moved = true;
                    let from = SocketAddr::new(self.pbx.ip(), t.from_port);
                    self.net.send(now, from, t.to, t.data);
                }
            }
            while let Some(ev) = self.engine.poll_event() {
                self.engine_events.push(ev);
            }
            if !moved {
                break;
            }
        }
    }
}

/// Our 200 OK to `req` (our tag `tag`) carrying `sdp`.
fn ok_with_sdp(req: &Request, tag: &str, local: Local, sdp: String) -> Response {
    let mut ok = response_for(req, StatusCode::OK, Some(tag));
    ok.headers
        .insert(Name::CONTACT, local.contact(Transport::Udp));
    ok.headers.insert(Name::CONTENT_TYPE, "application/sdp");
    ok.body = sdp.into_bytes().into();
    ok
}
