//! Whole-call tests of the signalling engine on a virtual clock: no sockets, no threads.
//! Phones are scripted here as text; the engine's output is parsed back with the same
//! parser the server uses.

mod common;

use std::time::Duration;

use common::*;
use confero_pbx::engine::{EngineEvent, MediaCommand, MediaEvent, MixId};
use confero_pbx::room::Prompt;
use confero_sip::digest;
use confero_sip::Name;

#[test]
fn register_echoes_contacts_with_expires_and_reports_the_binding() {
    let mut h = Harness::new();
    let ok = register(&mut h, "bob", 6000);
    assert_eq!(status(&ok), Some(200));
    let contact = header(&ok, Name::CONTACT).unwrap();
    assert!(
        contact.contains("sip:bob@127.0.0.1:6000") && contact.contains("expires=600"),
        "{contact}"
    );
    let events = h.events();
    assert!(
        matches!(events.as_slice(), [EngineEvent::Binding(_)]),
        "{events:?}"
    );
    // A second device of the same user: both are echoed.
    let ok = register(&mut h, "bob", 6001);
    let contacts: Vec<String> = response(&ok)
        .headers
        .get_raw(&Name::CONTACT)
        .map(|v| v.to_string())
        .collect();
    assert_eq!(contacts.len(), 2, "{contacts:?}");
    // Expiry removes them when the interval lapses.
    h.advance(Duration::from_secs(601));
    assert!(h.engine.registrar().is_empty());
}

#[test]
fn wrong_password_gets_a_fresh_challenge_not_a_binding() {
    let mut h = Harness::new();
    let answer = register_credentials(&mut h, "bob", 6000, "wrong", "z9hG4bKw1");
    h.send(
        6000,
        &register_text("bob", 6000, 2, "z9hG4bKw2", Some(&answer)),
    );
    let out = h.out();
    assert_eq!(status(&out[0].1), Some(401));
    assert!(h.engine.registrar().is_empty());
}

