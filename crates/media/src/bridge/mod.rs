//! The media bridge: every leg, mix and player of one media thread, as one sans-IO state
//! machine.
//!
//! A [`Bridge`] owns the audio side of call legs — their [`MediaStream`]s, browser
//! transports, prompt players — and the mixes they meet in: conference rooms and the
//! private two-party mixes of anchored calls. It opens no socket and reads no clock; its
//! shell (in the server) binds the UDP ports the engine picked, then drives it:
//!
//! ```text
//! bridge.handle_command(now, cmd)              // what the signalling engine decided
//! bridge.handle_datagram(now, port, from, data) // each datagram read on a leg's port
//! bridge.handle_timeout(now)                    // at bridge.poll_timeout(): a tick
//! while let Some(t) = bridge.poll_transmit() { send t.data from t.from_port to t.to }
//! while let Some(ev) = bridge.poll_event() { hand ev to the engine }
//! ```
//!
//! # One tick (every 20 ms)
//! 1. Each leg's stream yields its frame for now (decoded, concealed or none); digits
//!    found in it are reported; a leg silent past the RTP timeout is reported failed.
//! 2. Each mix is mixed once (a room's join or leave tone comes in as an announcement).
//! 3. Each leg is sent one packet: its mix's payload, or else what its player plays
//!    (prompts, then hold music or silence), encoded for it; a digit relayed from the
//!    other side of its call replaces the audio while it lasts. RTCP reports follow.
//! 4. Talking changes and, every 2 s, each leg's statistics are reported.
//!
//! Commands apply between ticks, never inside one (pjmedia's conference bridge rule).
//!
//! # Invariants
//! - A leg is in at most one mix; a mix exists while it has a member.
//! - Every datagram is matched to a leg by the local port it arrived on; the leg's stream
//!   decides whether its source may speak for the leg.
//! - Once a leg is reported failed nothing more is reported for it but what its close
//!   undoes; the engine closes every leg exactly once.
//! - Nothing allocates per packet once buffers have grown (outgoing datagrams share one
//!   buffer per tick), except browser legs, whose transport (str0m) hands out owned
//!   buffers.
//!
//! Bridges are independent: several may run side by side, each on its own thread with
//! its own ports and mixes.

mod player;
pub mod prompt;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{CodecKind, Encoder};
use crate::dtmf::{EventSender, SendTick, SEND_TONE_TICKS};
use crate::idmap::IdMap;
use crate::mixer::Mixer;
use crate::stream::{next_random, Latch, MediaStream, StreamConfig};
use crate::webrtc::{Answer, WebRtcLeg, WebRtcOutput};
use player::Player;
pub use prompt::{Prompt, PromptError, PromptLibrary};

/// The engine's handle for a call leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

impl std::fmt::Display for LegId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The period of the bridge's clock: one frame of every leg per tick.
pub const TICK: Duration = Duration::from_millis(20);
/// How long a relayed digit sounds on a browser leg (str0m sends the whole event).
const DIGIT_LENGTH: Duration = Duration::from_millis(20 * SEND_TONE_TICKS as u64);
const STATS_EVERY: Duration = Duration::from_secs(2);
/// When the bridge is driven this late it skips the ticks it missed rather than running
/// them in a burst (an overloaded machine, a suspended one, a debugger).
const RESYNC_AFTER: Duration = Duration::from_millis(100);
/// Datagrams kept for a leg that calls a browser while the browser's answer is on its way
/// (its first ICE checks may arrive before the answer reaches us).
const MAX_EARLY_DATAGRAMS: usize = 16;

/// A mix: a conference room, or the private mix of an anchored two-party call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MixId {
    /// A conference room, by its configuration id.
    Room(i64),
    /// The private mix of an anchored call, by the engine's id for it.
    Call(u64),
}

/// What a plain-RTP leg agreed in SDP, in media terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegMedia {
    /// The codec both sides use.
    pub codec: CodecKind,
    /// Its RTP payload type, as the peer numbered it.
    pub payload_type: u8,
    /// RFC 4733 telephone-events, if agreed.
    pub dtmf_payload_type: Option<u8>,
    /// The address in the peer's SDP.
    pub remote: SocketAddr,
    /// Audio flows both ways (`sendrecv`): only then does the peer's silence count toward
    /// the RTP timeout. A phone that holds the call (`sendonly`, `inactive`) may stop
    /// sending for as long as the hold lasts, as may one that only listens.
    pub two_way: bool,
}

