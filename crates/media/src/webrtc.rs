//! A browser's audio leg: WebRTC through str0m (ICE-lite, DTLS-SRTP, BUNDLE, rtcp-mux),
//! sans-IO like the rest of this crate.
//!
//! str0m does the transport: ICE connectivity checks, the DTLS handshake, SRTP, RTCP. What
//! comes out of it — an RTP header and the decrypted payload — goes straight into a
//! [`MediaStream`](crate::stream::MediaStream) — so browsers get the same jitter buffer,
//! concealment, RFC 4733 digits and statistics as desk phones — and what the mixer encodes
//! for the leg goes in as one frame per tick.
//!
//! # Driving a leg
//! [`WebRtcLeg::accept`] answers the browser's offer (the SDP answer goes into the 200 OK).
//! The shell then feeds every datagram of the leg's UDP port to
//! [`handle_datagram`](WebRtcLeg::handle_datagram), calls
//! [`handle_timeout`](WebRtcLeg::handle_timeout) when [`poll_timeout`](WebRtcLeg::poll_timeout)
//! is due, gives each encoded frame to [`send_frame`](WebRtcLeg::send_frame), and drains
//! [`poll_output`](WebRtcLeg::poll_output) after each of these.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::crypto::dtls::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt, TelephoneEvent};
use str0m::net::{Protocol, Receive};
use str0m::rtp::Extension;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::codec::CodecKind;
use crate::rtp::RtpHeader;

/// A browser that has not completed ICE and DTLS this long after the offer/answer (a
/// handshake that never finishes, a firewall in the way) is given up on.
const CONNECT_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// The payload type we would pick for telephone-event at 8 kHz (the browser's number wins).
const TELEPHONE_EVENT_PT: u8 = 101;
/// RFC 4733 events at Opus's clock: browsers send digits at the clock of the audio
/// codec when they can, and str0m will only send them that way.
const TELEPHONE_EVENT_48K_PT: u8 = 110;

/// Why a browser's offer could not be answered, or a leg broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebRtcError {
    /// The SDP could not be read.
    #[error("unreadable WebRTC offer: {0}")]
    BadOffer(String),
    /// str0m could not answer (or apply) it.
    #[error("cannot answer the offer: {0}")]
    Refused(String),
    /// No audio codec both sides take.
    #[error("no audio codec in common (we take Opus, G.722, PCMU, PCMA)")]
    NoCommonCodec,
    /// The address we would announce is not a valid ICE candidate.
    #[error("our address cannot be a candidate: {0}")]
    BadCandidate(String),
}

/// What the answer agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The SDP answer for the 200 OK.
    pub sdp: String,
    /// The audio codec the browser sends and we send.
    pub codec: CodecKind,
    /// Its payload type, as agreed.
    pub payload_type: u8,
    /// telephone-event at the codec's RTP clock, if the browser offered it.
    pub dtmf_payload_type: Option<u8>,
    /// Audio flows both ways (`sendrecv`): nobody holds the call, so the browser's
    /// silence counts toward the RTP timeout.
    pub two_way: bool,
}

/// What the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebRtcOutput {
    /// A datagram to send from the leg's port.
    Transmit {
        /// Where to.
        to: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// A received media packet, decrypted, for the leg's stream
    /// ([`MediaStream::handle_rtp`](crate::stream::MediaStream::handle_rtp)); `quiet` when
    /// the browser's RFC 6464 audio level says it carries only silence.
    Rtp {
        /// The RTP header, with the payload type the stream knows.
        header: RtpHeader,
        /// The decrypted payload.
        payload: Arc<[u8]>,
        /// The browser said it is silence.
        quiet: bool,
    },
    /// ICE, DTLS and SRTP are up: media flows.
    Connected,
    /// The browser is gone (ICE lost it, or it closed DTLS); the leg should end.
    Gone(String),
}

/// One browser audio leg.
pub struct WebRtcLeg {
    rtc: Rtc,
    local: SocketAddr,
    mid: Option<Mid>,
    codec: CodecKind,
    payload_type: Pt,
    dtmf_payload_type: Option<u8>,
    /// Our media time, in str0m's units for the codec.
    send_time: u64,
    send_clock: Frequency,
    /// The SSRC written in the RTP packets handed to the stream (any constant will do:
    /// the stream locks onto it).
    recv_ssrc: u32,
    timeout: Instant,
    out: VecDeque<WebRtcOutput>,
    gone: bool,
    /// Our offer, while the browser has not answered it.
    pending: Option<SdpPendingOffer>,
    /// ICE and DTLS must be up by then, or the leg is given up.
    connect_by: Option<Instant>,
}

impl std::fmt::Debug for WebRtcLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcLeg")
            .field("local", &self.local)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

