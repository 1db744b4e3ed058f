//! One call leg's RTP endpoint, sans-IO: the receive pipeline (source check, jitter buffer,
//! decoding, concealment, DTMF), the send side's RTP headers, and RTCP.
//!
//! # Driving a stream
//!
//! The IO shell owns the sockets and the clock. For every datagram on the leg's RTP (or RTCP)
//! port it calls [`MediaStream::handle_packet`]. Once per 20 ms tick of the room's clock it
//! calls [`pull_frame`](MediaStream::pull_frame) and hands the PCM to the mixer, drains
//! [`poll_dtmf`](MediaStream::poll_dtmf), encodes what the leg should hear, wraps it with
//! [`packetize`](MediaStream::packetize) and sends it to [`remote`](MediaStream::remote), then
//! sends whatever [`poll_rtcp`](MediaStream::poll_rtcp) writes. Nothing here blocks, reads the
//! clock, or allocates per packet once its buffers have grown to a frame.
//!
//! # Whom we listen to
//!
//! A stranger who can reach our RTP port must never hear the room nor speak in it. A
//! stream takes audio only from sources that match what the phone signalled, ranked by how
//! closely ([`Latch`]): the exact SDP address; the SDP port at the SDP or signalling IP (a
//! host with several addresses writes one and sends from another); and, only for a phone
//! behind NAT (its SDP names an address nobody could reach), any port at the IP its SIP
//! came from. The first acceptable packet latches the stream, a better-ranked source may
//! take it over once, and nothing else ever does: silence never releases it, and moving
//! the media takes a re-INVITE ([`set_remote`](MediaStream::set_remote)). So a stranger
//! elsewhere is never heard nor sent to, and one behind the phone's own NAT who raced its
//! first packet loses the leg as soon as a better match speaks. Browser legs need none of
//! this: str0m checks ICE consent and hands us their media under one fixed address.
//!
//! Within the accepted source the stream locks onto the first SSRC and takes another only
//! after a second of silence (a phone may restart its RTP session on hold and resume).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::codec::{CodecKind, Decoder};
use crate::dtmf::{self, EventFrame, EventReceiver, InbandDetector};
use crate::jitter::{JitterBuffer, JitterStats, Pulled};
use crate::rtp::{
    is_rtcp, ntp_from_unix, ntp_middle, parse_rtcp, parse_rtp, write_rr, write_rtp,
    write_sdes_cname, write_sr, ReceiverStats, ReportBlock, RtcpPacket, RtpHeader, SenderInfo,
};

/// An SSRC silent this long may be replaced by another from the same source.
const RELOCK_AFTER: Duration = Duration::from_secs(1);
/// With no telephone-event packet for this long, a digit whose end was lost is reported.
const EVENT_END_TIMEOUT: Duration = Duration::from_millis(300);
/// In-band digits are ignored this long after an RFC 4733 event: a phone that sends events
/// may also leak the tones into its audio.
const INBAND_SUPPRESS: Duration = Duration::from_secs(2);
/// Undelivered digits kept at most (a flood beyond this is dropped, oldest kept).
const MAX_PENDING_DIGITS: usize = 64;
/// RTCP report interval before randomisation (RFC 3550 §6.2 minimum).
const RTCP_INTERVAL: Duration = Duration::from_secs(5);

/// What the signalling layer negotiated for one leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// The audio codec.
    pub codec: CodecKind,
    /// Its payload type in the SDP answer (static or dynamic).
    pub payload_type: u8,
    /// The telephone-event payload type, if negotiated.
    pub dtmf_payload_type: Option<u8>,
    /// The address from the SDP (`c=` and `m=` port), used until a source is learned.
    pub remote: SocketAddr,
    /// Whether another source may stand for `remote` (NAT).
    pub latch: Latch,
    /// Our SSRC (random).
    pub local_ssrc: u32,
}

/// Which sources besides the exact SDP address a stream accepts; see the module
/// documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latch {
    /// The SDP address only: a browser leg, whose media str0m has already checked.
    Never,
    /// A phone or provider whose SIP came from `signalling`; `nat` when its SDP names an
    /// address nobody could reach, so its RTP comes from a port we cannot know.
    Phone {
        /// Where its SIP came from.
        signalling: IpAddr,
        /// Its SDP names an address nobody could reach.
        nat: bool,
    },
}

impl Latch {
    /// The policy for a phone whose SDP names `sdp` and whose SIP came from `signalling`.
    #[must_use]
    pub fn for_phone(sdp: SocketAddr, signalling: IpAddr) -> Latch {
        Latch::Phone {
            signalling,
            nat: sdp.ip() != signalling && !is_reachable(sdp.ip()),
        }
    }

    /// How well `from` matches what was signalled for `sdp`: 0 is a stranger.
    fn rank(self, sdp: SocketAddr, from: SocketAddr) -> u8 {
        if from == sdp {
            return 3;
        }
        let Latch::Phone { signalling, nat } = self else {
            return 0;
        };
        if from.port() == sdp.port() && from.ip() == signalling {
            2
        } else if nat && from.ip() == signalling {
            1
        } else {
            0
        }
    }
}

/// Whether an address could be the far end of a path from a server on the internet.
/// Loopback counts as reachable: it is what tests and same-host peers use.
fn is_reachable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared = a == 100 && (64..128).contains(&b);
            !(v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || shared)
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_unique_local() || v6.is_unicast_link_local())
        }
    }
}

/// Counters and quality figures for the console and the logs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamStats {
    /// RTP packets accepted (audio and telephone-event).
    pub packets_received: u64,
    /// Their payload bytes.
    pub bytes_received: u64,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Their payload bytes.
    pub bytes_sent: u64,
    /// Packets lost since the start (RFC 3550 cumulative count, never negative here).
    pub packets_lost: u64,
    /// Share of packets lost over the last RTCP reporting interval (~5 s), in percent;
    /// before the first report, since the start.
    pub loss_percent: f32,
    /// Interarrival jitter (RFC 3550 A.8) in milliseconds.
    pub jitter_ms: f32,
    /// Round-trip time from the peer's last report on our stream, if it sent one.
    pub rtt_ms: Option<f32>,
    /// Loss the peer reports on our stream, in percent.
    pub remote_loss_percent: Option<f32>,
    /// Jitter the peer reports on our stream, in milliseconds.
    pub remote_jitter_ms: Option<f32>,
    /// Datagrams that did not parse as RTP or RTCP.
    pub malformed: u64,
    /// Well-formed packets ignored: second SSRC, unexpected payload type.
    pub ignored: u64,
    /// Packets (RTP or RTCP) from a source the stream does not accept: a stranger.
    pub foreign: u64,
    /// Whether the peer sent an RTCP BYE for its source.
    pub bye: bool,
    /// When the last accepted RTP packet arrived.
    pub last_packet_at: Option<Instant>,
    /// The jitter buffer's own counters.
    pub jitter_buffer: JitterStats,
}

