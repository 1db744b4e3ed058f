//! Load benchmark: N participants streaming G.711 (PCMU) into conference rooms through the
//! whole `confero` binary.
//!
//! Run with `cargo bench -p confero-server --bench room_load`. It starts the release binary on
//! free loopback ports (`--rtp-ports 20000-29999`, below the kernel's ephemeral range, so the
//! client's sockets never collide with the server's), creates one user per participant and
//! the rooms (extensions 7000, 7001, … without access code) through the REST API, then:
//!
//! 1. places the calls gradually (`ROOM_LOAD_RATE` per second) from a minimal SIP UA on one
//!    UDP socket: INVITE → 100/407 → ACK → INVITE with `Proxy-Authorization` (MD5, qop=auth)
//!    → 200 with SDP → ACK;
//! 2. streams from one media thread that drives every client RTP socket (non-blocking,
//!    connected) on a 20 ms clock: in each room the first 3 participants are talkers sending
//!    sines at 450, 1050 and 1850 Hz (silent for 20 ms every 500 ms, so the mixer's voice
//!    detector keeps its noise floor low), everyone else sends noise at about −60 dBFS;
//! 3. drains what the server sends: received packets, sequence gaps (lost), packets later than
//!    40 ms after their expected time (late: expected_n = t0 + n·20 ms on the client's clock,
//!    t0 the earliest arrival offset of the stream so far), and the content — listeners must
//!    hear all 3 tones (Goertzel over 200 ms blocks, once a second), talkers the other two and
//!    not their own (mix-minus);
//! 4. once everybody is `in_room` (checked through `GET /api/v1/conferences/{id}/participants`)
//!    and the join prompts and tones are over, measures a steady window: server CPU from
//!    /proc/<pid>/stat (per thread too), RSS idle vs loaded, packets out of the server per
//!    second, lost and late frames; then hangs everyone up with BYE and kills the server.
//!
//! With `ROOM_LOAD_WEBRTC=1` every participant is a browser instead: the INVITE carries a
//! str0m offer (ICE, DTLS-SRTP, BUNDLE, rtcp-mux, Opus first) as Chrome's would, media is
//! Opus at 48 kHz RTP clock through str0m with the RFC 6464 audio level on every packet
//! (talkers about −20 dBov with the voice flag, listeners' −60 dBFS noise marked as
//! silence, as Chrome marks a quiet room), and the content check decodes the Opus the
//! server sends to the talkers and to about 50 listeners (decoding every listener would
//! make the load client, not the server, the limit). Signalling stays on UDP: the server treats an offer as a browser's by its
//! SDP, and WebSocket framing is not what this measures.
//!
//! Knobs (environment variables, all optional): `ROOM_LOAD_PARTICIPANTS` (200),
//! `ROOM_LOAD_ROOMS` (2), `ROOM_LOAD_SECONDS` (20, the measured window), `ROOM_LOAD_RATE` (50
//! calls per second), `ROOM_LOAD_SETTLE` (5 s between the last join and the window),
//! `ROOM_LOAD_RTCP_MUX` (1: offer `a=rtcp-mux`, so the server binds one socket per leg),
//! `ROOM_LOAD_EVERYONE_TALKS` (1: everyone but the talkers sends speech-like audio — noise
//! at about −30 dBFS in a 4 Hz syllable rhythm, talkspurts of 0.4–2 s between pauses — so
//! that every microphone in the room is open, the worst case for voice detection and the
//! mixer), `ROOM_LOAD_MEDIA_THREADS` (the server's `--media-threads`; unset: one per core),
//! `ROOM_LOAD_LATENCY` (1: measure the added latency through room 0, see `Probe`; needs
//! more than 3 participants per room), `ROOM_LOAD_JITTER_MS` (with it: the probe talker's
//! packets leave 0 to this many ms late each), `ROOM_LOAD_PERF` (a file path: after the window, `perf record -g` the loaded server for
//! 5 s into it and print the top functions).

mod support;
use support::*;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use confero_media::codec::{CodecKind, Decoder, Encoder};
use confero_media::resample::Downsampler2x;
use confero_media::rtp::{is_rtcp, parse_rtp, write_rtp, RtpHeader};
use confero_sip::digest::answer_challenge;
use confero_sip::sdp::parse_audio;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

const FRAME: Duration = Duration::from_millis(20);
const FRAME_US: i64 = 20_000;
const SAMPLES: usize = 160;
/// Talkers per room and their tones: multiples of 50 Hz, so every 20 ms frame holds whole
/// cycles (one precomputed payload per talker) and they fall on exact 5 Hz Goertzel bins.
const TALKERS_PER_ROOM: usize = 3;
const TALKER_HZ: [f64; TALKERS_PER_ROOM] = [450.0, 1050.0, 1850.0];
const TONE_AMPLITUDE: f64 = 6000.0;
/// Talkers send one quiet frame in this many (every 500 ms).
const PAUSE_EVERY: u64 = 25;
/// Peak of the listeners' uniform noise: an RMS of about 33, −60 dBFS.
const NOISE_PEAK: i32 = 57;
/// A frame arriving this much after its expected time is late.
const LATE_US: i64 = 40_000;
/// How often the media thread looks at sockets whose next packet is due.
const POLL: Duration = Duration::from_millis(2);
/// A socket is looked at from this long before its next packet is due.
const EARLY_US: i64 = 4_000;
/// Content check: blocks of this many frames (200 ms, 1600 samples: 5 Hz bins) …
const CHECK_FRAMES: u32 = 10;
/// … started every this many received frames (1 s).
const CHECK_EVERY: u32 = 50;
/// A tone is heard when it holds this share of the block's energy (3 equal tones: 1/3 each).
const HEARD_SHARE: f64 = 0.1;
/// A talker's own tone must stay below this share in what they hear.
const OWN_SHARE: f64 = 0.05;
/// Lateness histogram: 1 ms buckets up to this, then one overflow bucket.
const HIST_MS: usize = 500;

#[derive(Clone, Debug)]
struct Knobs {
    participants: usize,
    rooms: usize,
    seconds: u64,
    rate: f64,
    settle: u64,
    rtcp_mux: bool,
    perf: Option<String>,
    webrtc: bool,
    /// Everyone else talks too: speech-like audio with pauses instead of quiet noise.
    everyone_talks: bool,
    /// `--media-threads` for the server (None: its default, one per core).
    media_threads: Option<usize>,
    /// Measure the added latency through room 0 (see [`Probe`]).
    latency: bool,
    /// Jitter added to the probe talker's packets, 0 to this many ms each.
    jitter_ms: u64,
}

impl Knobs {
    fn from_env() -> Knobs {
        // 5,000 RTP port pairs in the server's range; the client needs one ephemeral port each.
        let participants = env_or("ROOM_LOAD_PARTICIPANTS", 200usize).clamp(1, 4_000);
        Knobs {
            participants,
            rooms: env_or("ROOM_LOAD_ROOMS", 2usize).clamp(1, participants.min(2_000)),
            seconds: env_or("ROOM_LOAD_SECONDS", 20u64).max(1),
            rate: env_or("ROOM_LOAD_RATE", 50.0f64).clamp(1.0, 1_000.0),
            settle: env_or("ROOM_LOAD_SETTLE", 5u64),
            rtcp_mux: env_or("ROOM_LOAD_RTCP_MUX", 0u8) == 1,
            webrtc: env_or("ROOM_LOAD_WEBRTC", 0u8) == 1,
            everyone_talks: env_or("ROOM_LOAD_EVERYONE_TALKS", 0u8) == 1,
            latency: env_or("ROOM_LOAD_LATENCY", 0u8) == 1,
            jitter_ms: env_or("ROOM_LOAD_JITTER_MS", 0u64).min(200),
            media_threads: env_opt("ROOM_LOAD_MEDIA_THREADS"),
            perf: env_opt("ROOM_LOAD_PERF"),
        }
    }
}

// ==== the server process ====

