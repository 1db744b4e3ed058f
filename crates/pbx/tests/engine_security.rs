//! Attacks on the signalling engine, on a virtual clock: replayed credentials and password
//! guessing from one address and from many.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use confero_sip::digest;
use confero_sip::message::Message;
use confero_sip::transport::{Peer, Transport};
use confero_sip::Name;

fn from(ip: [u8; 4], port: u16) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: SocketAddr::from((ip, port)),
        conn: None,
    }
}

/// The one response to `text` sent from `peer`.
fn answer(h: &mut Harness, peer: Peer, text: &str) -> Message {
    h.send_via(peer, text);
    let out = h.out();
    assert_eq!(out.len(), 1, "one response");
    out.into_iter().next().unwrap().1
}

/// A REGISTER of `user` from `peer` (Contact at that address) answering a fresh challenge
/// with `password`; returns the final response and the request that got it.
fn register_with(
    h: &mut Harness,
    peer: Peer,
    user: &str,
    password: &str,
    n: u32,
) -> (Message, String) {
    register_edited(h, peer, user, password, n, |t| t)
}

/// As [`register_with`], the authorized REGISTER changed by `edit` first.
fn register_edited(
    h: &mut Harness,
    peer: Peer,
    user: &str,
    password: &str,
    n: u32,
    edit: impl Fn(String) -> String,
) -> (Message, String) {
    let port = peer.addr.port();
    let fix = |text: String| text.replace("127.0.0.1", &peer.addr.ip().to_string());
    let first = fix(register_text(
        user,
        port,
        2 * n,
        &format!("z9hG4bKa{n}"),
        None,
    ));
    let challenge = answer(h, peer, &first);
    assert_eq!(status(&challenge), Some(401));
    let md5 = challenge_of(&challenge, Name::WWW_AUTHENTICATE, "MD5");
    let uri = format!("sip:{}", peer.addr.ip());
    let auth = digest::answer_challenge(&md5, "REGISTER", &uri, user, password, 1, "c").unwrap();
    let text = fix(register_text(
        user,
        port,
        2 * n + 1,
        &format!("z9hG4bKb{n}"),
        None,
    ))
    .replace(
        "Content-Length",
        &format!("Authorization: {auth}\nContent-Length"),
    );
    let text = edit(text);
    (answer(h, peer, &text), text)
}

fn bob_contacts(h: &Harness) -> Vec<String> {
    h.engine
        .registrar()
        .contacts_of("bob")
        .map(|b| b.contact.clone())
        .collect()
}

#[test]
fn a_captured_register_fails_when_replayed_from_anywhere() {
    let mut h = Harness::new();
    let phone = from([127, 0, 0, 1], 6000);
    let (ok, captured) = register_with(&mut h, phone, "bob", "bob-pw", 1);
    assert_eq!(status(&ok), Some(200));
    assert_eq!(bob_contacts(&h), ["sip:bob@127.0.0.1:6000"]);

    // 61 s later (the transaction that absorbed retransmissions is gone), the same bytes
    // from the phone's address: the count was spent, so a fresh challenge, marked stale.
    h.advance(Duration::from_secs(61));
    let replay = answer(&mut h, phone, &captured.replace("z9hG4bKb1", "z9hG4bKr1"));
    assert_eq!(status(&replay), Some(401));
    assert!(challenge_of(&replay, Name::WWW_AUTHENTICATE, "MD5").contains("stale=true"));

    // From the attacker's own address, with the attacker's contact: not ours either.
    let attacker = from([127, 0, 0, 66], 5060);
    let stolen = captured.replace("z9hG4bKb1", "z9hG4bKr2").replace(
        "Contact: <sip:bob@127.0.0.1:6000>",
        "Contact: <sip:bob@127.0.0.66:5060>",
    );
    assert_eq!(status(&answer(&mut h, attacker, &stolen)), Some(401));
    // And at once, before the first copy was even used up: bound to the phone's address.
    let (ok, _) = register_with(&mut h, phone, "bob", "bob-pw", 2);
    assert_eq!(status(&ok), Some(200));
    assert_eq!(bob_contacts(&h), ["sip:bob@127.0.0.1:6000"]);

    // Bob's phone removes all its bindings (captured on the way), then registers again;
    // the un-REGISTER replayed later removes nothing.
    let (ok, wildcard) = register_edited(&mut h, phone, "bob", "bob-pw", 3, |t| {
        t.replace("Contact: <sip:bob@127.0.0.1:6000>", "Contact: *")
            .replace("Expires: 600", "Expires: 0")
    });
    assert_eq!(status(&ok), Some(200));
    assert!(bob_contacts(&h).is_empty());
    assert_eq!(
        status(&register_with(&mut h, phone, "bob", "bob-pw", 4).0),
        Some(200)
    );
    h.advance(Duration::from_secs(61));
    let replay = wildcard
        .replace("z9hG4bKb3", "z9hG4bKr3")
        .replace("CSeq: 7", "CSeq: 10");
    assert_eq!(status(&answer(&mut h, phone, &replay)), Some(401));
    assert_eq!(bob_contacts(&h), ["sip:bob@127.0.0.1:6000"]);
}

#[test]
fn the_same_nonce_may_count_up_but_not_repeat() {
    let mut h = Harness::new();
    let phone = from([127, 0, 0, 1], 6000);
    let first = register_text("bob", 6000, 1, "z9hG4bKc0", None);
    let challenge = answer(&mut h, phone, &first);
    let md5 = challenge_of(&challenge, Name::WWW_AUTHENTICATE, "MD5");
    for (nc, cseq, expected) in [(1, 2, 200), (2, 3, 200), (2, 4, 401), (5, 5, 200)] {
        let auth =
            digest::answer_challenge(&md5, "REGISTER", "sip:127.0.0.1", "bob", "bob-pw", nc, "c")
                .unwrap();
        let text = register_text("bob", 6000, cseq, &format!("z9hG4bKc{cseq}"), Some(&auth));
        assert_eq!(
            status(&answer(&mut h, phone, &text)),
            Some(expected),
            "nc {nc}"
        );
    }
}

