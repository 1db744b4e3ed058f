//! One dialog as one of its two ends sees it (RFC 3261 §12), and the requests that run in
//! it: in-dialog requests, the ACK of a 2xx, and the 2xx a UAS retransmits until ACKed.
//!
//! A back-to-back user agent holds one [`Dialog`] per leg and never forwards a message
//! as-is between legs: each leg has its own Call-ID, tags and CSeq space.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::headers;
use crate::message::{Entropy, Request, Response};
use crate::transport::{Peer, Transmit, Transport};
use crate::{Method, Name, SipUri};

/// Why a request cannot start a dialog; each is answered 400 with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// From, To or Call-ID missing or unreadable.
    #[error("Bad Request")]
    BadHeaders,
    /// The caller's From has no tag: its dialog could not be told from another.
    #[error("Missing From Tag")]
    MissingFromTag,
    /// No Contact: nowhere to send requests in the dialog.
    #[error("Missing Contact")]
    MissingContact,
}

/// What our end writes about itself in the requests it sends.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    /// The address peers reach us at (Via sent-by, Contact).
    pub advertised: SocketAddr,
    /// `User-Agent` (without a version, which would tell a scanner which flaws to try).
    pub user_agent: &'static str,
}

impl Local {
    /// A Via for a new request over `transport`, with a fresh branch.
    pub fn via(&self, transport: Transport, entropy: &mut Entropy) -> String {
        format!(
            "SIP/2.0/{} {};branch={};rport",
            transport.via_name(),
            self.advertised,
            entropy.branch()
        )
    }

    /// Our Contact over `transport`.
    pub fn contact(&self, transport: Transport) -> String {
        match transport {
            Transport::Udp => format!("<sip:{}>", self.advertised),
            t => format!(
                "<sip:{};transport={}>",
                self.advertised,
                t.via_name().to_ascii_lowercase()
            ),
        }
    }
}

/// One dialog, from our end.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// The dialog's Call-ID.
    pub call_id: String,
    /// Our tag (in To when we answered, in From when we called).
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Name-addr (without tag) of our end, as written in From/To.
    pub local_uri: String,
    /// Name-addr (without tag) of the peer's end.
    pub remote_uri: String,
    /// Where in-dialog requests are addressed (the peer's Contact).
    pub remote_target: String,
    /// Route headers for requests on this dialog, in order.
    pub route_set: Vec<String>,
    /// The CSeq of the last request we sent in it.
    pub local_cseq: u32,
    /// The flow requests for this dialog travel over.
    pub peer: Peer,
    /// Our ACK to the peer's last 2xx, sent again when that 2xx is retransmitted.
    pub last_ack: Option<Request>,
    /// A 2xx we sent and keep retransmitting until the ACK (RFC 3261 §13.3.1.4).
    pub unacked_2xx: Option<Unacked>,
}

impl Dialog {
    /// The dialog `req` (an INVITE) creates at its UAS (§12.1.1), with our tag.
    pub fn uas(req: &Request, local_tag: String, peer: Peer) -> Result<Dialog, DialogError> {
        let (Some(from), Some(to), Some(call_id)) = (
            headers::from_to(&req.headers, Name::FROM),
            headers::from_to(&req.headers, Name::TO),
            req.call_id(),
        ) else {
            return Err(DialogError::BadHeaders);
        };
        let remote_tag = from
            .tag
            .as_ref()
            .map(|t| t.to_string())
            .ok_or(DialogError::MissingFromTag)?;
        let remote_target = headers::contacts(&req.headers)
            .and_then(|c| c.first().map(headers::contact_uri_text))
            .ok_or(DialogError::MissingContact)?;
        Ok(Dialog {
            call_id,
            local_tag,
            remote_tag,
            local_uri: headers::name_addr_text(&to),
            remote_uri: headers::name_addr_text(&from),
            remote_target,
            route_set: headers::all_values(&req.headers, &Name::RECORD_ROUTE),
            local_cseq: 1,
            peer,
            last_ack: None,
            unacked_2xx: None,
        })
    }