fn participants(server: &Server, bearer: &str, room_id: i64) -> Vec<serde_json::Value> {
    let (status, body) = http(
        server.http,
        "GET",
        &format!("/api/v1/conferences/{room_id}/participants"),
        bearer,
        "",
    );
    assert_eq!(status, 200, "participants of room {room_id}: {body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Participants per state over all rooms.
fn room_states(
    server: &Server,
    bearer: &str,
    ids: &[i64],
) -> (usize, usize, Vec<serde_json::Value>) {
    let mut in_room = 0;
    let mut all = Vec::new();
    for &id in ids {
        let list = participants(server, bearer, id);
        in_room += list.iter().filter(|p| p["state"] == "in_room").count();
        all.extend(list);
    }
    (in_room, all.len(), all)
}

// ==== /proc ====

/// Every thread of a process: tid → (name, CPU ticks).
fn thread_ticks(pid: &str) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.filter_map(Result::ok) {
        let tid = entry.file_name().to_string_lossy().into_owned();
        let path = format!("/proc/{pid}/task/{tid}/stat");
        let stat = std::fs::read_to_string(&path).unwrap_or_default();
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map_or("?", |(n, _)| n)
            .to_owned();
        out.insert(tid, (name, stat_ticks(&path)));
    }
    out
}

/// CPU seconds per thread name between two snapshots, busiest first.
fn thread_breakdown(
    before: &HashMap<String, (String, u64)>,
    after: &HashMap<String, (String, u64)>,
    ticks_per_s: u64,
) -> Vec<(String, usize, f64)> {
    let mut by_name: HashMap<String, (usize, u64)> = HashMap::new();
    for (tid, (name, ticks)) in after {
        let start = before.get(tid).map_or(0, |(_, t)| *t);
        let e = by_name.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += ticks.saturating_sub(start);
    }
    let mut out: Vec<(String, usize, f64)> = by_name
        .into_iter()
        .map(|(n, (count, t))| (n, count, t as f64 / ticks_per_s as f64))
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out
}

/// Busy ticks of the whole machine (all CPUs) from /proc/stat: everything but idle and iowait.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    v.iter().take(8).sum::<u64>().saturating_sub(idle)
}

/// CPU ticks of every other process (utime + stime + reaped children's), by pid.
fn other_processes(exclude: &[u32]) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if exclude.contains(&pid) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: u64 = after
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum();
        out.insert(pid, ticks);
    }
    out
}

/// Ticks other processes used between two snapshots (those that exited unreaped are missed).
fn others_delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

// ==== the SIP user agent ====

/// The value of the first header named `name` (or its compact form), case-insensitive.
fn header<'a>(msg: &'a str, name: &'static str, compact: &'static str) -> Option<&'a str> {
    headers(msg, name, compact).next()
}

/// Every value of the headers named `name` (or its compact form), in order.
fn headers<'a>(
    msg: &'a str,
    name: &'static str,
    compact: &'static str,
) -> impl Iterator<Item = &'a str> + 'a {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(move |line| {
            let (n, v) = line.split_once(':')?;
            let n = n.trim();
            (n.eq_ignore_ascii_case(name)
                || (!compact.is_empty() && n.eq_ignore_ascii_case(compact)))
            .then(|| v.trim())
        })
}

fn status_code(msg: &str) -> u16 {
    msg.strip_prefix("SIP/2.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn cseq_number(msg: &str) -> Option<u32> {
    header(msg, "CSeq", "")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The URI inside a name-addr (`"x" <sip:…>;tag=…`) or an addr-spec with parameters.
fn uri_of(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_owned(),
        _ => value.split(';').next().unwrap_or(value).trim().to_owned(),
    }
}

/// An established call: what in-dialog requests need.
struct Dialog {
    call_id: String,
    from: String,
    to: String,
    target: String,
    routes: Vec<String>,
}

struct SipUa {
    sock: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    buf: Vec<u8>,
    branches: u64,
    /// Call-IDs the server hung up (it sent BYE).
    hung_up_by_server: Vec<String>,
    /// Other requests from the server (answered 200 unless INVITE or ACK).
    other_requests: u64,
}

impl SipUa {
    fn new(server: SocketAddr) -> SipUa {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the SIP socket");
        let local = sock.local_addr().expect("local addr");
        SipUa {
            sock,
            server,
            local,
            buf: vec![0u8; 65_535],
            branches: 0,
            hung_up_by_server: Vec::new(),
            other_requests: 0,
        }
    }

    fn branch(&mut self) -> String {
        self.branches += 1;
        format!("z9hG4bK-rl-{}", self.branches)
    }

    fn send(&self, msg: &str) {
        let _ = self.sock.send_to(msg.as_bytes(), self.server);
    }

    /// The next response, answering requests from the server meanwhile; `None` at the
    /// deadline.
    fn recv(&mut self, deadline: Instant) -> Option<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            match self.sock.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let msg = String::from_utf8_lossy(&self.buf[..n]).into_owned();
                    if msg.starts_with("SIP/2.0 ") {
                        return Some(msg);
                    }
                    self.answer_request(&msg, from);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Requests from the server: BYE (the server hung up), OPTIONS keep-alives, …
    fn answer_request(&mut self, msg: &str, from: SocketAddr) {
        let method = msg.split(' ').next().unwrap_or("");
        if method == "ACK" {
            return;
        }
        if method == "BYE" {
            if let Some(id) = header(msg, "Call-ID", "i") {
                self.hung_up_by_server.push(id.to_owned());
            }
        } else {
            self.other_requests += 1;
            if method == "INVITE" {
                return;
            }
        }
        let mut out = String::from("SIP/2.0 200 OK\r\n");
        for line in msg.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
            let name = line.split(':').next().unwrap_or("").trim();
            let copy = ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h));
            if copy {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        let _ = self.sock.send_to(out.as_bytes(), from);
    }

    /// Sends `msg` and waits for its final response (same Call-ID and CSeq), retransmitting
    /// every 500 ms until a provisional response or the timeout.
    fn transaction(&mut self, msg: &str, call_id: &str, cseq: u32) -> Result<String, String> {
        let start = Instant::now();
        let give_up = start + Duration::from_secs(8);
        let mut resend = start + Duration::from_millis(500);
        let mut provisional = false;
        self.send(msg);
        loop {
            let wake = if provisional {
                give_up
            } else {
                resend.min(give_up)
            };
            match self.recv(wake) {
                Some(resp) => {
                    if header(&resp, "Call-ID", "i") != Some(call_id)
                        || cseq_number(&resp) != Some(cseq)
                    {
                        continue;
                    }
                    let code = status_code(&resp);
                    if code >= 200 {
                        return Ok(resp);
                    }
                    provisional = true;
                }
                None => {
                    let now = Instant::now();
                    if now >= give_up {
                        return Err(format!("no final answer to CSeq {cseq} within 8 s"));
                    }
                    if !provisional && now >= resend {
                        self.send(msg);
                        resend = now + Duration::from_millis(500);
                    }
                }
            }
        }
    }

    /// Dials room extension `room` as participant `i` with the SDP `sdp`; returns the
    /// dialog and the server's SDP answer.
    fn place_call(&mut self, i: usize, room: usize, sdp: &str) -> Result<(Dialog, String), String> {
        let host = self.server.ip();
        let ext = ROOM_BASE + room;
        let ruri = format!("sip:{ext}@{}", self.server);
        let user = username(i);
        let call_id = format!("rl-{i}-{}@127.0.0.1", self.local.port());
        let from = format!("<sip:{user}@{host}>;tag=rl{i}");
        let to = format!("<sip:{ext}@{host}>");
        let local = self.local;
        let invite = |branch: &str, cseq: u32, auth: Option<&str>| {
            let mut m = format!(
                "INVITE {ruri} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: {from}\r\n\
                 To: {to}\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: {cseq} INVITE\r\n\
                 Contact: <sip:{user}@{local}>\r\n\
                 User-Agent: confero-room-bench\r\n"
            );
            if let Some(a) = auth {
                let _ = write!(m, "Proxy-Authorization: {a}\r\n");
            }
            let _ = write!(
                m,
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            );
            m
        };

        let branch = self.branch();
        let first = self.transaction(&invite(&branch, 1, None), &call_id, 1)?;
        if status_code(&first) != 407 {
            return Err(format!(
                "first INVITE answered {} instead of 407",
                status_code(&first)
            ));
        }
        // ACK the 407: same branch, the To with the 407's tag (RFC 3261 §17.1.1.3).
        let to_407 = header(&first, "To", "t").unwrap_or(&to).to_owned();
        self.send(&format!(
            "ACK {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to_407}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n"
        ));
        let challenge = headers(&first, "Proxy-Authenticate", "")
            .find(|v| {
                let v = v.to_ascii_lowercase();
                v.contains("algorithm=md5") || v.contains("algorithm=\"md5\"")
            })
            .ok_or("407 without an MD5 challenge")?
            .to_owned();
        let cnonce = format!("{i:08x}{:08x}", self.branches);
        let auth = answer_challenge(&challenge, "INVITE", &ruri, &user, &password(i), 1, &cnonce)
            .map_err(|e| format!("cannot answer {challenge:?}: {e}"))?;
        let branch = self.branch();
        let ok = self.transaction(&invite(&branch, 2, Some(&auth)), &call_id, 2)?;
        if status_code(&ok) != 200 {
            return Err(format!(
                "authenticated INVITE answered {}",
                status_code(&ok)
            ));
        }
        let to_tagged = header(&ok, "To", "t").ok_or("200 without To")?.to_owned();
        let target = uri_of(header(&ok, "Contact", "m").ok_or("200 without Contact")?);
        let mut routes: Vec<String> = headers(&ok, "Record-Route", "")
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_owned())
            .collect();
        routes.reverse();
        let answer = body(&ok).to_owned();
        let dialog = Dialog {
            call_id,
            from,
            to: to_tagged,
            target,
            routes,
        };
        let ack = self.in_dialog(&dialog, "ACK", 2);
        self.send(&ack);
        Ok((dialog, answer))
    }

    fn in_dialog(&mut self, d: &Dialog, method: &str, cseq: u32) -> String {
        let branch = self.branch();
        let mut m = format!(
            "{method} {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n",
            target = d.target,
            local = self.local,
            from = d.from,
            to = d.to,
            call_id = d.call_id,
        );
        for r in &d.routes {
            let _ = write!(m, "Route: {r}\r\n");
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }

    /// Sends BYE on every dialog the server has not ended, at most 50 outstanding, one
    /// retransmission; returns (answered 200, unanswered or refused).
    fn hang_up_all(&mut self, dialogs: &[Dialog]) -> (usize, usize) {
        const WINDOW: usize = 50;
        let mut pending: HashMap<String, String> = HashMap::new();
        let mut ok = 0;
        let mut refused = 0;
        let mut settle = |ua: &mut SipUa, pending: &mut HashMap<String, String>, wait: Instant| {
            while let Some(resp) = ua.recv(wait) {
                if cseq_number(&resp) != Some(3) || status_code(&resp) < 200 {
                    continue;
                }
                let Some(id) = header(&resp, "Call-ID", "i") else {
                    continue;
                };
                if pending.remove(id).is_some() {
                    if status_code(&resp) == 200 {
                        ok += 1;
                    } else {
                        refused += 1;
                    }
                }
                if pending.len() < WINDOW / 2 {
                    break;
                }
            }
        };
        for d in dialogs {
            if self.hung_up_by_server.contains(&d.call_id) {
                continue;
            }
            let bye = self.in_dialog(d, "BYE", 3);
            self.send(&bye);
            pending.insert(d.call_id.clone(), bye);
            if pending.len() >= WINDOW {
                settle(self, &mut pending, Instant::now() + Duration::from_secs(2));
            }
        }
        for round in 0..2 {
            if round == 1 {
                for bye in pending.values() {
                    self.send(bye);
                }
            }
            let until = Instant::now() + Duration::from_secs(3);
            while !pending.is_empty() && Instant::now() < until {
                settle(self, &mut pending, until);
            }
        }
        (ok, refused + pending.len())
    }
}

