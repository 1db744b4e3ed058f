//! Where messages come from and go to, and the framing of stream transports.
//!
//! Sockets live in the IO shell; this module only names peers and turns a TCP/TLS byte
//! stream into whole messages. WebSocket (RFC 7118) carries one message per frame, so the
//! shell hands WS payloads straight to [`Message::parse`](crate::message::Message::parse).

use bytes::{Buf, Bytes, BytesMut};

use crate::message::MAX_MESSAGE_LEN;

/// A SIP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP (RFC 3261).
    Udp,
    /// TCP (RFC 3261).
    Tcp,
    /// TLS over TCP (RFC 3261).
    Tls,
    /// WebSocket (RFC 7118).
    Ws,
    /// Secure WebSocket (RFC 7118).
    Wss,
}

impl Transport {
    /// Whether the transport delivers reliably, which switches off retransmissions and
    /// zeroes the absorption timers of RFC 3261 §17.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The transport token used in Via headers.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// Parses a Via transport token (case-insensitive).
    pub fn from_via_name(name: &str) -> Option<Transport> {
        [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ]
        .into_iter()
        .find(|t| t.via_name().eq_ignore_ascii_case(name))
    }
}

/// Names one stream connection owned by the IO shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// Where a message came from or goes to. For stream transports `conn` names the connection
/// the IO shell should use (responses go back over the connection the request came on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The transport.
    pub transport: Transport,
    /// The remote address.
    pub addr: std::net::SocketAddr,
    /// The connection, for stream transports.
    pub conn: Option<ConnId>,
}

/// A message the IO shell must send.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// Destination (and connection, for streams).
    pub peer: Peer,
    /// The serialised message.
    pub data: Bytes,
}

/// One unit out of a [`StreamFramer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// One whole message, to give to [`Message::parse`](crate::message::Message::parse).
    Message(Bytes),
    /// A CRLF keep-alive ping ("\r\n\r\n"); RFC 5626 §4.4.1 expects a "\r\n" pong.
    KeepAlive,
}

/// The stream cannot be resynchronised: the shell closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// No end of headers within [`MAX_STREAM_HEAD_LEN`] bytes.
    #[error("message head longer than {MAX_STREAM_HEAD_LEN} bytes")]
    HeadTooLarge,
    /// A stream message without Content-Length cannot be delimited (RFC 3261 §18.3).
    #[error("stream message without Content-Length")]
    MissingContentLength,
    /// Content-Length is not a number, or several values disagree.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// The message would exceed [`MAX_MESSAGE_LEN`].
    #[error("message larger than {MAX_MESSAGE_LEN} bytes")]
    TooLarge,
}

/// Longest message head the framer waits for before giving up on the stream.
pub const MAX_STREAM_HEAD_LEN: usize = 16 * 1024;

/// Frames a byte stream (TCP/TLS) into messages by Content-Length. CRLF keep-alives
/// ("\r\n\r\n") between messages are skipped and reported (RFC 5626 expects a "\r\n" pong).
///
/// Push bytes as they arrive, then call [`next_frame`](Self::next_frame) until it returns
/// `None`. After an error the framer stays failed and returns the same error.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: BytesMut,
    failed: Option<FrameError>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Finds the end of the head: `(head_len, body_start)`.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = find(buf, b"\r\n\r\n").map(|i| (i + 2, i + 4));
    let lf = find(buf, b"\n\n").map(|i| (i + 1, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Reads Content-Length (or its compact form `l`) from a head, unfolding continuation lines.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut logical: Vec<Vec<u8>> = Vec::new();
    for raw in head.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        match (line.first(), logical.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => {
                last.push(b' ');
                last.extend_from_slice(line);
            }
            _ => logical.push(line.to_vec()),
        }
    }
    let mut found: Option<usize> = None;
    for line in logical.iter().skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let name = name.trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::InvalidContentLength);
        }
        let n = value.iter().fold(0usize, |acc, d| {
            acc.saturating_mul(10)
                .saturating_add(usize::from(d.wrapping_sub(b'0')))
        });
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::InvalidContentLength);
        }
        found = Some(n);
    }
    found.ok_or(FrameError::MissingContentLength)
}

