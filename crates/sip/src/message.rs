//! SIP messages: parsing whole messages, serialising them, and building responses.
//!
//! The parser is written for input from strangers: every limit is checked before work is
//! done, nothing on the input can make it panic, and a rejected *request* whose dialog
//! identifiers could still be read carries a ready-made error response, because RFC 3261
//! §8.2 wants a UAS to answer malformed requests rather than drop them (the sender would
//! otherwise retransmit for 32 seconds).
//!
//! Headers are kept as raw strings in an [`ezk_sip_types::Headers`] multimap; typed views
//! (`Via`, `FromTo`, `CSeq`, …) are parsed on demand with the `ezk_sip_types` header types.

use std::fmt::Write as _;

use bytes::Bytes;
use bytesstr::BytesStr;
use ezk_sip_types::header::typed::{CSeq, FromTo, Via};
use ezk_sip_types::header::HeaderParse;
use ezk_sip_types::msg::MessageLine;
use ezk_sip_types::parse::Parse;
use ezk_sip_types::print::{AppendCtx, PrintCtx, UriContext};
use ezk_sip_types::uri::SipUri;
use ezk_sip_types::{Headers, Method, Name, StatusCode};
use rand::Rng;

/// Largest message accepted, in bytes: far above anything a PBX exchanges, small enough
/// that a flood of maximal datagrams cannot exhaust memory.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most header lines accepted in one message.
pub const MAX_HEADERS: usize = 200;
/// Longest (unfolded) header line accepted, in bytes.
pub const MAX_HEADER_LINE: usize = 8 * 1024;

/// A SIP request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request method.
    pub method: Method,
    /// The Request-URI.
    pub uri: SipUri,
    /// All headers except Content-Length, which [`Request::to_bytes`] always computes.
    pub headers: Headers,
    /// The message body (exactly Content-Length bytes when parsed).
    pub body: Bytes,
}

/// A SIP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub code: StatusCode,
    /// The reason phrase; `None` prints the code's standard text.
    pub reason: Option<String>,
    /// All headers except Content-Length, which [`Response::to_bytes`] always computes.
    pub headers: Headers,
    /// The message body (exactly Content-Length bytes when parsed).
    pub body: Bytes,
}

/// A request or a response.
#[derive(Debug, Clone)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

