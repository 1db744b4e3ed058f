//! The media thread: RTP sockets, the 20 ms clock, prompt playback and room mixers.
//!
//! One dedicated OS thread (never the async runtime) owns every conference leg's sockets
//! and runs the passive pipeline of `confero-media` once per tick:
//! 1. apply the engine's commands (open, mix, play, close) — only here, at the tick
//!    boundary, never in the middle of a mix;
//! 2. read every leg's socket until it would block and hand the datagrams to its stream;
//! 3. pull one decoded frame per leg, collect DTMF, feed the room mixers;
//! 4. mix each room once;
//! 5. send each leg its frame: the mixer's (shared) encode when in a room, else the
//!    prompt or music it is listening to.
//!
//! Nothing in a tick blocks: sockets are non-blocking and events to the engine go through
//! an unbounded channel.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confero_media::codec::{CodecKind, Encoder};
use confero_media::dtmf::{EventSender, SendTick, SEND_TONE_TICKS};
use confero_media::mixer::Mixer;
use confero_media::resample::{Downsampler2x, Upsampler2x};
use confero_media::stream::{Latch, MediaStream, StreamConfig};
use confero_media::tone::read_wav;
use confero_media::webrtc::{WebRtcLeg, WebRtcOutput};
use confero_pbx::engine::{LegStats, MediaCommand, MediaEvent};
use confero_pbx::room::{LegId, Prompt, RoomCommand};
use confero_sip::sdp::{Direction, Negotiated, RtpMap};
use tokio::sync::mpsc::UnboundedSender;

const TICK: Duration = Duration::from_millis(20);
/// How long a relayed digit sounds on a browser leg (str0m sends the whole event).
const DIGIT_LENGTH: Duration = Duration::from_millis(20 * SEND_TONE_TICKS as u64);
const STATS_EVERY: Duration = Duration::from_secs(2);
/// Datagrams read per socket per tick: a phone sends one; a flood must not stall the
/// tick (the rest waits in the socket buffer, or is dropped by the kernel).
const MAX_READS_PER_TICK: usize = 32;
/// The pseudo-participant through which join and leave tones reach a whole room.
const TONE_PART: u64 = u64::MAX;

/// Prompt audio at both mixing rates, loaded once at start.
pub(crate) struct PromptLibrary {
    clips: HashMap<Prompt, Clip>,
    music: Clip,
}

struct Clip {
    at8k: Vec<i16>,
    at16k: Vec<i16>,
}

impl Clip {
    fn at(&self, rate: u32) -> &[i16] {
        if rate == 16000 {
            &self.at16k
        } else {
            &self.at8k
        }
    }

    fn from_wav(bytes: &[u8], name: &str) -> anyhow::Result<Clip> {
        let (rate, pcm) = read_wav(bytes).map_err(|e| anyhow::anyhow!("prompt {name}: {e}"))?;
        let (at8k, at16k) = match rate {
            8000 => {
                let mut up = Vec::with_capacity(pcm.len() * 2);
                Upsampler2x::new().process(&pcm, &mut up);
                (pcm, up)
            }
            16000 => {
                let mut down = Vec::with_capacity(pcm.len() / 2);
                Downsampler2x::new().process(&pcm, &mut down);
                (down, pcm)
            }
            other => anyhow::bail!("prompt {name}: {other} Hz; use 8000 or 16000 Hz mono PCM WAV"),
        };
        Ok(Clip { at8k, at16k })
    }
}