impl StreamFramer {
    /// An empty framer for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next message or keep-alive, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        if let Some(err) = &self.failed {
            return Some(Err(err.clone()));
        }
        match self.try_frame() {
            Ok(frame) => frame.map(Ok),
            Err(err) => {
                self.failed = Some(err.clone());
                self.buf = BytesMut::new();
                Some(Err(err))
            }
        }
    }

    fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                return Ok(Some(Frame::KeepAlive));
            }
            if self.buf.starts_with(b"\r\n") || self.buf.as_ref() == b"\r" {
                if b"\r\n\r\n".starts_with(&self.buf) {
                    // Could still become a keep-alive ping.
                    return Ok(None);
                }
                // A lone CRLF (e.g. a keep-alive pong) before a message: RFC 3261 §7.5
                // says to ignore it.
                self.buf.advance(2);
                continue;
            }
            break;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let window = self.buf.get(..MAX_STREAM_HEAD_LEN + 4).unwrap_or(&self.buf);
        let Some((head_len, body_start)) = head_end(window) else {
            if self.buf.len() > MAX_STREAM_HEAD_LEN {
                return Err(FrameError::HeadTooLarge);
            }
            return Ok(None);
        };
        if head_len > MAX_STREAM_HEAD_LEN {
            return Err(FrameError::HeadTooLarge);
        }
        let head = self.buf.get(..head_len).unwrap_or_default();
        let len = content_length(head)?;
        let total = body_start
            .checked_add(len)
            .filter(|t| *t <= MAX_MESSAGE_LEN)
            .ok_or(FrameError::TooLarge)?;
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn msg(call_id: &str, body: &str) -> Vec<u8> {
        format!(
            "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK{call_id}\r\n\
             From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\nl: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn drain(f: &mut StreamFramer) -> Vec<Result<Frame, FrameError>> {
        let mut out = Vec::new();
        while let Some(frame) = f.next_frame() {
            let stop = frame.is_err();
            out.push(frame);
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let mut stream = msg("one", "hello");
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend(msg("two", ""));
        for cut in 0..=stream.len() {
            let mut f = StreamFramer::new();
            let mut frames = Vec::new();
            f.push(&stream[..cut]);
            frames.extend(drain(&mut f));
            f.push(&stream[cut..]);
            frames.extend(drain(&mut f));
            assert_eq!(frames.len(), 3, "cut at {cut}: {frames:?}");
            assert_eq!(
                frames[0],
                Ok(Frame::Message(Bytes::from(msg("one", "hello"))))
            );
            assert_eq!(frames[1], Ok(Frame::KeepAlive));
            assert_eq!(frames[2], Ok(Frame::Message(Bytes::from(msg("two", "")))));
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn byte_by_byte_and_two_in_one_push() {
        let mut stream = msg("a", "xyz");
        stream.extend(msg("b", "0123456789"));
        let mut f = StreamFramer::new();
        let mut frames = Vec::new();
        for b in &stream {
            f.push(std::slice::from_ref(b));
            frames.extend(drain(&mut f));
        }
        assert_eq!(frames.len(), 2);

        let mut f = StreamFramer::new();
        f.push(&stream);
        let frames = drain(&mut f);
        assert_eq!(frames.len(), 2);
        for frame in frames {
            let Ok(Frame::Message(bytes)) = frame else {
                panic!()
            };
            assert!(Message::parse(&bytes).is_ok());
        }
    }

    #[test]
    fn keep_alives_and_pongs() {
        let mut f = StreamFramer::new();
        f.push(b"\r\n\r\n\r\n\r\n");
        assert_eq!(
            drain(&mut f),
            vec![Ok(Frame::KeepAlive), Ok(Frame::KeepAlive)]
        );
        // A lone CRLF (a pong) waits, then is skipped before a message.
        f.push(b"\r\n");
        assert_eq!(f.next_frame(), None);
        f.push(&msg("c", ""));
        assert_eq!(drain(&mut f).len(), 1);
    }

    #[test]
    fn unrecoverable_streams() {
        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n");
        assert_eq!(f.next_frame(), Some(Err(FrameError::MissingContentLength)));
        // The framer stays failed.
        f.push(&msg("d", ""));
        assert_eq!(f.next_frame(), Some(Err(FrameError::MissingContentLength)));

        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert_eq!(f.next_frame(), Some(Err(FrameError::InvalidContentLength)));

        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n");
        assert_eq!(f.next_frame(), Some(Err(FrameError::TooLarge)));

        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n");
        assert_eq!(f.next_frame(), Some(Err(FrameError::InvalidContentLength)));

        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(f.next_frame(), Some(Err(FrameError::InvalidContentLength)));

        let mut f = StreamFramer::new();
        let garbage: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
        f.push(&garbage);
        assert_eq!(f.next_frame(), Some(Err(FrameError::HeadTooLarge)));

        // Garbage that happens to end a head still needs a Content-Length.
        let mut f = StreamFramer::new();
        f.push(b"\x00\x01garbage\r\n\r\n");
        assert_eq!(f.next_frame(), Some(Err(FrameError::MissingContentLength)));
    }

    #[test]
    fn incomplete_body_waits() {
        let full = msg("e", "body!");
        let mut f = StreamFramer::new();
        f.push(&full[..full.len() - 1]);
        assert_eq!(f.next_frame(), None);
        f.push(&full[full.len() - 1..]);
        assert_eq!(f.next_frame(), Some(Ok(Frame::Message(Bytes::from(full)))));
    }

    #[test]
    fn transport_names() {
        assert!(!Transport::Udp.is_reliable());
        assert!(Transport::Wss.is_reliable());
        assert_eq!(Transport::Ws.via_name(), "WS");
        assert_eq!(Transport::from_via_name("tls"), Some(Transport::Tls));
        assert_eq!(Transport::from_via_name("SCTP"), None);
    }
}
