//! Blind transfer by REFER on a virtual clock. The call transferred is always the same: a
//! caller from the phone network (the provider on port 7000) reached Bob (port 6000) on
//! his direct number; Bob sends REFER, then the transferee goes where it names: Alice
//! (port 5000), the Sales room (800) or a number out through the same trunk.

mod common;

use std::time::Duration;

use common::*;
use confero_pbx::config::TrunkTransport;
use confero_pbx::engine::{LegId, MediaCommand, MediaEvent, MixId};
use confero_sip::message::{Message, Request, Response};
use confero_sip::Name;

/// Bob's side of an answered call from the provider.
struct Call {
    h: Harness,
    /// The PBX's INVITE to Bob.
    invite: Request,
    /// The 200 OK the provider got.
    carrier_ok: Response,
    bob_cseq: u32,
    /// The two media legs of the call, as opened.
    legs: Vec<LegId>,
}

fn answered_call() -> Call {
    let mut h = with_trunk(TrunkTransport::Udp, false);
    register(&mut h, "bob", 6000);
    h.out();
    h.send(
        CARRIER,
        &carrier_invite(CARRIER, "+3225550101", "+3225550101", "in-t"),
    );
    let invite = requests_to(&h.out(), 6000, "INVITE").remove(0);
    h.send(6000, &answer_with_sdp(&invite, "desk", 6000, &sdp(30000)));
    let carrier_ok = h
        .out()
        .into_iter()
        .find(|(p, m)| *p == CARRIER && status(m) == Some(200))
        .map(|(_, m)| response(&m).clone())
        .expect("the provider's call is answered");
    let legs = media(&mut h)
        .iter()
        .filter_map(|m| match m {
            MediaCommand::Open { leg, .. } => Some(*leg),
            _ => None,
        })
        .collect();
    assert_eq!(h.engine.calls().len(), 1);
    Call {
        h,
        invite,
        carrier_ok,
        bob_cseq: 1,
        legs,
    }
}

impl Call {
    /// An in-dialog request from Bob (the PBX's INVITE seen from his side).
    fn bob_sends(&mut self, method: &str, extra: &str) -> Vec<(u16, Message)> {
        let raw = |n: Name| self.invite.headers.get_raw(&n).next().unwrap().to_string();
        self.bob_cseq += 1;
        let text = format!(
            "{method} sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKbob{n}\nFrom: {to};tag=desk\nTo: {from}\nCall-ID: {cid}\nCSeq: {n} {method}\nContact: <sip:bob@127.0.0.1:6000>\n{extra}{empty}",
            n = self.bob_cseq,
            to = raw(Name::TO),
            from = raw(Name::FROM),
            cid = raw(Name::CALL_ID),
            // `extra` may end with a body of its own.
            empty = if extra.contains("Content-Length") {
                ""
            } else {
                "Content-Length: 0\n\n"
            },
        );
        self.h.send(6000, &text);
        self.h.out()
    }

    fn refer(&mut self, target: &str) -> Vec<(u16, Message)> {
        self.bob_sends(
            "REFER",
            &format!("Refer-To: <{target}>\nReferred-By: <sip:bob@127.0.0.1>\n"),
        )
    }

    /// The provider hangs up the transferee.
    fn carrier_hangs_up(&mut self) -> Vec<(u16, Message)> {
        let tag = self.carrier_ok.to_tag().unwrap();
        self.h.send(CARRIER, &format!("BYE sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{CARRIER};branch=z9hG4bKcbye\nFrom: <sip:anonymous@carrier.example>;tag=carrier\nTo: <sip:+3225550101@127.0.0.1>;tag={tag}\nCall-ID: in-t\nCSeq: 2 BYE\nContent-Length: 0\n\n"));
        self.h.out()
    }
}

/// What Bob hears after a REFER: 202, one NOTIFY with `frag`, then BYE.
fn assert_transferred(out: &[(u16, Message)], frag: &str) {
    assert_eq!(final_status(out, 6000), Some(202), "{out:?}");
    let notify = requests_to(out, 6000, "NOTIFY");
    assert_eq!(notify.len(), 1);
    assert_eq!(header_of(&notify[0], "Event").as_deref(), Some("refer"));
    assert!(header_of(&notify[0], "Subscription-State")
        .unwrap()
        .starts_with("terminated"));
    assert!(header_of(&notify[0], "Content-Type")
        .unwrap()
        .starts_with("message/sipfrag"));
    assert_eq!(
        String::from_utf8_lossy(&notify[0].body),
        format!("{frag}\r\n")
    );
    assert_eq!(requests_to(out, 6000, "BYE").len(), 1, "Bob is done");
    assert!(
        requests_to(out, CARRIER, "BYE").is_empty(),
        "the transferee stays"
    );
}