/// A desk phone's offer: PCMU and telephone-event on `rtp_port`.
fn plain_offer(i: usize, rtp_port: u16, rtcp_mux: bool) -> String {
    format!(
        "v=0\r\no=bench {i} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n{}",
        if rtcp_mux { "a=rtcp-mux\r\n" } else { "" }
    )
}

// ==== the media thread ====

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Sends tone `k` of `TALKER_HZ`.
    Talker(usize),
    Listener,
}

/// A streaming Goertzel filter at one frequency.
#[derive(Clone, Copy, Default)]
struct Goertzel {
    s1: f64,
    s2: f64,
}

/// The content check of one participant.
#[derive(Default)]
struct Check {
    /// Frames left in the running block (0: none running).
    frames_left: u32,
    /// Frames to wait before the next block.
    wait: u32,
    filters: [Goertzel; TALKERS_PER_ROOM],
    energy: f64,
    samples: u32,
    blocks: u32,
    passed: u32,
}

/// Receive-side state of one participant's stream from the server.
#[derive(Default)]
struct Rx {
    started: bool,
    /// Extended sequence number of the first packet and the highest so far.
    base: i64,
    highest: i64,
    /// t0: the earliest arrival offset (arrival − n·20 ms, µs since the thread started).
    anchor_us: i64,
    next_due_us: i64,
    /// When the socket was last found empty: the next packet arrived after it.
    last_empty_us: i64,
    received: u64,
    /// Seen more than 40 ms late when polled (client stalls included) …
    late: u64,
    /// … and proven late: the socket was still empty 40 ms after the expected time.
    late_proven: u64,
    reordered: u64,
    rtcp: u64,
    // At the start of the window.
    w_started: bool,
    w_highest: i64,
    w_received: u64,
    w_late: u64,
    w_late_proven: u64,
    w_reordered: u64,
}

/// How a participant's media travels.
enum Wire {
    /// PCMU in plain RTP on a connected socket.
    Plain,
    /// A browser: str0m on an unconnected socket.
    Browser(Box<Browser>),
}

/// A browser's WebRTC session and what it needs to hear Opus.
struct Browser {
    rtc: Rtc,
    mid: Mid,
    pt: Pt,
    local: SocketAddr,
    next_timeout: Instant,
    decoder: Decoder,
    down: Downsampler2x,
    wide: Vec<i16>,
    connected: bool,
    /// Whether this browser's audio is decoded and checked: Opus decoding is the load
    /// client's largest cost, so large runs check the talkers and a sample of listeners.
    checked: bool,
    /// Media str0m handed over, not looked at yet: (sequence number, payload).
    inbox: Vec<(u16, Vec<u8>)>,
}

/// Runs str0m until it waits: datagrams out, media into the inbox.
fn drain_browser(b: &mut Browser, sock: &UdpSocket) {
    loop {
        match b.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                b.next_timeout = t;
                return;
            }
            Ok(Output::Transmit(t)) => {
                let _ = sock.send_to(&t.contents, t.destination);
            }
            Ok(Output::Event(Event::Connected)) => b.connected = true,
            Ok(Output::Event(Event::MediaData(d))) => {
                b.inbox
                    .push((d.seq_range.start().as_u16(), d.data.to_vec()));
            }
            Ok(Output::Event(_)) => {}
            Err(_) => {
                b.next_timeout = Instant::now() + Duration::from_secs(3600);
                return;
            }
        }
    }
}