/// One call leg's RTP endpoint; see the module documentation.
#[derive(Debug)]
pub struct MediaStream {
    cfg: StreamConfig,
    created: Instant,
    /// The accepted source of RTP, once a packet came from it, and its rank.
    source: Option<(SocketAddr, u8)>,
    remote_ssrc: Option<u32>,
    last_rtp_at: Option<Instant>,

    jitter: JitterBuffer,
    decoder: Decoder,
    /// The last frame was skipped as quiet: the decoder's state is stale.
    after_quiet: bool,
    frame: Vec<i16>,
    events: EventReceiver,
    last_event_at: Option<Instant>,
    inband: Option<InbandDetector>,
    digits: VecDeque<char>,
    rx: ReceiverStats,

    seq: u16,
    timestamp: u32,
    /// The start timestamp of the digit being sent (RFC 4733 events keep it throughout).
    event_timestamp: u32,
    marker_next: bool,
    sent_since_report: bool,

    next_rtcp_at: Instant,
    rng: u64,
    cname: String,
    wallclock: Option<(Instant, Duration)>,
    /// Middle bits of the peer's last SR and when it arrived.
    last_sr: Option<(u32, Instant)>,
    /// Loss over the last reporting interval, in percent (as sent in our last report).
    last_interval_loss: Option<f32>,

    stats: StreamStats,
}

impl MediaStream {
    /// A stream for `cfg`, created at `now`. Sequence numbers and timestamps start at values
    /// derived from the SSRC (RFC 3550 wants them unpredictable; the SSRC already is).
    #[must_use]
    pub fn new(cfg: StreamConfig, now: Instant) -> Self {
        let kind = cfg.codec;
        let mut jitter = JitterBuffer::new(kind.rtp_clock_rate(), kind.rtp_ticks_per_frame());
        jitter.set_bytes_per_frame(kind.payload_bytes_per_frame());
        let mut rng = u64::from(cfg.local_ssrc) ^ 0x9e37_79b9_7f4a_7c15;
        let first = next_random(&mut rng);
        let mut stream = MediaStream {
            created: now,
            source: None,
            remote_ssrc: None,
            last_rtp_at: None,
            jitter,
            decoder: Decoder::new(kind),
            after_quiet: false,
            frame: Vec::with_capacity(kind.samples_per_frame()),
            events: EventReceiver::new(),
            last_event_at: None,
            inband: None,
            digits: VecDeque::new(),
            rx: ReceiverStats::new(kind.rtp_clock_rate()),
            seq: first as u16,
            timestamp: (first >> 16) as u32,
            event_timestamp: 0,
            marker_next: true,
            sent_since_report: false,
            next_rtcp_at: now,
            rng,
            cname: format!("confero-{:08x}", cfg.local_ssrc),
            wallclock: None,
            last_sr: None,
            last_interval_loss: None,
            stats: StreamStats {
                packets_received: 0,
                bytes_received: 0,
                packets_sent: 0,
                bytes_sent: 0,
                packets_lost: 0,
                loss_percent: 0.0,
                jitter_ms: 0.0,
                rtt_ms: None,
                remote_loss_percent: None,
                remote_jitter_ms: None,
                malformed: 0,
                ignored: 0,
                foreign: 0,
                bye: false,
                last_packet_at: None,
                jitter_buffer: JitterStats::default(),
            },
            cfg,
        };
        // The first report goes out after half the usual interval (RFC 3550 §6.2).
        stream.next_rtcp_at = now + stream.rtcp_interval() / 2;
        stream
    }