/// str0m's view of each codec: its codec id and the clock its media times use.
fn str0m_codec(kind: CodecKind) -> (Codec, Frequency) {
    match kind {
        CodecKind::Pcmu => (Codec::PCMU, Frequency::EIGHT_KHZ),
        CodecKind::Pcma => (Codec::PCMA, Frequency::EIGHT_KHZ),
        // str0m counts G.722 in 16 kHz units and writes the 8 kHz RTP clock (RFC 3551).
        CodecKind::G722 => (Codec::G722, Frequency::SIXTEEN_KHZ),
        CodecKind::Opus => (Codec::Opus, Frequency::FORTY_EIGHT_KHZ),
    }
}

fn kind_of(codec: Codec) -> Option<CodecKind> {
    match codec {
        Codec::PCMU => Some(CodecKind::Pcmu),
        Codec::PCMA => Some(CodecKind::Pcma),
        Codec::G722 => Some(CodecKind::G722),
        Codec::Opus => Some(CodecKind::Opus),
        _ => None,
    }
}

/// One DTLS certificate for every leg of the process, made once. Making one per leg is a
/// key generation in the media thread at every join (a stall when many join together);
/// the keys of each call are still its own (the handshake is ephemeral Diffie-Hellman), a
/// browser only checks that the fingerprint in our SDP matches the certificate, and a
/// restart makes a new one, as Janus and other media servers do.
fn dtls_cert() -> Option<DtlsCert> {
    static CERT: OnceLock<Option<DtlsCert>> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    })
    .clone()
}

/// The Rtc of a leg: ICE-lite, our codecs in our order, no reordering hold-back.
fn new_rtc(now: Instant, local: SocketAddr) -> Result<Rtc, WebRtcError> {
    let mut cfg = RtcConfig::new()
        .set_ice_lite(true)
        .clear_codecs()
        // Our order is the answer's order, and the browser sends the first: Opus (what
        // browsers do best, with in-band FEC), then G.722, G.711 for the rest.
        .enable_opus(true, false)
        .enable_g722(true, false)
        .enable_pcmu(true, false)
        .enable_pcma(true, false)
        // Our own jitter buffer orders packets; str0m must not hold them back.
        .set_reordering_size_audio(0)
        // Only what audio needs: the level (to skip silence) and the mid (BUNDLE). No
        // transport-wide congestion feedback: there is no bandwidth to estimate for one
        // Opus stream, and applying browsers' reports cost more than decoding them.
        .clear_extension_map()
        .set_extension(1, Extension::AudioLevel)
        .set_extension(4, Extension::RtpMid);
    for (pt, clock) in [
        (TELEPHONE_EVENT_48K_PT, Frequency::FORTY_EIGHT_KHZ),
        (TELEPHONE_EVENT_PT, Frequency::EIGHT_KHZ),
    ] {
        cfg.codec_config().add_config(
            Pt::from(pt),
            None,
            Codec::Tele,
            clock,
            None,
            FormatParams::default(),
        );
    }
    if let Some(cert) = dtls_cert() {
        cfg = cfg.set_dtls_cert(cert);
    }
    let mut rtc = cfg.build(now);
    let candidate =
        Candidate::host(local, "udp").map_err(|e| WebRtcError::BadCandidate(e.to_string()))?;
    rtc.add_local_candidate(candidate);
    Ok(rtc)
}

impl WebRtcLeg {
    fn new(rtc: Rtc, local: SocketAddr, now: Instant) -> WebRtcLeg {
        WebRtcLeg {
            rtc,
            local,
            mid: None,
            codec: CodecKind::Pcmu,
            payload_type: Pt::from(0),
            dtmf_payload_type: None,
            send_time: 0,
            send_clock: Frequency::EIGHT_KHZ,
            recv_ssrc: 0x5eed_ca11,
            timeout: now,
            out: VecDeque::new(),
            gone: false,
            pending: None,
            connect_by: Some(now + CONNECT_WITHIN),
        }
    }

