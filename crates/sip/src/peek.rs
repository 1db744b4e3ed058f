//! A look at a datagram without parsing it, for shedding load: under a flood the full
//! parser is what costs, so what is refused is refused from the raw bytes.
//!
//! [`Peek::of`] reads the start line and the `To` header of a request (nothing of a
//! response); [`Peek::refusal`] writes a stateless final response by copying the headers
//! RFC 3261 §8.2.6.2 asks to be copied (`Via`, `From`, `To` with a tag added, `Call-ID`,
//! `CSeq`) verbatim. Anything odd makes `of` return `None`, and the datagram then goes the
//! normal way (where the parser judges it).

/// What a request datagram is, as far as shedding cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peek<'a> {
    /// The method token of the start line.
    pub method: &'a str,
    /// The `To` header has a tag: the request belongs to a dialog.
    pub in_dialog: bool,
    head: &'a [u8],
}

/// Header lines longer than this make a datagram not worth peeking at.
const MAX_LINE: usize = 8 * 1024;

impl<'a> Peek<'a> {
    /// Looks at `data`; `None` for a response, or for anything that is not plainly a
    /// request with a header block.
    #[must_use]
    pub fn of(data: &'a [u8]) -> Option<Peek<'a>> {
        let end = find(data, b"\r\n\r\n")?;
        let head = &data[..end + 2];
        // Only plain header blocks: every line ends in CRLF and no control character is
        // in it. Anything else (a bare LF the parser may take for the end of the headers,
        // a NUL) is left to the parser, which knows what it accepts.
        let plain = head.iter().enumerate().all(|(i, &b)| match b {
            b'\n' => i > 0 && head[i - 1] == b'\r',
            b'\r' => head.get(i + 1) == Some(&b'\n'),
            b'\t' => true,
            b => b >= 0x20 && b != 0x7f,
        });
        if !plain {
            return None;
        }
        let first_end = find(head, b"\r\n")?;
        let first = std::str::from_utf8(&head[..first_end]).ok()?;
        let mut parts = first.split(' ');
        let method = parts.next()?;
        let (_uri, version) = (parts.next()?, parts.next()?);
        if version != "SIP/2.0"
            || method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return None;
        }
        let mut in_dialog = false;
        let mut to_seen = false;
        for line in lines(&head[first_end + 2..]) {
            // Folded headers (a line starting with white space continues the previous
            // one) are left to the parser: copying them line by line would cut them.
            if line.len() > MAX_LINE || line.starts_with(b" ") || line.starts_with(b"\t") {
                return None;
            }
            if let Some(value) = header_value(line, "to", "t") {
                if to_seen {
                    return None;
                }
                to_seen = true;
                in_dialog = has_tag(value);
            }
        }
        to_seen.then_some(Peek {
            method,
            in_dialog,
            head,
        })
    }