impl Browser {
    /// A browser-like peer on `sock`'s address and its SDP offer (Chrome's shape: Opus
    /// first, G.722, G.711, telephone-event; the audio-level extension).
    fn offer(local: SocketAddr) -> (Browser, SdpPendingOffer, String) {
        let now = Instant::now();
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_g722(true, false)
            .enable_pcmu(true, false)
            .enable_pcma(true, false)
            .set_reordering_size_audio(0)
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("host candidate"));
        let mut api = rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let browser = Browser {
            rtc,
            mid,
            pt: Pt::from(0),
            local,
            next_timeout: now,
            decoder: Decoder::new(CodecKind::Opus),
            down: Downsampler2x::new(),
            wide: Vec::with_capacity(960),
            connected: false,
            checked: true,
            inbox: Vec::new(),
        };
        (browser, pending, offer.to_sdp_string())
    }

    fn accept(&mut self, pending: SdpPendingOffer, answer: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| format!("answer: {e}"))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("answer refused: {e}"))?;
        let writer = self
            .rtc
            .writer(self.mid)
            .ok_or("no audio after the answer")?;
        let opus = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .ok_or("the server did not take Opus")?;
        self.pt = opus.pt();
        Ok(())
    }
}

struct Part {
    index: usize,
    sock: UdpSocket,
    wire: Wire,
    role: Role,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    sent: u64,
    noise_at: usize,
    rx: Rx,
    check: Check,
}

enum MediaCmd {
    Join(Box<Part>),
    StartWindow,
    EndWindow,
    Stop,
}

/// What the media thread saw during the window.
#[derive(Default)]
struct MediaReport {
    /// Added latency of each probe burst heard in the window (µs).
    latencies_us: Vec<i64>,
    window: Duration,
    participants: usize,
    /// Participants that received no packet at all during the window.
    silent: usize,
    received: u64,
    expected: u64,
    lost: u64,
    late: u64,
    late_proven: u64,
    reordered: u64,
    rtcp: u64,
    /// Lateness (ms after the expected time) of every packet in the window.
    late_hist: Vec<u64>,
    worst: Vec<(usize, u64, u64)>,
    sent: u64,
    send_errors: u64,
    send_ticks: u64,
    send_lag_max: Duration,
    send_lag_over_5ms: u64,
    listeners: usize,
    listeners_hear_all: usize,
    listener_blocks: u64,
    listener_blocks_ok: u64,
    talkers: usize,
    talkers_ok: usize,
    talker_blocks: u64,
    talker_blocks_ok: u64,
    thread_ticks: u64,
}

/// The payloads participants send, computed once.
struct Payloads {
    tones: [[u8; SAMPLES]; TALKERS_PER_ROOM],
    /// One second of noise; listener i starts at a different frame.
    noise: Vec<u8>,
    /// Browsers: one second of each tone and of the noise as Opus frames (encoded in a
    /// row, so a decoder follows them), sent in a loop.
    opus_tones: Vec<Vec<Vec<u8>>>,
    opus_noise: Vec<Vec<u8>>,
}

impl Payloads {
    /// With `everyone_talks`, the "noise" the other participants send is speech-like.
    fn new(everyone_talks: bool) -> Payloads {
        let mut enc = Encoder::new(CodecKind::Pcmu);
        let mut tones = [[0u8; SAMPLES]; TALKERS_PER_ROOM];
        let mut pcm = Vec::with_capacity(8_000);
        let mut out = Vec::with_capacity(8_000);
        for (k, tone) in tones.iter_mut().enumerate() {
            pcm.clear();
            out.clear();
            pcm.extend((0..SAMPLES).map(|n| {
                let t = n as f64 / 8_000.0;
                (TONE_AMPLITUDE * (2.0 * std::f64::consts::PI * TALKER_HZ[k] * t).sin()) as i16
            }));
            enc.encode(&pcm, &mut out);
            tone.copy_from_slice(&out);
        }
        let pcm = if everyone_talks {
            speech_like()
        } else {
            quiet_noise(8_000)
        };
        let mut noise = Vec::with_capacity(pcm.len());
        enc.encode(&pcm, &mut noise);
        Payloads {
            tones,
            noise,
            opus_tones: Vec::new(),
            opus_noise: Vec::new(),
        }
    }

    /// Adds the browsers' Opus frames (16 kHz inside, like the server's).
    fn with_opus(mut self) -> Payloads {
        let second = |f: &dyn Fn(usize) -> i16| -> Vec<Vec<u8>> {
            let mut enc = Encoder::new(CodecKind::Opus);
            let pcm: Vec<i16> = (0..16_000).map(f).collect();
            pcm.chunks(320)
                .map(|frame| {
                    let mut out = Vec::new();
                    enc.encode(frame, &mut out);
                    out
                })
                .collect()
        };
        self.opus_tones = TALKER_HZ
            .iter()
            .map(|&hz| {
                second(&|n| {
                    let t = n as f64 / 16_000.0;
                    (TONE_AMPLITUDE * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
                })
            })
            .collect();
        let noise = quiet_noise(16_000);
        self.opus_noise = second(&|n| noise[n]);
        self
    }
}

/// Ten seconds of something a voice detector takes for speech, as loud as a quiet talker
/// (about −30 dBFS while talking): noise shaped by a 4 Hz syllable rhythm, in talkspurts of
/// 0.4–2 s between pauses of 0.2–1 s, when a conversation's silences are only background
/// noise. Participants start at different frames, so their talkspurts do not line up.
fn speech_like() -> Vec<i16> {
    const RATE: usize = 8_000;
    const PEAK: f64 = 1_800.0;
    let mut rng = XorShift32(0x1234_5678);
    let mut next = || rng.next();
    let mut pcm = Vec::with_capacity(10 * RATE);
    let mut talking = true;
    while pcm.len() < 10 * RATE {
        let (lo, hi) = if talking { (400, 2_000) } else { (200, 1_000) };
        let ms = lo + next() as usize % (hi - lo);
        for n in 0..ms * RATE / 1_000 {
            let noise = f64::from(next() % 2_001) / 1_000.0 - 1.0;
            let level = if talking {
                let syllable =
                    0.5 + 0.5 * (2.0 * std::f64::consts::PI * 4.0 * n as f64 / RATE as f64).sin();
                PEAK * (0.3 + 0.7 * syllable)
            } else {
                f64::from(NOISE_PEAK)
            };
            pcm.push((noise * level) as i16);
        }
        talking = !talking;
    }
    pcm.truncate(10 * RATE);
    pcm
}

/// `n` samples of the listeners' quiet noise, uniform in ±[`NOISE_PEAK`].
fn quiet_noise(n: usize) -> Vec<i16> {
    let mut rng = XorShift32(0x9e37_79b9);
    (0..n)
        .map(|_| ((rng.next() % (2 * NOISE_PEAK as u32 + 1)) as i32 - NOISE_PEAK) as i16)
        .collect()
}

/// xorshift32: cheap, and the same every run.
struct XorShift32(u32);

impl XorShift32 {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

fn goertzel_coeff(hz: f64) -> f64 {
    let n = f64::from(CHECK_FRAMES) * SAMPLES as f64;
    let k = (n * hz / 8_000.0).round();
    2.0 * (2.0 * std::f64::consts::PI * k / n).cos()
}

struct MediaThread {
    epoch: Instant,
    parts: Vec<Part>,
    payloads: Payloads,
    coeffs: [f64; TALKERS_PER_ROOM],
    decoder: Decoder,
    pcm: Vec<i16>,
    packet: Vec<u8>,
    buf: Vec<u8>,
    /// The payload being looked at (copied out of `buf`, or a browser's media).
    payload: Vec<u8>,
    in_window: bool,
    window_start: Instant,
    ticks_at_start: u64,
    report: MediaReport,
    probe: Option<Probe>,
}

/// Talker bursts: the probe's tone sounds for this many frames in every [`BURST_EVERY`].
const BURST_FRAMES: u64 = 10;
const BURST_EVERY: u64 = 50;

/// The latency probe (`ROOM_LOAD_LATENCY=1`): room 0's first talker (participant 0) sends
/// its tone in bursts of 200 ms a second instead of steadily; room 0's fourth participant,
/// a listener, finds each burst's first frame in what it receives. The added latency is
/// the time between the burst's first packet leaving the talker and the frame that starts
/// it reaching the listener, both on this process's clock: the path through the server
/// (its jitter buffer, the wait for its next tick, mixing, encoding) plus loopback (a few
/// µs) and this client's polling (at most [`POLL`]). With `ROOM_LOAD_JITTER_MS` the
/// talker's packets leave late by a random 0 to that many ms each, as over a jittery
/// network, and the server's jitter buffer must wait for them. Room 0's content is not
/// checked (its first tone is mostly silent by design).
struct Probe {
    rooms: usize,
    ear: usize,
    /// Send times (µs) of bursts not heard yet.
    pending: VecDeque<i64>,
    /// Frames in a row the ear heard without the tone.
    quiet: u32,
    latencies_us: Vec<i64>,
    jitter_us: i64,
    rng: XorShift32,
    /// The talker's packets held back by the jitter: (due µs, datagram).
    held: Vec<(i64, Vec<u8>)>,
}

impl Probe {
    fn new(rooms: usize, jitter_ms: u64) -> Probe {
        Probe {
            rooms,
            ear: 3 * rooms,
            pending: VecDeque::new(),
            quiet: 0,
            latencies_us: Vec::new(),
            jitter_us: jitter_ms as i64 * 1_000,
            rng: XorShift32(0x2545_f491),
            held: Vec::new(),
        }
    }

