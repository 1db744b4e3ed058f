//! SDP offer/answer for one audio stream (RFC 8866 syntax, RFC 3264 negotiation).
//!
//! Confero terminates audio only, over plain RTP, so this module reads exactly what that
//! needs from a remote description ([`parse_audio`] → [`RemoteAudio`]) and writes exactly
//! what it sends ([`answer`], [`offer`]); [`negotiated_from_answer`] closes the loop when we
//! were the offerer. Codecs are named (`"PCMU/8000"`, `"G722/8000"`, `"opus/48000/2"`), so
//! this crate knows nothing of the media crate.
//!
//! # Parsing is tolerant where it may be, strict where it must be
//! Lines this module does not use (bandwidth, ICE, crypto, SSRC, extmap, `m=image` for
//! T.38, …) are skipped without being parsed, so a quirk in one of them cannot turn an
//! otherwise usable offer into an error. The lines it uses (`v=`, `c=`, `m=`) must be
//! well-formed; a malformed `a=rtpmap`/`a=fmtp` is ignored (a static payload type is then
//! still known from RFC 3551's table, a dynamic one is dropped). No input panics; the
//! [`SdpError`] says which status answers it: 400 for what is not SDP, 488 for SDP we
//! cannot accept (with a RFC 3261 `Warning` code for the 488's header).
//!
//! `ezk-sdp-types` was weighed as the parser and is used only by the tests, as an
//! independent check that what we write is valid SDP: its `SessionDescription::parse`
//! fails the whole description when any one of two dozen attribute parsers rejects a line,
//! and on media types other than audio, video, text and application (a T.38 re-INVITE's
//! `m=image` would be answered 400 instead of 488).
//!
//! # Answers mirror every m-line
//! RFC 3264 §6 wants one m-line in the answer per m-line in the offer, in order. The
//! chosen audio stream is answered; every other m-line (video, a second audio stream, a
//! data channel) is echoed with port 0, which rejects it.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::StatusCode;

/// Media direction (RFC 3264 §5.1), as seen by whoever wrote the description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sends and receives (the default when no attribute is present).
    SendRecv,
    /// Sends only: the other side should not send (e.g. "puts you on hold").
    SendOnly,
    /// Receives only.
    RecvOnly,
    /// Neither sends nor receives.
    Inactive,
}

impl Direction {
    /// The attribute name (`sendrecv`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction seen from the other end: sendonly ↔ recvonly.
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// Whether the side with this direction sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side with this direction receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn from_flags(sends: bool, receives: bool) -> Direction {
        match (sends, receives) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    fn from_attribute(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One RTP payload format: `a=rtpmap` (or RFC 3551's static table) plus its `a=fmtp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    /// The payload type number used on the wire for this session.
    pub payload_type: u8,
    /// The encoding name, upper-case (`PCMU`, `G722`, `OPUS`, `TELEPHONE-EVENT`).
    pub encoding: String,
    /// The RTP clock rate (8000 for G.722, per RFC 3551's historical quirk).
    pub clock_rate: u32,
    /// Number of channels (1 unless the rtpmap says otherwise; opus says 2).
    pub channels: u16,
    /// The `a=fmtp` parameters for this payload type, as written.
    pub fmtp: Option<String>,
}

impl RtpMap {
    /// Whether this is RFC 4733 `telephone-event` (DTMF digits as events).
    pub fn is_telephone_event(&self) -> bool {
        self.encoding.eq_ignore_ascii_case("telephone-event")
    }
}

/// One m-line of a description, kept so that an answer can reject the ones it does not use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaLine {
    /// The media type (`audio`, `video`, `application`, `image`, …).
    pub media: String,
    /// The transport protocol as written (`RTP/AVP`, `UDP/TLS/RTP/SAVPF`, `udptl`, …).
    pub protocol: String,
    /// The format list as written (`0 8 101`, `t38`, `webrtc-datachannel`).
    pub formats: String,
}

/// The audio stream of a remote SDP (offer or answer): its first audio m-line with a
/// non-zero port, or failing that its first audio m-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteAudio {
    /// Where to send RTP: the media-level `c=` address (else the session-level one) and the
    /// m-line's port. `0.0.0.0:0` when the port is 0 and no address was given.
    pub addr: SocketAddr,
    /// `a=rtcp-mux`: RTCP shares the RTP port.
    pub rtcp_mux: bool,
    /// The payload formats in m-line order. Static payload types (RFC 3551: 0 PCMU, 8 PCMA,
    /// 9 G722, …) are known without an rtpmap; a dynamic one without an rtpmap is left out.
    pub formats: Vec<RtpMap>,
    /// The direction attribute of the m-line, else of the session, else sendrecv.
    pub direction: Direction,
    /// The transport protocol as written (`RTP/AVP`, `RTP/SAVPF`, `UDP/TLS/RTP/SAVPF`, …).
    pub protocol: String,
    /// The m-line's port is 0: the stream is disabled (or was rejected, in an answer).
    pub port_zero: bool,
    /// The m-line's `a=mid`, echoed in the answer.
    pub mid: Option<String>,
    /// Which of `m_lines` this stream is.
    pub index: usize,
    /// Every m-line of the description, in order.
    pub m_lines: Vec<MediaLine>,
}

impl RemoteAudio {
    /// Whether this is a WebRTC description (DTLS-SRTP: `UDP/TLS/RTP/SAVP[F]`), which a
    /// WebRTC stack must answer rather than this module.
    pub fn is_webrtc(&self) -> bool {
        self.protocol
            .to_ascii_uppercase()
            .starts_with("UDP/TLS/RTP/SAVP")
    }

    /// The direction that counts for media: as written, except that an RFC 2543-style hold
    /// (connection address `0.0.0.0`) means the remote side cannot receive.
    pub fn effective_direction(&self) -> Direction {
        if self.addr.ip().is_unspecified() {
            Direction::from_flags(self.direction.sends(), false)
        } else {
            self.direction
        }
    }
}

/// What both sides agreed on for the audio stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The codec both sides use, with the payload type and fmtp of the remote description.
    pub codec: RtpMap,
    /// The payload type of `telephone-event` at the codec's clock rate (RFC 4733 §2.1), if
    /// both sides have it.
    pub telephone_event: Option<u8>,
    /// Where to send RTP.
    pub remote: SocketAddr,
    /// Our direction: whether we send and whether we should expect to receive.
    pub direction: Direction,
}

/// Our side of the audio stream: what goes in `o=`, `c=` and `m=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMedia {
    /// The address the remote side sends RTP to.
    pub addr: IpAddr,
    /// The RTP port (RTCP on `port + 1` unless rtcp-mux was agreed).
    pub port: u16,
    /// `o=` session id: constant for the dialog.
    pub session_id: u64,
    /// `o=` session version: incremented on every new offer or answer that changes.
    pub session_version: u64,
    /// `o=` username, e.g. `confero` (whitespace is replaced by `-`).
    pub username: String,
}