fn mixes(cmds: &[MediaCommand]) -> Vec<(LegId, MixId)> {
    cmds.iter()
        .filter_map(|c| match c {
            MediaCommand::Mix { leg, mix } => Some((*leg, *mix)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_transfer_to_an_extension_rings_it_with_music_for_the_transferee_then_joins_them() {
    let mut c = answered_call();
    register(&mut c.h, "alice", 5000);
    c.h.out();
    let out = c.refer("sip:101@127.0.0.1");
    assert_transferred(&out, "SIP/2.0 200 OK");
    let invite = requests_to(&out, 5000, "INVITE").remove(0);
    assert!(
        header_of(&invite, "From")
            .unwrap()
            .contains("sip:+3247555123@"),
        "Alice sees who is transferred to her"
    );
    let cmds = media(&mut c.h);
    let music = cmds.iter().find_map(|m| match m {
        MediaCommand::Play {
            leg,
            prompts,
            then_music: true,
            ..
        } if prompts.is_empty() => Some(*leg),
        _ => None,
    });
    let transferee = music.expect("the transferee hears hold music");
    assert_eq!(
        h_calls(&c.h),
        vec![("+3247555123".into(), "101".into(), "ringing")]
    );

    // Bob's phone hangs up too (as Odoo does): nothing more happens to anyone.
    let out = c.bob_sends("BYE", "");
    assert_eq!(final_status(&out, 6000), Some(481), "already hung up on");
    assert!(requests_to(&out, CARRIER, "BYE").is_empty());

    let body = sdp(31000);
    c.h.send(
        5000,
        &reply(
            &invite,
            200,
            "alice-desk",
            "Contact: <sip:alice@127.0.0.1:5000>\n",
            &body,
        ),
    );
    let out = c.h.out();
    assert_eq!(requests_to(&out, 5000, "ACK").len(), 1);
    let mixed = mixes(&media(&mut c.h));
    assert_eq!(mixed.len(), 2, "{mixed:?}");
    assert!(mixed.iter().any(|(leg, _)| *leg == transferee));
    assert!(
        matches!(mixed[0].1, MixId::Call(_)) && mixed[0].1 == mixed[1].1,
        "one private mix"
    );
    assert_eq!(
        h_calls(&c.h),
        vec![("+3247555123".into(), "101".into(), "answered")]
    );

    // The transferee hangs up: Alice gets BYE, every port is back.
    let out = c.carrier_hangs_up();
    assert_eq!(final_status(&out, CARRIER), Some(200));
    assert_eq!(requests_to(&out, 5000, "BYE").len(), 1);
    assert_eq!(c.h.engine.rtp_ports_in_use(), 0);
}

fn h_calls(h: &Harness) -> Vec<(String, String, &'static str)> {
    h.engine
        .calls()
        .into_iter()
        .map(|c| (c.caller, c.callee, c.state))
        .collect()
}

#[test]
fn a_transfer_to_a_room_hands_the_transferee_to_the_receptionist() {
    let mut c = answered_call();
    let out = c.refer("sip:800@127.0.0.1");
    assert_transferred(&out, "SIP/2.0 200 OK");
    let people = c.h.engine.conference_participants();
    assert_eq!(people.len(), 1);
    assert_eq!(people[0].caller, "+3247555123");
    assert_eq!(people[0].state, "entering_code");
    assert!(c.h.engine.calls().is_empty(), "no two-party call any more");
}

#[test]
fn a_transfer_to_a_number_goes_out_through_the_trunk_with_the_users_number() {
    let mut c = answered_call();
    let out = c.refer("sip:0475123456@127.0.0.1");
    assert_transferred(&out, "SIP/2.0 200 OK");
    let invites = requests_to(&out, CARRIER, "INVITE");
    assert_eq!(invites.len(), 1);
    assert!(
        header_of(&invites[0], "From")
            .unwrap()
            .contains("sip:+3225550101@"),
        "Bob's direct number, which the provider knows"
    );
    // The provider answers the new call: the two are joined.
    c.h.send(
        CARRIER,
        &reply(
            &invites[0],
            200,
            "out",
            "Contact: <sip:gw@127.0.0.1:7000>\n",
            &sdp(42000),
        ),
    );
    c.h.out();
    assert_eq!(mixes(&media(&mut c.h)).len(), 2);
}

#[test]
fn refers_that_cannot_succeed_are_refused_and_the_call_goes_on() {
    let mut c = answered_call();
    for (target, want) in [
        ("sip:101@127.0.0.1", 480),    // Alice has no registered device
        ("sip:nobody@127.0.0.1", 404), // no such user, not a number
        (
            "sip:101@127.0.0.1?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2",
            501,
        ),
    ] {
        let out = c.refer(target);
        assert_eq!(final_status(&out, 6000), Some(want), "{target}");
        assert!(requests_to(&out, 6000, "BYE").is_empty());
        assert!(requests_to(&out, CARRIER, "BYE").is_empty());
    }
    let out = c.bob_sends("REFER", "");
    assert_eq!(final_status(&out, 6000), Some(400), "no Refer-To");
    assert!(media(&mut c.h).is_empty(), "nobody was moved");
    assert_eq!(c.h.engine.calls()[0].state, "answered");
}

#[test]
fn the_transferee_hanging_up_while_the_target_rings_cancels_it() {
    let mut c = answered_call();
    register(&mut c.h, "alice", 5000);
    c.h.out();
    let out = c.refer("sip:101@127.0.0.1");
    let invite = requests_to(&out, 5000, "INVITE").remove(0);
    c.h.send(5000, &reply(&invite, 180, "alice-desk", "", ""));
    c.h.out();
    let out = c.carrier_hangs_up();
    assert_eq!(requests_to(&out, 5000, "CANCEL").len(), 1);
    c.h.send(5000, &reply(&invite, 487, "alice-desk", "", ""));
    c.h.out();
    assert!(c.h.engine.calls().is_empty());
    assert_eq!(c.h.engine.rtp_ports_in_use(), 0);
}

#[test]
fn a_target_that_never_answers_leaves_the_transferee_hung_up() {
    let mut c = answered_call();
    register(&mut c.h, "alice", 5000);
    c.h.out();
    let out = c.refer("sip:101@127.0.0.1");
    let invite = requests_to(&out, 5000, "INVITE").remove(0);
    c.h.send(5000, &reply(&invite, 180, "alice-desk", "", ""));
    c.h.out();
    c.h.advance(Duration::from_secs(30));
    let out = c.h.out();
    assert_eq!(requests_to(&out, CARRIER, "BYE").len(), 1);
    assert_eq!(requests_to(&out, 5000, "CANCEL").len(), 1);
}

#[test]
fn a_room_participant_cannot_transfer_the_room() {
    let mut h = Harness::new();
    let out = dial(&mut h, "800");
    let ok = out
        .iter()
        .find(|(p, m)| *p == 5000 && status(m) == Some(200))
        .map(|(_, m)| response(m).clone())
        .unwrap();
    let tag = ok.to_tag().unwrap();
    h.send(5000, &format!("REFER sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKref\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:800@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: 5 REFER\nRefer-To: <sip:102@127.0.0.1>\nContent-Length: 0\n\n"));
    assert_eq!(final_status(&h.out(), 5000), Some(403));
    assert_eq!(h.engine.conference_participants().len(), 1);
}

#[test]
fn digits_cross_an_anchored_call_to_reach_the_menus_of_the_phone_network() {
    let mut c = answered_call();
    let [a, b] = c.legs[..] else {
        panic!("two legs: {:?}", c.legs)
    };
    let sent = |h: &mut Harness| -> Vec<(LegId, char)> {
        media(h)
            .into_iter()
            .filter_map(|m| match m {
                MediaCommand::SendDigit { leg, digit } => Some((leg, digit)),
                _ => None,
            })
            .collect()
    };
    // RFC 4733 (or in-band) digits reported by the media bridge, either way.
    c.h.engine
        .handle_media_event(c.h.now, MediaEvent::Digit { leg: a, digit: '4' });
    c.h.engine
        .handle_media_event(c.h.now, MediaEvent::Digit { leg: b, digit: '#' });
    assert_eq!(sent(&mut c.h), vec![(b, '4'), (a, '#')]);
    // SIP INFO from Bob's phone.
    let body = "Signal=7\r\nDuration=160\r\n";
    let out = c.bob_sends(
        "INFO",
        &format!(
            "Content-Type: application/dtmf-relay\nContent-Length: {}\n\n{body}",
            body.len()
        ),
    );
    assert_eq!(final_status(&out, 6000), Some(200));
    assert_eq!(sent(&mut c.h).len(), 1, "relayed to the provider's leg");
    assert!(
        c.h.engine.conference_participants().is_empty(),
        "no receptionist involved"
    );
}