/// File name of each prompt (in the repository's `prompts/` and in `<data-dir>/prompts/`).
fn file_name(p: Prompt) -> &'static str {
    match p {
        Prompt::EnterAccessCode => "enter-access-code.wav",
        Prompt::WrongAccessCode => "wrong-access-code.wav",
        Prompt::Goodbye => "goodbye.wav",
        Prompt::TooManyAttempts => "too-many-attempts.wav",
        Prompt::WaitForAdministrator => "wait-for-administrator.wav",
        Prompt::FirstParticipant => "first-participant.wav",
        Prompt::ConferenceStarting => "conference-starting.wav",
        Prompt::AdministratorLeft => "administrator-left.wav",
        Prompt::ConferenceEnded => "conference-ended.wav",
        Prompt::ConferenceClosed => "conference-closed.wav",
        Prompt::JoinTone => "join-tone.wav",
        Prompt::LeaveTone => "leave-tone.wav",
    }
}

const ALL_PROMPTS: [Prompt; 12] = [
    Prompt::EnterAccessCode,
    Prompt::WrongAccessCode,
    Prompt::Goodbye,
    Prompt::TooManyAttempts,
    Prompt::WaitForAdministrator,
    Prompt::FirstParticipant,
    Prompt::ConferenceStarting,
    Prompt::AdministratorLeft,
    Prompt::ConferenceEnded,
    Prompt::ConferenceClosed,
    Prompt::JoinTone,
    Prompt::LeaveTone,
];

/// The prompts built into the binary (made by `scripts/make-prompts.sh`).
fn embedded(name: &str) -> Option<&'static [u8]> {
    Some(match name {
        "enter-access-code.wav" => include_bytes!("../../../prompts/enter-access-code.wav"),
        "wrong-access-code.wav" => include_bytes!("../../../prompts/wrong-access-code.wav"),
        "goodbye.wav" => include_bytes!("../../../prompts/goodbye.wav"),
        "too-many-attempts.wav" => include_bytes!("../../../prompts/too-many-attempts.wav"),
        "wait-for-administrator.wav" => {
            include_bytes!("../../../prompts/wait-for-administrator.wav")
        }
        "first-participant.wav" => include_bytes!("../../../prompts/first-participant.wav"),
        "conference-starting.wav" => include_bytes!("../../../prompts/conference-starting.wav"),
        "administrator-left.wav" => include_bytes!("../../../prompts/administrator-left.wav"),
        "conference-ended.wav" => include_bytes!("../../../prompts/conference-ended.wav"),
        "conference-closed.wav" => include_bytes!("../../../prompts/conference-closed.wav"),
        "join-tone.wav" => include_bytes!("../../../prompts/join-tone.wav"),
        "leave-tone.wav" => include_bytes!("../../../prompts/leave-tone.wav"),
        "hold-music.wav" => include_bytes!("../../../prompts/hold-music.wav"),
        _ => return None,
    })
}

impl PromptLibrary {
    /// Loads every prompt: a file of the same name in `override_dir` wins over the
    /// built-in one, so an administrator can record their own.
    pub(crate) fn load(override_dir: &Path) -> anyhow::Result<PromptLibrary> {
        let read = |name: &str| -> anyhow::Result<Clip> {
            let path = override_dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    tracing::info!(path = %path.display(), "using the administrator's prompt");
                    Clip::from_wav(&bytes, name)
                }
                Err(_) => Clip::from_wav(
                    embedded(name).ok_or_else(|| anyhow::anyhow!("no built-in {name}"))?,
                    name,
                ),
            }
        };
        let mut clips = HashMap::new();
        for p in ALL_PROMPTS {
            clips.insert(p, read(file_name(p))?);
        }
        Ok(PromptLibrary {
            clips,
            music: read("hold-music.wav")?,
        })
    }
}

/// What a leg hears when it is not in a mix.
#[derive(Default)]
struct Player {
    queue: VecDeque<Prompt>,
    current: Option<(Prompt, usize)>,
    music: bool,
    music_pos: usize,
    /// The end of the queue was reported to the engine.
    reported: bool,
    /// Echoed in the end report, so the engine can tell it from an earlier play's.
    seq: u32,
}

impl Player {
    fn play(&mut self, prompts: Vec<Prompt>, then_music: bool, seq: u32) {
        self.queue = prompts.into();
        self.current = None;
        self.music = then_music;
        self.reported = false;
        self.seq = seq;
    }