/// What the signalling engine asks of the bridge. Legs are opened before anything is
/// played to them and closed exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaCommand {
    /// Start a plain-RTP leg on `port` (RTCP on `port + 1` unless multiplexed; the shell
    /// has bound both).
    Open {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// The local UDP port the shell bound for it.
        port: u16,
        /// What SDP agreed.
        media: LegMedia,
        /// RTCP shares the RTP port (RFC 5761), as offered.
        rtcp_mux: bool,
        /// Where the peer's SIP came from: a phone behind NAT sends its RTP from there,
        /// whatever its SDP says (the stream decides whom to listen to).
        signalled_from: IpAddr,
    },
    /// Start a browser's leg (ICE-lite, DTLS-SRTP) on `port` answering its `offer`;
    /// answered with [`MediaEvent::WebRtcAnswer`] or `Failed`.
    OpenWebRtc {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// The local UDP port the shell bound for it.
        port: u16,
        /// The browser's SDP offer.
        offer: String,
    },
    /// Prepare a leg on `port` that calls a browser: the offer comes back in
    /// [`MediaEvent::WebRtcOffer`].
    OfferWebRtc {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// The local UDP port the shell bound for it.
        port: u16,
    },
    /// A browser's new offer on a running leg (hold, resume): answered with
    /// [`MediaEvent::WebRtcAnswer`] or refused with [`MediaEvent::WebRtcRefused`].
    ReofferWebRtc {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// The browser's SDP offer.
        offer: String,
    },
    /// The browser's answer to the offer of [`MediaCommand::OfferWebRtc`].
    AnswerWebRtc {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// The browser's SDP answer.
        answer: String,
    },
    /// A re-INVITE changed a plain-RTP leg's remote address, codec or direction.
    Update {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// What SDP agreed.
        media: LegMedia,
        /// As in [`MediaCommand::Open`].
        signalled_from: IpAddr,
    },
    /// Play prompts to a leg that is in no mix, then hold music if `then_music`, else
    /// silence; `seq` comes back in [`MediaEvent::PlaybackDone`] so that a stale end is
    /// told from the current one.
    Play {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// Played in order.
        prompts: Vec<Prompt>,
        /// Hold music after the prompts, else silence.
        then_music: bool,
        /// Echoed in [`MediaEvent::PlaybackDone`].
        seq: u32,
    },
    /// Put the leg in a mix (it hears the others and is heard), leaving any other.
    Mix {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// The mix it joins.
        mix: MixId,
    },
    /// Take the leg out of its mix (before playing to it alone).
    Unmix {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
    },
    /// A short tone everyone in the mix hears.
    MixTone {
        /// The mix that hears it.
        mix: MixId,
        /// A short recording (a join or leave tone).
        tone: Prompt,
    },
    /// Mute or unmute the leg in its mix.
    Mute {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// Heard by nobody, while still hearing the mix.
        muted: bool,
    },
    /// Send a digit to the peer of this leg (RFC 4733 where agreed): relayed from the
    /// other side of an anchored call.
    SendDigit {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
        /// `0`–`9`, `*`, `#` or `A`–`D`.
        digit: char,
    },
    /// Where a leg about to open is headed (a room, an anchored call's private mix). A
    /// bridge has nothing to do with it: a shell running several bridges opens the leg on
    /// the bridge of that mix (see [`crate::placement`]), so that it joins without moving.
    Place {
        /// The leg, as the engine will name it when it opens it.
        leg: LegId,
        /// The mix it will join.
        near: MixId,
    },
    /// The leg is gone: forget it (the shell frees its ports).
    Close {
        /// The leg, as the engine named it when it opened it.
        leg: LegId,
    },
}

impl MediaCommand {
    /// The leg the command concerns (a mix's tone concerns none).
    pub fn leg(&self) -> Option<LegId> {
        match self {
            MediaCommand::Open { leg, .. }
            | MediaCommand::OpenWebRtc { leg, .. }
            | MediaCommand::OfferWebRtc { leg, .. }
            | MediaCommand::ReofferWebRtc { leg, .. }
            | MediaCommand::AnswerWebRtc { leg, .. }
            | MediaCommand::Update { leg, .. }
            | MediaCommand::Play { leg, .. }
            | MediaCommand::Mix { leg, .. }
            | MediaCommand::Unmix { leg }
            | MediaCommand::Mute { leg, .. }
            | MediaCommand::SendDigit { leg, .. }
            | MediaCommand::Place { leg, .. }
            | MediaCommand::Close { leg } => Some(*leg),
            MediaCommand::MixTone { .. } => None,
        }
    }
}