/// Why a description was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body does not start with `v=0`.
    #[error("not an SDP body: it must start with v=0")]
    NotSdp,
    /// A line is not `<letter>=<value>`, or a `c=`/`m=` line is malformed.
    #[error("malformed SDP at line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// There is no audio m-line.
    #[error("no audio stream offered")]
    NoAudio,
    /// The audio m-line has no `c=`, neither its own nor the session's.
    #[error("no connection address for the audio stream")]
    NoConnectionAddress,
    /// The connection address is a host name; resolving it is not this layer's business
    /// and no SIP peer we serve sends one.
    #[error("connection address {0:?} is not an IP address")]
    HostName(String),
    /// The remote address is IPv6 and ours IPv4, or the other way round.
    #[error("remote media address is of another IP family than ours")]
    AddressFamily,
    /// The audio stream's port is 0: it is disabled (offer) or rejected (answer).
    #[error("the audio stream is disabled (port 0)")]
    AudioDisabled,
    /// The transport is not plain RTP (SRTP and DTLS-SRTP are not supported yet).
    #[error("unsupported media transport {0}")]
    UnsupportedTransport(String),
    /// None of our codecs is in the description.
    #[error("no codec in common")]
    NoCommonCodec,
}

impl SdpError {
    /// The SIP status that answers an INVITE (or UPDATE, re-INVITE) carrying this SDP.
    pub fn status_code(&self) -> StatusCode {
        match self {
            SdpError::NotSdp | SdpError::Malformed { .. } | SdpError::NoConnectionAddress => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::NOT_ACCEPTABLE_HERE,
        }
    }

    /// The RFC 3261 §20.43 warning code (and text) to put in a `Warning` header of the
    /// 488, saying which part of the description was not acceptable.
    pub fn warning(&self) -> Option<(u16, &'static str)> {
        match self {
            SdpError::HostName(_) | SdpError::AddressFamily => {
                Some((301, "Incompatible network address formats"))
            }
            SdpError::UnsupportedTransport(_) => Some((302, "Incompatible transport protocol")),
            SdpError::NoAudio | SdpError::AudioDisabled => Some((304, "Media type not available")),
            SdpError::NoCommonCodec => Some((305, "Incompatible media format")),
            _ => None,
        }
    }
}

// ==== parsing ====

/// RFC 3551 §6 static audio payload types: (pt, encoding, clock rate, channels).
const STATIC_PAYLOAD_TYPES: &[(u8, &str, u32, u16)] = &[
    (0, "PCMU", 8000, 1),
    (3, "GSM", 8000, 1),
    (4, "G723", 8000, 1),
    (5, "DVI4", 8000, 1),
    (6, "DVI4", 16000, 1),
    (7, "LPC", 8000, 1),
    (8, "PCMA", 8000, 1),
    (9, "G722", 8000, 1),
    (10, "L16", 44100, 2),
    (11, "L16", 44100, 1),
    (12, "QCELP", 8000, 1),
    (13, "CN", 8000, 1),
    (14, "MPA", 90000, 1),
    (15, "G728", 8000, 1),
    (16, "DVI4", 11025, 1),
    (17, "DVI4", 22050, 1),
    (18, "G729", 8000, 1),
];

/// A connection address as read from `c=`: an IP, or a host name we will not resolve.
#[derive(Clone, Debug)]
enum ConnAddr {
    Ip(IpAddr),
    HostName(String),
}

/// One m-line and the attributes we use from its section.
#[derive(Debug, Default)]
struct Section {
    media: String,
    port: u16,
    protocol: String,
    formats: String,
    conn: Option<ConnAddr>,
    direction: Option<Direction>,
    rtcp_mux: bool,
    mid: Option<String>,
    /// (pt, encoding upper-case, clock, channels), first rtpmap per pt wins.
    rtpmaps: Vec<(u8, String, u32, u16)>,
    /// (pt, params), first fmtp per pt wins.
    fmtps: Vec<(u8, String)>,
}