    /// Fills `out` with one frame at `rate`; returns true when the queue just ran out.
    fn next_frame(&mut self, lib: &PromptLibrary, rate: u32, out: &mut Vec<i16>) -> bool {
        let n = (rate / 50) as usize;
        out.clear();
        let mut ended = false;
        while out.len() < n {
            if self.current.is_none() {
                match self.queue.pop_front() {
                    Some(p) => self.current = Some((p, 0)),
                    None => {
                        if !self.reported {
                            self.reported = true;
                            ended = true;
                        }
                        break;
                    }
                }
            }
            let Some((prompt, pos)) = self.current.as_mut() else {
                break;
            };
            let clip = lib.clips.get(prompt).map_or(&[][..], |c| c.at(rate));
            let take = (n - out.len()).min(clip.len().saturating_sub(*pos));
            out.extend_from_slice(&clip[*pos..*pos + take]);
            *pos += take;
            if *pos >= clip.len() {
                self.current = None;
            }
        }
        if self.current.is_none() && self.queue.is_empty() && self.music {
            let music = lib.music.at(rate);
            while out.len() < n && !music.is_empty() {
                let pos = self.music_pos % music.len();
                let take = (n - out.len()).min(music.len() - pos);
                out.extend_from_slice(&music[pos..pos + take]);
                self.music_pos = pos + take;
            }
        }
        out.resize(n, 0);
        ended
    }
}

struct LegState {
    rtp: UdpSocket,
    rtcp: Option<UdpSocket>,
    stream: MediaStream,
    codec: CodecKind,
    encoder: Encoder,
    /// Digits relayed to this leg from the other side of its call.
    digits: EventSender,
    player: Player,
    room: Option<i64>,
    talking: bool,
    last_stats: Instant,
    rtcp_mux: bool,
    /// Whether the far end is expected to send (not on hold, not inactive): only then
    /// does silence count toward `--rtp-timeout`.
    expect_rtp: bool,
    /// Since when RTP is expected (silence before, e.g. on hold, does not count).
    expect_since: Instant,
    /// A failure was reported; the engine will close the leg.
    failed: bool,
    /// A browser's leg: str0m carries the media over `rtp` (ICE, DTLS-SRTP, rtcp-mux).
    webrtc: Option<Box<WebRtcLeg>>,
}

struct RoomMix {
    mixer: Mixer,
    members: BTreeSet<LegId>,
    tone: Option<(Prompt, usize)>,
}

impl RoomMix {
    fn new() -> Self {
        let mut mixer = Mixer::new();
        mixer.add(TONE_PART, CodecKind::Pcmu);
        RoomMix {
            mixer,
            members: BTreeSet::new(),
            tone: None,
        }
    }
}

pub(crate) struct MediaShell {
    pub(crate) bind_ip: IpAddr,
    /// The address browsers are told to send to (our one ICE candidate).
    pub(crate) public_ip: IpAddr,
    pub(crate) prompts: Arc<PromptLibrary>,
    pub(crate) commands: Receiver<MediaCommand>,
    pub(crate) events: UnboundedSender<MediaEvent>,
    pub(crate) shutdown: Arc<AtomicBool>,
    /// A leg that sends no RTP for this long is considered gone (phone crashed, network
    /// cut): `--rtp-timeout`.
    pub(crate) rtp_timeout: Duration,
}

struct State {
    shell: MediaShell,
    legs: HashMap<LegId, LegState>,
    /// Legs calling a browser, waiting for its answer to our offer.
    offering: HashMap<LegId, (UdpSocket, Box<WebRtcLeg>)>,
    rooms: HashMap<i64, RoomMix>,
    buf: Vec<u8>,
    pcm: Vec<i16>,
    payload: Vec<u8>,
    packet: Vec<u8>,
}