/// Why a message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The message exceeds [`MAX_MESSAGE_LEN`].
    #[error("Message Too Large")]
    TooLarge,
    /// No empty line ends the header section.
    #[error("Truncated Message")]
    Truncated,
    /// The header section is not UTF-8.
    #[error("Invalid UTF-8 In Headers")]
    InvalidUtf8,
    /// The request or status line cannot be read.
    #[error("Malformed Start Line")]
    BadStartLine,
    /// The start line names a SIP version other than 2.0.
    #[error("Version Not Supported")]
    VersionNotSupported,
    /// The Request-URI is not a `sip:`/`sips:` URI.
    #[error("Unsupported URI Scheme")]
    UnsupportedUriScheme,
    /// More than [`MAX_HEADERS`] header lines.
    #[error("Too Many Headers")]
    TooManyHeaders,
    /// A header line exceeds [`MAX_HEADER_LINE`].
    #[error("Header Line Too Long")]
    HeaderLineTooLong,
    /// A header line has no `name:` part.
    #[error("Malformed Header Line")]
    MalformedHeaderLine,
    /// A mandatory header is absent.
    #[error("Missing {0} Header")]
    MissingHeader(&'static str),
    /// A mandatory header cannot be parsed.
    #[error("Malformed {0} Header")]
    MalformedHeader(&'static str),
    /// A header that must appear once appears several times.
    #[error("Duplicate {0} Header")]
    DuplicateHeader(&'static str),
    /// The top Via has no `branch` parameter, so transactions cannot be matched.
    #[error("Missing Via Branch")]
    MissingBranch,
    /// The CSeq method differs from the request method.
    #[error("CSeq Method Mismatch")]
    CSeqMethodMismatch,
    /// Content-Length is not a number, or several values disagree.
    #[error("Invalid Content-Length")]
    InvalidContentLength,
    /// Content-Length announces more bytes than the message holds.
    #[error("Content-Length Exceeds Body")]
    BodyTruncated,
}

impl ParseErrorKind {
    /// The status code a UAS answers a request rejected for this reason with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ParseErrorKind::VersionNotSupported => StatusCode::from(505),
            ParseErrorKind::UnsupportedUriScheme => StatusCode::from(416),
            ParseErrorKind::TooLarge => StatusCode::from(513),
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A message that could not be parsed, with the response to send back when one can be built.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid SIP message: {kind}")]
pub struct ParseError {
    kind: ParseErrorKind,
    response: Option<Box<Response>>,
}

impl ParseError {
    /// Why the message was rejected.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }

    /// The error response to send to the source, present when the input was a request (not
    /// ACK) whose Via, From, To, Call-ID and CSeq could be read. Its status is 400 with a
    /// reason phrase naming the problem, except 416 for a non-SIP Request-URI and 505 for an
    /// unsupported SIP version.
    pub fn bad_request_response(&self) -> Option<Response> {
        self.response.as_deref().cloned()
    }
}

// ==== parsing ====

/// The header section split into a start line and unfolded headers, plus the first
/// problem seen on the way (kept so a 400 can still be built from the good lines).
struct Head {
    start: String,
    headers: Headers,
    problem: Option<ParseErrorKind>,
    body_offset: Option<usize>,
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits `buf` into logical lines (folded continuation lines joined with one space)
/// until the empty line that ends the header section.
fn split_head(buf: &[u8]) -> Result<Head, ParseErrorKind> {
    // RFC 3261 §7.5: CRLFs before the start line are ignored.
    let mut pos = 0;
    while let Some(rest) = buf.get(pos..) {
        if rest.starts_with(b"\r\n") {
            pos += 2;
        } else if rest.starts_with(b"\n") {
            pos += 1;
        } else {
            break;
        }
    }
    let rest = buf.get(pos..).unwrap_or_default();

    // The head ends at the first empty line; accept bare LF line ends as many stacks do.
    let crlf = find_subslice(rest, b"\r\n\r\n").map(|i| (i + 2, i + 4));
    let lflf = find_subslice(rest, b"\n\n").map(|i| (i + 1, i + 2));
    let end = match (crlf, lflf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    let (head_bytes, body_offset) = match end {
        Some((head_end, body_start)) => (rest.get(..head_end), Some(pos + body_start)),
        None => (Some(rest), None),
    };
    let head = std::str::from_utf8(head_bytes.unwrap_or_default())
        .map_err(|_| ParseErrorKind::InvalidUtf8)?;

    let mut problem = if body_offset.is_none() {
        Some(ParseErrorKind::Truncated)
    } else {
        None
    };

    let mut logical: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = logical.last_mut() {
                if last.len() + line.len() > MAX_HEADER_LINE {
                    note(ParseErrorKind::HeaderLineTooLong, &mut problem);
                    continue;
                }
                last.push(' ');
                last.push_str(line.trim());
                continue;
            }
        }
        if line.len() > MAX_HEADER_LINE {
            note(ParseErrorKind::HeaderLineTooLong, &mut problem);
            // Keep a placeholder start line so header lines are not mistaken for it.
            if logical.is_empty() {
                logical.push(String::new());
            }
            continue;
        }
        if logical.len() > MAX_HEADERS {
            note(ParseErrorKind::TooManyHeaders, &mut problem);
            break;
        }
        logical.push(line.to_owned());
    }

    let mut lines = logical.into_iter();
    let start = lines.next().unwrap_or_default();
    let mut headers = Headers::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            note(ParseErrorKind::MalformedHeaderLine, &mut problem);
            continue;
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(is_token_char) {
            note(ParseErrorKind::MalformedHeaderLine, &mut problem);
            continue;
        }
        headers.insert(
            Name::from(name.to_owned()),
            BytesStr::from(value.trim().to_owned()),
        );
    }
    Ok(Head {
        start,
        headers,
        problem,
        body_offset,
    })
}

fn note(p: ParseErrorKind, problem: &mut Option<ParseErrorKind>) {
    if problem.is_none() {
        *problem = Some(p);
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.' | '!' | '%' | '*' | '_' | '+' | '`' | '\'' | '~'
        )
}

enum StartLine {
    Request(Method, SipUri),
    Response(StatusCode, Option<String>),
}

/// What the start line tells even when it cannot be parsed: whether a response may be sent.
struct StartGuess {
    is_request: bool,
    is_ack: bool,
}

fn guess_start(start: &str) -> StartGuess {
    let mut parts = start.split_whitespace();
    let first = parts.next().unwrap_or_default();
    let is_request = !first.is_empty()
        && !first.to_ascii_uppercase().starts_with("SIP/")
        && first.chars().all(is_token_char)
        && start
            .split_whitespace()
            .last()
            .is_some_and(|v| v.to_ascii_uppercase().starts_with("SIP/"));
    StartGuess {
        is_request,
        is_ack: first.eq_ignore_ascii_case("ACK"),
    }
}

fn parse_start(start: &str) -> Result<StartLine, ParseErrorKind> {
    let guess = guess_start(start);
    if guess.is_request {
        let mut parts = start.split_whitespace();
        let _method = parts.next();
        let (Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ParseErrorKind::BadStartLine);
        };
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseErrorKind::VersionNotSupported);
        }
        let scheme = uri.split(':').next().unwrap_or_default();
        if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
            return Err(ParseErrorKind::UnsupportedUriScheme);
        }
    } else if let Some(version) = start.split_whitespace().next() {
        if version.to_ascii_uppercase().starts_with("SIP/") && version != "SIP/2.0" {
            return Err(ParseErrorKind::VersionNotSupported);
        }
    }

    let src = BytesStr::from(start.to_owned());
    let bytes: &Bytes = src.as_ref();
    let parsed = MessageLine::parse(bytes)(src.as_str());
    match parsed {
        Ok((rest, line)) if rest.trim().is_empty() => match line {
            MessageLine::Request(line) => Ok(StartLine::Request(line.method, line.uri)),
            MessageLine::Response(line) => {
                let code = line.code.into_u16();
                if !(100..=699).contains(&code) {
                    return Err(ParseErrorKind::BadStartLine);
                }
                Ok(StartLine::Response(
                    line.code,
                    line.reason.map(|r| r.as_str().to_owned()),
                ))
            }
        },
        _ => Err(ParseErrorKind::BadStartLine),
    }
}

fn parse_value<H: HeaderParse>(value: &BytesStr) -> Option<H> {
    let src: &Bytes = value.as_ref();
    H::parse(src, value.as_str()).ok().map(|(_, h)| h)
}

/// Parses From/To, falling back to skipping the display name: ezk's quoted-string parser
/// rejects escaped backslashes (`"a \\\""`), which RFC 3261 allows and RFC 4475 tests.
fn parse_from_to(value: &BytesStr) -> Option<FromTo> {
    if let Some(v) = parse_value::<FromTo>(value) {
        return Some(v);
    }
    let start = value.rfind('<')?;
    let tail = BytesStr::from(value.get(start..)?.to_owned());
    parse_value::<FromTo>(&tail)
}

fn single<'h>(
    headers: &'h Headers,
    name: &Name,
    label: &'static str,
) -> Result<&'h BytesStr, ParseErrorKind> {
    let mut values = headers.get_raw(name);
    let first = values.next().ok_or(ParseErrorKind::MissingHeader(label))?;
    if values.next().is_some() {
        return Err(ParseErrorKind::DuplicateHeader(label));
    }
    Ok(first)
}

/// Checks the headers a response needs (RFC 3261 §8.2.6): Via, From, To, Call-ID, CSeq.
fn check_dialog_headers(headers: &Headers) -> Result<CSeq, ParseErrorKind> {
    let via = headers
        .get_raw(&Name::VIA)
        .next()
        .ok_or(ParseErrorKind::MissingHeader("Via"))?;
    if parse_value::<Via>(via).is_none() {
        return Err(ParseErrorKind::MalformedHeader("Via"));
    }
    for (name, label) in [(Name::FROM, "From"), (Name::TO, "To")] {
        let value = single(headers, &name, label)?;
        if parse_from_to(value).is_none() {
            return Err(ParseErrorKind::MalformedHeader(label));
        }
    }
    let call_id = single(headers, &Name::CALL_ID, "Call-ID")?;
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err(ParseErrorKind::MalformedHeader("Call-ID"));
    }
    let cseq = single(headers, &Name::CSEQ, "CSeq")?;
    match parse_value::<CSeq>(cseq) {
        Some(c) if cseq.split_whitespace().count() == 2 => Ok(c),
        _ => Err(ParseErrorKind::MalformedHeader("CSeq")),
    }
}

fn content_length(headers: &Headers) -> Result<Option<usize>, ParseErrorKind> {
    let mut found: Option<usize> = None;
    for value in headers.get_raw(&Name::CONTENT_LENGTH) {
        let v = value.trim();
        if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseErrorKind::InvalidContentLength);
        }
        let n: usize = v
            .parse()
            .map_err(|_| ParseErrorKind::InvalidContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(ParseErrorKind::InvalidContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

fn reject(kind: ParseErrorKind, guess: &StartGuess, headers: &Headers) -> ParseError {
    let response = if guess.is_request && !guess.is_ack && check_dialog_headers(headers).is_ok() {
        let mut resp = build_response(headers, kind.status_code(), Some(&random_tag()));
        resp.reason = Some(kind.to_string());
        Some(Box::new(resp))
    } else {
        None
    };
    ParseError { kind, response }
}

impl Message {
    /// Parses one whole message (a UDP datagram or one framed stream message).
    ///
    /// Checks the start line, the mandatory headers (Via with a branch, From, To, Call-ID,
    /// CSeq whose method matches the request's), Content-Length against the bytes present
    /// (the body is exactly Content-Length bytes; without Content-Length, the rest of the
    /// buffer), and the size limits [`MAX_MESSAGE_LEN`], [`MAX_HEADERS`],
    /// [`MAX_HEADER_LINE`]. Content-Length is removed from the parsed headers because
    /// `to_bytes` always writes the right one.
    ///
    /// # Errors
    /// [`ParseError`] for any violation; see [`ParseError::bad_request_response`] for the
    /// answer to send when the input was a request.
    pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(ParseError {
                kind: ParseErrorKind::TooLarge,
                response: None,
            });
        }
        let head = split_head(buf).map_err(|kind| ParseError {
            kind,
            response: None,
        })?;
        let guess = guess_start(&head.start);
        let mut headers = head.headers;

        let start = match parse_start(&head.start) {
            Ok(start) => start,
            Err(kind) => return Err(reject(kind, &guess, &headers)),
        };
        let guess = StartGuess {
            is_request: matches!(start, StartLine::Request(..)),
            ..guess
        };
        if let Some(kind) = head.problem {
            return Err(reject(kind, &guess, &headers));
        }
        let cseq = check_dialog_headers(&headers).map_err(|kind| reject(kind, &guess, &headers))?;
        let has_branch = headers
            .get_raw(&Name::VIA)
            .next()
            .and_then(parse_value::<Via>)
            .is_some_and(|via| via.params.get_val("branch").is_some_and(|b| !b.is_empty()));
        if !has_branch {
            return Err(reject(ParseErrorKind::MissingBranch, &guess, &headers));
        }
        if let StartLine::Request(method, _) = &start {
            if *method != cseq.method {
                return Err(reject(ParseErrorKind::CSeqMethodMismatch, &guess, &headers));
            }
        }

        let body_offset = head.body_offset.unwrap_or(buf.len());
        let available = buf.get(body_offset..).unwrap_or_default();
        let body = match content_length(&headers) {
            Err(kind) => return Err(reject(kind, &guess, &headers)),
            Ok(Some(len)) => match available.get(..len) {
                Some(body) => body,
                None => return Err(reject(ParseErrorKind::BodyTruncated, &guess, &headers)),
            },
            Ok(None) => available,
        };
        headers.remove(&Name::CONTENT_LENGTH);
        let body = Bytes::copy_from_slice(body);

        Ok(match start {
            StartLine::Request(method, uri) => Message::Request(Request {
                method,
                uri,
                headers,
                body,
            }),
            StartLine::Response(code, reason) => Message::Response(Response {
                code,
                reason,
                headers,
                body,
            }),
        })
    }

    /// Serialises the message with a correct Content-Length.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }

    /// The headers of either kind of message.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Self {
        Message::Request(r)
    }
}

impl From<Response> for Message {
    fn from(r: Response) -> Self {
        Message::Response(r)
    }
}

// ==== serialising ====

/// Header values never contain line breaks after parsing; a TU that inserts one must not
/// be able to inject headers, so they are flattened to spaces.
fn push_sanitized(out: &mut String, s: &str) {
    for c in s.chars() {
        out.push(if c == '\r' || c == '\n' { ' ' } else { c });
    }
}

fn serialize(start: &str, headers: &Headers, body: &Bytes) -> Bytes {
    let mut out = String::with_capacity(start.len() + headers.printed_len() + 32);
    push_sanitized(&mut out, start);
    out.push_str("\r\n");
    for (name, value) in headers.iter() {
        if *name == Name::CONTENT_LENGTH {
            continue;
        }
        push_sanitized(&mut out, name.as_print_str());
        out.push_str(": ");
        push_sanitized(&mut out, value.as_str());
        out.push_str("\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = Vec::with_capacity(out.len() + body.len());
    bytes.extend_from_slice(out.as_bytes());
    bytes.extend_from_slice(body);
    Bytes::from(bytes)
}

// ==== accessors shared by requests and responses ====

fn first_raw(headers: &Headers, name: &Name) -> Option<String> {
    headers.get_raw(name).next().map(|v| v.as_str().to_owned())
}

fn top_via(headers: &Headers) -> Option<Via> {
    headers
        .get_raw(&Name::VIA)
        .next()
        .and_then(parse_value::<Via>)
}

fn via_branch(headers: &Headers) -> Option<String> {
    top_via(headers)?
        .params
        .get_val("branch")
        .map(|b| b.as_str().to_owned())
}

fn cseq_of(headers: &Headers) -> Option<(u32, Method)> {
    let c: CSeq = headers.get_raw(&Name::CSEQ).next().and_then(parse_value)?;
    Some((c.cseq, c.method))
}

fn tag_of(headers: &Headers, name: &Name) -> Option<String> {
    let v = headers.get_raw(name).next().and_then(parse_from_to)?;
    v.tag.map(|t| t.as_str().to_owned())
}

macro_rules! shared_accessors {
    () => {
        /// The Call-ID, trimmed.
        pub fn call_id(&self) -> Option<String> {
            first_raw(&self.headers, &Name::CALL_ID).map(|s| s.trim().to_owned())
        }

        /// The CSeq number and method.
        pub fn cseq(&self) -> Option<(u32, Method)> {
            cseq_of(&self.headers)
        }

        /// The `branch` parameter of the top Via: the transaction key (RFC 3261 §17).
        pub fn top_via_branch(&self) -> Option<String> {
            via_branch(&self.headers)
        }

        /// The top Via, parsed.
        pub fn top_via(&self) -> Option<Via> {
            top_via(&self.headers)
        }

        /// The From tag.
        pub fn from_tag(&self) -> Option<String> {
            tag_of(&self.headers, &Name::FROM)
        }

        /// The To tag.
        pub fn to_tag(&self) -> Option<String> {
            tag_of(&self.headers, &Name::TO)
        }

        /// The first raw value of a header, as received.
        pub fn header_str(&self, name: &Name) -> Option<String> {
            first_raw(&self.headers, name)
        }
    };
}

impl Request {
    /// A request with no headers; the TU adds Via, From, To, Call-ID, CSeq, Max-Forwards.
    pub fn new(method: Method, uri: SipUri) -> Request {
        Request {
            method,
            uri,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    shared_accessors!();

    /// Serialises the request with a correct Content-Length.
    pub fn to_bytes(&self) -> Bytes {
        let ctx = PrintCtx {
            method: Some(&self.method),
            uri: Some(UriContext::ReqUri),
        };
        let start = format!("{} {} SIP/2.0", self.method, self.uri.print_ctx(ctx));
        serialize(&start, &self.headers, &self.body)
    }
}

impl Response {
    /// A response with no headers; most callers want [`response_for`] instead.
    pub fn new(code: StatusCode) -> Response {
        Response {
            code,
            reason: None,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    shared_accessors!();

    /// Serialises the response with a correct Content-Length.
    pub fn to_bytes(&self) -> Bytes {
        let reason = self
            .reason
            .as_deref()
            .or_else(|| self.code.text())
            .unwrap_or("");
        let start = format!("SIP/2.0 {:03} {}", self.code.into_u16(), reason);
        serialize(&start, &self.headers, &self.body)
    }
}

// ==== building messages ====

fn build_response(req_headers: &Headers, code: StatusCode, to_tag: Option<&str>) -> Response {
    let mut headers = Headers::new();
    for via in req_headers.get_raw(&Name::VIA) {
        headers.insert(Name::VIA, via.clone());
    }
    if let Some(from) = req_headers.get_raw(&Name::FROM).next() {
        headers.insert(Name::FROM, from.clone());
    }
    if let Some(to) = req_headers.get_raw(&Name::TO).next() {
        let has_tag = parse_from_to(to).is_some_and(|t| t.tag.is_some());
        match to_tag {
            Some(tag) if !has_tag => {
                headers.insert(Name::TO, BytesStr::from(format!("{to};tag={tag}")));
            }
            _ => headers.insert(Name::TO, to.clone()),
        }
    }
    for name in [Name::CALL_ID, Name::CSEQ] {
        if let Some(v) = req_headers.get_raw(&name).next() {
            headers.insert(name, v.clone());
        }
    }
    Response {
        code,
        reason: code.text().map(str::to_owned),
        headers,
        body: Bytes::new(),
    }
}

/// Builds a response to `req` per RFC 3261 §8.2.6: copies every Via (in order), From, To
/// (adding `;tag=` when `to_tag` is given and To has none), Call-ID and CSeq. The body is
/// empty, so the serialised Content-Length is 0.
pub fn response_for(req: &Request, code: StatusCode, to_tag: Option<&str>) -> Response {
    build_response(&req.headers, code, to_tag)
}

/// Builds the CANCEL for a pending INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, From,
/// To, CSeq number and top Via (so it reaches the same server transaction), and Routes.
pub fn cancel_for(invite: &Request) -> Request {
    hop_request(invite, Method::CANCEL, None)
}

/// The shared shape of CANCEL and of the ACK for a non-2xx final: one Via (the original's
/// top Via), the original From/Call-ID/CSeq number/Route, To from `to` or the original.
pub(crate) fn hop_request(orig: &Request, method: Method, to: Option<&BytesStr>) -> Request {
    let mut req = Request::new(method.clone(), orig.uri.clone());
    if let Some(via) = orig.headers.get_raw(&Name::VIA).next() {
        // A Via line may list several Vias; only the first (ours) belongs here, verbatim.
        let (top, _) = split_first_via(via.as_str());
        req.headers
            .insert(Name::VIA, BytesStr::from(top.trim().to_owned()));
    }
    if let Some(mf) = orig.headers.get_raw(&Name::MAX_FORWARDS).next() {
        req.headers.insert(Name::MAX_FORWARDS, mf.clone());
    }
    for route in orig.headers.get_raw(&Name::ROUTE) {
        req.headers.insert(Name::ROUTE, route.clone());
    }
    if let Some(from) = orig.headers.get_raw(&Name::FROM).next() {
        req.headers.insert(Name::FROM, from.clone());
    }
    if let Some(to) = to.or_else(|| orig.headers.get_raw(&Name::TO).next()) {
        req.headers.insert(Name::TO, to.clone());
    }
    if let Some(call_id) = orig.headers.get_raw(&Name::CALL_ID).next() {
        req.headers.insert(Name::CALL_ID, call_id.clone());
    }
    let number = orig.cseq().map(|(n, _)| n).unwrap_or(1);
    req.headers
        .insert(Name::CSEQ, BytesStr::from(format!("{number} {method}")));
    req
}

/// Splits a Via header value at the comma that ends its first Via (commas inside quoted
/// parameter values do not count): `(first, rest)`, `rest` starting at that comma.
pub(crate) fn split_first_via(value: &str) -> (&str, &str) {
    let mut in_quotes = false;
    let split = value
        .char_indices()
        .find(|&(_, c)| {
            if c == '"' {
                in_quotes = !in_quotes;
            }
            c == ',' && !in_quotes
        })
        .map(|(i, _)| i)
        .unwrap_or(value.len());
    value.split_at(split)
}

/// Where a sans-IO core draws its tags, branches, Call-IDs and other random numbers
/// from: seeded, a simulated run replays exactly; from the operating system, nobody can
/// predict them.
#[derive(Clone, Debug)]
pub struct Entropy(rand::rngs::StdRng);

impl Entropy {
    /// A sequence that is the same for the same seed (tests, simulations).
    pub fn seeded(seed: u64) -> Entropy {
        Entropy(rand::SeedableRng::seed_from_u64(seed))
    }

    /// Seeded from the operating system.
    pub fn from_os() -> Entropy {
        Entropy(rand::SeedableRng::from_entropy())
    }

    /// A fresh From/To tag: 64 random bits, enough that two dialogs never collide.
    pub fn tag(&mut self) -> String {
        tag_from(&mut self.0)
    }

    /// A fresh Via branch with the RFC 3261 magic cookie, so peers use §17 matching.
    pub fn branch(&mut self) -> String {
        branch_from(&mut self.0)
    }

    /// A fresh Call-ID, globally unique through 128 random bits and our host name.
    pub fn call_id(&mut self, host: &str) -> String {
        call_id_from(&mut self.0, host)
    }

    /// A random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0.gen()
    }
}

fn tag_from(rng: &mut impl Rng) -> String {
    format!("{:016x}", rng.gen::<u64>())
}

fn branch_from(rng: &mut impl Rng) -> String {
    format!("z9hG4bK{:024x}", rng.gen::<u128>() >> 32)
}

fn call_id_from(rng: &mut impl Rng, host: &str) -> String {
    let id = format!("{:032x}", rng.gen::<u128>());
    if host.is_empty() {
        id
    } else {
        format!("{id}@{host}")
    }
}

/// A fresh tag for the stateless 400 that answers a request too broken to reach a core
/// (and its [`Entropy`]).
fn random_tag() -> String {
    tag_from(&mut rand::thread_rng())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Message, ParseError> {
        Message::parse(text.replace('\n', "\r\n").as_bytes())
    }

    fn expect_request(text: &str) -> Request {
        match req(text) {
            Ok(Message::Request(r)) => r,
            Ok(Message::Response(_)) => panic!("parsed as a response"),
            Err(e) => panic!("rejected: {e}"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds
Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy1, SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bKx
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example.com>
Content-Type: application/sdp
Content-Length: 4

v=0
";

    #[test]
    fn parses_a_plain_invite() {
        let r = expect_request(INVITE);
        assert_eq!(r.method, Method::INVITE);
        assert_eq!(
            r.call_id().as_deref(),
            Some("a84b4c76e66710@pc33.atlanta.example.com")
        );
        assert_eq!(r.cseq(), Some((314159, Method::INVITE)));
        assert_eq!(r.top_via_branch().as_deref(), Some("z9hG4bK776asdhds"));
        assert_eq!(r.from_tag().as_deref(), Some("1928301774"));
        assert_eq!(r.to_tag(), None);
        assert_eq!(&r.body[..], b"v=0\r");
        assert_eq!(r.header_str(&Name::MAX_FORWARDS).as_deref(), Some("70"));
        assert!(!r.headers.contains(&Name::CONTENT_LENGTH));
    }

    #[test]
    fn torture_compact_forms_folding_and_whitespace() {
        // After RFC 4475 §3.1.1.1 "wsinv": folded lines, odd spacing, compact names.
        let text = "\n\nINVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
";
        let r = expect_request(text);
        assert_eq!(r.cseq(), Some((9, Method::INVITE)));
        assert_eq!(r.top_via_branch().as_deref(), Some("390skdjuw"));
        assert_eq!(r.to_tag().as_deref(), Some("1918181833n"));
        assert_eq!(r.call_id().as_deref(), Some("wsinv.ndaksdj@192.0.2.1"));
        assert_eq!(r.body.len(), 150);
        assert_eq!(r.headers.get_raw(&Name::VIA).count(), 2);
        assert_eq!(
            r.header_str(&Name::from("newfangledheader")).as_deref(),
            Some("newfangled value continued newfangled value")
        );
    }

    #[test]
    fn compact_header_names() {
        let r = expect_request(
            "OPTIONS sip:user@example.com SIP/2.0
v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKcompact
i: compact.1@192.0.2.1
f: <sip:a@example.com>;tag=ab
t: <sip:user@example.com>
CSeq: 1 OPTIONS
m: <sip:a@192.0.2.1>
l: 0

",
        );
        assert_eq!(r.call_id().as_deref(), Some("compact.1@192.0.2.1"));
        assert_eq!(r.from_tag().as_deref(), Some("ab"));
        assert!(r.headers.contains(&Name::CONTACT));
        // Printing uses the long names.
        let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert!(
            out.contains("\r\nCall-ID: compact.1@192.0.2.1\r\n"),
            "{out}"
        );
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"), "{out}");
    }

    #[test]
    fn parses_a_response() {
        let m = req("SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKabc
From: <sip:a@x>;tag=1
To: <sip:b@x>;tag=2
Call-ID: c1
CSeq: 2 INVITE

")
        .unwrap();
        let Message::Response(r) = m else { panic!() };
        assert_eq!(r.code, StatusCode::RINGING);
        assert_eq!(r.reason.as_deref(), Some("Ringing"));
        assert_eq!(r.to_tag().as_deref(), Some("2"));
    }

    #[test]
    fn round_trip() {
        let r = expect_request(INVITE);
        let bytes = r.to_bytes();
        let Message::Request(again) = Message::parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(again.method, r.method);
        assert_eq!(again.body, r.body);
        assert_eq!(again.call_id(), r.call_id());
        assert_eq!(again.cseq(), r.cseq());
        let vias: Vec<_> = again.headers.get_raw(&Name::VIA).collect();
        let orig: Vec<_> = r.headers.get_raw(&Name::VIA).collect();
        assert_eq!(vias, orig);
        assert_eq!(again.to_bytes(), bytes);

        let resp = response_for(&r, StatusCode::OK, Some("xyz"));
        let Message::Response(back) = Message::parse(&resp.to_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(back.code, StatusCode::OK);
        assert_eq!(back.to_tag().as_deref(), Some("xyz"));
    }

    #[test]
    fn response_for_copies_vias_in_order_and_adds_tag() {
        let r = expect_request(INVITE);
        let resp = response_for(&r, StatusCode::RINGING, Some("totag1"));
        let vias: Vec<_> = resp
            .headers
            .get_raw(&Name::VIA)
            .map(|v| v.as_str())
            .collect();
        assert_eq!(
            vias,
            vec![
                "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
                "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy1, SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bKx",
            ]
        );
        assert_eq!(resp.to_tag().as_deref(), Some("totag1"));
        assert_eq!(resp.from_tag().as_deref(), Some("1928301774"));
        assert_eq!(resp.call_id(), r.call_id());
        assert_eq!(resp.cseq(), r.cseq());
        assert!(resp.body.is_empty());
        let text = String::from_utf8(resp.to_bytes().to_vec()).unwrap();
        assert!(text.starts_with("SIP/2.0 180 Ringing\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));

        // An existing To tag is kept.
        let tagged = response_for(&r, StatusCode::OK, Some("a"));
        let again = Request {
            headers: tagged.headers.clone(),
            ..r.clone()
        };
        let second = response_for(&again, StatusCode::OK, Some("b"));
        assert_eq!(second.to_tag().as_deref(), Some("a"));
    }

    fn without(text: &str, header: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with(header))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn bad(text: &str) -> ParseError {
        match req(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    const OPTIONS: &str = "OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKopt
From: <sip:a@example.com>;tag=ab
To: <sip:user@example.com>
Call-ID: opt.1@192.0.2.1
CSeq: 7 OPTIONS
Content-Length: 0

";

    #[test]
    fn missing_mandatory_headers() {
        for (header, kind) in [
            ("Call-ID", ParseErrorKind::MissingHeader("Call-ID")),
            ("CSeq", ParseErrorKind::MissingHeader("CSeq")),
            ("Via", ParseErrorKind::MissingHeader("Via")),
            ("From", ParseErrorKind::MissingHeader("From")),
            ("To", ParseErrorKind::MissingHeader("To")),
        ] {
            let e = bad(&without(OPTIONS, header));
            assert_eq!(e.kind(), &kind);
            // Without those headers no response can be built.
            assert!(e.bad_request_response().is_none(), "{header}");
        }
    }

    #[test]
    fn errors_that_get_a_400() {
        let cases = [
            (
                OPTIONS.replace("CSeq: 7 OPTIONS", "CSeq: 7 INVITE"),
                ParseErrorKind::CSeqMethodMismatch,
            ),
            (
                OPTIONS.replace("Content-Length: 0", "Content-Length: 10"),
                ParseErrorKind::BodyTruncated,
            ),
            (
                OPTIONS.replace("Content-Length: 0", "Content-Length: -5"),
                ParseErrorKind::InvalidContentLength,
            ),
            (
                OPTIONS.replace("Content-Length: 0", "Content-Length: abc"),
                ParseErrorKind::InvalidContentLength,
            ),
            (
                OPTIONS.replace("Content-Length: 0", "Content-Length: 99999999999999999999"),
                ParseErrorKind::InvalidContentLength,
            ),
            (
                OPTIONS.replace(";branch=z9hG4bKopt", ""),
                ParseErrorKind::MissingBranch,
            ),
            (
                OPTIONS.replace(
                    "Content-Length: 0\n",
                    "Content-Length: 0\nContent-Length: 2\n",
                ),
                ParseErrorKind::InvalidContentLength,
            ),
        ];
        for (text, kind) in cases {
            let e = bad(&text);
            assert_eq!(e.kind(), &kind);
            let r = e.bad_request_response().expect("a 400");
            assert_eq!(r.code, StatusCode::BAD_REQUEST);
            assert_eq!(r.reason.as_deref(), Some(kind.to_string().as_str()));
            assert_eq!(r.call_id().as_deref(), Some("opt.1@192.0.2.1"));
            assert_eq!(r.cseq().map(|c| c.0), Some(7));
            assert!(r.to_tag().is_some());
            // The 400 itself must be a valid message.
            let reparsed = Message::parse(&r.to_bytes());
            assert!(
                reparsed.is_ok() || kind == ParseErrorKind::MissingBranch,
                "{:?}: {}",
                reparsed.err(),
                String::from_utf8_lossy(&r.to_bytes())
            );
        }
    }

    #[test]
    fn start_line_errors() {
        let e = bad(&OPTIONS.replace("SIP/2.0\n", "SIP/7.0\n"));
        assert_eq!(e.kind(), &ParseErrorKind::VersionNotSupported);
        assert_eq!(
            e.bad_request_response().unwrap().code,
            StatusCode::from(505)
        );

        let e = bad(&OPTIONS.replace("sip:user@example.com SIP", "tel:+15551234 SIP"));
        assert_eq!(e.kind(), &ParseErrorKind::UnsupportedUriScheme);
        assert_eq!(
            e.bad_request_response().unwrap().code,
            StatusCode::from(416)
        );

        let e = bad(&OPTIONS.replace("OPTIONS sip:user@example.com SIP/2.0", "OPTIONS  SIP/2.0"));
        assert_eq!(e.kind(), &ParseErrorKind::BadStartLine);
        assert_eq!(
            e.bad_request_response().unwrap().code,
            StatusCode::BAD_REQUEST
        );

        let e = bad(&OPTIONS.replace("OPTIONS sip:user@example.com SIP/2.0", "hello world"));
        assert_eq!(e.kind(), &ParseErrorKind::BadStartLine);
        assert!(e.bad_request_response().is_none());

        let e = bad(&OPTIONS.replace("OPTIONS sip:user@example.com SIP/2.0", "SIP/2.0 999 Odd"));
        assert_eq!(e.kind(), &ParseErrorKind::BadStartLine);
    }

    #[test]
    fn never_answers_an_ack_or_a_response() {
        let ack = OPTIONS
            .replace("OPTIONS sip", "ACK sip")
            .replace("CSeq: 7 OPTIONS", "CSeq: 7 INVITE");
        let e = bad(&ack);
        assert_eq!(e.kind(), &ParseErrorKind::CSeqMethodMismatch);
        assert!(e.bad_request_response().is_none());

        let resp = OPTIONS
            .replace("OPTIONS sip:user@example.com SIP/2.0", "SIP/2.0 200 OK")
            .replace("Content-Length: 0", "Content-Length: 9");
        let e = bad(&resp);
        assert_eq!(e.kind(), &ParseErrorKind::BodyTruncated);
        assert!(e.bad_request_response().is_none());
    }

    #[test]
    fn duplicate_and_malformed_single_headers() {
        let e = bad(&OPTIONS.replace("Call-ID: opt.1@192.0.2.1\n", "Call-ID: a\nCall-ID: b\n"));
        assert_eq!(e.kind(), &ParseErrorKind::DuplicateHeader("Call-ID"));
        let e = bad(&OPTIONS.replace("CSeq: 7 OPTIONS", "CSeq: 99999999999 OPTIONS"));
        assert_eq!(e.kind(), &ParseErrorKind::MalformedHeader("CSeq"));
        let e = bad(&OPTIONS.replace("CSeq: 7 OPTIONS", "CSeq: OPTIONS"));
        assert_eq!(e.kind(), &ParseErrorKind::MalformedHeader("CSeq"));
        let e = bad(&OPTIONS.replace("From: <sip:a@example.com>;tag=ab", "From: <>"));
        assert_eq!(e.kind(), &ParseErrorKind::MalformedHeader("From"));
    }

    #[test]
    fn size_limits() {
        let huge = OPTIONS.replace(
            "Content-Length: 0",
            &format!("X-Big: {}\nContent-Length: 0", "a".repeat(100 * 1024)),
        );
        let e = bad(&huge);
        assert_eq!(e.kind(), &ParseErrorKind::TooLarge);
        assert!(e.bad_request_response().is_none());

        let long_line = OPTIONS.replace(
            "Content-Length: 0",
            &format!("X-Big: {}\nContent-Length: 0", "a".repeat(9 * 1024)),
        );
        let e = bad(&long_line);
        assert_eq!(e.kind(), &ParseErrorKind::HeaderLineTooLong);
        // The rest of the request is fine, so it can be answered.
        assert!(e.bad_request_response().is_some());

        let many: String = (0..250).map(|i| format!("X-H{i}: v\n")).collect();
        let e = bad(&OPTIONS.replace("Content-Length: 0\n", &format!("{many}Content-Length: 0\n")));
        assert_eq!(e.kind(), &ParseErrorKind::TooManyHeaders);
    }

    #[test]
    fn truncated_and_garbage() {
        let full = OPTIONS.replace('\n', "\r\n");
        for cut in 0..full.len() - 2 {
            let r = Message::parse(&full.as_bytes()[..cut]);
            assert!(r.is_err(), "accepted a message cut at {cut}");
        }
        assert!(Message::parse(b"").is_err());
        assert!(Message::parse(b"\r\n\r\n").is_err());
        assert!(Message::parse(&[0xff, 0xfe, 0x00, 0x13, 0x37]).is_err());
        let mut head_garbage = full.clone().into_bytes();
        head_garbage[20] = 0xff;
        assert_eq!(
            Message::parse(&head_garbage).unwrap_err().kind(),
            &ParseErrorKind::InvalidUtf8
        );
    }

    #[test]
    fn datagram_without_content_length_takes_the_rest() {
        let text = without(OPTIONS, "Content-Length").replace('\n', "\r\n") + "hello";
        let Message::Request(r) = Message::parse(text.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(&r.body[..], b"hello");
        // Extra bytes after Content-Length are ignored (RFC 3261 §18.3).
        let text = OPTIONS
            .replace("Content-Length: 0", "Content-Length: 2")
            .replace('\n', "\r\n")
            + "hello";
        let Message::Request(r) = Message::parse(text.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(&r.body[..], b"he");
    }

    /// A deterministic mutation fuzzer: a stand-in for cargo-fuzz that runs on every
    /// `cargo test` and checks that nothing panics.
    #[test]
    fn mutations_never_panic() {
        let seeds = [INVITE.replace('\n', "\r\n"), OPTIONS.replace('\n', "\r\n")];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"\r\n :;,=<>\"\\@aZ0\t\xff\x00%-.";
        for seed in &seeds {
            for _ in 0..3000 {
                let mut bytes = seed.clone().into_bytes();
                for _ in 0..(next() % 8 + 1) {
                    let len = bytes.len().max(1);
                    let pos = (next() as usize) % len;
                    match next() % 4 {
                        0 => {
                            if pos < bytes.len() {
                                bytes[pos] = alphabet[(next() as usize) % alphabet.len()];
                            }
                        }
                        1 => {
                            if pos < bytes.len() {
                                bytes.remove(pos);
                            }
                        }
                        2 => bytes.insert(
                            pos.min(bytes.len()),
                            alphabet[(next() as usize) % alphabet.len()],
                        ),
                        _ => bytes.truncate(pos),
                    }
                }
                if let Ok(m) = Message::parse(&bytes) {
                    // Whatever we accept, we must print in a form we accept again.
                    let printed = m.to_bytes();
                    assert!(
                        Message::parse(&printed).is_ok(),
                        "reprint rejected: {:?}",
                        String::from_utf8_lossy(&printed)
                    );
                } else if let Err(e) = Message::parse(&bytes) {
                    if let Some(r) = e.bad_request_response() {
                        // A 400 echoes the request's Via, which may lack a branch.
                        match Message::parse(&r.to_bytes()) {
                            Ok(_) => {}
                            Err(e2) => assert_eq!(
                                e2.kind(),
                                &ParseErrorKind::MissingBranch,
                                "{}",
                                String::from_utf8_lossy(&r.to_bytes())
                            ),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ids_have_the_right_shape() {
        let mut e = Entropy::seeded(1);
        assert!(e.branch().starts_with("z9hG4bK"));
        assert_ne!(e.branch(), e.branch());
        assert_ne!(e.tag(), e.tag());
        assert!(e.call_id("pbx.example.com").ends_with("@pbx.example.com"));
        assert!(!e.call_id("").contains('@'));
        assert_eq!(Entropy::seeded(1).tag(), Entropy::seeded(1).tag());
    }

    #[test]
    fn cancel_matches_the_invite() {
        let invite = expect_request(INVITE);
        let cancel = cancel_for(&invite);
        assert_eq!(cancel.method, Method::CANCEL);
        assert_eq!(cancel.top_via_branch(), invite.top_via_branch());
        assert_eq!(cancel.headers.get_raw(&Name::VIA).count(), 1);
        assert_eq!(cancel.cseq(), Some((314159, Method::CANCEL)));
        assert_eq!(cancel.call_id(), invite.call_id());
        assert!(Message::parse(&cancel.to_bytes()).is_ok());
    }
}