    fn is_in_room_0(&self, index: usize) -> bool {
        index.is_multiple_of(self.rooms)
    }

    /// Share of one frame's energy in the probe's tone (its power, half its amplitude
    /// squared, over the frame's mean square).
    fn tone_share(pcm: &[i16]) -> f64 {
        let mean_square =
            pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64;
        let amplitude = confero_media::tone::amplitude(pcm, TALKER_HZ[0], 8_000);
        if mean_square > 0.0 {
            amplitude * amplitude / 2.0 / mean_square
        } else {
            0.0
        }
    }

    /// The ear received a frame at `at_us`.
    fn heard(&mut self, pcm: &[i16], at_us: i64, in_window: bool) {
        if Self::tone_share(pcm) < 0.1 {
            self.quiet += 1;
            return;
        }
        let onset = self.quiet >= 10;
        self.quiet = 0;
        if !onset {
            return;
        }
        // The latest burst sent before this arrival is the one heard (bursts are a second
        // apart; one never heard, lost or before the window, is passed over).
        let mut heard = None;
        while let Some(&sent) = self.pending.front() {
            if sent > at_us {
                break;
            }
            heard = Some(sent);
            self.pending.pop_front();
        }
        if let (Some(sent), true) = (heard, in_window) {
            self.latencies_us.push(at_us - sent);
        }
    }

    /// A delay of 0 to the jitter, for the talker's next packet.
    fn delay_us(&mut self) -> i64 {
        if self.jitter_us == 0 {
            return 0;
        }
        i64::from(self.rng.next() % 1_000_001) * self.jitter_us / 1_000_000
    }
}

impl MediaThread {
    fn us(&self, t: Instant) -> i64 {
        t.duration_since(self.epoch).as_micros() as i64
    }

    fn run(mut self, commands: mpsc::Receiver<MediaCmd>) -> MediaReport {
        let mut next_send = Instant::now();
        'run: loop {
            loop {
                match commands.try_recv() {
                    Ok(MediaCmd::Join(p)) => self.parts.push(*p),
                    Ok(MediaCmd::StartWindow) => self.start_window(),
                    Ok(MediaCmd::EndWindow) => self.end_window(),
                    Ok(MediaCmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => break 'run,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            if now >= next_send {
                let lag = now - next_send;
                if self.in_window {
                    self.report.send_ticks += 1;
                    self.report.send_lag_max = self.report.send_lag_max.max(lag);
                    if lag > Duration::from_millis(5) {
                        self.report.send_lag_over_5ms += 1;
                    }
                }
                self.send_all();
                next_send += FRAME;
                if lag > FRAME * 5 {
                    // Far behind (the machine stalled us): resynchronise, do not burst.
                    next_send = now + FRAME;
                }
            }
            self.receive_due();
            let now = Instant::now();
            let wake = next_send.min(now + POLL);
            if wake > now {
                std::thread::sleep(wake - now);
            }
        }
        if self.in_window {
            self.end_window();
        }
        self.report
    }

    fn send_all(&mut self) {
        let in_window = self.in_window;
        let now = Instant::now();
        for p in &mut self.parts {
            if let Wire::Browser(b) = &mut p.wire {
                if !b.connected {
                    continue;
                }
                let k = (p.sent % 50) as usize;
                let (payload, level, voice) = match p.role {
                    Role::Talker(t) if p.sent % PAUSE_EVERY != PAUSE_EVERY - 1 => {
                        (&self.payloads.opus_tones[t][k], -20, true)
                    }
                    _ => (&self.payloads.opus_noise[(k + p.index) % 50], -60, false),
                };
                let time = MediaTime::new(p.sent * 960, Frequency::FORTY_EIGHT_KHZ);
                let failed = match b.rtc.writer(b.mid) {
                    Some(w) => w
                        .audio_level(level, voice)
                        .write(b.pt, now, time, payload.clone())
                        .is_err(),
                    None => true,
                };
                p.sent += 1;
                drain_browser(b, &p.sock);
                if in_window {
                    self.report.sent += 1;
                    self.report.send_errors += u64::from(failed);
                }
                continue;
            }
            let probing = p.index == 0 && self.probe.is_some();
            let burst = p.sent % BURST_EVERY;
            let payload: &[u8] = match p.role {
                Role::Talker(k) if probing && burst < BURST_FRAMES => &self.payloads.tones[k],
                Role::Talker(k) if !probing && p.sent % PAUSE_EVERY != PAUSE_EVERY - 1 => {
                    &self.payloads.tones[k]
                }
                _ => {
                    let at = p.noise_at;
                    p.noise_at = (at + SAMPLES) % self.payloads.noise.len();
                    &self.payloads.noise[at..at + SAMPLES]
                }
            };
            self.packet.clear();
            write_rtp(
                &RtpHeader {
                    payload_type: 0,
                    marker: p.sent == 0,
                    sequence: p.seq,
                    timestamp: p.timestamp,
                    ssrc: p.ssrc,
                },
                payload,
                &mut self.packet,
            );
            p.seq = p.seq.wrapping_add(1);
            p.timestamp = p.timestamp.wrapping_add(SAMPLES as u32);
            p.sent += 1;
            if probing {
                let probe = self.probe.as_mut().expect("probing");
                let at = now.duration_since(self.epoch).as_micros() as i64;
                let due = at + probe.delay_us();
                if burst == 0 {
                    probe.pending.push_back(due);
                }
                probe.held.push((due, self.packet.clone()));
                continue;
            }
            let failed = p.sock.send(&self.packet).is_err();
            if in_window {
                self.report.sent += 1;
                self.report.send_errors += u64::from(failed);
            }
        }
    }

    /// Sends the probe's packets whose (jittered) time has come.
    fn release_probe(&mut self) {
        let now_us = self.us(Instant::now());
        let (Some(probe), Some(talker)) = (
            self.probe.as_mut(),
            self.parts.iter().find(|p| p.index == 0),
        ) else {
            return;
        };
        probe.held.retain(|(due, packet)| {
            if *due > now_us {
                return true;
            }
            let _ = talker.sock.send(packet);
            false
        });
    }

    /// Drains the sockets whose next packet is due (or that have had none yet).
    fn receive_due(&mut self) {
        self.release_probe();
        let now = Instant::now();
        let now_us = self.us(now);
        for i in 0..self.parts.len() {
            let p = &mut self.parts[i];
            if let Wire::Browser(b) = &mut p.wire {
                if now >= b.next_timeout {
                    let _ = b.rtc.handle_input(Input::Timeout(now));
                    drain_browser(b, &p.sock);
                }
            }
            let rx = &self.parts[i].rx;
            if rx.started && now_us < rx.next_due_us {
                continue;
            }
            loop {
                match self.parts[i].sock.recv_from(&mut self.buf) {
                    Ok((n, from)) => {
                        let at = self.us(Instant::now());
                        self.on_datagram(i, n, from, at);
                    }
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                    Err(_) => {
                        self.parts[i].rx.last_empty_us = self.us(Instant::now());
                        break;
                    }
                }
            }
        }
    }

    fn on_datagram(&mut self, i: usize, n: usize, from: SocketAddr, at_us: i64) {
        let p = &mut self.parts[i];
        if let Wire::Browser(b) = &mut p.wire {
            let Ok(contents) = (&self.buf[..n]).try_into() else {
                return;
            };
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: b.local,
                    contents,
                },
            );
            if b.rtc.handle_input(input).is_ok() {
                drain_browser(b, &p.sock);
            }
            let media = std::mem::take(&mut b.inbox);
            for (seq, payload) in media {
                self.payload.clear();
                self.payload.extend_from_slice(&payload);
                self.on_frame(i, seq, at_us);
            }
            return;
        }
        let data = &self.buf[..n];
        if is_rtcp(data) {
            self.parts[i].rx.rtcp += 1;
            return;
        }
        let Ok((h, payload)) = parse_rtp(data) else {
            return;
        };
        self.payload.clear();
        self.payload.extend_from_slice(payload);
        self.on_frame(i, h.sequence, at_us);
    }