    /// The negotiated parameters.
    #[must_use]
    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }

    /// A report interval: 5 s scaled by a factor uniform in [0.5, 1.5) (RFC 3550 §6.3.1),
    /// so the legs of a room do not report in lock step.
    fn rtcp_interval(&mut self) -> Duration {
        let unit = (next_random(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64;
        RTCP_INTERVAL.mul_f64(0.5 + unit)
    }

    /// Tells the stream the wall-clock time (since the Unix epoch) at `now`, so RTCP sender
    /// reports carry real NTP timestamps. Without it they count from an arbitrary origin,
    /// which round-trip times do not mind.
    pub fn set_wallclock(&mut self, now: Instant, since_unix_epoch: Duration) {
        self.wallclock = Some((now, since_unix_epoch));
    }

    fn ntp_at(&self, now: Instant) -> u64 {
        let unix = match self.wallclock {
            Some((at, unix)) => unix + now.saturating_duration_since(at),
            None => now.saturating_duration_since(self.created),
        };
        ntp_from_unix(unix)
    }

    fn ssrc_silent(&self, now: Instant) -> bool {
        self.last_rtp_at
            .is_none_or(|t| now.saturating_duration_since(t) >= RELOCK_AFTER)
    }

    /// RTP or RTCP datagram from `from`. Takes RTP only from the accepted source (see the
    /// module documentation), locks onto the first SSRC and re-locks only after a silence
    /// of 1 s (a phone re-INVITE can change SSRC); drops malformed packets and counts them.
    ///
    /// RTCP is accepted from the source's IP address on any port, since without rtcp-mux it
    /// comes from the RTP port + 1.
    pub fn handle_packet(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        if is_rtcp(data) {
            self.handle_rtcp(now, data, from);
            return;
        }
        let Ok((h, payload)) = parse_rtp(data) else {
            self.stats.malformed += 1;
            return;
        };
        if !self.takes_payload_type(h.payload_type) {
            return;
        }
        if !self.accept_source(from) {
            self.stats.foreign += 1;
            return;
        }
        self.take_rtp(now, &h, payload, false);
    }

    /// Whether RTP from `from` is the phone's, latching onto it if it is the first
    /// acceptable source or a better match than the one latched.
    fn accept_source(&mut self, from: SocketAddr) -> bool {
        let latched = self.source.map(|(addr, rank)| (addr == from, rank));
        if let Some((true, _)) = latched {
            return true;
        }
        let rank = self.cfg.latch.rank(self.cfg.remote, from);
        if rank == 0 || latched.is_some_and(|(_, held)| rank <= held) {
            return false;
        }
        if latched.is_some() {
            // Whoever held the leg was not the phone: nothing of theirs may stay in the
            // buffers.
            self.remote_ssrc = None;
            self.jitter.reset();
            self.decoder.reset();
            self.events.reset();
        }
        self.source = Some((from, rank));
        true
    }

    /// An RTP packet whose source a secure transport has already authenticated (a browser's
    /// SRTP, decrypted by str0m): no address to check, nothing to parse again. `quiet`
    /// when its sender marked it as silence (the RFC 6464 level browsers send): it is
    /// counted and timed as any other, but never decoded, and the mixer does not hear it.
    pub fn handle_rtp(&mut self, now: Instant, h: &RtpHeader, payload: &[u8], quiet: bool) {
        if self.takes_payload_type(h.payload_type) {
            self.take_rtp(now, h, payload, quiet);
        }
    }

    /// Whether `pt` is the agreed audio or telephone-event number (others are counted).
    fn takes_payload_type(&mut self, pt: u8) -> bool {
        let ours = pt == self.cfg.payload_type || Some(pt) == self.cfg.dtmf_payload_type;
        if !ours {
            self.stats.ignored += 1;
        }
        ours
    }

    /// A packet of the accepted source, of an agreed payload type.
    fn take_rtp(&mut self, now: Instant, h: &RtpHeader, payload: &[u8], quiet: bool) {
        match self.remote_ssrc {
            Some(ssrc) if ssrc == h.ssrc => {}
            Some(_) if !self.ssrc_silent(now) => {
                self.stats.ignored += 1;
                return;
            }
            Some(_) => self.relock(h.ssrc),
            None => self.remote_ssrc = Some(h.ssrc),
        }

        self.last_rtp_at = Some(now);
        self.stats.last_packet_at = Some(now);
        self.stats.packets_received += 1;
        self.stats.bytes_received += payload.len() as u64;
        self.rx.update(now, h);

        if Some(h.payload_type) == self.cfg.dtmf_payload_type {
            self.last_event_at = Some(now);
            if let Some(d) = self.events.handle(h, payload) {
                self.push_digit(d);
            }
            if let Some(d) = self.events.poll_digit() {
                self.push_digit(d);
            }
        } else {
            self.jitter.insert_hinted(now, h, payload, quiet);
        }
    }

    /// A new talker behind this leg: forget everything about the old one.
    fn relock(&mut self, ssrc: u32) {
        self.remote_ssrc = Some(ssrc);
        self.jitter.reset();
        self.decoder.reset();
        self.events.reset();
        self.rx = ReceiverStats::new(self.cfg.codec.rtp_clock_rate());
        self.last_sr = None;
        self.last_interval_loss = None;
    }

    fn push_digit(&mut self, d: char) {
        if self.digits.len() < MAX_PENDING_DIGITS {
            self.digits.push_back(d);
        }
    }

    fn handle_rtcp(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        let expected_ip = self.remote().ip();
        if from.ip() != expected_ip {
            self.stats.foreign += 1;
            return;
        }
        for packet in parse_rtcp(data) {
            let packet = match packet {
                Ok(p) => p,
                Err(_) => {
                    self.stats.malformed += 1;
                    break;
                }
            };
            match packet {
                RtcpPacket::SenderReport { ssrc, info, blocks } => {
                    if Some(ssrc) == self.remote_ssrc {
                        self.last_sr = Some((ntp_middle(info.ntp), now));
                    }
                    self.read_blocks(now, blocks.iter());
                }
                RtcpPacket::ReceiverReport { blocks, .. } => self.read_blocks(now, blocks.iter()),
                RtcpPacket::Bye { .. }
                    if packet.bye_sources().any(|s| Some(s) == self.remote_ssrc) =>
                {
                    self.stats.bye = true;
                }
                _ => {}
            }
        }
    }

    /// Takes the peer's view of our stream from its report blocks, and the round-trip time
    /// from LSR/DLSR (RFC 3550 §6.4.1).
    fn read_blocks(&mut self, now: Instant, blocks: impl Iterator<Item = ReportBlock>) {
        for b in blocks.filter(|b| b.ssrc == self.cfg.local_ssrc) {
            self.stats.remote_loss_percent = Some(f32::from(b.fraction_lost) * 100.0 / 256.0);
            self.stats.remote_jitter_ms =
                Some(b.jitter as f32 * 1000.0 / self.cfg.codec.rtp_clock_rate() as f32);
            if b.last_sr != 0 {
                let arrival = ntp_middle(self.ntp_at(now));
                let rtt = arrival
                    .wrapping_sub(b.last_sr)
                    .wrapping_sub(b.delay_since_last_sr);
                // A "negative" result means a confused peer; ignore it.
                if rtt < 1 << 31 {
                    self.stats.rtt_ms = Some(rtt as f32 * 1000.0 / 65536.0);
                }
            }
        }
    }

    /// One 20 ms tick of received audio at `codec.sample_rate()`: decoded, concealed, or
    /// `None` when nothing has been received recently.
    pub fn pull_frame(&mut self, now: Instant) -> Option<&[i16]> {
        if self
            .last_event_at
            .is_some_and(|t| now.saturating_duration_since(t) >= EVENT_END_TIMEOUT)
        {
            if let Some(d) = self.events.flush() {
                self.push_digit(d);
            }
        }
        let n = self.cfg.codec.samples_per_frame();
        self.frame.clear();
        match self.jitter.pop(now) {
            Pulled::Frame(payload) => {
                if std::mem::take(&mut self.after_quiet) {
                    // A talkspurt after skipped frames starts from a clean decoder rather
                    // than one that still expects the frames it never saw.
                    self.decoder.reset();
                }
                self.decoder.decode(payload, &mut self.frame);
            }
            Pulled::Lost if self.after_quiet => return None,
            Pulled::Lost => self.decoder.conceal(&mut self.frame),
            Pulled::Quiet => {
                self.after_quiet = true;
                return None;
            }
            Pulled::Empty => return None,
        }
        // A peer's odd packet size must not change the frame size the mixer sees.
        self.frame.resize(n, 0);
        if let Some(det) = &mut self.inband {
            if let Some(d) = det.process(&self.frame) {
                let events_active = self
                    .last_event_at
                    .is_some_and(|t| now.saturating_duration_since(t) < INBAND_SUPPRESS);
                if !events_active {
                    self.push_digit(d);
                }
            }
        }
        Some(&self.frame)
    }

    /// RFC 4733 digits, and in-band digits when [`enable_inband`](Self::enable_inband) is on
    /// (the leg pulls frames, so detection runs in [`pull_frame`](Self::pull_frame)).
    #[must_use]
    pub fn poll_dtmf(&mut self) -> Option<char> {
        self.digits.pop_front()
    }

    /// Turns in-band DTMF detection on or off (on for legs without telephone-event).
    pub fn enable_inband(&mut self, on: bool) {
        match (on, self.inband.is_some()) {
            (true, false) => self.inband = Some(InbandDetector::new(self.cfg.codec.sample_rate())),
            (false, true) => self.inband = None,
            _ => {}
        }
    }

    /// Builds the RTP packet carrying `payload` (one encoded 20 ms frame), appending it to
    /// `out`; advances sequence number and timestamp. The marker bit is set on the first
    /// packet and on the first after [`skip_frames`](Self::skip_frames).
    pub fn packetize(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let h = RtpHeader {
            payload_type: self.cfg.payload_type,
            marker: self.marker_next,
            sequence: self.seq,
            timestamp: self.timestamp,
            ssrc: self.cfg.local_ssrc,
        };
        write_rtp(&h, payload, out);
        self.marker_next = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self
            .timestamp
            .wrapping_add(self.cfg.codec.rtp_ticks_per_frame());
        self.sent_since_report = true;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
    }

    /// Builds the RFC 4733 packet for one tick of an outgoing digit instead of audio;
    /// returns false (and builds nothing) when the peer agreed no telephone-event, so the
    /// caller sends the audio frame. The timestamp advances as for audio, so the stream
    /// goes on in step after the event.
    pub fn packetize_event(&mut self, ev: EventFrame, out: &mut Vec<u8>) -> bool {
        let Some(pt) = self.cfg.dtmf_payload_type else {
            return false;
        };
        let frame = self.cfg.codec.rtp_ticks_per_frame();
        if ev.start {
            self.event_timestamp = self.timestamp;
        }
        let duration = u16::try_from(frame.saturating_mul(ev.ticks)).unwrap_or(u16::MAX);
        let Some(payload) = dtmf::event_payload(ev.digit, ev.end, 10, duration) else {
            return false;
        };
        let h = RtpHeader {
            payload_type: pt,
            marker: ev.start,
            sequence: self.seq,
            timestamp: self.event_timestamp,
            ssrc: self.cfg.local_ssrc,
        };
        write_rtp(&h, &payload, out);
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(frame);
        self.marker_next = ev.end;
        self.sent_since_report = true;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
        true
    }

    /// Records `frames` ticks on which nothing was sent (silence suppression, a muted leg,
    /// ticks the bridge skipped to catch up): the timestamp keeps pace with the clock and
    /// the next packet starts a talkspurt, so the receiver sees a gap, not a slip.
    pub fn skip_frames(&mut self, frames: u32) {
        if frames == 0 {
            return;
        }
        let ticks = self.cfg.codec.rtp_ticks_per_frame().wrapping_mul(frames);
        self.timestamp = self.timestamp.wrapping_add(ticks);
        self.marker_next = true;
    }

    /// Appends an RTCP compound packet (SR if we sent RTP since the last report, else RR;
    /// then SDES CNAME) to `out` when a report is due, every ~5 s randomised within RFC 3550
    /// bounds (deterministic given the SSRC); returns whether it did.
    #[must_use]
    pub fn poll_rtcp(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if now < self.next_rtcp_at {
            return false;
        }
        self.next_rtcp_at = now + self.rtcp_interval();
        let mut blocks = [ReportBlock::default(); 1];
        let n = match self.remote_ssrc {
            Some(ssrc) if self.rx.received() > 0 => {
                let (lsr, dlsr) = match self.last_sr {
                    Some((lsr, at)) => {
                        let waited = now.saturating_duration_since(at);
                        let dlsr = (waited.as_secs_f64() * 65536.0).min(f64::from(u32::MAX));
                        (lsr, dlsr as u32)
                    }
                    None => (0, 0),
                };
                blocks[0] = self.rx.report(ssrc, lsr, dlsr);
                self.last_interval_loss = Some(f32::from(blocks[0].fraction_lost) * 100.0 / 256.0);
                1
            }
            _ => 0,
        };
        if self.sent_since_report {
            let info = SenderInfo {
                ntp: self.ntp_at(now),
                rtp_timestamp: self.timestamp,
                packet_count: self.stats.packets_sent as u32,
                octet_count: self.stats.bytes_sent as u32,
            };
            write_sr(self.cfg.local_ssrc, &info, &blocks[..n], out);
        } else {
            write_rr(self.cfg.local_ssrc, &blocks[..n], out);
        }
        write_sdes_cname(self.cfg.local_ssrc, &self.cname, out);
        self.sent_since_report = false;
        true
    }

    /// Where to send: the learned source, or the SDP address until one is learned.
    #[must_use]
    pub fn remote(&self) -> SocketAddr {
        self.source.map_or(self.cfg.remote, |(addr, _)| addr)
    }

    /// A new SDP address (and signalling address) from a re-INVITE: the only way media
    /// moves once a source is accepted. If either differs, the source and SSRC are learned
    /// again under the new policy.
    pub fn set_remote(&mut self, addr: SocketAddr, latch: Latch) {
        if addr != self.cfg.remote || latch != self.cfg.latch {
            self.cfg.remote = addr;
            self.cfg.latch = latch;
            self.source = None;
            self.remote_ssrc = None;
        }
    }

    /// Counters and quality figures.
    #[must_use]
    pub fn stats(&self) -> StreamStats {
        StreamStats {
            packets_lost: self.rx.cumulative_lost().max(0) as u64,
            loss_percent: self
                .last_interval_loss
                .unwrap_or_else(|| self.rx.fraction_lost() * 100.0),
            jitter_ms: self.rx.jitter_ms(),
            jitter_buffer: self.jitter.stats(),
            ..self.stats
        }
    }

    /// Time since the last accepted RTP packet (or since creation), for "participant stopped
    /// sending".
    #[must_use]
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_rtp_at.unwrap_or(self.created))
    }
}