    /// The dialog a 2xx to our `invite` creates at our end, the UAC (§12.1.2).
    pub fn uac(invite: &Request, resp: &Response, peer: Peer) -> Option<Dialog> {
        let from = headers::from_to(&invite.headers, Name::FROM)?;
        let to = headers::from_to(&resp.headers, Name::TO)?;
        let remote_target = headers::contacts(&resp.headers)
            .and_then(|c| c.first().map(headers::contact_uri_text))
            .unwrap_or_else(|| headers::uri_text(&invite.uri));
        let mut route_set = headers::all_values(&resp.headers, &Name::RECORD_ROUTE);
        route_set.reverse();
        Some(Dialog {
            call_id: invite.call_id()?,
            local_tag: from.tag.as_ref()?.to_string(),
            remote_tag: to.tag.as_ref()?.to_string(),
            local_uri: headers::name_addr_text(&from),
            remote_uri: headers::name_addr_text(&to),
            remote_target,
            route_set,
            local_cseq: invite.cseq().map(|(n, _)| n).unwrap_or(1),
            peer,
            last_ack: None,
            unacked_2xx: None,
        })
    }

    /// A request in this dialog with the next CSeq (§12.2.1.1).
    pub fn request(&mut self, method: Method, local: &Local, entropy: &mut Entropy) -> Request {
        self.local_cseq += 1;
        let cseq = self.local_cseq;
        let via = local.via(self.peer.transport, entropy);
        let mut req = self.addressed(method.clone(), cseq, via);
        if method == Method::INVITE {
            req.headers
                .insert(Name::CONTACT, local.contact(self.peer.transport));
        }
        req.headers.insert(Name::USER_AGENT, local.user_agent);
        req
    }

    /// The ACK of a 2xx to the INVITE numbered `cseq` (§13.2.2.4): a request of no
    /// transaction, with its own Via.
    pub fn ack(&self, cseq: u32, via: String) -> Request {
        self.addressed(Method::ACK, cseq, via)
    }

    /// The ACK of a 2xx to `invite`.
    pub fn ack_for(&self, invite: &Request, via: String) -> Request {
        self.ack(invite.cseq().map(|(n, _)| n).unwrap_or(1), via)
    }

    /// Request-URI, Via, Max-Forwards, Routes, From, To, Call-ID and CSeq of a request in
    /// this dialog.
    fn addressed(&self, method: Method, cseq: u32, via: String) -> Request {
        let uri = self
            .remote_target
            .parse::<SipUri>()
            .unwrap_or_else(|_| SipUri::new(self.peer.addr.into()));
        let mut req = Request::new(method.clone(), uri);
        let h = &mut req.headers;
        h.insert(Name::VIA, via);
        h.insert(Name::MAX_FORWARDS, "70");
        for route in &self.route_set {
            h.insert(Name::ROUTE, route.clone());
        }
        h.insert(
            Name::FROM,
            format!("{};tag={}", self.local_uri, self.local_tag),
        );
        h.insert(
            Name::TO,
            format!("{};tag={}", self.remote_uri, self.remote_tag),
        );
        h.insert(Name::CALL_ID, self.call_id.clone());
        h.insert(Name::CSEQ, format!("{cseq} {method}"));
        req
    }

    /// Our unacknowledged 2xx at `now`: sent again when due (over unreliable transports),
    /// at doubling intervals up to `t2`, and given up 64·T1 after it was first sent.
    pub fn poll_unacked(&mut self, now: Instant, t2: Duration) -> Retransmit {
        let Some(u) = self.unacked_2xx.as_mut() else {
            return Retransmit::Nothing;
        };
        if now >= u.give_up {
            let initial = u.initial;
            self.unacked_2xx = None;
            return Retransmit::GaveUp { initial };
        }
        if now < u.next {
            return Retransmit::Nothing;
        }
        u.interval = (u.interval * 2).min(t2);
        u.next = now + u.interval;
        if self.peer.transport.is_reliable() {
            return Retransmit::Nothing;
        }
        Retransmit::Send(Transmit {
            peer: self.peer,
            data: u.response.to_bytes(),
        })
    }
}

/// A 2xx we sent, kept until its ACK comes.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// The 2xx, as sent.
    pub response: Response,
    next: Instant,
    interval: Duration,
    give_up: Instant,
    /// The 2xx that answered the call itself (its loss ends the call), not a re-INVITE's.
    pub initial: bool,
}