    /// One media frame from the server for participant `i` (its payload in `payload`):
    /// arrival statistics, and the content check.
    fn on_frame(&mut self, i: usize, sequence: u16, at_us: i64) {
        let in_window = self.in_window;
        let p = &mut self.parts[i];
        // Opus is decoded frame by frame, window or not: its decoder follows the stream.
        let unchecked = matches!(&p.wire, Wire::Browser(b) if !b.checked);
        if let Wire::Browser(b) = &mut p.wire {
            if unchecked {
                self.pcm.clear();
            } else {
                b.wide.clear();
                b.decoder.decode(&self.payload, &mut b.wide);
                self.pcm.clear();
                b.down.process(&b.wide, &mut self.pcm);
            }
        }
        let rx = &mut p.rx;
        let ext = if rx.started {
            let delta = i64::from(sequence.wrapping_sub(rx.highest as u16) as i16);
            rx.highest + delta
        } else {
            rx.started = true;
            rx.base = i64::from(sequence);
            rx.highest = rx.base;
            rx.anchor_us = at_us;
            rx.base
        };
        rx.received += 1;
        if ext > rx.highest {
            rx.highest = ext;
        } else if ext < rx.highest {
            rx.reordered += 1;
        }
        let offset = at_us - (ext - rx.base) * FRAME_US;
        rx.anchor_us = rx.anchor_us.min(offset);
        let lateness = offset - rx.anchor_us;
        if lateness > LATE_US {
            rx.late += 1;
            let proven = rx.last_empty_us - (ext - rx.base) * FRAME_US - rx.anchor_us;
            if proven > LATE_US {
                rx.late_proven += 1;
            }
        }
        rx.next_due_us = rx.anchor_us + (rx.highest + 1 - rx.base) * FRAME_US - EARLY_US;
        let index = p.index;
        let mut room_0_probed = false;
        if let Some(probe) = self.probe.as_mut() {
            if index == probe.ear && matches!(p.wire, Wire::Plain) {
                self.pcm.clear();
                self.decoder.decode(&self.payload, &mut self.pcm);
                probe.heard(&self.pcm, at_us, in_window);
            }
            room_0_probed = probe.is_in_room_0(index);
        }
        if !in_window {
            return;
        }
        let bucket = usize::try_from(lateness / 1_000).unwrap_or(0).min(HIST_MS);
        self.report.late_hist[bucket] += 1;
        if unchecked || room_0_probed {
            return;
        }
        // Content: one 200 ms block a second.
        let c = &mut p.check;
        if c.frames_left == 0 {
            if c.wait > 0 {
                c.wait -= 1;
                return;
            }
            *c = Check {
                frames_left: CHECK_FRAMES,
                wait: CHECK_EVERY - CHECK_FRAMES,
                blocks: c.blocks,
                passed: c.passed,
                ..Check::default()
            };
        }
        if matches!(p.wire, Wire::Plain) {
            self.pcm.clear();
            self.decoder.decode(&self.payload, &mut self.pcm);
        }
        for &s in &self.pcm {
            let x = f64::from(s);
            c.energy += x * x;
            for (f, coeff) in c.filters.iter_mut().zip(self.coeffs) {
                let s0 = x + coeff * f.s1 - f.s2;
                f.s2 = f.s1;
                f.s1 = s0;
            }
        }
        c.samples += self.pcm.len() as u32;
        c.frames_left -= 1;
        if c.frames_left > 0 {
            return;
        }
        let n = f64::from(c.samples.max(1));
        let mut shares = [0.0; TALKERS_PER_ROOM];
        for ((share, f), coeff) in shares.iter_mut().zip(&c.filters).zip(self.coeffs) {
            let power = f.s1 * f.s1 + f.s2 * f.s2 - coeff * f.s1 * f.s2;
            *share = if c.energy > 0.0 {
                (2.0 * power / n / c.energy).min(1.0)
            } else {
                0.0
            };
        }
        let pass = match p.role {
            Role::Listener => shares.iter().all(|&s| s > HEARD_SHARE),
            Role::Talker(own) => shares.iter().enumerate().all(|(k, &s)| {
                if k == own {
                    s < OWN_SHARE
                } else {
                    s > HEARD_SHARE
                }
            }),
        };
        c.blocks += 1;
        c.passed += u32::from(pass);
    }

    fn start_window(&mut self) {
        self.in_window = true;
        self.window_start = Instant::now();
        self.ticks_at_start = stat_ticks("/proc/thread-self/stat");
        self.report = MediaReport {
            late_hist: vec![0; HIST_MS + 1],
            ..MediaReport::default()
        };
        for (i, p) in self.parts.iter_mut().enumerate() {
            let rx = &mut p.rx;
            rx.w_started = rx.started;
            rx.w_highest = rx.highest;
            rx.w_received = rx.received;
            rx.w_late = rx.late;
            rx.w_late_proven = rx.late_proven;
            rx.w_reordered = rx.reordered;
            p.check = Check {
                wait: (i as u32 % (CHECK_EVERY / CHECK_FRAMES)) * CHECK_FRAMES,
                ..Check::default()
            };
        }
    }