/// What the bridge reports to the signalling engine.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaEvent {
    /// A key pressed on the leg's phone (RFC 4733 events or in-band tones).
    Digit {
        /// The leg it happened on.
        leg: LegId,
        /// `0`–`9`, `*`, `#` or `A`–`D`, once per key press.
        digit: char,
    },
    /// The prompts of a [`MediaCommand::Play`] ran out.
    PlaybackDone {
        /// The leg it happened on.
        leg: LegId,
        /// The `seq` of the [`MediaCommand::Play`] that ended.
        seq: u32,
    },
    /// The leg started or stopped talking.
    Talking {
        /// The leg it happened on.
        leg: LegId,
        /// Whether voice is heard from it now (with a hangover between words).
        talking: bool,
    },
    /// Call quality, every 2 s.
    Stats {
        /// The leg it happened on.
        leg: LegId,
        /// Loss, jitter and round-trip time so far.
        stats: LegStats,
    },
    /// The SDP offer for a [`MediaCommand::OfferWebRtc`] leg.
    WebRtcOffer {
        /// The leg it happened on.
        leg: LegId,
        /// Our SDP offer, for the INVITE to the browser.
        offer: String,
    },
    /// The answer to a browser's offer (or what its answer to ours agreed, with the SDP
    /// we were given).
    WebRtcAnswer {
        /// The leg it happened on.
        leg: LegId,
        /// The SDP and what it agreed.
        answer: Answer,
    },
    /// A browser's new offer could not be answered; the leg goes on as it was.
    WebRtcRefused {
        /// The leg it happened on.
        leg: LegId,
        /// Why, for the logs and the refusal the engine sends.
        reason: String,
    },
    /// The leg cannot go on (no RTP for too long, a browser gone, an offer that cannot be
    /// answered): the engine ends its call and closes it.
    Failed {
        /// The leg it happened on.
        leg: LegId,
        /// Why, for the logs and the refusal the engine sends.
        reason: String,
    },
}

/// Call quality of a leg, as RTCP and the jitter buffer see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegStats {
    /// RTP packets received.
    pub packets_received: u64,
    /// RTP packets lost (sequence gaps).
    pub packets_lost: u64,
    /// Lost in the last report interval.
    pub loss_percent: f32,
    /// Interarrival jitter (RFC 3550).
    pub jitter_ms: f32,
    /// Round-trip time, once RTCP measured it.
    pub rtt_ms: Option<f32>,
}

/// A datagram to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// The local port to send from (the leg's RTP port, or its RTCP port).
    pub from_port: u16,
    /// Where to.
    pub to: SocketAddr,
    /// The datagram.
    pub data: &'a [u8],
}

/// What a bridge is told once, at start.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The address browsers are told to send to (our one ICE candidate).
    pub public_ip: IpAddr,
    /// A leg whose peer should send and has sent nothing this long is gone (a phone
    /// crashed, a network cut).
    pub rtp_timeout: Duration,
    /// Seeds the bridge's randomness (SSRCs): a simulated run replays exactly.
    pub seed: u64,
}

/// How the bridge kept time since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockStats {
    /// 20 ms ticks run.
    pub ticks: u64,
    /// Times it was driven more than 100 ms late and skipped what it missed.
    pub overruns: u64,
    /// Ticks skipped: 20 ms of silence each in every outgoing stream, whose RTP
    /// timestamps move on with the clock (a receiver sees a gap, not a slip).
    pub skipped_ticks: u64,
}

/// Outgoing datagrams of one drive of the bridge, back to back in one buffer.
#[derive(Default)]
struct Outbox {
    data: Vec<u8>,
    /// (from port, to, start, end) in `data`.
    queue: VecDeque<(u16, SocketAddr, usize, usize)>,
}

impl Outbox {
    /// Queues what `write` appends to the buffer (nothing queued if it appends nothing).
    fn push_with(&mut self, from_port: u16, to: SocketAddr, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.data.len();
        write(&mut self.data);
        if self.data.len() > start {
            self.queue
                .push_back((from_port, to, start, self.data.len()));
        }
    }
}

struct Leg {
    port: u16,
    /// Where RTCP goes out from when it is not multiplexed on the RTP port.
    rtcp_port: Option<u16>,
    stream: MediaStream,
    encoder: Encoder,
    /// Digits relayed to this leg from the other side of its call.
    digits: EventSender,
    player: Player,
    mix: Option<MixId>,
    talking: bool,
    last_stats: Instant,
    /// Whether the far end is expected to send: only then does silence count toward the
    /// RTP timeout.
    expect_rtp: bool,
    /// Since when RTP is expected (silence before, e.g. on hold, does not count).
    expect_since: Instant,
    /// A failure was reported; the engine will close the leg.
    failed: bool,
    /// A browser's leg: str0m carries the media over the port (ICE, DTLS-SRTP, rtcp-mux).
    webrtc: Option<Box<WebRtcLeg>>,
}

impl Leg {
    fn new(port: u16, rtcp_port: Option<u16>, stream: MediaStream, now: Instant) -> Leg {
        Leg {
            port,
            rtcp_port,
            encoder: Encoder::new(stream.config().codec),
            stream,
            digits: EventSender::default(),
            player: Player::idle(),
            mix: None,
            talking: false,
            last_stats: now,
            expect_rtp: true,
            expect_since: now,
            failed: false,
            webrtc: None,
        }
    }