    /// A final response refusing the request (`code` 300–699), with `extra` header
    /// lines (each ending in CRLF) and no body; `tag` is added to `To`.
    #[must_use]
    pub fn refusal(&self, code: u16, reason: &str, tag: &str, extra: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + 64);
        out.extend_from_slice(format!("SIP/2.0 {code} {reason}\r\n").as_bytes());
        let after_first = find(self.head, b"\r\n").map_or(self.head.len(), |i| i + 2);
        for line in lines(&self.head[after_first..]) {
            let copy = [("via", "v"), ("from", "f"), ("call-id", "i"), ("cseq", "")]
                .iter()
                .any(|(long, short)| header_value(line, long, short).is_some());
            if let Some(value) = header_value(line, "to", "t") {
                out.extend_from_slice(b"To: ");
                out.extend_from_slice(value);
                if !has_tag(value) {
                    out.extend_from_slice(b";tag=");
                    out.extend_from_slice(tag.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            } else if copy {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(extra.as_bytes());
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The header lines of a block, folded continuation lines kept apart (they are copied
/// only with their header, which shedding never needs).
fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    block
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// The value of `line` if its header is `long` or the compact `short` (case-insensitive).
fn header_value<'l>(line: &'l [u8], long: &str, short: &str) -> Option<&'l [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii();
    let matches = name.eq_ignore_ascii_case(long.as_bytes())
        || (!short.is_empty() && name.eq_ignore_ascii_case(short.as_bytes()));
    matches.then(|| line[colon + 1..].trim_ascii())
}

/// Whether a name-addr header value carries a `tag` parameter (outside the URI's `<>`).
fn has_tag(value: &[u8]) -> bool {
    let params = match value.iter().rposition(|&b| b == b'>') {
        Some(i) => &value[i..],
        None => value,
    };
    params.split(|&b| b == b';').skip(1).any(|p| {
        let p = p.trim_ascii();
        p.len() > 4 && p[..4].eq_ignore_ascii_case(b"tag=")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    const INVITE: &str = "INVITE sip:800@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa\r\nv: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKb\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:800@pbx>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@10.0.0.1>\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn a_new_request_and_its_refusal() {
        let p = Peek::of(INVITE.as_bytes()).unwrap();
        assert_eq!((p.method, p.in_dialog), ("INVITE", false));
        let out = p.refusal(503, "Service Unavailable", "t9", "Retry-After: 10\r\n");
        let Ok(Message::Response(r)) = Message::parse(&out) else {
            panic!("{}", String::from_utf8_lossy(&out))
        };
        assert_eq!(r.code.into_u16(), 503);
        let text = String::from_utf8(out).unwrap();
        assert!(text
            .contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa\r\nv: SIP/2.0/UDP 10.0.0.2"));
        assert!(text.contains("To: <sip:800@pbx>;tag=t9\r\n"));
        assert!(text.contains("Call-ID: c1\r\nCSeq: 1 INVITE\r\n"));
        assert!(!text.contains("Contact"));
        assert!(text.ends_with("Retry-After: 10\r\nContent-Length: 0\r\n\r\n"));
        // About its size back, even for a request with no body.
        assert!(
            text.len() <= INVITE.len() * 5 / 4,
            "{} for {}",
            text.len(),
            INVITE.len()
        );
    }

    #[test]
    fn in_dialog_requests_responses_and_junk() {
        let bye = INVITE.replace("INVITE sip", "BYE sip").replace(
            "To: <sip:800@pbx>",
            "t: \"Room\" <sip:800@pbx;x=y>; TAG=abc",
        );
        let p = Peek::of(bye.as_bytes()).unwrap();
        assert_eq!((p.method, p.in_dialog), ("BYE", true));
        // A ";tag" inside the URI is not a dialog tag.
        let uri_tag = INVITE.replace("To: <sip:800@pbx>", "To: <sip:800@pbx;tag=x>");
        assert!(!Peek::of(uri_tag.as_bytes()).unwrap().in_dialog);
        for junk in [
            "SIP/2.0 200 OK\r\nTo: <sip:a@b>\r\n\r\n".to_owned(),
            INVITE.replace("SIP/2.0\r\n", "HTTP/1.1\r\n"),
            INVITE.replace("To: <sip:800@pbx>\r\n", ""),
            INVITE.replace(
                "To: <sip:800@pbx>\r\n",
                "To: <sip:a@b>\r\nTo: <sip:c@d>\r\n",
            ),
            INVITE.replace("\r\n\r\n", "\r\n"),
            // Found by the fuzzer: a folded To header, which line-by-line copying would cut,
            // and a bare LF that the parser reads as the end of the headers.
            INVITE.replace("To: <sip:800@pbx>", "To:\"\r\n <sip:800@pbx>"),
            INVITE.replace(
                "Call-ID: c1\r\n",
                "Call-ID: c1\r\n\nFrom: <sip:b@x>;tag=2\r\n",
            ),
            INVITE.replace("Call-ID: c1", "Call-ID: c\u{0}1"),
            "invite sip:x SIP/2.0\r\nTo: <sip:x>\r\n\r\n".to_owned(),
            String::new(),
        ] {
            assert_eq!(Peek::of(junk.as_bytes()), None, "{junk:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = 7u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..20_000 {
            let mut data = INVITE.as_bytes().to_vec();
            for _ in 0..(next() % 8) {
                let i = (next() as usize) % data.len();
                data[i] = next() as u8;
            }
            let cut = (next() as usize) % (data.len() + 1);
            if let Some(p) = Peek::of(&data[..cut]) {
                let _ = p.refusal(503, "Service Unavailable", "t", "");
            }
        }
    }
}