#[test]
fn fork_first_answer_wins_other_device_is_cancelled_then_bye_crosses() {
    let mut h = Harness::new();
    register(&mut h, "bob", 6000);
    register(&mut h, "bob", 6001);
    let out = dial(&mut h, "102");
    let desk = requests_to(&out, 6000, "INVITE");
    let soft = requests_to(&out, 6001, "INVITE");
    assert_eq!((desk.len(), soft.len()), (1, 1), "both devices ring");
    // Both ring; the soft phone answers.
    h.send(6000, &answer_text(&desk[0], 180, "desk", 6000));
    h.send(6001, &answer_text(&soft[0], 180, "soft", 6001));
    let out = h.out();
    assert!(
        out.iter()
            .any(|(p, m)| *p == 5000 && status(m) == Some(180)),
        "caller hears ringing"
    );
    h.send(6001, &answer_text(&soft[0], 200, "soft", 6001));
    let out = h.out();
    assert_eq!(requests_to(&out, 6001, "ACK").len(), 1, "callee ACKed");
    assert_eq!(
        requests_to(&out, 6000, "CANCEL").len(),
        1,
        "the other device is cancelled"
    );
    let ok = out
        .iter()
        .find(|(p, m)| *p == 5000 && status(m) == Some(200))
        .expect("caller gets 200");
    let caller_tag = response(&ok.1).to_tag().unwrap();
    assert_eq!(h.engine.calls()[0].state, "answered");
    // Caller ACKs; no more 200 retransmissions afterwards.
    h.send(5000, &format!("ACK sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKack\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:102@127.0.0.1>;tag={caller_tag}\nCall-ID: call-1\nCSeq: 2 ACK\nContent-Length: 0\n\n"));
    h.advance(Duration::from_secs(2));
    let out = h.out();
    assert!(
        !out.iter()
            .any(|(p, m)| *p == 5000 && status(m) == Some(200)),
        "no retransmitted 200 after ACK: {out:?}",
        out = out.iter().map(|(p, m)| (p, status(m))).collect::<Vec<_>>()
    );
    // Caller hangs up: 200 to the caller, BYE to the soft phone.
    h.send(5000, &format!("BYE sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKbye\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:102@127.0.0.1>;tag={caller_tag}\nCall-ID: call-1\nCSeq: 3 BYE\nContent-Length: 0\n\n"));
    let out = h.out();
    assert!(out
        .iter()
        .any(|(p, m)| *p == 5000 && status(m) == Some(200)));
    let bye = requests_to(&out, 6001, "BYE");
    assert_eq!(bye.len(), 1);
    assert!(h.engine.calls().is_empty(), "the call is over");
    // Everything settles: no call or transaction is left behind.
    h.send(
        6001,
        &answer_text(&bye[0], 200, "soft", 6001).replace(";tag=soft;tag=soft", ";tag=soft"),
    );
    h.send(
        6000,
        &answer_text(
            &requests_to(&out, 6000, "CANCEL")
                .first()
                .cloned()
                .unwrap_or_else(|| desk[0].clone()),
            487,
            "desk",
            6000,
        ),
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(h.engine.call_count(), 0, "calls leaked");
    assert_eq!(h.engine.transaction_count(), 0, "transactions leaked");
}

#[test]
fn unanswered_call_times_out_with_480_and_cancels() {
    let mut h = Harness::new();
    register(&mut h, "bob", 6000);
    let out = dial(&mut h, "102");
    let invite = requests_to(&out, 6000, "INVITE").remove(0);
    h.send(6000, &answer_text(&invite, 180, "desk", 6000));
    h.out();
    h.advance(Duration::from_secs(31));
    let out = h.out();
    assert!(
        out.iter()
            .any(|(p, m)| *p == 5000 && status(m) == Some(480)),
        "caller gets 480"
    );
    // One CANCEL transaction (possibly retransmitted over UDP meanwhile).
    let cancels = requests_to(&out, 6000, "CANCEL");
    assert!(!cancels.is_empty());
    assert!(
        cancels
            .iter()
            .all(|c| c.top_via_branch() == invite.top_via_branch()),
        "CANCEL reuses the INVITE's branch"
    );
}

#[test]
fn unknown_extension_is_404_and_nobody_registered_is_480() {
    let mut h = Harness::new();
    let out = dial(&mut h, "999");
    assert!(out.iter().any(|(_, m)| status(m) == Some(404)));
    let mut h = Harness::new();
    let out = dial(&mut h, "102");
    assert!(out.iter().any(|(_, m)| status(m) == Some(480)));
}

#[test]
fn answer_without_ack_is_retransmitted_then_the_call_is_torn_down() {
    let mut h = Harness::new();
    register(&mut h, "bob", 6000);
    let out = dial(&mut h, "102");
    let invite = requests_to(&out, 6000, "INVITE").remove(0);
    h.send(6000, &answer_text(&invite, 200, "desk", 6000));
    h.out();
    let mut retransmits = Vec::new();
    let start = h.now;
    for _ in 0..400 {
        h.advance(Duration::from_millis(100));
        for (p, m) in h.out() {
            if p == 5000 && status(&m) == Some(200) {
                retransmits.push(h.now - start);
            }
        }
    }
    // T1 doubling capped at T2: 0.5, 1.5, 3.5, 7.5, 11.5, … seconds after the answer.
    assert!(retransmits.len() >= 7, "{retransmits:?}");
    let gaps: Vec<u64> = retransmits
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    assert_eq!(&gaps[..3], &[1000, 2000, 4000], "{retransmits:?}");
    assert!(gaps[3..].iter().all(|g| *g == 4000), "{gaps:?}");
    // After 64*T1 without ACK the call ends with a BYE to the callee.
    assert!(h.engine.calls().is_empty());
}

/// Sets up alice → bob answered on bob's device at 6000; returns bob's INVITE (as received
/// by the device) and the To-tag the PBX gave the caller.
fn answered_call(h: &mut Harness) -> (confero_sip::message::Request, String) {
    register(h, "bob", 6000);
    let out = dial(h, "102");
    let invite = requests_to(&out, 6000, "INVITE").remove(0);
    h.send(6000, &answer_text(&invite, 200, "desk", 6000));
    let out = h.out();
    let ok = out
        .iter()
        .find(|(p, m)| *p == 5000 && status(m) == Some(200))
        .expect("caller gets 200");
    let tag = response(&ok.1).to_tag().unwrap();
    h.send(5000, &format!("ACK sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKack\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:102@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: 2 ACK\nContent-Length: 0\n\n"));
    h.out();
    (invite, tag)
}

#[test]
fn re_invite_from_the_callee_is_relayed_to_the_caller_with_its_sdp() {
    let mut h = Harness::new();
    let (invite, _) = answered_call(&mut h);
    // Bob puts the call on hold: a re-INVITE in his dialog with the PBX.
    let from = invite
        .headers
        .get_raw(&Name::FROM)
        .next()
        .unwrap()
        .to_string();
    let to = invite
        .headers
        .get_raw(&Name::TO)
        .next()
        .unwrap()
        .to_string();
    let call_id = invite.call_id().unwrap();
    let sdp = "v=0\r\no=b 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4002 RTP/AVP 0\r\na=sendonly\r\n";
    let reinvite = format!(
        "INVITE sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKhold\nFrom: {to};tag=desk\nTo: {from}\nCall-ID: {call_id}\nCSeq: 7 INVITE\nContact: <sip:bob@127.0.0.1:6000>\nContent-Type: application/sdp\nContent-Length: {}\n\n{sdp}",
        sdp.len()
    );
    h.send(6000, &reinvite.replace("\r\n", "\n"));
    let out = h.out();
    let relayed = requests_to(&out, 5000, "INVITE");
    assert_eq!(relayed.len(), 1, "re-INVITE reaches the caller");
    assert!(String::from_utf8_lossy(&relayed[0].body).contains("a=sendonly"));
    assert_eq!(
        relayed[0].call_id().as_deref(),
        Some("call-1"),
        "in the caller's own dialog"
    );
    // A second re-INVITE while one is pending: 491.
    h.send(
        6000,
        &reinvite
            .replace("z9hG4bKhold", "z9hG4bKhold2")
            .replace("CSeq: 7", "CSeq: 8")
            .replace("\r\n", "\n"),
    );
    assert!(h
        .out()
        .iter()
        .any(|(p, m)| *p == 6000 && status(m) == Some(491)));
    // Alice answers; the PBX ACKs her and relays the 200 to Bob.
    let mut answer = answer_text(&relayed[0], 200, "ignored", 5000);
    answer = answer.replace(";tag=ignored", "");
    h.send(5000, &answer);
    let out = h.out();
    assert_eq!(
        requests_to(&out, 5000, "ACK").len(),
        1,
        "caller's 2xx is ACKed"
    );
    assert!(
        out.iter()
            .any(|(p, m)| *p == 6000 && status(m) == Some(200)),
        "callee gets the 200"
    );
}

#[test]
fn unregister_and_wildcard_remove_bindings() {
    let mut h = Harness::new();
    register(&mut h, "bob", 6000);
    register(&mut h, "bob", 6001);
    assert_eq!(h.engine.registrar().len(), 2);
    h.events();
    // Challenge again and send Contact: * with Expires: 0.
    let auth = register_credentials(&mut h, "bob", 6000, "bob-pw", "z9hG4bKstar1");
    let star = register_text("bob", 6000, 4, "z9hG4bKstar2", Some(&auth))
        .replace("Contact: <sip:bob@127.0.0.1:6000>", "Contact: *")
        .replace("Expires: 600", "Expires: 0");
    h.send(6000, &star);
    let out = h.out();
    assert_eq!(status(&out[0].1), Some(200));
    assert!(
        header(&out[0].1, Name::CONTACT).is_none(),
        "no bindings left to list"
    );
    assert!(h.engine.registrar().is_empty());
    assert_eq!(
        h.events().len(),
        2,
        "both removals reported for persistence"
    );
}

#[test]
fn expired_nonce_is_answered_with_stale_true() {
    let mut h = Harness::new();
    let auth = register_credentials(&mut h, "bob", 6000, "bob-pw", "z9hG4bKs1");
    h.advance(Duration::from_secs(400)); // nonce lifetime is 300 s
    h.send(
        6000,
        &register_text("bob", 6000, 2, "z9hG4bKs2", Some(&auth)),
    );
    let out = h.out();
    assert_eq!(status(&out[0].1), Some(401));
    let again: Vec<String> = response(&out[0].1)
        .headers
        .get_raw(&Name::WWW_AUTHENTICATE)
        .map(|v| v.to_string())
        .collect();
    assert!(again.iter().all(|c| c.contains("stale=true")), "{again:?}");
    assert!(h.engine.registrar().is_empty());
}

#[test]
fn dialling_a_room_answers_with_sdp_asks_for_the_code_and_joins_after_info_digits() {
    let mut h = Harness::new();
    let out = dial(&mut h, "800");
    let ok = out
        .iter()
        .find(|(p, m)| *p == 5000 && status(m) == Some(200))
        .expect("the room answers before any prompt");
    let body = String::from_utf8_lossy(&response(&ok.1).body).to_string();
    assert!(
        body.contains("m=audio ") && body.contains("PCMU/8000"),
        "{body}"
    );
    let tag = response(&ok.1).to_tag().unwrap();
    let cmds = media(&mut h);
    // The leg is placed with its room (on a server with several media threads, the
    // room's thread), then opened.
    let placed = match &cmds[0] {
        MediaCommand::Place { leg, near } => {
            assert_eq!(*near, confero_media::bridge::MixId::Room(7));
            *leg
        }
        other => panic!("expected Place first, got {other:?}"),
    };
    let port = match &cmds[1] {
        MediaCommand::Open {
            port, media, leg, ..
        } if *leg == placed => {
            assert_eq!(media.codec, confero_media::codec::CodecKind::Pcmu);
            assert_eq!(media.remote.port(), 4000);
            *port
        }
        other => panic!("expected the placed leg opened, got {other:?}"),
    };
    assert!(body.contains(&format!("m=audio {port} ")));
    assert!(
        cmds.iter().any(|c| matches!(c, MediaCommand::Play { prompts, .. } if prompts == &vec![Prompt::EnterAccessCode])),
        "the receptionist asks for the code: {cmds:?}"
    );
    // ACK, then the code by SIP INFO.
    h.send(5000, &format!("ACK sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKack\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:800@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: 2 ACK\nContent-Length: 0\n\n"));
    for (i, d) in "1234#".chars().enumerate() {
        h.send(5000, &info_text(&tag, 3 + i as u32, d));
    }
    let out = h.out();
    assert_eq!(
        out.iter().filter(|(_, m)| status(m) == Some(200)).count(),
        5,
        "each INFO answered"
    );
    let cmds = media(&mut h);
    assert!(cmds.iter().any(|c| matches!(c, MediaCommand::Play { prompts, .. } if prompts == &vec![Prompt::FirstParticipant])), "{cmds:?}");
    let leg = h.engine.conference_participants()[0].id;
    let seq = cmds
        .iter()
        .find_map(|c| match c {
            MediaCommand::Play { seq, .. } => Some(*seq),
            _ => None,
        })
        .unwrap();
    h.engine
        .handle_media_event(h.now, MediaEvent::PlaybackDone { leg, seq });
    assert_eq!(
        media(&mut h),
        vec![MediaCommand::Mix {
            leg,
            mix: MixId::Room(7)
        }]
    );
    assert_eq!(h.engine.conference_participants()[0].state, "in_room");
    // The caller hangs up: 200, media closed, nobody left.
    h.send(5000, &format!("BYE sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKbye\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:800@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: 9 BYE\nContent-Length: 0\n\n"));
    assert!(h.out().iter().any(|(_, m)| status(m) == Some(200)));
    assert_eq!(media(&mut h), vec![MediaCommand::Close { leg }]);
    assert!(h.engine.conference_participants().is_empty());
}

#[test]
fn a_leg_whose_media_fails_is_hung_up_with_bye() {
    let mut h = Harness::new();
    dial(&mut h, "800");
    media(&mut h);
    let leg = h.engine.conference_participants()[0].id;
    h.engine.handle_media_event(
        h.now,
        MediaEvent::Failed {
            leg,
            reason: "no RTP".into(),
        },
    );
    let out = h.out();
    assert_eq!(requests_to(&out, 5000, "BYE").len(), 1);
    assert!(media(&mut h).contains(&MediaCommand::Close { leg }));
}

#[test]
fn an_offer_without_a_usable_codec_is_refused_with_488() {
    let mut h = Harness::new();
    let out = dial(&mut h, "800");
    // The harness offers PCMU; check a GSM-only offer on a fresh call instead.
    assert!(out.iter().any(|(_, m)| status(m) == Some(200)));
    let text = invite_text(5001, "800", 1, "z9hG4bKgsm", None)
        .replace("RTP/AVP 0", "RTP/AVP 3")
        .replace("call-1", "call-gsm");
    h.send(5001, &text);
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
        .unwrap();
    let answer = alice_answers(&challenge, "800");
    let text = invite_text(5001, "800", 2, "z9hG4bKgsm2", Some(&answer))
        .replace("RTP/AVP 0", "RTP/AVP 3")
        .replace("call-1", "call-gsm");
    h.send(5001, &text);
    assert!(h.out().iter().any(|(_, m)| status(m) == Some(488)));
}

#[test]
fn sha256_challenge_when_configured_and_answered() {
    let mut h = Harness::with(|s| {
        s.digest_algorithms = vec![digest::Algorithm::Sha256, digest::Algorithm::Md5]
    });
    h.send(6000, &register_text("bob", 6000, 1, "z9hG4bKsha1", None));
    let out = h.out();
    let all: Vec<String> = response(&out[0].1)
        .headers
        .get_raw(&Name::WWW_AUTHENTICATE)
        .map(|v| v.to_string())
        .collect();
    assert_eq!(all.len(), 2);
    assert!(
        all[0].contains("algorithm=SHA-256"),
        "preferred first when asked: {all:?}"
    );
    let sha = challenge_of(&out[0].1, Name::WWW_AUTHENTICATE, "SHA-256");
    let answer =
        digest::answer_challenge(&sha, "REGISTER", "sip:127.0.0.1", "bob", "bob-pw", 1, "c")
            .unwrap();
    assert!(answer.contains("SHA-256"));
    h.send(
        6000,
        &register_text("bob", 6000, 2, "z9hG4bKsha2", Some(&answer)),
    );
    assert_eq!(status(&h.out()[0].1), Some(200));
    assert_eq!(h.engine.registrar().len(), 1);
}

#[test]
fn md5_alone_by_default_so_libre_phones_are_not_put_off() {
    let mut h = Harness::new();
    h.send(6000, &register_text("bob", 6000, 1, "z9hG4bKmd5", None));
    let out = h.out();
    let all: Vec<String> = response(&out[0].1)
        .headers
        .get_raw(&Name::WWW_AUTHENTICATE)
        .map(|v| v.to_string())
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].contains("algorithm=MD5") && all[0].contains("qop=\"auth\""));
}