/// The source address media of browser legs is filed under in their stream (str0m has
/// already checked where it came from).
const WEBRTC_SOURCE: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9);

/// What a browser leg agreed, in the engine's terms.
fn webrtc_media(answer: &confero_media::webrtc::Answer, direction: Direction) -> Negotiated {
    let codec = answer.codec;
    Negotiated {
        codec: RtpMap {
            payload_type: answer.payload_type,
            encoding: codec.encoding_name().to_owned(),
            clock_rate: codec.rtp_clock_rate(),
            channels: 1,
            fmtp: None,
        },
        telephone_event: answer.dtmf_payload_type,
        remote: WEBRTC_SOURCE,
        direction,
    }
}

/// Acts on what a browser leg's WebRTC stack produced: datagrams out, media into the
/// stream, the end of the leg to the engine.
fn webrtc_outputs(
    id: LegId,
    leg: &mut LegState,
    now: Instant,
    events: &UnboundedSender<MediaEvent>,
) {
    let Some(rtc) = leg.webrtc.as_mut() else {
        return;
    };
    while let Some(out) = rtc.poll_output() {
        match out {
            WebRtcOutput::Transmit { to, data } => {
                let _ = leg.rtp.send_to(&data, to);
            }
            WebRtcOutput::Rtp { packet, quiet } => {
                leg.stream
                    .handle_packet_hinted(now, &packet, WEBRTC_SOURCE, quiet);
            }
            WebRtcOutput::Connected => tracing::debug!(leg = id, "WebRTC connected"),
            WebRtcOutput::Gone(reason) => {
                if !leg.failed {
                    leg.failed = true;
                    let _ = events.send(MediaEvent::Failed { leg: id, reason });
                }
            }
        }
    }
}

fn codec_of(media: &Negotiated) -> Option<CodecKind> {
    CodecKind::from_encoding_name(&media.codec.encoding, media.codec.clock_rate)
}

/// Binds RTP on `port` and, unless RTCP is multiplexed, RTCP on `port + 1`.
fn bind_pair(
    ip: IpAddr,
    port: u16,
    rtcp_mux: bool,
) -> std::io::Result<(UdpSocket, Option<UdpSocket>)> {
    let rtp = UdpSocket::bind(SocketAddr::new(ip, port))?;
    rtp.set_nonblocking(true)?;
    if rtcp_mux {
        return Ok((rtp, None));
    }
    let rtcp = UdpSocket::bind(SocketAddr::new(ip, port.wrapping_add(1)))?;
    rtcp.set_nonblocking(true)?;
    Ok((rtp, Some(rtcp)))
}

/// A leg's stream, taking audio from the sources `latch` allows: a phone's SDP address or,
/// behind NAT, the address its SIP came from; a browser leg's media only as str0m hands it
/// over.
fn stream_for(codec: CodecKind, media: &Negotiated, latch: Latch, now: Instant) -> MediaStream {
    MediaStream::new(
        StreamConfig {
            codec,
            payload_type: media.codec.payload_type,
            dtmf_payload_type: media.telephone_event,
            remote: media.remote,
            latch,
            local_ssrc: rand::random(),
        },
        now,
    )
}

impl MediaShell {
    /// Runs the clock until shutdown. Call on a dedicated thread.
    pub(crate) fn run(self) {
        let mut st = State {
            shell: self,
            legs: HashMap::new(),
            offering: HashMap::new(),
            rooms: HashMap::new(),
            buf: vec![0u8; 2048],
            pcm: Vec::with_capacity(320),
            payload: Vec::with_capacity(320),
            packet: Vec::with_capacity(400),
        };
        let mut next = Instant::now();
        while !st.shell.shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            } else if now - next > TICK * 5 {
                // Far behind (machine suspended, debugger): resynchronise, do not burst.
                next = now;
            }
            let now = Instant::now();
            if !st.apply_commands(now) {
                break;
            }
            st.tick(now);
            next += TICK;
        }
    }
}