/// Reads the audio stream of a remote description (an offer or an answer).
///
/// Line endings may be CRLF or LF. Errors: [`SdpError::NotSdp`] and
/// [`SdpError::Malformed`] (400) for what is not SDP, [`SdpError::NoAudio`],
/// [`SdpError::HostName`] (488), [`SdpError::NoConnectionAddress`] (400).
pub fn parse_audio(sdp: &[u8]) -> Result<RemoteAudio, SdpError> {
    let mut seen_version = false;
    let mut session_conn: Option<ConnAddr> = None;
    let mut session_direction: Option<Direction> = None;
    let mut sections: Vec<Section> = Vec::new();

    for (i, raw) in sdp.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let malformed = |reason| SdpError::Malformed {
            line: line_no,
            reason,
        };
        let (kind, value) = match raw {
            [kind, b'=', value @ ..] if kind.is_ascii_lowercase() => (*kind, value),
            _ if !seen_version => return Err(SdpError::NotSdp),
            _ => return Err(malformed("not a <type>=<value> line")),
        };
        if !seen_version {
            if kind != b'v' || value.trim_ascii() != b"0" {
                return Err(SdpError::NotSdp);
            }
            seen_version = true;
            continue;
        }
        match kind {
            b'c' => {
                let value = std::str::from_utf8(value).map_err(|_| malformed("not UTF-8"))?;
                let conn = parse_connection(value).ok_or_else(|| malformed("bad c= line"))?;
                match sections.last_mut() {
                    Some(section) => section.conn = Some(conn),
                    None => session_conn = Some(conn),
                }
            }
            b'm' => {
                let value = std::str::from_utf8(value).map_err(|_| malformed("not UTF-8"))?;
                sections.push(parse_media(value).ok_or_else(|| malformed("bad m= line"))?);
            }
            b'a' => {
                // Attributes we do not use may be in any charset (RFC 8866 §6.10).
                let Ok(value) = std::str::from_utf8(value) else {
                    continue;
                };
                match sections.last_mut() {
                    Some(section) => parse_media_attribute(section, value.trim()),
                    None => {
                        if let Some(d) = Direction::from_attribute(value.trim()) {
                            session_direction = Some(d);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::NotSdp);
    }

    let index = sections
        .iter()
        .position(|s| s.media == "audio" && s.port != 0)
        .or_else(|| sections.iter().position(|s| s.media == "audio"))
        .ok_or(SdpError::NoAudio)?;
    let m_lines = sections
        .iter()
        .map(|s| MediaLine {
            media: s.media.clone(),
            protocol: s.protocol.clone(),
            formats: s.formats.clone(),
        })
        .collect();
    let Some(audio) = sections.get_mut(index) else {
        return Err(SdpError::NoAudio);
    };

    let port_zero = audio.port == 0;
    let ip = match audio.conn.take().or(session_conn) {
        Some(ConnAddr::Ip(ip)) => ip,
        Some(ConnAddr::HostName(host)) => return Err(SdpError::HostName(host)),
        None if port_zero => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => return Err(SdpError::NoConnectionAddress),
    };

    let formats = audio
        .formats
        .split_ascii_whitespace()
        .filter_map(|fmt| fmt.parse::<u8>().ok())
        .filter(|&pt| pt < 128)
        .filter_map(|pt| rtp_map(audio, pt))
        .collect();

    Ok(RemoteAudio {
        addr: SocketAddr::new(ip, audio.port),
        rtcp_mux: audio.rtcp_mux,
        formats,
        direction: audio
            .direction
            .or(session_direction)
            .unwrap_or(Direction::SendRecv),
        protocol: std::mem::take(&mut audio.protocol),
        port_zero,
        mid: audio.mid.take(),
        index,
        m_lines,
    })
}

/// `IN IP4 192.0.2.1`, `IN IP4 224.2.1.1/127/3`, `IN IP6 2001:db8::1`.
fn parse_connection(value: &str) -> Option<ConnAddr> {
    let mut tokens = value.split_ascii_whitespace();
    let (net, family, addr) = (tokens.next()?, tokens.next()?, tokens.next()?);
    if tokens.next().is_some() || net != "IN" {
        return None;
    }
    // Multicast TTL and address count follow a slash; unicast is all we use.
    let addr = addr.split('/').next()?;
    let ip = match family {
        "IP4" => addr.parse().map(IpAddr::V4).ok(),
        "IP6" => addr.parse().map(IpAddr::V6).ok(),
        _ => return None,
    };
    match ip {
        Some(ip) => Some(ConnAddr::Ip(ip)),
        None if is_host_name(addr) => Some(ConnAddr::HostName(addr.to_owned())),
        None => None,
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && s.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `audio 49170 RTP/AVP 0 8 101`, `audio 49170/2 RTP/AVP 0`, `image 0 udptl t38`.
fn parse_media(value: &str) -> Option<Section> {
    // Tokens are visible ASCII (RFC 8866 §9); they may be echoed in an answer.
    if !value
        .bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
    {
        return None;
    }
    let mut tokens = value.split_ascii_whitespace();
    let media = tokens.next()?;
    let port = tokens.next()?.split('/').next()?.parse().ok()?;
    let protocol = tokens.next()?;
    Some(Section {
        media: media.to_ascii_lowercase(),
        port,
        protocol: protocol.to_owned(),
        formats: tokens.collect::<Vec<_>>().join(" "),
        ..Section::default()
    })
}

/// Records the attributes of an m-section that we use; ignores the rest, and malformed
/// ones.
fn parse_media_attribute(section: &mut Section, attr: &str) {
    let (name, value) = match attr.split_once(':') {
        Some((name, value)) => (name, value.trim()),
        None => (attr, ""),
    };
    match name {
        "rtpmap" => {
            if let Some(map) = parse_rtpmap(value) {
                if !section.rtpmaps.iter().any(|m| m.0 == map.0) {
                    section.rtpmaps.push(map);
                }
            }
        }
        "fmtp" => {
            let (pt, params) = value
                .split_once(|c: char| c.is_ascii_whitespace())
                .unwrap_or((value, ""));
            if let Ok(pt) = pt.parse::<u8>() {
                if !section.fmtps.iter().any(|f| f.0 == pt) {
                    section.fmtps.push((pt, params.trim().to_owned()));
                }
            }
        }
        "rtcp-mux" => section.rtcp_mux = true,
        // Echoed in the answer, so only a well-formed token.
        "mid" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()) => {
            section.mid = Some(value.to_owned())
        }
        _ => {
            if let Some(d) = Direction::from_attribute(name) {
                section.direction = Some(d);
            }
        }
    }
}

/// `96 opus/48000/2` → (96, "OPUS", 48000, 2).
fn parse_rtpmap(value: &str) -> Option<(u8, String, u32, u16)> {
    let (pt, encoding) = value.split_once(|c: char| c.is_ascii_whitespace())?;
    let pt: u8 = pt.parse().ok().filter(|&pt| pt < 128)?;
    let mut parts = encoding.trim().split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let clock_rate: u32 = parts.next()?.parse().ok().filter(|&c| c > 0)?;
    let channels: u16 = match parts.next() {
        Some(ch) => ch.parse().ok().filter(|&c| c > 0)?,
        None => 1,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((pt, name.to_ascii_uppercase(), clock_rate, channels))
}

/// The format of payload type `pt` in `section`: its rtpmap, else the static table.
fn rtp_map(section: &Section, pt: u8) -> Option<RtpMap> {
    let (encoding, clock_rate, channels) = match section.rtpmaps.iter().find(|m| m.0 == pt) {
        Some((_, encoding, clock, channels)) => (encoding.clone(), *clock, *channels),
        None => STATIC_PAYLOAD_TYPES
            .iter()
            .find(|s| s.0 == pt)
            .map(|&(_, encoding, clock, channels)| (encoding.to_owned(), clock, channels))?,
    };
    Some(RtpMap {
        payload_type: pt,
        encoding,
        clock_rate,
        channels,
        fmtp: section
            .fmtps
            .iter()
            .find(|f| f.0 == pt)
            .map(|f| f.1.clone()),
    })
}

// ==== negotiation ====

/// A codec preference: `NAME/CLOCK[/CHANNELS]`, as in the rtpmap.
#[derive(Clone, Copy, Debug)]
struct Pref<'a> {
    name: &'a str,
    clock_rate: u32,
    channels: Option<u16>,
}

impl<'a> Pref<'a> {
    fn parse(pref: &'a str) -> Option<Pref<'a>> {
        let mut parts = pref.trim().split('/');
        let name = parts.next().filter(|n| !n.is_empty())?;
        let clock_rate = parts.next()?.parse().ok().filter(|&c| c > 0)?;
        let channels = match parts.next() {
            Some(ch) => Some(ch.parse().ok().filter(|&c| c > 0)?),
            None => None,
        };
        if parts.next().is_some() || name.eq_ignore_ascii_case("telephone-event") {
            return None;
        }
        Some(Pref {
            name,
            clock_rate,
            channels,
        })
    }

    fn matches(&self, format: &RtpMap) -> bool {
        format.encoding.eq_ignore_ascii_case(self.name)
            && format.clock_rate == self.clock_rate
            && self.channels.is_none_or(|ch| ch == format.channels)
    }
}

fn parse_prefs<'a>(prefs: &[&'a str]) -> Vec<Pref<'a>> {
    prefs.iter().filter_map(|p| Pref::parse(p)).collect()
}

/// Plain RTP: RTP/AVP, and RTP/AVPF (the same packets; we just send no early feedback).
fn check_transport(protocol: &str) -> Result<(), SdpError> {
    if protocol.eq_ignore_ascii_case("RTP/AVP") || protocol.eq_ignore_ascii_case("RTP/AVPF") {
        Ok(())
    } else {
        Err(SdpError::UnsupportedTransport(protocol.to_owned()))
    }
}

/// The `telephone-event` format at `clock_rate`, if the description has one.
fn telephone_event(formats: &[RtpMap], clock_rate: u32) -> Option<&RtpMap> {
    formats
        .iter()
        .find(|f| f.is_telephone_event() && f.clock_rate == clock_rate)
}

/// RFC 3264 answer to `offer`, accepting its audio stream.
///
/// Picks the first codec of `prefs` (e.g. `["G722/8000", "PCMU/8000", "PCMA/8000"]`) that
/// the offer has, matching name (case-insensitive), clock rate and, when the preference
/// gives them, channels; the answer keeps the offer's payload type. `telephone-event` at
/// the codec's clock rate is added with the offer's payload type (events 0-16) when
/// offered. The direction mirrors the offer's (sendonly → recvonly, inactive → inactive,
/// hold by `c=0.0.0.0` → recvonly); rtcp-mux is agreed when offered; ptime is 20 ms. All
/// other m-lines of the offer are rejected with port 0.
///
/// Errors (all 488): the audio stream has port 0, its transport is not RTP/AVP(F) (SRTP,
/// DTLS-SRTP: not yet), its address is of the other IP family than `local.addr`, or no
/// codec is in common.
pub fn answer(
    offer: &RemoteAudio,
    local: &LocalMedia,
    prefs: &[&str],
) -> Result<(String, Negotiated), SdpError> {
    if offer.port_zero {
        return Err(SdpError::AudioDisabled);
    }
    check_transport(&offer.protocol)?;
    if !offer.addr.ip().is_unspecified() && offer.addr.is_ipv4() != local.addr.is_ipv4() {
        return Err(SdpError::AddressFamily);
    }
    let (pref, codec) = parse_prefs(prefs)
        .into_iter()
        .find_map(|pref| {
            offer
                .formats
                .iter()
                .find(|f| !f.is_telephone_event() && pref.matches(f))
                .map(|f| (pref, f))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let te = telephone_event(&offer.formats, codec.clock_rate);
    let direction = offer.effective_direction().reversed();

    let mut sdp = String::with_capacity(320);
    write_session(&mut sdp, local);
    let audio = AudioLine {
        port: local.port,
        protocol: &offer.protocol,
        codecs: vec![(
            codec.payload_type,
            pref.name,
            codec.clock_rate,
            codec.channels,
        )],
        telephone_events: te
            .map(|te| (te.payload_type, te.clock_rate))
            .into_iter()
            .collect(),
        direction,
        rtcp_mux: offer.rtcp_mux,
        mid: offer.mid.as_deref(),
    };
    if offer.m_lines.is_empty() {
        audio.write(&mut sdp);
    }
    for (i, m) in offer.m_lines.iter().enumerate() {
        if i == offer.index {
            audio.write(&mut sdp);
        } else {
            // RFC 3264 §6: a rejected stream keeps its media type, transport and formats.
            let sep = if m.formats.is_empty() { "" } else { " " };
            line(
                &mut sdp,
                format_args!("m={} 0 {}{sep}{}", m.media, m.protocol, m.formats),
            );
        }
    }

    let negotiated = Negotiated {
        codec: codec.clone(),
        telephone_event: te.map(|te| te.payload_type),
        remote: offer.addr,
        direction,
    };
    Ok((sdp, negotiated))
}

/// An offer from us (an invitation, a re-INVITE): the codecs of `prefs` in that order with
/// their usual payload types (PCMU 0, PCMA 8, G722 9, others dynamic from 96), then
/// `telephone-event` (101 at 8000 Hz; dynamic for another clock rate of an offered codec),
/// sendrecv, ptime 20, RTP/AVP. Preferences that are not `NAME/CLOCK[/CHANNELS]` are
/// skipped; give at least one that is.
pub fn offer(local: &LocalMedia, prefs: &[&str]) -> String {
    const TELEPHONE_EVENT_8000: u8 = 101;
    let prefs = parse_prefs(prefs);

    let mut used: Vec<u8> = vec![TELEPHONE_EVENT_8000];
    let mut codecs = Vec::with_capacity(prefs.len());
    for pref in &prefs {
        let static_pt = STATIC_PAYLOAD_TYPES.iter().find(|s| {
            s.1.eq_ignore_ascii_case(pref.name)
                && s.2 == pref.clock_rate
                && pref.channels.is_none_or(|ch| ch == s.3)
        });
        let (pt, channels) = match static_pt {
            Some(&(pt, _, _, channels)) => (pt, channels),
            None => (next_dynamic(&used), pref.channels.unwrap_or(1)),
        };
        if used.contains(&pt) && pt != TELEPHONE_EVENT_8000 {
            continue; // the same codec twice
        }
        used.push(pt);
        codecs.push((pt, pref.name, pref.clock_rate, channels));
    }
    let mut telephone_events: Vec<(u8, u32)> = Vec::new();
    for &(_, _, clock_rate, _) in &codecs {
        if telephone_events.iter().all(|te| te.1 != clock_rate) {
            let pt = if clock_rate == 8000 {
                TELEPHONE_EVENT_8000
            } else {
                let pt = next_dynamic(&used);
                used.push(pt);
                pt
            };
            telephone_events.push((pt, clock_rate));
        }
    }

    let mut sdp = String::with_capacity(320);
    write_session(&mut sdp, local);
    AudioLine {
        port: local.port,
        protocol: "RTP/AVP",
        codecs,
        telephone_events,
        direction: Direction::SendRecv,
        rtcp_mux: false,
        mid: None,
    }
    .write(&mut sdp);
    sdp
}

/// The lowest dynamic payload type (96-127) not in `used`; 127 if all are (never: a
/// handful of codecs).
fn next_dynamic(used: &[u8]) -> u8 {
    (96..=127).find(|pt| !used.contains(pt)).unwrap_or(127)
}

/// Reads the answer to our offer: the codec is the first format of the answer (its order
/// is the answerer's preference) that is in `prefs`; the remote address and payload types
/// are the answer's. Errors (488): the answer rejected the stream (port 0), its transport
/// is not RTP/AVP(F), or it has none of our codecs.
pub fn negotiated_from_answer(
    answer: &RemoteAudio,
    prefs: &[&str],
) -> Result<Negotiated, SdpError> {
    if answer.port_zero {
        return Err(SdpError::AudioDisabled);
    }
    check_transport(&answer.protocol)?;
    let prefs = parse_prefs(prefs);
    let codec = answer
        .formats
        .iter()
        .find(|f| !f.is_telephone_event() && prefs.iter().any(|p| p.matches(f)))
        .ok_or(SdpError::NoCommonCodec)?;
    Ok(Negotiated {
        codec: codec.clone(),
        telephone_event: telephone_event(&answer.formats, codec.clock_rate)
            .map(|te| te.payload_type),
        remote: answer.addr,
        direction: answer.effective_direction().reversed(),
    })
}

// ==== writing ====

/// Appends one line and its CRLF.
fn line(sdp: &mut String, args: fmt::Arguments<'_>) {
    // Writing into a String cannot fail.
    let _ = sdp.write_fmt(args);
    sdp.push_str("\r\n");
}

fn ip_family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

/// `v=`, `o=`, `s=`, `c=`, `t=`.
fn write_session(sdp: &mut String, local: &LocalMedia) {
    let username: String = local
        .username
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect();
    let username = if username.is_empty() { "-" } else { &username };
    let family = ip_family(local.addr);
    line(sdp, format_args!("v=0"));
    line(
        sdp,
        format_args!(
            "o={username} {} {} IN {family} {}",
            local.session_id, local.session_version, local.addr
        ),
    );
    line(sdp, format_args!("s=Confero"));
    line(sdp, format_args!("c=IN {family} {}", local.addr));
    line(sdp, format_args!("t=0 0"));
}

/// Our audio m-line and its attributes.
struct AudioLine<'a> {
    port: u16,
    protocol: &'a str,
    /// (pt, name as it should be spelled, clock rate, channels)
    codecs: Vec<(u8, &'a str, u32, u16)>,
    /// (pt, clock rate)
    telephone_events: Vec<(u8, u32)>,
    direction: Direction,
    rtcp_mux: bool,
    mid: Option<&'a str>,
}

impl AudioLine<'_> {
    fn write(&self, sdp: &mut String) {
        let mut m = format!("m=audio {} {}", self.port, self.protocol);
        let pts = self.codecs.iter().map(|c| c.0);
        for pt in pts.chain(self.telephone_events.iter().map(|te| te.0)) {
            let _ = write!(m, " {pt}");
        }
        line(sdp, format_args!("{m}"));
        for &(pt, name, clock_rate, channels) in &self.codecs {
            if channels == 1 {
                line(sdp, format_args!("a=rtpmap:{pt} {name}/{clock_rate}"));
            } else {
                line(
                    sdp,
                    format_args!("a=rtpmap:{pt} {name}/{clock_rate}/{channels}"),
                );
            }
        }
        for &(pt, clock_rate) in &self.telephone_events {
            line(
                sdp,
                format_args!("a=rtpmap:{pt} telephone-event/{clock_rate}"),
            );
            line(sdp, format_args!("a=fmtp:{pt} 0-16"));
        }
        line(sdp, format_args!("a=ptime:20"));
        line(sdp, format_args!("a={}", self.direction));
        if self.rtcp_mux {
            line(sdp, format_args!("a=rtcp-mux"));
        }
        if let Some(mid) = self.mid {
            line(sdp, format_args!("a=mid:{mid}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const PREFS: &[&str] = &["G722/8000", "PCMU/8000", "PCMA/8000"];

    fn local() -> LocalMedia {
        LocalMedia {
            addr: "192.0.2.10".parse().unwrap(),
            port: 20000,
            session_id: 42,
            session_version: 1,
            username: "confero".into(),
        }
    }

    fn crlf(sdp: &str) -> String {
        sdp.lines().map(|l| format!("{}\r\n", l.trim())).collect()
    }

    /// The independent check: ezk-sdp-types reads what we write, with the same meaning.
    fn assert_valid_sdp(sdp: &str) {
        assert!(sdp.ends_with("\r\n") && !sdp.replace("\r\n", "").contains('\n'));
        let parsed = ezk_sdp_types::SessionDescription::parse(&sdp.to_owned().into())
            .unwrap_or_else(|e| panic!("ezk-sdp-types rejects our SDP ({e}):\n{sdp}"));
        let ours = parse_audio(sdp.as_bytes()).unwrap();
        let audio = &parsed.media_descriptions[ours.index];
        assert_eq!(audio.media.port, ours.addr.port());
        assert_eq!(audio.rtpmap.len(), ours.formats.len());
    }

    const SIPP_PCMU: &str = "v=0
        o=user1 53655765 2353687637 IN IP4 127.0.0.1
        s=-
        c=IN IP4 127.0.0.1
        t=0 0
        m=audio 6000 RTP/AVP 0
        a=rtpmap:0 PCMU/8000";

    #[test]
    fn answers_sipp_pcmu_offer() {
        let offer = parse_audio(crlf(SIPP_PCMU).as_bytes()).unwrap();
        assert_eq!(offer.addr, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(offer.protocol, "RTP/AVP");
        assert_eq!(offer.direction, Direction::SendRecv);
        assert!(!offer.rtcp_mux && !offer.port_zero);

        let (sdp, negotiated) = answer(&offer, &local(), PREFS).unwrap();
        assert_eq!(
            sdp,
            "v=0\r\n\
             o=confero 42 1 IN IP4 192.0.2.10\r\n\
             s=Confero\r\n\
             c=IN IP4 192.0.2.10\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 0\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        assert_valid_sdp(&sdp);
        assert_eq!(
            negotiated,
            Negotiated {
                codec: RtpMap {
                    payload_type: 0,
                    encoding: "PCMU".into(),
                    clock_rate: 8000,
                    channels: 1,
                    fmtp: None,
                },
                telephone_event: None,
                remote: "127.0.0.1:6000".parse().unwrap(),
                direction: Direction::SendRecv,
            }
        );
    }

    #[test]
    fn answers_sipp_pcma_offer_with_telephone_event() {
        let sdp = "v=0
            o=user1 53655765 2353687637 IN IP4 127.0.0.1
            s=-
            c=IN IP4 127.0.0.1
            t=0 0
            m=audio 6000 RTP/AVP 8 101
            a=rtpmap:8 PCMA/8000
            a=rtpmap:101 telephone-event/8000
            a=fmtp:101 0-11,16";
        let offer = parse_audio(crlf(sdp).as_bytes()).unwrap();
        assert_eq!(offer.formats[1].fmtp.as_deref(), Some("0-11,16"));
        let (sdp, negotiated) = answer(&offer, &local(), PREFS).unwrap();
        assert!(sdp.contains(
            "m=audio 20000 RTP/AVP 8 101\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        ));
        assert_valid_sdp(&sdp);
        assert_eq!(negotiated.codec.payload_type, 8);
        assert_eq!(negotiated.telephone_event, Some(101));
    }

    const BARESIP: &str = "v=0
        o=- 1693489011 2391716487 IN IP4 192.168.1.20
        s=-
        c=IN IP4 192.168.1.20
        t=0 0
        m=audio 10058 RTP/AVP 111 9 0 8 100
        b=AS:128
        a=rtpmap:111 opus/48000/2
        a=fmtp:111 stereo=1;sprop-stereo=1
        a=rtpmap:9 G722/8000
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 PCMA/8000
        a=rtpmap:100 telephone-event/8000
        a=fmtp:100 0-15
        a=rtcp-mux
        a=ptime:20
        a=sendrecv
        a=label:1
        a=ssrc:3409524121 cname:a5a4f9c0-8a48-4f1b-93a5-4a6e0b8d7e21";

    #[test]
    fn answers_baresip_offer() {
        let offer = parse_audio(crlf(BARESIP).as_bytes()).unwrap();
        let names: Vec<_> = offer
            .formats
            .iter()
            .map(|f| {
                (
                    f.payload_type,
                    f.encoding.as_str(),
                    f.clock_rate,
                    f.channels,
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (111, "OPUS", 48000, 2),
                (9, "G722", 8000, 1),
                (0, "PCMU", 8000, 1),
                (8, "PCMA", 8000, 1),
                (100, "TELEPHONE-EVENT", 8000, 1),
            ]
        );
        assert_eq!(
            offer.formats[0].fmtp.as_deref(),
            Some("stereo=1;sprop-stereo=1")
        );
        assert!(offer.rtcp_mux);

        let (sdp, negotiated) = answer(&offer, &local(), PREFS).unwrap();
        assert!(sdp.contains(
            "m=audio 20000 RTP/AVP 9 100\r\n\
             a=rtpmap:9 G722/8000\r\n\
             a=rtpmap:100 telephone-event/8000\r\n\
             a=fmtp:100 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n\
             a=rtcp-mux\r\n"
        ));
        assert_valid_sdp(&sdp);
        assert_eq!(negotiated.codec.encoding, "G722");
        assert_eq!(negotiated.codec.payload_type, 9);
        assert_eq!(negotiated.telephone_event, Some(100));
        assert_eq!(negotiated.remote, "192.168.1.20:10058".parse().unwrap());

        // Opus preferred: the offer's dynamic PT and channels, and no telephone-event,
        // since the offer has none at 48 kHz.
        let (sdp, negotiated) = answer(&offer, &local(), &["opus/48000/2", "PCMU/8000"]).unwrap();
        assert!(sdp.contains("m=audio 20000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"));
        assert_valid_sdp(&sdp);
        assert_eq!(negotiated.codec.payload_type, 111);
        assert_eq!(
            negotiated.codec.fmtp.as_deref(),
            Some("stereo=1;sprop-stereo=1")
        );
        assert_eq!(negotiated.telephone_event, None);

        // Names match case-insensitively; the offer's order does not matter, ours does.
        let (_, negotiated) = answer(&offer, &local(), &["pcma/8000", "g722/8000"]).unwrap();
        assert_eq!(negotiated.codec.payload_type, 8);
    }

    const CHROME: &str = "v=0
        o=- 4611731400430051336 2 IN IP4 127.0.0.1
        s=-
        t=0 0
        a=group:BUNDLE 0 1
        a=extmap-allow-mixed
        a=msid-semantic: WMS stream
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
        c=IN IP4 0.0.0.0
        a=rtcp:9 IN IP4 0.0.0.0
        a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0
        a=ice-ufrag:6sFv
        a=ice-pwd:cOTZKZNVlO9RSGsEGM63JXT2
        a=ice-options:trickle
        a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08
        a=setup:actpass
        a=mid:0
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
        a=sendrecv
        a=msid:stream track
        a=rtcp-mux
        a=rtpmap:111 opus/48000/2
        a=rtcp-fb:111 transport-cc
        a=fmtp:111 minptime=10;useinbandfec=1
        a=rtpmap:63 red/48000/2
        a=fmtp:63 111/111
        a=rtpmap:9 G722/8000
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 PCMA/8000
        a=rtpmap:13 CN/8000
        a=rtpmap:110 telephone-event/48000
        a=rtpmap:126 telephone-event/8000
        a=ssrc:3485940486 cname:Q/NWs1ao1HmN4Xa5
        m=video 9 UDP/TLS/RTP/SAVPF 96 97
        c=IN IP4 0.0.0.0
        a=mid:1
        a=rtpmap:96 VP8/90000
        a=rtpmap:97 rtx/90000
        a=fmtp:97 apt=96";

    #[test]
    fn chrome_savpf_offer_is_read_then_refused_with_488() {
        let offer = parse_audio(crlf(CHROME).as_bytes()).unwrap();
        assert_eq!(offer.protocol, "UDP/TLS/RTP/SAVPF");
        assert_eq!(offer.addr, "0.0.0.0:9".parse().unwrap());
        assert_eq!(offer.mid.as_deref(), Some("0"));
        assert_eq!(offer.formats.len(), 8);
        assert_eq!(offer.m_lines.len(), 2);
        assert!(offer.rtcp_mux);

        let err = answer(&offer, &local(), PREFS).unwrap_err();
        assert_eq!(
            err,
            SdpError::UnsupportedTransport("UDP/TLS/RTP/SAVPF".into())
        );
        assert_eq!(err.status_code(), StatusCode::NOT_ACCEPTABLE_HERE);
        assert_eq!(err.warning().map(|w| w.0), Some(302));

        let savp = crlf(SIPP_PCMU).replace("RTP/AVP", "RTP/SAVP");
        let err = answer(&parse_audio(savp.as_bytes()).unwrap(), &local(), PREFS).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::NOT_ACCEPTABLE_HERE);
    }

    #[test]
    fn telephone_event_follows_the_codec_clock_rate() {
        // Chrome's formats over plain RTP: opus takes te/48000, G.722 te/8000.
        let plain = crlf(CHROME).replace("UDP/TLS/RTP/SAVPF", "RTP/AVP");
        let offer = parse_audio(plain.as_bytes()).unwrap();
        let (_, opus) = answer(&offer, &local(), &["opus/48000"]).unwrap();
        assert_eq!(
            (opus.codec.payload_type, opus.telephone_event),
            (111, Some(110))
        );
        let (sdp, g722) = answer(&offer, &local(), PREFS).unwrap();
        assert_eq!(
            (g722.codec.payload_type, g722.telephone_event),
            (9, Some(126))
        );
        // The video m-line is rejected in place, and the mid echoed.
        assert!(sdp.contains("a=mid:0\r\nm=video 0 RTP/AVP 96 97\r\n"));
        assert_valid_sdp(&sdp);
    }

    #[test]
    fn offers_without_audio_are_refused_with_488() {
        let video = "v=0
            o=- 1 1 IN IP4 192.0.2.1
            s=-
            c=IN IP4 192.0.2.1
            t=0 0
            m=video 5000 RTP/AVP 96
            a=rtpmap:96 H264/90000";
        let err = parse_audio(crlf(video).as_bytes()).unwrap_err();
        assert_eq!(err, SdpError::NoAudio);
        assert_eq!(err.status_code(), StatusCode::NOT_ACCEPTABLE_HERE);
        assert_eq!(err.warning().map(|w| w.0), Some(304));

        // A T.38 re-INVITE: a media type we do not know is still SDP.
        let t38 = "v=0
            o=- 1 2 IN IP4 192.0.2.1
            s=-
            c=IN IP4 192.0.2.1
            t=0 0
            m=image 5004 udptl t38
            a=T38FaxVersion:0
            a=T38FaxRateManagement:transferredTCF";
        assert_eq!(parse_audio(crlf(t38).as_bytes()), Err(SdpError::NoAudio));

        // No common codec.
        let gsm = crlf(SIPP_PCMU).replace("RTP/AVP 0", "RTP/AVP 3 18");
        let offer = parse_audio(gsm.as_bytes()).unwrap();
        let err = answer(&offer, &local(), PREFS).unwrap_err();
        assert_eq!(err, SdpError::NoCommonCodec);
        assert_eq!(err.status_code(), StatusCode::NOT_ACCEPTABLE_HERE);
        assert_eq!(err.warning().map(|w| w.0), Some(305));
    }

    #[test]
    fn garbage_is_refused_with_400() {
        let garbage: &[&[u8]] = &[
            b"",
            b"\r\n\r\n",
            b"hello world",
            b"<html><body>not sdp</body></html>",
            b"v=1\r\no=- 1 1 IN IP4 1.2.3.4\r\n",
            b"\xff\xfe\x00v=0",
            b"v=0\r\nthis is not sdp\r\n",
            b"v=0\r\nc=IN IP4 300.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio \xff RTP/AVP 0\r\n",
            b"v=0\r\nc=IN\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
        ];
        for input in garbage {
            let err = parse_audio(input).unwrap_err();
            assert_eq!(
                err.status_code(),
                StatusCode::BAD_REQUEST,
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(parse_audio(b"hello"), Err(SdpError::NotSdp));
        assert_eq!(
            parse_audio(b"v=0\nx\n"),
            Err(SdpError::Malformed {
                line: 2,
                reason: "not a <type>=<value> line"
            })
        );
    }

    #[test]
    fn tolerates_what_it_does_not_use() {
        // LF endings, blank lines, trailing spaces, an attribute in Latin-1, broken
        // rtpmaps (the static PT survives, the dynamic one is dropped), no o=/s=/t=.
        let sdp = b"v=0\n\nc=IN IP4 192.0.2.7 \na=tool:caf\xe9\n\
            m=audio 4000 RTP/AVP 0 96 97\na=rtpmap:0 garbage\na=rtpmap:96\n\
            a=rtpmap:97 telephone-event/8000\na=fmtp:97\n";
        let offer = parse_audio(sdp).unwrap();
        assert_eq!(offer.addr, "192.0.2.7:4000".parse().unwrap());
        let pts: Vec<_> = offer.formats.iter().map(|f| f.payload_type).collect();
        assert_eq!(pts, [0, 97]);
        assert_eq!(offer.formats[1].fmtp.as_deref(), Some(""));

        // A host name is SDP, but not one we will resolve: 488.
        let host =
            crlf(SIPP_PCMU).replace("IN IP4 127.0.0.1\r\nt=", "IN IP4 pbx.example.com\r\nt=");
        let err = parse_audio(host.as_bytes()).unwrap_err();
        assert_eq!(err, SdpError::HostName("pbx.example.com".into()));
        assert_eq!(err.status_code(), StatusCode::NOT_ACCEPTABLE_HERE);
    }

    #[test]
    fn direction_is_mirrored() {
        let cases = [
            ("a=sendonly", Direction::SendOnly, Direction::RecvOnly),
            ("a=recvonly", Direction::RecvOnly, Direction::SendOnly),
            ("a=inactive", Direction::Inactive, Direction::Inactive),
            ("a=sendrecv", Direction::SendRecv, Direction::SendRecv),
        ];
        for (attr, theirs, ours) in cases {
            // Media level.
            let sdp = format!("{}\r\n{attr}\r\n", crlf(SIPP_PCMU).trim_end());
            let offer = parse_audio(sdp.as_bytes()).unwrap();
            assert_eq!(offer.direction, theirs);
            let (sdp, negotiated) = answer(&offer, &local(), PREFS).unwrap();
            assert_eq!(negotiated.direction, ours);
            assert!(sdp.contains(&format!("a={ours}\r\n")), "{sdp}");
            assert_valid_sdp(&sdp);

            // Session level, before the m-line.
            let sdp = crlf(SIPP_PCMU).replace("t=0 0\r\n", &format!("t=0 0\r\n{attr}\r\n"));
            assert_eq!(parse_audio(sdp.as_bytes()).unwrap().direction, theirs);
        }
        // Media level wins over session level.
        let sdp =
            crlf(SIPP_PCMU).replace("t=0 0\r\n", "t=0 0\r\na=inactive\r\n") + "a=sendonly\r\n";
        assert_eq!(
            parse_audio(sdp.as_bytes()).unwrap().direction,
            Direction::SendOnly
        );

        // RFC 2543 hold: c=0.0.0.0 means "do not send to me".
        let hold = crlf(SIPP_PCMU).replace("IN IP4 127.0.0.1\r\nt=", "IN IP4 0.0.0.0\r\nt=");
        let offer = parse_audio(hold.as_bytes()).unwrap();
        assert_eq!(offer.direction, Direction::SendRecv);
        assert_eq!(offer.effective_direction(), Direction::SendOnly);
        let (sdp, negotiated) = answer(&offer, &local(), PREFS).unwrap();
        assert_eq!(negotiated.direction, Direction::RecvOnly);
        assert!(sdp.contains("a=recvonly\r\n"));
    }

    #[test]
    fn ipv6() {
        let sdp = "v=0
            o=- 7 7 IN IP6 2001:db8::5
            s=-
            c=IN IP6 2001:db8::5
            t=0 0
            m=audio 30000 RTP/AVP 8 0
            a=rtpmap:8 PCMA/8000";
        let offer = parse_audio(crlf(sdp).as_bytes()).unwrap();
        assert_eq!(offer.addr, "[2001:db8::5]:30000".parse().unwrap());
        assert_eq!(offer.formats.len(), 2, "PCMU known from the static table");

        let local6 = LocalMedia {
            addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            ..local()
        };
        let (sdp, negotiated) = answer(&offer, &local6, PREFS).unwrap();
        assert!(sdp.contains("o=confero 42 1 IN IP6 2001:db8::1\r\n"));
        assert!(sdp.contains("c=IN IP6 2001:db8::1\r\n"));
        assert_valid_sdp(&sdp);
        assert_eq!(negotiated.codec.payload_type, 0);

        let err = answer(&offer, &local(), PREFS).unwrap_err();
        assert_eq!(err, SdpError::AddressFamily);
        assert_eq!(err.warning().map(|w| w.0), Some(301));
    }

    #[test]
    fn media_level_connection_wins_over_session_level() {
        let sdp = "v=0
            o=- 1 1 IN IP4 192.0.2.1
            s=-
            c=IN IP4 192.0.2.1
            t=0 0
            m=audio 4000 RTP/AVP 0
            c=IN IP4 198.51.100.9/127
            m=audio 4002 RTP/AVP 0";
        let offer = parse_audio(crlf(sdp).as_bytes()).unwrap();
        assert_eq!(offer.addr, "198.51.100.9:4000".parse().unwrap());

        // Session level only.
        let offer = parse_audio(crlf(SIPP_PCMU).as_bytes()).unwrap();
        assert_eq!(offer.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

        // Neither: 400.
        let none = crlf(SIPP_PCMU).replace("c=IN IP4 127.0.0.1\r\n", "");
        let err = parse_audio(none.as_bytes()).unwrap_err();
        assert_eq!(err, SdpError::NoConnectionAddress);
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn port_zero() {
        let disabled = crlf(SIPP_PCMU).replace("m=audio 6000", "m=audio 0");
        let offer = parse_audio(disabled.as_bytes()).unwrap();
        assert!(offer.port_zero);
        let err = answer(&offer, &local(), PREFS).unwrap_err();
        assert_eq!(err, SdpError::AudioDisabled);
        assert_eq!(err.status_code(), StatusCode::NOT_ACCEPTABLE_HERE);

        // A rejected stream without c= is still read.
        let bare = b"v=0\r\nm=audio 0 RTP/AVP 0\r\n";
        let offer = parse_audio(bare).unwrap();
        assert!(offer.port_zero);
        assert_eq!(offer.addr, "0.0.0.0:0".parse().unwrap());
        assert_eq!(
            negotiated_from_answer(&offer, PREFS),
            Err(SdpError::AudioDisabled)
        );

        // A re-offer that adds a new audio m-line after a disabled one (RFC 3264 §8.1):
        // the live one is answered, the dead one stays rejected in its place.
        let sdp = "v=0
            o=- 1 2 IN IP4 192.0.2.1
            s=-
            c=IN IP4 192.0.2.1
            t=0 0
            m=audio 0 RTP/AVP 0
            m=audio 4002 RTP/AVP 8";
        let offer = parse_audio(crlf(sdp).as_bytes()).unwrap();
        assert_eq!((offer.index, offer.addr.port()), (1, 4002));
        let (sdp, _) = answer(&offer, &local(), PREFS).unwrap();
        assert!(sdp.contains("t=0 0\r\nm=audio 0 RTP/AVP 0\r\nm=audio 20000 RTP/AVP 8\r\n"));
        assert_valid_sdp(&sdp);
    }

    #[test]
    fn round_trip_offer_answer() {
        let prefs = &["G722/8000", "PCMU/8000", "PCMA/8000"];
        let ours = offer(&local(), prefs);
        assert_eq!(
            ours,
            "v=0\r\n\
             o=confero 42 1 IN IP4 192.0.2.10\r\n\
             s=Confero\r\n\
             c=IN IP4 192.0.2.10\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 9 0 8 101\r\n\
             a=rtpmap:9 G722/8000\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n"
        );
        assert_valid_sdp(&ours);

        // The remote side (a PCMU-only phone, say) answers with our own code.
        let parsed = parse_audio(ours.as_bytes()).unwrap();
        let phone = LocalMedia {
            addr: "192.0.2.77".parse().unwrap(),
            port: 7078,
            session_id: 9,
            session_version: 9,
            username: "phone".into(),
        };
        let (their_answer, theirs) = answer(&parsed, &phone, &["PCMU/8000"]).unwrap();
        assert_eq!(theirs.remote, "192.0.2.10:20000".parse().unwrap());

        let ours =
            negotiated_from_answer(&parse_audio(their_answer.as_bytes()).unwrap(), prefs).unwrap();
        assert_eq!(ours.codec.encoding, "PCMU");
        assert_eq!(ours.codec.payload_type, 0);
        assert_eq!(ours.telephone_event, Some(101));
        assert_eq!(ours.remote, "192.0.2.77:7078".parse().unwrap());
        assert_eq!(ours.direction, Direction::SendRecv);
        assert_eq!(theirs.codec, ours.codec);

        // An answer putting us on hold, and one we cannot use.
        let held = their_answer.replace("a=sendrecv", "a=sendonly");
        let held = negotiated_from_answer(&parse_audio(held.as_bytes()).unwrap(), prefs).unwrap();
        assert_eq!(held.direction, Direction::RecvOnly);
        let alien = their_answer
            .replace("0 PCMU/8000", "0 GSM/8000")
            .replace(" 0 101", " 96 101");
        let alien = alien.replace("rtpmap:0", "rtpmap:96");
        let err = negotiated_from_answer(&parse_audio(alien.as_bytes()).unwrap(), prefs);
        assert_eq!(err, Err(SdpError::NoCommonCodec));
    }

    #[test]
    fn offer_payload_types() {
        let sdp = offer(
            &local(),
            &[
                "opus/48000/2",
                "PCMA/8000",
                "PCMA/8000",
                "bogus",
                "L16/16000",
            ],
        );
        assert!(
            sdp.contains("m=audio 20000 RTP/AVP 96 8 97 98 101 99\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=rtpmap:96 opus/48000/2\r\n"));
        assert!(sdp.contains("a=rtpmap:97 L16/16000\r\n"));
        assert!(sdp.contains("a=rtpmap:98 telephone-event/48000\r\n"));
        assert!(sdp.contains("a=rtpmap:99 telephone-event/16000\r\n"));
        assert_valid_sdp(&sdp);
        let parsed = parse_audio(sdp.as_bytes()).unwrap();
        assert_eq!(parsed.formats.len(), 6);

        let odd = LocalMedia {
            username: "two words".into(),
            ..local()
        };
        assert!(offer(&odd, &["PCMU/8000"]).contains("o=two-words 42 1 IN IP4"));
    }

    #[test]
    fn mutated_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3264);
        let seeds = [crlf(SIPP_PCMU), crlf(BARESIP), crlf(CHROME)];
        let alphabet = b"v=0cmat:/ \r\n0123456789IP46.RTP/AVP-";
        let mut answered = 0;
        for _ in 0..3000 {
            let mut input = seeds[rng.gen_range(0..seeds.len())].clone().into_bytes();
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..input.len());
                match rng.gen_range(0..4) {
                    0 => input[at] = rng.gen(),
                    1 => input[at] = alphabet[rng.gen_range(0..alphabet.len())],
                    2 => input.truncate(at),
                    _ => {
                        let len = rng.gen_range(0..=input.len() - at);
                        input.drain(at..at + len);
                    }
                }
                if input.is_empty() {
                    break;
                }
            }
            let Ok(remote) = parse_audio(&input) else {
                continue;
            };
            let _ = negotiated_from_answer(&remote, PREFS);
            // What we accept, we answer with SDP that reads back to the same agreement.
            if let Ok((sdp, ours)) = answer(&remote, &local(), PREFS) {
                let back = parse_audio(sdp.as_bytes()).unwrap();
                let codec = format!("{}/{}", ours.codec.encoding, ours.codec.clock_rate);
                let theirs = negotiated_from_answer(&back, &[codec.as_str()]).unwrap();
                assert_eq!(theirs.codec.payload_type, ours.codec.payload_type);
                assert_eq!(theirs.telephone_event, ours.telephone_event);
                assert_eq!(theirs.direction, ours.direction.reversed());
                answered += 1;
            }
        }
        assert!(
            answered > 100,
            "the mutations should leave many offers usable"
        );
    }
}