    /// `frames` ticks were skipped: what goes out next is stamped as media time says.
    fn skip_frames(&mut self, frames: u32) {
        match self.webrtc.as_mut() {
            Some(rtc) => rtc.skip_frames(frames),
            None => self.stream.skip_frames(frames),
        }
    }

    /// Acts on what a browser leg's transport produced: datagrams out, media into the
    /// stream, its end to the engine.
    fn drain_webrtc(
        &mut self,
        id: LegId,
        now: Instant,
        out: &mut Outbox,
        events: &mut VecDeque<MediaEvent>,
    ) {
        let Some(rtc) = self.webrtc.as_mut() else {
            return;
        };
        while let Some(output) = rtc.poll_output() {
            match output {
                WebRtcOutput::Transmit { to, data } => {
                    out.push_with(self.port, to, |buf| buf.extend_from_slice(&data));
                }
                WebRtcOutput::Rtp {
                    header,
                    payload,
                    quiet,
                } => self.stream.handle_rtp(now, &header, &payload, quiet),
                WebRtcOutput::Connected => tracing::debug!(leg = %id, "WebRTC connected"),
                WebRtcOutput::Gone(reason) => report_failed(&mut self.failed, id, reason, events),
            }
        }
    }
}

/// Reports leg `id` failed, once (`failed` remembers that it was).
fn report_failed(failed: &mut bool, id: LegId, reason: String, events: &mut VecDeque<MediaEvent>) {
    if !std::mem::replace(failed, true) {
        events.push_back(MediaEvent::Failed { leg: id, reason });
    }
}

/// A leg on its way from one bridge to another ([`Bridge::take_leg`], [`Bridge::put_leg`]).
pub struct MovingLeg(Moving);

enum Moving {
    Running(Box<Leg>),
    Offering(Offering),
}

impl std::fmt::Debug for MovingLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, port) = match &self.0 {
            Moving::Running(l) => ("running", l.port),
            Moving::Offering(o) => ("offering", o.port),
        };
        f.debug_struct("MovingLeg")
            .field("state", &what)
            .field("port", &port)
            .finish()
    }
}

/// A leg calling a browser, waiting for its answer to our offer.
struct Offering {
    port: u16,
    rtc: Box<WebRtcLeg>,
    early: Vec<(SocketAddr, Vec<u8>)>,
}

struct Mix {
    mixer: Mixer,
    members: BTreeSet<LegId>,
    /// The tone the mix is playing, and how far.
    tone: Option<(Prompt, usize)>,
}

/// Scratch buffers reused by every tick.
#[derive(Default)]
struct Scratch {
    pcm: Vec<i16>,
    payload: Vec<u8>,
}

/// See the [module documentation](self).
pub struct Bridge {
    cfg: BridgeConfig,
    prompts: Arc<PromptLibrary>,
    legs: IdMap<LegId, Leg>,
    offering: IdMap<LegId, Offering>,
    /// Local port (RTP, or RTCP when not multiplexed) → its leg.
    ports: IdMap<u16, LegId>,
    mixes: IdMap<MixId, Mix>,
    next_tick: Instant,
    /// The latest time the bridge was driven with: a datagram's arrival may be earlier
    /// (the shell passes the kernel's receive time), which browser transports, keeping
    /// their own timers, must not see.
    driven_at: Instant,
    /// Wall-clock time at `next_tick`'s origin, for RTCP sender reports.
    wallclock: (Instant, Duration),
    rng: u64,
    events: VecDeque<MediaEvent>,
    out: Outbox,
    scratch: Scratch,
    clock: ClockStats,
}

/// A leg's stream, taking audio from the sources `latch` allows.
fn stream_for(
    media: &LegMedia,
    latch: Latch,
    ssrc: u32,
    now: Instant,
    wallclock: (Instant, Duration),
) -> MediaStream {
    let mut stream = MediaStream::new(
        StreamConfig {
            codec: media.codec,
            payload_type: media.payload_type,
            dtmf_payload_type: media.dtmf_payload_type,
            remote: media.remote,
            latch,
            local_ssrc: ssrc,
        },
        now,
    );
    let (at, unix) = wallclock;
    stream.set_wallclock(now, unix + now.saturating_duration_since(at));
    stream
}

/// A browser leg's media in the stream's terms. Its packets come authenticated from str0m
/// ([`MediaStream::handle_rtp`]), so the address is never matched against; it is what
/// WebRTC SDP itself writes (`c=IN IP4 0.0.0.0`, port 9).
fn webrtc_media(answer: &Answer) -> LegMedia {
    LegMedia {
        codec: answer.codec,
        payload_type: answer.payload_type,
        dtmf_payload_type: answer.dtmf_payload_type,
        remote: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9),
        two_way: answer.two_way,
    }
}