    /// Answers `offer` for a leg whose media arrives at `local` (our advertised address
    /// and the leg's UDP port: the one ICE candidate we announce).
    pub fn accept(
        now: Instant,
        local: SocketAddr,
        offer: &str,
    ) -> Result<(WebRtcLeg, Answer), WebRtcError> {
        let mut rtc = new_rtc(now, local)?;
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| WebRtcError::Refused(e.to_string()))?;
        let sdp = answer.to_sdp_string();
        let mut leg = WebRtcLeg::new(rtc, local, now);
        leg.drain(now);
        if leg.mid.is_none() {
            leg.mid = first_audio_mid(&sdp);
        }
        let agreed = leg.agreed(sdp)?;
        Ok((leg, agreed))
    }

    /// A new offer from the browser on this leg (hold, resume, a codec change): str0m
    /// answers it. The answer's direction says whether the browser still sends.
    pub fn reoffer(&mut self, now: Instant, offer: &str) -> Result<Answer, WebRtcError> {
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| WebRtcError::Refused(e.to_string()))?;
        self.drain(now);
        self.agreed(answer.to_sdp_string())
    }

    /// Our offer to a browser the PBX calls (the SDP goes into the INVITE); the browser's
    /// answer comes back through [`accept_answer`](Self::accept_answer).
    pub fn offer(now: Instant, local: SocketAddr) -> Result<(WebRtcLeg, String), WebRtcError> {
        let rtc = new_rtc(now, local)?;
        let mut leg = WebRtcLeg::new(rtc, local, now);
        let mut api = leg.rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| WebRtcError::Refused("nothing to offer".into()))?;
        leg.mid = Some(mid);
        leg.pending = Some(pending);
        // The callee may ring for a minute: the clock starts at the answer.
        leg.connect_by = None;
        leg.drain(now);
        Ok((leg, offer.to_sdp_string()))
    }

    /// The browser's answer to our offer.
    pub fn accept_answer(&mut self, now: Instant, answer: &str) -> Result<Answer, WebRtcError> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| WebRtcError::Refused("no offer is waiting for an answer".into()))?;
        let parsed =
            SdpAnswer::from_sdp_string(answer).map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, parsed)
            .map_err(|e| WebRtcError::Refused(e.to_string()))?;
        self.connect_by = Some(now + CONNECT_WITHIN);
        self.drain(now);
        self.agreed(answer.to_owned())
    }

    /// What was agreed for the audio (read from str0m once the exchange is done).
    fn agreed(&mut self, sdp: String) -> Result<Answer, WebRtcError> {
        let mid = self.mid.ok_or(WebRtcError::NoCommonCodec)?;
        let writer = self.rtc.writer(mid).ok_or(WebRtcError::NoCommonCodec)?;
        let mut audio = None;
        let mut events = Vec::new();
        for p in writer.payload_params() {
            let spec = p.spec();
            if spec.codec == Codec::Tele {
                events.push((spec.clock_rate, *p.pt()));
            } else if audio.is_none() {
                audio = kind_of(spec.codec).map(|k| (k, p.pt()));
            }
        }
        let (codec, pt) = audio.ok_or(WebRtcError::NoCommonCodec)?;
        // The events at the audio clock if agreed, else at 8 kHz.
        let clock = str0m_codec(codec).1;
        let dtmf = events
            .iter()
            .find(|(c, _)| *c == clock)
            .or_else(|| events.iter().find(|(c, _)| *c == Frequency::EIGHT_KHZ))
            .map(|(_, pt)| *pt);
        self.codec = codec;
        self.payload_type = pt;
        self.dtmf_payload_type = dtmf;
        self.send_clock = str0m_codec(codec).1;
        Ok(Answer {
            two_way: answer_two_way(&sdp),
            sdp,
            codec,
            payload_type: *pt,
            dtmf_payload_type: dtmf,
        })
    }

    /// Where the browser must send: the candidate we announced.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// One datagram received on the leg's port.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else {
            return; // not STUN, DTLS or SRTP: a stranger's noise
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local,
                contents,
            },
        );
        if !self.rtc.accepts(&input) {
            return;
        }
        if let Err(err) = self.rtc.handle_input(input) {
            tracing::debug!(%err, "WebRTC input refused");
        }
        self.drain(now);
    }

    /// Time passes (call when [`poll_timeout`](Self::poll_timeout) is due, or every tick).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.connect_by.is_some_and(|t| now >= t) {
            self.connect_by = None;
            self.fail("ICE and DTLS did not complete".into());
        }
        if now >= self.timeout {
            if let Err(err) = self.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(%err, "WebRTC timeout handling failed");
            }
            self.drain(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.connect_by
            .map_or(self.timeout, |t| t.min(self.timeout))
    }

    /// One encoded 20 ms frame for the browser (dropped by str0m until connected).
    pub fn send_frame(&mut self, now: Instant, payload: &[u8]) {
        let Some(mid) = self.mid else { return };
        let time = MediaTime::new(self.send_time, self.send_clock);
        self.send_time += self.frame_ticks();
        if let Some(writer) = self.rtc.writer(mid) {
            if let Err(err) = writer.write(self.payload_type, now, time, payload.to_vec()) {
                tracing::debug!(%err, "WebRTC write failed");
            }
        }
        self.drain(now);
    }

    /// `frames` 20 ms frames were never sent (the bridge skipped them): the next frame is
    /// stamped as media time says.
    pub fn skip_frames(&mut self, frames: u32) {
        self.send_time += u64::from(frames) * self.frame_ticks();
    }

    /// One 20 ms frame at the send clock.
    fn frame_ticks(&self) -> u64 {
        20 * u64::from(self.send_clock.get()) / 1000
    }

    /// Queues a whole digit (RFC 4733, on the telephone-event number agreed at the audio
    /// clock): str0m sends its packets over `length` beside the audio, which goes on as
    /// usual. False when the browser agreed no such telephone-event.
    pub fn send_digit(&mut self, now: Instant, digit: char, length: Duration) -> bool {
        let (Some(mid), Some(_), Some(code)) = (
            self.mid,
            self.dtmf_payload_type,
            crate::dtmf::event_code(digit),
        ) else {
            return false;
        };
        let time = MediaTime::new(self.send_time, self.send_clock);
        let event = TelephoneEvent {
            event: code,
            end: true,
            volume: 10,
            duration: length,
        };
        let sent = match self.rtc.writer(mid) {
            Some(w) => {
                match w
                    .telephone_event(event)
                    .write(self.payload_type, now, time, Vec::<u8>::new())
                {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::debug!(%err, "a digit could not be sent");
                        false
                    }
                }
            }
            None => false,
        };
        self.drain(now);
        sent
    }

    /// The next thing for the shell to act on.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<WebRtcOutput> {
        self.out.pop_front()
    }

    /// The audio codec agreed.
    pub fn codec(&self) -> CodecKind {
        self.codec
    }

    /// Runs str0m until it wants time to pass, turning what it says into outputs.
    fn drain(&mut self, now: Instant) {
        loop {
            let output = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(err) => {
                    self.fail(format!("WebRTC failed: {err}"));
                    return;
                }
            };
            match output {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return;
                }
                Output::Transmit(t) => self.out.push_back(WebRtcOutput::Transmit {
                    to: t.destination,
                    data: t.contents.to_vec(),
                }),
                Output::Event(e) => self.on_event(now, e),
            }
        }
    }

    fn fail(&mut self, why: String) {
        if !self.gone {
            self.gone = true;
            self.out.push_back(WebRtcOutput::Gone(why));
        }
    }

    fn on_event(&mut self, _now: Instant, event: Event) {
        match event {
            Event::Connected => {
                self.connect_by = None;
                self.out.push_back(WebRtcOutput::Connected);
            }
            Event::MediaAdded(m) if self.mid.is_none() => self.mid = Some(m.mid),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail("the browser stopped answering ICE checks".into());
            }
            Event::MediaData(d) => {
                let spec = d.params.spec();
                // Digits on whichever events number the browser used go out on the one
                // the stream knows, in their own clock.
                let (pt, clock) = match (spec.codec, self.dtmf_payload_type) {
                    (Codec::Tele, Some(pt)) => (pt, spec.clock_rate.get()),
                    (Codec::Tele, None) => return,
                    _ => (*d.pt, self.codec.rtp_clock_rate()),
                };
                let timestamp = rebase(d.time, clock);
                let header = RtpHeader {
                    payload_type: pt,
                    marker: false,
                    sequence: d.seq_range.start().as_u16(),
                    timestamp,
                    ssrc: self.recv_ssrc,
                };
                let quiet = spec.codec != Codec::Tele && is_quiet(&d.ext_vals);
                self.out.push_back(WebRtcOutput::Rtp {
                    header,
                    payload: d.data,
                    quiet,
                });
            }
            _ => {}
        }
    }
}