/// xorshift64*: enough randomness for report jitter and SSRCs, reproducible from the seed.
pub(crate) fn next_random(state: &mut u64) -> u64 {
    if *state == 0 {
        *state = 0x2545_f491_4f6c_dd1d;
    }
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoder;
    use crate::dtmf::event_payload;
    use crate::tone::{DualTone, Tone};

    const PHONE: &str = "192.0.2.10:4000";
    const NAT: &str = "198.51.100.7:31000";
    const STRANGER: &str = "203.0.113.66:5000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn config(ssrc: u32) -> StreamConfig {
        StreamConfig {
            codec: CodecKind::Pcmu,
            payload_type: 0,
            dtmf_payload_type: Some(101),
            remote: addr(PHONE),
            latch: Latch::Never,
            local_ssrc: ssrc,
        }
    }

    /// A phone behind NAT: SDP names a private address, SIP came from `NAT`'s address.
    fn nat_config(ssrc: u32) -> StreamConfig {
        let private = addr("10.0.0.5:4000");
        StreamConfig {
            remote: private,
            latch: Latch::for_phone(private, addr(NAT).ip()),
            ..config(ssrc)
        }
    }

    /// A phone's sending side: encodes a tone and numbers packets.
    struct Phone {
        ssrc: u32,
        seq: u16,
        ts: u32,
        tone: Tone,
        enc: Encoder,
    }

    impl Phone {
        fn new(ssrc: u32) -> Phone {
            Phone {
                ssrc,
                seq: 1000,
                ts: 50_000,
                tone: Tone::new(8000, 440.0, 8000),
                enc: Encoder::new(CodecKind::Pcmu),
            }
        }

        fn audio(&mut self) -> Vec<u8> {
            let mut pcm = Vec::new();
            self.tone.fill(160, &mut pcm);
            let mut payload = Vec::new();
            self.enc.encode(&pcm, &mut payload);
            self.packet(0, &payload)
        }

        fn packet(&mut self, pt: u8, payload: &[u8]) -> Vec<u8> {
            let h = RtpHeader {
                payload_type: pt,
                marker: false,
                sequence: self.seq,
                timestamp: self.ts,
                ssrc: self.ssrc,
            };
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(160);
            let mut out = Vec::new();
            write_rtp(&h, payload, &mut out);
            out
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn learns_source_and_ignores_strangers_and_second_ssrc() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(nat_config(1), t0);
        assert_eq!(s.remote(), addr("10.0.0.5:4000"));
        let mut phone = Phone::new(0xaaaa);
        let mut intruder = Phone::new(0xbbbb);
        let mut frames = 0;
        for i in 0..50u64 {
            s.handle_packet(at(t0, i * 20), &phone.audio(), addr(NAT));
            // Same SSRC from another address, and another SSRC from the latched address.
            s.handle_packet(at(t0, i * 20 + 1), &phone.audio(), addr(STRANGER));
            s.handle_packet(at(t0, i * 20 + 2), &intruder.audio(), addr(NAT));
            frames += usize::from(s.pull_frame(at(t0, i * 20 + 10)).is_some());
        }
        assert_eq!(s.remote(), addr(NAT));
        let st = s.stats();
        assert_eq!(st.packets_received, 50);
        assert_eq!((st.foreign, st.ignored), (50, 50));
        assert!(frames >= 47, "{frames}");

        // After a second of silence a new SSRC from the same source (a phone restarting its
        // RTP session on resume) takes over.
        let mut new_phone = Phone::new(0xcccc);
        s.handle_packet(at(t0, 2100), &new_phone.audio(), addr(NAT));
        assert_eq!(s.stats().packets_received, 51);
        assert_eq!(s.idle_for(at(t0, 2150)), Duration::from_millis(50));
    }

    #[test]
    fn silence_never_hands_the_leg_to_a_stranger() {
        let t0 = Instant::now();
        for cfg in [config(1), nat_config(1)] {
            let mut s = MediaStream::new(cfg, t0);
            let mut phone = Phone::new(0xaaaa);
            let from = match cfg.latch {
                Latch::Phone { nat: true, .. } => addr(NAT),
                _ => addr(PHONE),
            };
            for i in 0..10u64 {
                s.handle_packet(at(t0, i * 20), &phone.audio(), from);
            }
            // Ten seconds of silence (a muted phone, a phone before its first word), then a
            // stranger elsewhere and one at the phone's own IP, with the phone's SSRC too.
            let mut stranger = Phone::new(0xaaaa);
            let same_ip_other_port = SocketAddr::new(from.ip(), from.port() + 2);
            for i in 0..100u64 {
                let t = at(t0, 10_000 + i * 20);
                s.handle_packet(t, &stranger.audio(), addr(STRANGER));
                s.handle_packet(t, &stranger.audio(), same_ip_other_port);
                let _ = s.pull_frame(t);
            }
            assert_eq!(s.remote(), from, "the mix still goes to the phone");
            let st = s.stats();
            assert_eq!(
                (st.packets_received, st.foreign),
                (10, 200),
                "{:?}",
                cfg.latch
            );
            // The phone speaks again and is heard.
            s.handle_packet(at(t0, 13_000), &phone.audio(), from);
            assert_eq!(s.stats().packets_received, 11);
        }
    }

    #[test]
    fn the_signalled_address_wins_over_a_stranger_who_raced_it() {
        let t0 = Instant::now();
        // A phone behind NAT whose SDP names its private address, and a stranger behind
        // the same NAT who sends before the phone's first packet: the stranger latches.
        let private = addr("192.168.1.20:4000");
        let public = addr(NAT).ip();
        let cfg = StreamConfig {
            remote: private,
            latch: Latch::for_phone(private, public),
            ..config(1)
        };
        let mut s = MediaStream::new(cfg, t0);
        let racer = SocketAddr::new(public, 6000);
        let mut stranger = Phone::new(0xbbbb);
        s.handle_packet(t0, &stranger.audio(), racer);
        assert_eq!(s.remote(), racer);
        // The phone turns out to be reachable at the exact address it signalled (the PBX
        // is on its LAN too): that address wins, and stays.
        let mut phone = Phone::new(0xaaaa);
        for i in 1..20u64 {
            s.handle_packet(at(t0, i * 20), &phone.audio(), private);
            s.handle_packet(at(t0, i * 20 + 1), &stranger.audio(), racer);
        }
        assert_eq!(s.remote(), private);
        let st = s.stats();
        assert_eq!((st.packets_received, st.foreign), (20, 19));
        // What the racer sent was thrown away with the latch: only the phone is played.
        assert_eq!(st.jitter_buffer.buffered, 19, "{st:?}");
    }

    #[test]
    fn a_phone_not_behind_nat_is_heard_only_at_its_sdp_port() {
        let t0 = Instant::now();
        let phone_addr = addr(PHONE);
        for sig in [phone_addr.ip(), addr(NAT).ip()] {
            let cfg = StreamConfig {
                latch: Latch::for_phone(phone_addr, sig),
                ..config(1)
            };
            let mut s = MediaStream::new(cfg, t0);
            // Strangers first, on the phone's IP, on the signalling IP, elsewhere: nothing
            // latches.
            let mut stranger = Phone::new(0xbbbb);
            for from in [
                SocketAddr::new(phone_addr.ip(), 6000),
                addr(NAT),
                addr(STRANGER),
            ] {
                s.handle_packet(t0, &stranger.audio(), from);
            }
            assert_eq!(s.remote(), phone_addr);
            let mut phone = Phone::new(0xaaaa);
            s.handle_packet(at(t0, 20), &phone.audio(), phone_addr);
            let st = s.stats();
            assert_eq!((st.packets_received, st.foreign), (1, 3));
        }
    }

    #[test]
    fn a_host_with_two_addresses_is_heard_from_the_one_it_signals_from() {
        let t0 = Instant::now();
        // The SDP names the host's public address, packets leave from the address its SIP
        // came from, on the port the SDP names.
        let sig = addr(NAT).ip();
        let cfg = StreamConfig {
            latch: Latch::for_phone(addr(PHONE), sig),
            ..config(1)
        };
        let mut s = MediaStream::new(cfg, t0);
        let from = SocketAddr::new(sig, addr(PHONE).port());
        let mut phone = Phone::new(0xaaaa);
        let mut stranger = Phone::new(0xbbbb);
        for i in 0..10u64 {
            s.handle_packet(at(t0, i * 20), &phone.audio(), from);
            s.handle_packet(
                at(t0, i * 20),
                &stranger.audio(),
                SocketAddr::new(sig, 6000),
            );
        }
        assert_eq!(s.remote(), from);
        let st = s.stats();
        assert_eq!((st.packets_received, st.foreign), (10, 10));
    }

    #[test]
    fn latching_to_any_port_is_allowed_only_behind_nat() {
        let sig: IpAddr = "198.51.100.7".parse().unwrap();
        let nat = |sdp: &str, sig: IpAddr| match Latch::for_phone(addr(sdp), sig) {
            Latch::Phone { signalling, nat } => {
                assert_eq!(signalling, sig);
                nat
            }
            Latch::Never => panic!("phones always have a signalling address"),
        };
        for private in ["10.0.0.5:4000", "192.168.1.20:4000", "172.16.3.4:4000"] {
            assert!(nat(private, sig), "{private}");
        }
        for odd in [
            "100.64.1.1:4000",
            "169.254.0.9:4000",
            "0.0.0.0:4000",
            "[fd00::5]:4000",
        ] {
            assert!(nat(odd, sig), "{odd}");
        }
        // A phone on the LAN, signalling from the address its SDP names.
        assert!(!nat("192.168.1.20:4000", "192.168.1.20".parse().unwrap()));
        // Public addresses, the signalling one or another (a provider's media server).
        assert!(!nat("198.51.100.7:9000", sig));
        assert!(!nat(PHONE, sig));
        assert!(!nat("127.0.0.1:4000", "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn frames_the_sender_called_quiet_are_not_decoded_nor_mixed() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(config(1), t0);
        let mut phone = Phone::new(0xaaaa);
        let mut heard = String::new();
        // 20 loud frames, 20 the browser marked as silence, 20 loud again.
        for i in 0..60u64 {
            let quiet = (20..40).contains(&i);
            let packet = phone.audio();
            let (h, payload) = parse_rtp(&packet).unwrap();
            s.handle_rtp(at(t0, i * 20), &h, payload, quiet);
            heard.push(match s.pull_frame(at(t0, i * 20 + 10)) {
                Some(_) => 'f',
                None => '.',
            });
        }
        let st = s.stats();
        assert_eq!(
            st.packets_received, 60,
            "quiet packets still count as received"
        );
        assert_eq!(st.jitter_buffer.quiet, 20, "{heard}");
        // Played in order after the start delay: the 20 quiet frames produce nothing.
        assert!(heard.contains(&".".repeat(20)), "{heard}");
        assert!(heard.ends_with("fff"), "audio comes back: {heard}");
    }

    #[test]
    fn relayed_digits_go_out_as_rfc4733_events_a_receiver_reads_once_each() {
        let t0 = Instant::now();
        let mut tx = MediaStream::new(config(0x77), t0);
        let mut rx = MediaStream::new(config(1), t0);
        let mut sender = dtmf::EventSender::default();
        for d in "19#".chars() {
            sender.push(d);
        }
        sender.push('x'); // not a digit: dropped
        let (mut events, mut audio) = (0, 0);
        for tick in 0..60u64 {
            let mut out = Vec::new();
            match sender.tick() {
                dtmf::SendTick::Event(ev) => {
                    assert!(tx.packetize_event(ev, &mut out));
                    events += 1;
                }
                dtmf::SendTick::Audio => {
                    tx.packetize(&[0xff; 160], &mut out);
                    audio += 1;
                }
            }
            let (h, _) = parse_rtp(&out).unwrap();
            assert_eq!(h.ssrc, 0x77);
            rx.handle_packet(at(t0, tick * 20), &out, addr(PHONE));
            let _ = rx.pull_frame(at(t0, tick * 20 + 10));
        }
        assert!(sender.is_idle());
        assert_eq!(events, 3 * 8, "5 updates and 3 end packets per digit");
        assert_eq!(audio, 60 - 24);
        let got: String = std::iter::from_fn(|| rx.poll_dtmf()).collect();
        assert_eq!(got, "19#");
        // Without telephone-event agreed, the caller is told to send audio.
        let mut cfg = config(2);
        cfg.dtmf_payload_type = None;
        let mut plain = MediaStream::new(cfg, t0);
        let ev = dtmf::EventFrame {
            digit: '5',
            start: true,
            end: false,
            ticks: 1,
        };
        assert!(!plain.packetize_event(ev, &mut Vec::new()));
    }

    #[test]
    fn set_remote_relearns_the_source() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(nat_config(1), t0);
        let mut phone = Phone::new(7);
        s.handle_packet(t0, &phone.audio(), addr(NAT));
        // A re-INVITE from the phone's new network, behind another NAT.
        let moved_to = addr("203.0.113.66:5002");
        let latch = Latch::for_phone(addr("10.1.1.1:4000"), moved_to.ip());
        s.set_remote(addr("10.1.1.1:4000"), latch);
        assert_eq!(s.remote(), addr("10.1.1.1:4000"));
        let mut moved = Phone::new(8);
        s.handle_packet(at(t0, 20), &moved.audio(), moved_to);
        s.handle_packet(at(t0, 40), &phone.audio(), addr(NAT));
        assert_eq!(s.remote(), moved_to);
        assert_eq!(s.stats().packets_received, 2);
        assert_eq!(s.stats().foreign, 1, "the old address is a stranger now");
        // The same description again changes nothing.
        s.set_remote(addr("10.1.1.1:4000"), latch);
        assert_eq!(s.remote(), moved_to);
    }

    #[test]
    fn malformed_and_unexpected_packets_are_counted() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(config(1), t0);
        let mut phone = Phone::new(7);
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x80],
            vec![0x40; 20],                                                // version 1
            vec![0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],                   // CSRC overflow
            vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0, 9], // extension past end
            vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9],             // padding > payload
            vec![0x80, 201, 0, 9, 0, 0, 0, 1],                             // RTCP length past end
        ];
        for b in &bad {
            s.handle_packet(t0, b, addr(PHONE));
        }
        assert_eq!(s.stats().malformed, bad.len() as u64);
        // Comfort noise (PT 13) is well-formed but not ours.
        s.handle_packet(t0, &phone.packet(13, &[40]), addr(PHONE));
        assert_eq!(s.stats().ignored, 1);
        // Malformed packets latch nothing.
        assert_eq!(s.stats().packets_received, 0);
        assert_eq!(s.pull_frame(at(t0, 100)), None);
    }

    #[test]
    fn random_datagrams_never_panic() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(config(1), t0);
        s.enable_inband(true);
        let mut rng = 42u64;
        let mut buf = Vec::new();
        for i in 0..20_000u64 {
            let len = (next_random(&mut rng) % 200) as usize;
            buf.clear();
            buf.extend((0..len).map(|_| next_random(&mut rng) as u8));
            if let Some(b) = buf.first_mut() {
                *b = (*b & 0x3f) | 0x80;
            }
            if let Some(b) = buf.get_mut(1) {
                // Mostly our payload types or RTCP.
                *b = [0, 101, 200, 201, 203, *b][(i % 6) as usize];
            }
            s.handle_packet(at(t0, i), &buf, addr(PHONE));
            if i % 20 == 0 {
                let _ = s.pull_frame(at(t0, i));
                while s.poll_dtmf().is_some() {}
                let mut out = Vec::new();
                let _ = s.poll_rtcp(at(t0, i), &mut out);
            }
        }
        let _ = s.stats();
    }

    #[test]
    fn pulls_decoded_concealed_then_nothing() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(config(1), t0);
        let mut phone = Phone::new(7);
        let mut kinds = String::new();
        for i in 0..30u64 {
            let pkt = phone.audio();
            // Packets 10 and 11 are lost; the phone stops after 20.
            if i < 20 && i != 10 && i != 11 {
                s.handle_packet(at(t0, i * 20), &pkt, addr(PHONE));
            }
            let frame = s.pull_frame(at(t0, i * 20 + 5)).map(<[i16]>::to_vec);
            assert!(frame.as_ref().is_none_or(|f| f.len() == 160));
            kinds.push(match frame {
                None => '.',
                Some(f) if f.iter().any(|&x| x.abs() > 4000) => 'A',
                Some(_) => 'q',
            });
        }
        // Two ticks of filling; concealment keeps the tone through the loss and for two
        // frames after the phone stops; then the stream is idle.
        // Two lost in the network, two concealed before the buffer declares the stream idle.
        assert_eq!(kinds, format!("..{}......", "A".repeat(22)));
        assert_eq!(s.stats().jitter_buffer.lost, 2 + 2);
    }

    #[test]
    fn rfc4733_digits_once_and_inband_digits() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(config(1), t0);
        let mut phone = Phone::new(7);
        let mut t = 0;
        for digit in "159#".chars() {
            let ts = phone.ts;
            for k in 0..6u16 {
                let end = k >= 3;
                let payload = event_payload(digit, end, 10, 160 * (k + 1)).unwrap();
                let mut pkt = phone.packet(101, &payload);
                pkt[4..8].copy_from_slice(&ts.to_be_bytes()); // one event, one timestamp
                s.handle_packet(at(t0, t), &pkt, addr(PHONE));
                t += 20;
            }
        }
        let got: String = std::iter::from_fn(|| s.poll_dtmf()).collect();
        assert_eq!(got, "159#");

        // A leg without telephone-event: in-band detection on what it pulls.
        let mut cfg = config(2);
        cfg.dtmf_payload_type = None;
        let mut s = MediaStream::new(cfg, t0);
        s.enable_inband(true);
        let mut enc = Encoder::new(CodecKind::Pcmu);
        let mut phone = Phone::new(9);
        let mut pcm = Vec::new();
        for d in "42".chars() {
            DualTone::dtmf(8000, d, 6000).unwrap().fill(800, &mut pcm);
            pcm.resize(pcm.len() + 800, 0);
        }
        let mut got = String::new();
        for (i, frame) in pcm.chunks(160).enumerate() {
            let mut payload = Vec::new();
            enc.encode(frame, &mut payload);
            let pkt = phone.packet(0, &payload);
            s.handle_packet(at(t0, i as u64 * 20), &pkt, addr(PHONE));
            let _ = s.pull_frame(at(t0, i as u64 * 20 + 5));
            got.extend(s.poll_dtmf());
        }
        for k in 0..5u64 {
            let _ = s.pull_frame(at(t0, 400 + k * 20));
            got.extend(s.poll_dtmf());
        }
        assert_eq!(got, "42");
    }

    #[test]
    fn lost_event_end_is_flushed_by_timeout() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(config(1), t0);
        let mut phone = Phone::new(7);
        let payload = event_payload('*', false, 10, 160).unwrap();
        s.handle_packet(t0, &phone.packet(101, &payload), addr(PHONE));
        let _ = s.pull_frame(at(t0, 100));
        assert_eq!(s.poll_dtmf(), None);
        let _ = s.pull_frame(at(t0, 400));
        assert_eq!(s.poll_dtmf(), Some('*'));
    }

    #[test]
    fn dtmf_flood_is_bounded() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(config(1), t0);
        let mut phone = Phone::new(7);
        for i in 0..1000u64 {
            let payload = event_payload('7', true, 10, 160).unwrap();
            s.handle_packet(at(t0, i), &phone.packet(101, &payload), addr(PHONE));
        }
        let got: Vec<char> = std::iter::from_fn(|| s.poll_dtmf()).collect();
        assert_eq!(got.len(), MAX_PENDING_DIGITS);
        assert!(got.iter().all(|&d| d == '7'));
    }

    #[test]
    fn packetize_numbers_and_marks() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(config(0x1234), t0);
        let mut out = Vec::new();
        s.packetize(&[0xff; 160], &mut out);
        s.packetize(&[0xff; 160], &mut out);
        let (a, pa) = parse_rtp(&out[..172]).unwrap();
        let (b, _) = parse_rtp(&out[172..]).unwrap();
        assert!(a.marker && !b.marker);
        assert_eq!(b.sequence, a.sequence.wrapping_add(1));
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(160));
        assert_eq!((a.ssrc, a.payload_type, pa.len()), (0x1234, 0, 160));
        s.skip_frames(10);
        out.clear();
        s.packetize(&[0xff; 160], &mut out);
        let (c, _) = parse_rtp(&out).unwrap();
        assert!(c.marker);
        assert_eq!(c.timestamp, b.timestamp.wrapping_add(160 * 11));
        assert_eq!(c.sequence, b.sequence.wrapping_add(1));
        let st = s.stats();
        assert_eq!((st.packets_sent, st.bytes_sent), (3, 480));
    }

    #[test]
    fn rtcp_schedule_is_randomised_and_reproducible() {
        let t0 = Instant::now();
        let due = |ssrc| {
            let mut s = MediaStream::new(config(ssrc), t0);
            let mut times = Vec::new();
            let mut out = Vec::new();
            for ms in (0..60_000).step_by(20) {
                out.clear();
                if s.poll_rtcp(at(t0, ms), &mut out) {
                    times.push(ms);
                    let kinds: Vec<_> = parse_rtcp(&out).collect();
                    assert_eq!(kinds.len(), 2);
                    assert!(matches!(kinds[0], Ok(RtcpPacket::ReceiverReport { .. })));
                }
            }
            times
        };
        let a = due(1);
        assert_eq!(a, due(1));
        assert_ne!(a, due(2));
        assert!((1250..=3750).contains(&a[0]), "{a:?}");
        for w in a.windows(2) {
            assert!((2500..=7520).contains(&(w[1] - w[0])), "{a:?}");
        }
    }

    /// Two streams talking through a link with 40 ms one-way delay and 10 % loss one way:
    /// each learns the other's loss and jitter, and both measure the 80 ms round trip.
    #[test]
    fn rtcp_between_two_legs_measures_loss_and_rtt() {
        let t0 = Instant::now();
        let a_addr = addr("10.0.0.1:4000");
        let b_addr = addr("10.0.0.2:5000");
        let mut a = MediaStream::new(
            StreamConfig {
                remote: b_addr,
                ..config(0xa)
            },
            t0,
        );
        let mut b = MediaStream::new(
            StreamConfig {
                remote: a_addr,
                ..config(0xb)
            },
            t0,
        );
        a.set_wallclock(t0, Duration::from_secs(1_700_000_000));
        // In flight: (arrival ms, to_b, datagram).
        let mut wire: Vec<(u64, bool, Vec<u8>)> = Vec::new();
        let mut rng = 5u64;
        for ms in (0..30_000u64).step_by(20) {
            let now = at(t0, ms);
            wire.sort_by_key(|w| w.0);
            while wire.first().is_some_and(|w| w.0 <= ms) {
                let (_, to_b, data) = wire.remove(0);
                if to_b {
                    b.handle_packet(now, &data, a_addr);
                } else {
                    a.handle_packet(now, &data, b_addr);
                }
            }
            let _ = a.pull_frame(now);
            let _ = b.pull_frame(now);
            for (s, to_b) in [(&mut a, true), (&mut b, false)] {
                let mut pkt = Vec::new();
                s.packetize(&[0xff; 160], &mut pkt);
                let lost = to_b && next_random(&mut rng) % 10 == 0;
                if !lost {
                    wire.push((ms + 40, to_b, pkt));
                }
                let mut rtcp = Vec::new();
                if s.poll_rtcp(now, &mut rtcp) {
                    wire.push((ms + 40, to_b, rtcp));
                }
            }
        }
        let (sa, sb) = (a.stats(), b.stats());
        let rtt_a = sa.rtt_ms.unwrap();
        let rtt_b = sb.rtt_ms.unwrap();
        assert!((78.0..=82.0).contains(&rtt_a), "{sa:?}");
        assert!((78.0..=82.0).contains(&rtt_b), "{sb:?}");
        // B lost ~10 % of A's packets and told A so.
        assert!(sb.packets_lost > 100, "{sb:?}");
        let remote = sa.remote_loss_percent.unwrap();
        assert!((3.0..=20.0).contains(&remote), "{sa:?}");
        assert_eq!(sb.remote_loss_percent, Some(0.0));
        assert!(sa.remote_jitter_ms.unwrap() < 1.0);
    }

    #[test]
    fn rtcp_from_elsewhere_is_ignored_and_bye_noted() {
        let t0 = Instant::now();
        let mut s = MediaStream::new(nat_config(1), t0);
        let mut phone = Phone::new(7);
        s.handle_packet(t0, &phone.audio(), addr(NAT));
        let mut bye = Vec::new();
        crate::rtp::write_bye(7, &mut bye);
        s.handle_packet(t0, &bye, addr(STRANGER));
        assert!(!s.stats().bye);
        assert_eq!(s.stats().foreign, 1);
        // Same IP, RTP port + 1: accepted.
        s.handle_packet(t0, &bye, addr("198.51.100.7:31001"));
        assert!(s.stats().bye);
    }
}