impl Unacked {
    /// `response`, sent at `now`: first resent after `t1`.
    pub fn new(t1: Duration, now: Instant, response: Response, initial: bool) -> Unacked {
        Unacked {
            response,
            next: now + t1,
            interval: t1,
            give_up: now + t1 * 64,
            initial,
        }
    }

    /// When [`Dialog::poll_unacked`] next has something to do.
    pub fn deadline(&self) -> Instant {
        self.next.min(self.give_up)
    }
}

/// What [`Dialog::poll_unacked`] decided.
#[derive(Debug)]
pub enum Retransmit {
    /// Not due.
    Nothing,
    /// Send this again.
    Send(Transmit),
    /// No ACK came: the 2xx is given up.
    GaveUp {
        /// It answered the call itself (the call is lost), not a re-INVITE.
        initial: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn peer() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: "192.0.2.7:5060".parse().unwrap(),
            conn: None,
        }
    }

    fn request(text: &str) -> Request {
        match Message::parse(text.replace('\n', "\r\n").as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => panic!(),
        }
    }

    const INVITE: &str = "INVITE sip:800@pbx SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\nFrom: \"Alice\" <sip:alice@pbx>;tag=a1\nTo: <sip:800@pbx>\nCall-ID: c1\nCSeq: 5 INVITE\nContact: <sip:alice@192.0.2.7:5060>\nContent-Length: 0\n\n";

    #[test]
    fn uas_dialog_is_read_from_the_invite_and_requests_run_in_it() {
        let inv = request(INVITE);
        let mut d = Dialog::uas(&inv, "ours".into(), peer()).unwrap();
        assert_eq!(d.remote_tag, "a1");
        assert_eq!(d.route_set, ["<sip:p1;lr>", "<sip:p2;lr>"]);
        let local = Local {
            advertised: "198.51.100.1:5060".parse().unwrap(),
            user_agent: "Confero",
        };
        let bye = d.request(Method::BYE, &local, &mut Entropy::seeded(1));
        let text = String::from_utf8(Message::Request(bye).to_bytes().to_vec()).unwrap();
        assert!(
            text.starts_with("BYE sip:alice@192.0.2.7:5060 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("CSeq: 2 BYE"), "{text}");
        assert!(
            text.contains("To: \"Alice\"<sip:alice@pbx>;tag=a1"),
            "{text}"
        );
        assert!(text.contains("From: <sip:800@pbx>;tag=ours"), "{text}");
        assert_eq!(text.matches("Route: ").count(), 2, "{text}");

        let no_tag = request(&INVITE.replace(";tag=a1", ""));
        assert_eq!(
            Dialog::uas(&no_tag, "x".into(), peer()).unwrap_err(),
            DialogError::MissingFromTag
        );
        let no_contact = request(&INVITE.replace("Contact: <sip:alice@192.0.2.7:5060>\n", ""));
        assert_eq!(
            Dialog::uas(&no_contact, "x".into(), peer()).unwrap_err(),
            DialogError::MissingContact
        );
    }

    #[test]
    fn an_unacked_2xx_is_resent_doubling_then_given_up() {
        let inv = request(INVITE);
        let mut d = Dialog::uas(&inv, "ours".into(), peer()).unwrap();
        let t0 = Instant::now();
        let t1 = Duration::from_millis(500);
        let ok = crate::message::response_for(&inv, crate::StatusCode::OK, Some("ours"));
        d.unacked_2xx = Some(Unacked::new(t1, t0, ok, true));
        let mut sent = Vec::new();
        let mut t = t0;
        loop {
            t += Duration::from_millis(100);
            match d.poll_unacked(t, Duration::from_secs(4)) {
                Retransmit::Nothing => {}
                Retransmit::Send(_) => sent.push((t - t0).as_millis()),
                Retransmit::GaveUp { initial } => {
                    assert!(initial);
                    break;
                }
            }
        }
        assert_eq!(&sent[..4], [500, 1500, 3500, 7500]);
        assert_eq!(t - t0, t1 * 64);
    }
}