impl State {
    fn send_event(&self, ev: MediaEvent) {
        let _ = self.shell.events.send(ev);
    }

    /// Returns false when the engine is gone.
    fn apply_commands(&mut self, now: Instant) -> bool {
        loop {
            let cmd = match self.shell.commands.try_recv() {
                Ok(cmd) => cmd,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            self.apply(now, cmd);
        }
    }

    fn apply(&mut self, now: Instant, cmd: MediaCommand) {
        match cmd {
            MediaCommand::Open {
                leg,
                port,
                media,
                rtcp_mux,
                signalled_from,
            } => {
                let Some(codec) = codec_of(&media) else {
                    return self.send_event(MediaEvent::Failed {
                        leg,
                        reason: format!("codec {} not supported", media.codec.encoding),
                    });
                };
                let (rtp, rtcp) = match bind_pair(self.shell.bind_ip, port, rtcp_mux) {
                    Ok(pair) => pair,
                    Err(err) => {
                        return self.send_event(MediaEvent::Failed {
                            leg,
                            reason: format!("cannot bind RTP port {port}: {err}"),
                        })
                    }
                };
                let latch = Latch::for_phone(media.remote, signalled_from);
                let mut stream = stream_for(codec, &media, latch, now);
                stream.enable_inband(true);
                self.legs.insert(
                    leg,
                    LegState {
                        rtp,
                        rtcp,
                        stream,
                        codec,
                        encoder: Encoder::new(codec),
                        digits: EventSender::default(),
                        player: Player {
                            reported: true,
                            ..Player::default()
                        },
                        room: None,
                        talking: false,
                        last_stats: now,
                        rtcp_mux,
                        expect_rtp: media.direction.receives(),
                        expect_since: now,
                        failed: false,
                        webrtc: None,
                    },
                );
            }
            MediaCommand::Update {
                leg,
                media,
                signalled_from,
            } => {
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                if l.webrtc.is_some() {
                    // str0m renegotiates browser legs itself.
                    return;
                }
                l.expect_rtp = media.direction.receives();
                l.expect_since = now;
                let Some(codec) = codec_of(&media) else {
                    return;
                };
                let latch = Latch::for_phone(media.remote, signalled_from);
                let cfg = l.stream.config();
                if codec == l.codec
                    && cfg.payload_type == media.codec.payload_type
                    && cfg.dtmf_payload_type == media.telephone_event
                {
                    l.stream.set_remote(media.remote, latch);
                    return;
                }
                // A new codec or payload numbers (a re-INVITE): a fresh stream and encoder,
                // and the mixer told the leg's new codec.
                l.stream = stream_for(codec, &media, latch, now);
                l.stream.enable_inband(l.room.is_none());
                l.codec = codec;
                l.encoder = Encoder::new(codec);
                if let Some(r) = l.room.and_then(|room| self.rooms.get_mut(&room)) {
                    r.mixer.add(leg, codec);
                }
            }
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
            MediaCommand::Close { leg } => {
                self.offering.remove(&leg);
                if let Some(l) = self.legs.remove(&leg) {
                    if let Some(room) = l.room {
                        self.leave_room(leg, room);
                    }
                }
            }
            MediaCommand::Room(cmd) => self.apply_room(cmd),
            MediaCommand::OpenWebRtc { leg, port, offer } => {
                self.open_webrtc(now, leg, port, &offer)
            }
            MediaCommand::OfferWebRtc { leg, port } => self.offer_webrtc(now, leg, port),
            MediaCommand::ReofferWebRtc { leg, offer } => self.reoffer_webrtc(now, leg, &offer),
            MediaCommand::AnswerWebRtc { leg, answer } => self.answer_webrtc(now, leg, &answer),
        }
    }

    /// A browser's leg: the socket, then str0m's answer to the offer, which goes back to
    /// the engine for the 200 OK.
    fn open_webrtc(&mut self, now: Instant, leg: LegId, port: u16, offer: &str) {
        let fail = |st: &Self, reason: String| st.send_event(MediaEvent::Failed { leg, reason });
        let socket = match bind_pair(self.shell.bind_ip, port, true) {
            Ok((sock, _)) => sock,
            Err(err) => return fail(self, format!("cannot bind WebRTC port {port}: {err}")),
        };
        let local = SocketAddr::new(self.shell.public_ip, port);
        let (rtc, answer) = match WebRtcLeg::accept(now, local, offer) {
            Ok(x) => x,
            Err(err) => return fail(self, err.to_string()),
        };
        let sdp = answer.sdp.clone();
        let media = self.add_webrtc_leg(now, leg, socket, rtc, &answer);
        self.send_event(MediaEvent::WebRtcAnswer {
            leg,
            answer: sdp,
            media,
        });
    }

    /// A leg that will call a browser: our offer goes back to the engine for the INVITE;
    /// the leg waits (its datagrams queue in the socket) until the answer.
    fn offer_webrtc(&mut self, now: Instant, leg: LegId, port: u16) {
        let fail = |st: &Self, reason: String| st.send_event(MediaEvent::Failed { leg, reason });
        let socket = match bind_pair(self.shell.bind_ip, port, true) {
            Ok((sock, _)) => sock,
            Err(err) => return fail(self, format!("cannot bind WebRTC port {port}: {err}")),
        };
        let local = SocketAddr::new(self.shell.public_ip, port);
        match WebRtcLeg::offer(now, local) {
            Ok((rtc, offer)) => {
                self.offering.insert(leg, (socket, Box::new(rtc)));
                self.send_event(MediaEvent::WebRtcOffer { leg, offer });
            }
            Err(err) => fail(self, err.to_string()),
        }
    }

    /// The browser answered our offer: the leg starts.
    fn answer_webrtc(&mut self, now: Instant, leg: LegId, answer: &str) {
        let Some((socket, mut rtc)) = self.offering.remove(&leg) else {
            return;
        };
        match rtc.accept_answer(now, answer) {
            Ok(agreed) => {
                self.add_webrtc_leg(now, leg, socket, *rtc, &agreed);
            }
            Err(err) => self.send_event(MediaEvent::Failed {
                leg,
                reason: err.to_string(),
            }),
        }
    }

    /// A browser's new offer on a running leg (hold, resume): str0m answers; whether the
    /// browser still sends decides whether its silence counts toward the RTP timeout.
    fn reoffer_webrtc(&mut self, now: Instant, leg: LegId, offer: &str) {
        let refused =
            |st: &Self, reason: String| st.send_event(MediaEvent::WebRtcRefused { leg, reason });
        let Some(l) = self.legs.get_mut(&leg) else {
            return refused(self, "no such leg".into());
        };
        let Some(rtc) = l.webrtc.as_mut() else {
            return refused(self, "not a browser leg".into());
        };
        let answer = match rtc.reoffer(now, offer) {
            Ok(a) => a,
            Err(err) => return refused(self, err.to_string()),
        };
        let direction = confero_sip::sdp::parse_audio(answer.sdp.as_bytes())
            .map(|a| a.direction)
            .unwrap_or(Direction::SendRecv);
        let media = webrtc_media(&answer, direction);
        l.expect_rtp = direction.receives();
        l.expect_since = now;
        if answer.codec != l.codec {
            l.stream = stream_for(answer.codec, &media, Latch::Never, now);
            l.stream.enable_inband(l.room.is_none());
            l.codec = answer.codec;
            l.encoder = Encoder::new(answer.codec);
            if let Some(r) = l.room.and_then(|room| self.rooms.get_mut(&room)) {
                r.mixer.add(leg, answer.codec);
            }
        }
        self.send_event(MediaEvent::WebRtcAnswer {
            leg,
            answer: answer.sdp,
            media,
        });
    }

    /// Files a browser leg whose codec is agreed; returns what was negotiated.
    fn add_webrtc_leg(
        &mut self,
        now: Instant,
        leg: LegId,
        socket: UdpSocket,
        rtc: WebRtcLeg,
        answer: &confero_media::webrtc::Answer,
    ) -> Negotiated {
        let codec = answer.codec;
        let media = webrtc_media(answer, Direction::SendRecv);
        let mut stream = stream_for(codec, &media, Latch::Never, now);
        stream.enable_inband(true);
        self.legs.insert(
            leg,
            LegState {
                rtp: socket,
                rtcp: None,
                stream,
                codec,
                encoder: Encoder::new(codec),
                digits: EventSender::default(),
                player: Player {
                    reported: true,
                    ..Player::default()
                },
                room: None,
                talking: false,
                last_stats: now,
                rtcp_mux: true,
                expect_rtp: true,
                expect_since: now,
                failed: false,
                webrtc: Some(Box::new(rtc)),
            },
        );
        media
    }

    fn leave_room(&mut self, leg: LegId, room: i64) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.mixer.remove(leg);
            r.members.remove(&leg);
            if r.members.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    fn apply_room(&mut self, cmd: RoomCommand) {
        match cmd {
            RoomCommand::Mix { leg, room } => {
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                let old = l.room.replace(room);
                let codec = l.codec;
                l.stream.enable_inband(false);
                // The mixer encodes for it now; the prompt encoder's state can go.
                l.encoder.release();
                match old {
                    Some(old) if old == room => return,
                    Some(old) => self.leave_room(leg, old),
                    None => {}
                }
                let r = self.rooms.entry(room).or_insert_with(RoomMix::new);
                r.mixer.add(leg, codec);
                r.members.insert(leg);
            }
            RoomCommand::Unmix { leg } => {
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                l.stream.enable_inband(true);
                if let Some(room) = l.room.take() {
                    self.leave_room(leg, room);
                }
            }
            RoomCommand::RoomTone { room, tone } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.tone = Some((tone, 0));
                }
            }
            RoomCommand::Mute { leg, muted } => {
                let room = self.legs.get(&leg).and_then(|l| l.room);
                if let Some(r) = room.and_then(|room| self.rooms.get_mut(&room)) {
                    r.mixer.set_muted(leg, muted);
                }
            }
            // Signalling's (hang-up, alerts) and the player's (Play, sent as
            // MediaCommand::Play).
            RoomCommand::Hangup { .. }
            | RoomCommand::CodeGuessing { .. }
            | RoomCommand::Play { .. } => {}
        }
    }

    fn tick(&mut self, now: Instant) {
        let prompts = self.shell.prompts.clone();
        // Receive.
        for (&id, leg) in self.legs.iter_mut() {
            for sock in std::iter::once(&leg.rtp).chain(leg.rtcp.as_ref()) {
                for _ in 0..MAX_READS_PER_TICK {
                    match sock.recv_from(&mut self.buf) {
                        Ok((n, from)) => match leg.webrtc.as_mut() {
                            Some(rtc) => rtc.handle_datagram(now, from, &self.buf[..n]),
                            None => leg.stream.handle_packet(now, &self.buf[..n], from),
                        },
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                        Err(err) => {
                            tracing::debug!(leg = id, %err, "RTP receive error");
                            break;
                        }
                    }
                }
            }
            if let Some(rtc) = leg.webrtc.as_mut() {
                rtc.handle_timeout(now);
            }
            webrtc_outputs(id, leg, now, &self.shell.events);
        }
        // Pull one frame per leg into its room; collect digits.
        // Events go straight to the (unbounded) channel: nothing is collected per tick.
        let events = &self.shell.events;
        for (&id, leg) in self.legs.iter_mut() {
            let frame = leg.stream.pull_frame(now);
            if let (Some(room), Some(frame)) = (leg.room, frame) {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.mixer.put_frame(id, frame);
                }
            }
            while let Some(digit) = leg.stream.poll_dtmf() {
                let _ = events.send(MediaEvent::Digit { leg: id, digit });
            }
            let silent = leg.stream.idle_for(now).min(now - leg.expect_since);
            if leg.expect_rtp && !leg.failed && silent > self.shell.rtp_timeout {
                leg.failed = true;
                let _ = events.send(MediaEvent::Failed {
                    leg: id,
                    reason: format!("no RTP for {} s", self.shell.rtp_timeout.as_secs()),
                });
            }
        }
        // Mix each room once.
        for r in self.rooms.values_mut() {
            if let Some((tone, pos)) = r.tone.as_mut() {
                let clip = prompts.clips.get(tone).map_or(&[][..], |c| c.at(8000));
                let end = (*pos + 160).min(clip.len());
                if *pos < end {
                    r.mixer.put_frame(TONE_PART, &clip[*pos..end]);
                }
                *pos = end;
                if end >= clip.len() {
                    r.tone = None;
                }
            }
            r.mixer.tick();
        }
        // Send.
        for (&id, leg) in self.legs.iter_mut() {
            self.payload.clear();
            let mixed = leg
                .room
                .and_then(|room| self.rooms.get(&room))
                .and_then(|r| r.mixer.output(id));
            match mixed {
                Some(bytes) => self.payload.extend_from_slice(bytes),
                None => {
                    let rate = leg.codec.sample_rate();
                    if leg.player.next_frame(&prompts, rate, &mut self.pcm) {
                        let _ = events.send(MediaEvent::PlaybackDone {
                            leg: id,
                            seq: leg.player.seq,
                        });
                    }
                    leg.encoder.encode(&self.pcm, &mut self.payload);
                }
            }
            self.packet.clear();
            let digit = leg.digits.tick();
            if let Some(rtc) = leg.webrtc.as_mut() {
                // str0m packetizes, encrypts and reports (RTCP) for browser legs, and
                // sends a digit's whole series of event packets itself.
                if let SendTick::Event(ev) = digit {
                    if ev.start {
                        rtc.send_digit(now, ev.digit, DIGIT_LENGTH);
                    }
                }
                rtc.send_frame(now, &self.payload);
                webrtc_outputs(id, leg, now, events);
            } else {
                let event = match digit {
                    SendTick::Event(ev) => leg.stream.packetize_event(ev, &mut self.packet),
                    SendTick::Audio => false,
                };
                if !event {
                    leg.stream.packetize(&self.payload, &mut self.packet);
                }
                let _ = leg.rtp.send_to(&self.packet, leg.stream.remote());
            }
            self.packet.clear();
            if leg.webrtc.is_none() && leg.stream.poll_rtcp(now, &mut self.packet) {
                let to = leg.stream.remote();
                if leg.rtcp_mux {
                    let _ = leg.rtp.send_to(&self.packet, to);
                } else {
                    let sock = leg.rtcp.as_ref().unwrap_or(&leg.rtp);
                    let _ = sock.send_to(
                        &self.packet,
                        SocketAddr::new(to.ip(), to.port().wrapping_add(1)),
                    );
                }
            }
            if let Some(room) = leg.room.and_then(|room| self.rooms.get(&room)) {
                let talking = room.mixer.is_talking(id);
                if talking != leg.talking {
                    leg.talking = talking;
                    let _ = events.send(MediaEvent::Talking { leg: id, talking });
                }
            } else if leg.talking {
                leg.talking = false;
                let _ = events.send(MediaEvent::Talking {
                    leg: id,
                    talking: false,
                });
            }
            if now.duration_since(leg.last_stats) >= STATS_EVERY {
                leg.last_stats = now;
                let s = leg.stream.stats();
                let _ = events.send(MediaEvent::Stats {
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
