//! The virtual-clock harness shared by the engine's whole-call tests: phones scripted as
//! text, the engine's output parsed back with the same parser the server uses.

// Shared by several test binaries, each using a part.
#![allow(dead_code, unreachable_pub)]

pub mod sim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confero_pbx::config::{
    AdminLeaves, Conference, Config, Destination, IncomingNumber, Snapshot, Trunk, TrunkTransport,
    User,
};
use confero_pbx::engine::{Engine, EngineEvent, EngineSettings, MediaCommand};
use confero_sip::digest::{self, Algorithm};
use confero_sip::message::{Message, Request, Response};
use confero_sip::transport::{Peer, Transport};
use confero_sip::Name;

pub const PBX: &str = "127.0.0.1:5060";

pub fn user(id: i64, name: &str, ext: &str) -> User {
    User {
        id,
        name: name.into(),
        extension: ext.into(),
        sip_username: name.to_lowercase(),
        sip_password: format!("{}-pw", name.to_lowercase()),
    }
}

pub struct Harness {
    pub engine: Engine,
    pub now: Instant,
}

pub fn peer(port: u16) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        conn: None,
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tune: impl FnOnce(&mut EngineSettings)) -> Self {
        Self::configured(|_| {}, tune)
    }

    /// The standard users and room, changed by `edit` (trunks, numbers…).
    pub fn configured(
        edit: impl FnOnce(&mut Config),
        tune: impl FnOnce(&mut EngineSettings),
    ) -> Self {
        let now = Instant::now();
        let mut config = Config {
            users: vec![user(1, "Alice", "101"), user(2, "Bob", "102")],
            conferences: vec![Conference {
                id: 7,
                name: "Sales".into(),
                extension: "800".into(),
                access_code: Some("1234".into()),
                admin_extension: Some("101".into()),
                wait_for_admin: false,
                when_admin_leaves: AdminLeaves::Wait,
            }],
            ..Default::default()
        };
        edit(&mut config);
        let snapshot = Arc::new(Snapshot {
            revision: 1,
            config,
        });
        let mut settings = EngineSettings::new(PBX.parse().unwrap(), [7u8; 32]);
        settings.ring_timeout = Duration::from_secs(30);
        settings.seed = Some(7);
        tune(&mut settings);
        Harness {
            engine: Engine::new(settings, snapshot, now, 1_700_000_000),
            now,
        }
    }

    /// A message from `peer` (a WebSocket or TCP connection, say).
    pub fn send_via(&mut self, peer: Peer, text: &str) {
        let text = text.replace('\n', "\r\n");
        self.engine.handle_datagram(self.now, text.as_bytes(), peer);
    }

    pub fn send(&mut self, from: u16, text: &str) {
        let text = text.replace('\n', "\r\n");
        self.engine
            .handle_datagram(self.now, text.as_bytes(), peer(from));
    }

    /// Everything the engine sent, as (destination port, message).
    pub fn out(&mut self) -> Vec<(u16, Message)> {
        let mut v = Vec::new();
        while let Some(t) = self.engine.poll_transmit() {
            let msg = Message::parse(&t.data).expect("engine output parses");
            v.push((t.peer.addr.port(), msg));
        }
        v
    }

    /// Advances the virtual clock by `d`, firing every timer on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.engine.poll_timeout() {
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.engine.handle_timeout(self.now);
        }
        self.now = end;
        self.engine.handle_timeout(self.now);
    }

    pub fn events(&mut self) -> Vec<EngineEvent> {
        std::iter::from_fn(|| self.engine.poll_event()).collect()
    }
}

pub fn status(m: &Message) -> Option<u16> {
    match m {
        Message::Response(r) => Some(r.code.into_u16()),
        Message::Request(_) => None,
    }
}

pub fn response(m: &Message) -> &Response {
    match m {
        Message::Response(r) => r,
        Message::Request(r) => panic!("expected a response, got {} request", r.method),
    }
}

pub fn header(m: &Message, name: Name) -> Option<String> {
    let h = match m {
        Message::Response(r) => &r.headers,
        Message::Request(r) => &r.headers,
    };
    h.get_raw(&name).next().map(|v| v.to_string())
}

pub fn register_text(user: &str, port: u16, cseq: u32, branch: &str, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport
From: <sip:{user}@127.0.0.1>;tag=reg{port}
To: <sip:{user}@127.0.0.1>
Call-ID: reg-{user}-{port}
CSeq: {cseq} REGISTER
Contact: <sip:{user}@127.0.0.1:{port}>
Expires: 600
{auth}Content-Length: 0

"
    )
}

/// The challenge of `algorithm` in a 401 or 407.
pub fn challenge_of(m: &Message, name: Name, algorithm: &str) -> String {
    response(m)
        .headers
        .get_raw(&name)
        .map(|v| v.to_string())
        .find(|c| c.contains(&format!("algorithm={algorithm}")))
        .unwrap_or_else(|| panic!("no {algorithm} challenge in {:?}", status(m)))
}