impl Bridge {
    /// An empty bridge whose first tick is at `now`; `unix_now` is the wall-clock time at
    /// `now`, for the NTP times of RTCP sender reports.
    pub fn new(
        cfg: BridgeConfig,
        prompts: Arc<PromptLibrary>,
        now: Instant,
        unix_now: Duration,
    ) -> Bridge {
        Bridge {
            rng: cfg.seed,
            cfg,
            prompts,
            legs: IdMap::default(),
            offering: IdMap::default(),
            ports: IdMap::default(),
            mixes: IdMap::default(),
            next_tick: now,
            driven_at: now,
            wallclock: (now, unix_now),
            events: VecDeque::new(),
            out: Outbox::default(),
            scratch: Scratch::default(),
            clock: ClockStats::default(),
        }
    }

    /// How the bridge kept time: ticks run, overruns, ticks skipped.
    #[must_use]
    pub fn clock_stats(&self) -> ClockStats {
        self.clock
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called: the next tick.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// The next thing to tell the engine.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// The next datagram to send. The buffer is reused once everything is taken.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        match self.out.queue.pop_front() {
            Some((from_port, to, start, end)) => Some(Transmit {
                from_port,
                to,
                data: &self.out.data[start..end],
            }),
            None => {
                self.out.data.clear();
                None
            }
        }
    }

    /// Legs open (browser legs waiting for an answer included).
    pub fn leg_count(&self) -> usize {
        self.legs.len() + self.offering.len()
    }

    /// Whether a leg of this bridge owns local port `port` (a simulated network's routing,
    /// which the kernel does for the server's sockets).
    pub fn serves_port(&self, port: u16) -> bool {
        self.ports.contains_key(&port)
    }

    /// Mixes with at least one member.
    pub fn mix_count(&self) -> usize {
        self.mixes.len()
    }

    fn next_ssrc(&mut self) -> u32 {
        (next_random(&mut self.rng) >> 32) as u32
    }

    fn fail(&mut self, leg: LegId, reason: String) {
        self.events.push_back(MediaEvent::Failed { leg, reason });
    }

    /// Where our browser candidate is for a leg on `port`.
    fn local(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.cfg.public_ip, port)
    }

    /// What the engine decided, applied between two ticks.
    pub fn handle_command(&mut self, now: Instant, cmd: MediaCommand) {
        self.driven_at = self.driven_at.max(now);
        match cmd {
            MediaCommand::Open {
                leg,
                port,
                media,
                rtcp_mux,
                signalled_from,
            } => {
                let latch = Latch::for_phone(media.remote, signalled_from);
                let ssrc = self.next_ssrc();
                let mut stream = stream_for(&media, latch, ssrc, now, self.wallclock);
                stream.enable_inband(true);
                let rtcp_port = (!rtcp_mux).then(|| port.wrapping_add(1));
                let mut l = Leg::new(port, rtcp_port, stream, now);
                l.expect_rtp = media.two_way;
                self.add_leg(leg, l);
            }
            MediaCommand::Update {
                leg,
                media,
                signalled_from,
            } => self.update(now, leg, &media, signalled_from),
            MediaCommand::OpenWebRtc { leg, port, offer } => {
                match WebRtcLeg::accept(now, self.local(port), &offer) {
                    Ok((rtc, answer)) => {
                        self.add_webrtc_leg(now, leg, port, rtc, &answer);
                        self.events
                            .push_back(MediaEvent::WebRtcAnswer { leg, answer });
                    }
                    Err(err) => self.fail(leg, err.to_string()),
                }
            }
            MediaCommand::OfferWebRtc { leg, port } => {
                match WebRtcLeg::offer(now, self.local(port)) {
                    Ok((rtc, offer)) => {
                        self.ports.insert(port, leg);
                        self.offering.insert(
                            leg,
                            Offering {
                                port,
                                rtc: Box::new(rtc),
                                early: Vec::new(),
                            },
                        );
                        self.events
                            .push_back(MediaEvent::WebRtcOffer { leg, offer });
                    }
                    Err(err) => self.fail(leg, err.to_string()),
                }
            }
            MediaCommand::AnswerWebRtc { leg, answer } => self.answered(now, leg, &answer),
            MediaCommand::ReofferWebRtc { leg, offer } => self.reoffered(now, leg, &offer),
            MediaCommand::Play {
                leg,
                prompts,
                then_music,
                seq,
            } => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.player.play(prompts, then_music, seq);
                }
            }
            MediaCommand::SendDigit { leg, digit } => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.digits.push(digit);
                }
            }
            MediaCommand::Mix { leg, mix } => self.mix(leg, mix),
            MediaCommand::Unmix { leg } => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.stream.enable_inband(true);
                    if let Some(mix) = l.mix.take() {
                        self.leave_mix(leg, mix);
                    }
                }
            }
            MediaCommand::MixTone { mix, tone } => {
                if let Some(m) = self.mixes.get_mut(&mix) {
                    m.tone = Some((tone, 0));
                }
            }
            MediaCommand::Mute { leg, muted } => {
                let mix = self.legs.get(&leg).and_then(|l| l.mix);
                if let Some(m) = mix.and_then(|mix| self.mixes.get_mut(&mix)) {
                    m.mixer.set_muted(leg.0, muted);
                }
            }
            MediaCommand::Close { leg } => self.close(leg),
            MediaCommand::Place { .. } => {}
        }
    }

    /// Takes leg `id` out of this bridge (out of its mix too), to be put in another with
    /// [`put_leg`](Self::put_leg): everything it is in the middle of (its stream's sequence
    /// and timestamps, jitter buffer, prompts, digits, a browser's DTLS session) goes along.
    pub fn take_leg(&mut self, id: LegId) -> Option<MovingLeg> {
        if let Some(o) = self.offering.remove(&id) {
            self.ports.remove(&o.port);
            return Some(MovingLeg(Moving::Offering(o)));
        }
        let mut leg = self.legs.remove(&id)?;
        self.forget(id, &leg);
        leg.mix = None;
        leg.stream.enable_inband(true);
        Some(MovingLeg(Moving::Running(Box::new(leg))))
    }

    /// Adopts a leg another bridge gave up with [`take_leg`](Self::take_leg): it is in no
    /// mix until told to join one.
    pub fn put_leg(&mut self, id: LegId, leg: MovingLeg) {
        match leg.0 {
            Moving::Running(leg) => self.add_leg(id, *leg),
            Moving::Offering(o) => {
                self.ports.insert(o.port, id);
                self.offering.insert(id, o);
            }
        }
    }

    fn add_leg(&mut self, id: LegId, leg: Leg) {
        self.ports.insert(leg.port, id);
        if let Some(p) = leg.rtcp_port {
            self.ports.insert(p, id);
        }
        if let Some(old) = self.legs.insert(id, leg) {
            // An id reused without a close: its ports and mix go with it.
            self.forget(id, &old);
        }
    }

    fn forget(&mut self, id: LegId, leg: &Leg) {
        for port in std::iter::once(leg.port).chain(leg.rtcp_port) {
            if self.ports.get(&port) == Some(&id) {
                self.ports.remove(&port);
            }
        }
        if let Some(mix) = leg.mix {
            self.leave_mix(id, mix);
        }
    }

    fn close(&mut self, id: LegId) {
        if let Some(o) = self.offering.remove(&id) {
            self.ports.remove(&o.port);
        }
        if let Some(leg) = self.legs.remove(&id) {
            self.forget(id, &leg);
        }
    }

    fn update(&mut self, now: Instant, id: LegId, media: &LegMedia, signalled_from: IpAddr) {
        let Some(l) = self.legs.get_mut(&id) else {
            return;
        };
        if l.webrtc.is_some() {
            // str0m renegotiates browser legs itself.
            return;
        }
        l.expect_rtp = media.two_way;
        l.expect_since = now;
        let latch = Latch::for_phone(media.remote, signalled_from);
        let cfg = l.stream.config();
        if media.codec == cfg.codec
            && cfg.payload_type == media.payload_type
            && cfg.dtmf_payload_type == media.dtmf_payload_type
        {
            l.stream.set_remote(media.remote, latch);
            return;
        }
        self.restream(now, id, media, latch);
    }

    /// A new codec or payload numbers for leg `id` (a re-INVITE, a browser's new offer): a
    /// fresh stream and encoder, and its mix told the new codec.
    fn restream(&mut self, now: Instant, id: LegId, media: &LegMedia, latch: Latch) {
        let ssrc = self.next_ssrc();
        let Some(l) = self.legs.get_mut(&id) else {
            return;
        };
        l.stream = stream_for(media, latch, ssrc, now, self.wallclock);
        l.stream.enable_inband(l.mix.is_none());
        l.encoder = Encoder::new(media.codec);
        if let Some(m) = l.mix.and_then(|mix| self.mixes.get_mut(&mix)) {
            m.mixer.add(id.0, media.codec);
        }
    }

    /// Files a browser leg whose codec is agreed.
    fn add_webrtc_leg(
        &mut self,
        now: Instant,
        id: LegId,
        port: u16,
        rtc: WebRtcLeg,
        answer: &Answer,
    ) {
        let media = webrtc_media(answer);
        let ssrc = self.next_ssrc();
        let mut stream = stream_for(&media, Latch::Never, ssrc, now, self.wallclock);
        stream.enable_inband(true);
        let mut leg = Leg::new(port, None, stream, now);
        leg.expect_rtp = media.two_way;
        leg.webrtc = Some(Box::new(rtc));
        self.add_leg(id, leg);
    }

    /// The browser answered our offer: the leg starts, with what reached its port early.
    fn answered(&mut self, now: Instant, id: LegId, sdp: &str) {
        let Some(Offering {
            port,
            mut rtc,
            early,
        }) = self.offering.remove(&id)
        else {
            return;
        };
        match rtc.accept_answer(now, sdp) {
            Ok(agreed) => {
                self.add_webrtc_leg(now, id, port, *rtc, &agreed);
                for (from, data) in early {
                    self.handle_datagram(now, port, from, &data);
                }
            }
            Err(err) => {
                self.ports.remove(&port);
                self.fail(id, err.to_string());
            }
        }
    }

    /// A browser's new offer on a running leg (hold, resume): str0m answers; whether the
    /// browser still sends decides whether its silence counts toward the RTP timeout.
    fn reoffered(&mut self, now: Instant, id: LegId, offer: &str) {
        let refused = |reason: &str| MediaEvent::WebRtcRefused {
            leg: id,
            reason: reason.to_owned(),
        };
        let Some(l) = self.legs.get_mut(&id) else {
            return self.events.push_back(refused("no such leg"));
        };
        let Some(rtc) = l.webrtc.as_mut() else {
            return self.events.push_back(refused("not a browser leg"));
        };
        let answer = match rtc.reoffer(now, offer) {
            Ok(a) => a,
            Err(err) => return self.events.push_back(refused(&err.to_string())),
        };
        l.expect_rtp = answer.two_way;
        l.expect_since = now;
        if answer.codec != l.stream.config().codec {
            self.restream(now, id, &webrtc_media(&answer), Latch::Never);
        }
        self.drain_webrtc(now, id);
        self.events
            .push_back(MediaEvent::WebRtcAnswer { leg: id, answer });
    }

    fn mix(&mut self, id: LegId, mix: MixId) {
        let Some(l) = self.legs.get_mut(&id) else {
            return;
        };
        let old = l.mix.replace(mix);
        let codec = l.stream.config().codec;
        l.stream.enable_inband(false);
        // The mixer encodes for it now; the player's encoder state can go.
        l.encoder.release();
        match old {
            Some(old) if old == mix => return,
            Some(old) => self.leave_mix(id, old),
            None => {}
        }
        let m = self.mixes.entry(mix).or_insert_with(|| Mix {
            mixer: Mixer::new(),
            members: BTreeSet::new(),
            tone: None,
        });
        m.mixer.add(id.0, codec);
        m.members.insert(id);
    }

    fn leave_mix(&mut self, id: LegId, mix: MixId) {
        if let Some(m) = self.mixes.get_mut(&mix) {
            m.mixer.remove(id.0);
            m.members.remove(&id);
            if m.members.is_empty() {
                self.mixes.remove(&mix);
            }
        }
    }

    /// One datagram that arrived on local port `port` from `from`, at `now`: when it
    /// reached the machine, which may be before the tick that reads it (a jitter buffer
    /// then sees how the network spaced packets, not how ticks did).
    pub fn handle_datagram(&mut self, now: Instant, port: u16, from: SocketAddr, data: &[u8]) {
        let Some(&id) = self.ports.get(&port) else {
            return;
        };
        // (Almost never a leg still waiting for a browser's answer: skip the lookup.)
        if !self.offering.is_empty() {
            if let Some(o) = self.offering.get_mut(&id) {
                if o.early.len() < MAX_EARLY_DATAGRAMS {
                    o.early.push((from, data.to_vec()));
                }
                return;
            }
        }
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
        match leg.webrtc.as_mut() {
            Some(rtc) => {
                let now = now.max(self.driven_at);
                rtc.handle_datagram(now, from, data);
                self.drain_webrtc(now, id);
            }
            None => leg.stream.handle_packet(now, data, from),
        }
    }

    /// Acts on what a browser leg's transport produced.
    fn drain_webrtc(&mut self, now: Instant, id: LegId) {
        if let Some(leg) = self.legs.get_mut(&id) {
            leg.drain_webrtc(id, now, &mut self.out, &mut self.events);
        }
    }

    /// Runs the tick that is due, if one is.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.driven_at = self.driven_at.max(now);
        if now < self.next_tick {
            return;
        }
        let behind = now - self.next_tick;
        if behind > RESYNC_AFTER {
            // Too late to catch up in a burst: skip the ticks missed, and move every
            // outgoing stream's media time on by as much, so that RTP timestamps stay with
            // the clock (each skip is a gap the receiver conceals, not a lasting slip).
            // Incoming audio catches up by itself: the jitter buffers play by arrival time.
            let missed = u32::try_from(behind.as_nanos() / TICK.as_nanos()).unwrap_or(u32::MAX);
            for leg in self.legs.values_mut() {
                leg.skip_frames(missed);
            }
            self.next_tick += TICK * missed;
            self.clock.overruns += 1;
            self.clock.skipped_ticks += u64::from(missed);
        }
        self.tick(now);
        self.clock.ticks += 1;
        self.next_tick += TICK;
    }

    fn tick(&mut self, now: Instant) {
        for (&id, leg) in &mut self.legs {
            if let Some(rtc) = leg.webrtc.as_mut() {
                rtc.handle_timeout(now);
                leg.drain_webrtc(id, now, &mut self.out, &mut self.events);
            }
        }
        self.pull(now);
        let prompts = &self.prompts;
        for m in self.mixes.values_mut() {
            if let Some((tone, pos)) = m.tone.as_mut() {
                let clip = prompts.clip(*tone).at(8000);
                let end = (*pos + 160).min(clip.len());
                m.mixer.put_announcement(&clip[*pos..end], 8000);
                *pos = end;
                if end >= clip.len() {
                    m.tone = None;
                }
            }
            m.mixer.tick();
        }
        self.send(now);
    }

    /// One frame per leg into its mix; digits and silences reported.
    fn pull(&mut self, now: Instant) {
        let timeout = self.cfg.rtp_timeout;
        for (&id, leg) in &mut self.legs {
            let frame = leg.stream.pull_frame(now);
            if let (Some(mix), Some(frame)) = (leg.mix, frame) {
                if let Some(m) = self.mixes.get_mut(&mix) {
                    m.mixer.put_frame(id.0, frame);
                }
            }
            while let Some(digit) = leg.stream.poll_dtmf() {
                self.events.push_back(MediaEvent::Digit { leg: id, digit });
            }
            let silent = leg.stream.idle_for(now).min(now - leg.expect_since);
            if leg.expect_rtp && !leg.failed && silent > timeout {
                let reason = format!("no RTP for {} s", timeout.as_secs());
                report_failed(&mut leg.failed, id, reason, &mut self.events);
            }
        }
    }

    /// One packet to each leg, then its RTCP, talking and statistics.
    fn send(&mut self, now: Instant) {
        let Scratch { pcm, payload } = &mut self.scratch;
        for (&id, leg) in &mut self.legs {
            payload.clear();
            let mixer = leg
                .mix
                .and_then(|mix| self.mixes.get(&mix))
                .map(|m| &m.mixer);
            match mixer.and_then(|m| m.output(id.0)) {
                Some(bytes) => payload.extend_from_slice(bytes),
                None => {
                    let rate = leg.stream.config().codec.sample_rate();
                    if leg.player.next_frame(&self.prompts, rate, pcm) {
                        self.events.push_back(MediaEvent::PlaybackDone {
                            leg: id,
                            seq: leg.player.seq,
                        });
                    }
                    leg.encoder.encode(pcm, payload);
                }
            }
            let digit = leg.digits.tick();
            if let Some(rtc) = leg.webrtc.as_mut() {
                // str0m packetizes, encrypts and reports (RTCP) for browser legs, and
                // sends a digit's whole series of event packets itself.
                if let SendTick::Event(ev) = digit {
                    if ev.start {
                        rtc.send_digit(now, ev.digit, DIGIT_LENGTH);
                    }
                }
                rtc.send_frame(now, payload);
                leg.drain_webrtc(id, now, &mut self.out, &mut self.events);
            } else {
                let to = leg.stream.remote();
                let stream = &mut leg.stream;
                self.out.push_with(leg.port, to, |buf| {
                    let event = match digit {
                        SendTick::Event(ev) => stream.packetize_event(ev, buf),
                        SendTick::Audio => false,
                    };
                    if !event {
                        stream.packetize(payload, buf);
                    }
                });
                // RTCP on the RTP port (RFC 5761) or from port + 1 to the peer's port + 1.
                let (from, to) = match leg.rtcp_port {
                    Some(p) => (p, SocketAddr::new(to.ip(), to.port().wrapping_add(1))),
                    None => (leg.port, to),
                };
                self.out.push_with(from, to, |buf| {
                    let _ = stream.poll_rtcp(now, buf);
                });
            }
            let talking = mixer.is_some_and(|m| m.is_talking(id.0));
            if talking != leg.talking {
                leg.talking = talking;
                self.events
                    .push_back(MediaEvent::Talking { leg: id, talking });
            }
            if now.duration_since(leg.last_stats) >= STATS_EVERY {
                leg.last_stats = now;
                let s = leg.stream.stats();
                self.events.push_back(MediaEvent::Stats {
                    leg: id,
                    stats: LegStats {
                        packets_received: s.packets_received,
                        packets_lost: s.packets_lost,
                        loss_percent: s.loss_percent,
                        jitter_ms: s.jitter_ms,
                        rtt_ms: s.rtt_ms,
                    },
                });
            }
        }
    }
}