    fn end_window(&mut self) {
        self.in_window = false;
        if let Some(probe) = self.probe.as_mut() {
            self.report.latencies_us = std::mem::take(&mut probe.latencies_us);
        }
        let r = &mut self.report;
        r.window = self.window_start.elapsed();
        r.thread_ticks = stat_ticks("/proc/thread-self/stat").saturating_sub(self.ticks_at_start);
        r.participants = self.parts.len();
        let mut worst = Vec::new();
        for p in &self.parts {
            let rx = &p.rx;
            let received = rx.received - rx.w_received;
            if received == 0 {
                r.silent += 1;
            }
            let from = if rx.w_started {
                rx.w_highest
            } else {
                rx.base - 1
            };
            let expected = u64::try_from(rx.highest - from).unwrap_or(0);
            let lost = expected.saturating_sub(received);
            let late = rx.late - rx.w_late;
            r.late_proven += rx.late_proven - rx.w_late_proven;
            r.received += received;
            r.expected += expected;
            r.lost += lost;
            r.late += late;
            r.reordered += rx.reordered - rx.w_reordered;
            r.rtcp += rx.rtcp;
            if lost + late > 0 {
                worst.push((p.index, lost, late));
            }
            let c = &p.check;
            if c.blocks == 0 {
                continue;
            }
            let all_good = f64::from(c.passed) >= 0.9 * f64::from(c.blocks);
            match p.role {
                Role::Listener => {
                    r.listeners += 1;
                    r.listeners_hear_all += usize::from(all_good);
                    r.listener_blocks += u64::from(c.blocks);
                    r.listener_blocks_ok += u64::from(c.passed);
                }
                Role::Talker(_) => {
                    r.talkers += 1;
                    r.talkers_ok += usize::from(all_good);
                    r.talker_blocks += u64::from(c.blocks);
                    r.talker_blocks_ok += u64::from(c.passed);
                }
            }
        }
        worst.sort_by_key(|&(_, lost, late)| std::cmp::Reverse(lost + late));
        worst.truncate(5);
        r.worst = worst;
    }
}

fn percentile_ms(hist: &[u64], p: f64) -> String {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return "-".into();
    }
    let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (ms, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return if ms == HIST_MS {
                format!(">{HIST_MS}")
            } else {
                ms.to_string()
            };
        }
    }
    "-".into()
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let ticks_per_s = clock_ticks_per_second();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("room_load: {knobs:?}");
    println!(
        "machine: {cores} CPUs ({}), Linux {}, kernel clock {ticks_per_s} ticks/s",
        cpu_model(),
        kernel.trim()
    );

    let threads = knobs.media_threads.map(|n| n.to_string());
    let mut args = vec!["--rtp-ports", "20000-29999"];
    if let Some(n) = &threads {
        args.extend(["--media-threads", n.as_str()]);
    }
    let mut server = Server::start(&args);
    let pid = server.pid().to_string();
    let t = Instant::now();
    let (bearer, room_ids) = provision_rooms(&server, knobs.participants, knobs.rooms);
    // Give the engine task a moment to pick up the new production revision.
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = status_kb(&pid, "VmRSS");
    println!(
        "server pid {pid}: sip={} http={}; {} users and {} rooms created and applied in {:.1} s; \
         idle RSS {idle_rss} KiB",
        server.sip,
        server.http,
        knobs.participants,
        knobs.rooms,
        t.elapsed().as_secs_f64(),
    );

    // Frames of noise (or speech) the payloads hold: 1 s, or 10 s of speech.
    let noise_frames = if knobs.everyone_talks { 500 } else { 50 };
    let (to_media, commands) = mpsc::channel();
    let media = MediaThread {
        epoch: Instant::now(),
        parts: Vec::with_capacity(knobs.participants),
        payloads: if knobs.webrtc {
            Payloads::new(knobs.everyone_talks).with_opus()
        } else {
            Payloads::new(knobs.everyone_talks)
        },
        coeffs: TALKER_HZ.map(goertzel_coeff),
        decoder: Decoder::new(CodecKind::Pcmu),
        pcm: Vec::with_capacity(SAMPLES),
        packet: Vec::with_capacity(SAMPLES + 12),
        buf: vec![0u8; 2048],
        payload: Vec::with_capacity(1500),
        in_window: false,
        window_start: Instant::now(),
        ticks_at_start: 0,
        report: MediaReport::default(),
        probe: (knobs.latency && knobs.participants > 3 * knobs.rooms)
            .then(|| Probe::new(knobs.rooms, knobs.jitter_ms)),
    };
    let media_thread = std::thread::Builder::new()
        .name("room-bench-media".into())
        .spawn(move || media.run(commands))
        .expect("spawn the media thread");

    // Place the calls gradually: participant i in room i % rooms; the first
    // TALKERS_PER_ROOM of each room talk.
    let mut ua = SipUa::new(server.sip);
    let mut dialogs = Vec::with_capacity(knobs.participants);
    let mut failures: Vec<(usize, String)> = Vec::new();
    let mut setup_ms: Vec<f64> = Vec::with_capacity(knobs.participants);
    let placing = Instant::now();
    for i in 0..knobs.participants {
        let due = placing + Duration::from_secs_f64(i as f64 / knobs.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let room = i % knobs.rooms;
        let rank = i / knobs.rooms;
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind an RTP socket");
        let local = sock.local_addr().expect("local addr");
        let (offer, mut browser) = if knobs.webrtc {
            let (b, pending, sdp) = Browser::offer(local);
            (sdp, Some((b, pending)))
        } else {
            (plain_offer(i, local.port(), knobs.rtcp_mux), None)
        };
        let started = Instant::now();
        let placed = ua.place_call(i, room, &offer).and_then(|(dialog, answer)| {
            let wire = match browser.take() {
                Some((mut b, pending)) => {
                    b.accept(pending, &answer)?;
                    // The talkers and about 50 listeners per run.
                    let stride = (knobs.participants / 50).max(1);
                    b.checked = rank < TALKERS_PER_ROOM || i % stride == 0;
                    Wire::Browser(Box::new(b))
                }
                None => {
                    let remote = parse_audio(answer.as_bytes())
                        .map_err(|e| format!("answer SDP: {e}"))?
                        .addr;
                    sock.connect(remote).expect("connect the RTP socket");
                    Wire::Plain
                }
            };
            Ok((dialog, wire))
        });
        match placed {
            Ok((dialog, wire)) => {
                setup_ms.push(started.elapsed().as_secs_f64() * 1e3);
                sock.set_nonblocking(true).expect("non-blocking");
                let part = Part {
                    index: i,
                    sock,
                    wire,
                    role: if rank < TALKERS_PER_ROOM {
                        Role::Talker(rank)
                    } else {
                        Role::Listener
                    },
                    seq: (i as u16).wrapping_mul(7919),
                    timestamp: (i as u32).wrapping_mul(104_729),
                    ssrc: 0x5eed_0000 ^ i as u32,
                    sent: 0,
                    // Each at a different frame (of the 10 s of speech, far apart).
                    noise_at: (i * 97 % noise_frames) * SAMPLES,
                    rx: Rx::default(),
                    check: Check::default(),
                };
                to_media
                    .send(MediaCmd::Join(Box::new(part)))
                    .expect("media thread alive");
                dialogs.push(dialog);
            }
            Err(e) => {
                if failures.len() < 5 {
                    eprintln!("participant {i}: {e}");
                }
                failures.push((i, e));
                if !server.is_running() {
                    panic!("the server died; stderr:\n{}", server.stderr_tail());
                }
            }
        }
        if (i + 1) % 100 == 0 {
            println!(
                "  t={:5.1}s  {} calls placed, {} failed",
                placing.elapsed().as_secs_f64(),
                dialogs.len(),
                failures.len()
            );
        }
    }
    let placed_in = placing.elapsed();
    setup_ms.sort_by(f64::total_cmp);
    let setup_p = |p: f64| {
        if setup_ms.is_empty() {
            0.0
        } else {
            setup_ms[((p / 100.0) * (setup_ms.len() - 1) as f64).round() as usize]
        }
    };
    println!(
        "{} calls placed in {:.1} s ({} failed); set-up (INVITE → 200, with the 407 round) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        dialogs.len(),
        placed_in.as_secs_f64(),
        failures.len(),
        setup_p(50.0),
        setup_p(99.0),
        setup_p(100.0)
    );

    // Wait for everyone to be in the mix (first-participant prompts), then for the join
    // tones to end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut in_room, mut listed, _) = room_states(&server, &bearer, &room_ids);
    while in_room < dialogs.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        (in_room, listed, _) = room_states(&server, &bearer, &room_ids);
    }
    println!(
        "participants API: {in_room} of {listed} listed are in_room ({} calls up) after {:.1} s",
        dialogs.len(),
        placing.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(knobs.settle));

    // The measured window.
    let threads_before = thread_ticks(&pid);
    let server_before = cpu_ticks(&pid);
    let self_before = cpu_ticks("self");
    let drops_before = udp_rcvbuf_errors();
    let busy_before = machine_busy_ticks();
    let exclude = [server.pid(), std::process::id()];
    let others_before = other_processes(&exclude);
    let window_start = Instant::now();
    to_media
        .send(MediaCmd::StartWindow)
        .expect("media thread alive");
    std::thread::sleep(Duration::from_secs(knobs.seconds));
    to_media
        .send(MediaCmd::EndWindow)
        .expect("media thread alive");
    let window = window_start.elapsed();
    let server_ticks = cpu_ticks(&pid) - server_before;
    let self_ticks = cpu_ticks("self") - self_before;
    let busy_ticks = machine_busy_ticks() - busy_before;
    let others_ticks = others_delta(&others_before, &other_processes(&exclude));
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let threads_after = thread_ticks(&pid);
    let drops = udp_rcvbuf_errors() - drops_before;
    let loaded_rss = status_kb(&pid, "VmRSS");
    let hwm = status_kb(&pid, "VmHWM");
    let (in_room_after, _, after_list) = room_states(&server, &bearer, &room_ids);
    if let Some(path) = &knobs.perf {
        profile(&pid, path);
    }

    // Hang up, stop streaming, stop the server.
    let hangup_start = Instant::now();
    let (byes_ok, byes_failed) = ua.hang_up_all(&dialogs);
    let hangup_time = hangup_start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (_, left_after_bye, _) = room_states(&server, &bearer, &room_ids);
    let _ = to_media.send(MediaCmd::Stop);
    let report = media_thread.join().expect("media thread");
    let hung_up_by_server = ua.hung_up_by_server.len();
    let tail = server.stderr_tail();
    let alive = server.is_running();
    server.stop();

    // Results.
    let n = report.participants.max(1);
    let secs = report.window.as_secs_f64().max(window.as_secs_f64() * 0.5);
    let server_cpu = server_ticks as f64 / ticks_per_s as f64;
    let client_cpu = self_ticks as f64 / ticks_per_s as f64;
    let media_cpu = report.thread_ticks as f64 / ticks_per_s as f64;
    let frames = n as f64 * secs * 50.0;
    let (lost_srv, recv_srv, jitter_sum) =
        after_list
            .iter()
            .fold((0u64, 0u64, 0.0f64), |(l, r, j), p| {
                (
                    l + p["packets_lost"].as_u64().unwrap_or(0),
                    r + p["packets_received"].as_u64().unwrap_or(0),
                    j + p["jitter_ms"].as_f64().unwrap_or(0.0),
                )
            });
    println!();
    println!(
        "ROOM LOAD: {} participants ({}, 3 talkers per room{}) in {} rooms, window {:.1} s",
        report.participants,
        if knobs.webrtc {
            "browsers: Opus over DTLS-SRTP, RFC 6464 levels"
        } else {
            "PCMU"
        },
        if knobs.everyone_talks {
            ", everyone else talking too"
        } else {
            ""
        },
        knobs.rooms,
        secs
    );
    println!(
        "  server CPU          {server_cpu:.2} s = {:.1}% of one core -> {:.2} us per participant per 20 ms frame",
        100.0 * server_cpu / secs,
        1e6 * server_cpu / frames
    );
    for (name, count, cpu) in thread_breakdown(&threads_before, &threads_after, ticks_per_s)
        .into_iter()
        .filter(|t| t.2 > 0.0)
        .take(6)
    {
        println!(
            "    thread {name:<18} x{count:<3} {cpu:6.2} s = {:5.1}% of one core, {:.2} us per participant-frame",
            100.0 * cpu / secs,
            1e6 * cpu / frames
        );
    }
    println!(
        "  server memory       RSS idle {idle_rss} KiB, loaded {loaded_rss} KiB (peak {hwm} KiB) -> {:.1} KiB per participant",
        (loaded_rss as f64 - idle_rss as f64) / n as f64
    );
    println!(
        "  packets from server {:.0}/s of {:.0}/s expected ({:.2}%); {} RTCP packets since join",
        report.received as f64 / secs,
        n as f64 * 50.0,
        pct(report.received, (n as f64 * secs * 50.0) as u64),
        report.rtcp
    );
    println!(
        "  lost                {} of {} ({:.3}%), {} reordered; {} participants heard nothing",
        report.lost,
        report.expected,
        pct(report.lost, report.expected),
        report.reordered,
        report.silent
    );
    println!(
        "  late (> 40 ms)      {} proven ({:.3}%), {} as polled ({:.3}%, client stalls included); \
         lateness as polled p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        report.late_proven,
        pct(report.late_proven, report.received),
        report.late,
        pct(report.late, report.received),
        percentile_ms(&report.late_hist, 50.0),
        percentile_ms(&report.late_hist, 99.0),
        percentile_ms(&report.late_hist, 99.9),
        percentile_ms(&report.late_hist, 100.0)
    );
    if knobs.latency {
        let mut l = report.latencies_us.clone();
        l.sort_unstable();
        let at = |q: f64| {
            l.get(((l.len() as f64 - 1.0) * q).round() as usize)
                .map_or(f64::NAN, |&us| us as f64 / 1_000.0)
        };
        println!(
            "  added latency       room 0, talker to listener, {} bursts{}: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms (min {:.1} ms)",
            l.len(),
            if knobs.jitter_ms > 0 {
                format!(", the talker's packets jittered by 0-{} ms", knobs.jitter_ms)
            } else {
                String::new()
            },
            at(0.5),
            at(0.95),
            at(1.0),
            at(0.0)
        );
    }
    if !report.worst.is_empty() {
        let worst: Vec<String> = report
            .worst
            .iter()
            .map(|(i, lost, late)| format!("#{i}: {lost} lost, {late} late"))
            .collect();
        println!("                      worst: {}", worst.join("; "));
    }
    println!(
        "  content             listeners hearing all 3 talkers: {} of {} ({:.1}% of 200 ms blocks); \
         talkers hearing the 2 others and not themselves: {} of {} ({:.1}% of blocks)",
        report.listeners_hear_all,
        report.listeners,
        pct(report.listener_blocks_ok, report.listener_blocks),
        report.talkers_ok,
        report.talkers,
        pct(report.talker_blocks_ok, report.talker_blocks)
    );
    println!(
        "  server's view       {in_room_after} in_room after the window; since join {:.3}% lost, mean jitter {:.2} ms",
        pct(lost_srv, recv_srv + lost_srv),
        jitter_sum / after_list.len().max(1) as f64
    );
    println!(
        "  client              {} packets sent ({} errors); send clock late > 5 ms on {} of {} ticks, max {:.1} ms; \
         CPU {client_cpu:.2} s = {:.1}% of one core (media thread {media_cpu:.2} s)",
        report.sent,
        report.send_errors,
        report.send_lag_over_5ms,
        report.send_ticks,
        report.send_lag_max.as_secs_f64() * 1e3,
        100.0 * client_cpu / secs
    );
    // /proc/stat samples on timer ticks and misses much of a periodic 20 ms load; the other
    // processes' own counters miss those that exited unreaped. Take the larger.
    let others = (busy_ticks as f64 - server_ticks as f64 - self_ticks as f64)
        .max(others_ticks as f64)
        / ticks_per_s as f64;
    println!(
        "  machine             {:.1}% of one core busy in all, of which other processes {:.1}%; load average {}",
        100.0 * busy_ticks as f64 / ticks_per_s as f64 / secs,
        100.0 * others.max(0.0) / secs,
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    if others > 0.25 * secs {
        println!(
            "  WARNING             other processes used {:.0}% of a core during the window: these \
             figures are not representative, rerun on a quiet machine",
            100.0 * others / secs
        );
    }
    println!(
        "  UDP drops           {drops} datagrams dropped on full receive buffers (machine-wide)"
    );
    println!(
        "  hang-up             {byes_ok} BYE -> 200, {byes_failed} failed, {hung_up_by_server} hung up by the server, in {:.1} s; \
         {left_after_bye} participants listed afterwards; {} other requests from the server",
        hangup_time.as_secs_f64(),
        ua.other_requests
    );
    if !failures.is_empty() || !alive {
        println!(
            "  FAILURES: {} calls failed (first: {:?}); server alive at the end: {alive}",
            failures.len(),
            failures.first()
        );
        println!("  server stderr (last lines):\n{tail}");
    }
}