#[test]
fn passwords_cannot_be_guessed_from_one_address_or_many() {
    let mut h = Harness::new();
    // Bob's phone and Alice's share a NAT; both registered before the attack.
    let bob = from([127, 0, 0, 1], 6000);
    let alice = from([127, 0, 0, 1], 6001);
    assert_eq!(
        status(&register_with(&mut h, bob, "bob", "bob-pw", 1).0),
        Some(200)
    );
    let alice_reg = |h: &mut Harness, n| {
        let port = 6001;
        let first = register_text("alice", port, 2 * n, &format!("z9hG4bKal{n}"), None);
        let md5 = challenge_of(&answer(h, alice, &first), Name::WWW_AUTHENTICATE, "MD5");
        let auth = digest::answer_challenge(
            &md5,
            "REGISTER",
            "sip:127.0.0.1",
            "alice",
            "alice-pw",
            1,
            "c",
        )
        .unwrap();
        let text = register_text(
            "alice",
            port,
            2 * n + 1,
            &format!("z9hG4bKam{n}"),
            Some(&auth),
        );
        status(&answer(h, alice, &text))
    };
    assert_eq!(alice_reg(&mut h, 1), Some(200));

    // One address guessing Bob's password every 2 s for an hour.
    let guesser = from([127, 0, 0, 9], 5060);
    let mut checked = 0;
    for n in 0..1800 {
        let (resp, _) = register_with(&mut h, guesser, "bob", &format!("guess{n}"), 100 + n);
        match status(&resp) {
            Some(401) => checked += 1,
            Some(403) => {}
            other => panic!("{other:?}"),
        }
        h.advance(Duration::from_secs(2));
    }
    assert!(
        checked <= 20,
        "{checked} guesses checked in an hour from one address"
    );

    // Twenty addresses guessing Bob's password once a minute each for a day.
    for minute in 0..24 * 60u32 {
        for a in 0..20u8 {
            let (resp, _) = register_with(
                &mut h,
                from([127, 0, 1, a], 5060),
                "bob",
                "wrong",
                5000 + minute,
            );
            if status(&resp) == Some(401) {
                checked += 1;
            }
        }
        if minute % 60 == 0 {
            // Meanwhile Bob's phone and Alice's keep registering from the shared address.
            assert_eq!(
                status(&register_with(&mut h, bob, "bob", "bob-pw", 900 + minute).0),
                Some(200),
                "minute {minute}"
            );
            assert_eq!(
                alice_reg(&mut h, 900 + minute),
                Some(200),
                "minute {minute}"
            );
        }
        h.advance(Duration::from_secs(60));
    }
    assert!(
        checked <= 20 + 100,
        "{checked} guesses checked over a day and an hour"
    );
}

/// Alice's `n`-th call into room 800 from port 5000, authenticated; the final answer.
fn alice_calls_room(h: &mut Harness, n: u32) -> Message {
    let fix = |t: String| {
        t.replace("call-1", &format!("call-{n}"))
            .replace("tag=caller", &format!("tag=caller{n}"))
            .replace("z9hG4bKi", &format!("z9hG4bK{n}i"))
    };
    h.send(5000, &fix(invite_text(5000, "800", 1, "z9hG4bKi1", None)));
    let out = h.out();
    assert_eq!(
        out.len(),
        1,
        "one answer to a stranger: no 100 before the 407"
    );
    let md5 = challenge_of(&out[0].1, Name::PROXY_AUTHENTICATE, "MD5");
    let auth = alice_answers(&md5, "800");
    h.send(
        5000,
        &fix(invite_text(5000, "800", 2, "z9hG4bKi2", Some(&auth))),
    );
    h.out()
        .into_iter()
        .map(|(_, m)| m)
        .find(|m| status(m).is_some_and(|s| s >= 200))
        .expect("a final answer")
}

#[test]
fn one_user_cannot_hold_more_calls_than_the_limit() {
    let mut h = Harness::with(|s| s.max_calls_per_user = 3);
    let mut answers = Vec::new();
    for n in 0..3 {
        let ok = alice_calls_room(&mut h, n);
        assert_eq!(status(&ok), Some(200));
        answers.push(ok);
    }
    let refused = alice_calls_room(&mut h, 3);
    assert_eq!(status(&refused), Some(403));
    assert_eq!(response(&refused).reason.as_deref(), Some("Too Many Calls"));
    assert!(header(&refused, Name::WARNING)
        .unwrap()
        .contains("at most 3 calls"));
    assert_eq!(h.engine.rtp_ports_in_use(), 3);

    // Alice hangs up one: she may call again.
    let tag = response(&answers[0])
        .headers
        .get_raw(&Name::TO)
        .next()
        .and_then(|v| v.as_str().split(";tag=").nth(1).map(str::to_owned))
        .unwrap();
    h.send(
        5000,
        &format!(
            "BYE sip:800@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKbye0\n\
             From: <sip:alice@127.0.0.1>;tag=caller0\nTo: <sip:800@127.0.0.1>;tag={tag}\n\
             Call-ID: call-0\nCSeq: 3 BYE\nContent-Length: 0\n\n"
        ),
    );
    assert_eq!(status(&h.out()[0].1), Some(200));
    assert_eq!(status(&alice_calls_room(&mut h, 4)), Some(200));
}