/// Sends an unauthenticated REGISTER and returns the Authorization answering its MD5
/// challenge with `password`.
pub fn register_credentials(
    h: &mut Harness,
    user: &str,
    port: u16,
    password: &str,
    branch: &str,
) -> String {
    h.send(port, &register_text(user, port, 1, branch, None));
    let out = h.out();
    assert_eq!(status(&out[0].1), Some(401));
    let md5 = challenge_of(&out[0].1, Name::WWW_AUTHENTICATE, "MD5");
    digest::answer_challenge(
        &md5,
        "REGISTER",
        "sip:127.0.0.1",
        user,
        password,
        1,
        "cnonce1",
    )
    .unwrap()
}

/// Runs the 401 dance for `user` from `port`; returns the 200 OK.
pub fn register(h: &mut Harness, user: &str, port: u16) -> Message {
    let answer = register_credentials(
        h,
        user,
        port,
        &format!("{user}-pw"),
        &format!("z9hG4bKr1{port}"),
    );
    h.send(
        port,
        &register_text(user, port, 2, &format!("z9hG4bKr2{port}"), Some(&answer)),
    );
    let out = h.out();
    assert_eq!(out.len(), 1);
    out.into_iter().next().unwrap().1
}

/// A plain-RTP offer of PCMU at 127.0.0.1:4000.
pub const PLAIN_SDP: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

pub fn invite_text(port: u16, dial: &str, cseq: u32, branch: &str, auth: Option<&str>) -> String {
    invite_text_with(port, dial, cseq, branch, auth, PLAIN_SDP)
}

/// An INVITE from Alice's phone offering `sdp` (written with CRLF line ends).
pub fn invite_text_with(
    port: u16,
    dial: &str,
    cseq: u32,
    branch: &str,
    auth: Option<&str>,
    sdp: &str,
) -> String {
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\n"))
        .unwrap_or_default();
    format!(
        "INVITE sip:{dial}@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport
From: <sip:alice@127.0.0.1>;tag=caller
To: <sip:{dial}@127.0.0.1>
Call-ID: call-1
CSeq: {cseq} INVITE
Contact: <sip:alice@127.0.0.1:{port}>
Max-Forwards: 70
{auth}Content-Type: application/sdp
Content-Length: {}

{sdp}",
        sdp.len()
    )
    .replace("\r\n", "\n")
}

/// Alice (port 5000) dials `dial` and authenticates; returns what the engine sent after
/// the authenticated INVITE.
pub fn dial(h: &mut Harness, dial: &str) -> Vec<(u16, Message)> {
    dial_offering(h, dial, PLAIN_SDP)
}

/// As [`dial`], offering `sdp`.
pub fn dial_offering(h: &mut Harness, dial: &str, sdp: &str) -> Vec<(u16, Message)> {
    h.send(
        5000,
        &invite_text_with(5000, dial, 1, "z9hG4bKi1", None, sdp),
    );
    let out = h.out();
    let challenge = out
        .iter()
        .find(|(_, m)| status(m) == Some(407))
        .map(|(_, m)| {
            response(m)
                .headers
                .get_raw(&Name::PROXY_AUTHENTICATE)
                .map(|v| v.to_string())
                .find(|c| c.contains("MD5"))
                .unwrap()
        })
        .expect("407");
    h.send(5000, "ACK sip:x@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKi1\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:x@127.0.0.1>;tag=x\nCall-ID: call-1\nCSeq: 1 ACK\nContent-Length: 0\n\n");
    let answer = alice_answers(&challenge, dial);
    h.send(
        5000,
        &invite_text_with(5000, dial, 2, "z9hG4bKi2", Some(&answer), sdp),
    );
    h.out()
}

/// Alice's `Proxy-Authorization` for an INVITE to `dial`, answering `challenge`.
pub fn alice_answers(challenge: &str, dial: &str) -> String {
    digest::answer_challenge(
        challenge,
        "INVITE",
        &format!("sip:{dial}@127.0.0.1"),
        "alice",
        "alice-pw",
        1,
        "c",
    )
    .unwrap()
}

pub fn requests_to(
    out: &[(u16, Message)],
    port: u16,
    method: &str,
) -> Vec<confero_sip::message::Request> {
    out.iter()
        .filter(|(p, _)| *p == port)
        .filter_map(|(_, m)| match m {
            Message::Request(r) if r.method.to_string() == method => Some(r.clone()),
            _ => None,
        })
        .collect()
}

pub fn answer_text(
    invite: &confero_sip::message::Request,
    code: u16,
    tag: &str,
    port: u16,
) -> String {
    let raw = |n: Name| invite.headers.get_raw(&n).next().unwrap().to_string();
    format!(
        "SIP/2.0 {code} X
Via: {}
From: {}
To: {};tag={tag}
Call-ID: {}
CSeq: {}
Contact: <sip:bob@127.0.0.1:{port}>
Content-Length: 0

",
        raw(Name::VIA),
        raw(Name::FROM),
        raw(Name::TO),
        raw(Name::CALL_ID),
        raw(Name::CSEQ)
    )
}