#[test]
fn a_stale_ack_does_not_silence_the_2xx_of_a_re_invite_and_glare_before_ack_gets_500() {
    let mut h = Harness::new();
    let out = dial(&mut h, "800");
    let tag = out
        .iter()
        .find(|(_, m)| status(m) == Some(200))
        .map(|(_, m)| response(m).to_tag().unwrap())
        .unwrap();
    let ack = |cseq: u32, branch: &str| {
        format!("ACK sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch={branch}\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:800@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: {cseq} ACK\nContent-Length: 0\n\n")
    };
    let sdp = "v=0\r\no=a 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n";
    let reinvite = |cseq: u32, branch: &str| {
        format!("INVITE sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch={branch}\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:800@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: {cseq} INVITE\nContact: <sip:alice@127.0.0.1:5000>\nContent-Type: application/sdp\nContent-Length: {}\n\n{sdp}", sdp.len()).replace("\r\n", "\n")
    };
    // A re-INVITE before the first 200 is ACKed: 500 with Retry-After.
    h.send(5000, &reinvite(5, "z9hG4bKre0"));
    let early = h.out();
    let refused = early
        .iter()
        .find(|(_, m)| status(m) == Some(500))
        .expect("500");
    assert!(header(&refused.1, Name::RETRY_AFTER).is_some());
    h.send(5000, &ack(2, "z9hG4bKa1"));
    h.send(5000, &reinvite(6, "z9hG4bKre1"));
    assert!(h.out().iter().any(|(_, m)| status(m) == Some(200)));
    // A late duplicate of the first ACK (CSeq 2) must not stop the re-INVITE's 200.
    h.send(5000, &ack(2, "z9hG4bKa2"));
    h.advance(Duration::from_millis(600));
    assert!(
        h.out().iter().any(|(_, m)| status(m) == Some(200)),
        "the re-INVITE's 200 is retransmitted until its own ACK"
    );
    h.send(5000, &ack(6, "z9hG4bKa3"));
    h.out();
    h.advance(Duration::from_secs(5));
    assert!(!h.out().iter().any(|(_, m)| status(m) == Some(200)));
}