/// Below this level (dBov) a frame cannot be heard in a mix of voices; browsers measure it
/// before encoding, so it is known without decoding (RFC 6464).
const QUIET_DBOV: i8 = -50;

/// Whether the browser said this frame is silence: a low level and no voice detected.
fn is_quiet(ext: &str0m::rtp::ExtensionValues) -> bool {
    ext.audio_level.is_some_and(|l| l <= QUIET_DBOV) && ext.voice_activity != Some(true)
}

/// A media time in `clock` units, as a (wrapping) RTP timestamp.
fn rebase(t: MediaTime, clock: u32) -> u32 {
    let denom = u128::from(t.denom().max(1));
    (u128::from(t.numer()) * u128::from(clock) / denom) as u32
}

/// Whether, by the answer `sdp` (ours or the browser's), audio flows both ways: any
/// other direction means one side holds the call, and a holding side may fall silent
/// (RFC 3264 §8.4 lets it stop sending), so its silence is no sign of a dead browser.
fn answer_two_way(sdp: &str) -> bool {
    let mut in_audio = false;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio");
        } else if in_audio && matches!(line, "a=sendonly" | "a=recvonly" | "a=inactive") {
            return false;
        }
    }
    true
}

/// The first audio m-line's mid in an SDP answer.
fn first_audio_mid(sdp: &str) -> Option<Mid> {
    let mut in_audio = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio");
        } else if in_audio {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                return Some(Mid::from(mid.trim()));
            }
        }
    }
    None
}