/// A phone's 200 OK to `invite` carrying `sdp` (written with CRLF line ends).
pub fn answer_with_sdp(
    invite: &confero_sip::message::Request,
    tag: &str,
    port: u16,
    sdp: &str,
) -> String {
    answer_text(invite, 200, tag, port).replace(
        "Content-Length: 0\n\n",
        &format!(
            "Content-Type: application/sdp\nContent-Length: {}\n\n{sdp}",
            sdp.len()
        )
        .replace("\r\n", "\n"),
    )
}

pub fn media(h: &mut Harness) -> Vec<MediaCommand> {
    std::iter::from_fn(|| h.engine.poll_media()).collect()
}

pub fn info_text(tag: &str, cseq: u32, digit: char) -> String {
    let body = format!("Signal={digit}\r\nDuration=160\r\n");
    format!(
        "INFO sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKinfo{cseq}\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:800@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: {cseq} INFO\nContent-Type: application/dtmf-relay\nContent-Length: {}\n\n{body}",
        body.len()
    )
}

// ----- a provider on port 7000, for trunk and transfer tests ---------------------------

pub const CARRIER: u16 = 7000;
pub const TRUNK_PASSWORD: &str = "trunk-secret";

pub fn trunk(transport: TrunkTransport, register: bool) -> Trunk {
    Trunk {
        id: 3,
        name: "Carrier".into(),
        host: "127.0.0.1".into(),
        port: CARRIER,
        transport,
        username: Some("acct".into()),
        password: Some(TRUNK_PASSWORD.into()),
        register,
        caller_id: Some("+3225550100".into()),
        dial_prefix: None,
    }
}

pub fn numbers(c: &mut Config) {
    for (id, number, destination) in [
        (
            20,
            "+3225550100",
            Destination::Conference { conference_id: 7 },
        ),
        (
            21,
            "+3225550101",
            Destination::Extension {
                extension: "102".into(),
            },
        ),
        (22, "+3225550102", Destination::HangUp),
        (23, "+3225550103", Destination::NotConfigured),
    ] {
        c.incoming_numbers.push(IncomingNumber {
            id,
            number: number.into(),
            destination,
        });
    }
}

pub fn with_trunk(transport: TrunkTransport, register: bool) -> Harness {
    Harness::configured(
        |c| {
            c.trunks.push(trunk(transport, register));
            numbers(c);
        },
        |_| {},
    )
}

/// A response to `req` from the provider, with `extra` header lines and an optional body.
pub fn reply(req: &Request, code: u16, tag: &str, extra: &str, body: &str) -> String {
    let raw = |n: Name| req.headers.get_raw(&n).next().unwrap().to_string();
    let ctype = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\n".to_owned()
    };
    // Bodies are written with CRLF; the harness turns every LF into CRLF on sending.
    format!(
        "SIP/2.0 {code} Whatever\nVia: {}\nFrom: {}\nTo: {};tag={tag}\nCall-ID: {}\nCSeq: {}\n{extra}{ctype}Content-Length: {}\n\n{body}",
        raw(Name::VIA),
        raw(Name::FROM),
        raw(Name::TO),
        raw(Name::CALL_ID),
        raw(Name::CSEQ),
        body.len()
    )
    .replace("\r\n", "\n")
}

pub fn challenge(realm: &str) -> String {
    let nonce = "carrier-nonce-1";
    digest::challenges(realm, nonce, false, &[Algorithm::Md5]).remove(0)
}

pub fn sdp(port: u16) -> String {
    format!("v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
}

pub fn sdp_port(body: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(body);
    let m = text
        .lines()
        .find(|l| l.starts_with("m=audio "))
        .expect("m=audio");
    m.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn header_of(req: &Request, name: &str) -> Option<String> {
    req.headers
        .get_raw(&Name::from(name.to_owned()))
        .next()
        .map(|v| v.to_string())
}

/// A call from the provider for `number`, from `port`, to `ruri_user`.
pub fn carrier_invite(port: u16, ruri_user: &str, to_number: &str, call_id: &str) -> String {
    let body = sdp(40000);
    format!(
        "INVITE sip:{ruri_user}@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id}
From: \"Anonymous\" <sip:anonymous@carrier.example>;tag=carrier
To: <sip:{to_number}@127.0.0.1>
Call-ID: {call_id}
CSeq: 1 INVITE
Contact: <sip:gw@127.0.0.1:{port}>
P-Asserted-Identity: \"Jane Roe\" <sip:+3247555123@carrier.example>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: {}

{body}",
        body.len()
    )
    .replace("\r\n", "\n")
}

pub fn final_status(out: &[(u16, Message)], port: u16) -> Option<u16> {
    out.iter()
        .filter(|(p, _)| *p == port)
        .filter_map(|(_, m)| status(m))
        .find(|c| *c >= 200)
}
